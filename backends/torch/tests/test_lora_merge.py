"""Merging LoRA adapters with peft (`gateway_torch.lora.merge`) on the real SmolLM2.

The sources are small random adapters made with peft on a copy of the session's model; the
expected merged matrices are computed here from the saved source tensors, following the
semantics the merge module documents.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from gateway_torch.causal import TorchBackend
from gateway_torch.lora.merge import merge_adapters
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from gateway.errors import InvalidRequest

LAYERS = 30
MODULE = "base_model.model.model.layers.3.self_attn.q_proj"
SOURCES: dict[str, tuple[int, list[str]]] = {
    "one": (4, ["q_proj", "v_proj"]),
    "two": (4, ["q_proj", "v_proj"]),
    "rank8": (8, ["q_proj", "v_proj"]),
    "kv": (4, ["k_proj", "v_proj"]),
}
"""The source adapters the tests merge, as (rank, target modules); peft's default lora_alpha
is 8, so the rank-4 ones have a scaling of 2."""


@pytest.fixture(scope="module")
def base(smol: TorchBackend) -> torch.nn.Module:
    return smol._lm.model


@pytest.fixture(scope="module")
def adapters(base: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random LoRA adapters saved as PEFT directories (`SOURCES`), and broken ones to refuse."""
    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(1234)
    model: Any = None
    for name, (rank, targets) in SOURCES.items():
        config = LoraConfig(r=rank, target_modules=targets, init_lora_weights=False)
        if model is None:
            model = get_peft_model(copy.deepcopy(base), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    for name in SOURCES:  # an adapter not named `default` goes to `root/<name>`
        model.save_pretrained(str(root), selected_adapters=[name], save_embedding_layers=False)
    del model
    paths = {name: root / name for name in SOURCES}

    # Same config as `one`, but rank-2 tensors: shapes the model refuses.
    paths["shapes"] = root / "shapes"
    paths["shapes"].mkdir()
    (paths["shapes"] / "adapter_config.json").write_text(config_text(paths["one"]))
    halved = {
        key: (t[:2] if ".lora_A." in key else t[:, :2]).contiguous()
        for key, t in tensors(paths["one"]).items()
    }
    save_file(halved, str(paths["shapes"] / "adapter_model.safetensors"))

    # Same weights as `one`, for modules the model does not have.
    paths["modules"] = root / "modules"
    paths["modules"].mkdir()
    raw = json.loads(config_text(paths["one"]))
    raw["target_modules"] = ["nonexistent_proj"]
    (paths["modules"] / "adapter_config.json").write_text(json.dumps(raw))
    (paths["modules"] / "adapter_model.safetensors").write_bytes(
        (paths["one"] / "adapter_model.safetensors").read_bytes()
    )

    # Only layer 0 of `one`: the other 29 layers' tensors are missing.
    paths["layer0"] = root / "layer0"
    paths["layer0"].mkdir()
    (paths["layer0"] / "adapter_config.json").write_text(config_text(paths["one"]))
    first = {k: v for k, v in tensors(paths["one"]).items() if ".layers.0." in k}
    save_file(first, str(paths["layer0"] / "adapter_model.safetensors"))

    paths["ia3"] = root / "ia3"
    paths["ia3"].mkdir()
    ia3 = {"peft_type": "IA3", "target_modules": ["q_proj"], "feedforward_modules": []}
    (paths["ia3"] / "adapter_config.json").write_text(json.dumps(ia3))
    (paths["ia3"] / "adapter_model.safetensors").write_bytes(
        (paths["one"] / "adapter_model.safetensors").read_bytes()
    )

    paths["empty"] = root / "empty"
    paths["empty"].mkdir()
    paths["garbage"] = root / "garbage"
    paths["garbage"].mkdir()
    (paths["garbage"] / "adapter_config.json").write_text("{not json")
    (paths["garbage"] / "adapter_model.safetensors").write_bytes(b"nope")
    return paths


def config_text(path: Path) -> str:
    return (path / "adapter_config.json").read_text()


def config(path: Path) -> dict[str, Any]:
    return json.loads(config_text(path))


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in load_file(str(path / "adapter_model.safetensors")).items()}


def delta(path: Path, module: str) -> torch.Tensor:
    """The weight delta an adapter directory adds to `module`: scaling * B @ A."""
    raw, weights = config(path), tensors(path)
    scaling = raw["lora_alpha"] / (math.sqrt(raw["r"]) if raw["use_rslora"] else raw["r"])
    return scaling * weights[f"{module}.lora_B.weight"] @ weights[f"{module}.lora_A.weight"]


def lora_keys() -> set[str]:
    """The tensor names of an adapter on q_proj and v_proj of every layer."""
    return {
        f"base_model.model.model.layers.{i}.self_attn.{m}.lora_{s}.weight"
        for i in range(LAYERS)
        for m in ("q_proj", "v_proj")
        for s in "AB"
    }


def assert_loads(base: torch.nn.Module, path: Path) -> None:
    """`path` loads with peft onto a copy of the model, with exactly the saved weights."""
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(path))
    saved = tensors(path)
    state = {
        k.replace(".default.", "."): v
        for k, v in model.state_dict().items()
        if ".lora_" in k and ".default." in k
    }
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(state[key].double().cpu(), value), key


def test_concat_adds_the_weighted_deltas_exactly(
    base: torch.nn.Module, adapters: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "merged"
    count = merge_adapters(
        base, [(adapters["one"], 0.7), (adapters["two"], -0.4)], "concat", None, output
    )

    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no staging left beside it
    assert sorted(p.name for p in output.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    saved = tensors(output)
    assert count == len(saved) and saved.keys() == lora_keys()
    raw = config(output)
    assert (raw["r"], raw["lora_alpha"], raw["use_rslora"]) == (8, 8, False)
    assert set(raw["target_modules"]) == {"q_proj", "v_proj"}
    assert raw["base_model_name_or_path"] == config(adapters["one"])["base_model_name_or_path"]
    for module in (MODULE, "base_model.model.model.layers.29.self_attn.v_proj"):
        expected = 0.7 * delta(adapters["one"], module) - 0.4 * delta(adapters["two"], module)
        assert torch.allclose(delta(output, module), expected, atol=1e-5, rtol=0)
    assert_loads(base, output)


def test_weighted_average_is_peft_linear(
    base: torch.nn.Module, adapters: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "merged"
    weights = {"one": 0.6, "two": -0.3}
    merge_adapters(
        base, [(adapters[n], w) for n, w in weights.items()], "weighted_average", None, output
    )

    raw = config(output)
    assert (raw["r"], raw["lora_alpha"]) == (4, 4)
    saved = tensors(output)
    assert saved.keys() == lora_keys()
    sources = {name: tensors(adapters[name]) for name in weights}
    # c_i = sqrt(|w_i * s_i|), s_i = 8 / 4; the sign of w_i goes on the A side only.
    factors = {name: math.sqrt(abs(w * 2.0)) for name, w in weights.items()}
    for key, value in saved.items():
        expected = torch.stack(
            [
                factors[name]
                * (math.copysign(1.0, w) if ".lora_A." in key else 1.0)
                * sources[name][key]
                for name, w in weights.items()
            ]
        ).sum(0)
        assert torch.allclose(value, expected, atol=1e-6, rtol=0), key
    # Not the weighted sum of the deltas: the cross terms B_one @ A_two and B_two @ A_one remain.
    weighted = 0.6 * delta(adapters["one"], MODULE) - 0.3 * delta(adapters["two"], MODULE)
    assert not torch.allclose(delta(output, MODULE), weighted, atol=1e-3)
    assert_loads(base, output)


def test_ties_keeps_a_density_share_and_differs_from_linear(
    base: torch.nn.Module, adapters: dict[str, Path], tmp_path: Path
) -> None:
    sources = [(adapters["one"], 0.6), (adapters["two"], 0.3)]
    merge_adapters(base, sources, "ties", 0.5, tmp_path / "ties")
    merge_adapters(base, sources, "weighted_average", None, tmp_path / "linear")

    ties, linear = tensors(tmp_path / "ties"), tensors(tmp_path / "linear")
    assert ties.keys() == linear.keys() == lora_keys()
    assert config(tmp_path / "ties")["r"] == 4
    nonzero = sum(int(t.count_nonzero()) for t in ties.values())
    share = nonzero / sum(t.numel() for t in ties.values())
    # Each source keeps half its entries; an entry survives where either kept one: about
    # 1 - 0.5^2 = 0.75 for independent random matrices, never less than the density.
    assert 0.5 <= share <= 0.85, share
    assert all(int(t.count_nonzero()) == t.numel() for t in linear.values())
    assert not torch.allclose(delta(tmp_path / "ties", MODULE), delta(tmp_path / "linear", MODULE))
    assert_loads(base, tmp_path / "ties")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer of `model`, by name."""
    return {
        name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]
    }


def test_the_base_model_is_not_modified(
    base: torch.nn.Module, adapters: dict[str, Path], tmp_path: Path
) -> None:
    before = snapshot(base)
    grads = {name: p.requires_grad for name, p in base.named_parameters()}
    modules = [name for name, _ in base.named_modules()]

    merge_adapters(
        base, [(adapters["one"], 1.0), (adapters["two"], 1.0)], "ties", None, tmp_path / "m"
    )

    after = snapshot(base)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert {name: p.requires_grad for name, p in base.named_parameters()} == grads
    assert [name for name, _ in base.named_modules()] == modules
    assert not any(isinstance(m, LoraLayer) for m in base.modules())
    assert not hasattr(base, "peft_config")


Case = Callable[[dict[str, Path]], list[tuple[Path, float]]]
INVALID: dict[str, tuple[Case, str, float | None, str, str]] = {
    # name: (sources, mode, density, param, text in the message)
    "no sources": (lambda a: [], "weighted_average", None, "sources", "at least one"),
    "ranks differ (linear)": (
        lambda a: [(a["one"], 0.5), (a["rank8"], 0.5)],
        "weighted_average",
        None,
        "sources",
        "`one`: 4, `rank8`: 8",
    ),
    "ranks differ (ties)": (
        lambda a: [(a["one"], 0.5), (a["rank8"], 0.5)],
        "ties",
        0.3,
        "sources",
        "`one`: 4, `rank8`: 8",
    ),
    "targets differ": (
        lambda a: [(a["one"], 1.0), (a["kv"], 1.0)],
        "concat",
        None,
        "sources",
        "only the first targets `q_proj`; only the second targets `k_proj`",
    ),
    "density with concat": (
        lambda a: [(a["one"], 1.0), (a["two"], 1.0)],
        "concat",
        0.5,
        "density",
        "only to mode `ties`",
    ),
    "density 0": (lambda a: [(a["one"], 1.0), (a["two"], 1.0)], "ties", 0.0, "density", "(0, 1]"),
    "density above 1": (
        lambda a: [(a["one"], 1.0), (a["two"], 1.0)],
        "ties",
        1.5,
        "density",
        "(0, 1]",
    ),
    "unknown mode": (lambda a: [(a["one"], 1.0)], "svd", None, "mode", "Unknown merge mode"),
    "weight not finite": (
        lambda a: [(a["one"], 1.0), (a["two"], math.nan)],
        "concat",
        None,
        "sources[1].weight",
        "finite",
    ),
    "not an adapter": (
        lambda a: [(a["one"], 1.0), (a["empty"], 1.0)],
        "concat",
        None,
        "sources[1]",
        "is not a PEFT adapter",
    ),
    "missing directory": (
        lambda a: [(a["one"].parent / "absent", 1.0)],
        "concat",
        None,
        "sources[0]",
        "is not a PEFT adapter",
    ),
    "unreadable config": (
        lambda a: [(a["garbage"], 1.0)],
        "concat",
        None,
        "sources[0]",
        "unreadable",
    ),
    "wrong shapes": (
        lambda a: [(a["one"], 1.0), (a["shapes"], 1.0)],
        "concat",
        None,
        "sources[1]",
        "not a LoRA adapter for this model: Error(s) in loading state_dict for PeftModel: "
        "size mismatch",
    ),
    "missing tensors": (
        lambda a: [(a["layer0"], 1.0), (a["one"], 1.0)],
        "concat",
        None,
        "sources[0]",
        "not a LoRA adapter for this model: 116 missing tensor(s)",
    ),
    "not LoRA": (
        lambda a: [(a["one"], 1.0), (a["ia3"], 1.0)],
        "ties",
        None,
        "sources[1]",
        "is not a LoRA adapter (its `peft_type` is `IA3`)",
    ),
    "unknown modules": (
        lambda a: [(a["modules"], 1.0)],
        "concat",
        None,
        "sources[0]",
        "not a LoRA adapter for this model",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_merges_are_refused_and_leave_nothing(
    case: str, base: torch.nn.Module, adapters: dict[str, Path], tmp_path: Path
) -> None:
    sources, mode, density, param, text = INVALID[case]
    output = tmp_path / "store" / "merged"

    with pytest.raises(InvalidRequest) as raised:
        merge_adapters(base, sources(adapters), mode, density, output)  # type: ignore[arg-type]

    assert raised.value.code == "adapter_merge_invalid"
    assert raised.value.param == param
    assert text in raised.value.message
    assert not output.exists()
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_an_existing_output_is_never_overwritten(
    base: torch.nn.Module, adapters: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "merged").mkdir()
    with pytest.raises(FileExistsError):
        merge_adapters(base, [(adapters["one"], 1.0)], "concat", None, tmp_path / "merged")
    assert not any((tmp_path / "merged").iterdir())
