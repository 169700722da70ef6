"""The flattened ragged-batch runner for Llama-family models.

One step is one forward pass over the tokens of every scheduled `Work`, concatenated into a
`[tokens, hidden]` matrix: the projections and the MLP run once for the whole step, whatever
mix of decode tokens and prefill chunks it holds. Only attention is per sequence:

- every one-token work (decodes) shares one `scaled_dot_product_attention` call over the
  contiguous range of slots they live in, each query masked to its own slot's length;
- each longer work (a prefill chunk) gets its own causal attention over its slot.

The KV cache is preallocated: per layer a `[slots, kv_heads, context, head_dim]` tensor for
keys and one for values. New keys and values are written in place at their positions; no
step copies a sequence's cache. The weights are the loaded transformers model's own, with
q/k/v and gate/up concatenated into one matrix each (one matmul instead of three or two).
Logits are computed only for the rows that asked for them.

LoRA adapters ride along: each work may carry its own adapter set, and every projection's
delta is computed for the whole step at once (`gateway_engine.lora.batch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from gateway_engine.lora.batch import AdapterSet, LoraPlan, StackCache
from gateway_engine.runner import Work, saved_length

if TYPE_CHECKING:
    from gateway_torch.loading import CausalModel

ARCHITECTURES = frozenset({"llama", "mistral", "qwen2"})
STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn"})


def supports(model: Any, context: int | None = None) -> bool:
    """Whether `model` is a Llama-family model this runner computes exactly."""
    config = model.config
    if getattr(config, "model_type", None) not in ARCHITECTURES:
        return False
    if getattr(config, "hidden_act", "silu") != "silu":
        return False
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is None or getattr(rotary, "rope_type", "default") not in STATIC_ROPE:
        return False
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", config.model_type == "mistral")
    return not (uses_window and window is not None and (context is None or context > window))


@dataclass
class _Layer:
    norm1: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    norm2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


class FlatRunner:
    """Runs `Work` batches of a Llama-family model with a slot KV cache."""

    name = "flat"
    lora = True
    torch_threads: int | None = None

    def __init__(self, lm: CausalModel, slots: int, context: int):
        model = lm.model
        config = model.config
        self.slots, self.context = slots, context
        self.device, self.dtype = lm.device, next(model.parameters()).dtype
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        head_dim = getattr(config, "head_dim", None)
        self.head_dim = int(head_dim or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.vocab_limit = lm.tokenizer_size
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.lm_head = model.get_output_embeddings().weight
        self.layers = [self._fuse(layer) for layer in inner.layers]
        rotary = inner.rotary_emb
        positions = torch.arange(context, device=self.device, dtype=torch.float32)
        freqs = torch.outer(positions, rotary.inv_freq.to(self.device, torch.float32))
        angles = torch.cat((freqs, freqs), dim=-1)
        scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.cos = (angles.cos() * scale).to(self.dtype)
        self.sin = (angles.sin() * scale).to(self.dtype)
        shape = (slots, self.kv_heads, context, self.head_dim)
        # Zeros, not empty: masked positions still enter the attention product, and
        # uninitialised memory could hold NaN.
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [
            torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers
        ]
        self._stacks = StackCache()

    @staticmethod
    def _fuse(layer: Any) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        bias = None
        if attn.q_proj.bias is not None:
            bias = torch.cat([p.bias for p in projections]).detach()
        return _Layer(
            norm1=layer.input_layernorm.weight,
            qkv=torch.cat([p.weight for p in projections]).detach(),
            qkv_bias=bias,
            out=attn.o_proj.weight,
            norm2=layer.post_attention_layernorm.weight,
            gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
            down=mlp.down_proj.weight,
        )

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * x32.to(x.dtype)

    def forward(self, works: list[Work]) -> torch.Tensor:
        device = self.device
        tokens: list[int] = []
        positions: list[int] = []
        slot_of: list[int] = []
        wanted: list[int] = []
        singles: list[int] = []  # token rows of one-token works
        chunks: list[tuple[int, int, int, int]] = []  # (row, slot, start, length)
        adapted: list[tuple[int, int, AdapterSet]] = []  # (row, length, adapters)
        for work in works:
            n = len(work.tokens)
            if n == 0 or work.start + n > self.context:
                raise ValueError(f"work out of range for slot {work.slot}")
            row = len(tokens)
            tokens.extend(work.tokens)
            positions.extend(range(work.start, work.start + n))
            slot_of.extend([work.slot] * n)
            if n == 1:
                singles.append(row)
            else:
                chunks.append((row, work.slot, work.start, n))
            if work.logits:
                wanted.append(row + n - 1)
            if work.adapters:
                adapted.append((row, n, work.adapters))
        ids = torch.tensor(tokens, dtype=torch.long, device=device)
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        slot_index = torch.tensor(slot_of, dtype=torch.long, device=device)
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)
        decode = self._decode_plan(singles, slot_of, positions) if singles else None
        lora = None
        if adapted:
            lora = LoraPlan(adapted, len(self.layers), self._stacks, device, self.dtype)

        hidden = F.embedding(ids, self.embed)
        count = hidden.shape[0]
        q_size = self.heads * self.head_dim
        kv_size = self.kv_heads * self.head_dim
        for index, layer in enumerate(self.layers):
            x = self._rms(hidden, layer.norm1)
            qkv = F.linear(x, layer.qkv, layer.qkv_bias)
            if lora is not None:
                lora.add(index, "qkv", x, qkv)
            q = qkv[:, :q_size].view(count, self.heads, self.head_dim)
            k = qkv[:, q_size : q_size + kv_size].view(count, self.kv_heads, self.head_dim)
            v = qkv[:, q_size + kv_size :].view(count, self.kv_heads, self.head_dim)
            q = _rope(q, cos, sin)
            k = _rope(k, cos, sin)
            keys, values = self.keys[index], self.values[index]
            keys[slot_index, :, pos] = k
            values[slot_index, :, pos] = v
            attn = torch.empty_like(q)
            if decode is not None:
                attn[decode.rows] = self._attend_decode(q, keys, values, decode)
            for row, slot, start, n in chunks:
                attn[row : row + n] = self._attend_chunk(
                    q[row : row + n], keys, values, slot, start
                )
            mixed = attn.view(count, q_size)
            projected = F.linear(mixed, layer.out)
            if lora is not None:
                lora.add(index, "out", mixed, projected)
            hidden = hidden + projected
            x = self._rms(hidden, layer.norm2)
            gate_up = F.linear(x, layer.gate_up)
            if lora is not None:
                lora.add(index, "gate_up", x, gate_up)
            gate, up = gate_up.chunk(2, dim=-1)
            inner = F.silu(gate) * up
            down = F.linear(inner, layer.down)
            if lora is not None:
                lora.add(index, "down", inner, down)
            hidden = hidden + down
        if not wanted:
            return torch.empty((0, self.lm_head.shape[0]), device=device)
        last = self._rms(hidden[torch.tensor(wanted, device=device)], self.norm)
        logits = F.linear(last, self.lm_head).float()
        if self.vocab_limit < logits.shape[-1]:
            logits[:, self.vocab_limit :] = float("-inf")  # padding rows with no token
        return logits

    def _decode_plan(self, rows: list[int], slot_of: list[int], positions: list[int]) -> _Decode:
        slots = [slot_of[r] for r in rows]
        lo, hi = min(slots), max(slots) + 1
        span = max(positions[r] for r in rows) + 1
        mask = torch.zeros((hi - lo, 1, 1, span), dtype=torch.bool, device=self.device)
        mask[:, :, :, 0] = True  # slots in the range with no query: keep softmax finite
        local = torch.tensor([s - lo for s in slots], dtype=torch.long, device=self.device)
        for slot, row in zip(slots, rows, strict=True):
            mask[slot - lo, :, :, : positions[row] + 1] = True
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        return _Decode(rows=index, local=local, lo=lo, hi=hi, span=span, mask=mask)

    def _attend_decode(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, plan: _Decode
    ) -> torch.Tensor:
        width = plan.hi - plan.lo
        queries = q.new_zeros((width, self.heads, 1, self.head_dim))
        queries[plan.local] = q[plan.rows].unsqueeze(2)
        out = F.scaled_dot_product_attention(
            queries,
            keys[plan.lo : plan.hi, :, : plan.span],
            values[plan.lo : plan.hi, :, : plan.span],
            attn_mask=plan.mask,
            enable_gqa=self.kv_heads != self.heads,
        )
        return out[plan.local].squeeze(2)

    def _attend_chunk(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slot: int, start: int
    ) -> torch.Tensor:
        n = q.shape[0]
        end = start + n
        query = q.transpose(0, 1).unsqueeze(0)  # [1, heads, n, dim]
        k = keys[slot : slot + 1, :, :end]
        v = values[slot : slot + 1, :, :end]
        gqa = self.kv_heads != self.heads
        if start == 0:
            out = F.scaled_dot_product_attention(query, k, v, is_causal=True, enable_gqa=gqa)
        else:
            seen = torch.arange(end, device=self.device).unsqueeze(0)
            mine = torch.arange(start, end, device=self.device).unsqueeze(1)
            mask = (seen <= mine).view(1, 1, n, end)
            out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask, enable_gqa=gqa)
        return out[0].transpose(0, 1)

    def export_slot(self, slot: int, length: int) -> list[torch.Tensor]:
        keys = [k[slot, :, :length].clone() for k in self.keys]
        values = [v[slot, :, :length].clone() for v in self.values]
        return keys + values

    def import_slot(self, slot: int, state: list[torch.Tensor]) -> int:
        length = saved_length(state, len(self.keys), self.context)
        for target, saved in zip(self.keys + self.values, state, strict=True):
            target[slot, :, :length] = saved.to(target.device, target.dtype)
        return length


@dataclass
class _Decode:
    """Where the one-token works of a step sit: rows, slot range, and their mask."""

    rows: torch.Tensor
    local: torch.Tensor
    lo: int
    hi: int
    span: int
    mask: torch.Tensor


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
