"""A job's life, off Blender's main thread.

A worker thread talks to the backend (submit, long-poll, fetch, decode PNGs); the main thread calls
`poll_once()` from a modal timer, which only drains a queue of events and never blocks. Tests call
`poll_once()` directly, since timers do not run in background mode.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .clients import Backend, BackendError
from .png import PNGError, decode_png
from .protocol import JobIn


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    preview: np.ndarray | None = None  # (h, w, 3) uint8, top row first


@dataclass(frozen=True)
class Result:
    pixels: np.ndarray  # (H, W, C) uint8, top row first
    text: dict[str, str]  # PNG text chunks: `parameters` (A1111) and `scene_diffusion` (JSON)
    png: bytes


@dataclass(frozen=True)
class Finished:
    """The last event of every job: state is done, failed or cancelled; results only when done."""

    state: str
    results: list[Result] = field(default_factory=list)
    error: str = ""
    warnings: tuple[str, ...] = ()  # why the job ran with less than it asked for (a backend's fallback)


class BackgroundWork:
    """Work in a worker thread that reports to the main thread through a queue of events.

    `start()`, then `poll_once()` (never blocks) until `finished` is set by the last event. Subclasses
    implement `_work()` (returning the last event), `_failed(message)` (the last event for an error), and
    name their event types in PROGRESS and FINISHED.
    """

    PROGRESS: type = object
    FINISHED: type = object
    thread_name = "scene-diffusion-work"

    def __init__(self) -> None:
        self._events: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self.finished = None
        self.last_progress = None

    def start(self):
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the work to stop; its cancelled event follows once it has."""
        self._cancel.set()

    @property
    def running(self) -> bool:
        return self.finished is None

    def poll_once(self) -> list:
        """Events since the last call (progress, then the finished event at the end). Never blocks."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            events.append(event)
            if isinstance(event, self.PROGRESS):
                self.last_progress = event
            elif isinstance(event, self.FINISHED):
                self.finished = event

    def wait(self, timeout: float = 60.0):
        """For scripts and tests: poll until finished (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while self.finished is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the job did not finish in time")
            self.poll_once()
            time.sleep(0.01)
        return self.finished

    def _run(self) -> None:
        try:
            self._events.put(self._work())
        except BackendError as exc:
            self._events.put(self._failed(str(exc)))
        except PNGError as exc:
            self._events.put(self._failed(f"the backend sent an image the add-on cannot read: {exc}"))
        except Exception as exc:  # never leave the main thread waiting for an event that will not come
            self._events.put(self._failed(f"unexpected {type(exc).__name__}: {exc}"))

    def _work(self):
        raise NotImplementedError

    def _failed(self, message: str):
        raise NotImplementedError


class JobRunner(BackgroundWork):
    """Runs one job on a backend in a worker thread. Create, `start()`, then `poll_once()` until finished."""

    PROGRESS, FINISHED = Progress, Finished
    thread_name = "scene-diffusion-job"

    def __init__(self, backend: Backend | Callable[[], Backend], job: JobIn, poll_wait: float = 0.5) -> None:
        super().__init__()
        self._backend_source = backend
        self.job = job
        self.poll_wait = poll_wait
        self.job_id: str | None = None

    def _failed(self, message: str) -> Finished:
        return Finished("failed", error=message)

    def _work(self) -> Finished:
        backend = self._backend_source() if callable(self._backend_source) else self._backend_source
        if self._cancel.is_set():
            return Finished("cancelled", error="cancelled")
        self.backend = backend
        self.job_id = backend.submit(self.job)
        last_step = 0
        while True:
            if self._cancel.is_set():
                backend.cancel(self.job_id)
                status = backend.status(self.job_id)
                while not status.finished:  # a running job stops within one step
                    status = backend.status(self.job_id, wait=self.poll_wait, after_step=status.step)
                if status.state != "done":
                    return Finished("cancelled", error="cancelled")
            else:
                status = backend.status(self.job_id, wait=self.poll_wait, after_step=last_step)
            if status.state == "done":
                pngs = backend.images(self.job_id, status.images)
                results = []
                for png in pngs:
                    pixels, text = decode_png(png)
                    results.append(Result(pixels=pixels, text=text, png=png))
                warnings = getattr(backend, "job_warnings", lambda job_id: [])(self.job_id)
                return Finished("done", results=results, warnings=tuple(warnings))
            if status.state in ("failed", "cancelled"):
                return Finished(status.state, error=status.error or status.state)
            if status.step != last_step and status.total:
                last_step = status.step
                preview = decode_png(status.preview)[0] if status.preview else None
                self._events.put(Progress(status.step, status.total, preview))
