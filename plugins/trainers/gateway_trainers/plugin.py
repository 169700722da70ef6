"""Registers the built-in trainers through the `register_trainers` hook."""

from __future__ import annotations

from collections.abc import Callable

from gateway import hookimpl
from gateway.training.trainer import Trainer
from gateway_trainers.bond.trainer import BondTrainer
from gateway_trainers.distill.trainer import DistillationTrainer
from gateway_trainers.finetune import FinetuneTrainer
from gateway_trainers.grpo.trainer import GrpoTrainer
from gateway_trainers.sft import SftTrainer


@hookimpl
def register_trainers(register: Callable[[Trainer], None]) -> None:
    register(SftTrainer())
    register(GrpoTrainer())
    register(FinetuneTrainer())
    register(BondTrainer())
    register(DistillationTrainer())
