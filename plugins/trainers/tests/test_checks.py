"""Submissions refused in the server, each naming the offending field; no torch there."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from gateway_trainers.finetune import FinetuneTrainer
from gateway_trainers.sft import DEFAULTS, SftTrainer
from trainer_helpers import ZORBANIA

from gateway.errors import InvalidRequest

GOOD = [{"messages": ZORBANIA}]


def _refused(call: Any, *args: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        call(*args)
    return caught.value


def test_a_good_sft_submission_passes() -> None:
    SftTrainer().check(GOOD, dict(DEFAULTS))
    SftTrainer().check(GOOD, {})


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ([], "examples"),
        (None, "examples"),
        ([{"messages": []}], "examples[0].messages"),
        (["text"], "examples[0]"),
        ([{"prompt": "x"}], "examples[0].messages"),
        ([{"messages": ZORBANIA[:1]}], "examples[0].messages"),
        (
            [*GOOD, {"messages": [{"role": "robot", "content": "x"}]}],
            "examples[1].messages[0].role",
        ),
        (
            [{"messages": [{"role": "user", "content": 3}, ZORBANIA[1]]}],
            "examples[0].messages[0].content",
        ),
        ([{"messages": [ZORBANIA[1], ZORBANIA[0]]}], "examples[0].messages[0].role"),
        ([{"messages": [ZORBANIA[0], "hi"]}], "examples[0].messages[1]"),
    ],
)
def test_bad_examples_are_refused_by_field(data: Any, param: str) -> None:
    assert _refused(SftTrainer().check, data, {}).param == param


@pytest.mark.parametrize(
    ("config", "param"),
    [
        ({"epochs": 0}, "config.epochs"),
        ({"epochs": 1.5}, "config.epochs"),
        ({"epochs": True}, "config.epochs"),
        ({"epochs": None}, "config.epochs"),
        ({"learning_rate": 0}, "config.learning_rate"),
        ({"learning_rate": -1e-4}, "config.learning_rate"),
        ({"learning_rate": float("nan")}, "config.learning_rate"),
        ({"learning_rate": "1e-4"}, "config.learning_rate"),
        ({"lora_rank": 0}, "config.lora_rank"),
        ({"lora_alpha": -32}, "config.lora_alpha"),
        ({"checkpoint_interval": 0}, "config.checkpoint_interval"),
        ({"base_adapter": "../etc"}, "config.base_adapter"),
        ({"seed": -1}, "config.seed"),
        ({"stop_loss": -0.1}, "config.stop_loss"),
        ({"stop_when_learned": "yes"}, "config.stop_when_learned"),
    ],
)
def test_bad_config_is_refused_by_field(config: dict[str, Any], param: str) -> None:
    assert _refused(SftTrainer().check, GOOD, config).param == param


def test_a_good_finetune_dataset_of_every_format_passes() -> None:
    rows = [
        {"messages": ZORBANIA},
        {"prompt": "Q: capital of Zorbania?\nA:", "completion": " Quillport"},
        {"prompt": ZORBANIA[:1], "completion": "Quillport."},
        {"text": "Quillport is the capital of Zorbania."},
    ]
    FinetuneTrainer().check(rows, {"epochs": 1, "batch_size": 2, "max_length": 64})


@pytest.mark.parametrize(
    ("data", "config", "param"),
    [
        ([], {}, "dataset"),
        ([{"text": ""}], {}, "dataset[0]"),
        ([{"text": "ok"}, {"question": "x"}], {}, "dataset[1]"),
        ([{"prompt": "x"}], {}, "dataset[0].completion"),
        ([{"prompt": 3, "completion": "x"}], {}, "dataset[0].prompt"),
        (
            [{"prompt": [{"role": "bot", "content": "x"}], "completion": "y"}],
            {},
            "dataset[0].prompt[0].role",
        ),
        ([{"messages": ZORBANIA[:1]}], {}, "dataset[0].messages"),
        ([{"text": "ok"}], {"batch_size": 0}, "batch_size"),
        ([{"text": "ok"}, {"text": "ok"}], {"max_length": -5}, "max_length"),
        ([{"text": "ok"}], {"epochs": 0}, "epochs"),
    ],
)
def test_bad_finetune_submissions_are_refused_by_field(
    data: Any, config: dict[str, Any], param: str
) -> None:
    assert _refused(FinetuneTrainer().check, data, config).param == param


def test_the_plugin_imports_no_torch() -> None:
    """The server imports the trainers to check submissions: torch stays out of it."""
    code = (
        "import sys, gateway_trainers.plugin, gateway_trainers.sft, gateway_trainers.finetune\n"
        "import gateway_trainers.common.checks\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_plugin_registers_sft_and_finetune() -> None:
    import gateway_trainers.plugin as plugin

    registered: list[str] = []
    plugin.register_trainers(register=lambda trainer: registered.append(trainer.name))
    assert {"sft", "finetune"} <= set(registered)
