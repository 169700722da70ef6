"""The ONNX graph of a Llama-family model, written node by node from its safetensors.

Not an exporter's trace: a graph of ONNX Runtime's fused operators, about 400 nodes where
a traced export of the same model has thousands of small glue ops.

- `GroupQueryAttention` (com.microsoft) does rotary embeddings, grouped-query attention
  and the KV-cache write in one op. Its cache inputs and outputs are meant to be bound to
  the same buffer (`[batch, kv_heads, max_positions, head_dim]`), which it updates in
  place; `seqlens_k` (each row's total length - 1) lets every row of a batch sit at its own
  position, so one run serves decode rows of any lengths, and a prefill chunk that
  continues a cached prefix.
- `SkipSimplifiedLayerNormalization` fuses each residual add with the next RMS norm.
- q/k/v and gate/up are one `MatMul` each; the output head is a `MatMul` by a constant
  (the transposed, possibly tied, embedding), so weight-only quantization reaches it too.
- Only one position of each row goes through the head (`logit_index`, into the flattened
  `[batch * seq]` positions): the last real token of a row, which a batch of prefill chunks
  padded to the longest one needs.
- Integer projections (`build_graph(..., integer=...)`): the named projections multiply
  int8 activations by int8 weights (`MatMulIntegerToFloat`, ONNX Runtime's integer GEMM,
  which uses AMX or VNNI where the CPU has them). Each row of the input is quantized on
  its own (`quantize_rows`: its largest magnitude over 127), so a row's result never
  depends on the other rows of a run; weights are quantized per output column. Inputs
  are first smoothed (SmoothQuant: per-channel factors from calibration `peaks`,
  `smoothing`) by folding the factors into what produces the input (an RMS norm's weight
  for q/k/v, gate/up and the head; the up projection's columns for down) and into the
  projection's rows: the model computes the same function, with its activation outliers
  moved into the weights, where per-column scales absorb them. Smoothing helps the
  weight-only `MatMulNBits` too, which quantizes activations per block inside the kernel:
  int8 weight-only measured a mean KL of 0.0029 nats smoothed against 0.0067 not, int4
  0.26 against 0.39 (`gateway_onnx.export` smooths every quantized export).

Inputs: `input_ids` `[batch, seq]` int64, `seqlens_k` `[batch]` int32,
`total_sequence_length` `[]` int32, `logit_index` `[batch]` int64, `past_key_{i}` /
`past_value_{i}`. Outputs: `logits` `[batch, vocab]`, `present_key_{i}` /
`present_value_{i}`. The LoRA variant (`build_graph(folder, lora=True)`) adds the
inputs of `LORA_GROUPS`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ARCHITECTURES = frozenset({"llama", "mistral", "qwen2"})
ATTENTION_INPUTS = ("seqlens_k", "total_sequence_length", "cos_cache", "sin_cache")
OPSET = 21
IR_VERSION = 10


LORA_GROUPS = ("qkv", "out", "gate_up", "down")
"""The projections a LoRA graph adds a delta to. A run's rows are grouped into *entries*
(the rows that share a set of adapters, most often one adapter), and each entry's tokens
are multiplied by that entry's weights only, as Punica's segmented matmuls do, so a token
costs its own adapters' multiplications whatever the number of entries in the run:

- `lora_rows` `[entries, width, 2]`: the (row, position) of each entry's tokens, padded
  with any token; `lora_slot` `[entries, width, 1]`: 1 for a token, 0 for padding;
- `lora_a_{layer}_{group}` `[entries, in, rank]` and `lora_b_{layer}_{group}` `[entries,
  rank, out]`: each entry's adapters side by side along `rank`, their scales folded into B;
- `lora_back` `[batch, seq, 2]`: where each token of the run finds its delta in `[entries,
  width]` (a padding slot for tokens without adapters: its delta is 0).

With `lora_integer`, A and B are int8 with per-column scales (`lora_a_scale_*`
`[entries, 1, rank]`, `lora_b_scale_*` `[entries, 1, out]`) and both products are integer
matmuls of row-quantized activations, like the integer projections: a quarter of float32's
bytes, which bound a step with many adapters."""

PROJECTIONS = ("qkv", "out", "gate_up", "down", "head")
"""The projections that can run as integer matmuls: `LORA_GROUPS` and the output head."""
SMOOTHING_ALPHA = {"qkv": 0.65, "gate_up": 0.65, "head": 0.65, "down": 0.5}
"""The projections whose input can be smoothed, and SmoothQuant's migration strength for
each: a channel's factor is peak^a / weight peak^(1-a). q/k/v, gate/up and the head read
an RMS norm's output, whose weight takes the factors; down reads the gated product, whose
up projection's columns take them. For the norm-fed inputs 0.5, 0.65 and 0.8 measured a
mean KL of 0.0087, 0.0077 and 0.0084 nats (gate/up, out and the head integer); for down,
0.5 brought every-projection-integer from 0.020 to 0.015 and 0.65 did nothing
(benchmarks/bench_precision.py)."""
SMOOTHED = frozenset(SMOOTHING_ALPHA)


def lora_names(layer: int, group: str) -> tuple[str, str]:
    return f"lora_a_{layer}_{group}", f"lora_b_{layer}_{group}"


def lora_scale_names(layer: int, group: str) -> tuple[str, str]:
    """The per-column scales of an integer LoRA graph's A and B."""
    return f"lora_a_scale_{layer}_{group}", f"lora_b_scale_{layer}_{group}"


def lora_dims(shape: Shape, group: str) -> tuple[int, int]:
    """The input and output width of a LoRA group's projection."""
    attention = shape.heads * shape.head_dim
    return {
        "qkv": (shape.hidden, attention + 2 * shape.kv_heads * shape.head_dim),
        "out": (attention, shape.hidden),
        "gate_up": (shape.hidden, 2 * shape.intermediate),
        "down": (shape.intermediate, shape.hidden),
    }[group]


class UnsupportedModel(ValueError):
    """The model is not one this graph builder writes exactly."""


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    positions: int
    eps: float
    rope_theta: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        kind = config.get("model_type")
        if kind not in ARCHITECTURES:
            raise UnsupportedModel(
                f"model type `{kind}` (the onnx backend writes Llama-family models)"
            )
        if config.get("hidden_act", "silu") != "silu":
            raise UnsupportedModel(f"activation `{config.get('hidden_act')}`")
        scaling = config.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise UnsupportedModel(f"rope scaling `{scaling}`")
        if config.get("use_sliding_window") and config.get("sliding_window"):
            raise UnsupportedModel("sliding-window attention")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            layers=int(config["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate=int(config["intermediate_size"]),
            vocab=int(config["vocab_size"]),
            positions=int(config.get("max_position_embeddings", 4096)),
            eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta", 10000.0)),
        )


def read_shape(folder: Path) -> Shape:
    return Shape.from_config(json.loads((folder / "config.json").read_text()))


def smoothing(peak: np.ndarray, matrix: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel factors for `x @ matrix` (`[in, out]`), given each
    input channel's largest magnitude `peak`: `x / f` and `f * matrix` rows compute the
    same product with the channels' ranges evened out between activations and weights."""
    activation = np.maximum(peak.astype(np.float64), 1e-5)
    weight = np.maximum(np.abs(matrix).max(axis=1).astype(np.float64), 1e-5)
    return (activation**alpha / weight ** (1 - alpha)).astype(np.float32)


def quantize_columns(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`matrix` (`[in, out]`) as int8 and each column's scale: symmetric, per column."""
    scale = np.maximum(np.abs(matrix).max(axis=0), 1e-30) / 127.0
    codes = np.clip(np.rint(matrix / scale), -127, 127).astype(np.int8)
    return codes, scale.astype(np.float32)


def quantize_rows(g: _Graph, x: str, width: int, zero: str) -> tuple[str, str]:
    """`x`'s rows (of `width` values) as uint8 codes around 128 (`zero`: 128s shaped like
    the scales) and each row's scale, its largest magnitude over 127. An all-zero row has
    scale 0: whatever its codes, its product is multiplied by 0."""
    g.node("Abs", [x], [f"{x}.abs"])
    g.node("ReduceMax", [f"{x}.abs", "last_axis"], [f"{x}.peak"], keepdims=1)
    g.node("Mul", [f"{x}.peak", "inv127"], [f"{x}.scale"])
    g.node("QuantizeLinear", [x, f"{x}.scale", zero], [f"{x}.codes"], axis=-1, block_size=width)
    return f"{x}.codes", f"{x}.scale"


def float_lora(
    g: _Graph, i: int, group: str, x: str, size_in: int, size_out: int, inputs: list[Any]
) -> str:
    """The `[entries, width, out]` LoRA deltas of `x`'s gathered tokens, float32."""
    from onnx import TensorProto, helper

    a, b = lora_names(i, group)
    inputs.append(helper.make_tensor_value_info(a, TensorProto.FLOAT, ["entries", size_in, "rank"]))
    inputs.append(
        helper.make_tensor_value_info(b, TensorProto.FLOAT, ["entries", "rank", size_out])
    )
    at = f"l{i}.{group}_lora"
    g.node("GatherND", [x, "lora_rows"], [f"{at}.x"])
    g.node("MatMul", [f"{at}.x", a], [f"{at}.shrunk"])
    g.node("Mul", [f"{at}.shrunk", "lora_slot"], [f"{at}.kept"])
    g.node("MatMul", [f"{at}.kept", b], [f"{at}.delta"])
    return f"{at}.delta"


def integer_lora(
    g: _Graph,
    i: int,
    group: str,
    x: str,
    x_codes: tuple[str, str] | None,
    size_in: int,
    size_out: int,
    inputs: list[Any],
) -> str:
    """The `[entries, width, out]` LoRA deltas of `x`'s gathered tokens, with int8 A and
    B: `x`'s rows quantized (or `x_codes`, its codes and scales when its projection
    already quantized them), then the shrunk rows in turn."""
    from onnx import TensorProto, helper

    a, b = lora_names(i, group)
    a_scale, b_scale = lora_scale_names(i, group)
    inputs += [
        helper.make_tensor_value_info(a, TensorProto.INT8, ["entries", size_in, "rank"]),
        helper.make_tensor_value_info(a_scale, TensorProto.FLOAT, ["entries", 1, "rank"]),
        helper.make_tensor_value_info(b, TensorProto.INT8, ["entries", "rank", size_out]),
        helper.make_tensor_value_info(b_scale, TensorProto.FLOAT, ["entries", 1, size_out]),
    ]
    at = f"l{i}.{group}_lora"
    codes, scale = x_codes or quantize_rows(g, x, size_in, "zero_rows")
    g.node("GatherND", [codes, "lora_rows"], [f"{at}.codes"])
    g.node("GatherND", [scale, "lora_rows"], [f"{at}.scale"])
    g.node("Mul", [f"{at}.scale", "lora_slot"], [f"{at}.kept"])
    g.node(
        "MatMulIntegerToFloat",
        [f"{at}.codes", a, f"{at}.kept", a_scale, "zero_point"],
        [f"{at}.shrunk"],
        domain="com.microsoft",
    )
    g.node("Flatten", [f"{at}.shrunk"], [f"{at}.flat"], axis=2)
    g.node("Abs", [f"{at}.flat"], [f"{at}.abs"])
    g.node("ReduceMax", [f"{at}.abs", "last_axis"], [f"{at}.peak"], keepdims=0)
    g.node("Mul", [f"{at}.peak", "inv127"], [f"{at}.rank_scale"])
    g.node(
        "QuantizeLinear",
        [f"{at}.flat", f"{at}.rank_scale", "zero_lora"],
        [f"{at}.rank_codes"],
        axis=0,
    )
    g.node("Reshape", [f"{at}.rank_codes", "lora_codes.shape"], [f"{at}.shrunk_codes"])
    g.node("Reshape", [f"{at}.rank_scale", "lora_slot.shape"], [f"{at}.shrunk_scale"])
    # Scaled after the product: MatMulIntegerToFloat's own broadcast of per-row times
    # per-column scales measured twice as slow as two Muls at these shapes.
    g.node(
        "MatMulIntegerToFloat",
        [f"{at}.shrunk_codes", b, "one", "one", "zero_point"],
        [f"{at}.unscaled"],
        domain="com.microsoft",
    )
    g.node("Mul", [f"{at}.unscaled", b_scale], [f"{at}.columns"])
    g.node("Mul", [f"{at}.columns", f"{at}.shrunk_scale"], [f"{at}.delta"])
    return f"{at}.delta"


class _Graph:
    def __init__(self) -> None:
        from onnx import numpy_helper

        self._from_array = numpy_helper.from_array
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self._from_array(np.ascontiguousarray(array), name))
        return name

    def node(
        self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any
    ) -> None:
        from onnx import helper

        name = f"{op}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))


def build_graph(
    folder: Path,
    lora: bool = False,
    integer: Collection[str] = (),
    peaks: Mapping[str, np.ndarray] | None = None,
    smoothed: Collection[str] = (),
    lora_integer: bool = False,
) -> Any:
    """The `onnx.ModelProto` of the Llama-family model in `folder`, float32 but for the
    `integer` projections (of `PROJECTIONS`; module docstring). With `lora`, every
    projection takes a LoRA delta from graph inputs (see `LORA_GROUPS`). `peaks`: each
    projection input's per-channel largest magnitude (`gateway_onnx.calibrate`), needed
    to smooth the inputs of the `smoothed` projections (of `SMOOTHED`). `lora_integer`:
    int8 adapters (`LORA_GROUPS`)."""
    from onnx import TensorProto, helper
    from safetensors.numpy import load_file

    shape = read_shape(folder)
    weights: dict[str, np.ndarray] = {}
    for file in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    if not weights:
        raise UnsupportedModel(f"no safetensors weights in {folder}")

    def weight(name: str) -> np.ndarray:
        return weights[name].astype(np.float32, copy=False)

    g = _Graph()
    s = shape
    inverse = 1.0 / s.rope_theta ** (np.arange(0, s.head_dim, 2, dtype=np.float64) / s.head_dim)
    angles = np.outer(np.arange(s.positions, dtype=np.float64), inverse)
    g.constant("cos_cache", np.cos(angles).astype(np.float32))
    g.constant("sin_cache", np.sin(angles).astype(np.float32))
    embed = weight("model.embed_tokens.weight")
    g.constant("embed", embed)
    head = weights.get("lm_head.weight")
    head_t = (embed if head is None else head.astype(np.float32)).T
    unknown = (set(integer) - set(PROJECTIONS)) | (set(smoothed) - SMOOTHED)
    if unknown:
        raise ValueError(f"cannot make {sorted(unknown)} integer or smoothed projections")
    if smoothed and peaks is None:
        raise ValueError("smoothing projections' inputs needs calibration peaks")
    cache_dims: list[str | int | None] = ["batch", s.kv_heads, "max_positions", s.head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("logit_index", TensorProto.INT64, ["batch"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", s.vocab])]
    qkv_sizes = g.constant(
        "qkv_sizes", np.array([s.heads * s.head_dim, *[s.kv_heads * s.head_dim] * 2], np.int64)
    )
    gate_up_sizes = g.constant("gate_up_sizes", np.array([s.intermediate] * 2, np.int64))
    eps = s.eps
    if lora:
        inputs += [
            helper.make_tensor_value_info("lora_rows", TensorProto.INT64, ["entries", "width", 2]),
            helper.make_tensor_value_info("lora_slot", TensorProto.FLOAT, ["entries", "width", 1]),
            helper.make_tensor_value_info("lora_back", TensorProto.INT64, ["batch", "seq", 2]),
        ]
    if integer or (lora and lora_integer):
        g.constant("inv127", np.array(1.0 / 127.0, np.float32))
        g.constant("one", np.array(1.0, np.float32))
        g.constant("zero_point", np.array(128, np.uint8))
        g.constant("last_axis", np.array([-1], np.int64))
        g.constant("unit", np.array([1], np.int64))
        # The rows' zero points, shaped like their scales: [batch, seq, 1] and [batch, 1].
        for rows, of in (("zero_rows", "input_ids"), ("zero_last", "logit_index")):
            g.node("Shape", [of], [f"{of}.shape"])
            g.node("Concat", [f"{of}.shape", "unit"], [f"{rows}.shape"], axis=0)
            g.node("Expand", ["zero_point", f"{rows}.shape"], [rows])
    if lora and lora_integer:
        # The shrunk activations are quantized as `[entries * width, rank]` rows (rank
        # varies per run, so per-axis rather than blocked): their zero points, and the
        # shapes that bring codes and scales back to `[entries, width, ...]`.
        g.node("Shape", ["lora_slot"], ["lora_slot.shape"])
        g.node("ReduceProd", ["lora_slot.shape"], ["lora_tokens"], keepdims=1)
        g.node("Expand", ["zero_point", "lora_tokens"], ["zero_lora"])
        g.constant("slice_0", np.array([0], np.int64))
        g.constant("slice_2", np.array([2], np.int64))
        g.node("Slice", ["lora_slot.shape", "slice_0", "slice_2"], ["lora_entries_width"])
        g.constant("any_width", np.array([-1], np.int64))
        g.node("Concat", ["lora_entries_width", "any_width"], ["lora_codes.shape"], axis=0)
    codes: dict[str, tuple[str, str]] = {}

    def smooth(key: str, group: str, matrix: np.ndarray) -> np.ndarray | None:
        """The smoothing factors of projection `group` (its input is `key` in `peaks`)."""
        if group not in smoothed or peaks is None:
            return None
        return smoothing(peaks[key], matrix, SMOOTHING_ALPHA[group])

    def matmul(x: str, name: str, matrix: np.ndarray, out: str, group: str) -> None:
        """`out = x @ matrix`: a float MatMul (which `gateway_onnx.export` may quantize
        weight-only), or an integer one when `group` is an integer projection."""
        if group not in integer:
            g.node("MatMul", [x, g.constant(name, matrix)], [out])
            return
        if x not in codes:
            zero = "zero_last" if group == "head" else "zero_rows"
            codes[x] = quantize_rows(g, x, matrix.shape[0], zero)
        x_codes, x_scale = codes[x]
        w_codes, w_scale = quantize_columns(matrix)
        weights = [g.constant(name, w_codes), "one", g.constant(f"{name}.scale", w_scale)]
        g.node(
            "MatMulIntegerToFloat",
            [x_codes, *weights, "zero_point"],
            [f"{out}.unscaled"],
            domain="com.microsoft",
        )
        g.node("Mul", [f"{out}.unscaled", x_scale], [out])

    def project(
        i: int,
        group: str,
        x: str,
        weight_name: str,
        matrix: np.ndarray,
        smoothed: np.ndarray | None = None,
        rescaled: np.ndarray | None = None,
    ) -> str:
        """`x @ matrix`, plus the LoRA delta of `group` when the graph has adapters.
        `smoothed`: the factors `x` was divided by; `rescaled`: the factors `matrix`'s
        columns were multiplied by. Adapters are trained on the model as it is: they read
        the unsmoothed x, and their deltas are rescaled like the columns."""
        base = f"l{i}.{group}_base" if lora else f"l{i}.{group}_out"
        matmul(x, weight_name, matrix, base, group)
        if not lora:
            return base
        size_in, size_out = matrix.shape
        at = f"l{i}.{group}_lora"
        if smoothed is not None:
            factors = g.constant(f"l{i}.{group}.smoothing", smoothed)
            g.node("Mul", [x, factors], [f"{at}.unsmoothed"])
            x = f"{at}.unsmoothed"
        if lora_integer:
            delta = integer_lora(g, i, group, x, codes.get(x), size_in, size_out, inputs)
        else:
            delta = float_lora(g, i, group, x, size_in, size_out, inputs)
        if rescaled is not None:
            factors = g.constant(f"l{i}.{group}.rescaling", rescaled)
            g.node("Mul", [delta, factors], [f"{at}.rescaled"])
            delta = f"{at}.rescaled"
        g.node("GatherND", [delta, "lora_back"], [f"{at}.back"])
        g.node("Add", [base, f"{at}.back"], [f"l{i}.{group}_out"])
        return f"l{i}.{group}_out"

    g.node("Gather", ["embed", "input_ids"], ["embedded"])
    residual, pending = "embedded", ""
    for i in range(s.layers):
        p = f"model.layers.{i}."
        past = [f"past_key_{i}", f"past_value_{i}"]
        present = [f"present_key_{i}", f"present_value_{i}"]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, cache_dims) for n in past]
        outputs += [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, cache_dims) for n in present
        ]
        names = [p + f"self_attn.{m}_proj" for m in "qkv"]
        qkv = np.concatenate([weight(n + ".weight") for n in names]).T
        gate_up = np.concatenate(
            [weight(p + "mlp.gate_proj.weight"), weight(p + "mlp.up_proj.weight")]
        ).T
        norm1, norm2 = (
            weight(p + "input_layernorm.weight"),
            weight(p + "post_attention_layernorm.weight"),
        )
        qkv_f, gate_up_f = (
            smooth(f"{i}.qkv", "qkv", qkv),
            smooth(f"{i}.gate_up", "gate_up", gate_up),
        )
        if qkv_f is not None:
            norm1, qkv = norm1 / qkv_f, qkv * qkv_f[:, None]
        if gate_up_f is not None:
            norm2, gate_up = norm2 / gate_up_f, gate_up * gate_up_f[:, None]
        down = weight(p + "mlp.down_proj.weight").T
        down_f = smooth(f"{i}.down", "down", down)
        up_rescaled = None
        if down_f is not None:
            up_rescaled = np.concatenate([np.ones(s.intermediate, np.float32), 1 / down_f])
            gate_up, down = gate_up * up_rescaled, down * down_f[:, None]
        g.constant(f"l{i}.norm1", norm1)
        if not pending:
            g.node(
                "SimplifiedLayerNormalization",
                [residual, f"l{i}.norm1"],
                [f"l{i}.h"],
                axis=-1,
                epsilon=eps,
            )
        else:
            g.node(
                "SkipSimplifiedLayerNormalization",
                [pending, residual, f"l{i}.norm1"],
                [f"l{i}.h", "", "", f"l{i}.r"],
                domain="com.microsoft",
                epsilon=eps,
            )
            residual = f"l{i}.r"
        projected = project(i, "qkv", f"l{i}.h", f"l{i}.qkv", qkv, qkv_f)
        if names[0] + ".bias" in weights:
            bias = np.concatenate([weight(n + ".bias") for n in names])
            g.node("Add", [projected, g.constant(f"l{i}.qkv_bias", bias)], [f"l{i}.qkv_biased"])
            projected = f"l{i}.qkv_biased"
        g.node("Split", [projected, qkv_sizes], [f"l{i}.q", f"l{i}.k", f"l{i}.v"], axis=-1)
        g.node(
            "GroupQueryAttention",
            [f"l{i}.q", f"l{i}.k", f"l{i}.v", *past, *ATTENTION_INPUTS],
            [f"l{i}.attn", *present],
            domain="com.microsoft",
            num_heads=s.heads,
            kv_num_heads=s.kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
        )
        attn_out = project(
            i, "out", f"l{i}.attn", f"l{i}.o", weight(p + "self_attn.o_proj.weight").T
        )
        g.node(
            "SkipSimplifiedLayerNormalization",
            [attn_out, residual, g.constant(f"l{i}.norm2", norm2)],
            [f"l{i}.h2", "", "", f"l{i}.r2"],
            domain="com.microsoft",
            epsilon=eps,
        )
        residual = f"l{i}.r2"
        gu = project(i, "gate_up", f"l{i}.h2", f"l{i}.gate_up", gate_up, gate_up_f, up_rescaled)
        g.node("Split", [gu, gate_up_sizes], [f"l{i}.gate", f"l{i}.up"], axis=-1)
        g.node("Sigmoid", [f"l{i}.gate"], [f"l{i}.sig"])
        g.node("Mul", [f"l{i}.gate", f"l{i}.sig"], [f"l{i}.silu"])
        g.node("Mul", [f"l{i}.silu", f"l{i}.up"], [f"l{i}.act"])
        pending = project(i, "down", f"l{i}.act", f"l{i}.down", down, down_f)
    final = weight("model.norm.weight")
    head_f = smooth("head", "head", head_t)
    if head_f is not None:
        final, head_t = final / head_f, head_t * head_f[:, None]
    g.node(
        "SkipSimplifiedLayerNormalization",
        [pending, residual, g.constant("final_norm", final)],
        ["normed", "", "", "final_residual"],
        domain="com.microsoft",
        epsilon=eps,
    )
    rows = g.constant("rows", np.array([-1, s.hidden], np.int64))
    g.node("Reshape", ["normed", rows], ["flat"])
    g.node("Gather", ["flat", "logit_index"], ["last_hidden"], axis=0)
    matmul("last_hidden", "head_t", head_t, "logits", "head")
    graph = helper.make_graph(g.nodes, "gateway-llama", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="gateway-onnx",
    )
    model.ir_version = IR_VERSION
    return model
