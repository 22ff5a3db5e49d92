"""The add-on's ComfyUI client, driven through JobRunner as the add-on drives it, against a fake ComfyUI on
loopback (tests/fake_comfyui.py) that validates workflows as ComfyUI does and speaks its WebSocket."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest
from fake_a1111 import FakeA1111
from fake_comfyui import CHECKPOINTS, NODES, FakeComfyUI, colour
from live_server import live_server

from blender_addon.core.clients import BackendError
from blender_addon.core.comfyui import OP_BINARY, OP_TEXT, ComfyUIClient, WebSocket, WebSocketError
from blender_addon.core.jobs import Finished, JobRunner, Progress
from blender_addon.core.png import encode_png
from blender_addon.core.protocol import JobIn

CORE_NODES = set(NODES)


def png_rgb(seed: int, size: int = 64) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def png_grey(size: int = 64, square: bool = False) -> bytes:
    if square:
        grey = np.zeros((size, size), np.uint8)
        grey[size // 4:3 * size // 4, size // 4:3 * size // 4] = 255
    else:
        grey = np.tile(np.linspace(0, 255, size).astype(np.uint8), (size, 1))
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


def nodes_of(workflow: dict, class_type: str) -> list[dict]:
    return [node["inputs"] for _, node in sorted(workflow.items(), key=lambda item: int(item[0]))
            if node["class_type"] == class_type]


def free_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served():
    fake = FakeComfyUI(step_delay=0.01)
    with fake.serve() as url:
        fake.url = url
        yield fake


@pytest.fixture
def comfy(served):
    served.prompts.clear()
    served.interrupts.clear()
    served.queue_posts.clear()
    served.ws_log.clear()
    return served


# -- modes --------------------------------------------------------------------------------------------------


def test_txt2img_workflow_progress_previews_and_results(comfy):
    client = ComfyUIClient(comfy.url)
    job = JobIn(prompt="a wall", negative_prompt="blur", width=64, height=48, steps=20, seed=7, guidance=6.5,
                count=2, sampler="dpmpp_2m_karras")
    events, finished = run(client, job)
    assert finished.state == "done", finished.error
    (body,) = comfy.prompts
    workflow = body["prompt"]
    assert {node["class_type"] for node in workflow.values()} <= CORE_NODES
    assert nodes_of(workflow, "CheckpointLoaderSimple") == [{"ckpt_name": CHECKPOINTS[0]}]
    assert [n["text"] for n in nodes_of(workflow, "CLIPTextEncode")] == ["a wall", "blur"]
    assert nodes_of(workflow, "EmptyLatentImage") == [{"width": 64, "height": 48, "batch_size": 2}]
    (sampler,) = nodes_of(workflow, "KSampler")
    assert {k: sampler[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")} == {
        "seed": 7, "steps": 20, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}
    assert [r.pixels.shape for r in finished.results] == [(48, 64, 3)] * 2
    assert [rgb_of(finished, k) for k in range(2)] == [colour(7, False, "txt2img", k) for k in range(2)]
    assert "prompt" in finished.results[0].text, "ComfyUI's PNG text chunks come along"
    progress = [e for e in events if isinstance(e, Progress)]
    assert len(progress) >= 2 and all(e.total == 20 for e in progress)
    assert any(e.preview is not None and e.preview.shape == (8, 8, 3) for e in progress)
    # The WebSocket client masked every frame, answered both pings (one inside a fragmented message), closed.
    assert ("pong", b"are you there") in comfy.ws_log and ("pong", b"mid") in comfy.ws_log
    assert all(masked for kind, masked in comfy.ws_log if kind == "masked")


def test_img2img_uploads_the_init_image_and_denoises_by_strength(comfy):
    init = png_rgb(1)
    _, finished = run(ComfyUIClient(comfy.url), JobIn(prompt="x", width=64, height=64, steps=2, seed=3,
                                                      strength=0.6, init_images=(init,)))
    assert finished.state == "done", finished.error
    assert rgb_of(finished) == colour(3, False, "img2img")
    workflow = comfy.prompts[0]["prompt"]
    (load,) = nodes_of(workflow, "LoadImage")
    assert load["image"].startswith("scene_diffusion/") and comfy.uploads[load["image"]] == init
    assert comfy.upload_forms[-1]["overwrite"] == "true"
    assert nodes_of(workflow, "KSampler")[0]["denoise"] == 0.6
    assert nodes_of(workflow, "EmptyLatentImage") == [] and nodes_of(workflow, "ImageScale") == []


def test_inpaint_mask_is_the_red_channel_under_a_noise_mask(comfy):
    init, mask = png_rgb(2), png_grey(32, square=True)  # half size: scaled up with nearest-exact
    _, finished = run(ComfyUIClient(comfy.url), JobIn(prompt="x", width=64, height=64, steps=2, seed=4,
                                                      init_images=(init,), masks=(mask,)))
    assert finished.state == "done", finished.error
    assert rgb_of(finished) == colour(4, False, "inpaint")
    workflow = comfy.prompts[0]["prompt"]
    assert nodes_of(workflow, "ImageToMask")[0]["channel"] == "red"
    assert len(nodes_of(workflow, "SetLatentNoiseMask")) == 1
    (scale,) = nodes_of(workflow, "ImageScale")
    assert (scale["upscale_method"], scale["width"], scale["height"]) == ("nearest-exact", 64, 64)


def test_depth_goes_through_a_depth_controlnet(comfy):
    depth = png_grey()
    client = ComfyUIClient(comfy.url)
    assert client.capabilities() == {"txt2img", "img2img", "inpaint", "depth"}
    _, finished = run(client, JobIn(prompt="x", width=64, height=64, steps=2, seed=9, depths=(depth,),
                                    controlnet_scale=0.8))
    assert finished.state == "done", finished.error
    assert rgb_of(finished) == colour(9, True, "txt2img") and client.warnings == []
    workflow = comfy.prompts[0]["prompt"]
    assert nodes_of(workflow, "ControlNetLoader") == [{"control_net_name": "control_v11f1p_sd15_depth.pth"}]
    (apply,) = nodes_of(workflow, "ControlNetApplyAdvanced")
    assert (apply["strength"], apply["start_percent"], apply["end_percent"]) == (0.8, 0.0, 1.0)


def test_batch_of_views_is_one_workflow_with_a_branch_per_view(comfy):
    inits, depths = (png_rgb(1), png_rgb(2)), (png_grey(), png_grey(square=True))
    events, finished = run(ComfyUIClient(comfy.url), JobIn(prompt="x", width=64, height=64, steps=10, seed=10,
                                                           count=2, init_images=inits, depths=depths))
    assert finished.state == "done", finished.error
    assert [rgb_of(finished, k) for k in range(4)] == [colour(10, True, "img2img", 0), colour(10, True, "img2img", 1),
                                                       colour(12, True, "img2img", 0), colour(12, True, "img2img", 1)]
    (body,) = comfy.prompts
    assert [n["seed"] for n in nodes_of(body["prompt"], "KSampler")] == [10, 12]
    assert [n["amount"] for n in nodes_of(body["prompt"], "RepeatLatentBatch")] == [2, 2]
    assert all(e.total == 20 for e in events if isinstance(e, Progress))


# -- fallbacks and refusals -------------------------------------------------------------------------------------


def test_depth_without_a_depth_controlnet_falls_back_and_says_so():
    fake = FakeComfyUI(controlnets=("control_v11p_sd15_canny.pth",))
    with fake.serve() as url:
        client = ComfyUIClient(url)
        assert "depth" not in client.capabilities() and "depth" not in client.health().modes
        _, finished = run(client, JobIn(prompt="x", width=64, height=64, steps=1, seed=2, depths=(png_grey(),)))
    assert finished.state == "done", finished.error
    assert rgb_of(finished) == colour(2, False, "txt2img")
    assert not nodes_of(fake.prompts[0]["prompt"], "ControlNetLoader")
    (warning,) = client.warnings
    assert "no depth ControlNet" in warning and "ran as txt2img without depth" in warning
    assert "models/controlnet" in warning


def test_seamless_is_refused_before_start(comfy):
    client = ComfyUIClient(comfy.url)
    assert "seamless" not in client.capabilities() and client.seamless_axes == ()
    _, finished = run(client, JobIn(prompt="x", seamless="xy"))
    assert finished.state == "failed" and "cannot tile seamlessly" in finished.error
    assert comfy.prompts == []


def test_missing_checkpoint_is_named_with_what_is_there_before_start(comfy):
    _, finished = run(ComfyUIClient(comfy.url), JobIn(prompt="x", model="sdxl.safetensors"))
    assert finished.state == "failed" and "no checkpoint 'sdxl.safetensors'" in finished.error
    assert all(name in finished.error for name in CHECKPOINTS) and comfy.prompts == []
    _, finished = run(ComfyUIClient(comfy.url), JobIn(prompt="x", sampler="pndm"))
    assert finished.state == "failed" and "sampler 'pndm'" in finished.error


def test_workflow_refused_by_comfyui_quotes_the_node_errors():
    fake = FakeComfyUI(gone_checkpoints=(CHECKPOINTS[0],))  # listed, then deleted before the job
    with fake.serve() as url:
        _, finished = run(ComfyUIClient(url), JobIn(prompt="x", width=64, height=64, steps=1))
    assert finished.state == "failed"
    assert "CheckpointLoaderSimple (node 1): Value not in list" in finished.error
    assert f"'{CHECKPOINTS[0]}' not in" in finished.error


def test_execution_error_names_the_node():
    fake = FakeComfyUI(fail_class="VAEDecode")
    with fake.serve() as url:
        _, finished = run(ComfyUIClient(url), JobIn(prompt="x", width=64, height=64, steps=2))
        _, polled = run(ComfyUIClient(url, websocket=False), JobIn(prompt="x", width=64, height=64, steps=2))
    for result in (finished, polled):
        assert result.state == "failed" and result.results == []
        assert "ComfyUI failed in VAEDecode (node" in result.error and "out of memory" in result.error


# -- following jobs -----------------------------------------------------------------------------------------------


def test_jpeg_previews_are_dropped_but_steps_still_come():
    fake = FakeComfyUI(preview_format="JPEG", step_delay=0.02)
    with fake.serve() as url:
        events, finished = run(ComfyUIClient(url), JobIn(prompt="x", width=64, height=64, steps=20, seed=1))
    progress = [e for e in events if isinstance(e, Progress)]
    assert finished.state == "done" and progress and all(e.preview is None for e in progress)


def test_without_the_websocket_jobs_are_polled():
    fake = FakeComfyUI(websocket=False)
    with fake.serve() as url:
        events, finished = run(ComfyUIClient(url, poll_interval=0.05), JobIn(prompt="x", width=64, height=64,
                                                                             steps=5, seed=3))
    assert finished.state == "done", finished.error
    assert rgb_of(finished) == colour(3, False, "txt2img")
    assert not [e for e in events if isinstance(e, Progress)] and fake.ws_log == []


@pytest.mark.parametrize("websocket", [True, False], ids=["websocket", "polling"])
def test_cancel_interrupts_the_running_prompt_and_deletes_a_queued_one(websocket):
    fake = FakeComfyUI(step_delay=0.02)
    with fake.serve() as url:
        client = ComfyUIClient(url, websocket=websocket, poll_interval=0.05)
        running = JobRunner(client, JobIn(prompt="long", width=64, height=64, steps=500), poll_wait=0.2).start()
        assert fake.sampling.wait(10)
        queued = JobRunner(client, JobIn(prompt="next", width=64, height=64, steps=5), poll_wait=0.2).start()
        deadline = time.monotonic() + 10
        while len(fake.pending) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        queued.cancel()
        assert queued.wait(10).state == "cancelled"
        assert fake.queue_posts == [{"delete": [queued.job_id]}] and fake.interrupts == []
        running.cancel()
        finished = running.wait(10)
        assert finished.state == "cancelled" and finished.results == []
        assert fake.interrupts == [{"prompt_id": running.job_id}]
        assert fake.history[running.job_id]["status"]["status_str"] == "error"


def test_a_dropped_websocket_falls_back_to_polling():
    fake = FakeComfyUI(step_delay=0.02)
    with fake.serve() as url:
        runner = JobRunner(ComfyUIClient(url, poll_interval=0.05), JobIn(prompt="x", width=64, height=64,
                                                                         steps=30, seed=6), poll_wait=0.2).start()
        assert fake.sampling.wait(10)
        fake.drop_websockets()
        finished = runner.wait(10)
    assert finished.state == "done", finished.error
    assert rgb_of(finished) == colour(6, False, "txt2img")


def test_a_job_comfyui_forgot_fails():
    fake = FakeComfyUI(step_delay=0.02, websocket=False)
    with fake.serve() as url:
        client = ComfyUIClient(url, poll_interval=0.05)
        blocker = JobRunner(client, JobIn(prompt="long", width=64, height=64, steps=500), poll_wait=0.2).start()
        assert fake.sampling.wait(10)
        forgotten = JobRunner(client, JobIn(prompt="next", width=64, height=64, steps=5), poll_wait=0.2).start()
        deadline = time.monotonic() + 10
        while not fake.pending:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        fake.pending.clear()  # someone cleared ComfyUI's queue
        finished = forgotten.wait(10)
        assert finished.state == "failed" and "no longer knows the job" in finished.error
        blocker.cancel()
        assert blocker.wait(10).state == "cancelled"


def test_job_timeout():
    fake = FakeComfyUI(step_delay=0.05)
    with fake.serve() as url:
        _, finished = run(ComfyUIClient(url, job_timeout=0.3), JobIn(prompt="x", width=64, height=64, steps=100))
        assert finished.state == "failed" and "did not finish the job within 0.3 s" in finished.error
        fake._interrupt.set()


# -- discovery and diagnostics -----------------------------------------------------------------------------------


def test_health_and_models(comfy):
    client = ComfyUIClient(comfy.url)
    health = client.health()
    assert (health.family, health.model, health.version) == ("comfyui", CHECKPOINTS[0], "0.3.40")
    assert health.device.startswith("cuda:0 NVIDIA GeForce RTX 4090")
    assert set(health.modes) == {"txt2img", "img2img", "inpaint", "depth"}
    assert client.models() == list(CHECKPOINTS)


def test_a_server_that_is_not_comfyui_says_so():
    with live_server(FakeA1111().app) as url:
        with pytest.raises(BackendError, match="not ComfyUI.*8188"):
            ComfyUIClient(url).health()


def test_nothing_listening_says_so():
    with pytest.raises(BackendError, match="refused the connection.*--listen"):
        ComfyUIClient(free_port_url()).health()


def test_timeout_names_the_limit():
    fake = FakeComfyUI(delays={"/system_stats": 0.8})
    with fake.serve() as url:
        with pytest.raises(BackendError, match="did not answer /system_stats within 0.2 s"):
            ComfyUIClient(url, timeout=0.2).health()


def test_credentials_for_a_proxy_in_front():
    fake = FakeComfyUI(auth=("artist", "s3cret"), step_delay=0.02)
    with fake.serve() as url:
        with pytest.raises(BackendError, match="refused the credentials"):
            ComfyUIClient(url, username="artist", password="wrong").health()
        events, finished = run(ComfyUIClient(url, username="artist", password="s3cret"),
                               JobIn(prompt="x", width=64, height=64, steps=20))
    assert finished.state == "done", finished.error
    assert [e for e in events if isinstance(e, Progress)], "the WebSocket handshake carried the credentials"


# -- the WebSocket client on its own ---------------------------------------------------------------------------


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([size])
    elif size < 65536:
        head += bytes([126]) + struct.pack(">H", size)
    else:
        head += bytes([127]) + struct.pack(">Q", size)
    return head + payload


def read_client_frame(sock: socket.socket) -> tuple[int, bytes]:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            data += sock.recv(n - len(data))
        return data

    first, second = exact(2)
    assert second & 0x80, "client frames must be masked"
    size = second & 0x7F
    if size == 126:
        size = struct.unpack(">H", exact(2))[0]
    elif size == 127:
        size = struct.unpack(">Q", exact(8))[0]
    mask = exact(4)
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(exact(size)))


def test_websocket_lengths_fragments_control_frames_and_close():
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    ws = WebSocket(ours)
    ws.settimeout(5)
    big = bytes(range(256)) * 300  # 76,800 bytes: the 64-bit length form
    theirs.sendall(server_frame(OP_BINARY, big))
    assert ws.recv() == (OP_BINARY, big)
    # a message in pieces, a ping between them, the frames split across reads
    stream = (server_frame(OP_TEXT, b'{"a":', fin=False) + server_frame(0x9, b"p")
              + server_frame(0x0, b' 1}', fin=True))
    sender = threading.Thread(target=lambda: [theirs.sendall(stream[i:i + 3]) or time.sleep(0.001)
                                              for i in range(0, len(stream), 3)])
    sender.start()
    assert ws.recv() == (OP_TEXT, b'{"a": 1}')
    sender.join()
    assert read_client_frame(theirs) == (0xA, b"p")
    ws.send_text("x" * 200)  # the 16-bit length form, masked
    assert read_client_frame(theirs) == (OP_TEXT, b"x" * 200)
    theirs.sendall(server_frame(0x8, struct.pack(">H", 1001)))
    assert ws.recv() is None and ws.close_code == 1001
    assert read_client_frame(theirs) == (0x8, struct.pack(">H", 1001))
    theirs.close()


def test_websocket_timeout_keeps_a_half_received_frame():
    ours, theirs = socket.socketpair()
    ws = WebSocket(ours)
    ws.settimeout(0.05)
    frame = server_frame(OP_TEXT, b"hello world")
    theirs.sendall(frame[:5])
    with pytest.raises(TimeoutError):
        ws.recv()
    theirs.sendall(frame[5:])
    assert ws.recv() == (OP_TEXT, b"hello world")
    ws.close()
    theirs.close()


def test_websocket_handshake_refused_is_an_error():
    with live_server(FakeA1111().app) as url:
        with pytest.raises(WebSocketError):
            WebSocket.connect(url.replace("http://", "ws://") + "/ws?clientId=x", timeout=5)
