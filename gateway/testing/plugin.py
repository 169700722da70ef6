"""Registers the EchoBackend as the built-in backend `echo`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gateway.engine import Backend, BackendFactory, ModelSpec
from gateway.hookspecs import hookimpl


def _echo(spec: ModelSpec, data_dir: Path) -> Backend:
    from gateway.testing.echo import EchoBackend

    return EchoBackend(spec, data_dir)


@hookimpl
def register_backends(register: Callable[[str, BackendFactory], None]) -> None:
    register("echo", _echo)
