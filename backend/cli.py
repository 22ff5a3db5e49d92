"""`scene-diffusion`: the command line.

Every error a user can fix ends the command with one line on stderr saying what to do, exit status 2,
and no output file. Heavy libraries load only once the arguments and input images have been checked,
so a typo is reported in a fraction of a second rather than after a model load.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from . import __version__
from .errors import Cancelled, InvalidRequest, ModelUnavailable, SceneDiffusionError
from .images import write_atomic
from .material_cli import add_material_parser

EXIT_USAGE = 2
EXIT_CANCELLED = 130


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress bar and errors: no library banners or hub warnings."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


class ProgressBar:
    """A one-line progress bar on stderr, redrawn in place on a terminal and printed sparingly otherwise."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.started = time.perf_counter()
        self.tty = self.stream.isatty()
        self._last_line = ""

    def __call__(self, progress) -> None:
        done = max(0, min(progress.step, progress.total))
        filled = int(self.width * done / max(progress.total, 1))
        elapsed = time.perf_counter() - self.started
        rate = f"{elapsed / done:.2f} s/step" if done else ""
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] step {done}/{progress.total} {rate}"
        if self.tty:
            self.stream.write("\r" + line)
        elif done == progress.total or done == 1:
            self.stream.write(line + "\n")
        self._last_line = line
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._last_line:
            self.stream.write("\n")
            self.stream.flush()


# -- generate ------------------------------------------------------------------------------------


def add_model_options(parser: argparse.ArgumentParser) -> None:
    from .engine.models import DEFAULT_MODEL

    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"Hugging Face repo id, local diffusers folder, .safetensors file, or testing/tiny-sd "
                            f"(default: {DEFAULT_MODEL})")
    group.add_argument("--controlnet", help="depth ControlNet (repo id, folder or file) for --depth; "
                                            "default: the standard one for the model's family")
    group.add_argument("--config", dest="single_file_config",
                       help="for a single-file checkpoint: repo id or local folder with its configs and tokenizer")
    group.add_argument("--allow-pickle", action="store_true",
                       help="allow .ckpt/.bin pickle weights (they can run code: only for files you trust)")
    group.add_argument("--fallback-model",
                       help="if --model cannot be had (offline, not cached), say so and use this model instead")
    group.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default)")
    group.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                       help="weights precision (default: fp16 on GPUs, fp32 on CPU)")
    group.add_argument("--attention-slicing", action="store_true", help="less memory, a little slower")
    group.add_argument("--vae-tiling", action="store_true", help="decode large images in tiles (less memory)")
    group.add_argument("--cpu-offload", action="store_true",
                       help="keep model parts on the CPU until used (needs accelerate and a GPU)")


def _engine_options(args: argparse.Namespace) -> dict:
    return dict(
        controlnet=args.controlnet,
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        attention_slicing=args.attention_slicing,
        vae_tiling=args.vae_tiling,
        cpu_offload=args.cpu_offload,
        single_file_config=args.single_file_config,
    )


def build_engine(args: argparse.Namespace, err=None):
    """The engine for --model, or for --fallback-model (with a one-line note) when --model can't be had."""
    from .engine import create_engine
    from .engine.models import resolve

    err = err or sys.stderr
    resolve(args.model, allow_pickle=args.allow_pickle)  # fail fast on paths and formats, before imports
    try:
        return create_engine(args.model, **_engine_options(args))
    except ModelUnavailable as exc:
        if not args.fallback_model or args.fallback_model == args.model:
            raise
        first = str(exc).split(". ")[0]
        err.write(f"note: {first}; using {args.fallback_model} instead\n")
        return create_engine(args.fallback_model, **_engine_options(args))


def add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate images from a prompt (and optional init, mask, depth images)",
                       description="Generate images in-process. Every PNG carries its parameters.")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", required=True, help="output PNG; with --count N: OUT-1.png ... OUT-N.png")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale (default 7)")
    p.add_argument("--seed", type=int, default=-1, help="-1 (default) picks one; it is stored in the PNG")
    p.add_argument("--width", type=int, help="default: the init image's width, else 512")
    p.add_argument("--height", type=int, help="default: the init image's height, else 512")
    p.add_argument("--init", help="init image for image-to-image")
    p.add_argument("--strength", type=float, default=0.75, help="how much of --init is repainted, 0..1")
    p.add_argument("--mask", help="inpainting mask: white is repainted (needs --init)")
    p.add_argument("--depth", help="depth image (near = bright) to condition on, same size as the output")
    p.add_argument("--controlnet-scale", type=float, default=1.0, help="weight of the depth condition")
    p.add_argument("--seamless", choices=["x", "y", "xy"], help="make the image tile on x, y or both")
    p.add_argument("--count", type=int, default=1, help="images to generate (consecutive seeds)")
    p.add_argument("--sampler", default="", help="euler, euler_a, dpmpp_2m, dpmpp_2m_karras, ddim, unipc, ... "
                                                 "(default: the model's own)")
    add_model_options(p)
    add_backend_options(p)
    p.set_defaults(run=run_generate)


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--backend", metavar="URL",
                       help="run the job on a running `scene-diffusion serve` at URL instead of in-process")
    group.add_argument("--token", default=os.environ.get("SCENE_DIFFUSION_TOKEN"),
                       help="the server's token (default: $SCENE_DIFFUSION_TOKEN)")


def output_paths(output: str, n: int) -> list[Path]:
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise InvalidRequest(f"the output '{output}' must be a .png file")
    if not path.parent.is_dir():
        raise InvalidRequest(f"the output folder '{path.parent}' does not exist")
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{k}{path.suffix}") for k in range(1, n + 1)]


def build_request(args: argparse.Namespace):
    """The GenerationRequest for the arguments, with input images read and checked (no model yet)."""
    from .engine.request import GenerationRequest
    from .images import open_image

    init = open_image(args.init, "init image") if args.init else None
    mask = open_image(args.mask, "mask", mode="L") if args.mask else None
    depth = open_image(args.depth, "depth image", mode="L") if args.depth else None
    if mask is not None and init is None:
        raise InvalidRequest("--mask needs --init: the image to inpaint into")
    width = args.width or (init.width if init else 512)
    height = args.height or (init.height if init else 512)
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        width=width,
        height=height,
        steps=args.steps,
        guidance=args.guidance,
        seed=None if args.seed == -1 else args.seed,
        count=args.count,
        strength=args.strength,
        init_images=(init,) if init else (),
        masks=(mask,) if mask else (),
        depths=(depth,) if depth else (),
        controlnet_scale=args.controlnet_scale,
        seamless=args.seamless or "",
        sampler=args.sampler,
    )
    request.validate()
    from .engine.samplers import canonical

    canonical(args.sampler)
    return request


def run_generate(args: argparse.Namespace) -> int:
    from .images import png_bytes

    request = build_request(args)
    paths = output_paths(args.output, request.batch_size * request.count)
    if args.backend:
        from .client import RemoteEngine

        engine = RemoteEngine(args.backend, token=args.token)
    else:
        engine = build_engine(args)
    bar = ProgressBar()
    cancel = threading.Event()
    try:
        results = engine.generate(request, progress=bar, cancel=cancel)
    finally:
        bar.close()
    # Encode everything first: a failure while encoding leaves no file behind.
    encoded = [png_bytes(r.image, r.parameters) for r in results]
    for path, data in zip(paths, encoded, strict=True):
        write_atomic(path, data)
    seeds = ", ".join(str(r.seed) for r in results)
    print(f"wrote {', '.join(str(p) for p in paths)} (seed {seeds})")
    return 0


# -- restyle -------------------------------------------------------------------------------------


def add_restyle_parser(sub) -> None:
    p = sub.add_parser("restyle", help="re-imagine a .blend's camera render, held in place by its depth",
                       description="Render the scene's camera (with its depth) and restyle it by image-to-image, "
                                   "running the Blender add-on's own code in the bpy module.")
    p.add_argument("scene", help="the .blend file")
    p.add_argument("--prompt", required=True)
    p.add_argument("-o", "--output", required=True, help="output PNG (with its parameters inside)")
    p.add_argument("--camera", help="camera object name (default: the scene's active camera)")
    p.add_argument("--strength", type=float, default=0.6, help="how much of the render is repainted, 0..1")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--size", type=int, default=512, help="longest side; the render's aspect is kept")
    p.add_argument("--depth-weight", type=float, default=1.0, help="how strongly depth holds the composition")
    p.add_argument("--no-depth", action="store_true", help="plain image-to-image, without the depth condition")
    p.add_argument("--scene-engine", action="store_true",
                   help="render with the scene's engine and settings instead of a fast Workbench pass")
    add_model_options(p)
    add_backend_options(p)
    p.set_defaults(run=run_restyle)


def open_blend(path: str):
    """Blender as a module, with `path` opened and the add-on enabled; returns bpy."""
    if not Path(path).is_file():
        raise InvalidRequest(f"the scene '{path}' does not exist")
    try:
        import bpy
    except ImportError:
        raise InvalidRequest("this command needs Blender as a Python module: pip install bpy==5.0.1 "
                             "(make setup installs it)") from None
    import addon_utils

    try:
        bpy.ops.wm.open_mainfile(filepath=str(Path(path).resolve()), load_ui=False)
    except RuntimeError as exc:
        raise InvalidRequest(f"Blender cannot open '{path}': {str(exc).strip().splitlines()[-1]}") from None
    addon_utils.enable("blender_addon", default_set=False)
    return bpy


def run_restyle(args: argparse.Namespace) -> int:
    from blender_addon.core.clients import BackendError, OwnServerClient

    paths = output_paths(args.output, 1)
    if not 0.0 <= args.strength <= 1.0:
        raise InvalidRequest(f"--strength must be between 0 and 1, got {args.strength}")
    bpy = open_blend(args.scene)
    scene = bpy.context.scene
    camera = scene.camera
    if args.camera:
        camera = bpy.data.objects.get(args.camera)
        if camera is None or camera.type != "CAMERA":
            names = ", ".join(o.name for o in bpy.data.objects if o.type == "CAMERA") or "none"
            raise InvalidRequest(f"no camera named '{args.camera}' in {args.scene} (cameras: {names})")
    if camera is None:
        raise InvalidRequest(f"{args.scene} has no active camera: pass --camera NAME")
    settings = scene.scene_diffusion
    settings.prompt, settings.negative_prompt = args.prompt, args.negative_prompt
    settings.steps, settings.guidance, settings.strength = args.steps, args.guidance, args.strength
    settings.use_random_seed = args.seed == -1
    settings.seed = max(args.seed, 0)
    settings.use_depth, settings.controlnet_scale = not args.no_depth, args.depth_weight

    from blender_addon import capture, generation
    from blender_addon.core.jobs import JobRunner, Progress

    width, height = capture.output_size(scene, args.size, True, args.size, args.size)
    shot = capture.render_camera(scene, camera, width, height, fast=not args.scene_engine)
    job = generation.build_job(bpy.context, shot)
    if args.backend:
        backend = OwnServerClient(args.backend, args.token or "")
    else:
        from .inprocess import InProcessBackend

        backend = InProcessBackend(build_engine(args))
    bar = ProgressBar()
    runner = JobRunner(backend, job).start()
    try:
        while runner.running:
            for event in runner.poll_once():
                if isinstance(event, Progress):
                    bar(event)
            time.sleep(0.02)
    except KeyboardInterrupt:
        runner.cancel()
        runner.wait(30)
        raise
    finally:
        bar.close()
    finished = runner.finished
    if finished.state == "cancelled":
        raise Cancelled()
    if finished.state != "done":
        raise BackendError(finished.error)
    write_atomic(paths[0], finished.results[0].png)
    print(f"wrote {paths[0]} ({width}x{height}, camera {camera.name})")
    return 0


# -- texture -------------------------------------------------------------------------------------


def add_texture_parser(sub) -> None:
    p = sub.add_parser("texture", help="paint a mesh from several views and bake it onto its UV map",
                       description="Text-to-texture with the Blender add-on's own code in the bpy module: the "
                                   "object is painted from its camera and automatic views, the texture baked "
                                   "onto its UV map and set up as a material; the .blend is written to --out.")
    p.add_argument("scene", help="the .blend file")
    p.add_argument("--object", required=True, help="the mesh object to texture")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="the .blend to write (the input is never modified in place)")
    p.add_argument("--views", type=int, default=8, help="views in all: the camera, a ring, top and bottom")
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--view-size", type=int, default=512, help="size of each generated view")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--sharpness", type=float, default=4.0, help="how much less oblique views count")
    p.add_argument("--save-views", metavar="DIR",
                   help="write each view's generated image and a JSON of its camera into DIR")
    p.add_argument("--preview", metavar="PNG", help="also render the textured object from the first view")
    add_model_options(p)
    add_backend_options(p)
    p.set_defaults(run=run_texture)


def run_texture(args: argparse.Namespace) -> int:
    import json
    import random

    out = Path(args.out)
    if out.suffix.lower() != ".blend":
        raise InvalidRequest(f"--out '{args.out}' must be a .blend file")
    if not out.parent.is_dir():
        raise InvalidRequest(f"the folder of --out '{out.parent}' does not exist")
    if args.texture_size < 64 or args.texture_size > 8192:
        raise InvalidRequest(f"--texture-size must be between 64 and 8192, got {args.texture_size}")
    if args.view_size % 8 or args.view_size < 64:
        raise InvalidRequest(f"--view-size must be a multiple of 8 of at least 64, got {args.view_size}")
    if args.views < 1:
        raise InvalidRequest(f"--views must be at least 1, got {args.views}")
    if args.save_views:
        Path(args.save_views).mkdir(parents=True, exist_ok=True)
    bpy = open_blend(args.scene)
    obj = bpy.data.objects.get(args.object)
    if obj is None:
        meshes = ", ".join(o.name for o in bpy.data.objects if o.type == "MESH") or "none"
        raise InvalidRequest(f"no object named '{args.object}' in {args.scene} (meshes: {meshes})")

    from blender_addon import texturing
    from blender_addon.core.clients import BackendError, OwnServerClient
    from blender_addon.core.texture_job import TextureSettings

    problem = texturing.texture_problems(obj)
    if problem:
        raise InvalidRequest(problem)
    scene = bpy.context.scene
    first = texturing.camera_spec(scene.camera) if scene.camera is not None else None
    specs = texturing.automatic_views(obj, args.views, first)
    uv_map = texturing.ensure_uv_map(obj)
    seed = random.randint(0, 2**31 - 1) if args.seed == -1 else args.seed
    settings = TextureSettings(prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                               guidance=args.guidance, seed=seed, texture_size=args.texture_size,
                               sharpness=args.sharpness)
    if args.backend:
        backend = OwnServerClient(args.backend, args.token or "")
    else:
        from .inprocess import InProcessBackend

        backend = InProcessBackend(build_engine(args))
    job = texturing.TextureSceneJob(bpy.context, obj, settings, specs, args.view_size, uv_map,
                                    backend_source=backend).start()
    bar, stage = ProgressBar(), ""
    try:
        while (outcome := job.tick(bpy.context)) is None:
            progress = job.progress
            if progress is not None and progress.stage != stage:
                bar.close()
                stage = progress.stage
                print(stage, file=sys.stderr)
                bar = ProgressBar()
            if progress is not None:
                bar(progress)
            time.sleep(0.02)
    except KeyboardInterrupt:
        job.cancel()
        job.job.wait(60)
        raise
    finally:
        bar.close()
    if outcome.state == "cancelled":
        raise Cancelled()
    if outcome.state != "done":
        raise BackendError(outcome.message)
    finished = job.job.finished
    if args.save_views:
        from blender_addon.core.png import encode_png

        for k, pixels, text in finished.view_images:
            spec = specs[k]
            write_atomic(Path(args.save_views) / f"view-{k + 1:02d}.png", encode_png(pixels, {"parameters": text}))
            write_atomic(Path(args.save_views) / f"view-{k + 1:02d}.json",
                         json.dumps(spec.to_json(args.view_size, args.view_size), indent=1).encode())
    save_blend(bpy, out)
    print(f"wrote {out}: {outcome.message}")
    if args.preview:
        from blender_addon import capture
        from blender_addon.core.png import encode_png

        shot = None
        if scene.camera is not None:  # a quick Cycles render: the scene's own engine may be Eevee, slow headless
            engine, samples = scene.render.engine, scene.cycles.samples
            scene.render.engine, scene.cycles.samples = "CYCLES", 16
            try:
                shot = capture.render_camera(scene, scene.camera, 512, 512, fast=False)
            finally:
                scene.render.engine, scene.cycles.samples = engine, samples
        if shot is not None:
            write_atomic(args.preview, encode_png(shot.color))
            print(f"wrote {args.preview}")
    return 0


def save_blend(bpy, out: Path) -> None:
    """Save the open file as `out` atomically: a temporary name in the same folder, then renamed."""
    import os

    partial = out.with_name(f".{out.stem}.partial.blend")
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(partial), copy=True, compress=True)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


# -- serve ---------------------------------------------------------------------------------------


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the model over HTTP: /v1 jobs and the Automatic1111 API",
                       description="Run the generation server. The model loads once, before the port opens.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--token", default=os.environ.get("SCENE_DIFFUSION_TOKEN"),
                   help="clients must send it (Bearer, or Basic password); default: $SCENE_DIFFUSION_TOKEN")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback address without a token (only behind an authenticating proxy)")
    p.add_argument("--max-queue", type=int, default=16, help="jobs waiting at most; more get 429")
    p.add_argument("--max-size", type=int, default=2048, help="largest width or height accepted")
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--max-count", type=int, default=8)
    add_model_options(p)
    p.set_defaults(run=run_serve)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise InvalidRequest(f"cannot listen on {host}:{port}: {exc.strerror}: "
                                 "is another server running there? pick another --port") from None


def run_serve(args: argparse.Namespace) -> int:
    if not is_loopback(args.host) and not args.token and not args.insecure:
        raise InvalidRequest(
            f"refusing to listen on {args.host} without --token: anyone who can reach this machine could use it. "
            "Pass --token (or set SCENE_DIFFUSION_TOKEN), or --insecure if a proxy in front authenticates"
        )
    if args.max_queue < 1:
        raise InvalidRequest("--max-queue must be at least 1")
    check_port_free(args.host, args.port)
    import uvicorn

    from .server.app import Limits, create_app

    engine = build_engine(args)
    limits = Limits(max_width=args.max_size, max_height=args.max_size, max_steps=args.max_steps,
                    max_count=args.max_count, max_queue=args.max_queue)
    app = create_app(engine, token=args.token, limits=limits)
    auth = "token required" if args.token else "no token"
    print(f"serving {engine.model_id} on http://{args.host}:{args.port} ({auth}; API docs at /docs)", flush=True)
    uvicorn.run(app, host=args.host.strip("[]"), port=args.port, log_level="warning")
    return 0


# -- download ------------------------------------------------------------------------------------


def add_download_parser(sub) -> None:
    from .engine.models import DEFAULT_MODEL

    p = sub.add_parser("download", help="fetch a model into the Hugging Face cache, for offline use later")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"hub repo id (default: {DEFAULT_MODEL})")
    p.add_argument("--depth", action="store_true", help="also fetch the depth ControlNet of the model's family")
    p.set_defaults(run=run_download)


def run_download(args: argparse.Namespace) -> int:
    from .engine.models import download

    for folder in download(args.model, depth=args.depth):
        print(folder)
    return 0


# -- main ----------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scene-diffusion", description="Diffusion for Blender scenes.")
    parser.add_argument("--version", action="version", version=f"scene-diffusion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate_parser(sub)
    add_restyle_parser(sub)
    add_texture_parser(sub)
    add_material_parser(sub)
    add_serve_parser(sub)
    add_download_parser(sub)
    return parser


def _addon_errors() -> tuple[type[BaseException], ...]:
    """The add-on's user-facing errors (backend unreachable, capture problems), when it is loaded."""
    errors = []
    for module, name in (("blender_addon.core.clients", "BackendError"), ("blender_addon.capture", "CaptureError"),
                         ("blender_addon.core.local_server", "LocalServerError")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = make_parser().parse_args(argv)
    try:
        return args.run(args)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("\ncancelled: nothing was written", file=sys.stderr)
        return EXIT_CANCELLED
    except SceneDiffusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _addon_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a bug, not a user error: one line, the traceback on request
        if os.environ.get("SCENE_DIFFUSION_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set SCENE_DIFFUSION_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
