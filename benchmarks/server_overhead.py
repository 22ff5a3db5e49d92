"""Time per image through the server against the same engine in-process: same model, size and seed.

A real uvicorn server on loopback serves the engine object that the in-process runs call directly, so
the difference is only the server's part: JSON and base64, PNG encoding, queueing, the long-polled
status and the image download. Runs alternate; the ratio of medians is printed.

    python benchmarks/server_overhead.py [--repeats 7] [--size 256] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default="testing/tiny-sd")
    args = parser.parse_args()

    from live_server import live_server

    from backend.client import RemoteEngine
    from backend.engine import GenerationRequest, create_engine
    from backend.images import png_bytes
    from backend.server.app import create_app

    engine = create_engine(args.model)
    request = GenerationRequest("a brick wall", width=args.size, height=args.size, steps=args.steps, seed=1)
    local_times, remote_times = [], []
    with live_server(create_app(engine)) as url:
        remote = RemoteEngine(url)
        for _ in range(args.repeats + 1):  # the first round warms both up
            t0 = time.perf_counter()
            result = engine.generate(request)[0]
            png_bytes(result.image, result.parameters)  # the CLI writes a PNG either way
            t1 = time.perf_counter()
            remote.generate(request)
            t2 = time.perf_counter()
            local_times.append(t1 - t0)
            remote_times.append(t2 - t1)
    local, served = statistics.median(local_times[1:]), statistics.median(remote_times[1:])
    print(f"{args.model} {args.size}x{args.size}, {args.steps} steps, {args.repeats} runs each")
    print(f"in-process: {local:.3f} s   through the server: {served:.3f} s   ratio {served / local:.3f} "
          f"(+{(served - local) * 1000:.0f} ms per image)")


if __name__ == "__main__":
    main()
