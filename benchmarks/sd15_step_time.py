"""Seconds per denoising step of a real-size SD 1.5 architecture (random weights, built from config).

Measures the whole pipeline at two step counts and takes the difference, so text encoding and VAE
decoding (paid once per image) are separated from the per-step cost; also times one UNet call with
classifier-free guidance (batch of 2) and one VAE decode directly.

    python benchmarks/sd15_step_time.py [--size 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from backend.engine import GenerationRequest, create_engine
    from backend.engine.architectures import sd15_pipeline

    t0 = time.perf_counter()
    engine = create_engine("sd15-random", pipeline=sd15_pipeline(), device=args.device, dtype=args.dtype)
    pipe = engine._pipeline("txt2img")
    build = time.perf_counter() - t0
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(f"SD 1.5-shaped UNet: {params:.0f} M parameters (built in {build:.1f} s); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {engine.device} {engine.info()['dtype']}, {args.size}x{args.size}")

    def run(steps: int):
        return lambda: engine.generate(GenerationRequest("a brick wall", width=args.size, height=args.size,
                                                         steps=steps, seed=1))

    run(1)()  # warm-up
    few, many = 2, 6
    t_few, t_many = timed(run(few), args.repeats), timed(run(many), args.repeats)
    per_step = (t_many - t_few) / (many - few)

    latent = args.size // 8
    sample = torch.randn(2, 4, latent, latent, device=engine.device, dtype=engine.dtype)
    context = torch.randn(2, 77, 768, device=engine.device, dtype=engine.dtype)
    with torch.inference_mode():
        unet_call = timed(lambda: pipe.unet(sample, 500, context), args.repeats)
        vae_decode = timed(lambda: pipe.vae.decode(sample[:1] / 0.18215), args.repeats)
    print(f"pipeline: {few} steps {t_few:.2f} s, {many} steps {t_many:.2f} s -> {per_step:.3f} s per step")
    print(f"one UNet call (batch 2, CFG): {unet_call:.3f} s; one VAE decode: {vae_decode:.3f} s")
    print(f"a 25-step image at this size: about {t_few + per_step * (25 - few):.1f} s")


if __name__ == "__main__":
    main()
