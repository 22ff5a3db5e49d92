"""Backend clients. One interface; our own server implements it here, and the third-party servers
(Automatic1111/Forge, ComfyUI) implement the same one, so restyle, texturing and materials do not care
which backend runs the job.

Every call has a timeout; every failure is a BackendError whose message says what to fix.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol
from urllib.parse import urlsplit

from .protocol import Health, JobIn, JobOut


class BackendError(Exception):
    """The backend could not be used; the message is for the artist and says what to do."""


class Backend(Protocol):
    """What a job needs from a backend. Implementations are used from a worker thread, never from bpy."""

    url: str

    def health(self) -> Health: ...

    def models(self) -> list[str]: ...

    def submit(self, job: JobIn) -> str: ...

    def status(self, job_id: str, wait: float = 0.0, after_step: int = 0) -> JobOut: ...

    def images(self, job_id: str, count: int) -> list[bytes]: ...

    def cancel(self, job_id: str) -> None: ...


def check_url(url: str) -> str:
    """The URL without a trailing slash, or BackendError saying what is wrong with it."""
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BackendError(f"'{url}' has no http:// or https:// scheme: write it like http://127.0.0.1:7860")
    if not parts.hostname:
        raise BackendError(f"'{url}' has no host name")
    return url.rstrip("/")


def is_loopback(url: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: the only hosts used without Blender's online access."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OwnServerClient:
    """A client of `scene-diffusion serve` (/v1)."""

    def __init__(self, url: str, token: str = "", timeout: float = 10.0) -> None:
        import requests

        self.url = check_url(url)
        self.timeout = timeout
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, timeout: float | None = None, **kwargs):
        import requests

        try:
            response = self._session.request(method, self.url + path, timeout=timeout or self.timeout, **kwargs)
        except requests.exceptions.ConnectionError:
            raise BackendError(f"backend at {self.url} refused the connection: is the server started, "
                               "and on that port?") from None
        except requests.exceptions.Timeout:
            raise BackendError(f"backend at {self.url} did not answer within {timeout or self.timeout:g} s") from None
        if response.status_code == 401:
            raise BackendError(f"backend at {self.url} refused the token (401): check the token in the "
                               "add-on preferences")
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", "")
            except ValueError:
                detail = ""
            if response.status_code == 404 and (path == "/v1/health" or not detail):
                raise BackendError(f"{self.url} answered, but it is not a Scene Diffusion server (404 on {path}): "
                                   "check the URL and port, or pick the backend type that server is")
            raise BackendError(f"backend: {detail or response.reason} (HTTP {response.status_code})")
        return response

    def health(self) -> Health:
        response = self._call("GET", "/v1/health")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("api") != "v1":
            raise BackendError(f"{self.url} answered, but not as a Scene Diffusion server")
        return Health.from_json(body)

    def models(self) -> list[str]:
        return [entry["id"] for entry in self._call("GET", "/v1/models").json()]

    def submit(self, job: JobIn) -> str:
        return self._call("POST", "/v1/jobs", json=job.to_json()).json()["id"]

    def status(self, job_id: str, wait: float = 0.0, after_step: int = 0) -> JobOut:
        params = {"wait": wait, "after_step": after_step} if wait else None
        return JobOut.from_json(self._call("GET", f"/v1/jobs/{job_id}", params=params,
                                           timeout=self.timeout + wait).json())

    def images(self, job_id: str, count: int) -> list[bytes]:
        return [self._call("GET", f"/v1/jobs/{job_id}/images/{k}").content for k in range(count)]

    def cancel(self, job_id: str) -> None:
        self._call("DELETE", f"/v1/jobs/{job_id}")
