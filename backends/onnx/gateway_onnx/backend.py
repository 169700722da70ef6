"""`OnnxBackend`: the engine of the torch backend (scheduler, samplers, constraints, prompt
cache, slots) with its steps computed by ONNX Runtime (`gateway_onnx.runner`).

Options: the torch backend's (`slots`, `context_length`, `prefill_chunk`, `threads`, ...)
`precision` (`int8`, the default; `int4`; `fp32`), `block_size` (int8 and int4: values per
quantization block, 16 to 256, default 64 for int8 and 32 for int4; larger is faster and
less exact, see `gateway_onnx.export.DEFAULT_BLOCK`), `integer_projections` (int8: which
of `qkv`, `out`, `gate_up`, `down`, `head` multiply int8 activations by int8 weights;
default `["out", "gate_up"]`, `gateway_onnx.export.DEFAULT_INTEGER`; `[]`:
weight-only) and `lora` (default true: per-request LoRA adapters, through a second graph
with LoRA inputs that runs the steps which carry adapters; false saves that graph's
memory, and adapter requests are refused). The first start exports and quantizes the model into the data
directory (`gateway_onnx.export`), about 10 seconds per graph for SmolLM2-135M; later
starts load the export.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from gateway_torch.causal import TorchBackend

from gateway.errors import ConfigError
from gateway_onnx.export import PRECISIONS, Precision, Variant

DEFAULT_PRECISION: Precision = "int8"
log = logging.getLogger(__name__)


class OnnxBackend(TorchBackend):
    """A Llama-family causal LM on ONNX Runtime (CPU)."""

    option_keys = frozenset({"precision", "lora", "block_size", "integer_projections"})

    def option_values(self) -> dict[str, Any]:
        # The torch model beside the graph holds the reference weights that adapters are
        # read and merged against: float32, as the graph computes, unless asked otherwise.
        return {"dtype": "float32", **self.spec.options}

    def precision(self) -> Precision:
        value = self.spec.options.get("precision", DEFAULT_PRECISION)
        if value not in PRECISIONS:
            raise ConfigError(
                f"Unknown onnx precision `{value}` (choose one of: {', '.join(PRECISIONS)})."
            )
        return cast(Precision, value)

    def block_size(self) -> int | None:
        """The `block_size` option (None: the precision's default)."""
        from gateway_onnx.export import BLOCK_SIZES

        value = self.spec.options.get("block_size")
        if value is None:
            return None
        if value not in BLOCK_SIZES or isinstance(value, bool):
            sizes = ", ".join(map(str, BLOCK_SIZES))
            raise ConfigError(f"Option `block_size` must be one of {sizes}, not {value!r}.")
        if self.precision() == "fp32":
            raise ConfigError("Option `block_size` applies to int8 and int4, not fp32.")
        return int(value)

    def integer_projections(self) -> tuple[str, ...] | None:
        """The `integer_projections` option (None: the precision's default)."""
        from gateway_onnx.graph import PROJECTIONS

        value = self.spec.options.get("integer_projections")
        if value is None:
            return None
        names = ", ".join(PROJECTIONS)
        if not isinstance(value, list) or not set(value) <= set(PROJECTIONS):
            raise ConfigError(
                f"Option `integer_projections` must be a list of: {names}; not {value!r}."
            )
        if value and self.precision() != "int8":
            raise ConfigError("Option `integer_projections` applies to int8 only.")
        return tuple(value)

    def variant(self, lora: bool = False) -> Variant:
        """The export (`gateway_onnx.export.Variant`) the options ask for."""
        return Variant(self.precision(), lora, self.block_size(), self.integer_projections())

    def serves_lora(self) -> bool:
        value = self.spec.options.get("lora", True)
        if not isinstance(value, bool):
            raise ConfigError(f"Option `lora` must be true or false, not {value!r}.")
        return value

    def make_runner(self, lm: Any) -> Any:
        from gateway_onnx.graph import UnsupportedModel

        if lm.device.type != "cpu":
            raise ConfigError('The onnx backend runs on the CPU: set `device = "cpu"`.')
        try:
            return self.onnx_runner(lm)
        except UnsupportedModel as exc:
            raise ConfigError(
                f"Model `{self.spec.name}` cannot run on the onnx backend: {exc}; "
                'serve it with `backend = "torch"`.'
            ) from None

    def onnx_runner(self, lm: Any) -> Any:
        """The ONNX Runtime runner of `lm`, exporting its graphs first if they are not
        cached; `UnsupportedModel` if the graph builder cannot write it."""
        from gateway_onnx.export import ensure_exported
        from gateway_onnx.graph import read_shape
        from gateway_onnx.runner import OnnxRunner

        variant = self.variant()
        shape = read_shape(lm.folder)
        model = ensure_exported(lm.folder, self.data_dir, variant)
        lora_model = (
            ensure_exported(lm.folder, self.data_dir, self.variant(lora=True))
            if self.serves_lora()
            else None
        )
        return OnnxRunner(
            model,
            shape,
            lm.options.slots,
            lm.context_length,
            name=runner_name(variant),
            threads=lm.options.threads,
            vocab_limit=lm.tokenizer_size,
            lora_model=lora_model,
        )


def runner_name(variant: Variant) -> str:
    """`onnx-<precision>`, and what differs from the precision's default variant:
    `onnx-int8`, `onnx-int8-b128`, `onnx-int8-b64-i.out`..."""
    default = Variant(variant.precision)
    name = f"onnx-{variant.precision}"
    if (variant.block, variant.integer_projections) != (
        default.block,
        default.integer_projections,
    ):
        name += variant.kind.removeprefix(variant.precision)
    return name


class AutoBackend(OnnxBackend):
    """The `auto` backend, the default model's: the engine on whichever runner is fastest
    for the model on this machine. On a CPU, ONNX Runtime at `int8` for the models its
    graph builder writes (Llama-family; `benchmarks/README.md`: 1.09x llama-server's
    tokens/s at one request and 2.0x at 16, at a mean KL of 0.0049 nats); on CUDA, or
    for any other model, the torch backend's runners. Takes both backends' options."""

    def on_cpu(self) -> bool:
        from gateway_torch.options import resolve_device

        return resolve_device(str(self.spec.options.get("device", "auto"))).type == "cpu"

    def option_values(self) -> dict[str, Any]:
        return super().option_values() if self.on_cpu() else dict(self.spec.options)

    def make_runner(self, lm: Any) -> Any:
        from gateway_onnx.graph import UnsupportedModel

        if lm.device.type == "cpu":
            try:
                return self.onnx_runner(lm)
            except UnsupportedModel as exc:
                log.info("Model `%s` runs on the torch runners: %s.", self.spec.name, exc)
        return TorchBackend.make_runner(self, lm)
