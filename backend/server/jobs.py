"""Jobs: a bounded queue in front of one worker thread that owns the engine.

One worker, because one pipeline can only run one job at a time and a GPU gains nothing from two
competing; jobs run in submission order. Finished results are kept within a bound of count and bytes,
oldest dropped first; a dropped result says so (`expired`) instead of vanishing.
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine.request import GenerationRequest, Progress
from ..errors import Cancelled, SceneDiffusionError

log = logging.getLogger(__name__)

State = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED = ("done", "failed", "cancelled")


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass
class Job:
    id: str
    request: GenerationRequest
    number: int
    state: State = "queued"
    step: int = 0
    total: int = 0
    preview: Any = None  # PIL image of the latest step, small
    error: str | None = None
    images: list[bytes] = field(default_factory=list)  # PNG bytes, with metadata
    seeds: list[int] = field(default_factory=list)
    parameters: list[dict] = field(default_factory=list)
    expired: bool = False
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def result_bytes(self) -> int:
        return sum(len(b) for b in self.images)


class JobQueue:
    """Submit, look up, cancel; a worker thread runs the jobs through `engine.generate`."""

    def __init__(self, engine, max_queue: int = 16, max_results: int = 64, max_result_bytes: int = 512 << 20,
                 max_records: int = 1000) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.max_results = max_results
        self.max_result_bytes = max_result_bytes
        self.max_records = max_records
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._changed = threading.Condition()  # notified on every step and when a job finishes (long polls)
        self._numbers = itertools.count(1)
        self._closing = False
        self.current: Job | None = None
        self._worker = threading.Thread(target=self._run, name="scene-diffusion-worker", daemon=True)
        self._worker.start()

    # -- API -------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> Job:
        request = request.with_seed()  # fixed now, so status and results agree on it from the start
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} jobs waiting): try again when one has finished")
            job = Job(id=secrets.token_hex(8), request=request, number=next(self._numbers))
            self._jobs[job.id] = job
            self._pending.append(job)
            self._forget_old_records()
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """0 while running or finished; 1 for the next job to run, and so on."""
        with self._cond:
            try:
                return self._pending.index(job) + 1
            except ValueError:
                return 0

    def cancel(self, job: Job) -> None:
        with self._cond:
            job.cancel.set()
            if job.state == "queued":
                self._pending.remove(job)
                self._finish(job, "cancelled", error="cancelled")

    def wait_for_change(self, job: Job, after_step: int, timeout: float) -> None:
        """Block until `job` has done more than `after_step` steps or has finished, or `timeout` passes."""
        with self._changed:
            self._changed.wait_for(lambda: job.state in FINISHED or job.step > after_step, timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, cancel what is queued and running, and wait for the worker to end."""
        with self._cond:
            self._closing = True
            while self._pending:
                self._finish(self._pending.popleft(), "cancelled", error="the server shut down")
            if self.current is not None:
                self.current.cancel.set()
            self._cond.notify_all()
        self._worker.join(timeout)

    # -- worker ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing and not self._pending:
                    return
                job = self._pending.popleft()
                job.state, job.started = "running", time.time()
                self.current = job
            try:
                self._execute(job)
            finally:
                with self._cond:
                    self.current = None

    def _execute(self, job: Job) -> None:
        from ..images import png_bytes

        def on_progress(progress: Progress) -> None:
            job.step, job.total, job.preview = progress.step, progress.total, progress.preview
            self._notify()

        try:
            results = self.engine.generate(job.request, progress=on_progress, cancel=job.cancel)
            encoded = [png_bytes(r.image, r.parameters) for r in results]
        except Cancelled:
            with self._cond:
                self._finish(job, "cancelled", error="cancelled" if not self._closing else "the server shut down")
            return
        except SceneDiffusionError as exc:
            with self._cond:
                self._finish(job, "failed", error=str(exc))
            return
        except Exception as exc:  # an engine bug fails this job only; the server keeps serving
            log.exception("job %s failed", job.id)
            with self._cond:
                self._finish(job, "failed", error=f"the engine failed: {type(exc).__name__}: {exc}")
            return
        with self._cond:
            job.images = encoded
            job.seeds = [r.seed for r in results]
            job.parameters = [r.parameters for r in results]
            self._finish(job, "done")
            self._drop_old_results()

    def _finish(self, job: Job, state: State, error: str | None = None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        job.preview = None
        job.done.set()
        self._notify()

    def _drop_old_results(self) -> None:
        kept = [j for j in self._jobs.values() if j.images]
        total = sum(j.result_bytes for j in kept)
        while kept and (len(kept) > self.max_results or total > self.max_result_bytes):
            oldest = kept.pop(0)
            total -= oldest.result_bytes
            oldest.images, oldest.expired = [], True

    def _forget_old_records(self) -> None:
        while len(self._jobs) > self.max_records:
            oldest_id, oldest = next(iter(self._jobs.items()))
            if oldest.state not in FINISHED:
                break
            del self._jobs[oldest_id]
