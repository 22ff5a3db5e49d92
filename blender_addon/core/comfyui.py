"""A client of ComfyUI as the artist runs it: workflows built here from core nodes only, so no custom node has
to be installed on the server.

A job is one API-format workflow (node id -> {"class_type", "inputs"}) posted to /prompt. Images go up first
through /upload/image. Progress comes over ComfyUI's /ws WebSocket (a small client below, since Blender's
Python has no WebSocket library); where /ws cannot be opened the job is followed by polling /history, without
step progress. Results are the SaveImage outputs listed in /history, fetched through /view.

What ComfyUI's core nodes cannot do is refused before the job starts (seamless tiling: core has no circular
padding), or done in part and said in `client.warnings` (depth without a depth ControlNet model).

Previews: ComfyUI sends its sampling previews as binary frames of JPEG (or PNG) bytes. Blender's Python has no
JPEG decoder, so JPEG previews are dropped and only PNG ones are shown; the step progress comes either way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .a1111 import batch_items, item_image
from .clients import BackendError, check_url
from .png import SIGNATURE
from .protocol import Health, JobIn, JobOut

FAMILY = "comfyui"
UPLOAD_FOLDER = "scene_diffusion"  # subfolder of ComfyUI/input that uploads go to
MAX_SEED = 2**32 - 1
# Our sampler names -> (ComfyUI sampler_name, scheduler). "" is ComfyUI's own default workflow's choice.
SAMPLERS = {
    "": ("euler", "normal"),
    "euler": ("euler", "normal"),
    "euler_a": ("euler_ancestral", "normal"),
    "dpmpp_2m": ("dpmpp_2m", "normal"),
    "dpmpp_2m_karras": ("dpmpp_2m", "karras"),
    "dpmpp_sde": ("dpmpp_sde", "normal"),
    "ddim": ("ddim", "ddim_uniform"),
    "unipc": ("uni_pc", "normal"),
    "lms": ("lms", "normal"),
    "heun": ("heun", "normal"),
}
_KEPT_JOBS = 32
# Binary WebSocket events (ComfyUI's BinaryEventTypes) and preview image formats.
_PREVIEW_IMAGE = 1
_PREVIEW_PNG = 2


# -- a small WebSocket client (RFC 6455) -------------------------------------------------------------------------


class WebSocketError(Exception):
    pass


OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_MESSAGE = 64 << 20


class WebSocket:
    """A WebSocket client over a plain (or TLS) socket: the handshake, masked frames out, text and binary
    messages in (fragmented or not), pings answered with pongs, the close handshake. No extensions.

    `recv()` raises TimeoutError when nothing complete arrives within the socket's timeout; the bytes of a
    half-received frame are kept for the next call.
    """

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buffer = bytearray(buffered)
        self._send_lock = threading.Lock()
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self.closed = False
        self.close_code: int | None = None

    @classmethod
    def connect(cls, url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> WebSocket:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise WebSocketError(f"not a ws:// or wss:// URL: {url}")
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        try:
            sock = socket.create_connection((parts.hostname, port), timeout=timeout)
            if parts.scheme == "wss":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        except OSError as exc:
            raise WebSocketError(f"cannot connect: {exc}") from None
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        if ":" in (parts.hostname or "") and parts.port is not None:
            host = f"[{parts.hostname}]:{parts.port}"
        lines = [f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1", f"Host: {host}",
                 "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise WebSocketError("the server closed the connection during the handshake")
                head += chunk
                if len(head) > 65536:
                    raise WebSocketError("handshake answer too long")
        except OSError as exc:
            sock.close()
            raise WebSocketError(f"handshake failed: {exc}") from None
        except WebSocketError:
            sock.close()
            raise
        head, _, rest = head.partition(b"\r\n\r\n")
        status, *header_lines = head.decode("latin-1").split("\r\n")
        fields = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        code = status.split(" ")[1] if status.count(" ") else ""
        expected = base64.b64encode(hashlib.sha1((key + _GUID).encode("ascii")).digest()).decode("ascii")
        if code != "101":
            sock.close()
            raise WebSocketError(f"the server answered {status.partition(' ')[2] or status} instead of switching "
                                 "to WebSocket")
        if fields.get("sec-websocket-accept") != expected:
            sock.close()
            raise WebSocketError("the server's Sec-WebSocket-Accept does not match the key")
        return cls(sock, rest)

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        """One final frame, masked as a client must."""
        header = bytearray([0x80 | opcode])
        size = len(payload)
        if size < 126:
            header.append(0x80 | size)
        elif size < 1 << 16:
            header.append(0x80 | 126)
            header += struct.pack(">H", size)
        else:
            header.append(0x80 | 127)
            header += struct.pack(">Q", size)
        mask = os.urandom(4)
        header += mask
        with self._send_lock:
            self.sock.sendall(bytes(header) + _masked(payload, mask))

    def send_text(self, text: str) -> None:
        self._send_frame(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> None:
        self._send_frame(OP_BINARY, data)

    def ping(self, data: bytes = b"") -> None:
        self._send_frame(OP_PING, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once) and close the socket; does not wait for the server's answer."""
        if not self.closed:
            self.closed = True
            try:
                self._send_frame(OP_CLOSE, struct.pack(">H", code) + reason.encode("utf-8")[:120])
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass

    def _frame(self) -> tuple[bool, int, bytes] | None:
        """(fin, opcode, payload) of a whole frame at the start of the buffer (consumed), or None."""
        buf = self._buffer
        if len(buf) < 2:
            return None
        fin, rsv, opcode = buf[0] & 0x80, buf[0] & 0x70, buf[0] & 0x0F
        masked, size, pos = buf[1] & 0x80, buf[1] & 0x7F, 2
        if rsv:
            raise WebSocketError("the server set reserved frame bits (no extension was agreed)")
        if size == 126:
            if len(buf) < 4:
                return None
            size, pos = struct.unpack(">H", buf[2:4])[0], 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size, pos = struct.unpack(">Q", buf[2:10])[0], 10
        if size > _MAX_MESSAGE:
            raise WebSocketError(f"a frame of {size} bytes is over the {_MAX_MESSAGE} byte limit")
        mask = b""
        if masked:  # servers must not mask, but undoing it costs nothing
            if len(buf) < pos + 4:
                return None
            mask, pos = bytes(buf[pos:pos + 4]), pos + 4
        if len(buf) < pos + size:
            return None
        payload = bytes(buf[pos:pos + size])
        del buf[:pos + size]
        return bool(fin), opcode, _masked(payload, mask) if mask else payload

    def recv(self) -> tuple[int, bytes] | None:
        """The next message as (OP_TEXT or OP_BINARY, payload); None once the connection is closed."""
        while True:
            frame = self._frame()
            if frame is None:
                if self.closed:
                    return None
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError:
                    raise TimeoutError("no WebSocket message in time") from None
                except OSError:
                    self.closed = True
                    return None
                if not chunk:
                    self.closed = True
                    return None
                self._buffer += chunk
                continue
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self._send_frame(OP_PONG, payload)
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close(self.close_code if self.close_code not in (1005, 1006) else 1000)
                return None
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._fragments:
                    raise WebSocketError("a new message began inside a fragmented one")
                if fin:
                    return opcode, payload
                self._fragments, self._fragment_op = [payload], opcode
            elif opcode == OP_CONTINUATION:
                if not self._fragments:
                    raise WebSocketError("a continuation frame without a message to continue")
                self._fragments.append(payload)
                if sum(len(f) for f in self._fragments) > _MAX_MESSAGE:
                    raise WebSocketError("a message over the size limit")
                if fin:
                    message, self._fragments = b"".join(self._fragments), []
                    return self._fragment_op, message
            else:
                raise WebSocketError(f"unknown WebSocket opcode {opcode}")


def _masked(data: bytes, mask: bytes) -> bytes:
    """XOR with the repeated 4-byte mask, done on whole integers rather than byte by byte."""
    if not data:
        return data
    repeated = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


# -- workflows ---------------------------------------------------------------------------------------------------


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header, without decoding it."""
    if not png.startswith(SIGNATURE) or len(png) < 24:
        raise BackendError("an input image is not a PNG")
    return struct.unpack(">II", png[16:24])


@dataclass
class Workflow:
    """An API-format workflow under construction; `add` returns the new node's id."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, class_type: str, **inputs: Any) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id


def build_workflow(job: JobIn, *, checkpoint: str, sampler: tuple[str, str], seed: int,
                   images: Callable[[bytes], str], controlnet: str | None, save: bool = True,
                   prefix: str = "scene_diffusion") -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(workflow, ids of its output nodes in result order): one branch per view, sharing model and prompts.

    `images(png)` is the LoadImage name of an uploaded PNG. Inpainting keeps the init image under the noise
    mask (VAEEncode + SetLatentNoiseMask) and so honours `strength`, as A1111's "original" fill does.
    """
    flow = Workflow()
    ckpt = flow.add("CheckpointLoaderSimple", ckpt_name=checkpoint)
    model, clip, vae = [ckpt, 0], [ckpt, 1], [ckpt, 2]
    positive = [flow.add("CLIPTextEncode", text=job.prompt, clip=clip), 0]
    negative = [flow.add("CLIPTextEncode", text=job.negative_prompt, clip=clip), 0]
    control = flow.add("ControlNetLoader", control_net_name=controlnet) if job.depths and controlnet else None

    def load(png: bytes, nearest: bool = False) -> list:
        node = [flow.add("LoadImage", image=images(png)), 0]
        if png_size(png) != (job.width, job.height):
            node = [flow.add("ImageScale", image=node, upscale_method="nearest-exact" if nearest else "bilinear",
                             width=job.width, height=job.height, crop="disabled"), 0]
        return node

    outputs = []
    for k in range(batch_items(job)):
        init, mask, depth = (item_image(images_, k) for images_ in (job.init_images, job.masks, job.depths))
        pos, neg = positive, negative
        if depth is not None and control is not None:
            applied = flow.add("ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=[control, 0],
                               image=load(depth), strength=job.controlnet_scale, start_percent=0.0,
                               end_percent=1.0)
            pos, neg = [applied, 0], [applied, 1]
        if init is not None:
            latent = [flow.add("VAEEncode", pixels=load(init), vae=vae), 0]
            if mask is not None:
                as_mask = flow.add("ImageToMask", image=load(mask, nearest=True), channel="red")
                latent = [flow.add("SetLatentNoiseMask", samples=latent, mask=[as_mask, 0]), 0]
            if job.count > 1:
                latent = [flow.add("RepeatLatentBatch", samples=latent, amount=job.count), 0]
            denoise = job.strength
        else:
            latent = [flow.add("EmptyLatentImage", width=job.width, height=job.height, batch_size=job.count), 0]
            denoise = 1.0
        sampled = flow.add("KSampler", model=model, seed=(seed + k * job.count) % (MAX_SEED + 1),
                           steps=job.steps, cfg=job.guidance, sampler_name=sampler[0], scheduler=sampler[1],
                           positive=pos, negative=neg, latent_image=latent, denoise=denoise)
        decoded = [flow.add("VAEDecode", samples=[sampled, 0], vae=vae), 0]
        if save:
            outputs.append(flow.add("SaveImage", images=decoded, filename_prefix=prefix))
        else:
            outputs.append(flow.add("PreviewImage", images=decoded))
    return flow.nodes, outputs


def combo_options(spec: Any) -> list[str]:
    """The choices of a combo input in /object_info: `[[choices], {...}]`, or `["COMBO", {"options": [...]}]`."""
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return [str(c) for c in spec[0]]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            return [str(c) for c in spec[1].get("options") or []]
    return []


# -- the client --------------------------------------------------------------------------------------------------


@dataclass
class _Job:
    id: str  # ComfyUI's prompt_id
    mode: str
    steps: int  # per branch
    branches: int
    outputs: list[str]
    samplers: set[str]  # KSampler node ids: the nodes whose progress is the job's
    seeds: list[int]
    warnings: list[str]
    started: float = field(default_factory=time.monotonic)
    state: str = "queued"
    queue_position: int = 0
    node_steps: dict[str, int] = field(default_factory=dict)
    preview: bytes | None = None
    error: str | None = None
    results: list[dict[str, str]] = field(default_factory=list)  # {filename, subfolder, type}
    ws: WebSocket | None = None
    cancelled: bool = False
    missing: int = 0  # polls in a row that found the prompt neither queued, running nor in history
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def step(self) -> int:
        return min(sum(self.node_steps.values()), self.total)

    @property
    def total(self) -> int:
        return self.steps * self.branches if self.node_steps else 0

    def out(self) -> JobOut:
        return JobOut(id=self.id, state=self.state, mode=self.mode, step=self.step, total=self.total,
                      queue_position=self.queue_position, images=len(self.results) if self.state == "done" else 0,
                      preview=self.preview if self.state == "running" else None, error=self.error,
                      seeds=tuple(self.seeds))


class ComfyUIClient:
    """The Backend protocol on a ComfyUI server, through core nodes only.

    ComfyUI has no authentication of its own; behind a proxy that has, give `username`/`password` (HTTP
    Basic) or a `token` (sent as a Bearer token). `timeout` bounds every call; `job_timeout` a whole job.
    `websocket=False` follows jobs by polling /history (no step progress). `save_outputs` keeps the results
    in ComfyUI's output folder (SaveImage, as artists expect of ComfyUI); False uses PreviewImage (temp files).
    """

    seamless_axes: tuple[str, ...] = ()

    def __init__(self, url: str, username: str = "", password: str = "", token: str = "", timeout: float = 10.0,
                 job_timeout: float = 600.0, poll_interval: float = 0.5, websocket: bool = True,
                 save_outputs: bool = True, filename_prefix: str = "scene_diffusion") -> None:
        import requests

        self.url = check_url(url)
        self.timeout, self.job_timeout, self.poll_interval = timeout, job_timeout, poll_interval
        self.websocket, self.save_outputs, self.filename_prefix = websocket, save_outputs, filename_prefix
        self._headers: dict[str, str] = {}
        if username or password:
            pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {pair}"
        elif token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session = requests.Session()
        self._session.headers.update(self._headers)
        self._session_lock = threading.Lock()  # requests' Session is shared by the job threads and the caller
        self.warnings: list[str] = []
        self._jobs: dict[str, _Job] = {}
        self._object_info: dict[str, Any] = {}

    # -- HTTP ------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, timeout: float | None = None, **kwargs):
        import requests

        timeout = timeout or self.timeout
        try:
            with self._session_lock:
                response = self._session.request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.exceptions.Timeout:  # before ConnectionError: a connect timeout is both
            raise self._timeout_error(path, timeout) from None
        except requests.exceptions.ConnectionError:
            raise BackendError(f"ComfyUI at {self.url} refused the connection: is ComfyUI running, on that port "
                               "(8188 by default), and started with --listen if it runs on another machine?"
                               ) from None
        if response.status_code in (401, 403):
            raise BackendError(f"ComfyUI at {self.url} (or the proxy in front of it) refused the credentials "
                               f"(HTTP {response.status_code}): check the user name, password or token in the "
                               "add-on preferences")
        if response.status_code == 404 and path.split("?")[0] in ("/system_stats", "/object_info/KSampler",
                                                                  "/object_info/CheckpointLoaderSimple"):
            raise BackendError(f"{self.url} answered, but it is not ComfyUI (404 on {path}): check the URL and port "
                               "(ComfyUI's default is 8188), or pick the backend type that server is")
        if response.status_code == 400 and path == "/prompt":
            raise BackendError(_prompt_error(response))
        if response.status_code >= 400:
            text = (response.text or response.reason or "").strip()[:300]
            raise BackendError(f"ComfyUI: {text} (HTTP {response.status_code} on {path})")
        return response

    def _timeout_error(self, path: str, timeout) -> BackendError:
        return BackendError(f"ComfyUI at {self.url} did not answer {path} within {timeout:g} s: is the host "
                            "reachable, and ComfyUI not stuck?")

    def _json(self, response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"{self.url} answered {response.request.path_url} with something other than JSON: "
                               "is it ComfyUI?") from None

    def _node_info(self, node: str, refresh: bool = False) -> dict[str, Any]:
        if refresh or node not in self._object_info:
            body = self._json(self._call("GET", f"/object_info/{node}"))
            info = body.get(node) if isinstance(body, dict) else None
            if not isinstance(info, dict):
                raise BackendError(f"ComfyUI at {self.url} has no {node} node: is it ComfyUI, and a recent one?")
            self._object_info[node] = info
        return self._object_info[node]

    def _choices(self, node: str, name: str, refresh: bool = False) -> list[str]:
        inputs = self._node_info(node, refresh).get("input") or {}
        return combo_options((inputs.get("required") or {}).get(name))

    # -- discovery -------------------------------------------------------------------------------

    def health(self) -> Health:
        stats = self._json(self._call("GET", "/system_stats"))
        if not isinstance(stats, dict) or "devices" not in stats:
            raise BackendError(f"{self.url} answered /system_stats, but not as ComfyUI does")
        checkpoints = self.models()
        devices = stats.get("devices") or [{}]
        system = stats.get("system") or {}
        return Health(version=str(system.get("comfyui_version") or ""), model=checkpoints[0] if checkpoints else "",
                      family=FAMILY, device=str(devices[0].get("name") or ""), dtype="",
                      modes=self._modes(refresh=True))

    def models(self) -> list[str]:
        """The checkpoints in ComfyUI/models/checkpoints, as CheckpointLoaderSimple offers them."""
        return self._choices("CheckpointLoaderSimple", "ckpt_name", refresh=True)

    def capabilities(self) -> set[str]:
        """txt2img, img2img, inpaint, and depth when a depth ControlNet model is there; never seamless."""
        return set(self._modes())

    def _modes(self, refresh: bool = False) -> tuple[str, ...]:
        return ("txt2img", "img2img", "inpaint") + (("depth",) if self._depth_model(refresh) else ())

    def _depth_model(self, refresh: bool = False) -> str | None:
        names = self._choices("ControlNetLoader", "control_net_name", refresh)
        return next((n for n in names if "depth" in n.lower()), None)

    # -- jobs ------------------------------------------------------------------------------------

    def submit(self, job: JobIn) -> str:
        if job.seamless:
            raise BackendError("ComfyUI (core nodes) cannot tile seamlessly: it has no circular padding node. "
                               "Turn seamless off, or use Automatic1111/Forge (both axes) or the Scene Diffusion "
                               "server")
        if job.sampler not in SAMPLERS:
            raise BackendError(f"sampler '{job.sampler}' is not available on ComfyUI: choose one of "
                               f"{', '.join(s for s in SAMPLERS if s)} (or leave it empty for euler)")
        if job.masks and not job.init_images:
            raise BackendError("a mask needs an init image to inpaint into")
        items = batch_items(job)
        checkpoints = self.models()
        if not checkpoints:
            raise BackendError(f"ComfyUI at {self.url} has no checkpoint: put a model (.safetensors) into "
                               "ComfyUI/models/checkpoints and refresh or restart ComfyUI")
        checkpoint = job.model or checkpoints[0]
        if checkpoint not in checkpoints:
            raise BackendError(f"ComfyUI at {self.url} has no checkpoint '{checkpoint}'; it has: "
                               f"{', '.join(checkpoints)} (files in ComfyUI/models/checkpoints)")
        sampler = SAMPLERS[job.sampler]
        samplers = self._choices("KSampler", "sampler_name")
        schedulers = self._choices("KSampler", "scheduler")
        if samplers and sampler[0] not in samplers or schedulers and sampler[1] not in schedulers:
            raise BackendError(f"this ComfyUI has no sampler {sampler[0]} with the {sampler[1]} schedule: choose "
                               "another sampler")
        mode = "inpaint" if job.masks else "img2img" if job.init_images else "txt2img"
        warnings = []
        controlnet = None
        if job.depths:
            controlnet = self._depth_model(refresh=True)
            if controlnet is None:
                warnings.append(f"ComfyUI at {self.url} has no depth ControlNet model (none in "
                                "ComfyUI/models/controlnet has 'depth' in its name; put one there, such as "
                                f"control_v11f1p_sd15_depth.pth), so this job ran as {mode} without depth")
            else:
                mode = "depth"
        seed = job.seed if job.seed is not None and job.seed >= 0 else random.randint(0, MAX_SEED)
        uploaded: dict[bytes, str] = {}

        def upload(png: bytes) -> str:
            if png not in uploaded:
                uploaded[png] = self._upload(png)
            return uploaded[png]

        workflow, outputs = build_workflow(job, checkpoint=checkpoint, sampler=sampler, seed=seed, images=upload,
                                           controlnet=controlnet, save=self.save_outputs,
                                           prefix=self.filename_prefix)
        client_id = uuid.uuid4().hex
        ws = self._open_websocket(client_id) if self.websocket else None
        try:
            body = self._json(self._call("POST", "/prompt", json={"prompt": workflow, "client_id": client_id}))
        except BaseException:
            if ws is not None:
                ws.close()
            raise
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if not prompt_id:
            if ws is not None:
                ws.close()
            raise BackendError(f"ComfyUI did not queue the workflow: {str(body)[:300]}")
        seeds = [(seed + k * job.count) % (MAX_SEED + 1) for k in range(items) for _ in range(job.count)]
        samplers_ = {node for node, spec in workflow.items() if spec["class_type"] == "KSampler"}
        record = _Job(id=prompt_id, mode=mode, steps=job.steps, branches=items, outputs=outputs,
                      samplers=samplers_, seeds=seeds, warnings=warnings, ws=ws)
        self.warnings.extend(warnings)
        self._jobs[prompt_id] = record
        for old in list(self._jobs)[:-_KEPT_JOBS]:
            if self._jobs[old].finished:
                del self._jobs[old]
        if ws is not None:
            threading.Thread(target=self._listen, args=(record,), name="comfyui-ws", daemon=True).start()
        return prompt_id

    def job_warnings(self, job_id: str) -> list[str]:
        return list(self._find(job_id).warnings)

    def _upload(self, png: bytes) -> str:
        """Upload into ComfyUI/input/scene_diffusion under the content's hash: the same image is stored once, and
        LoadImage's cache (keyed on the file's hash) holds across jobs."""
        name = f"{hashlib.sha256(png).hexdigest()[:32]}.png"
        body = self._json(self._call("POST", "/upload/image", files={"image": (name, png, "image/png")},
                                     data={"overwrite": "true", "subfolder": UPLOAD_FOLDER, "type": "input"}))
        if not isinstance(body, dict) or not body.get("name"):
            raise BackendError(f"ComfyUI did not take the uploaded image: {str(body)[:200]}")
        subfolder = body.get("subfolder") or ""
        return f"{subfolder}/{body['name']}" if subfolder else str(body["name"])

    def _open_websocket(self, client_id: str) -> WebSocket | None:
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = f"{scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}/ws?clientId={client_id}"
        try:
            return WebSocket.connect(url, headers=self._headers, timeout=self.timeout)
        except WebSocketError:
            return None  # followed by polling /history

    # -- following a job over the WebSocket ------------------------------------------------------

    def _listen(self, job: _Job) -> None:
        ws = job.ws
        assert ws is not None
        ws.settimeout(min(1.0, self.timeout))
        try:
            while not job.finished:
                try:
                    message = ws.recv()
                except TimeoutError:
                    if time.monotonic() - job.started > self.job_timeout:
                        break
                    continue
                if message is None:
                    break
                opcode, payload = message
                if opcode == OP_BINARY:
                    self._on_binary(job, payload)
                else:
                    try:
                        event = json.loads(payload)
                    except ValueError:
                        continue
                    if isinstance(event, dict):
                        self._on_event(job, event)
        except (WebSocketError, OSError):
            pass
        finally:
            ws.close()
            with job.changed:
                job.ws = None  # from here on, status() polls /history
                job.changed.notify_all()

    def _on_binary(self, job: _Job, payload: bytes) -> None:
        if len(payload) < 8:
            return
        kind, image_format = struct.unpack(">II", payload[:8])
        image = payload[8:]
        if kind == _PREVIEW_IMAGE and image_format == _PREVIEW_PNG and image.startswith(SIGNATURE):
            with job.changed:
                job.preview = image
                job.changed.notify_all()

    def _on_event(self, job: _Job, event: dict[str, Any]) -> None:
        kind, data = event.get("type"), event.get("data")
        if not isinstance(data, dict) or data.get("prompt_id") not in (None, job.id):
            return
        if kind == "status":
            return
        with job.changed:
            if kind in ("execution_start", "execution_cached") and job.state == "queued":
                job.state = "running"
            elif kind == "progress" and isinstance(data.get("value"), int):
                job.state = "running"
                node = str(data.get("node") or "")
                if not node or node in job.samplers:
                    job.node_steps[node] = min(data["value"], job.steps)
            elif kind == "executing" and data.get("node") is not None:
                job.state = "running"
            elif kind == "execution_error":
                job.state, job.error = "failed", _execution_error(data)
            elif kind == "execution_interrupted":
                job.state, job.error = "cancelled", "cancelled"
            job.changed.notify_all()
        done = kind == "execution_success" or kind == "executing" and data.get("node") is None
        if done and data.get("prompt_id") == job.id and not job.finished:
            self._collect(job)

    def _collect(self, job: _Job) -> None:
        """Read the finished prompt's outputs from /history. ComfyUI writes it before "executing: null" but after
        "execution_success", so it is asked again for a little while."""
        for _ in range(20):
            entry = self._history(job.id)
            if entry is not None:
                self._finish_from_history(job, entry)
                return
            time.sleep(0.1)
        with job.changed:
            job.state, job.error = "failed", "ComfyUI finished the job but its /history has no entry for it"
            job.changed.notify_all()

    # -- following a job by polling ----------------------------------------------------------------

    def _history(self, prompt_id: str) -> dict[str, Any] | None:
        body = self._json(self._call("GET", f"/history/{prompt_id}"))
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry if isinstance(entry, dict) else None

    def _finish_from_history(self, job: _Job, entry: dict[str, Any]) -> None:
        status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
        messages = status.get("messages") or []
        events = {m[0]: m[1] for m in messages if isinstance(m, list) and len(m) == 2 and isinstance(m[1], dict)}
        outputs = entry.get("outputs") or {}
        with job.changed:
            if job.finished:
                return  # the WebSocket said first (an error, an interruption)
            if "execution_interrupted" in events or job.cancelled and status.get("status_str") == "error":
                job.state, job.error = "cancelled", "cancelled"
            elif status.get("status_str") == "error" or "execution_error" in events:
                job.state = "failed"
                job.error = _execution_error(events["execution_error"]) if "execution_error" in events else (
                    "ComfyUI reported an error running the workflow")
            else:
                results = []
                for node in job.outputs:
                    for image in (outputs.get(node) or {}).get("images") or []:
                        if isinstance(image, dict) and image.get("filename"):
                            results.append({"filename": str(image["filename"]),
                                            "subfolder": str(image.get("subfolder") or ""),
                                            "type": str(image.get("type") or "output")})
                if results:
                    job.results, job.state = results, "done"
                else:
                    job.state, job.error = "failed", "ComfyUI finished the workflow without images"
            job.changed.notify_all()

    def _poll(self, job: _Job) -> None:
        entry = self._history(job.id)
        if entry is not None:
            self._finish_from_history(job, entry)
            return
        queue = self._json(self._call("GET", "/queue"))
        running = [item[1] for item in queue.get("queue_running") or [] if isinstance(item, list) and len(item) > 1]
        pending = sorted((item for item in queue.get("queue_pending") or [] if isinstance(item, list)
                          and len(item) > 1), key=lambda item: item[0])
        with job.changed:
            if job.id in running:
                job.state, job.queue_position = "running", 0
            elif job.id in [item[1] for item in pending]:
                job.state = "queued"
                job.queue_position = 1 + [item[1] for item in pending].index(job.id)
            elif job.cancelled:
                job.state, job.error = "cancelled", "cancelled"
            else:  # ComfyUI moves a prompt from queue to history atomically: not in either means it is gone
                job.missing += 1
                if job.missing >= 3:
                    job.state = "failed"
                    job.error = (f"ComfyUI at {self.url} no longer knows the job (was it restarted, or the queue "
                                 "cleared?)")
                return
            job.missing = 0

    # -- Backend ---------------------------------------------------------------------------------

    def _find(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise BackendError(f"no job '{job_id}' on this client (jobs are kept while Blender runs)")
        return job

    def status(self, job_id: str, wait: float = 0.0, after_step: int = 0) -> JobOut:
        job = self._find(job_id)
        deadline = time.monotonic() + wait
        while True:
            if not job.finished and time.monotonic() - job.started > self.job_timeout:
                with job.changed:
                    job.state = "failed"
                    job.error = (f"ComfyUI at {self.url} did not finish the job within {self.job_timeout:g} s: raise "
                                 "the job timeout, or ask for fewer steps or a smaller size")
                    self._close(job)
            if not job.finished and job.ws is None:
                self._poll(job)
            remaining = deadline - time.monotonic()
            if job.finished or remaining <= 0 or job.step > after_step:
                return job.out()
            with job.changed:
                if job.ws is not None:
                    job.changed.wait(min(remaining, 1.0))
                    if job.finished or job.step > after_step:
                        return job.out()
                else:
                    job.changed.wait(min(remaining, self.poll_interval))

    def _close(self, job: _Job) -> None:
        if job.ws is not None:
            job.ws.close()

    def images(self, job_id: str, count: int) -> list[bytes]:
        job = self._find(job_id)
        if job.state != "done":
            raise BackendError(f"job '{job_id}' is {job.state}: it has no images")
        pngs = []
        for image in job.results[:count]:
            png = self._call("GET", "/view", params=image).content
            if not png.startswith(SIGNATURE):
                raise BackendError(f"ComfyUI sent {image['filename']} in another format than PNG")
            pngs.append(png)
        return pngs

    def cancel(self, job_id: str) -> None:
        """Take the job out of ComfyUI's queue, or interrupt it when it runs (and only then: /interrupt stops
        whatever runs, which may be someone else's prompt)."""
        job = self._find(job_id)
        if job.finished:
            return
        job.cancelled = True
        for _ in range(2):  # a queued prompt may start between the look and the delete: look again
            queue = self._json(self._call("GET", "/queue"))
            running = [item[1] for item in queue.get("queue_running") or [] if isinstance(item, list)]
            pending = [item[1] for item in queue.get("queue_pending") or [] if isinstance(item, list)]
            if job.id in running:
                self._call("POST", "/interrupt", json={"prompt_id": job.id})
                return
            if job.id in pending:
                self._call("POST", "/queue", json={"delete": [job.id]})
                continue
            break
        if self._history(job.id) is None:  # neither queued nor run: it is gone
            with job.changed:
                if not job.finished:
                    job.state, job.error = "cancelled", "cancelled"
                    self._close(job)
                job.changed.notify_all()


def _execution_error(data: dict[str, Any]) -> str:
    node_type, node_id = data.get("node_type") or "a node", data.get("node_id")
    where = f"{node_type} (node {node_id})" if node_id is not None else str(node_type)
    message = str(data.get("exception_message") or data.get("exception_type") or "unknown error").strip()
    return f"ComfyUI failed in {where}: {message}"


def _prompt_error(response) -> str:
    """ComfyUI's answer to a workflow it will not run: the error and each node's errors, by node class."""
    try:
        body = response.json()
    except ValueError:
        return f"ComfyUI refused the workflow: {(response.text or '').strip()[:300]}"
    error = body.get("error") if isinstance(body, dict) else None
    parts = []
    node_errors = body.get("node_errors") if isinstance(body, dict) else None
    if isinstance(node_errors, dict):
        for node_id, entry in node_errors.items():
            if not isinstance(entry, dict):
                continue
            for item in entry.get("errors") or []:
                if isinstance(item, dict):
                    detail = f": {item['details']}" if item.get("details") else ""
                    parts.append(f"{entry.get('class_type', 'node')} (node {node_id}): {item.get('message')}{detail}")
    if not parts and isinstance(error, dict):
        detail = f" ({error['details']})" if error.get("details") else ""
        parts.append(f"{error.get('message') or error.get('type')}{detail}")
    elif not parts and error:
        parts.append(str(error))
    return "ComfyUI refused the workflow: " + ("; ".join(parts) or "no reason given")
