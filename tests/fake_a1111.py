"""A stand-in for an Automatic1111/Forge WebUI started with --api, for the add-on's A1111 client.

It answers the routes the client uses with the shapes the WebUI documents (/docs of a WebUI started with --api,
and sd-webui-controlnet's API page): txt2img/img2img block until the "sampling" is done and carry base64
PNGs, `info` is a JSON string, /progress reports `state.sampling_step` and a `current_image` while a job runs,
/interrupt stops it and the call still returns the half-done image (as the WebUI does). Requests are checked
for the shapes the WebUI accepts and recorded.

The images are flat colours that say what was asked: red = seed % 256, green = 255 when a ControlNet depth unit
was used, blue = 10 (txt2img), 20 (img2img), 30 (inpaint), plus 100 for an interrupted (partial) image.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from blender_addon.core.png import decode_png, encode_png

CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors [6ce0161689]", "dreamshaper_8.safetensors [879db523c3]")
CONTROLNET_MODELS = ("control_v11p_sd15_canny [d14c016b]", "control_v11f1p_sd15_depth [cfd03158]")
SAMPLERS = ("Euler a", "Euler", "LMS", "Heun", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "DDIM", "PLMS", "UniPC")
MODE_BLUE = {"txt2img": 10, "img2img": 20, "inpaint": 30}
PARTIAL = 100


def colour(seed: int, depth: bool, mode: str, partial: bool = False) -> tuple[int, int, int]:
    return seed % 256, 255 if depth else 0, MODE_BLUE[mode] + (PARTIAL if partial else 0)


class Invalid(Exception):
    pass


class FakeA1111:
    """The fake WebUI's state and its FastAPI `app`.

    api: False answers 404 under /sdapi (a WebUI started without --api). controlnet: None is a WebUI without
    the extension (404 on /controlnet/*, and an unknown always-on script is refused as the WebUI does).
    step_delay: seconds per sampling step. delays: path -> seconds to sleep before answering.
    """

    def __init__(self, *, api: bool = True, auth: tuple[str, str] | None = None,
                 controlnet: tuple[str, ...] | None = CONTROLNET_MODELS, step_delay: float = 0.0,
                 samples_format: str = "png", delays: dict[str, float] | None = None) -> None:
        self.api, self.auth, self.controlnet = api, auth, controlnet
        self.step_delay, self.samples_format = step_delay, samples_format
        self.delays = dict(delays or {})
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (path, payload) of generation calls
        self.interrupts = 0
        self.partial_images_sent = 0
        self.checkpoint = CHECKPOINTS[0]
        self._lock = threading.Lock()  # the WebUI's queue lock: one generation at a time
        self._interrupt = threading.Event()
        self.step, self.steps, self.running = 0, 0, False
        self.sampling = threading.Event()  # set while a job samples (tests wait on it)
        self.app = self._build()

    # -- generation ------------------------------------------------------------------------------

    def generate(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        mode, depth = self.validate(path, body)
        self.requests.append((path, body))
        steps = body.get("steps", 20)
        seed = body.get("seed", -1)
        seed = 1234 if seed in (None, -1) else seed
        count = body.get("batch_size", 1) * body.get("n_iter", 1)
        width, height = body.get("width", 512), body.get("height", 512)
        with self._lock:
            self._interrupt.clear()
            self.step, self.steps, self.running = 0, steps, True
            self.sampling.set()
            try:
                for step in range(1, steps + 1):
                    if self._interrupt.is_set():
                        break
                    time.sleep(self.step_delay)
                    self.step = step
            finally:
                self.running = False
                self.sampling.clear()
        partial = self._interrupt.is_set()
        self.partial_images_sent += count if partial else 0
        images = [self.png(width, height, colour(seed + k, depth, mode, partial)) for k in range(count)]
        if depth and body["alwayson_scripts"]["controlnet"]["args"][0].get("save_detected_map", True):
            images.append(self.png(width, height, (1, 2, 3)))  # the extension appends the control image
        info = {"prompt": body.get("prompt", ""), "seed": seed, "all_seeds": [seed + k for k in range(count)],
                "width": width, "height": height, "sampler_name": body.get("sampler_name") or "Euler a",
                "steps": steps, "index_of_first_image": 0, "infotexts": ["..."] * count}
        parameters = {k: (None if k in ("init_images", "mask") else v) for k, v in body.items()}
        return {"images": images, "parameters": parameters, "info": json.dumps(info)}

    def png(self, width: int, height: int, rgb: tuple[int, int, int]) -> str:
        pixels = np.empty((height, width, 3), np.uint8)
        pixels[:] = rgb
        if self.samples_format == "png":
            data = encode_png(pixels, {"parameters": "fake a1111"})
        else:
            data = b"\xff\xd8\xff\xe0" + bytes(64)  # what a WebUI saving jpg sends: not a PNG
        return base64.b64encode(data).decode("ascii")

    def validate(self, path: str, body: dict[str, Any]) -> tuple[str, bool]:
        """(mode, depth used) of a request, or Invalid naming what the WebUI would refuse or misread."""
        for name, kind in (("prompt", str), ("negative_prompt", str), ("seed", int), ("steps", int),
                           ("cfg_scale", (int, float)), ("width", int), ("height", int), ("batch_size", int),
                           ("n_iter", int), ("tiling", bool), ("sampler_name", str), ("denoising_strength",
                                                                                       (int, float))):
            if name in body and not isinstance(body[name], kind):
                raise Invalid(f"{name}: wrong type {type(body[name]).__name__}")
        if "sampler_name" in body and body["sampler_name"] not in SAMPLERS:
            raise Invalid(f"Sampler not found: {body['sampler_name']}")
        checkpoint = (body.get("override_settings") or {}).get("sd_model_checkpoint")
        if checkpoint is not None and checkpoint not in CHECKPOINTS:
            raise Invalid(f"model not found: {checkpoint}")
        mode = "txt2img"
        if path.endswith("img2img"):
            images = body.get("init_images")
            if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
                raise Invalid("init_images must be a list of base64 strings")
            self.decode(images[0], "init image")
            mode = "img2img"
            if body.get("mask") is not None:
                self.decode(body["mask"], "mask")
                for name, value in (("inpainting_mask_invert", 0), ("inpainting_fill", 1),
                                    ("inpaint_full_res", False)):
                    if body.get(name) != value:
                        raise Invalid(f"{name} is {body.get(name)!r}, expected {value!r}")
                mode = "inpaint"
        elif "init_images" in body or "mask" in body:
            raise Invalid("txt2img takes no init_images or mask")
        depth = False
        scripts = body.get("alwayson_scripts") or {}
        if scripts:
            if "controlnet" not in scripts:
                raise Invalid(f"unknown always-on scripts {list(scripts)}")
            if self.controlnet is None:
                raise Invalid("always on script controlnet not found")
            units = scripts["controlnet"].get("args")
            if not isinstance(units, list) or not units or not isinstance(units[0], dict):
                raise Invalid("alwayson_scripts.controlnet.args must be a list of units")
            unit = units[0]
            if unit.get("module") != "none":
                raise Invalid(f"module {unit.get('module')!r}: a ready depth map needs module 'none'")
            if unit.get("model") not in self.controlnet:
                raise Invalid(f"ControlNet model {unit.get('model')!r} not found")
            if unit.get("resize_mode") != "Just Resize" or unit.get("control_mode") != "Balanced":
                raise Invalid("resize_mode / control_mode not understood")
            if not isinstance(unit.get("weight"), (int, float)) or unit.get("pixel_perfect") is not False:
                raise Invalid("weight must be a number and pixel_perfect false")
            self.decode(unit.get("image"), "ControlNet image")
            depth = unit.get("enabled") is True
        return mode, depth

    @staticmethod
    def decode(data: Any, role: str) -> np.ndarray:
        if not isinstance(data, str):
            raise Invalid(f"{role} must be a base64 string")
        try:
            return decode_png(base64.b64decode(data, validate=True))[0]
        except (binascii.Error, ValueError) as exc:
            raise Invalid(f"{role} is not a base64 PNG: {exc}") from None

    def progress(self) -> dict[str, Any]:
        running = self.running
        current = None
        if running and self.step:
            shade = np.full((8, 8, 3), min(255, self.step * 10), np.uint8)
            current = base64.b64encode(encode_png(shade)).decode("ascii")
        return {
            "progress": self.step / self.steps if running and self.steps else 0.0,
            "eta_relative": 1.0 if running else 0.0,
            # the WebUI keeps the last job's numbers in `state` when idle; job_count says whether one runs
            "state": {"skipped": False, "interrupted": self._interrupt.is_set(), "job": "",
                      "job_count": 1 if running else 0, "job_timestamp": "20240101000000", "job_no": 0,
                      "sampling_step": self.step, "sampling_steps": self.steps},
            "current_image": current,
            "textinfo": None,
        }

    # -- routes ----------------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()
        fake = self

        @app.middleware("http")
        async def webui_gate(request: Request, call_next):
            import asyncio

            path = request.url.path
            await asyncio.sleep(fake.delays.get(path, 0.0))
            if path.startswith("/sdapi/"):
                if not fake.api:
                    return JSONResponse({"detail": "Not Found"}, status_code=404)
                if fake.auth is not None and not fake.authorised(request.headers.get("authorization")):
                    return JSONResponse({"detail": "Incorrect username or password"}, status_code=401,
                                        headers={"WWW-Authenticate": "Basic"})
            if path.startswith("/controlnet/") and fake.controlnet is None:
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            return await call_next(request)

        def generation(path: str, body: dict[str, Any]) -> JSONResponse:
            try:
                return JSONResponse(fake.generate(path, body))
            except Invalid as exc:  # the WebUI's api_middleware shape of an exception
                return JSONResponse({"error": "RuntimeError", "detail": "", "body": "", "errors": str(exc)},
                                    status_code=500 if "not found" in str(exc) else 422)

        @app.post("/sdapi/v1/txt2img")
        def txt2img(body: dict[str, Any]) -> JSONResponse:
            return generation("/sdapi/v1/txt2img", body)

        @app.post("/sdapi/v1/img2img")
        def img2img(body: dict[str, Any]) -> JSONResponse:
            return generation("/sdapi/v1/img2img", body)

        @app.get("/sdapi/v1/progress")
        def progress(skip_current_image: bool = False) -> dict[str, Any]:
            return fake.progress()

        @app.post("/sdapi/v1/interrupt")
        def interrupt() -> dict[str, Any]:
            fake.interrupts += 1
            if fake.running:
                fake._interrupt.set()
            return {}

        @app.get("/sdapi/v1/sd-models")
        def sd_models() -> list[dict[str, Any]]:
            return [{"title": title, "model_name": title.split(".")[0], "hash": title[-11:-1],
                     "sha256": None, "filename": "/webui/models/Stable-diffusion/" + title.split(" [")[0],
                     "config": None} for title in CHECKPOINTS]

        @app.get("/sdapi/v1/options")
        def options() -> dict[str, Any]:
            return {"sd_model_checkpoint": fake.checkpoint, "samples_format": fake.samples_format,
                    "show_progress_every_n_steps": 1}

        @app.get("/sdapi/v1/samplers")
        def samplers() -> list[dict[str, Any]]:
            return [{"name": name, "aliases": [], "options": {}} for name in SAMPLERS]

        @app.get("/controlnet/model_list")
        def model_list() -> dict[str, list[str]]:
            return {"model_list": list(fake.controlnet or ())}

        @app.get("/controlnet/version")
        def version() -> dict[str, int]:
            return {"version": 2}

        return app

    def authorised(self, header: str | None) -> bool:
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (user, password) == self.auth
