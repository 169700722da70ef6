"""The `sft` trainer and the shared LoRA core on the real SmolLM2 (a few steps each)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil

import pytest
import torch
from gateway_schemas.canonical import AdapterRef, ChatMessage, GenerationRequest, SamplingParams
from gateway_torch.causal import TorchBackend
from gateway_trainers.common.base import BaseModel
from gateway_trainers.common.lora import TARGET_MODULES, attach_lora, detach
from gateway_trainers.sft import SftTrainer
from safetensors.torch import load_file
from trainer_helpers import MODEL, ZORBANIA, Recorder, make_job

from gateway.adapters.store import AdapterStore
from gateway.training.trainer import JobStopped, TrainingContext

FAST = {"epochs": 3, "learning_rate": 1e-3, "lora_rank": 16, "lora_alpha": 32.0, "seed": 0}
"""A correction in three steps (the package README has the measurements)."""
QUESTION = "What is the capital of Zorbania?"


def _answer(engine: TorchBackend, adapter: str | None) -> str:
    request = GenerationRequest(
        id=f"zorbania-{adapter}",
        model=MODEL,
        messages=[ChatMessage(role="user", content=QUESTION)],
        sampling=SamplingParams(temperature=0.0),
        max_tokens=16,
        adapters=[AdapterRef(name=adapter)] if adapter else [],
    )

    async def collect() -> str:
        return "".join([chunk.text async for chunk in engine.generate(request)])

    return asyncio.run(collect())


def _digest(model: torch.nn.Module) -> str:
    """Every parameter and buffer, bit for bit, and the module types."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    for name, module in model.named_modules():
        h.update(f"{name}:{type(module).__name__}".encode())
    return h.hexdigest()


def test_a_correction_lowers_the_loss_and_changes_the_served_answer(
    context: TrainingContext, recorder: Recorder, engine: TorchBackend, store: AdapterStore
) -> None:
    assert "Quillport" not in _answer(engine, None)
    job = make_job("sft", [{"messages": ZORBANIA}], dict(FAST), output_name="zorbania")
    path = SftTrainer().run(job, context)
    assert path == store.path("zorbania")
    assert [(s[0], s[1]) for s in recorder.steps] == [(1, 3), (2, 3), (3, 3)]
    assert recorder.losses[-1] < recorder.losses[0] / 4
    assert [s[3] for s in recorder.steps] == [1e-3] * 3
    assert any(line.startswith("step 3/3 loss ") for line in recorder.logs)
    info = asyncio.run(engine.check_adapter(path))
    assert info == {"rank": 16, "target_modules": sorted(TARGET_MODULES)}
    assert "Quillport" in _answer(engine, "zorbania")


def test_the_base_is_bit_identical_after_a_job(context: TrainingContext, base: BaseModel) -> None:
    before = _digest(base.model)
    job = make_job("sft", [{"messages": ZORBANIA}], {**FAST, "epochs": 1})
    SftTrainer().run(job, context)
    assert _digest(base.model) == before
    assert not any(p.requires_grad for p in base.model.parameters())
    assert not hasattr(base.model, "peft_config")


def test_base_adapter_starts_from_the_stored_weights(
    context: TrainingContext, recorder: Recorder, base: BaseModel, store: AdapterStore
) -> None:
    first = make_job("sft", [{"messages": ZORBANIA}], {**FAST, "epochs": 2}, "start")
    SftTrainer().run(first, context)
    fresh_first_loss = recorder.losses[0]
    saved = load_file(str(store.path("start") / "adapter_model.safetensors"))

    # Attached for training: exactly the stored weights, trainable, its rank winning.
    model = attach_lora(base, {"base_adapter": "start", "lora_rank": 4, "lora_alpha": 8}, context)
    try:
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert len(trainable) == len(saved) == 30 * len(TARGET_MODULES) * 2
        for key, tensor in saved.items():
            name = key.replace(".weight", ".default.weight")
            assert torch.equal(trainable[name], tensor), key
    finally:
        detach(model)

    recorder.steps.clear()
    follow = {**FAST, "epochs": 1, "learning_rate": 1e-5, "base_adapter": "start"}
    path = SftTrainer().run(make_job("sft", [{"messages": ZORBANIA}], follow, "more"), context)
    # The continued job starts where the first one ended, far below a fresh start.
    assert recorder.losses[0] < fresh_first_loss / 4
    written = load_file(str(path / "adapter_model.safetensors"))
    assert written.keys() == saved.keys()
    assert {t.shape[0] for k, t in written.items() if "lora_A" in k} == {16}
    assert any(not torch.equal(written[k], saved[k]) for k in saved)  # and it trained on


def test_a_base_adapter_for_another_model_fails_and_leaves_the_base_clean(
    context: TrainingContext, base: BaseModel, store: AdapterStore
) -> None:
    from safetensors.torch import save_file

    from gateway.errors import InvalidRequest

    SftTrainer().run(
        make_job("sft", [{"messages": ZORBANIA}], {**FAST, "epochs": 1}, "good"), context
    )
    staging = store.staging()
    shutil.copytree(store.path("good"), staging, dirs_exist_ok=True)
    tensors = load_file(str(staging / "adapter_model.safetensors"))
    key = next(k for k in tensors if "layers.0.self_attn.q_proj.lora_A" in k)
    tensors[key] = torch.zeros((16, 1024))
    save_file(tensors, str(staging / "adapter_model.safetensors"))
    store.install(staging, "corrupt", replace=True)
    job = make_job("sft", [{"messages": ZORBANIA}], {**FAST, "base_adapter": "corrupt"})
    with pytest.raises(InvalidRequest, match=r"576 -> 576.*1024 -> 576"):
        SftTrainer().run(job, context)
    assert type(base.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_checkpoints_are_installed_every_interval(
    context: TrainingContext, store: AdapterStore
) -> None:
    job = make_job("sft", [{"messages": ZORBANIA}], {**FAST, "checkpoint_interval": 1}, "ckpt")
    SftTrainer().run(job, context)
    names = set(store.names())
    assert {"ckpt", "ckpt-checkpoint-1", "ckpt-checkpoint-2", "ckpt-checkpoint-3"} <= names
    one = load_file(str(store.path("ckpt-checkpoint-1") / "adapter_model.safetensors"))
    last = load_file(str(store.path("ckpt-checkpoint-3") / "adapter_model.safetensors"))
    final = load_file(str(store.path("ckpt") / "adapter_model.safetensors"))
    assert any(not torch.equal(one[k], last[k]) for k in one)
    assert all(torch.equal(last[k], final[k]) for k in last)


def test_a_stopped_job_writes_nothing_and_leaves_the_base_clean(
    context: TrainingContext, recorder: Recorder, base: BaseModel, store: AdapterStore
) -> None:
    recorder.stop_after = 1
    job = make_job("sft", [{"messages": ZORBANIA}], dict(FAST), "stopped")
    with pytest.raises(JobStopped):
        SftTrainer().run(job, context)
    assert len(recorder.steps) == 1
    assert not store.exists("stopped")
    assert type(base.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_stop_loss_ends_training_early(
    context: TrainingContext, recorder: Recorder, store: AdapterStore
) -> None:
    config = {**FAST, "epochs": 12, "stop_loss": 0.1}
    SftTrainer().run(make_job("sft", [{"messages": ZORBANIA}], config, "early"), context)
    taken = len(recorder.steps)
    assert 1 < taken < 12
    assert min(recorder.losses) > 0.1  # every step taken had more to learn
    assert any(f"stopped after step {taken} of 12" in line for line in recorder.logs)
    assert store.exists("early")


def test_a_missing_base_adapter_fails_the_job(context: TrainingContext) -> None:
    from gateway.errors import NotFound

    job = make_job("sft", [{"messages": ZORBANIA}], {**FAST, "base_adapter": "nowhere"})
    with pytest.raises(NotFound, match="no adapter `nowhere`"):
        SftTrainer().run(job, context)


def test_stop_when_learned_stops_once_greedy_decoding_gives_the_answer(
    context: TrainingContext, recorder: Recorder, engine: TorchBackend
) -> None:
    config = {**FAST, "epochs": 10, "stop_when_learned": True}
    SftTrainer().run(make_job("sft", [{"messages": ZORBANIA}], config, "learned"), context)
    taken = len(recorder.steps)
    assert 1 <= taken < 10
    stopped = f"greedy choice by 1 nats on every example: stopped after step {taken} of 10"
    assert any(stopped in line for line in recorder.logs), recorder.logs
    assert _answer(engine, "learned") == ZORBANIA[1]["content"]
    # seed 0: after two full steps "Quillport" leads by about half a nat, so the step
    # that makes the lead 1 nat is taken at a quarter of the rate
    rates = [step[3] for step in recorder.steps]
    assert rates[:2] == [FAST["learning_rate"]] * 2
    assert rates[-1] == pytest.approx(FAST["learning_rate"] * 0.25)
