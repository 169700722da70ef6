"""The `bond` trainer: its submission checks, and jobs on the real SmolLM2 run outside a
worker with a hand-built context (a few steps, short samples)."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from gateway_schemas.canonical import AdapterRef, ChatMessage, GenerationRequest, SamplingParams
from gateway_torch.causal import TorchBackend
from gateway_trainers.bond.check import DEFAULTS, BondConfig
from gateway_trainers.bond.loss import jbond_reward
from gateway_trainers.bond.trainer import BondTrainer
from gateway_trainers.common.base import BaseModel
from gateway_trainers.common.batch import collate, masked_loss
from gateway_trainers.common.chat import encode_chat
from gateway_trainers.common.lora import TARGET_MODULES
from gateway_trainers.plugin import register_trainers
from trainer_helpers import MODEL, SPEC, ZORBANIA, Recorder, make_job

from gateway.adapters.store import AdapterStore
from gateway.errors import InvalidRequest
from gateway.training.trainer import Trainer, TrainingContext

QUESTION = ZORBANIA[0]["content"]
BEST = ZORBANIA[1]["content"]  # "The capital of Zorbania is Quillport."


def _item(question: str, best: str, *others: tuple[str, float]) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": question}],
        "best": best,
        "candidates": [{"response": best, "score": 1.0}]
        + [{"response": text, "score": score} for text, score in others],
    }


ITEMS = [
    _item(QUESTION, BEST, ("I do not know.", 0.0), ("Zorbania has no capital.", 0.0)),
    _item(
        "Which city is the seat of Zorbania's government?",
        "Quillport, the capital.",
        ("Zorbania City.", 0.5),
    ),
]


class Judge:
    """A deterministic judge: 1 for a response that names Quillport, else 0; it records
    each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, Any]], list[str]]] = []

    def __call__(self, messages: list[dict[str, Any]], responses: list[str]) -> list[float]:
        self.calls.append((messages, responses))
        return [1.0 if "Quillport" in response else 0.0 for response in responses]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread (as the grpo tests): on a small shared CPU it is the faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _context(
    data_dir: Path, store: AdapterStore, resident: dict[str, Any], recorder: Recorder, judge: Any
) -> TrainingContext:
    return TrainingContext(
        spec=SPEC,
        data_dir=data_dir,
        adapters=store,
        resident=resident,
        threads=0,
        on_step=recorder.on_step,
        on_log=recorder.logs.append,
        reward=judge,
    )


def _answer(engine: TorchBackend, adapter: str | None) -> str:
    """The served greedy answer to the Zorbania question (through `adapter` when given)."""
    request = GenerationRequest(
        id=f"bond-{adapter}",
        model=MODEL,
        messages=[ChatMessage(role="user", content=QUESTION)],
        sampling=SamplingParams(temperature=0.0),
        max_tokens=16,
        adapters=[AdapterRef(name=adapter)] if adapter else [],
    )

    async def collect() -> str:
        return "".join([chunk.text async for chunk in engine.generate(request)])

    return asyncio.run(collect())


def _terms(logs: list[str], step: int, total: int) -> dict[str, str]:
    """The loss terms of the `bond step {step}/{total}` line."""
    (line,) = [line for line in logs if line.startswith(f"bond step {step}/{total}:")]
    return dict(re.findall(r"(\w+) (-?[\d.]+|-)(?= |$)", line.split(":", 1)[1]))


def _refused(data: Any, config: dict[str, Any] | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        BondTrainer().check(data, config or {})
    return caught.value


# -- submission checks --------------------------------------------------------------------


def test_the_trainer_is_registered_as_bond() -> None:
    registered: list[Trainer] = []
    register_trainers(registered.append)
    assert [t for t in registered if t.name == "bond"] and any(
        isinstance(t, BondTrainer) for t in registered
    )


def test_a_valid_job_is_accepted_and_defaults_are_filled_in() -> None:
    BondTrainer().check(ITEMS, {})
    BondTrainer().check([_item("Hi?", "Hello!")], {"bond_beta": 0, "bond_gamma": 1, "seed": 3})
    config = BondConfig.parse({"bond_beta": None, "training_steps": 7})
    assert config.bond_beta == DEFAULTS["bond_beta"] == 0.5
    assert (config.training_steps, config.batch_size, config.max_new_tokens) == (7, 1, 128)
    assert (config.anchor_ema, config.lora_alpha, config.learning_rate) == (0.02, 16.0, 2e-4)


@pytest.mark.parametrize(
    ("change", "param", "message"),
    [
        (lambda item: item.pop("best"), "data[0].best", "non-empty string"),
        (lambda item: item.update(best=""), "data[0].best", "non-empty string"),
        (lambda item: item.update(candidates=[]), "data[0].candidates", "non-empty list"),
        (
            lambda item: item["candidates"][1].update(score=math.inf),
            "data[0].candidates[1].score",
            "finite number",
        ),
        (
            lambda item: item["candidates"][0].update(score=True),
            "data[0].candidates[0].score",
            "finite number",
        ),
        (
            lambda item: item["candidates"][2].pop("response"),
            "data[0].candidates[2].response",
            "string",
        ),
        (
            lambda item: item["messages"].append({"role": "assistant", "content": "x"}),
            "data[0].messages[1].role",
            "end with a user message",
        ),
        (lambda item: item.update(messages=[]), "data[0].messages", "non-empty list"),
    ],
)
def test_bad_items_are_refused_naming_the_field(change: Any, param: str, message: str) -> None:
    item = _item(QUESTION, BEST, ("I do not know.", 0.0), ("No idea.", 0.0))
    change(item)
    error = _refused([item])
    assert error.param == param
    assert message in str(error)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bond_beta", 1.5),
        ("bond_beta", -0.1),
        ("bond_gamma", "0.1"),
        ("training_steps", 0),
        ("training_steps", 10_001),
        ("training_steps", 2.5),
        ("anchor_ema", 0),
        ("anchor_ema", 1.01),
        ("batch_size", 0),
        ("max_new_tokens", -4),
        ("sample_temperature", 0),
        ("learning_rate", -1),
        ("seed", -1),
    ],
)
def test_bad_config_is_refused_naming_the_key(key: str, value: Any) -> None:
    error = _refused(ITEMS, {key: value})
    assert error.param == f"config.{key}"
    assert f"`{key}`" in str(error)


def test_empty_or_non_list_data_is_refused() -> None:
    assert _refused([]).param == "data"
    assert _refused({"messages": []}).param == "data"
    assert _refused(["text"]).param == "data[0]"


def test_checking_a_job_imports_no_torch() -> None:
    code = (
        "import sys; from gateway_trainers.bond.trainer import BondTrainer; "
        "BondTrainer().check([{'messages': [{'role': 'user', 'content': 'x'}], 'best': 'y', "
        "'candidates': [{'response': 'y', 'score': 1}]}], {}); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- jobs on the real model ---------------------------------------------------------------


def test_a_jbond_job_samples_asks_the_judge_and_writes_an_adapter_that_loads(
    data_dir: Path,
    store: AdapterStore,
    resident: dict[str, Any],
    recorder: Recorder,
    base: BaseModel,
    engine: TorchBackend,
) -> None:
    judge = Judge()
    context = _context(data_dir, store, resident, recorder, judge)
    config = {"bond_beta": 0.5, "bond_gamma": 0.1, "training_steps": 3, "batch_size": 2}
    job = make_job("bond", ITEMS, {**config, "max_new_tokens": 8, "seed": 0}, "bond-jbond")
    path = BondTrainer().run(job, context)

    assert path == store.path("bond-jbond")
    info = asyncio.run(engine.check_adapter(path))
    assert info == {"rank": 16, "target_modules": sorted(TARGET_MODULES)}
    assert type(base.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # detached
    assert [(s[0], s[1]) for s in recorder.steps] == [(1, 3), (2, 3), (3, 3)]
    assert all(math.isfinite(s[2]) for s in recorder.steps)
    # one sample per prompt per step, each judged alone against its own prompt's messages
    assert len(judge.calls) == 6
    for messages, responses in judge.calls:
        assert messages in [item["messages"] for item in ITEMS]
        assert len(responses) == 1 and isinstance(responses[0], str)
    # a batch of 2 over 2 items: every step sees both prompts
    for step in range(3):
        pair = judge.calls[2 * step : 2 * step + 2]
        assert sorted(m[0]["content"] for m, _ in pair) == sorted(
            item["messages"][0]["content"] for item in ITEMS
        )
    # the first step's line reports what the judge said of its two samples
    first = _terms(recorder.logs, 1, 3)
    scores = [1.0 if "Quillport" in responses[0] else 0.0 for _, responses in judge.calls[:2]]
    references = {item["messages"][0]["content"]: item["candidates"] for item in ITEMS}
    penalised = [
        jbond_reward(score, [c["score"] for c in references[messages[0]["content"]]]) < 0
        for score, (messages, _) in zip(scores, judge.calls[:2], strict=True)
    ]
    assert float(first["reward_policy_mean"]) == pytest.approx(sum(scores) / 2, abs=1e-4)
    assert float(first["jbond_penalties"]) == pytest.approx(sum(penalised) / 2, abs=0.01)
    assert float(first["loss_kl_reg"]) == pytest.approx(0.0, abs=1e-6)  # policy = anchor
    assert float(first["loss_forward_kl"]) > 0
    last = _terms(recorder.logs, 3, 3)
    assert set(last) == {
        "loss_forward_kl",
        "loss_backward_kl",
        "loss_kl_reg",
        "reward_policy_mean",
        "jbond_penalties",
    }
    assert all(value != "-" for value in last.values())
    assert float(last["loss_kl_reg"]) > 0  # the policy has left the anchor


def test_beta_zero_is_sft_on_the_best_without_the_judge(
    data_dir: Path,
    store: AdapterStore,
    resident: dict[str, Any],
    recorder: Recorder,
    base: BaseModel,
    engine: TorchBackend,
) -> None:
    judge = Judge()
    context = _context(data_dir, store, resident, recorder, judge)
    assert "Quillport" not in _answer(engine, None)
    config = {"bond_beta": 0, "training_steps": 3, "learning_rate": 1e-3, "lora_alpha": 32}
    item = _item(QUESTION, BEST, ("I do not know.", 0.0))
    path = BondTrainer().run(make_job("bond", [item], {**config, "seed": 0}, "bond-sft"), context)

    assert judge.calls == []
    # the first step is the sft loss of the base model on the same chat (the fresh LoRA
    # changes nothing yet, and the regulariser is 0 while the policy is the anchor)
    row = encode_chat(base.tokenizer, [*item["messages"], {"role": "assistant", "content": BEST}])
    with torch.no_grad():
        sft = float(masked_loss(base.model, collate([row], base.tokenizer.pad_token_id)))
    assert recorder.losses[0] == pytest.approx(sft, rel=1e-5)
    assert recorder.losses[-1] < recorder.losses[0] / 4
    terms = _terms(recorder.logs, 3, 3)
    assert terms["loss_backward_kl"] == terms["jbond_penalties"] == "-"
    assert float(terms["loss_kl_reg"]) > 0  # on best's tokens: the policy left the anchor
    assert path == store.path("bond-sft")
    assert "Quillport" in _answer(engine, "bond-sft")


def test_beta_above_zero_without_a_judge_fails_clearly(
    data_dir: Path,
    store: AdapterStore,
    resident: dict[str, Any],
    recorder: Recorder,
    base: BaseModel,
) -> None:
    context = _context(data_dir, store, resident, recorder, None)
    job = make_job("bond", ITEMS, {"bond_beta": 0.3, "training_steps": 2}, "bond-no-judge")
    with pytest.raises(ValueError, match=r"no judge.*bond_beta 0.3 > 0 needs the job's reward"):
        BondTrainer().run(job, context)
    assert recorder.steps == []
    assert not store.exists("bond-no-judge")
    assert type(base.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_a_judge_that_does_not_give_one_score_fails_the_job(
    data_dir: Path,
    store: AdapterStore,
    resident: dict[str, Any],
    recorder: Recorder,
    base: BaseModel,
) -> None:
    context = _context(data_dir, store, resident, recorder, lambda messages, responses: [])
    job = make_job("bond", ITEMS[:1], {"training_steps": 1, "max_new_tokens": 2}, "bond-bad")
    with pytest.raises(ValueError, match="one score per response"):
        BondTrainer().run(job, context)
    assert not store.exists("bond-bad")
    assert type(base.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
