"""Calibration for the quantized projections' smoothing (`gateway_onnx.graph.smoothing`):
how large each input channel of the smoothed projections gets on real text.

The float32 torch model reads a fixed set of chat exchanges (`EXCHANGES`, chat-templated,
so the template's special tokens, which drive the largest activations, are in them); hooks
on the RMS norms and the down projections record each channel's largest magnitude. The
set ships with the package: nothing is downloaded, and the same weights always calibrate
the same way. It is distinct from the prompts the precision benchmark scores.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

EXCHANGES: tuple[tuple[str, str], ...] = (
    (
        "Tell me a short story about a lighthouse keeper.",
        "Every night for forty years, Mara climbed the hundred steps of the lighthouse to "
        "light the lamp. One stormy evening a small boat lost its way, and her light "
        "brought it safely into the harbour.",
    ),
    (
        "What are the main differences between Python and JavaScript?",
        "Python is mostly used for scripting, data science and back-end work, and it uses "
        "indentation for blocks. JavaScript runs in every web browser, uses braces, and is "
        "built around an event loop.",
    ),
    (
        "List five fruits that are high in vitamin C.",
        "1. Oranges\n2. Kiwis\n3. Strawberries\n4. Guavas\n5. Papayas",
    ),
    (
        "What is 17 times 23?",
        "17 times 23 is 391: 17 x 20 = 340, and 17 x 3 = 51, so 340 + 51 = 391.",
    ),
    (
        "Write a function that checks whether a number is even.",
        "```python\ndef is_even(n: int) -> bool:\n    return n % 2 == 0\n```",
    ),
    (
        "Explain how vaccines work to a ten-year-old.",
        "A vaccine shows your body a harmless picture of a germ. Your immune system learns "
        "what it looks like, so if the real germ ever shows up, your body fights it off "
        "quickly.",
    ),
    (
        "Describe the water cycle.",
        "Water evaporates from oceans and lakes, rises and cools into clouds, falls as rain "
        "or snow, and flows back through rivers and the ground to the sea.",
    ),
    (
        'Reply in JSON with the keys "city" and "country" for the Eiffel Tower.',
        '{"city": "Paris", "country": "France"}',
    ),
)


def input_peaks(folder: Path) -> dict[str, np.ndarray]:
    """Each smoothed projection input's per-channel largest magnitude over `EXCHANGES`,
    keyed as `gateway_onnx.graph.build_graph` reads them: `{layer}.qkv`, `{layer}.gate_up`,
    `{layer}.down` and `head`. Kept while the folder's weights files are unchanged, so a
    model's plain and LoRA exports share one calibration; callers only read the arrays."""
    files = sorted(folder.glob("*.safetensors"))
    return _peaks(folder, tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=2)
def _peaks(folder: Path, files: tuple[tuple[str, int, int], ...]) -> dict[str, np.ndarray]:
    """`input_peaks`, computed; `files` (names, sizes, modification times) keys the cache."""
    import torch
    from gateway_torch.imports import LOADING, transformers_module

    # Models load in parallel threads (the embedding model beside this one): building
    # this one outside `LOADING` gave the other meta tensors (`gateway_torch.imports`).
    transformers = transformers_module()
    with LOADING:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peaks: dict[str, np.ndarray] = {}

    def record(key: str) -> Any:
        def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
            peak = output.detach().abs().reshape(-1, output.shape[-1]).amax(0).numpy()
            peaks[key] = np.maximum(peaks[key], peak) if key in peaks else peak

        return hook

    for i, layer in enumerate(model.model.layers):
        layer.input_layernorm.register_forward_hook(record(f"{i}.qkv"))
        layer.post_attention_layernorm.register_forward_hook(record(f"{i}.gate_up"))
        layer.mlp.down_proj.register_forward_pre_hook(
            lambda module, inputs, key=f"{i}.down": record(key)(module, None, inputs[0])
        )
    model.model.norm.register_forward_hook(record("head"))
    with torch.inference_mode():
        for question, answer in EXCHANGES:
            chat = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            ids = tokenizer.apply_chat_template(chat, return_tensors="pt")
            model(ids)
    return peaks
