"""Runtime state of this Blender session: the running job, the local server, the last connection test.

Plain Python, not properties: none of it belongs in the .blend or in the undo history. `shutdown()`
(called on unregister and when Blender quits) cancels the job and stops the local server.
"""

from __future__ import annotations

import atexit

import bpy

from .core.clients import Backend, BackendError, OwnServerClient, check_url, is_loopback
from .core.local_server import LocalServer, LocalServerError

_state: dict = {"job": None, "server": None, "server_error": "", "connection": "", "models": []}
# Tests and the headless CLI put a backend here (an in-process engine, say); it wins over the preferences.
override_backend: list = []


def active_job():
    return _state["job"]


def set_active_job(job) -> None:
    _state["job"] = job


def local_server() -> LocalServer | None:
    return _state["server"]


def local_server_error() -> str:
    return _state["server_error"]


def connection_message() -> str:
    return _state["connection"]


def set_connection_message(text: str) -> None:
    _state["connection"] = text


def known_models() -> list[str]:
    """The backend's models, as last listed (Test Connection); the panel offers them in the Model field."""
    return list(_state["models"])


def set_known_models(models: list[str]) -> None:
    _state["models"] = list(models)


def network_refusal(url: str) -> str:
    """Why `url` may not be used now ('' when it may): other hosts need Blender's online access."""
    if is_loopback(url) or bpy.app.online_access:
        return ""
    return ("Online access is off: enable Preferences > System > Network > Allow Online Access "
            "to reach a server on another computer")


def start_local_server(preferences) -> LocalServer:
    """Start (or reuse) the local backend process; returns at once, before it is ready."""
    server = _state["server"]
    wanted = (preferences.python, preferences.local_model, preferences.local_port)
    if server is not None and server.running and getattr(server, "settings", None) == wanted:
        return server
    if server is not None:
        server.stop()
    if not preferences.python:
        raise LocalServerError("set the Python executable of the backend's environment in the add-on preferences "
                               "(the backend runs outside Blender; Blender's own Python has no torch)")
    server = LocalServer(bpy.path.abspath(preferences.python), preferences.local_model,
                         port=preferences.local_port or None)
    server.settings = wanted
    _state["server_error"] = ""
    try:
        server.check_python()
        server.start()
    except LocalServerError as exc:
        _state["server_error"] = str(exc)
        raise
    _state["server"] = server
    return server


def stop_local_server() -> None:
    server = _state["server"]
    if server is not None:
        server.stop()
    _state["server"] = None


def backend_source(context):
    """What the job's worker thread calls to get its backend: checks done here, on the main thread, raise
    BackendError/LocalServerError with the reason; the slow part (waiting for a local server) runs later,
    in the worker."""
    if override_backend:
        backend = override_backend[-1]
        return lambda: backend
    from .preferences import get_preferences

    preferences = get_preferences(context)
    if preferences is None:
        raise BackendError("the add-on's preferences are not available: enable it in Preferences > Add-ons")
    timeout = preferences.timeout
    if preferences.backend in ("REMOTE", "A1111", "COMFYUI"):
        url = check_url(preferences.url)
        refusal = network_refusal(url)
        if refusal:
            raise BackendError(refusal)
        token, user, password = preferences.token, preferences.username, preferences.password
        if preferences.backend == "A1111":
            from .core.a1111 import A1111Client

            return lambda: A1111Client(url, username=user, password=password, timeout=timeout)
        if preferences.backend == "COMFYUI":
            from .core.comfyui import ComfyUIClient

            return lambda: ComfyUIClient(url, username=user, password=password, timeout=timeout)
        return lambda: OwnServerClient(url, token, timeout=timeout)
    server = start_local_server(preferences)

    def local() -> Backend:
        try:
            server.wait_ready(timeout=max(120.0, timeout))
        except LocalServerError as exc:
            _state["server_error"] = str(exc)
            raise BackendError(f"the local backend did not start: {exc}") from None
        return OwnServerClient(server.url, timeout=timeout)

    return local


def shutdown() -> None:
    job = _state["job"]
    if job is not None:
        job.cancel()
    _state["job"] = None
    stop_local_server()


atexit.register(shutdown)
