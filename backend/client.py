"""A client of the `/v1` API that is itself an Engine: the CLI runs the same job on a server by swapping
the engine it calls, with the same progress bar and the same output files.
"""

from __future__ import annotations

import base64
import io
import threading
from typing import Any
from urllib.parse import urlsplit

from .engine.request import GeneratedImage, GenerationRequest, Progress
from .errors import Cancelled, InvalidRequest, SceneDiffusionError, UnsupportedMode


class BackendError(SceneDiffusionError):
    """The server could not be used: unreachable, refused, wrong token, not our API."""


def _b64_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class RemoteEngine:
    """Runs requests on a Scene Diffusion server. `timeout` bounds each HTTP call, not the whole job."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, poll_interval: float = 1.0):
        import requests

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BackendError(f"backend URL '{url}' needs a scheme and a host, like http://127.0.0.1:7860")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        self._health = self._call("GET", "/v1/health").json()
        if self._health.get("api") != "v1" or "model" not in self._health:
            raise BackendError(f"{self.url} answered, but not as a Scene Diffusion server (no /v1 health)")
        self.model_id = self._health["model"]

    def info(self) -> dict[str, Any]:
        return {k: self._health[k] for k in ("model", "family", "device", "dtype", "modes")}

    def modes(self) -> list[str]:
        return list(self._health["modes"])

    def _call(self, method: str, path: str, **kwargs):
        import requests

        try:
            response = self._session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.exceptions.ConnectionError:
            raise BackendError(f"backend at {self.url} refused the connection: is `scene-diffusion serve` "
                               "running there, on that port?") from None
        except requests.exceptions.Timeout:
            raise BackendError(f"backend at {self.url} did not answer within {self.timeout:g} s") from None
        if response.status_code == 401:
            raise BackendError(f"backend at {self.url} refused the token (401): check --token")
        if response.status_code == 404 and path == "/v1/health":
            raise BackendError(f"{self.url} is not a Scene Diffusion server (no /v1/health)")
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text[:200]
            if response.status_code == 422:  # the request's fault: the same error as in-process
                raise (UnsupportedMode if "cannot do" in str(detail) else InvalidRequest)(str(detail))
            raise BackendError(f"backend at {self.url}: {detail} (HTTP {response.status_code})")
        return response

    def generate(self, request: GenerationRequest, progress=None, cancel: threading.Event | None = None
                 ) -> list[GeneratedImage]:
        from PIL import Image

        from .metadata import read_png_parameters

        request.validate()
        body = {
            "prompt": request.prompt, "negative_prompt": request.negative_prompt, "width": request.width,
            "height": request.height, "steps": request.steps, "guidance": request.guidance, "seed": request.seed,
            "count": request.count, "strength": request.strength, "sampler": request.sampler,
            "seamless": request.seamless, "controlnet_scale": request.controlnet_scale,
            "init_images": [_b64_png(i) for i in request.init_images],
            "masks": [_b64_png(i) for i in request.masks], "depths": [_b64_png(i) for i in request.depths],
        }
        job_id = self._call("POST", "/v1/jobs", json=body).json()["id"]
        try:
            status = self._wait(job_id, progress, cancel)
        except BaseException:  # Ctrl-C or a cancel: the server must not go on working for nobody
            try:
                self._call("DELETE", f"/v1/jobs/{job_id}")
            except SceneDiffusionError:
                pass
            raise
        if status["state"] == "cancelled":
            raise Cancelled(status.get("error") or "cancelled")
        if status["state"] == "failed":
            raise SceneDiffusionError(f"the job failed on the server: {status.get('error')}")
        results = []
        for k in range(status["images"]):
            data = self._call("GET", f"/v1/jobs/{job_id}/images/{k}").content
            with Image.open(io.BytesIO(data)) as image:
                params = read_png_parameters(image)
                results.append(GeneratedImage(image=image.convert("RGB"), seed=params.get("seed", status["seeds"][k]),
                                              parameters=params))
        return results

    def _wait(self, job_id: str, progress, cancel: threading.Event | None) -> dict:
        from PIL import Image

        last_step = 0
        while True:
            # A long poll: the server answers at the next step (or the end) instead of us sleeping blindly;
            # `wait` stays short so a cancel is noticed within about a second.
            status = self._call("GET", f"/v1/jobs/{job_id}", params={"wait": self.poll_interval,
                                                                       "after_step": last_step}).json()
            if status["state"] in ("done", "failed", "cancelled"):
                return status
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if status["step"] == last_step:
                continue
            last_step = status["step"]
            if progress is not None and status["total"]:
                preview = None
                if status.get("preview"):
                    preview = Image.open(io.BytesIO(base64.b64decode(status["preview"]))).convert("RGB")
                progress(Progress(step=status["step"], total=status["total"], preview=preview))
