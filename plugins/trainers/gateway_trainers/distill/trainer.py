"""The `distillation` trainer: the whole pipeline of one distillation job (see the package).

`job.data` is `{"train": [prompt, ...], "eval": [prompt, ...]}`, each prompt a list of chat
messages ending with the user turn to answer (the service split them); `job.config` is the
service's checked config (`gateway_schemas.distillation.DistillationConfig` plus what it
resolved: `student_model`, `judge_model`, `max_tokens`, `judge_max_tokens`,
`concurrency`, `llama_quantize`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from gateway.errors import InvalidRequest, Unsupported
from gateway.jobs.store import Job
from gateway.training.trainer import JobStopped, Trainer, TrainingContext
from gateway_trainers.distill.agreement import rouge_l
from gateway_trainers.distill.calls import generate
from gateway_trainers.distill.runner import LoopThread, all_of
from gateway_trainers.distill.scoring import Scorer

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
FOLDER = "distillation"
EVAL_MAX_TOKENS = 128
"""The longest student answer of the before/after table (no longer than the teacher's
references, `max_tokens`, which it is compared with)."""
POLICY_MAX_TOKENS = 128
"""The longest student sample of the BOND backward term."""
SAMPLES_SHOWN = 5


class DistillationTrainer(Trainer):
    name: ClassVar[str] = "distillation"
    resumable: ClassVar[bool] = True
    """An interrupted job resumes: teacher samples and judge scores already paid for are
    read back from the job's files, a finished training is not redone."""

    def check(self, data: Any, config: dict[str, Any]) -> None:
        from gateway_trainers.export import check_types

        if not isinstance(data, dict) or not data.get("train"):
            raise InvalidRequest(
                "A distillation job needs training prompts.", param="config.prompts"
            )
        if config.get("export_gguf", True):
            check_types(list(config.get("quantization_types", [])), config.get("llama_quantize"))
            source = config.get("student_source")
            if source is not None:
                from gateway.engine.backend import ModelSpec
                from gateway_trainers.export import check_gguf, gguf_template

                spec = ModelSpec(name=str(config["student_model"]), backend="torch", source=source)
                try:
                    check_gguf(gguf_template(spec), param="config.export_gguf")
                except Unsupported as exc:
                    raise InvalidRequest(
                        f"{exc.message} Set `export_gguf` to false to "
                        "export the merged model and the adapter only.",
                        param="config.export_gguf",
                        code="invalid_config",
                    ) from None

    def prepare(self, context: TrainingContext) -> None:
        from gateway_trainers.common.base import load_base

        load_base(context)

    def run(self, job: Job, context: TrainingContext) -> Path:
        return Pipeline(job, context).run()


class Pipeline:
    def __init__(self, job: Job, context: TrainingContext):
        self.job = job
        self.context = context
        self.config = job.config
        self.folder = context.data_dir / FOLDER / job.id
        self.train: list[Messages] = list(job.data["train"])
        self.eval: list[Messages] = list(job.data["eval"])
        self.phase = "initializing"
        self.artifacts: dict[str, Any] = {"files": {}}
        self.teacher_name = str(self.config["teacher_model"])
        self.judge_name: str | None = self.config.get("judge_model")

    # Bookkeeping.

    def update(self, *, add_cost: float = 0.0, **info: Any) -> None:
        info["updated_at"] = time.time()
        try:
            self.context.update(info, add_cost=add_cost)
        except JobStopped:
            raise self.stopped() from None

    def stopped(self) -> JobStopped:
        return JobStopped(
            f"Cancelled by request during {self.phase}; the files made so far are kept in "
            "the job's artifacts."
        )

    def enter(self, phase: str) -> None:
        self.phase = phase
        try:
            self.context.phase(phase)
        except JobStopped:
            raise self.stopped() from None
        self.context.log(f"phase {phase}")

    def file(self, key: str, name: str, rows: list[Any]) -> Path:
        path = self.folder / name
        tmp = path.with_suffix(path.suffix + ".partial")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        tmp.replace(path)
        self.artifacts["files"][key] = str(path)
        self.update(artifacts={"files": dict(self.artifacts["files"])})
        return path

    # The pipeline.

    def run(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "train_config.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        self.artifacts["config_path"] = str(config_path)
        self.update(artifacts={"config_path": str(config_path)})
        calls = LoopThread()
        teacher = self.context.backend(self.teacher_name)
        judge = None
        if self.judge_name and self.judge_name != self.teacher_name:
            judge = self.context.backend(self.judge_name)
        try:
            calls.run(teacher.load())
            if judge is not None:
                calls.run(judge.load())
            scorer = self.scorer(calls, judge or teacher)
            candidates, references = self.generate(calls, teacher)
            curated = self.curate(candidates, scorer)
            before = self.answers()
            adapter = self.training(curated, scorer)
            after = self.answers(adapter)
            self.results(references, before, after, scorer)
            self.export(adapter)
            return adapter
        finally:
            for backend in (teacher, judge):
                if backend is not None:
                    try:
                        calls.run(backend.unload())
                    except Exception:
                        log.exception("unloading a backend failed")
            calls.close()

    def scorer(self, calls: LoopThread, judge: Any) -> Scorer:
        """The job's reward plugin, else its judge."""
        name = self.config.get("reward")
        if name:
            from gateway.distillation.reward import collect_rewards

            if self.context.plugins is None:
                raise RuntimeError("this worker has no plugins to find rewards in")
            rewards = collect_rewards(self.context.plugins)
            if name not in rewards:
                raise RuntimeError(f"No plugin of this worker registers the reward `{name}`.")
            return Scorer(calls, reward=rewards[name])
        return Scorer(
            calls,
            judge=judge,
            judge_name=self.judge_name or self.teacher_name,
            max_tokens=int(self.config.get("judge_max_tokens", 256)),
            tenant=self.job.tenant,
            concurrency=int(self.config.get("concurrency", 4)),
            on_cost=lambda cost: self.update(add_cost=cost),
        )

    def generate(self, calls: LoopThread, teacher: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """`n_samples` teacher samples per training prompt and a reference answer (at
        temperature 0) per held-out prompt, each prompt's line appended to
        `candidates.jsonl` / `references.jsonl` as it completes: a resumed job asks the
        teacher only for the prompts that have no line yet."""
        self.enter("data_generation")
        n = int(self.config["n_samples"])
        done = {row["prompt_id"]: row for row in self.journal("candidates.jsonl")}
        refs_done = {row["index"]: row["reference"] for row in self.journal("references.jsonl")}
        if done or refs_done:
            self.context.log(
                f"resuming: {len(done)} of {len(self.train)} prompts already have teacher "
                f"samples, {len(refs_done)} of {len(self.eval)} held-out prompts a reference"
            )
        progress = {
            "prompts_done": len(done),
            "prompts_total": len(self.train),
            "candidates": sum(len(row["samples"]) for row in done.values()),
            "candidates_failed": 0,
        }
        self.update(progress=progress)
        limit = asyncio.Semaphore(int(self.config.get("concurrency", 4)))
        errors: list[str] = []

        base_seed = self.config.get("seed")

        def seed(index: int, k: int) -> int | None:
            """With the job's `seed`, sample `k` of prompt `index` asks the teacher for a
            seed of its own (a teacher that honours seeds answers a job the same twice)."""
            return None if base_seed is None else int(base_seed) * 100_003 + index * 17 + k

        async def sample(
            messages: Messages, temperature: float, sample_seed: int | None = None
        ) -> str | None:
            async with limit:
                try:
                    answer = await generate(
                        teacher,
                        self.teacher_name,
                        messages,
                        temperature=temperature,
                        max_tokens=int(self.config["max_tokens"]),
                        tenant=self.job.tenant,
                        seed=sample_seed,
                    )
                except JobStopped:
                    raise
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    progress["candidates_failed"] += 1
                    self.update(progress=dict(progress))
                    return None
                progress["candidates"] += 1
                self.update(add_cost=answer.cost, progress=dict(progress))
                return answer.text

        async def prompt(index: int, messages: Messages) -> None:
            temperature = float(self.config["temperature"])
            texts = await all_of(sample(messages, temperature, seed(index, k)) for k in range(n))
            row = {"prompt_id": index, "messages": messages, "samples": [t for t in texts if t]}
            if row["samples"]:  # a prompt the teacher failed on is asked again on resume
                self.append("candidates.jsonl", row)
                done[index] = row
            progress["prompts_done"] += 1
            self.update(progress=dict(progress))

        async def reference(index: int, messages: Messages) -> None:
            text = await sample(messages, 0.0)
            if text is not None:
                self.append("references.jsonl", {"index": index, "reference": text})
                refs_done[index] = text

        async def everything() -> None:
            await all_of(
                [
                    *(prompt(i, m) for i, m in enumerate(self.train) if i not in done),
                    *(reference(i, m) for i, m in enumerate(self.eval) if i not in refs_done),
                ]
            )

        calls.run(everything())
        self.artifacts["files"]["candidates"] = str(self.folder / "candidates.jsonl")
        self.artifacts["files"]["references"] = str(self.folder / "references.jsonl")
        self.update(artifacts={"files": dict(self.artifacts["files"])})
        if not done:
            last = errors[-1] if errors else "no answer"
            raise RuntimeError(
                f"The teacher `{self.teacher_name}` gave no sample for any prompt "
                f"({len(errors)} calls failed; the last: {last})."
            )
        if errors:
            self.context.log(f"{len(errors)} teacher calls failed; the last: {errors[-1]}")
        rows = [done[i] for i in sorted(done)]
        return rows, [refs_done.get(i, "") for i in range(len(self.eval))]

    def curate(self, rows: list[dict[str, Any]], score: Scorer) -> list[dict[str, Any]]:
        """Every sample scored, prompts at once (each prompt's scores appended to
        `scores.jsonl` as they are in, and read back on resume); per prompt the best (the
        first of equals) with all its candidates, unless its best is below `min_score`;
        `curated.jsonl`."""
        self.enter("curation")
        floor = float(self.config.get("min_score", 0.0))
        scored: dict[int, list[float]] = {
            row["prompt_id"]: row["scores"] for row in self.journal("scores.jsonl")
        }
        pending = [
            row for row in rows if len(scored.get(row["prompt_id"], [])) != len(row["samples"])
        ]
        progress = {"prompts_scored": len(rows) - len(pending), "prompts_to_score": len(rows)}
        self.update(progress=dict(progress))

        def each(index: int, scores: list[float]) -> None:
            row = pending[index]
            self.append("scores.jsonl", {"prompt_id": row["prompt_id"], "scores": scores})
            scored[row["prompt_id"]] = scores
            progress["prompts_scored"] += 1
            self.update(progress=dict(progress))

        score.many([(row["messages"], row["samples"]) for row in pending], each)
        score.check()
        if score.failed:
            self.context.log(f"{score.failed} judge calls failed (scored 0.5): {score.last_error}")
        curated: list[dict[str, Any]] = []
        for row in rows:
            scores = scored[row["prompt_id"]]
            best = max(range(len(scores)), key=lambda i: (scores[i], -i))
            if scores[best] >= floor:
                curated.append(
                    {
                        "messages": row["messages"],
                        "best": row["samples"][best],
                        "candidates": [
                            {"response": text, "score": value}
                            for text, value in zip(row["samples"], scores, strict=True)
                        ],
                    }
                )
        self.update(progress={"curated": len(curated), "dropped": len(rows) - len(curated)})
        self.file("curated", "curated.jsonl", curated)
        if not curated:
            raise RuntimeError(
                f"Curation kept no prompt: every best sample scored below min_score {floor:g}."
            )
        return curated

    def journal(self, name: str) -> list[dict[str, Any]]:
        """The complete lines of an append-only file (a line cut by a crash is dropped,
        and cut off the file so that appends go on after the last whole line)."""
        path = self.folder / name
        if not path.exists():
            return []
        rows: list[dict[str, Any]] = []
        good = 0
        with path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
                good += len(line)
        if good != path.stat().st_size:
            with path.open("r+b") as fh:
                fh.truncate(good)
        return rows

    def append(self, name: str, row: dict[str, Any]) -> None:
        with (self.folder / name).open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def training(self, curated: list[dict[str, Any]], score: Any) -> Path:
        from gateway_trainers.bond.trainer import BondTrainer

        self.enter("training")
        done = self.job.info.get("artifacts", {}).get("adapter_path")
        if self.job.info.get("trained") and done and Path(done).is_dir():
            self.context.log(f"resuming: training was done, adapter {done}")
            self.artifacts.update(adapter_path=done, adapter_name=self.job.output_name)
            return Path(done)
        keys = (
            "bond_beta",
            "bond_gamma",
            "training_steps",
            "learning_rate",
            "lora_rank",
            "lora_alpha",
            "batch_size",
            "seed",
        )
        config = {key: self.config[key] for key in keys if self.config.get(key) is not None}
        config["max_new_tokens"] = min(POLICY_MAX_TOKENS, int(self.config["max_tokens"]))
        total = int(self.config["training_steps"])
        context = self.context

        def on_step(step: int, steps: int, loss: float, lr: float, epoch: float) -> bool:
            try:
                self.update(progress={"training_step": step, "training_steps": steps, "loss": loss})
                context.step(step, steps, loss, lr, epoch)
            except JobStopped:
                return False
            return True

        bond_context = TrainingContext(
            spec=context.spec,
            data_dir=context.data_dir,
            adapters=context.adapters,
            resident=context.resident,
            threads=context.threads,
            on_step=on_step,
            on_log=context.log,
            reward=score,
        )
        self.update(progress={"training_step": 0, "training_steps": total})
        bond_job = msgspec.structs.replace(self.job, kind="bond", data=curated, config=config)
        try:
            adapter = BondTrainer().run(bond_job, bond_context)
        except JobStopped:
            raise self.stopped() from None
        self.artifacts.update(adapter_path=str(adapter), adapter_name=self.job.output_name)
        self.update(
            trained=True,
            artifacts={"adapter_path": str(adapter), "adapter_name": self.job.output_name},
        )
        return adapter

    def answers(self, adapter: Path | None = None) -> list[str]:
        """The student's greedy answers to the held-out prompts: the base model, or with
        the adapter at `adapter`."""
        from gateway_trainers.distill.student import greedy_answers

        limit = min(EVAL_MAX_TOKENS, int(self.config["max_tokens"]))
        return greedy_answers(self.context, self.eval, adapter, limit)

    def results(
        self, references: list[str], before: list[str], after: list[str], score: Scorer
    ) -> None:
        judged: dict[int, list[float]] = {}
        score.many(
            [(m, [old, new]) for m, old, new in zip(self.eval, before, after, strict=True)],
            lambda index, scores: judged.__setitem__(index, scores),
        )
        table: list[dict[str, Any]] = []
        for index, (messages, reference, old, new) in enumerate(
            zip(self.eval, references, before, after, strict=True)
        ):
            old_score, new_score = judged[index]
            table.append(
                {
                    "prompt": messages[-1]["content"],
                    "teacher": reference,
                    "before": old,
                    "after": new,
                    "judge_before": old_score,
                    "judge_after": new_score,
                    "agreement_before": rouge_l(old, reference),
                    "agreement_after": rouge_l(new, reference),
                }
            )
        self.file("evaluation", "evaluation.jsonl", table)

        def mean(key: str) -> float | None:
            return round(sum(float(r[key]) for r in table) / len(table), 4) if table else None

        was = {"judge_score": mean("judge_before"), "agreement": mean("agreement_before")}
        now = {"judge_score": mean("judge_after"), "agreement": mean("agreement_after")}
        results: dict[str, Any] = {
            "held_out_prompts": len(table),
            "before": was,
            "after": now,
            "agreement_metric": "ROUGE-L F1 of the student's greedy answer against the teacher's",
            "sample_comparisons": table[:SAMPLES_SHOWN],
        }
        self.update(results=results)
        self.context.log(
            f"held-out: agreement {was['agreement']} -> {now['agreement']}, "
            f"judge {was['judge_score']} -> {now['judge_score']}"
        )

    def export(self, adapter: Path) -> None:
        from gateway_trainers.export import export_base, merge, write_gguf

        self.enter("export")
        base = export_base(self.context.spec, self.context.data_dir)
        self.update(progress={"export_step": "merging_adapter"})
        merged = self.folder / "merged"
        if not (merged / "config.json").is_file():  # a merge appears whole or not at all
            merge(base.folder, adapter, merged)
        self.artifacts["merged_path"] = str(merged)
        tokenizer = merged / "tokenizer.json"
        self.update(
            artifacts={
                "merged_path": str(merged),
                "tokenizer_path": str(tokenizer) if tokenizer.is_file() else None,
            }
        )
        if not self.config.get("export_gguf", True):
            self.update(progress={"export_step": "complete"})
            return
        paths: dict[str, str] = {}
        (self.folder / "gguf").mkdir(exist_ok=True)
        for qtype in self.config.get("quantization_types", []):
            self.update(progress={"export_step": f"exporting_gguf_{qtype}"})
            path = self.folder / "gguf" / f"model-{qtype}.gguf"
            if not path.is_file():  # written whole or not at all
                write_gguf(
                    merged,
                    path,
                    qtype,
                    template=base.template,
                    llama_quantize=self.config.get("llama_quantize"),
                )
            paths[qtype] = str(path)
            self.update(artifacts={"gguf_paths": dict(paths)})
        self.update(progress={"export_step": "complete"})
