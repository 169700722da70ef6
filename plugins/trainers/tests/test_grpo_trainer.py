"""The `grpo` trainer on the real SmolLM2, run outside a worker with a hand-built context.

The margin of a group is mean log p(rewarded completions) - mean log p(unrewarded ones),
each completion's log-probability summed over its tokens (end-of-turn included) after the
chat-templated prompt. It is measured here with plain unpadded forward passes, not with the
trainer's own batching, and after training through the adapter as saved (loaded with peft).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from gateway_trainers.common.base import BaseModel, load_base
from gateway_trainers.common.chat import encode_completion
from gateway_trainers.common.lora import attach_lora, detach
from gateway_trainers.grpo.batch import GroupBatch, completion_logps, encode_group
from gateway_trainers.grpo.check import GrpoConfig, parse_groups
from gateway_trainers.grpo.trainer import GrpoTrainer, _accumulate, _fixed_logps
from peft import PeftModel
from safetensors.torch import load_file
from trainer_helpers import Recorder, make_job

from gateway.jobs import Job
from gateway.training.trainer import TrainingContext


def _group(prompt: str, rewarded: str, unrewarded: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt}],
        "completions": [{"text": rewarded, "reward": 1.0}, {"text": unrewarded, "reward": 0.0}],
    }


TRAIN = [
    _group("Name a warm color.", "Orange", "Blue"),
    _group("Give me a warm color.", "Red", "Green"),
    _group("What is a warm color?", "Yellow", "Purple"),
]
HELD_OUT = [
    _group("Tell me a warm colour.", "Orange", "Blue"),
    _group("Which color is warm?", "Red", "Green"),
    _group("Say one warm color.", "Yellow", "Purple"),
]
SETTINGS = {"learning_rate": 2e-4, "epochs": 2, "seed": 0}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread for this module: on a small CPU shared with other processes, two
    threads that wait on each other made these tests ten times slower (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _job(data: Any, output_name: str, **config: Any) -> Job:
    return make_job("grpo", data, config, output_name=f"grpo-{output_name}")


def _row_logp(model: Any, base: BaseModel, messages: Any, text: str) -> torch.Tensor:
    """log p(completion | prompt), the row read alone and unpadded."""
    ids, start = encode_completion(base.tokenizer, messages, text)
    tokens = torch.tensor([ids])
    logps = torch.log_softmax(model(input_ids=tokens).logits[0, :-1].float(), dim=-1)
    targets = tokens[0, start:]
    return logps[start - 1 :].gather(-1, targets.unsqueeze(-1)).sum()


def _sequence_logp(model: Any, base: BaseModel, messages: Any, text: str) -> float:
    with torch.no_grad():
        return float(_row_logp(model, base, messages, text))


def margin(model: Any, base: BaseModel, groups: Sequence[dict[str, Any]]) -> float:
    """Mean over groups of mean logp(rewarded) - mean logp(unrewarded)."""
    margins = []
    for group in groups:
        scored = [
            (c["reward"] > 0, _sequence_logp(model, base, group["messages"], c["text"]))
            for c in group["completions"]
        ]
        good = [logp for rewarded, logp in scored if rewarded]
        bad = [logp for rewarded, logp in scored if not rewarded]
        margins.append(sum(good) / len(good) - sum(bad) / len(bad))
    return sum(margins) / len(margins)


@pytest.fixture
def through_adapter(base: BaseModel) -> Iterator[Any]:
    """`load(path)` gives the base model with a saved adapter on it, taken off afterwards."""
    loaded: list[Any] = []

    def load(path: Path) -> Any:
        model = PeftModel.from_pretrained(base.model, str(path))
        loaded.append(model)
        return model

    yield load
    for model in loaded:
        model.unload()
        if hasattr(base.model, "peft_config"):
            del base.model.peft_config


def test_prepare_loads_the_resident_base(context: TrainingContext) -> None:
    GrpoTrainer().prepare(context)
    assert load_base(context) is context.resident["base"]


def test_group_batch_reads_the_prompt_once_and_equals_rows_alone(
    base: BaseModel, context: TrainingContext
) -> None:
    """Log-probabilities and their gradients (through the prompt's cache too) equal
    those of each prompt + completion row read on its own."""
    group = parse_groups(
        [_group("Name a warm color, please, in one word.", "Orange is a warm color.", "Red")]
    )[0]
    batch = encode_group(base.tokenizer, group, base.device)
    assert batch.prompt_ids.shape[0] == 1
    assert batch.completion_mask.sum(dim=1).tolist()[0] > batch.completion_mask.sum(dim=1)[1]
    torch.manual_seed(0)
    model = attach_lora(base, {"lora_rank": 4, "lora_alpha": 8.0}, context)
    try:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.02)  # a LoRA that changes the outputs
        weights = [
            p for n, p in model.named_parameters() if "layers.0.self_attn.k_proj.lora_A" in n
        ]
        batched = (completion_logps(model, batch) * batch.completion_mask).sum(dim=1)
        (batched_grad,) = torch.autograd.grad(batched.sum(), weights)
        alone = [_row_logp(model, base, group.messages, c.text) for c in group.completions]
        (alone_grad,) = torch.autograd.grad(sum(alone), weights)
    finally:
        detach(model)
    assert batched.detach().tolist() == pytest.approx([float(x.detach()) for x in alone], abs=1e-3)
    # layer 0's keys act only through the cache of the prompt and earlier completion tokens
    assert alone_grad.abs().max() > 0
    assert torch.allclose(batched_grad, alone_grad, rtol=1e-3, atol=1e-5)


def test_a_big_group_in_chunks_makes_the_same_step(
    base: BaseModel, context: TrainingContext
) -> None:
    group = parse_groups(
        [
            {
                "messages": [{"role": "user", "content": "Name a warm color."}],
                "completions": [
                    {"text": "Orange", "reward": 1.0},
                    {"text": "Blue, the colour of the sea.", "reward": 0.0},
                    {"text": "Red", "reward": 0.8},
                    {"text": "A deep and calm green.", "reward": 0.1},
                ],
            }
        ]
    )[0]
    batch = encode_group(base.tokenizer, group, base.device)
    config = GrpoConfig.parse({})
    torch.manual_seed(0)
    model = attach_lora(base, {"lora_rank": 4, "lora_alpha": 8.0}, context)
    try:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.02)
        weights = [p for p in model.parameters() if p.requires_grad]
        results = []
        for max_tokens in (10_000, 12):
            (plan,) = _fixed_logps(model, [batch], continued=True, max_tokens=max_tokens)
            loss, kl, _ = _accumulate(model, plan, config)
            results.append((len(plan), loss, kl, [w.grad.clone() for w in weights]))
            model.zero_grad(set_to_none=True)
    finally:
        detach(model)
    (whole, loss, kl, grads), (parts, chunked_loss, chunked_kl, chunked_grads) = results
    assert whole == 1 and parts > 1
    assert chunked_loss == pytest.approx(loss, abs=1e-6)
    # the KL is a mean of differences of log-probabilities: float32 sums in another
    # order move it by about 1e-6 (a chunking mistake would move it by far more)
    assert chunked_kl == pytest.approx(kl, abs=1e-5)
    # float32 sums in another order: differences up to about 1e-4 (this CPU's kernels)
    # on gradients up to 0.4; a chunk weighed wrong or lost would differ by 10% or more
    assert all(
        torch.allclose(a, b, rtol=1e-3, atol=5e-4)
        for a, b in zip(grads, chunked_grads, strict=True)
    )


def test_chunks_keep_rows_in_order_within_the_budget() -> None:
    lengths = [3, 5, 2, 8]
    mask = torch.zeros((4, 8))
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    batch = GroupBatch(
        prompt_ids=torch.tensor([[1, 2]]),
        completion_ids=torch.arange(32).reshape(4, 8),
        completion_mask=mask,
        advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]),
    )
    chunks = batch.chunks(10)
    # rows 0-1 pad to 5 (10 tokens); row 2 with row 3 would be 2 x 8; row 3 alone
    assert [c.completion_ids.shape for c in chunks] == [(2, 5), (1, 2), (1, 8)]
    assert torch.equal(torch.cat([c.advantages for c in chunks]), batch.advantages)
    assert [c.tokens for c in chunks] == [8, 2, 8]
    assert torch.equal(chunks[2].completion_ids[0], batch.completion_ids[3])


def test_grpo_raises_the_rewarded_margin_on_training_and_held_out_prompts(
    base: BaseModel, context: TrainingContext, recorder: Recorder, through_adapter: Any
) -> None:
    before_train, before_held = margin(base.model, base, TRAIN), margin(base.model, base, HELD_OUT)
    path = GrpoTrainer().run(_job(TRAIN, "warm", **SETTINGS), context)
    assert path == context.adapters.path("grpo-warm")
    # the resident base is clean again after the job
    assert margin(base.model, base, TRAIN) == pytest.approx(before_train, abs=1e-5)
    trained = through_adapter(path)
    after_train, after_held = margin(trained, base, TRAIN), margin(trained, base, HELD_OUT)
    print(
        f"margin on training prompts {before_train:.3f} -> {after_train:.3f}, "
        f"held-out paraphrases {before_held:.3f} -> {after_held:.3f}"
    )
    assert after_train > before_train + 0.5
    assert after_held > before_held + 0.5
    # one optimizer step per group and epoch, each reported
    assert [s[0] for s in recorder.steps] == [1, 2, 3, 4, 5, 6]
    assert {s[1] for s in recorder.steps} == {6}
    assert [s[4] for s in recorder.steps] == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    assert all(s[3] == SETTINGS["learning_rate"] for s in recorder.steps)
    assert "3 groups, 6 completions, 3 of the groups with rewards that differ" in recorder.logs


def test_unrewarding_the_same_completions_lowers_the_margin(
    base: BaseModel, context: TrainingContext, through_adapter: Any
) -> None:
    # The sign comes from the rewards, not from the data's order or the completions' text.
    flipped = [
        {**g, "completions": [{**c, "reward": 1.0 - c["reward"]} for c in g["completions"]]}
        for g in TRAIN
    ]
    before = margin(base.model, base, TRAIN)
    path = GrpoTrainer().run(_job(flipped, "cold", **SETTINGS), context)
    after = margin(through_adapter(path), base, TRAIN)
    print(f"margin with the rewards flipped {before:.3f} -> {after:.3f}")
    assert after < before - 0.5


def test_base_adapter_is_continued_not_restarted(
    base: BaseModel, context: TrainingContext, recorder: Recorder
) -> None:
    first = GrpoTrainer().run(_job(TRAIN[:1], "first", learning_rate=1e-3, seed=0), context)
    recorder.steps.clear()
    second = GrpoTrainer().run(
        _job(TRAIN[:1], "second", learning_rate=1e-9, base_adapter="grpo-first", seed=1), context
    )
    before, after = (
        load_file(first / "adapter_model.safetensors"),
        load_file(second / "adapter_model.safetensors"),
    )
    assert before.keys() == after.keys()
    b_weights = [key for key in before if "lora_B" in key]
    assert b_weights and any(before[key].abs().max() > 1e-4 for key in b_weights)
    for key, tensor in before.items():
        # a fresh LoRA would have B = 0 and a new random A (seed 1)
        assert torch.allclose(after[key], tensor, atol=1e-5), key
    assert len(recorder.steps) == 1


def test_checkpoints_are_installed_at_the_interval(
    base: BaseModel, context: TrainingContext
) -> None:
    GrpoTrainer().run(
        _job(TRAIN, "ticks", learning_rate=1e-4, checkpoint_interval=2, seed=0), context
    )
    names = {name for name in context.adapters.names() if name.startswith("grpo-ticks")}
    assert names == {"grpo-ticks", "grpo-ticks-checkpoint-2"}


def test_kiln_seed_request_with_its_defaults_moves_the_margin_the_right_way(
    base: BaseModel, context: TrainingContext, through_adapter: Any
) -> None:
    # Kiln's copy-paste request: one group, lr 1e-5, kl_coeff 0.1, one pass (one step).
    seed = [_group("Name a warm color.", "Orange", "Blue")]
    before = margin(base.model, base, seed)
    path = GrpoTrainer().run(_job(seed, "demo", learning_rate=1e-5, kl_coeff=0.1, seed=0), context)
    after = margin(through_adapter(path), base, seed)
    print(f"Kiln's seed request: margin {before:.3f} -> {after:.3f}")
    assert after > before
