"""The add-on's local server: a real `scene-diffusion serve` process on loopback."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import requests

from blender_addon.core.local_server import LocalServer, LocalServerError

TINY = "testing/tiny-sd"


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    local = LocalServer(sys.executable, TINY, log_path=tmp_path_factory.mktemp("server") / "server.log")
    local.check_python()
    local.start()
    try:
        local.wait_ready(timeout=60)
        yield local
    finally:
        local.stop()


def test_start_answers_with_the_model(server):
    assert server.running and server.url == f"http://127.0.0.1:{server.port}"
    health = requests.get(f"{server.url}/v1/health", timeout=5).json()
    assert health["model"] == TINY and health["status"] == "ok"
    assert server.poll_ready() is True
    assert any(line.startswith(f"serving {TINY} on {server.url}") for line in server.log_tail())


def test_port_already_taken_says_so(server, tmp_path):
    second = LocalServer(sys.executable, TINY, port=server.port, log_path=tmp_path / "second.log")
    second.start()
    try:
        with pytest.raises(LocalServerError, match=f"exited with status 2: error: cannot listen on "
                                                   f"127.0.0.1:{server.port}"):
            # The first server answers on that port, but it is not this process's: never "ready".
            second.wait_ready(timeout=30)
    finally:
        second.stop()
    assert not second.running and server.poll_ready()


def test_stop_ends_the_process_and_is_idempotent(tmp_path):
    with socket.socket() as taken:  # a port that is listened on but never answers
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        local = LocalServer(sys.executable, TINY, port=taken.getsockname()[1], log_path=tmp_path / "s.log")
        local.start()
        pid = local.pid
        assert local.running and local.poll_ready() is False
        local.stop(timeout=5)
        local.stop()
    assert not local.running and gone(pid)
    with pytest.raises(LocalServerError, match="exited"):
        local.poll_ready()


def test_python_without_the_backend(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'backend'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(LocalServerError, match="has no Scene Diffusion backend: install it there with "
                                               "`pip install scene-diffusion`"):
        LocalServer(str(fake), TINY).check_python()
    with pytest.raises(LocalServerError, match="could not import .*pip install scene-diffusion"):
        LocalServer("/bin/false", TINY).check_python()
    fake.write_text("#!/bin/sh\necho 'missing: torch, diffusers' >&2\nexit 3\n")
    with pytest.raises(LocalServerError, match=r"not all it needs \(torch, diffusers\): install it there"):
        LocalServer(str(fake), TINY).check_python()


def test_not_a_python(tmp_path):
    with pytest.raises(LocalServerError, match="is not an executable Python"):
        LocalServer(str(tmp_path / "missing" / "python"), TINY).check_python()
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(LocalServerError, match="is not an executable Python"):
        LocalServer(str(text), TINY).check_python()
    with pytest.raises(LocalServerError, match="cannot run"):
        LocalServer(str(tmp_path / "missing" / "python"), TINY).start()


def test_before_start():
    local = LocalServer(sys.executable, TINY)
    assert not local.running and local.log_tail() == []
    local.stop()
    with pytest.raises(LocalServerError, match="not been started"):
        local.poll_ready()
