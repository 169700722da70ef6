"""`OnnxBackend`: the engine of the torch backend (scheduler, samplers, constraints, prompt
cache, slots) with its steps computed by ONNX Runtime (`gateway_onnx.runner`).

Options: the torch backend's (`slots`, `context_length`, `prefill_chunk`, `threads`, ...)
and `precision` (`int8`, the default; `int4`; `fp32`). The first start exports and
quantizes the model into the data directory (`gateway_onnx.export`), about 10 seconds for
SmolLM2-135M; later starts load the export.
"""

from __future__ import annotations

from typing import Any, cast

from gateway_torch.causal import TorchBackend

from gateway.errors import ConfigError
from gateway_onnx.export import PRECISIONS, Precision

DEFAULT_PRECISION: Precision = "int8"


class OnnxBackend(TorchBackend):
    """A Llama-family causal LM on ONNX Runtime (CPU)."""

    option_keys = frozenset({"precision"})

    def precision(self) -> Precision:
        value = self.spec.options.get("precision", DEFAULT_PRECISION)
        if value not in PRECISIONS:
            raise ConfigError(
                f"Unknown onnx precision `{value}` (choose one of: {', '.join(PRECISIONS)})."
            )
        return cast(Precision, value)

    def make_runner(self, lm: Any) -> Any:
        from gateway_onnx.export import ensure_exported
        from gateway_onnx.graph import UnsupportedModel, read_shape
        from gateway_onnx.runner import OnnxRunner

        if lm.device.type != "cpu":
            raise ConfigError('The onnx backend runs on the CPU: set `device = "cpu"`.')
        precision = self.precision()
        try:
            shape = read_shape(lm.folder)
        except UnsupportedModel as exc:
            raise ConfigError(
                f"Model `{self.spec.name}` cannot run on the onnx backend: {exc}; "
                'serve it with `backend = "torch"`.'
            ) from None
        model = ensure_exported(lm.folder, self.data_dir, precision)
        return OnnxRunner(
            model,
            shape,
            lm.options.slots,
            lm.context_length,
            name=f"onnx-{precision}",
            threads=lm.options.threads,
            vocab_limit=lm.tokenizer_size,
        )
