"""A client of an Automatic1111 or Forge WebUI (`/sdapi/v1`), as the artist already runs it: no extension is
installed on it for us; ControlNet (sd-webui-controlnet, or Forge's built-in one) is used when it is there.

A1111's txt2img/img2img calls block until the images are done, while the add-on wants a job it can poll.
So `submit()` starts the call in a thread of its own and returns a local job id; `status()` asks
`/sdapi/v1/progress` how the sampling goes, until that thread has the answer.

What the WebUI cannot do is said before a job starts (a BackendError), never after minutes of sampling:
one-axis seamless tiling, a checkpoint it does not have, image formats the add-on cannot read. What it can
do only in part is done and said: a depth job on a WebUI without a depth ControlNet runs without depth, and
the reason is appended to `client.warnings`.

Limits that come from the WebUI's API itself:
- `/sdapi/v1/progress` and `/sdapi/v1/interrupt` are global: while another client's job runs (or runs
  before ours in the WebUI's queue), progress shows that job, and a cancel interrupts it.
- An interrupted call still returns an image, decoded from the half-denoised latent; the add-on drops it,
  so a cancelled job has no results.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .clients import BackendError, check_url
from .png import SIGNATURE
from .protocol import Health, JobIn, JobOut

# Our sampler names (backend/engine/samplers.py) -> the WebUI's labels. The combined "... Karras" labels are
# understood by every WebUI version: 1.9+ splits them into sampler and schedule itself.
SAMPLER_LABELS = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_sde": "DPM++ SDE",
    "ddim": "DDIM",
    "unipc": "UniPC",
    "lms": "LMS",
    "heun": "Heun",
    "pndm": "PLMS",
}
FAMILY = "a1111"
_KEPT_JOBS = 32  # finished jobs kept for status()/images(); older ones are forgotten


def sampler_label(name: str) -> str:
    """The WebUI's label for one of our sampler names (or a label already); "" lets the WebUI choose."""
    name = (name or "").strip()
    if not name:
        return ""
    if name in SAMPLER_LABELS:
        return SAMPLER_LABELS[name]
    by_label = {label.lower(): label for label in SAMPLER_LABELS.values()}
    if name.lower() in by_label:
        return by_label[name.lower()]
    raise BackendError(f"unknown sampler '{name}': choose one of {', '.join(SAMPLER_LABELS)} "
                       "(or leave it empty for the WebUI's default)")


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def batch_items(job: JobIn) -> int:
    """How many separate images (views) the job carries: each list holds none, one shared image, or one per item."""
    sizes = {len(images) for images in (job.init_images, job.masks, job.depths) if images}
    if len(sizes - {1}) > 1:
        raise BackendError(f"init images, masks and depths must each be one image or one per view, got "
                           f"{len(job.init_images)}, {len(job.masks)} and {len(job.depths)}")
    return max(sizes or {1})


def item_image(images: tuple[bytes, ...], k: int) -> bytes | None:
    if not images:
        return None
    return images[k] if len(images) > 1 else images[0]


@dataclass
class _Job:
    id: str
    mode: str
    requests: list[tuple[str, dict[str, Any]]]  # (path, payload), one per view, sent one after the other
    count: int
    state: str = "running"
    step: int = 0
    total: int = 0
    item: int = 0
    preview: bytes | None = None
    error: str | None = None
    pngs: list[bytes] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def out(self) -> JobOut:
        return JobOut(id=self.id, state=self.state, mode=self.mode, step=self.step, total=self.total,
                      queue_position=0, images=len(self.pngs) if self.state == "done" else 0,
                      preview=self.preview if self.state == "running" else None, error=self.error,
                      seeds=tuple(self.seeds))


class A1111Client:
    """The Backend protocol on an Automatic1111 or Forge WebUI started with `--api`.

    `username`/`password` are those of the WebUI's `--api-auth user:password`. A `token` alone is sent as
    the Basic password (with any user name): that is how the Scene Diffusion server takes A1111 clients.
    `timeout` bounds every short call; `job_timeout` bounds one generation call, which returns only when
    its images are done.
    """

    seamless_axes = ("xy",)  # A1111's `tiling` wraps both directions at once

    def __init__(self, url: str, username: str = "", password: str = "", token: str = "", timeout: float = 10.0,
                 job_timeout: float = 600.0, poll_interval: float = 0.25) -> None:
        self.url = check_url(url)
        self.timeout = timeout
        self.job_timeout = job_timeout
        self.poll_interval = poll_interval
        if token and not password:
            username, password = username or "scene-diffusion", token
        self._auth = (username, password) if (username or password) else None
        self.warnings: list[str] = []  # why a job ran with less than it asked for (newest last)
        self._session = self._new_session()
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._depth_model: str | None = None
        self._depth_checked = False
        self._depth_missing = ""

    # -- HTTP ------------------------------------------------------------------------------------

    def _new_session(self):
        import requests

        session = requests.Session()
        session.auth = self._auth
        return session

    def _call(self, method: str, path: str, timeout=None, session=None, **kwargs):
        import requests

        timeout = timeout or self.timeout
        try:
            response = (session or self._session).request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.exceptions.Timeout:  # before ConnectionError: a connect timeout is both
            raise self._timeout_error(path, timeout) from None
        except requests.exceptions.ConnectionError:
            raise BackendError(f"Automatic1111/Forge at {self.url} refused the connection: is the WebUI running, "
                               "on that port (7860 by default), and started with --listen if it runs on another "
                               "machine?") from None
        if response.status_code == 401:
            raise BackendError(f"Automatic1111/Forge at {self.url} refused the user name and password (401): "
                               "enter those of its --api-auth user:password in the add-on preferences (for a Scene "
                               "Diffusion server: its token as the password)")
        if response.status_code == 404 and path.startswith("/sdapi/"):
            raise BackendError(f"{self.url} has no Automatic1111 API (404 on {path}): start the WebUI with --api "
                               "(add it to COMMANDLINE_ARGS in webui-user.bat or webui-user.sh), or check the URL")
        if response.status_code >= 400:
            raise BackendError(f"Automatic1111/Forge: {_error_text(response)} (HTTP {response.status_code} "
                               f"on {path})")
        return response

    def _timeout_error(self, path: str, timeout) -> BackendError:
        if isinstance(timeout, tuple):
            return BackendError(f"Automatic1111/Forge at {self.url} did not finish the images within "
                                f"{timeout[1]:g} s: raise the job timeout, or ask for fewer steps or a smaller size")
        return BackendError(f"Automatic1111/Forge at {self.url} did not answer {path} within {timeout:g} s: "
                            "is the host reachable, and the WebUI not stuck?")

    def _json(self, response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"{self.url} answered {response.request.path_url} with something other than JSON: "
                               "is it an Automatic1111/Forge WebUI?") from None

    # -- discovery -------------------------------------------------------------------------------

    def health(self) -> Health:
        titles = self.models()
        options = self._options()
        self._depth_checked = False  # health is what "Test connection" calls: look again
        return Health(version="", model=str(options.get("sd_model_checkpoint") or (titles[0] if titles else "")),
                      family=FAMILY, device="", dtype="", modes=self._modes())

    def models(self) -> list[str]:
        entries = self._json(self._call("GET", "/sdapi/v1/sd-models"))
        if not isinstance(entries, list):
            raise BackendError(f"{self.url}/sdapi/v1/sd-models did not answer a list: is it an A1111/Forge WebUI?")
        return [str(entry.get("title") or entry.get("model_name")) for entry in entries if isinstance(entry, dict)]

    def capabilities(self) -> set[str]:
        """What this WebUI can do: txt2img, img2img, inpaint, seamless (both axes only), depth with ControlNet."""
        return set(self._modes()) | {"seamless"}

    def _modes(self) -> tuple[str, ...]:
        return ("txt2img", "img2img", "inpaint") + (("depth",) if self._find_depth_model() else ())

    def _options(self) -> dict[str, Any]:
        options = self._json(self._call("GET", "/sdapi/v1/options"))
        if not isinstance(options, dict):
            raise BackendError(f"{self.url}/sdapi/v1/options did not answer an object: is it an A1111/Forge WebUI?")
        return options

    def _find_depth_model(self) -> str | None:
        """The first ControlNet model with "depth" in its name, or None (and the reason in _depth_missing)."""
        if self._depth_checked:
            return self._depth_model
        import requests

        try:
            response = self._session.get(self.url + "/controlnet/model_list", timeout=self.timeout)
        except requests.exceptions.RequestException:
            response = None
        names: list[str] = []
        if response is not None and response.status_code == 200:
            try:
                names = [str(n) for n in (response.json() or {}).get("model_list") or []]
            except (ValueError, AttributeError):
                names = []
            self._depth_model = next((n for n in names if "depth" in n.lower()), None)
            self._depth_missing = "" if self._depth_model else (
                "its ControlNet has no depth model: put one such as control_v11f1p_sd15_depth into "
                "models/ControlNet and restart the WebUI")
        else:
            self._depth_model = None
            self._depth_missing = ("it has no ControlNet: install the sd-webui-controlnet extension (Forge has it "
                                   "built in) and a depth model such as control_v11f1p_sd15_depth")
        self._depth_checked = True
        return self._depth_model

    def _checkpoint_title(self, model: str) -> str:
        entries = self._json(self._call("GET", "/sdapi/v1/sd-models"))
        titles = []
        for entry in entries if isinstance(entries, list) else []:
            title = str(entry.get("title") or "")
            titles.append(title)
            names = {title, str(entry.get("model_name") or ""), str(entry.get("filename") or "")}
            names |= {n.replace("\\", "/").rsplit("/", 1)[-1] for n in names}
            if model in names or title.split(" [")[0] == model:
                return title
        raise BackendError(f"Automatic1111/Forge at {self.url} has no checkpoint '{model}'; it has: "
                           f"{', '.join(titles) or 'none'}")

    # -- jobs ------------------------------------------------------------------------------------

    def submit(self, job: JobIn) -> str:
        if job.seamless not in ("", "xy"):
            raise BackendError(f"Automatic1111/Forge tiles in both directions only (its 'tiling' option): "
                               f"seamless along '{job.seamless}' alone is not available on this backend; choose "
                               "'xy', or use the Scene Diffusion server")
        sampler = sampler_label(job.sampler)
        items = batch_items(job)
        if job.masks and not job.init_images:
            raise BackendError("a mask needs an init image to inpaint into")
        options = self._options()
        image_format = str(options.get("samples_format") or "png").lower()
        if image_format != "png":
            raise BackendError(f"Automatic1111/Forge at {self.url} sends its images as {image_format}, and the "
                               "add-on reads PNG only: set Settings > Saving images/grids > 'File format for "
                               "images' to png")
        checkpoint = self._checkpoint_title(job.model) if job.model else ""
        warnings: list[str] = []
        depth_model = None
        mode = "inpaint" if job.masks else "img2img" if job.init_images else "txt2img"
        if job.depths:
            self._depth_checked = False
            depth_model = self._find_depth_model()
            if depth_model is None:
                warnings.append(f"Automatic1111/Forge at {self.url} cannot use the depth map, so this job ran as "
                                f"{mode} without depth: {self._depth_missing}")
            else:
                mode = "depth"
        requests_ = [self._payload(job, k, sampler, checkpoint, depth_model) for k in range(items)]
        record = _Job(id=uuid.uuid4().hex, mode=mode, requests=requests_, count=job.count, warnings=warnings)
        self.warnings.extend(warnings)
        with self._lock:
            self._jobs[record.id] = record
            for old in list(itertools.islice(self._jobs, max(0, len(self._jobs) - _KEPT_JOBS))):
                if self._jobs[old].ended.is_set():
                    del self._jobs[old]
        threading.Thread(target=self._run, args=(record,), name="a1111-job", daemon=True).start()
        return record.id

    def job_warnings(self, job_id: str) -> list[str]:
        """The warnings of one job (also in `warnings`, among those of other jobs)."""
        return list(self._find(job_id).warnings)

    def _payload(self, job: JobIn, k: int, sampler: str, checkpoint: str,
                 depth_model: str | None) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "seed": -1 if job.seed is None or job.seed < 0 else job.seed + k * job.count,
            "steps": job.steps,
            "cfg_scale": job.guidance,
            "width": job.width,
            "height": job.height,
            "batch_size": job.count,
            "n_iter": 1,
            "tiling": bool(job.seamless),
            "send_images": True,
            "save_images": False,
        }
        if sampler:
            payload["sampler_name"] = sampler
        if checkpoint:
            payload["override_settings"] = {"sd_model_checkpoint": checkpoint}
            payload["override_settings_restore_afterwards"] = True
        init, mask, depth = (item_image(images, k) for images in (job.init_images, job.masks, job.depths))
        path = "/sdapi/v1/txt2img"
        if init is not None:
            path = "/sdapi/v1/img2img"
            payload.update(init_images=[_b64(init)], denoising_strength=job.strength, resize_mode=0)
            if mask is not None:
                payload.update(mask=_b64(mask), inpainting_mask_invert=0, inpainting_fill=1,
                               inpaint_full_res=False)
        if depth is not None and depth_model:
            payload["alwayson_scripts"] = {"controlnet": {"args": [{
                "enabled": True, "image": _b64(depth), "module": "none", "model": depth_model,
                "weight": job.controlnet_scale, "resize_mode": "Just Resize", "control_mode": "Balanced",
                "pixel_perfect": False, "guidance_start": 0.0, "guidance_end": 1.0, "save_detected_map": False,
            }]}}
        return path, payload

    def _run(self, job: _Job) -> None:
        """The job's thread: one blocking call per view, results in order."""
        session = self._new_session()
        try:
            for k, (path, payload) in enumerate(job.requests):
                if job.cancel.is_set():
                    break
                job.item = k
                body = self._json(self._call("POST", path, json=payload, session=session,
                                             timeout=(self.timeout, self.job_timeout)))
                if job.cancel.is_set():
                    break  # the image of an interrupted call is half-denoised: dropped
                info = _info(body)
                if info.get("interrupted"):
                    job.error = "interrupted on the WebUI"
                    job.cancel.set()
                    break
                images = body.get("images") if isinstance(body, dict) else None
                if not isinstance(images, list):
                    raise BackendError(f"Automatic1111/Forge answered {path} without images")
                first = int(info.get("index_of_first_image") or 0)
                job.pngs.extend(self._png(data) for data in images[first:first + job.count])
                seeds = info.get("all_seeds") or [info.get("seed")]
                job.seeds.extend(int(s) for s in seeds[:job.count] if isinstance(s, int))
            job.state = "cancelled" if job.cancel.is_set() else "done"
            if job.state == "cancelled":
                job.pngs, job.error = [], job.error or "cancelled"
        except BackendError as exc:
            job.state, job.error = ("cancelled", "cancelled") if job.cancel.is_set() else ("failed", str(exc))
        except Exception as exc:  # never leave the job running forever
            job.state, job.error = "failed", f"unexpected {type(exc).__name__}: {exc}"
        finally:
            session.close()
            job.ended.set()

    def _png(self, data: Any) -> bytes:
        if not isinstance(data, str):
            raise BackendError("Automatic1111/Forge sent an image that is not base64 text")
        try:
            png = base64.b64decode(data.partition(",")[2] if data.startswith("data:") else data)
        except (binascii.Error, ValueError):
            raise BackendError("Automatic1111/Forge sent an image that is not valid base64") from None
        if not png.startswith(SIGNATURE):
            raise BackendError("Automatic1111/Forge sent its images in another format than PNG, which the add-on "
                               "reads alone: set Settings > Saving images/grids > 'File format for images' to png")
        return png

    def _find(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise BackendError(f"no job '{job_id}' on this client (jobs are kept while Blender runs)")
        return job

    def status(self, job_id: str, wait: float = 0.0, after_step: int = 0) -> JobOut:
        """The job's state; with `wait`, returns as soon as a step after `after_step` is reached, the job ends,
        or `wait` seconds have passed, asking the WebUI for progress every `poll_interval` seconds."""
        job = self._find(job_id)
        deadline = time.monotonic() + wait
        while True:
            if job.ended.is_set():
                return job.out()
            self._progress(job)
            remaining = deadline - time.monotonic()
            if job.ended.is_set() or remaining <= 0 or job.step > after_step:
                return job.out()
            job.ended.wait(min(self.poll_interval, remaining))

    def _progress(self, job: _Job) -> None:
        try:
            body = self._json(self._call("GET", "/sdapi/v1/progress", params={"skip_current_image": "false"}))
        except BackendError:
            return  # the generation call reports the WebUI's failures; progress is best effort
        state = body.get("state") if isinstance(body, dict) else None
        if not isinstance(state, dict) or job.ended.is_set():
            return
        step, steps = state.get("sampling_step"), state.get("sampling_steps")
        if not state.get("job_count") or not isinstance(step, int) or not isinstance(steps, int) or steps <= 0:
            return  # idle: what `state` holds is the previous job's
        items = len(job.requests)
        job.total = steps * items
        job.step = min(job.item * steps + step, job.total)
        image = body.get("current_image")
        if isinstance(image, str) and image:
            try:
                preview = base64.b64decode(image.partition(",")[2] if image.startswith("data:") else image)
            except (binascii.Error, ValueError):
                return
            if preview.startswith(SIGNATURE):  # a WebUI saving JPEG sends JPEG previews: not shown
                job.preview = preview

    def images(self, job_id: str, count: int) -> list[bytes]:
        job = self._find(job_id)
        if job.state != "done":
            raise BackendError(f"job '{job_id}' is {job.state}: it has no images")
        return job.pngs[:count]

    def cancel(self, job_id: str) -> None:
        """Interrupt the WebUI (it has no per-job cancel) and drop whatever image the call still returns."""
        job = self._find(job_id)
        if job.ended.is_set():
            return
        job.cancel.set()
        self._call("POST", "/sdapi/v1/interrupt")


def _info(body: Any) -> dict[str, Any]:
    """A1111's `info`: a JSON object sent as a string."""
    info = body.get("info") if isinstance(body, dict) else None
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            info = None
    return info if isinstance(info, dict) else {}


def _error_text(response) -> str:
    """What the WebUI says went wrong: FastAPI's `detail` (text or a list of field errors), or A1111's own
    `{"error", "detail", "errors"}` of an exception in a generation."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason or "").strip()[:300]
    if not isinstance(body, dict):
        return str(body)[:300]
    detail = body.get("detail")
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, dict):
                where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
                parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg")))
        detail = "; ".join(parts)
    text = detail or body.get("errors") or body.get("error") or response.reason
    if body.get("error") and body.get("errors") and body["error"] not in str(text):
        text = f"{body['error']}: {text}"
    return str(text)[:500]
