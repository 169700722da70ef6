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

Inputs: `input_ids` `[batch, seq]` int64, `seqlens_k` `[batch]` int32,
`total_sequence_length` `[]` int32, `logit_index` `[batch]` int64, `past_key_{i}` /
`past_value_{i}`. Outputs: `logits` `[batch, vocab]`, `present_key_{i}` /
`present_value_{i}`. The LoRA variant (`build_graph(folder, lora=True)`) adds the
inputs of `LORA_GROUPS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ARCHITECTURES = frozenset({"llama", "mistral", "qwen2"})
ATTENTION_INPUTS = ("seqlens_k", "total_sequence_length", "cos_cache", "sin_cache")
OPSET = 21
IR_VERSION = 10


LORA_GROUPS = ("qkv", "out", "gate_up", "down")
"""The projections a LoRA graph adds a delta to: `y += ((x @ A) * lora_scale) @ B`, with
`lora_a_{layer}_{group}` `[in, rank]`, `lora_b_{layer}_{group}` `[rank, out]` (the
adapters of a run side by side along `rank`) and `lora_scale` `[batch, 1, rank]` (each
row's scale for each rank column: 0 where the row does not use that adapter)."""
LORA_SCALE = "lora_scale"


def lora_names(layer: int, group: str) -> tuple[str, str]:
    return f"lora_a_{layer}_{group}", f"lora_b_{layer}_{group}"


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


def build_graph(folder: Path, lora: bool = False) -> Any:
    """The `onnx.ModelProto` (float32) of the Llama-family model in `folder`; with `lora`,
    every projection takes a LoRA delta from graph inputs (see `LORA_GROUPS`)."""
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
    g.constant("head_t", (embed if head is None else head.astype(np.float32)).T)
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
        inputs.append(
            helper.make_tensor_value_info(LORA_SCALE, TensorProto.FLOAT, ["batch", 1, "rank"])
        )

    def project(i: int, group: str, x: str, weight_name: str, matrix: np.ndarray) -> str:
        """`x @ matrix`, plus the LoRA delta of `group` when the graph has adapters."""
        base = f"l{i}.{group}_base" if lora else f"l{i}.{group}_out"
        g.node("MatMul", [x, g.constant(weight_name, matrix)], [base])
        if not lora:
            return base
        a, b = lora_names(i, group)
        inputs.append(
            helper.make_tensor_value_info(a, TensorProto.FLOAT, [matrix.shape[0], "rank"])
        )
        inputs.append(
            helper.make_tensor_value_info(b, TensorProto.FLOAT, ["rank", matrix.shape[1]])
        )
        g.node("MatMul", [x, a], [f"l{i}.{group}_shrunk"])
        g.node("Mul", [f"l{i}.{group}_shrunk", LORA_SCALE], [f"l{i}.{group}_scaled"])
        g.node("MatMul", [f"l{i}.{group}_scaled", b], [f"l{i}.{group}_delta"])
        g.node("Add", [base, f"l{i}.{group}_delta"], [f"l{i}.{group}_out"])
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
        norm1 = g.constant(f"l{i}.norm1", weight(p + "input_layernorm.weight"))
        if not pending:
            g.node(
                "SimplifiedLayerNormalization", [residual, norm1], [f"l{i}.h"], axis=-1, epsilon=eps
            )
        else:
            g.node(
                "SkipSimplifiedLayerNormalization",
                [pending, residual, norm1],
                [f"l{i}.h", "", "", f"l{i}.r"],
                domain="com.microsoft",
                epsilon=eps,
            )
            residual = f"l{i}.r"
        names = [p + f"self_attn.{m}_proj" for m in "qkv"]
        qkv = np.concatenate([weight(n + ".weight") for n in names]).T
        projected = project(i, "qkv", f"l{i}.h", f"l{i}.qkv", qkv)
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
        norm2 = g.constant(f"l{i}.norm2", weight(p + "post_attention_layernorm.weight"))
        g.node(
            "SkipSimplifiedLayerNormalization",
            [attn_out, residual, norm2],
            [f"l{i}.h2", "", "", f"l{i}.r2"],
            domain="com.microsoft",
            epsilon=eps,
        )
        residual = f"l{i}.r2"
        gate_up = np.concatenate(
            [weight(p + "mlp.gate_proj.weight"), weight(p + "mlp.up_proj.weight")]
        ).T
        gu = project(i, "gate_up", f"l{i}.h2", f"l{i}.gate_up", gate_up)
        g.node("Split", [gu, gate_up_sizes], [f"l{i}.gate", f"l{i}.up"], axis=-1)
        g.node("Sigmoid", [f"l{i}.gate"], [f"l{i}.sig"])
        g.node("Mul", [f"l{i}.gate", f"l{i}.sig"], [f"l{i}.silu"])
        g.node("Mul", [f"l{i}.silu", f"l{i}.up"], [f"l{i}.act"])
        down = weight(p + "mlp.down_proj.weight").T
        pending = project(i, "down", f"l{i}.act", f"l{i}.down", down)
    final = g.constant("final_norm", weight("model.norm.weight"))
    g.node(
        "SkipSimplifiedLayerNormalization",
        [pending, residual, final],
        ["normed", "", "", "final_residual"],
        domain="com.microsoft",
        epsilon=eps,
    )
    rows = g.constant("rows", np.array([-1, s.hidden], np.int64))
    g.node("Reshape", ["normed", rows], ["flat"])
    g.node("Gather", ["flat", "logit_index"], ["last_hidden"], axis=0)
    g.node("MatMul", ["last_hidden", "head_t"], ["logits"])
    graph = helper.make_graph(g.nodes, "gateway-llama", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="gateway-onnx",
    )
    model.ir_version = IR_VERSION
    return model
