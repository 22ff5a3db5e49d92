"""The Automatic1111-compatible API end to end: a real server, real HTTP, payloads shaped as A1111 clients send them."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import requests
from conftest import pixels
from live_server import live_server
from PIL import Image

from backend.server.app import Limits, create_app

TIMEOUT = 60


@pytest.fixture(scope="module")
def url(tiny_engine):
    # 300-step jobs are what the progress test interrupts; the default limit is 150.
    with live_server(create_app(tiny_engine, limits=Limits(max_steps=400))) as base:
        yield base


def b64png(image: Image.Image, prefix: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return "data:image/png;base64," + data if prefix else data


def decode(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    image.load()
    return image


def post(url: str, path: str, payload, **kw) -> requests.Response:
    return requests.post(url + path, json=payload, timeout=TIMEOUT, **kw)


def generate(url: str, path: str = "/sdapi/v1/txt2img", **payload):
    """(images, info, whole response body) of a successful call."""
    base = dict(prompt="a red brick wall", width=64, height=64, steps=2, seed=42)
    base.update(payload)
    response = post(url, path, base)
    assert response.status_code == 200, response.text
    body = response.json()
    return [decode(data) for data in body["images"]], json.loads(body["info"]), body


def noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def test_txt2img_as_a_web_api_client_sends_it(url):
    payload = {
        "prompt": "a red brick wall", "negative_prompt": "blurry", "seed": 1234, "steps": 2, "cfg_scale": 6.5,
        "width": 64, "height": 64, "batch_size": 2, "n_iter": 2, "sampler_index": "Euler a",
        "restore_faces": False, "enable_hr": False, "styles": [], "subseed": -1, "subseed_strength": 0,
        "override_settings": {"CLIP_stop_at_last_layers": 1}, "override_settings_restore_afterwards": True,
        "script_name": None, "script_args": [], "send_images": True, "save_images": False,
        "a_field_no_server_knows": {"nested": [1, 2]},
    }
    response = post(url, "/sdapi/v1/txt2img", payload)
    assert response.status_code == 200, response.text
    body = response.json()
    images = [decode(data) for data in body["images"]]
    info = json.loads(body["info"])
    assert len(images) == 4 and all(image.size == (64, 64) and image.format == "PNG" for image in images)
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235, 1236, 1237]
    assert (info["prompt"], info["negative_prompt"]) == ("a red brick wall", "blurry")
    assert (info["steps"], info["cfg_scale"], info["width"], info["height"]) == (2, 6.5, 64, 64)
    assert info["sampler_name"] == "Euler a" and info["interrupted"] is False
    assert len(info["infotexts"]) == 4 and "Seed: 1235" in info["infotexts"][1]
    assert "Sampler: Euler a" in info["infotexts"][0] and "Negative prompt: blurry" in info["infotexts"][0]
    # The PNGs carry the same A1111 text as info (the "PNG Info" of each image).
    assert [image.text["parameters"] for image in images] == info["infotexts"]
    assert body["parameters"]["prompt"] == "a red brick wall" and body["parameters"]["sampler_index"] == "Euler a"
    assert "a_field_no_server_knows" not in body["parameters"]
    # Batch items are different images (consecutive seeds), not copies.
    assert np.abs(pixels(images[0]) - pixels(images[1])).mean() > 1


def test_random_seed_is_reported_and_reproduces(url):
    (first,), info, _ = generate(url, seed=-1, sampler_name="DPM++ 2M Karras")
    assert isinstance(info["seed"], int) and 0 <= info["seed"] < 2**32 and info["seed"] != -1
    assert info["sampler_name"] == "DPM++ 2M Karras"
    (again,), info_again, _ = generate(url, seed=info["seed"], sampler_name="dpmpp_2m_karras")
    assert info_again["seed"] == info["seed"]
    assert np.array_equal(pixels(first), pixels(again))
    assert pixels(first).std() > 5


def test_a1111_1_9_scheduler_field_selects_the_karras_variant(url):
    _, info, _ = generate(url, sampler_name="DPM++ 2M", scheduler="Karras")
    assert info["sampler_name"] == "DPM++ 2M Karras"
    _, info, _ = generate(url, sampler_name="Euler", scheduler="Automatic")
    assert info["sampler_name"] == "Euler"


def test_tiling_makes_a_seamless_image(url):
    (plain,), _, _ = generate(url, seed=5)
    (tiled,), info, body = generate(url, seed=5, tiling=True)
    assert info["tiling"] is True and info["seamless"] == "xy" and "Seamless: xy" in info["infotexts"][0]
    assert body["parameters"]["tiling"] is True
    assert np.abs(pixels(plain) - pixels(tiled)).mean() > 1


def test_img2img_inpaint_keeps_the_init_outside_the_mask(url):
    init = noise_rgb(96, 64)
    mask = Image.new("L", (48, 32), 0)  # half the output size: resized, as A1111 does
    mask.paste(255, (12, 8, 36, 24))  # -> (24, 16, 72, 48) at 96x64
    inside = np.zeros((64, 96), dtype=bool)
    inside[16:48, 24:72] = True
    payload = {
        "init_images": [b64png(init, prefix=True)], "mask": b64png(mask, prefix=True), "prompt": "moss",
        "denoising_strength": 0.75, "steps": 3, "seed": 9, "mask_blur": 4, "inpainting_fill": 1,
        "inpaint_full_res": False, "resize_mode": 0, "include_init_images": False,
    }
    response = post(url, "/sdapi/v1/img2img", payload)
    assert response.status_code == 200, response.text
    body = response.json()
    (image,) = [decode(data) for data in body["images"]]
    info = json.loads(body["info"])
    # No width/height given: the output is the init image's size.
    assert image.size == (96, 64) and (info["width"], info["height"]) == (96, 64)
    assert info["mode"] == "inpaint" and info["denoising_strength"] == 0.75
    assert body["parameters"]["init_images"] is None and body["parameters"]["mask"] is None
    out, src = pixels(image.convert("RGB")), pixels(init)
    assert np.array_equal(out[~inside], src[~inside]), "pixels outside the mask must be the init's, exactly"
    assert np.abs(out[inside] - src[inside]).mean() > 5, "inside the mask is repainted"

    response = post(url, "/sdapi/v1/img2img", {**payload, "inpainting_mask_invert": 1})
    assert response.status_code == 200, response.text
    inverted = pixels(decode(response.json()["images"][0]).convert("RGB"))
    assert np.array_equal(inverted[inside], src[inside])
    assert np.abs(inverted[~inside] - src[~inside]).mean() > 5


def test_controlnet_depth_unit_conditions_the_image(url, gradient):
    unit = {"enabled": True, "input_image": b64png(gradient), "module": "none",
            "model": "control_depth [scene-diffusion]", "weight": 0.8, "resize_mode": "Crop and Resize",
            "lowvram": False, "processor_res": 512, "guidance_start": 0.0, "guidance_end": 1.0,
            "control_mode": "Balanced", "pixel_perfect": False}
    disabled = {"enabled": False, "input_image": b64png(gradient), "module": "canny"}
    (plain,), _, _ = generate(url, seed=11)
    (depth,), info, body = generate(url, seed=11, alwayson_scripts={"controlnet": {"args": [disabled, unit]}})
    assert depth.size == (64, 64) and info["mode"] == "depth" and info["controlnet_scale"] == 0.8
    assert "ControlNet weight: 0.8" in info["infotexts"][0]
    assert np.abs(pixels(plain) - pixels(depth)).mean() > 1
    assert body["parameters"]["alwayson_scripts"]["controlnet"]["args"][1]["input_image"] is None

    # Older extension versions: `image` as {"image": b64, "mask": null}, the script named "ControlNet".
    dict_unit = {"image": {"image": b64png(gradient, prefix=True), "mask": None}, "module": "none", "weight": 0.8}
    (same,), _, _ = generate(url, seed=11, alwayson_scripts={"ControlNet": {"args": [dict_unit]}})
    assert np.array_equal(pixels(depth), pixels(same))

    small = gradient.resize((32, 32))  # another size than the output: resized, not refused
    (resized,), _, _ = generate(url, seed=11, alwayson_scripts={"controlnet": {"args": [{**unit,
                                "input_image": b64png(small)}]}})
    assert resized.size == (64, 64)


def test_controlnet_preprocessor_is_refused(url, gradient):
    unit = {"enabled": True, "input_image": b64png(gradient), "module": "depth_midas",
            "model": "control_depth [scene-diffusion]", "weight": 1.0}
    response = post(url, "/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                               "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert response.status_code == 422
    assert "depth_midas" in response.json()["detail"] and "'none'" in response.json()["detail"]


def test_progress_while_running_then_interrupt(url):
    idle = requests.get(url + "/sdapi/v1/progress", timeout=TIMEOUT).json()
    assert idle["progress"] == 0 and idle["current_image"] is None and idle["state"]["job_count"] == 0

    result: dict = {}

    def long_job() -> None:
        result["response"] = post(url, "/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64,
                                                             "steps": 300, "seed": 3})

    thread = threading.Thread(target=long_job)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            progress = requests.get(url + "/sdapi/v1/progress", params={"skip_current_image": "false"},
                                    timeout=TIMEOUT).json()
            if progress["progress"] > 0 and progress["current_image"]:
                break
            assert time.monotonic() < deadline, "the job never reported progress"
            time.sleep(0.01)
        assert 0 < progress["progress"] < 1 and progress["eta_relative"] >= 0
        state = progress["state"]
        assert state["sampling_steps"] == 300 and 1 <= state["sampling_step"] < 300
        assert state["job_count"] == 1 and state["interrupted"] is False
        assert decode(progress["current_image"]).format == "PNG"
        skipped = requests.get(url + "/sdapi/v1/progress", params={"skip_current_image": "true"},
                               timeout=TIMEOUT).json()
        assert skipped["current_image"] is None
        assert requests.post(url + "/sdapi/v1/interrupt", timeout=TIMEOUT).status_code == 200
    finally:
        thread.join(TIMEOUT)
    response = result["response"]
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert body["images"] == [] and info["interrupted"] is True and info["seed"] == 3
    after = requests.get(url + "/sdapi/v1/progress", timeout=TIMEOUT).json()
    assert after["progress"] == 0 and after["current_image"] is None
    # Nothing runs: interrupt and skip still answer 200.
    assert requests.post(url + "/sdapi/v1/interrupt", timeout=TIMEOUT).status_code == 200
    assert requests.post(url + "/sdapi/v1/skip", timeout=TIMEOUT).status_code == 200


def test_model_options_and_sampler_listings(url, tiny_engine):
    get = lambda path: requests.get(url + path, timeout=TIMEOUT)  # noqa: E731
    model = tiny_engine.model_id
    (entry,) = get("/sdapi/v1/sd-models").json()
    assert entry["title"] == entry["model_name"] == model and {"hash", "sha256", "filename", "config"} <= set(entry)
    options = get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == model and options["samples_format"] == "png"

    refused = post(url, "/sdapi/v1/options", {"sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors [6ce0161689]"})
    assert refused.status_code == 422 and model in refused.json()["detail"]
    for settings in ({"sd_model_checkpoint": model}, {"sd_model_checkpoint": f"{model} [abc123]"},
                     {"samples_format": "png", "jpeg_quality": 80}):
        accepted = post(url, "/sdapi/v1/options", settings)
        assert accepted.status_code == 200 and accepted.json() is None

    samplers = get("/sdapi/v1/samplers").json()
    assert {"name": "Euler a", "aliases": ["euler_a"], "options": {}} in samplers
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    for path in ("/sdapi/v1/sd-vae", "/sdapi/v1/upscalers", "/sdapi/v1/loras"):
        assert get(path).json() == []
    assert get("/controlnet/version").json() == {"version": 2}
    assert get("/controlnet/module_list").json() == {"module_list": ["none"]}
    assert get("/controlnet/model_list").json() == {"model_list": ["control_depth [scene-diffusion]"]}


@pytest.mark.parametrize("payload, says", [
    ({"sampler_name": "Restart"}, "unknown sampler"),
    ({"sampler_index": "nonsense"}, "unknown sampler"),
    ({"sampler_name": "Euler", "scheduler": "Exponential"}, "Exponential"),
    ({"override_settings": {"sd_model_checkpoint": "sdxl_base.safetensors"}}, "sdxl_base"),
    ({"width": 100}, "multiple of 8"),
    ({"steps": "many"}, "steps"),
])
def test_user_errors_are_422(url, payload, says):
    response = post(url, "/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 2, **payload})
    assert response.status_code == 422 and says in response.json()["detail"]


def test_img2img_without_init_image_is_422(url):
    response = post(url, "/sdapi/v1/img2img", {"prompt": "x", "init_images": [], "steps": 2})
    assert response.status_code == 422 and "init image" in response.json()["detail"]


def test_engine_failure_is_500_with_the_error(tiny_engine):
    class Failing:
        model_id = tiny_engine.model_id

        def info(self):
            return tiny_engine.info()

        def modes(self):
            return tiny_engine.modes()

        def generate(self, request, progress=None, cancel=None):
            raise RuntimeError("out of cheese")

    with live_server(create_app(Failing())) as base:
        response = post(base, "/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 2})
    assert response.status_code == 500 and "out of cheese" in response.json()["detail"]


def test_basic_auth_with_the_token_as_password(tiny_engine):
    payload = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
    with live_server(create_app(tiny_engine, token="s3cret")) as base:
        assert requests.get(base + "/sdapi/v1/sd-models", timeout=TIMEOUT).status_code == 401
        assert requests.get(base + "/sdapi/v1/sd-models", auth=("user", "wrong"), timeout=TIMEOUT).status_code == 401
        assert post(base, "/sdapi/v1/txt2img", payload, auth=("user", "wrong")).status_code == 401
        assert requests.get(base + "/controlnet/model_list", timeout=TIMEOUT).status_code == 401
        assert requests.get(base + "/sdapi/v1/sd-models", auth=("user", "s3cret"), timeout=TIMEOUT).status_code == 200
        response = post(base, "/sdapi/v1/txt2img", payload, auth=("anyone", "s3cret"))
        assert response.status_code == 200 and len(response.json()["images"]) == 1
        bearer = requests.get(base + "/sdapi/v1/progress", headers={"Authorization": "Bearer s3cret"},
                              timeout=TIMEOUT)
        assert bearer.status_code == 200
