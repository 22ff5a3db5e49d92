"""A stand-in for a ComfyUI server, for the add-on's ComfyUI client.

It follows ComfyUI's documented server routes (server.py: /prompt, /queue, /history, /view, /upload/image,
/interrupt, /object_info, /system_stats, /ws) with their shapes: a workflow is validated node by node as
ComfyUI does (known class, required inputs, linked output types, combo values, number ranges) and a refusal is
HTTP 400 with `error` and `node_errors`; a queued workflow runs in a worker thread that sends ComfyUI's
WebSocket messages (status, execution_start, executing, progress, binary preview frames, execution_error or
execution_interrupted, executing null at the end) to the client id that queued it, and writes /history.

The WebSocket: uvicorn serves WebSockets only with a WebSocket library (websockets or wsproto), and neither is a
dependency of this project. So the fake listens on a small front door of its own: a WebSocket upgrade on /ws is
answered there (handshake and frames with the stdlib, written apart from the add-on's client so one does not
test itself), and every other connection is passed through to the FastAPI app under uvicorn.

The images are flat colours that say what was run: red = KSampler seed % 256, green = 255 when the sampler's
conditioning went through ControlNetApplyAdvanced, blue = 10 (empty latent), 20 (VAEEncode), 30 (with a noise
mask), plus the index in the batch.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import hashlib
import itertools
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from live_server import live_server

from blender_addon.core.png import decode_png, encode_png

CHECKPOINTS = ("sd15/dreamshaper_8.safetensors", "v1-5-pruned-emaonly.safetensors")
CONTROLNETS = ("control_v11p_sd15_canny.pth", "control_v11f1p_sd15_depth.pth")
SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "lms", "dpmpp_2m", "dpmpp_sde", "ddim", "uni_pc")
SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")
MODE_BLUE = {"txt2img": 10, "img2img": 20, "inpaint": 30}
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)  # what ComfyUI's JPEG previews start like

INT, FLOAT, STRING = "INT", "FLOAT", "STRING"
# class -> (required inputs: name -> type, a tuple of choices, or a special list name; output types)
NODES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "CheckpointLoaderSimple": ({"ckpt_name": "checkpoints"}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": ({"text": STRING, "clip": "CLIP"}, ("CONDITIONING",)),
    "EmptyLatentImage": ({"width": INT, "height": INT, "batch_size": INT}, ("LATENT",)),
    "LoadImage": ({"image": "uploads"}, ("IMAGE", "MASK")),
    "ImageScale": ({"image": "IMAGE", "upscale_method": ("nearest-exact", "bilinear", "area", "bicubic", "lanczos"),
                    "width": INT, "height": INT, "crop": ("disabled", "center")}, ("IMAGE",)),
    "VAEEncode": ({"pixels": "IMAGE", "vae": "VAE"}, ("LATENT",)),
    "VAEEncodeForInpaint": ({"pixels": "IMAGE", "vae": "VAE", "mask": "MASK", "grow_mask_by": INT}, ("LATENT",)),
    "SetLatentNoiseMask": ({"samples": "LATENT", "mask": "MASK"}, ("LATENT",)),
    "RepeatLatentBatch": ({"samples": "LATENT", "amount": INT}, ("LATENT",)),
    "ImageToMask": ({"image": "IMAGE", "channel": ("red", "green", "blue", "alpha")}, ("MASK",)),
    "ControlNetLoader": ({"control_net_name": "controlnets"}, ("CONTROL_NET",)),
    "ControlNetApplyAdvanced": ({"positive": "CONDITIONING", "negative": "CONDITIONING", "control_net": "CONTROL_NET",
                                 "image": "IMAGE", "strength": FLOAT, "start_percent": FLOAT, "end_percent": FLOAT},
                                ("CONDITIONING", "CONDITIONING")),
    "KSampler": ({"model": "MODEL", "seed": INT, "steps": INT, "cfg": FLOAT, "sampler_name": SAMPLERS,
                  "scheduler": SCHEDULERS, "positive": "CONDITIONING", "negative": "CONDITIONING",
                  "latent_image": "LATENT", "denoise": FLOAT}, ("LATENT",)),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": STRING}, ()),
    "PreviewImage": ({"images": "IMAGE"}, ()),
}
OUTPUT_NODES = {"SaveImage", "PreviewImage"}
RANGES = {"seed": (0, 0xFFFFFFFFFFFFFFFF), "steps": (1, 10000), "width": (16, 16384), "height": (16, 16384),
          "batch_size": (1, 4096), "amount": (1, 64), "cfg": (0.0, 100.0), "denoise": (0.0, 1.0),
          "strength": (0.0, 10.0), "start_percent": (0.0, 1.0), "end_percent": (0.0, 1.0), "grow_mask_by": (0, 64)}
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def colour(seed: int, depth: bool, mode: str, index: int = 0) -> tuple[int, int, int]:
    return seed % 256, 255 if depth else 0, MODE_BLUE[mode] + index


class Interrupted(Exception):
    pass


class ExecutionFailed(Exception):
    pass


class FakeComfyUI:
    """The fake server's state, its FastAPI `app`, and `serve()` (yields the base URL).

    websocket: False refuses /ws upgrades (clients must poll /history). preview_format: "PNG" or "JPEG" for
    the binary preview frames. step_delay: seconds per sampling step. fail_class: a node class whose execution
    fails. gone_checkpoints: listed by /object_info but refused by /prompt (a file removed after listing).
    auth: (user, password) required as HTTP Basic (a proxy in front of ComfyUI). delays: path -> seconds.
    """

    def __init__(self, *, checkpoints: tuple[str, ...] = CHECKPOINTS, controlnets: tuple[str, ...] = CONTROLNETS,
                 websocket: bool = True, preview_format: str = "PNG", step_delay: float = 0.01,
                 fail_class: str | None = None, gone_checkpoints: tuple[str, ...] = (),
                 auth: tuple[str, str] | None = None, delays: dict[str, float] | None = None) -> None:
        self.checkpoints, self.controlnets = checkpoints, controlnets
        self.websocket, self.preview_format, self.step_delay = websocket, preview_format, step_delay
        self.fail_class, self.gone_checkpoints, self.auth = fail_class, gone_checkpoints, auth
        self.delays = dict(delays or {})
        self.uploads: dict[str, bytes] = {}  # LoadImage name ("subfolder/name") -> bytes
        self.upload_forms: list[dict[str, str]] = []  # the non-file fields of each upload
        self.prompts: list[dict[str, Any]] = []  # accepted POST /prompt bodies
        self.interrupts: list[Any] = []  # bodies of POST /interrupt
        self.queue_posts: list[dict[str, Any]] = []  # bodies of POST /queue
        self.files: dict[tuple[str, str, str], bytes] = {}  # (type, subfolder, filename) -> PNG
        self.history: dict[str, dict[str, Any]] = {}
        self.pending: list[list[Any]] = []  # [number, prompt_id, prompt, extra_data, outputs]
        self.running: list[Any] | None = None
        self.sockets: dict[str, list[_Peer]] = {}
        self.ws_log: list[tuple[str, Any]] = []  # what the clients sent over /ws: ("pong", payload), ("masked", bool)
        self.sampling = threading.Event()  # set while a KSampler samples
        self._lock = threading.Condition()
        self._interrupt = threading.Event()
        self._numbers = itertools.count()
        self._saved = itertools.count(1)
        self._stop = False
        self.app = self._build()

    # -- serving ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        worker = threading.Thread(target=self._work, daemon=True)
        worker.start()
        with live_server(self.app) as inner:
            door = _FrontDoor(self, int(inner.rsplit(":", 1)[1]))
            door.start()
            try:
                yield f"http://127.0.0.1:{door.port}"
            finally:
                door.stop()
                with self._lock:
                    self._stop = True
                    self._interrupt.set()
                    self._lock.notify_all()
                worker.join(10)

    def send(self, client_id: str | None, message: dict[str, Any] | bytes) -> None:
        for peer in list(self.sockets.get(client_id or "", ())):
            if isinstance(message, bytes):
                peer.send(0x2, message)
            else:
                peer.send(0x1, json.dumps(message).encode())

    def drop_websockets(self) -> None:
        """Close every WebSocket connection, as a restart of ComfyUI or a proxy's idle timeout does."""
        for peers in list(self.sockets.values()):
            for peer in list(peers):
                with contextlib.suppress(OSError):
                    peer.conn.shutdown(socket.SHUT_RDWR)

    def queue_remaining(self) -> int:
        return len(self.pending) + (1 if self.running else 0)

    # -- validation (execution.py's validate_prompt / validate_inputs) ----------------------------

    def validate(self, prompt: Any) -> tuple[list[str], dict[str, Any]] | JSONResponse:
        """(output node ids, {}) of a valid workflow, or ComfyUI's 400 answer."""
        if not isinstance(prompt, dict):
            return _refusal({"type": "invalid_prompt", "message": "Invalid prompt", "details": "not an object"})
        for node_id, node in prompt.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type is None:
                return _refusal({"type": "invalid_prompt", "details": f"Node ID '#{node_id}'",
                                 "message": "Cannot execute because a node is missing the class_type property."})
            if class_type not in NODES:
                return _refusal({"type": "invalid_prompt", "details": f"Node ID '#{node_id}'",
                                 "message": f"Cannot execute because node {class_type} does not exist."})
        outputs = sorted((n for n, node in prompt.items() if node["class_type"] in OUTPUT_NODES), key=int)
        if not outputs:
            return _refusal({"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": ""})
        errors: dict[str, Any] = {}
        for node_id, node in prompt.items():
            node_errors = self._node_errors(prompt, node)
            if node_errors:
                errors[node_id] = {"errors": node_errors, "dependent_outputs": outputs,
                                   "class_type": node["class_type"]}
        if errors:
            return _refusal({"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed "
                             "validation", "details": ""}, errors)
        return outputs, {}

    def _node_errors(self, prompt: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
        spec, _ = NODES[node["class_type"]]
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            inputs = {}
        errors = []

        def error(kind: str, message: str, details: str) -> None:
            errors.append({"type": kind, "message": message, "details": details, "extra_info": {}})

        for name, kind in spec.items():
            if name not in inputs:
                error("required_input_missing", "Required input is missing", name)
                continue
            value = inputs[name]
            if isinstance(kind, str) and kind.isupper() and kind not in (INT, FLOAT, STRING):  # a link
                if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)):
                    error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                          name)
                    continue
                source = prompt.get(str(value[0]))
                if source is None:
                    error("bad_linked_input", "Linked node does not exist", f"{name}: node {value[0]}")
                    continue
                produced = NODES[source["class_type"]][1]
                received = produced[value[1]] if 0 <= value[1] < len(produced) else "(none)"
                if received != kind:
                    error("return_type_mismatch", "Return type mismatch between linked nodes",
                          f"{name}, received_type({received}) mismatch input_type({kind})")
                continue
            if isinstance(value, list):
                error("invalid_input_type", f"Expected a value for {name}, got a link", name)
                continue
            if kind in (INT, FLOAT):
                ok = isinstance(value, int) and not isinstance(value, bool) if kind == INT else (
                    isinstance(value, (int, float)) and not isinstance(value, bool))
                if not ok:
                    error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                          f"{name}, {value}")
                    continue
                low, high = RANGES.get(name, (-1e18, 1e18))
                if value < low:
                    error("value_smaller_than_min", f"Value {value} smaller than min of {low}", name)
                if value > high:
                    error("value_bigger_than_max", f"Value {value} bigger than max of {high}", name)
                if name in ("width", "height") and value % 8:
                    error("value_not_multiple", f"Value {value} is not a multiple of 8", name)
            elif kind == STRING:
                if not isinstance(value, str):
                    error("invalid_input_type", "Failed to convert an input value to a STRING value", name)
            elif kind == "uploads":
                if value not in self.uploads:
                    error("custom_validation_failed", "Custom validation failed for node",
                          f"image - Invalid image file: {value}")
            else:
                choices = {"checkpoints": [c for c in self.checkpoints if c not in self.gone_checkpoints],
                           "controlnets": list(self.controlnets)}.get(kind, kind)
                if value not in choices:
                    error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {list(choices)}")
        return errors

    # -- execution ---------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self.pending and not self._stop:
                    self._lock.wait()
                if self._stop:
                    return
                self.running = self.pending.pop(0)
                self._interrupt.clear()
            _, prompt_id, prompt, extra, outputs = self.running
            try:
                self._execute(prompt_id, prompt, extra.get("client_id"), outputs)
            finally:
                with self._lock:
                    self.running = None

    def _execute(self, prompt_id: str, prompt: dict[str, Any], client_id: str | None, outputs: list[str]) -> None:
        messages: list[list[Any]] = []

        def message(kind: str, data: dict[str, Any], keep: bool = True) -> None:
            data = {**data, "prompt_id": prompt_id}
            if keep:
                messages.append([kind, {**data, "timestamp": int(time.time() * 1000)}])
            self.send(client_id, {"type": kind, "data": data})

        message("execution_start", {})
        message("execution_cached", {"nodes": []})
        values: dict[str, Any] = {}
        ui: dict[str, Any] = {}
        status = "success"
        try:
            for node_id in outputs:
                self._evaluate(prompt, node_id, values, ui, lambda kind, data: message(kind, data, keep=False))
            message("execution_success", {})
        except Interrupted as exc:
            status = "error"
            message("execution_interrupted", {"node_id": exc.args[0], "node_type": "KSampler", "executed": []})
        except ExecutionFailed as exc:
            status = "error"
            node_id = exc.args[0]
            message("execution_error", {"node_id": node_id, "node_type": prompt[node_id]["class_type"],
                                        "executed": [], "exception_message": "CUDA out of memory (simulated)\n",
                                        "exception_type": "torch.OutOfMemoryError", "traceback": [],
                                        "current_inputs": {}, "current_outputs": {}})
        with self._lock:
            self.history[prompt_id] = {
                "prompt": [0, prompt_id, prompt, {"client_id": client_id}, outputs],
                "outputs": ui if status == "success" else {},
                "status": {"status_str": status, "completed": status == "success", "messages": messages},
                "meta": {},
            }
        # main.py's prompt_worker: history first, then "executing: null" to the client that queued it
        self.send(client_id, {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}})

    def _evaluate(self, prompt, node_id: str, values: dict[str, Any], ui: dict[str, Any], message) -> Any:
        if node_id in values:
            return values[node_id]
        node = prompt[node_id]
        kind, inputs = node["class_type"], dict(node["inputs"])
        for name, value in inputs.items():
            if isinstance(value, list):
                inputs[name] = self._evaluate(prompt, str(value[0]), values, ui, message)[value[1]]
        message("executing", {"node": node_id, "display_node": node_id})
        if kind == self.fail_class:
            raise ExecutionFailed(node_id)
        if kind == "CheckpointLoaderSimple":
            out = ("model", "clip", "vae")
        elif kind == "CLIPTextEncode":
            out = ({"depth": False},)
        elif kind == "ControlNetApplyAdvanced":
            out = ({"depth": True}, {"depth": True})
        elif kind == "ControlNetLoader":
            out = ("control_net",)
        elif kind == "LoadImage":
            pixels, _ = decode_png(self.uploads[inputs["image"]])
            out = (pixels, None)
        elif kind == "ImageScale":
            image = inputs["image"]
            ys = np.arange(inputs["height"]) * image.shape[0] // inputs["height"]
            xs = np.arange(inputs["width"]) * image.shape[1] // inputs["width"]
            out = (image[ys][:, xs],)
        elif kind == "ImageToMask":
            out = (inputs["image"][:, :, {"red": 0, "green": 1, "blue": 2}[inputs["channel"]]],)
        elif kind == "EmptyLatentImage":
            out = ({"width": inputs["width"], "height": inputs["height"], "batch": inputs["batch_size"],
                    "mode": "txt2img"},)
        elif kind == "VAEEncode":
            height, width = inputs["pixels"].shape[:2]
            out = ({"width": width, "height": height, "batch": 1, "mode": "img2img"},)
        elif kind == "SetLatentNoiseMask":
            out = ({**inputs["samples"], "mode": "inpaint", "mask": inputs["mask"]},)
        elif kind == "RepeatLatentBatch":
            out = ({**inputs["samples"], "batch": inputs["samples"]["batch"] * inputs["amount"]},)
        elif kind == "KSampler":
            self.sampling.set()
            try:
                for step in range(1, inputs["steps"] + 1):
                    if self._interrupt.is_set():
                        raise Interrupted(node_id)
                    time.sleep(self.step_delay)
                    message("progress", {"value": step, "max": inputs["steps"], "node": node_id})
                    self.send(self.running[3].get("client_id"), self._preview(step))
            finally:
                self.sampling.clear()
            out = ({**inputs["latent_image"], "seed": inputs["seed"], "depth": inputs["positive"]["depth"]},)
        elif kind == "VAEDecode":
            latent = inputs["samples"]
            shape = (latent["height"], latent["width"], 3)
            out = ([np.full(shape, colour(latent["seed"], latent["depth"], latent["mode"], k), np.uint8)
                    for k in range(latent["batch"])],)
        elif kind in OUTPUT_NODES:
            saved = []
            for image in inputs["images"]:
                kind_ = "output" if kind == "SaveImage" else "temp"
                prefix = inputs.get("filename_prefix", "ComfyUI_temp")
                name = f"{prefix}_{next(self._saved):05}_.png"
                self.files[(kind_, "", name)] = encode_png(image, {"prompt": json.dumps(prompt)})
                saved.append({"filename": name, "subfolder": "", "type": kind_})
            ui[node_id] = {"images": saved}
            out = ()
        else:
            raise AssertionError(kind)
        values[node_id] = out
        return out

    def _preview(self, step: int) -> bytes:
        if self.preview_format == "PNG":
            return struct.pack(">II", 1, 2) + encode_png(np.full((8, 8, 3), step * 10 % 256, np.uint8))
        return struct.pack(">II", 1, 1) + JPEG

    # -- routes ----------------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()
        fake = self

        @app.middleware("http")
        async def proxy_gate(request: Request, call_next):
            import asyncio

            await asyncio.sleep(fake.delays.get(request.url.path, 0.0))
            if fake.auth is not None and not fake.authorised(request.headers.get("authorization")):
                return Response("401 Unauthorized", status_code=401, headers={"WWW-Authenticate": "Basic"})
            return await call_next(request)

        @app.post("/prompt")
        async def post_prompt(request: Request) -> JSONResponse:
            body = await request.json()
            checked = fake.validate(body.get("prompt") if isinstance(body, dict) else None)
            if isinstance(checked, JSONResponse):
                return checked
            outputs, _ = checked
            prompt_id = str(uuid.uuid4())
            with fake._lock:
                number = next(fake._numbers)
                fake.prompts.append(body)
                fake.pending.append([number, prompt_id, body["prompt"], {"client_id": body.get("client_id")},
                                     outputs])
                fake._lock.notify_all()
            return JSONResponse({"prompt_id": prompt_id, "number": number, "node_errors": {}})

        @app.get("/queue")
        def get_queue() -> dict[str, Any]:
            with fake._lock:
                return {"queue_running": [fake.running] if fake.running else [], "queue_pending": list(fake.pending)}

        @app.post("/queue")
        def post_queue(body: dict[str, Any]) -> Response:
            fake.queue_posts.append(body)
            with fake._lock:
                if body.get("clear"):
                    fake.pending.clear()
                for prompt_id in body.get("delete") or []:
                    fake.pending = [item for item in fake.pending if item[1] != prompt_id]
            return Response(status_code=200)

        @app.post("/interrupt")
        async def interrupt(request: Request) -> Response:
            raw = await request.body()
            body = json.loads(raw) if raw else None
            fake.interrupts.append(body)
            wanted = body.get("prompt_id") if isinstance(body, dict) else None
            running = fake.running
            if running and (wanted is None or wanted == running[1]):
                fake._interrupt.set()
            return Response(status_code=200)

        @app.get("/history/{prompt_id}")
        def history(prompt_id: str) -> dict[str, Any]:
            entry = fake.history.get(prompt_id)
            return {prompt_id: entry} if entry else {}

        @app.get("/view")
        def view(filename: str, subfolder: str = "", type: str = "output") -> Response:
            data = fake.files.get((type, subfolder, filename))
            if data is None:
                return Response(status_code=404)
            return Response(data, media_type="image/png")

        @app.post("/upload/image")
        async def upload(request: Request) -> JSONResponse:
            form = _multipart(request.headers.get("content-type", ""), await request.body())
            if "image" not in form or not isinstance(form["image"], tuple):
                return JSONResponse({"error": "no image"}, status_code=400)
            filename, data = form["image"]
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            fake.upload_forms.append(fields)
            subfolder = fields.get("subfolder", "")
            name = filename
            key = f"{subfolder}/{name}" if subfolder else name
            if key in fake.uploads and fields.get("overwrite") != "true":
                name = f"{filename.rsplit('.', 1)[0]} (1).png"
                key = f"{subfolder}/{name}" if subfolder else name
            fake.uploads[key] = data
            return JSONResponse({"name": name, "subfolder": subfolder, "type": fields.get("type", "input")})

        @app.get("/object_info/{node_class}")
        def object_info(node_class: str) -> dict[str, Any]:
            if node_class not in NODES:
                return {}
            return {node_class: fake.node_info(node_class)}

        @app.get("/system_stats")
        def system_stats() -> dict[str, Any]:
            return {"system": {"os": "posix", "python_version": "3.12", "embedded_python": False,
                               "comfyui_version": "0.3.40", "pytorch_version": "2.7.0", "argv": ["main.py"],
                               "ram_total": 1 << 36, "ram_free": 1 << 35},
                    "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda",
                                 "index": 0, "vram_total": 1 << 34, "vram_free": 1 << 33,
                                 "torch_vram_total": 0, "torch_vram_free": 0}]}

        return app

    def node_info(self, node_class: str) -> dict[str, Any]:
        spec, outputs = NODES[node_class]
        required = {}
        for name, kind in spec.items():
            if kind == "checkpoints":
                required[name] = [list(self.checkpoints), {"tooltip": "The name of the checkpoint to load."}]
            elif kind == "controlnets":  # the newer combo form
                required[name] = ["COMBO", {"options": list(self.controlnets), "multiselect": False}]
            elif kind == "uploads":
                required[name] = [sorted(self.uploads), {"image_upload": True}]
            elif isinstance(kind, tuple):
                required[name] = [list(kind), {}]
            elif kind in (INT, FLOAT):
                low, high = RANGES.get(name, (0, 1 << 31))
                required[name] = [kind, {"default": low, "min": low, "max": high}]
            else:
                required[name] = [kind, {}]
        return {"input": {"required": required, "optional": {}}, "input_order": {"required": list(spec)},
                "output": list(outputs), "output_is_list": [False] * len(outputs), "output_name": list(outputs),
                "name": node_class, "display_name": node_class, "description": "", "python_module": "nodes",
                "category": "fake", "output_node": node_class in OUTPUT_NODES}

    def authorised(self, header: str | None) -> bool:
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            return tuple(base64.b64decode(value).decode().partition(":")[::2]) == self.auth
        except (ValueError, UnicodeDecodeError):
            return False

    # -- the WebSocket (server.py's websocket_handler) --------------------------------------------

    def serve_websocket(self, conn: socket.socket, target: str, headers: dict[str, str]) -> None:
        if not self.websocket:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if self.auth is not None and not self.authorised(headers.get("authorization")):
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + _GUID).encode()).digest()).decode()
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        client_id = (parse_qs(urlsplit(target).query).get("clientId") or [uuid.uuid4().hex])[0]
        peer = _Peer(conn)
        self.sockets.setdefault(client_id, []).append(peer)
        try:
            status = {"type": "status", "data": {"status": {"exec_info": {"queue_remaining":
                                                                        self.queue_remaining()}},
                                                 "sid": client_id}}
            peer.send(0x1, json.dumps(status).encode())
            peer.send(0x9, b"are you there")
            # A message in three fragments with a ping between them, as a proxy may cut one (ComfyUI does not).
            text = json.dumps({"type": "crystools.monitor", "data": {"cpu": 3.5, "pad": "x" * 300}}).encode()
            peer.send(0x1, text[:100], fin=False)
            peer.send(0x9, b"mid")
            peer.send(0x0, text[100:200], fin=False)
            peer.send(0x0, text[200:], fin=True)
            reader = conn.makefile("rb")
            while True:
                frame = _read_frame(reader)
                if frame is None:
                    break
                opcode, payload, masked = frame
                self.ws_log.append(("masked", masked))
                if opcode == 0xA:
                    self.ws_log.append(("pong", payload))
                elif opcode == 0x8:
                    self.ws_log.append(("close", payload))
                    peer.send(0x8, payload[:2])
                    break
                elif opcode in (0x1, 0x2):
                    self.ws_log.append(("message", payload))
        except OSError:
            pass
        finally:
            self.sockets[client_id].remove(peer)


class _Peer:
    """One WebSocket connection, server side: unmasked frames, one writer at a time."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.lock = conn, threading.Lock()

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        size = len(payload)
        header = bytes([(0x80 if fin else 0) | opcode])
        if size < 126:
            header += bytes([size])
        elif size < 65536:
            header += bytes([126]) + struct.pack(">H", size)
        else:
            header += bytes([127]) + struct.pack(">Q", size)
        try:
            with self.lock:
                self.conn.sendall(header + payload)
        except OSError:
            pass


def _read_frame(reader) -> tuple[int, bytes, bool] | None:
    head = reader.read(2)
    if len(head) < 2:
        return None
    opcode, masked, size = head[0] & 0x0F, bool(head[1] & 0x80), head[1] & 0x7F
    if size == 126:
        size = struct.unpack(">H", reader.read(2))[0]
    elif size == 127:
        size = struct.unpack(">Q", reader.read(8))[0]
    mask = reader.read(4) if masked else b"\0\0\0\0"
    payload = reader.read(size)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(payload)), masked


class _FrontDoor:
    """The fake's listening socket: WebSocket upgrades on /ws are served here, everything else is piped to
    the FastAPI app under uvicorn (see the module docstring for why)."""

    def __init__(self, fake: FakeComfyUI, inner_port: int) -> None:
        self.fake, self.inner_port = fake, inner_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._connections: list[socket.socket] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self._connections.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    conn.close()
                    return
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            request_line, *lines = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
            target = request_line.split(" ")[1]
            if urlsplit(target).path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                self.fake.serve_websocket(conn, target, headers)
                conn.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.inner_port))
            self._connections.append(upstream)
            upstream.sendall(data)
            threading.Thread(target=_pipe, args=(upstream, conn), daemon=True).start()
            _pipe(conn, upstream)
        except OSError:
            with contextlib.suppress(OSError):
                conn.close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while True:
            chunk = source.recv(65536)
            if not chunk:
                break
            target.sendall(chunk)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def _refusal(error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": {**error, "extra_info": {}}, "node_errors": node_errors or {}}, status_code=400)


def _multipart(content_type: str, body: bytes) -> dict[str, str | tuple[str, bytes]]:
    """The fields of a multipart/form-data body (python-multipart is not a dependency here)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
    fields: dict[str, str | tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        fields[name] = (filename, data) if filename is not None else data.decode("utf-8")
    return fields
