"""Which GGUF quantization types an export can write, and the submission check.

Names are lower case, as users write them (`f16`, `q8_0`, `q4_k_m`). The installed `gguf`
package writes a few types itself (`native_types`); every other llama.cpp file type
(`llama_quantize_types`: the k-quants, the i-quants...) is made by a `llama-quantize`
binary from an f16 GGUF, so it can be written only where one is configured.
"""

from __future__ import annotations

from functools import cache

from gateway.errors import InvalidRequest

NATIVE_CANDIDATES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
"""The general-purpose types the `gguf` package may quantize to (each is probed: only those
the installed version really writes count). Its ternary and FP4 types are left out: they
are for models trained for them."""

PARAM = "quantization_types"


@cache
def native_types() -> frozenset[str]:
    """The types the installed `gguf` package quantizes to itself (probed on one block)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quantize

    found = set()
    for name in NATIVE_CANDIDATES:
        qtype = GGMLQuantizationType[name.upper()]
        block = np.linspace(-1.0, 1.0, GGML_QUANT_SIZES[qtype][0], dtype=np.float32)
        try:
            quantize(block.reshape(1, -1), qtype)
        except (NotImplementedError, KeyError):
            continue
        found.add(name)
    return frozenset(found)


@cache
def llama_quantize_types() -> frozenset[str]:
    """Every llama.cpp file type (`gguf.LlamaFileType`, `MOSTLY_Q4_K_M` -> `q4_k_m`) that
    the `gguf` package cannot write itself: a `llama-quantize` binary makes those."""
    from gguf import LlamaFileType

    names = {
        member.name.removeprefix("MOSTLY_").lower()
        for member in LlamaFileType
        if member.name.startswith("MOSTLY_")
    }
    return frozenset(names - native_types())


def writable_types(llama_quantize: str | None) -> frozenset[str]:
    """The quantization types an export can write: the `gguf` package's own, plus every
    llama.cpp type when a `llama-quantize` binary is configured (its path, or None)."""
    if llama_quantize:
        return native_types() | llama_quantize_types()
    return native_types()


def check_types(types: list[str], llama_quantize: str | None) -> None:
    """Refuse (InvalidRequest, param `quantization_types`) any type that cannot be written:
    unknown names, and llama-quantize types when no binary is configured."""
    writable = writable_types(llama_quantize)
    refused = [t for t in types if t not in writable]
    if not refused:
        return
    listed = ", ".join(f"`{t}`" for t in refused)
    known = ", ".join(sorted(writable))
    message = f"Cannot write the quantization type(s) {listed}. This server writes: {known}."
    cased = [t for t in refused if t.lower() in writable]
    if cased:
        message += f" Names are lower case (`{cased[0].lower()}`)."
    if not llama_quantize:
        message += " Other types (such as `q4_k_m`) need a configured llama-quantize binary."
    raise InvalidRequest(message, param=PARAM, code="invalid_quantization_type")


def needs_llama_quantize(qtype: str) -> bool:
    """Whether `qtype` is made by llama-quantize (not by the `gguf` package itself)."""
    return qtype in llama_quantize_types()
