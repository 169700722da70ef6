"""The `finetune` trainer: every row format, padded batches, step log lines."""

from __future__ import annotations

import pytest
import torch
from gateway_engine.lora.weights import read_adapter
from gateway_trainers.common.base import BaseModel
from gateway_trainers.common.batch import collate, masked_loss, masked_loss_and_lead
from gateway_trainers.common.chat import encode_chat, encode_text
from gateway_trainers.finetune import FinetuneTrainer, encode_row
from trainer_helpers import ZORBANIA, Recorder, make_job

from gateway.adapters.store import AdapterStore
from gateway.training.trainer import TrainingContext

ROWS = [
    {"messages": ZORBANIA},
    {"prompt": "Q: What is the capital of Zorbania?\nA:", "completion": " Quillport."},
    {"prompt": ZORBANIA[:1], "completion": "Quillport, on the coast."},
    {"text": "Quillport is the capital of Zorbania, a small country."},
]


def test_each_row_format_learns_its_answer_only(base: BaseModel) -> None:
    tokenizer = base.tokenizer
    learned = []
    for row in ROWS:
        ids, mask = encode_row(tokenizer, row, 512)
        learned.append(tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]))
    assert learned == [
        "The capital of Zorbania is Quillport.<|im_end|>",
        " Quillport.<|im_end|>",
        "Quillport, on the coast.<|im_end|>",
        "Quillport is the capital of Zorbania, a small country.<|im_end|>",
    ]
    ids, _ = encode_row(tokenizer, ROWS[3], 5)
    assert len(ids) == 5


def test_padding_does_not_change_the_loss(base: BaseModel) -> None:
    """A padded batch's loss is the token-weighted mean of its rows' losses."""
    long = encode_chat(base.tokenizer, ZORBANIA)
    short = encode_text(base.tokenizer, "Quillport.")
    pad = base.tokenizer.pad_token_id
    with torch.no_grad():
        alone = [masked_loss(base.model, collate([row], pad)) for row in (long, short)]
        batch = collate([long, short], pad)
        together = masked_loss(base.model, batch)
    counts = [sum(long[1][1:]), sum(short[1][1:])]
    expected = (alone[0] * counts[0] + alone[1] * counts[1]) / sum(counts)
    assert batch.input_ids.shape == (2, len(long[0]))
    assert batch.attention_mask[1].sum() == len(short[0])
    torch.testing.assert_close(together, expected, rtol=1e-4, atol=1e-5)


def test_a_positive_lead_means_greedy_decoding_gives_the_trained_text(base: BaseModel) -> None:
    known = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ]
    pad = base.tokenizer.pad_token_id
    with torch.no_grad():
        _, knows_france = masked_loss_and_lead(
            base.model, collate([encode_chat(base.tokenizer, known)], pad)
        )
        _, knows_zorbania = masked_loss_and_lead(
            base.model, collate([encode_chat(base.tokenizer, ZORBANIA)], pad)
        )
        _, knows_both = masked_loss_and_lead(
            base.model,
            collate(
                [encode_chat(base.tokenizer, known), encode_chat(base.tokenizer, ZORBANIA)], pad
            ),
        )
    assert (knows_france > 0, knows_zorbania > 0, knows_both > 0) == (True, False, False)
    assert knows_both == pytest.approx(min(knows_france, knows_zorbania), abs=1e-4)


def test_a_batched_job_over_every_format_trains_and_logs(
    context: TrainingContext, recorder: Recorder, store: AdapterStore, base: BaseModel
) -> None:
    config = {"epochs": 2, "batch_size": 2, "learning_rate": 1e-3, "max_length": 64, "seed": 1}
    path = FinetuneTrainer().run(make_job("finetune", ROWS, config, "tuned"), context)
    assert [(s[0], s[1]) for s in recorder.steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [s[4] for s in recorder.steps] == [0.5, 1.0, 1.5, 2.0]
    assert sum(recorder.losses[2:]) < sum(recorder.losses[:2])
    step_lines = [line for line in recorder.logs if line.startswith("step ")]
    assert [line.split(" loss ")[0] for line in step_lines] == [f"step {i}/4" for i in range(1, 5)]
    assert " lr 0.001 " in step_lines[0]
    assert path == store.path("tuned")
    assert read_adapter(path, base.model).rank == 16


def test_rows_with_nothing_to_learn_within_max_length_fail_the_job(
    context: TrainingContext,
) -> None:
    job = make_job("finetune", [{"messages": ZORBANIA}], {"max_length": 8})
    with pytest.raises(ValueError, match="max_length 8"):
        FinetuneTrainer().run(job, context)
