"""The /v1 job API end to end: a real uvicorn server on loopback with the tiny model."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from conftest import pixels
from doubles import GatedEngine
from live_server import live_server
from PIL import Image

from backend.engine import GenerationRequest
from backend.metadata import read_png_parameters
from backend.server.app import Limits, create_app
from backend.server.jobs import JobQueue

JOB = {"prompt": "a brick wall", "width": 64, "height": 64, "steps": 2, "seed": 3}


def b64png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def wait(url: str, job_id: str, timeout: float = 60, **kw) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/v1/jobs/{job_id}", **kw).json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def wait_until(predicate, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not reached")


@pytest.fixture(scope="module")
def server(tiny_engine):
    with live_server(create_app(tiny_engine, limits=Limits(max_queue=32))) as url:
        yield url


@pytest.fixture
def gated(tiny_engine):
    engine = GatedEngine(tiny_engine)
    app = create_app(engine, limits=Limits(max_queue=2, max_width=512, max_height=512, max_body_bytes=2 << 20))
    with live_server(app) as url:
        yield url, engine
        engine.release.set()


def test_submit_poll_fetch(server, tiny_engine):
    response = requests.post(f"{server}/v1/jobs", json=JOB)
    assert response.status_code == 202
    job_id = response.json()["id"]
    status = wait(server, job_id)
    assert status["state"] == "done" and status["images"] == 1 and status["seeds"] == [3]
    assert status["step"] == status["total"] == 2 and status["mode"] == "txt2img"
    png = requests.get(f"{server}/v1/jobs/{job_id}/images/0")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as image:
        assert read_png_parameters(image)["seed"] == 3
        served = pixels(image.convert("RGB"))
    local = tiny_engine.generate(GenerationRequest("a brick wall", width=64, height=64, steps=2, seed=3))[0]
    assert np.array_equal(served, pixels(local.image)), "the server gives what the engine gives"
    assert requests.get(f"{server}/v1/jobs/{job_id}/images/1").status_code == 404


def test_every_mode_over_http(server):
    init = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    depth = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)))
    bodies = {
        "img2img": {"init_images": [b64png(init)], "strength": 0.5},
        "inpaint": {"init_images": ["data:image/png;base64," + b64png(init)], "masks": [b64png(mask)]},
        "depth": {"depths": [b64png(depth), b64png(depth.rotate(90))], "count": 2},
    }
    for mode, extra in bodies.items():
        job_id = requests.post(f"{server}/v1/jobs", json={**JOB, **extra}).json()["id"]
        status = wait(server, job_id)
        assert status["state"] == "done" and status["mode"] == mode, status
    assert status["images"] == 4 and status["seeds"] == [3, 4, 5, 6]


def test_running_job_reports_progress_and_preview(gated):
    url, engine = gated
    job_id = requests.post(f"{url}/v1/jobs", json={**JOB, "prompt": "hold", "steps": 3}).json()["id"]
    engine.holding.wait(30)
    status = requests.get(f"{url}/v1/jobs/{job_id}").json()
    assert status["state"] == "running" and status["step"] == 1 and status["total"] == 3
    preview = Image.open(io.BytesIO(base64.b64decode(status["preview"])))
    assert preview.size == (8, 8)
    engine.release.set()
    assert wait(url, job_id)["state"] == "done"


def test_cancel_queued_and_running(gated):
    url, engine = gated
    running = requests.post(f"{url}/v1/jobs", json={**JOB, "prompt": "hold", "steps": 50}).json()["id"]
    engine.holding.wait(30)
    queued = requests.post(f"{url}/v1/jobs", json=JOB).json()
    assert queued["state"] == "queued" and queued["queue_position"] == 1
    cancelled = requests.delete(f"{url}/v1/jobs/{queued['id']}").json()
    assert cancelled["state"] == "cancelled"
    requests.delete(f"{url}/v1/jobs/{running}")
    status = wait(url, running)
    assert status["state"] == "cancelled" and status["images"] == 0
    assert status["step"] < 50
    gone = requests.get(f"{url}/v1/jobs/{running}/images/0")
    assert gone.status_code == 409 and "cancelled" in gone.json()["detail"]
    # the worker is free again
    assert wait(url, requests.post(f"{url}/v1/jobs", json=JOB).json()["id"])["state"] == "done"


def test_queue_full_is_429_with_a_reason(gated):
    url, engine = gated
    requests.post(f"{url}/v1/jobs", json={**JOB, "prompt": "hold"})
    engine.holding.wait(30)
    assert all(requests.post(f"{url}/v1/jobs", json=JOB).status_code == 202 for _ in range(2))
    full = requests.post(f"{url}/v1/jobs", json=JOB)
    assert full.status_code == 429 and "queue is full (2 jobs waiting)" in full.json()["detail"]
    engine.release.set()


def test_many_clients_no_job_lost_or_mixed(server):
    def client(n: int):
        body = {**JOB, "prompt": f"client {n}", "seed": 1000 + n}
        job_id = requests.post(f"{server}/v1/jobs", json=body).json()["id"]
        status = wait(server, job_id, timeout=120)
        png = requests.get(f"{server}/v1/jobs/{job_id}/images/0").content
        params = read_png_parameters(Image.open(io.BytesIO(png)))
        return n, status["state"], params["prompt"], params["seed"]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(client, range(24)))
    assert all(state == "done" for _, state, _, _ in results)
    assert all(prompt == f"client {n}" and seed == 1000 + n for n, _, prompt, seed in results)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (the pixel data is absent: it is never read)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({**JOB, "width": 100}, 422, "multiple of 8"),
        ({**JOB, "width": 4096}, 422, "width 4096 is over this server's limit of 512"),
        ({**JOB, "steps": 500}, 422, "steps 500 is over this server's limit of 150"),
        ({**JOB, "count": 20}, 422, "count 20 is over this server's limit of 8"),
        ({**JOB, "init_images": ["not base64!!"]}, 422, "init_images[0] is not valid base64"),
        ({**JOB, "masks": [base64.b64encode(b"not an image").decode()], "init_images": []}, 422, "masks[0] is not"),
        ({**JOB, "init_images": [base64.b64encode(huge_png_header(20000, 20000)).decode()]}, 422,
         "declares 400000000 pixels, more than the 16777216 pixels accepted"),
        ({**JOB, "model": "other/model"}, 422, "unknown model 'other/model': this server serves 'testing/tiny-sd'"),
        ({**JOB, "sampler": "warp"}, 422, "unknown sampler"),
        ({"width": 64}, 422, "prompt: Field required"),
        ({**JOB, "steps": "many"}, 422, "steps: Input should be a valid integer"),
    ],
)
def test_bad_requests_get_4xx_and_the_server_keeps_serving(gated, body, status, words):
    url, _ = gated
    response = requests.post(f"{url}/v1/jobs", json=body)
    assert response.status_code == status
    assert words in response.json()["detail"]
    assert "Traceback" not in response.text
    assert wait(url, requests.post(f"{url}/v1/jobs", json=JOB).json()["id"])["state"] == "done"


def test_malformed_json_and_oversized_body(gated):
    url, _ = gated
    response = requests.post(f"{url}/v1/jobs", data=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["detail"]
    big = requests.post(f"{url}/v1/jobs", json={**JOB, "prompt": "x", "init_images": ["A" * (3 << 20)]})
    assert big.status_code == 413 and "limit of 2097152 bytes" in big.json()["detail"]


def test_engine_failure_fails_that_job_only(gated):
    url, _ = gated
    status = wait(url, requests.post(f"{url}/v1/jobs", json={**JOB, "prompt": "boom"}).json()["id"])
    assert status["state"] == "failed" and "out of GPU memory (simulated)" in status["error"]
    assert "Traceback" not in status["error"]
    assert wait(url, requests.post(f"{url}/v1/jobs", json=JOB).json()["id"])["state"] == "done"


def test_unknown_job_is_404(server):
    response = requests.get(f"{server}/v1/jobs/nope")
    assert response.status_code == 404 and "no job 'nope'" in response.json()["detail"]


def test_health_models_and_openapi(server):
    health = requests.get(f"{server}/v1/health").json()
    assert health["model"] == "testing/tiny-sd" and health["api"] == "v1" and health["device"] == "cpu"
    assert set(health["modes"]) == {"txt2img", "img2img", "inpaint", "depth"}
    assert health["limits"]["max_width"] == 2048
    assert requests.get(f"{server}/v1/models").json()[0]["id"] == "testing/tiny-sd"
    spec = requests.get(f"{server}/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/images/{index}", "/v1/health"} <= set(spec["paths"])
    assert "JobIn" in spec["components"]["schemas"]


def test_token(tiny_engine):
    with live_server(create_app(tiny_engine, token="s3cret")) as url:
        assert requests.get(f"{url}/v1/health").status_code == 401
        wrong = requests.get(f"{url}/v1/health", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "wrong token" in wrong.json()["detail"]
        assert requests.get(f"{url}/v1/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert requests.get(f"{url}/v1/health", auth=("anyone", "s3cret")).status_code == 200
        assert requests.post(f"{url}/v1/jobs", json=JOB).status_code == 401


def test_results_dropped_beyond_the_bound_say_so(tiny_engine):
    queue = JobQueue(tiny_engine, max_results=2)
    with live_server(create_app(tiny_engine, queue=queue)) as url:
        ids = [requests.post(f"{url}/v1/jobs", json={**JOB, "seed": s}).json()["id"] for s in range(3)]
        for job_id in ids:
            wait(url, job_id)
        first = requests.get(f"{url}/v1/jobs/{ids[0]}")
        assert first.json()["expired"] is True and first.json()["images"] == 0
        dropped = requests.get(f"{url}/v1/jobs/{ids[0]}/images/0")
        assert dropped.status_code == 410 and "dropped" in dropped.json()["detail"]
        assert requests.get(f"{url}/v1/jobs/{ids[2]}/images/0").status_code == 200


def test_shutdown_while_busy_cancels_and_stops(tiny_engine):
    engine = GatedEngine(tiny_engine)
    queue = JobQueue(engine)
    started = time.monotonic()
    with live_server(create_app(engine, queue=queue)) as url:
        running = requests.post(f"{url}/v1/jobs", json={**JOB, "prompt": "hold", "steps": 50}).json()["id"]
        waiting = requests.post(f"{url}/v1/jobs", json=JOB).json()["id"]
        engine.holding.wait(30)
    assert time.monotonic() - started < 20
    assert queue.get(running).state == "cancelled" and queue.get(waiting).state == "cancelled"
    assert "shut down" in queue.get(waiting).error
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{url}/v1/health", timeout=2)
