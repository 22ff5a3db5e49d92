"""Test doubles around the real engine."""

from __future__ import annotations

import threading


class GatedEngine:
    """The tiny engine, but a job with prompt 'hold' waits at its first step until released; 'boom' fails.

    It lets tests see a job running (and the queue behind it) for as long as they need, deterministically.
    """

    def __init__(self, engine):
        self.engine, self.model_id = engine, engine.model_id
        self.release = threading.Event()
        self.holding = threading.Event()

    def info(self):
        return self.engine.info()

    def modes(self):
        return self.engine.modes()

    def generate(self, request, progress=None, cancel=None):
        if request.prompt == "boom":
            raise RuntimeError("out of GPU memory (simulated)")

        def gated(p):
            if progress:
                progress(p)
            if request.prompt == "hold":
                self.holding.set()
                while not self.release.wait(0.01):
                    if cancel is not None and cancel.is_set():
                        break

        return self.engine.generate(request, progress=gated, cancel=cancel)
