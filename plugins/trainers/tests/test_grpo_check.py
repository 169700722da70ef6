"""What the `grpo` trainer refuses at submission, and the settings it reads."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from gateway_trainers.grpo.check import GrpoConfig
from gateway_trainers.grpo.trainer import GrpoTrainer

from gateway.errors import InvalidRequest


def _group(**overrides: Any) -> dict[str, Any]:
    group: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Name a warm color."}],
        "completions": [{"text": "Orange", "reward": 1.0}, {"text": "Blue", "reward": 0}],
    }
    group.update(overrides)
    return group


def _refused(data: Any, config: dict[str, Any] | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        GrpoTrainer().check(data, config or {})
    return caught.value


def test_kiln_seed_request_is_accepted() -> None:
    GrpoTrainer().check(
        [_group()], {"output_name": "grpo-demo", "learning_rate": 1e-5, "kl_coeff": 0.1}
    )


def test_a_group_of_one_completion_is_accepted() -> None:
    # It carries no comparison (advantage 0), as in Kiln; the job still runs.
    GrpoTrainer().check([_group(completions=[{"text": "Orange", "reward": 1}])], {})


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ([], "groups"),
        ({"messages": []}, "groups"),
        (["text"], "groups[0]"),
        ([_group(messages=[])], "groups[0].messages"),
        ([_group(messages="Name a warm color.")], "groups[0].messages"),
        ([_group(messages=[{"content": "hi"}])], "groups[0].messages[0].role"),
        ([_group(messages=[{"role": "robot", "content": "hi"}])], "groups[0].messages[0].role"),
        (
            [_group(messages=[{"role": "assistant", "content": "Orange"}])],
            "groups[0].messages[0].role",
        ),
        ([_group(messages=[{"role": "user", "content": None}])], "groups[0].messages[0].content"),
        ([_group(), _group(completions=[])], "groups[1].completions"),
        ([_group(completions=None)], "groups[0].completions"),
        ([_group(completions=["Orange"])], "groups[0].completions[0]"),
        ([_group(completions=[{"reward": 1.0}])], "groups[0].completions[0].text"),
        ([_group(completions=[{"text": "", "reward": 1.0}])], "groups[0].completions[0].text"),
        ([_group(completions=[{"text": "Red"}])], "groups[0].completions[0].reward"),
        (
            [_group(completions=[{"text": "Red", "reward": 1}, {"text": "Blue", "reward": "0"}])],
            "groups[0].completions[1].reward",
        ),
        (
            [_group(completions=[{"text": "Red", "reward": True}])],
            "groups[0].completions[0].reward",
        ),
        (
            [_group(completions=[{"text": "Red", "reward": float("nan")}])],
            "groups[0].completions[0].reward",
        ),
    ],
)
def test_malformed_groups_are_refused_naming_the_field(data: Any, param: str) -> None:
    assert _refused(data).param == param


@pytest.mark.parametrize(
    ("config", "param"),
    [
        ({"learning_rate": 0}, "config.learning_rate"),
        ({"learning_rate": "fast"}, "config.learning_rate"),
        ({"kl_coeff": -0.1}, "config.kl_coeff"),
        ({"clip_epsilon": 0}, "config.clip_epsilon"),
        ({"clip_epsilon": 1.5}, "config.clip_epsilon"),
        ({"lora_rank": 0}, "config.lora_rank"),
        ({"lora_rank": 2.5}, "config.lora_rank"),
        ({"lora_alpha": -1}, "config.lora_alpha"),
        ({"epochs": 0}, "config.epochs"),
        ({"checkpoint_interval": 0}, "config.checkpoint_interval"),
        ({"base_adapter": 3}, "config.base_adapter"),
        ({"base_adapter": "../up"}, "config.base_adapter"),
        ({"epochs": None}, "config.epochs"),
        ({"kl_coeff": float("inf")}, "config.kl_coeff"),
        ({"seed": -1}, "config.seed"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(config: dict[str, Any], param: str) -> None:
    assert _refused([_group()], config).param == param


def test_defaults_are_kilns_and_optional_nulls_take_them() -> None:
    config = GrpoConfig.parse({"epochs": 2.0, "checkpoint_interval": None, "base_adapter": None})
    assert config == GrpoConfig(epochs=2)
    assert (config.learning_rate, config.kl_coeff, config.clip_epsilon) == (1e-5, 0.1, 0.2)
    assert (config.lora_rank, config.lora_alpha, config.base_adapter) == (16, 32.0, None)


def test_checking_imports_no_torch() -> None:
    code = (
        "import sys; from gateway_trainers.grpo.trainer import GrpoTrainer; "
        "GrpoTrainer().check([{'messages': [{'role': 'user', 'content': 'x'}], "
        "'completions': [{'text': 'y', 'reward': 1}]}], {}); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
