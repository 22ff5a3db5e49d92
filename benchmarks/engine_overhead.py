"""The engine's own cost: engine.generate against a bare diffusers pipeline call, same model and parameters.

Both run in this process, interleaved, on the same pipeline object, with the same seed; the ratio of
medians is what the engine adds (validation, per-image inputs, the per-step callback with its preview,
the sampler swap, parameters for the metadata). Pass --real-size to add an SD 1.5-shaped model with
random weights (slow on CPU).

    python benchmarks/engine_overhead.py [--repeats 5] [--real-size]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def measure(engine, pipe, size: int, steps: int, repeats: int) -> tuple[float, float]:
    import torch

    from backend.engine import GenerationRequest
    from backend.images import png_bytes

    request = GenerationRequest("a brick wall", width=size, height=size, steps=steps, seed=1, guidance=7.0)
    bare_times, engine_times = [], []
    previews = []
    for _ in range(repeats + 1):  # the first round warms up both
        t0 = time.perf_counter()
        pipe("a brick wall", negative_prompt="", width=size, height=size, num_inference_steps=steps,
             guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(1), output_type="pil")
        t1 = time.perf_counter()
        results = engine.generate(request, progress=previews.append)
        png_bytes(results[0].image, results[0].parameters)
        t2 = time.perf_counter()
        bare_times.append(t1 - t0)
        engine_times.append(t2 - t1)
    return statistics.median(bare_times[1:]), statistics.median(engine_times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--real-size", action="store_true", help="also an SD 1.5-shaped model (random weights)")
    args = parser.parse_args()

    import torch

    from backend.engine import create_engine
    from backend.engine.architectures import sd15_pipeline

    cases = [("testing/tiny-sd", create_engine("testing/tiny-sd"), 256, 20)]
    if args.real_size:
        cases.append(("sd15-shaped, random", create_engine("sd15-random", pipeline=sd15_pipeline()), 256, 4))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {cases[0][1].device}")
    print(f"{'model':24} {'size':>5} {'steps':>5} {'bare (s)':>9} {'engine (s)':>10} {'ratio':>6}")
    for name, engine, size, steps in cases:
        pipe = engine._pipeline("txt2img")
        bare, ours = measure(engine, pipe, size, steps, args.repeats)
        print(f"{name:24} {size:>5} {steps:>5} {bare:>9.3f} {ours:>10.3f} {ours / bare:>6.3f}")


if __name__ == "__main__":
    main()
