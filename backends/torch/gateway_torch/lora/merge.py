"""Merging stored LoRA adapters into a new one with peft's `add_weighted_adapter` (Kiln's
`POST /v1/adapters/merge`).

The sources are PEFT LoRA directories for the base model. They are loaded side by side into a
deep copy of the loaded base model, peft combines them into one new adapter, and that adapter
alone is saved as a PEFT directory. The served model is never touched.

Notation: source i has matrices `A_i` (r x in) and `B_i` (out x r), request weight `w_i`, and
scaling `s_i = lora_alpha / r` (`lora_alpha / sqrt(r)` with rsLoRA; `alpha_pattern` per
module), so its weight delta is `s_i * B_i @ A_i`. Every merged adapter is saved with
`lora_alpha = r` and rsLoRA off, so its own scaling is exactly 1 and its delta is `B @ A`.

- `concat` (peft `cat`): `A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]` stacked along the rank,
  `B = [B_1 | B_2 | ...]`; the rank is the sum of the source ranks. Exact: the delta is
  `sum_i w_i s_i B_i @ A_i`. Ranks may differ.
- `weighted_average` (peft `linear`): with `c_i = sqrt(|w_i s_i|)`,
  `A = sum_i sign(w_i) c_i A_i` and `B = sum_i c_i B_i`, at the common rank (ranks must be
  equal). For one source this is exact (`w s B @ A`); for several, the delta is
  `sum_i sum_j sign(w_j) c_i c_j B_i @ A_j`, which carries cross terms `B_i @ A_j` and is only a
  rough stand-in for the weighted sum of the deltas. Kiln's weighted_average sums A and B
  separately with the raw weights (`A = sum w_i A_i`, `B = sum w_i B_i`, keeping the sources'
  scaling), so its delta scales with the weights squared: one source at weight 0.5 gives a
  quarter of its delta there, and exactly half here; two copies of one adapter at 0.5 each
  give its delta once there and twice here (`(c_1 + c_2)^2 = 2s`).
- `ties` (peft `ties`, majority sign by total): applied to the A matrices and to the B
  matrices separately, with the same per-side factors as `linear`: each source matrix keeps
  its `density` fraction of entries with the largest magnitude (the rest become 0); each entry
  elects the sign of the sum of the kept unweighted values (+ on a tie); the merged entry is
  the mean, over the sources whose kept value has that sign, of their weighted values (0
  where none has). Equal ranks needed; `density` defaults to 0.2.

peft treats a single source as `linear` whatever the mode (exact: `w s B @ A`). The merged
config is the first source's (base model name, dropout, task type...) with the new rank.
`concat` writes into tensors of the base model's dtype (bf16 on a bf16 model); the other modes
keep the dtype peft loads the sources in (float32 for 16-bit adapters).

Refused with `InvalidRequest` (code `adapter_merge_invalid`) before any work: no sources, an
unknown mode, a non-finite weight, `density` with a mode other than `ties` or outside (0, 1],
a source that is not a PEFT LoRA directory (config and safetensors weights), sources that use
what the merge would silently drop (DoRA, LoRA bias, `modules_to_save`, trainable tokens,
targeted parameters), sources whose `target_modules` differ, and unequal ranks for
`weighted_average`/`ties`. A source whose weights do not fit the base model (unknown modules,
wrong shapes, missing or extra tensors) is refused once loading it fails.
"""

from __future__ import annotations

import copy
import math
import shutil
import uuid
from pathlib import Path
from typing import Any, Literal

import torch

from gateway.errors import InvalidRequest
from gateway_torch.imports import LOADING, transformers_module

MergeMode = Literal["weighted_average", "ties", "concat"]

CODE = "adapter_merge_invalid"
DEFAULT_TIES_DENSITY = 0.2
_COMBINATION: dict[str, str] = {"weighted_average": "linear", "ties": "ties", "concat": "cat"}
_MERGED = "default"
"""The merged adapter's name in the working model: peft saves the adapter named `default` at
the top level of the directory (any other name goes into a subfolder)."""
_DROPPED = {
    "use_dora": "DoRA",
    "lora_bias": "a LoRA bias",
    "modules_to_save": "`modules_to_save`",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "`target_parameters`",
}
"""LoraConfig fields whose weights add_weighted_adapter does not merge."""


def merge_adapters(
    base: torch.nn.Module,
    sources: list[tuple[Path, float]],
    mode: MergeMode,
    density: float | None,
    output: Path,
) -> int:
    """Merge the PEFT LoRA adapters at `sources` (directory, weight) with peft's
    add_weighted_adapter and save the result as a PEFT directory at `output` (which must not
    exist; created). Returns the number of tensors in the written adapter_model.safetensors.
    `base` is the loaded base model (a transformers causal LM); it must NOT be modified: work on
    a deep copy (copy.deepcopy) of it. Blocking: callers run it in a thread.

    The copy and the adapters are built while holding `LOADING` (peft creates modules, which a
    model load in another thread would corrupt), so do not call it with that lock held. The
    result is written into a hidden `.staging-merge-*` sibling of `output` and renamed into
    place: on any failure nothing is left at `output` and the sibling is removed.
    """
    if output.exists():
        raise FileExistsError(f"{output} already exists")
    _import_peft()
    from peft.utils import SAFETENSORS_WEIGHTS_NAME

    ties_density = _check_request(sources, mode, density)
    configs = [_read_config(path, i) for i, (path, _) in enumerate(sources)]
    _check_compatible([path for path, _ in sources], configs, mode)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".staging-merge-{uuid.uuid4().hex}"
    try:
        with LOADING:
            model = _load_sources(base, sources, configs)
            model.add_weighted_adapter(
                adapters=[_source_name(i) for i in range(len(sources))],
                weights=[float(weight) for _, weight in sources],
                adapter_name=_MERGED,
                combination_type=_COMBINATION[mode],
                density=ties_density,
            )
        merged = model.peft_config[_MERGED]
        merged.use_rslora = False  # the weights are computed for a scaling of lora_alpha / r = 1
        merged.base_model_name_or_path = next(
            (c.base_model_name_or_path for c in configs if c.base_model_name_or_path), None
        )
        model.save_pretrained(
            str(staging), selected_adapters=[_MERGED], save_embedding_layers=False
        )
        del model
        (staging / "README.md").unlink(missing_ok=True)  # peft's model card: not the adapter
        count = _tensor_count(staging / SAFETENSORS_WEIGHTS_NAME)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return count


def _check_request(
    sources: list[tuple[Path, float]], mode: str, density: float | None
) -> float | None:
    """The density peft gets (None unless `ties`); refuses what the request gets wrong."""
    if not sources:
        raise InvalidRequest(
            "A merge needs at least one source adapter.", param="sources", code=CODE
        )
    if mode not in _COMBINATION:
        raise InvalidRequest(
            f"Unknown merge mode `{mode}`; use one of {', '.join(_COMBINATION)}.",
            param="mode",
            code=CODE,
        )
    for i, (path, weight) in enumerate(sources):
        if not math.isfinite(weight):
            raise InvalidRequest(
                f"The weight of source `{path.name}` must be a finite number.",
                param=f"sources[{i}].weight",
                code=CODE,
            )
    if density is not None and mode != "ties":
        raise InvalidRequest(
            f"`density` applies only to mode `ties`, not `{mode}`.", param="density", code=CODE
        )
    if mode != "ties":
        return None
    if density is None:
        return DEFAULT_TIES_DENSITY
    if not 0 < density <= 1:
        raise InvalidRequest(
            f"`density` must be in (0, 1] (the fraction of each matrix kept); got {density}.",
            param="density",
            code=CODE,
        )
    return float(density)


def _read_config(path: Path, index: int) -> Any:
    """The LoraConfig of the PEFT directory `path`; refused when it is not a usable one."""
    from peft import LoraConfig, PeftConfig
    from peft.utils import CONFIG_NAME as config_file
    from peft.utils import SAFETENSORS_WEIGHTS_NAME as weights_file

    param = f"sources[{index}]"
    if not (path / config_file).is_file() or not (path / weights_file).is_file():
        raise InvalidRequest(
            f"Source `{path.name}` is not a PEFT adapter: it needs `{config_file}` and "
            f"`{weights_file}`.",
            param=param,
            code=CODE,
        )
    try:
        config = PeftConfig.from_pretrained(str(path))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise InvalidRequest(
            f"Source `{path.name}` has an unreadable `{config_file}`: {_reason(exc)}",
            param=param,
            code=CODE,
        ) from exc
    if not isinstance(config, LoraConfig):
        kind = getattr(config.peft_type, "value", config.peft_type)
        raise InvalidRequest(
            f"Source `{path.name}` is not a LoRA adapter (its `peft_type` is `{kind}`); only "
            "LoRA adapters merge.",
            param=param,
            code=CODE,
        )
    ranks = [config.r, *(config.rank_pattern or {}).values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        raise InvalidRequest(
            f"Source `{path.name}` has an invalid rank `r` in `{config_file}`.",
            param=param,
            code=CODE,
        )
    dropped = [what for field, what in _DROPPED.items() if getattr(config, field, None)]
    if dropped:
        raise InvalidRequest(
            f"Source `{path.name}` uses {', '.join(dropped)}, which merging would drop; only "
            "plain LoRA matrices merge.",
            param=param,
            code=CODE,
        )
    return config


def _check_compatible(paths: list[Path], configs: list[Any], mode: str) -> None:
    """Refuses sources that target different modules, or ranks peft cannot combine: every
    mode but a `concat` of several sources adds matrices entry by entry (peft merges a single
    source linearly), so it needs one rank throughout and across the sources."""
    first = configs[0]
    for path, config in zip(paths[1:], configs[1:], strict=True):
        if config.target_modules != first.target_modules:
            raise InvalidRequest(
                f"Sources `{paths[0].name}` and `{path.name}` target different modules: "
                f"{_targets_differ(first.target_modules, config.target_modules)}.",
                param="sources",
                code=CODE,
            )
    if mode == "concat" and len(configs) > 1:
        return
    ranks = [_ranks(config) for config in configs]
    if len(set(ranks)) > 1 or any(len(r) > 1 for r in ranks):
        listed = ", ".join(
            f"`{path.name}`: {'/'.join(map(str, r))}" for path, r in zip(paths, ranks, strict=True)
        )
        raise InvalidRequest(
            f"Mode `{mode}` needs sources of one and the same rank (`concat` of several sources "
            f"takes any ranks); ranks: {listed}.",
            param="sources",
            code=CODE,
        )


def _load_sources(
    base: torch.nn.Module, sources: list[tuple[Path, float]], configs: list[Any]
) -> Any:
    """A PeftModel over a deep copy of `base` holding every source under `_source_name(i)`;
    refuses a source whose weights do not fit the model. Call it holding `LOADING`."""
    from peft import PeftModel

    device = str(next(base.parameters()).device)
    key_mapping = getattr(base, "_checkpoint_conversion_mapping", None) or {}
    model: Any = None
    for i, (path, _) in enumerate(sources):
        name = _source_name(i)
        try:
            if model is None:
                model = PeftModel(copy.deepcopy(base), copy.deepcopy(configs[0]), adapter_name=name)
            loaded = model.load_adapter(
                str(path), adapter_name=name, torch_device=device, key_mapping=key_mapping
            )
        except torch.cuda.OutOfMemoryError:
            raise
        except (ValueError, TypeError, KeyError, RuntimeError, OSError) as exc:
            raise _not_for_this_model(path, i, _reason(exc)) from exc
        problems = [
            f"{len(keys)} {what} tensor(s) such as `{keys[0]}`"
            for keys, what in (
                (loaded.missing_keys, "missing"),
                (loaded.unexpected_keys, "unknown"),
            )
            if keys
        ]
        if problems:
            raise _not_for_this_model(path, i, " and ".join(problems))
    return model


def _not_for_this_model(path: Path, index: int, reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"Source `{path.name}` is not a LoRA adapter for this model: {reason}",
        param=f"sources[{index}]",
        code=CODE,
    )


def _ranks(config: Any) -> tuple[int, ...]:
    """The distinct ranks of one adapter (`r`, and any `rank_pattern` overrides)."""
    return tuple(sorted({config.r, *(config.rank_pattern or {}).values()}))


def _targets_differ(a: Any, b: Any) -> str:
    """How two `target_modules` values (module-name sets or one regex string) differ."""
    if isinstance(a, set) and isinstance(b, set):
        return "; ".join(
            f"only the {which} targets {', '.join(f'`{m}`' for m in sorted(only))}"
            for which, only in (("first", a - b), ("second", b - a))
            if only
        )
    shown = [sorted(t) if isinstance(t, set) else t for t in (a, b)]
    return f"`{shown[0]}` against `{shown[1]}`"


def _tensor_count(weights: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        return len(list(handle.keys()))


def _source_name(index: int) -> str:
    return f"source_{index}"


def _reason(exc: BaseException) -> str:
    """The gist of a loading error: its first line, and the next one where the first only
    introduces a list (torch's "Error(s) in loading state_dict ...:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return text[:400]


def _import_peft() -> None:
    """Import peft once, safely: it resolves transformers names as it imports (see
    `gateway_torch.imports`), so it goes through `transformers_module()` and `LOADING`."""
    transformers_module()
    with LOADING:
        import peft  # noqa: F401
