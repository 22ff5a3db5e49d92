"""The add-on's Automatic1111/Forge client, driven through JobRunner as the add-on drives it, against two
counterparts on loopback: a fake WebUI that checks request shapes (tests/fake_a1111.py), and this project's
own server's /sdapi/v1 (a real one, on the tiny model)."""

from __future__ import annotations

import base64
import socket
import time

import numpy as np
import pytest
from doubles import GatedEngine
from fake_a1111 import CHECKPOINTS, FakeA1111, colour
from live_server import live_server

from backend.server.app import create_app
from backend.server.jobs import JobQueue
from blender_addon.core.a1111 import A1111Client
from blender_addon.core.clients import BackendError, OwnServerClient
from blender_addon.core.jobs import Finished, JobRunner, Progress
from blender_addon.core.png import encode_png
from blender_addon.core.protocol import JobIn

JOB = JobIn(prompt="a wall", negative_prompt="blur", width=64, height=64, steps=3, seed=5, guidance=6.5)


def png_rgb(seed: int, width: int = 64, height: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_grey(width: int = 64, height: int = 64, square: bool = False) -> bytes:
    if square:
        grey = np.zeros((height, width), np.uint8)
        grey[16:48, 16:48] = 255
    else:
        grey = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    return encode_png(grey)


def run(client, job: JobIn, timeout: float = 30) -> tuple[list, Finished]:
    runner = JobRunner(client, job, poll_wait=0.3).start()
    events = []
    deadline = time.monotonic() + timeout
    while runner.running:
        assert time.monotonic() < deadline, "the job did not finish"
        events += runner.poll_once()
        time.sleep(0.005)
    return events, events[-1]


def rgb_of(finished: Finished, k: int = 0) -> tuple[int, ...]:
    return tuple(int(v) for v in finished.results[k].pixels[0, 0, :3])


def free_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def fake():
    webui = FakeA1111(step_delay=0.02)
    with live_server(webui.app) as url:
        webui.url = url
        yield webui


@pytest.fixture
def webui(fake):
    fake.requests.clear()
    return fake


# -- the fake WebUI: request shapes, results, progress ---------------------------------------------------------


def test_txt2img_sends_the_webui_fields_and_reads_the_images(webui):
    client = A1111Client(webui.url)
    job = JobIn(prompt="a wall", negative_prompt="blur", width=64, height=48, steps=30, seed=7, guidance=6.5,
                count=2, sampler="euler_a", model="dreamshaper_8.safetensors")
    events, finished = run(client, job)
    assert finished.state == "done", finished.error
    (path, body), = webui.requests
    assert path == "/sdapi/v1/txt2img"
    assert {k: body[k] for k in ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height",
                                 "batch_size", "sampler_name", "tiling")} == {
        "prompt": "a wall", "negative_prompt": "blur", "seed": 7, "steps": 30, "cfg_scale": 6.5, "width": 64,
        "height": 48, "batch_size": 2, "sampler_name": "Euler a", "tiling": False}
    assert body["override_settings"] == {"sd_model_checkpoint": CHECKPOINTS[1]}
    assert "init_images" not in body and "alwayson_scripts" not in body
    assert [r.pixels.shape for r in finished.results] == [(48, 64, 3)] * 2
    assert [rgb_of(finished, k) for k in range(2)] == [colour(7, False, "txt2img"), colour(8, False, "txt2img")]
    assert finished.results[0].text["parameters"] == "fake a1111"
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress and all(e.total == 30 for e in progress)
    assert [e.step for e in progress] == sorted(e.step for e in progress)
    assert any(e.preview is not None and e.preview.shape == (8, 8, 3) for e in progress)


def test_seed_none_is_random_and_sampler_empty_is_left_to_the_webui(webui):
    _, finished = run(A1111Client(webui.url), JobIn(prompt="x", width=64, height=64, steps=1))
    (_, body), = webui.requests
    assert finished.state == "done" and body["seed"] == -1 and "sampler_name" not in body
    assert "override_settings" not in body


def test_img2img_and_inpaint_payloads(webui):
    init, mask = png_rgb(1), png_grey(square=True)
    _, finished = run(A1111Client(webui.url), JobIn(prompt="x", width=64, height=64, steps=2, seed=3,
                                                    strength=0.6, init_images=(init,)))
    assert finished.state == "done" and rgb_of(finished) == colour(3, False, "img2img")
    _, finished = run(A1111Client(webui.url), JobIn(prompt="x", width=64, height=64, steps=2, seed=4,
                                                    init_images=(init,), masks=(mask,)))
    assert finished.state == "done" and rgb_of(finished) == colour(4, False, "inpaint")
    (path1, img2img), (path2, inpaint) = webui.requests
    assert path1 == path2 == "/sdapi/v1/img2img"
    assert img2img["denoising_strength"] == 0.6 and "mask" not in img2img
    assert base64.b64decode(img2img["init_images"][0]) == init
    assert base64.b64decode(inpaint["mask"]) == mask
    assert (inpaint["inpainting_mask_invert"], inpaint["inpainting_fill"], inpaint["inpaint_full_res"]) == (0, 1, False)


def test_depth_goes_through_controlnet_with_the_depth_model(webui):
    depth = png_grey()
    client = A1111Client(webui.url)
    assert "depth" in client.capabilities() and "depth" in client.health().modes
    _, finished = run(client, JobIn(prompt="x", width=64, height=64, steps=2, seed=9, depths=(depth,),
                                    controlnet_scale=0.8))
    assert finished.state == "done", finished.error
    assert len(finished.results) == 1, "the control image the extension appends is not a result"
    assert rgb_of(finished) == colour(9, True, "txt2img") and client.warnings == []
    (path, body), = webui.requests
    (unit,) = body["alwayson_scripts"]["controlnet"]["args"]
    assert path == "/sdapi/v1/txt2img"
    assert {k: unit[k] for k in ("enabled", "module", "model", "weight", "resize_mode", "control_mode",
                                 "pixel_perfect")} == {
        "enabled": True, "module": "none", "model": "control_v11f1p_sd15_depth [cfd03158]", "weight": 0.8,
        "resize_mode": "Just Resize", "control_mode": "Balanced", "pixel_perfect": False}
    assert base64.b64decode(unit["image"]) == depth


def test_batch_of_views_runs_one_call_per_view_in_order(webui):
    inits, depths = (png_rgb(1), png_rgb(2)), (png_grey(), png_grey(square=True))
    _, finished = run(A1111Client(webui.url), JobIn(prompt="x", width=64, height=64, steps=2, seed=10, count=2,
                                                    init_images=inits, depths=depths))
    assert finished.state == "done", finished.error
    assert [rgb_of(finished, k)[0] for k in range(4)] == [10, 11, 12, 13]
    assert [base64.b64decode(body["init_images"][0]) for _, body in webui.requests] == list(inits)
    assert [body["seed"] for _, body in webui.requests] == [10, 12]


def test_seamless_xy_is_tiling_and_one_axis_is_refused_before_start(webui):
    _, finished = run(A1111Client(webui.url), JobIn(prompt="x", width=64, height=64, steps=1, seamless="xy"))
    assert finished.state == "done" and webui.requests[0][1]["tiling"] is True
    client = A1111Client(webui.url)
    assert "seamless" in client.capabilities() and client.seamless_axes == ("xy",)
    webui.requests.clear()
    _, finished = run(client, JobIn(prompt="x", width=64, height=64, seamless="x"))
    assert finished.state == "failed" and "both directions only" in finished.error and "'x'" in finished.error
    assert webui.requests == []


def test_unknown_checkpoint_or_sampler_is_refused_before_start(webui):
    _, finished = run(A1111Client(webui.url), JobIn(prompt="x", model="nope.safetensors"))
    assert finished.state == "failed" and "no checkpoint 'nope.safetensors'" in finished.error
    assert CHECKPOINTS[0] in finished.error
    _, finished = run(A1111Client(webui.url), JobIn(prompt="x", sampler="warp"))
    assert finished.state == "failed" and "unknown sampler 'warp'" in finished.error
    assert webui.requests == []


def test_cancel_interrupts_and_drops_the_partial_image(webui):
    client = A1111Client(webui.url)
    runner = JobRunner(client, JobIn(prompt="long", width=64, height=64, steps=400, seed=1), poll_wait=0.2).start()
    assert webui.sampling.wait(10)
    deadline = time.monotonic() + 10
    while not any(isinstance(e, Progress) for e in runner.poll_once()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    interrupts, partial = webui.interrupts, webui.partial_images_sent
    runner.cancel()
    finished = runner.wait(10)
    assert finished.state == "cancelled" and finished.results == []
    assert webui.interrupts == interrupts + 1
    assert webui.partial_images_sent == partial + 1, "the WebUI did send its half-done image; it was dropped"


def test_models_and_health(webui):
    client = A1111Client(webui.url)
    assert client.models() == list(CHECKPOINTS)
    health = client.health()
    assert (health.family, health.model) == ("a1111", CHECKPOINTS[0])
    assert set(health.modes) == {"txt2img", "img2img", "inpaint", "depth"}


# -- fallbacks and diagnostics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("controlnet, says", [(None, "sd-webui-controlnet"),
                                              (("control_v11p_sd15_canny [d14c016b]",), "no depth model")])
def test_depth_without_a_depth_controlnet_falls_back_and_says_so(controlnet, says):
    webui = FakeA1111(controlnet=controlnet)
    with live_server(webui.app) as url:
        client = A1111Client(url)
        assert "depth" not in client.capabilities()
        runner = JobRunner(client, JobIn(prompt="x", width=64, height=64, steps=1, seed=2, depths=(png_grey(),),
                                         init_images=(png_rgb(0),))).start()
        finished = runner.wait(30)
        assert finished.state == "done", finished.error
        assert rgb_of(finished) == colour(2, False, "img2img")
        assert "alwayson_scripts" not in webui.requests[0][1]
        (warning,) = client.warnings
        assert "ran as img2img without depth" in warning and says in warning
        assert client.job_warnings(runner.job_id) == [warning]
        _, finished = run(client, JobIn(prompt="x", width=64, height=64, steps=1, depths=(png_grey(),)))
        assert finished.state == "done" and "ran as txt2img without depth" in client.warnings[-1]


def test_basic_auth():
    webui = FakeA1111(auth=("artist", "s3cret"))
    with live_server(webui.app) as url:
        assert A1111Client(url, username="artist", password="s3cret").health().family == "a1111"
        with pytest.raises(BackendError, match="--api-auth"):
            A1111Client(url, username="artist", password="wrong").health()
        _, finished = run(A1111Client(url), JOB)
        assert finished.state == "failed" and "401" in finished.error and "--api-auth" in finished.error


def test_webui_without_api_says_add_api():
    webui = FakeA1111(api=False)
    with live_server(webui.app) as url:
        with pytest.raises(BackendError, match="start the WebUI with --api"):
            A1111Client(url).health()
        _, finished = run(A1111Client(url), JOB)
        assert finished.state == "failed" and "--api" in finished.error


def test_nothing_listening_says_so():
    with pytest.raises(BackendError, match="refused the connection.*--listen"):
        A1111Client(free_port_url()).health()


def test_timeouts_name_the_limit():
    webui = FakeA1111(step_delay=0.05, delays={"/sdapi/v1/options": 0.8})
    with live_server(webui.app) as url:
        with pytest.raises(BackendError, match="did not answer /sdapi/v1/options within 0.2 s"):
            A1111Client(url, timeout=0.2).health()
        webui.delays.clear()
        _, finished = run(A1111Client(url, job_timeout=0.3), JobIn(prompt="x", width=64, height=64, steps=40))
        assert finished.state == "failed" and "did not finish the images within 0.3 s" in finished.error


def test_a_webui_saving_jpeg_is_refused_before_start():
    webui = FakeA1111(samples_format="jpg")
    with live_server(webui.app) as url:
        _, finished = run(A1111Client(url), JOB)
    assert finished.state == "failed" and "to png" in finished.error and webui.requests == []


# -- this project's own server as the WebUI: same pixels as its native API -------------------------------------


@pytest.fixture(scope="module")
def own(tiny_engine):
    with live_server(create_app(tiny_engine)) as url:
        yield url


@pytest.mark.parametrize("extra", [
    {},
    {"init_images": (png_rgb(3),), "masks": (png_grey(square=True),), "strength": 0.7},
    {"depths": (png_grey(),), "controlnet_scale": 0.9},
], ids=["txt2img", "inpaint", "depth"])
def test_own_server_sdapi_gives_the_native_pixels(own, extra):
    job = JobIn(prompt="a wall", width=64, height=64, steps=3, seed=11, guidance=6.0, **extra)
    client = A1111Client(own)
    _, through_a1111 = run(client, job)
    _, native = run(OwnServerClient(own), job)
    assert through_a1111.state == native.state == "done", (through_a1111.error, native.error)
    assert client.warnings == []
    assert np.array_equal(through_a1111.results[0].pixels, native.results[0].pixels)
    assert "Seed: 11" in through_a1111.results[0].text["parameters"]
    if "depths" in extra:
        assert "depth" in client.capabilities()


def test_own_server_progress_preview_and_interrupt(tiny_engine):
    engine = GatedEngine(tiny_engine)
    queue = JobQueue(engine)
    with live_server(create_app(engine, queue=queue, token="tok")) as url:
        client = A1111Client(url, token="tok")
        runner = JobRunner(client, JobIn(prompt="hold", width=64, height=64, steps=50), poll_wait=0.2).start()
        deadline = time.monotonic() + 30
        progress = []
        while not progress:
            assert time.monotonic() < deadline, "no progress event"
            progress = [e for e in runner.poll_once() if isinstance(e, Progress)]
            time.sleep(0.01)
        assert progress[0].total == 50 and progress[0].preview is not None
        runner.cancel()
        finished = runner.wait(30)
        assert finished.state == "cancelled" and finished.results == []
        assert queue.current is None and [j.state for j in queue._jobs.values()] == ["cancelled"]
        with pytest.raises(BackendError, match="401"):
            A1111Client(url, token="wrong").models()

