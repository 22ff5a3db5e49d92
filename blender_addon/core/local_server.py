"""The backend server the add-on starts on loopback, in a Python environment that has the backend.

Blender's own Python has no torch, so the backend runs in another interpreter (the artist's venv or
conda env) as `python -m backend.cli serve`, on 127.0.0.1 only. Nothing here blocks for long:
`start()` returns at once and `poll_ready()` is one short health check, so a modal timer can call it
every tick; `wait_ready()` is for scripts and tests. The server's output goes to a log file, whose
last lines become the error message when the process dies (port in use, model unavailable, ...).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import requests

HOST = "127.0.0.1"
CHECK_TIMEOUT = 30.0  # seconds for `python -c "import backend.cli"`; a cold disk can be slow
HEALTH_TIMEOUT = 0.5
_SERVING = "serving "  # how `scene-diffusion serve` announces that the port is its own

INSTALL_ADVICE = ("install it there with `pip install scene-diffusion` "
                  "(or point the add-on at the Python of the environment that has it)")


class LocalServerError(RuntimeError):
    """The local server cannot be started or has stopped; the message says what to do."""


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on now (the OS's pick), for a server started right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class LocalServer:
    """One `scene-diffusion serve` process on loopback: start, poll until it answers, stop."""

    def __init__(self, python: str, model: str, port: int | None = None, extra_args: Sequence[str] = (),
                 log_path: str | os.PathLike | None = None) -> None:
        self.python = str(python)
        self.model = model
        self.port = port
        self.extra_args = tuple(str(arg) for arg in extra_args)
        self.log_path = Path(log_path) if log_path is not None else None
        self._process: subprocess.Popen | None = None
        self._announced = False

    # -- checks ----------------------------------------------------------------------------------

    def check_python(self, timeout: float = CHECK_TIMEOUT) -> None:
        """Raise LocalServerError unless `python` can import the backend and finds its dependencies.

        Dependencies are looked up, not imported, so the check takes a fraction of a second even with torch.
        """
        try:
            result = subprocess.run([self.python, "-c", _CHECK], capture_output=True, encoding="utf-8",
                                    errors="replace", timeout=timeout, cwd=_neutral_cwd(), creationflags=_NO_WINDOW)
        except subprocess.TimeoutExpired:
            raise LocalServerError(f"{self.python!r} took more than {timeout:.0f} s to import the Scene Diffusion "
                                   "backend: is it the right Python? try again, or point the add-on at another "
                                   "Python") from None
        except OSError as exc:
            raise LocalServerError(f"{self.python!r} is not an executable Python ({exc.strerror or exc}): point the "
                                   "add-on at the python executable of the environment that has the Scene "
                                   "Diffusion backend") from None
        if result.returncode == 0:
            return
        last = _last_line(result.stderr) or _last_line(result.stdout)
        if "No module named 'backend'" in result.stderr:
            raise LocalServerError(f"{self.python!r} has no Scene Diffusion backend: {INSTALL_ADVICE}")
        if result.returncode == _MISSING_STATUS and last.startswith("missing:"):
            raise LocalServerError(f"{self.python!r} has the Scene Diffusion backend but not all it needs "
                                   f"({last.removeprefix('missing:').strip()}): {INSTALL_ADVICE}")
        detail = f" ({last})" if last else f" (exit status {result.returncode})"
        raise LocalServerError(f"{self.python!r} could not import the Scene Diffusion backend{detail}: "
                               f"{INSTALL_ADVICE}")

    # -- life cycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """The process is alive (it may still be loading the model: see poll_ready)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def url(self) -> str:
        if self.port is None:
            raise LocalServerError("the local server has no port yet: start() picks one")
        return f"http://{HOST}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "backend.cli", "serve", "--host", HOST, "--port", str(self.port),
                "--model", self.model, *self.extra_args]

    def start(self) -> None:
        """Start the server process and return at once (a no-op while it runs). The model loads meanwhile."""
        if self.running:
            return
        if self.port is None:
            self.port = free_port()
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"scene-diffusion-server-{self.port}-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._announced = False
        with open(self.log_path, "wb") as log:
            try:
                self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT, env=env, cwd=_neutral_cwd(),
                                                 creationflags=_NO_WINDOW)
            except OSError as exc:
                self._process = None
                raise LocalServerError(f"cannot run {self.python!r} ({exc.strerror or exc}): point the add-on at "
                                       "the python executable of the environment that has the Scene Diffusion "
                                       "backend") from None

    def poll_ready(self) -> bool:
        """True once the server answers its health check; False while it loads. Never blocks for long.

        Raises LocalServerError with the end of the server's log if the process has exited.
        """
        process = self._process
        if process is None:
            raise LocalServerError("the local server has not been started")
        if process.poll() is not None:
            raise LocalServerError(self._exit_message(process.returncode))
        if not self._announced:
            # Until the process says it serves, whatever answers on the port is someone else.
            self._announced = any(line.startswith(_SERVING) for line in self.log_tail(50))
            if not self._announced:
                return False
        try:
            response = requests.get(f"{self.url}/v1/health", timeout=HEALTH_TIMEOUT)
        except requests.RequestException:
            return False
        # 401: up, and started with --token; the client brings the token.
        return response.status_code in (200, 401)

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.1) -> None:
        """Block until poll_ready() is true; LocalServerError on exit or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if time.monotonic() > deadline:
                tail = "\n".join(self.log_tail(10))
                raise LocalServerError(f"the local server at {self.url} did not answer within {timeout:.0f} s "
                                       f"(still loading {self.model}?). Log {self.log_path}:\n{tail}".rstrip())
            time.sleep(interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to end, kill it if it has not after `timeout` seconds. Safe to call again."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._announced = False

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- log -------------------------------------------------------------------------------------

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last lines of the server's log ([] before start)."""
        if self.log_path is None or not self.log_path.exists():
            return []
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return [line.rstrip("\n") for line in deque(log, maxlen=lines)]

    def _exit_message(self, status: int) -> str:
        tail = [line for line in self.log_tail(12) if line.strip()]
        errors = [line for line in tail if line.startswith("error:")]
        headline = errors[-1] if errors else (tail[-1] if tail else "no output")
        message = f"the local server ({self.model}) exited with status {status}: {headline}"
        if len(tail) > 1 or not errors:
            message += "\n" + "\n".join(tail)
        return message + f"\nFull log: {self.log_path}"


_NO_WINDOW = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
_MISSING_STATUS = 3
_CHECK = f"""\
import importlib.util, sys
import backend.cli
needed = ("torch", "diffusers", "transformers", "fastapi", "uvicorn")
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    print("missing: " + ", ".join(missing), file=sys.stderr)
    sys.exit({_MISSING_STATUS})
"""


def _neutral_cwd() -> str:
    """A working directory that holds no `backend` folder: `-c` and `-m` put the working directory on sys.path,
    so a check run from a source checkout would pass for a Python that has nothing installed."""
    return tempfile.gettempdir()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""
