"""The add-on's job runner and own-server client against a real server on loopback (no bpy)."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from doubles import GatedEngine
from live_server import live_server

from backend.server.app import create_app
from backend.server.jobs import JobQueue
from blender_addon.core.clients import BackendError, OwnServerClient, check_url, is_loopback
from blender_addon.core.jobs import Finished, JobRunner, Progress
from blender_addon.core.protocol import JobIn

JOB = JobIn(prompt="a wall", width=64, height=64, steps=3, seed=5)


@pytest.fixture(scope="module")
def server(tiny_engine):
    with live_server(create_app(tiny_engine)) as url:
        yield url


def drain(runner: JobRunner, timeout: float = 60) -> tuple[list, float]:
    """Poll like the modal timer does; returns the events and the longest poll_once call."""
    events, longest = [], 0.0
    deadline = time.monotonic() + timeout
    while runner.running:
        assert time.monotonic() < deadline, "job did not finish"
        t0 = time.perf_counter()
        events += runner.poll_once()
        longest = max(longest, time.perf_counter() - t0)
        time.sleep(0.005)
    return events, longest


def test_job_runs_to_results_with_progress(server, tiny_engine):
    from backend.engine import GenerationRequest

    runner = JobRunner(OwnServerClient(server), JOB).start()
    events, longest = drain(runner)
    progress = [e for e in events if isinstance(e, Progress)]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.state == "done" and len(finished.results) == 1
    assert progress and progress[-1].total == 3 and progress[0].preview.shape == (8, 8, 3)
    expected = np.asarray(tiny_engine.generate(GenerationRequest("a wall", width=64, height=64, steps=3,
                                                                 seed=5))[0].image)
    assert np.array_equal(finished.results[0].pixels, expected), "decoded pixels are the server's"
    assert '"seed": 5' in finished.results[0].text["scene_diffusion"]
    assert longest < 0.005, f"poll_once blocked for {longest * 1000:.1f} ms"


def test_cancel_stops_the_job_on_the_server(tiny_engine):
    engine = GatedEngine(tiny_engine)
    queue = JobQueue(engine)
    with live_server(create_app(engine, queue=queue)) as url:
        runner = JobRunner(OwnServerClient(url), JobIn(prompt="hold", width=64, height=64, steps=50)).start()
        engine.holding.wait(30)
        runner.cancel()
        events, _ = drain(runner)
        assert events[-1].state == "cancelled" and not events[-1].results
        assert queue.get(runner.job_id).state == "cancelled"


def test_engine_failure_is_reported(tiny_engine):
    engine = GatedEngine(tiny_engine)
    with live_server(create_app(engine)) as url:
        runner = JobRunner(OwnServerClient(url), JobIn(prompt="boom", width=64, height=64, steps=2)).start()
        finished = runner.wait(30)
    assert finished.state == "failed" and "out of GPU memory (simulated)" in finished.error


def test_bad_request_is_reported(server):
    finished = JobRunner(OwnServerClient(server), JobIn(prompt="x", width=100)).start().wait(30)
    assert finished.state == "failed" and "multiple of 8" in finished.error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_backend_is_reported():
    finished = JobRunner(OwnServerClient(f"http://127.0.0.1:{free_port()}"), JOB).start().wait(30)
    assert finished.state == "failed" and "refused the connection" in finished.error


def test_health_and_connection_diagnostics(server, tiny_engine):
    health = OwnServerClient(server).health()
    assert health.model == "testing/tiny-sd" and "depth" in health.modes
    with live_server(create_app(tiny_engine, token="tok")) as url:
        with pytest.raises(BackendError, match="refused the token"):
            OwnServerClient(url, token="bad").health()
        assert OwnServerClient(url, token="tok").health().model == "testing/tiny-sd"
    with pytest.raises(BackendError, match="no http:// or https:// scheme"):
        check_url("127.0.0.1:7860")
    with pytest.raises(BackendError, match="did not answer within"):
        with socket.socket() as silent:  # accepts connections, never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            OwnServerClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5).health()


def test_not_our_api(tiny_engine):
    from fastapi import FastAPI

    other = FastAPI()

    @other.get("/")
    def root():
        return {"hello": "world"}

    with live_server(other) as url:
        with pytest.raises(BackendError, match="not a Scene Diffusion server"):
            OwnServerClient(url).health()


@pytest.mark.parametrize("url, loopback", [("http://127.0.0.1:7860", True), ("http://localhost", True),
                                           ("http://[::1]:80", True), ("http://127.1.2.3", True),
                                           ("https://gpu.example.com", False), ("http://192.168.1.5:7860", False)])
def test_loopback_detection(url, loopback):
    assert is_loopback(url) is loopback
