"""`scene-diffusion serve` and `generate --backend`: the same job through a real server process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from live_server import live_server
from PIL import Image

from backend.cli import main
from backend.metadata import read_png_parameters
from backend.server.app import create_app

GEN = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "21"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_on_a_server_matches_in_process(tiny_engine, tmp_path, capsys):
    local, remote = tmp_path / "local.png", tmp_path / "remote.png"
    assert main(["generate", "moss", "-o", str(local), "--model", "testing/tiny-sd", *GEN]) == 0
    with live_server(create_app(tiny_engine, token="t0k")) as url:
        assert main(["generate", "moss", "-o", str(remote), "--backend", url, "--token", "t0k", *GEN]) == 0
    err = capsys.readouterr().err
    assert "step 2/2" in err
    assert np.array_equal(np.asarray(Image.open(local)), np.asarray(Image.open(remote)))
    assert read_png_parameters(Image.open(remote))["seed"] == 21


def test_backend_errors_are_one_clear_line(tiny_engine, tmp_path, capsys):
    out = tmp_path / "o.png"
    port = free_port()
    assert main(["generate", "x", "-o", str(out), "--backend", f"http://127.0.0.1:{port}", *GEN]) == 2
    assert "refused the connection" in capsys.readouterr().err
    assert main(["generate", "x", "-o", str(out), "--backend", "127.0.0.1:7860", *GEN]) == 2
    assert "needs a scheme" in capsys.readouterr().err
    with live_server(create_app(tiny_engine, token="right")) as url:
        assert main(["generate", "x", "-o", str(out), "--backend", url, "--token", "wrong", *GEN]) == 2
        assert "refused the token (401)" in capsys.readouterr().err
        assert main(["generate", "x", "-o", str(out), "--backend", url, "--token", "right", *GEN,
                     "--steps", "400"]) == 2
        assert "steps 400 is over this server's limit of 150" in capsys.readouterr().err
    assert not out.exists()


def test_serve_refuses_open_address_without_token(capsys):
    assert main(["serve", "--host", "0.0.0.0", "--model", "testing/tiny-sd"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without --token" in err and "--insecure" in err


def test_serve_reports_port_in_use(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "testing/tiny-sd"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_process_end_to_end(tmp_path):
    port = free_port()
    exe = str(Path(sys.executable).with_name("scene-diffusion"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SCENE_DIFFUSION_TOKEN": "abc"}
    server = subprocess.Popen([exe, "serve", "--port", str(port), "--model", "testing/tiny-sd"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert "serving testing/tiny-sd on http://127.0.0.1:" in server.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = requests.get(f"{url}/v1/health", headers={"Authorization": "Bearer abc"}, timeout=2)
                break
            except requests.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        assert health.json()["model"] == "testing/tiny-sd"
        out = tmp_path / "o.png"
        result = subprocess.run([exe, "generate", "x", "-o", str(out), "--backend", url, *GEN], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert read_png_parameters(Image.open(out))["model"] == "testing/tiny-sd"
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    assert server.returncode is not None


def test_client_cancel_stops_the_job_on_the_server(tiny_engine):
    import threading

    from backend.client import RemoteEngine
    from backend.engine import GenerationRequest
    from backend.errors import Cancelled
    from backend.server.jobs import JobQueue

    queue = JobQueue(tiny_engine)
    with live_server(create_app(tiny_engine, queue=queue)) as url:
        cancel = threading.Event()
        steps_seen = []

        def on_progress(p):
            steps_seen.append(p.step)
            cancel.set()

        with pytest.raises(Cancelled):
            RemoteEngine(url).generate(GenerationRequest("x", width=64, height=64, steps=150), progress=on_progress,
                                       cancel=cancel)
        job = queue.get(next(iter(queue._jobs)))
        job.done.wait(10)
        assert job.state == "cancelled" and job.step < 150 and steps_seen
