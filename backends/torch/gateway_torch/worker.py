"""The one thread that owns a causal model and runs its jobs, first come first served."""

from __future__ import annotations

import logging
import queue
import threading

from gateway.errors import BackendFailure, GatewayError
from gateway_torch.job import Job
from gateway_torch.loading import CausalModel

log = logging.getLogger(__name__)


class Worker:
    """Runs jobs one at a time on a private thread; every model call happens there."""

    def __init__(self, lm: CausalModel, name: str = "gateway-torch"):
        self._lm = lm
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._current: Job | None = None
        self.served = 0

    @property
    def queued(self) -> int:
        """Jobs waiting for the thread."""
        return self._jobs.qsize()

    @property
    def active(self) -> int:
        """Jobs being decoded now (0 or 1)."""
        return 0 if self._current is None else 1

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        if not self._thread.is_alive():
            raise BackendFailure("The model's worker thread is not running.")
        self._jobs.put(job)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the jobs already queued (abort them first to be quick), then end."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout)
        while True:  # anything submitted too late gets an answer too
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.send(BackendFailure("The model was unloaded."))

    def _run(self) -> None:
        import torch

        from gateway_torch.decode import PrefixCache, run_sequence

        prefix = PrefixCache()
        with torch.inference_mode():
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                self._current = job
                try:
                    run_sequence(self._lm, job, prefix)
                except GatewayError as exc:
                    prefix.clear()
                    job.send(exc)
                except Exception as exc:
                    prefix.clear()
                    log.exception("Generation %s failed", job.request_id)
                    job.send(BackendFailure(f"Generation failed: {type(exc).__name__}: {exc}"))
                finally:
                    self._current = None
                    self.served += 1
        prefix.clear()
