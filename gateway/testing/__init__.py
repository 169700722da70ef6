"""Test helpers for the gateway and its plugins: the EchoBackend and pytest fixtures."""

from gateway.testing.echo import EchoBackend

__all__ = ["EchoBackend"]
