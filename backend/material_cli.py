"""`scene-diffusion material`: a seamless texture from a prompt, with its height, normal and roughness maps,
optionally set up as a material on objects of a .blend.

The maps come from the add-on's own code (`blender_addon.core.maps`, numpy only) and the material from
`blender_addon.seamless` in the bpy module, so the files and the material are exactly what the add-on's
Seamless Material button makes. Nothing is written unless everything succeeded: the four PNGs go to
temporary files first and are renamed together, after the .blend (with --apply) has been saved to a
temporary name beside its destination.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
from pathlib import Path

from .errors import InvalidRequest, SceneDiffusionError

FILES = {"albedo": "albedo.png", "height": "height.png", "normal": "normal.png", "roughness": "roughness.png"}


def add_material_parser(sub) -> None:
    from .cli import add_backend_options, add_model_options

    p = sub.add_parser(
        "material", help="a seamless material from a prompt: tileable albedo, height, normal and roughness maps",
        description="Generate a tileable texture (seamless on both axes) and derive height, normal (OpenGL, "
                    "green = +Y up) and roughness maps from it; every PNG carries its parameters. With --apply, "
                    "set them up as a material on objects of a .blend.")
    p.add_argument("prompt")
    p.add_argument("--out-dir", required=True, metavar="DIR",
                   help="folder for albedo.png, height.png, normal.png and roughness.png (created if missing; "
                        "files of those names are replaced)")
    p.add_argument("--size", type=int, default=512, help="width and height in pixels, a multiple of 8 (default 512)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale (default 7)")
    p.add_argument("--seed", type=int, default=-1, help="-1 (default) picks one; it is stored in the PNGs")
    p.add_argument("--sampler", default="", help="as for generate (default: the model's own)")

    maps = p.add_argument_group("maps")
    maps.add_argument("--normal-strength", type=float, default=2.0,
                      help="relief depth in texture pixels: how far white stands above black in the height (default 2)")
    maps.add_argument("--height-blur", type=float, default=1.0,
                      help="blur of the height before normals are taken, in pixels (default 1; 0: none)")
    maps.add_argument("--roughness-range", type=float, nargs=2, default=(0.3, 0.9), metavar=("LOW", "HIGH"),
                      help="roughness where the texture is even and where it is busiest (default 0.3 0.9)")

    scene = p.add_argument_group("material in a .blend")
    scene.add_argument("--apply", metavar="SCENE.blend", help="put the material on objects of this .blend")
    scene.add_argument("--objects", metavar="A,B", help="comma-separated object names (with --apply)")
    scene.add_argument("--out", metavar="OUT.blend",
                       help="where the .blend with the material is saved (with --apply; may be SCENE.blend itself)")
    scene.add_argument("--mapping", choices=["object", "uv"], default="object",
                       help="object: object coordinates, no UVs needed (default); uv: the active render UV map")
    scene.add_argument("--no-box-projection", dest="box_projection", action="store_false",
                       help="object mapping: plain planar projection instead of box projection along X, Y and Z")
    scene.add_argument("--scale", type=float, default=1.0,
                       help="repeats per object unit (object mapping) or per UV square (default 1)")
    scene.add_argument("--material-name", help="the material's name (default: from the prompt)")
    add_model_options(p)
    add_backend_options(p)
    p.set_defaults(run=run_material)


def _map_settings(args: argparse.Namespace):
    from blender_addon.core.maps import MapSettings

    low, high = args.roughness_range
    settings = MapSettings(height_blur=args.height_blur, normal_strength=args.normal_strength,
                           roughness_low=low, roughness_high=high)
    try:
        settings.validate()
    except ValueError as exc:
        raise InvalidRequest(str(exc).replace("the roughness range", "--roughness-range")) from None
    return settings


def _check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before Blender or a model is loaded."""
    if args.size < 64 or args.size % 8:
        lower = max(64, args.size - args.size % 8)
        raise InvalidRequest(f"--size must be a multiple of 8 of at least 64 (the latent grid), got {args.size}: "
                             f"use {lower} or {lower + 8}")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidRequest(f"--out-dir '{args.out_dir}' is a file, not a folder")
    if args.scale <= 0:
        raise InvalidRequest(f"--scale must be positive, got {args.scale:g}")
    if args.apply is None:
        for flag, value in (("--objects", args.objects), ("--out", args.out)):
            if value is not None:
                raise InvalidRequest(f"{flag} goes with --apply SCENE.blend: the scene to put the material in")
        return
    if not args.objects or not _object_names(args.objects):
        raise InvalidRequest("--apply needs --objects A,B: the objects to put the material on")
    if not args.out:
        raise InvalidRequest("--apply needs --out OUT.blend: where to save the scene with the material")
    out = Path(args.out)
    if out.suffix.lower() != ".blend":
        raise InvalidRequest(f"--out '{args.out}' must be a .blend file")
    if not out.parent.is_dir():
        raise InvalidRequest(f"the folder of --out '{out.parent}' does not exist")
    if out.is_dir():
        raise InvalidRequest(f"--out '{args.out}' is a folder")
    if not Path(args.apply).is_file():
        raise InvalidRequest(f"the scene '{args.apply}' does not exist")


def _object_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _scene_objects(args: argparse.Namespace) -> list:
    """The .blend opened (with the add-on) and the named objects, checked before any generation."""
    from .cli import open_blend

    bpy = open_blend(args.apply)
    from blender_addon import materials

    names = _object_names(args.objects)
    missing = [name for name in names if name not in bpy.data.objects]
    if missing:
        present = ", ".join(sorted(o.name for o in bpy.data.objects)) or "none"
        raise InvalidRequest(f"no object named {', '.join(repr(n) for n in missing)} in {args.apply} "
                             f"(objects: {present})")
    objects = [bpy.data.objects[name] for name in names]
    problems = materials.material_problems(objects)
    if problems:
        raise InvalidRequest("; ".join(f"{name} {why}" for name, why in problems.items()))
    return objects


def _build_request(args: argparse.Namespace):
    """The request for one image tiling on both axes, checked (no model yet)."""
    from .engine.request import GenerationRequest

    request = GenerationRequest(prompt=args.prompt, negative_prompt=args.negative_prompt, width=args.size,
                                height=args.size, steps=args.steps, guidance=args.guidance,
                                seed=None if args.seed == -1 else args.seed, seamless="xy", sampler=args.sampler)
    request.validate()
    from .engine.samplers import canonical

    canonical(args.sampler)
    return request


def _run_engine(args: argparse.Namespace, request):
    """The one seamless image, from the engine in-process or the server at --backend."""
    from .cli import ProgressBar, build_engine

    if args.backend:
        from .client import RemoteEngine

        engine = RemoteEngine(args.backend, token=args.token)
    else:
        engine = build_engine(args)
    bar = ProgressBar()
    try:
        (result,) = engine.generate(request, progress=bar, cancel=threading.Event())
    finally:
        bar.close()
    return result


def encode_maps(maps: dict, parameters: dict, settings) -> dict[str, bytes]:
    """{map name: PNG bytes}: each map with the generation's parameters plus `map` and `map_settings`."""
    from PIL import Image

    from .images import png_bytes

    encoded = {}
    for kind, pixels in maps.items():
        image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
        params = dict(parameters, map=kind, map_settings=settings.describe(kind))
        encoded[kind] = png_bytes(image, params)
    return encoded


def run_material(args: argparse.Namespace) -> int:
    import numpy as np

    from blender_addon.core.maps import NotTileable, check_tiles, derive_maps

    _check_arguments(args)
    settings = _map_settings(args)
    request = _build_request(args)
    objects = _scene_objects(args) if args.apply else []

    result = _run_engine(args, request)
    albedo = np.asarray(result.image.convert("RGB"))
    source = f"the backend at {args.backend}" if args.backend else f"the model {args.model}"
    try:
        score = check_tiles(albedo, source)
    except NotTileable as exc:
        raise SceneDiffusionError(f"{exc}; nothing was written") from None
    maps = derive_maps(albedo, settings)
    encoded = encode_maps(maps, result.parameters, settings)

    blend_tmp = None
    material = None
    try:
        if args.apply:
            material = _build_material(args, objects, encoded, settings)
            blend_tmp = _save_blend_beside(args.out)
        _commit_maps(Path(args.out_dir), encoded)
        if blend_tmp is not None:
            os.replace(blend_tmp / Path(args.out).name, args.out)
    finally:
        if blend_tmp is not None:
            shutil.rmtree(blend_tmp, ignore_errors=True)
    names = ", ".join(FILES.values())
    print(f"wrote {names} in {args.out_dir} ({args.size}x{args.size}, seed {result.seed}, tileability {score:.2f})")
    if material is not None:
        print(f"wrote {args.out}: material {material.name} on {', '.join(o.name for o in objects)}")
    return 0


def _build_material(args: argparse.Namespace, objects: list, encoded: dict[str, bytes], settings):
    """The material, in the opened .blend, from the PNGs about to be written (pixels and parameters alike)."""
    import json

    from blender_addon import seamless
    from blender_addon.core.png import decode_png

    maps, map_params = {}, {}
    for kind, png in encoded.items():
        pixels, text = decode_png(png)
        maps[kind] = pixels[..., 0] if pixels.shape[2] == 1 else pixels
        map_params[kind] = json.loads(text.get("scene_diffusion", "{}"))
        map_params[kind]["parameters"] = text.get("parameters", "")
    name = args.material_name or " ".join(args.prompt.split())[:40] or "Seamless"
    try:
        return seamless.build_seamless_material(
            name, maps, settings=settings, map_params=map_params, objects=objects, mapping=args.mapping.upper(),
            box_projection=args.box_projection, scale=args.scale)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _save_blend_beside(out: str) -> Path:
    """Save the open .blend into a new hidden folder beside `out` (same file system: the rename is atomic)."""
    import bpy

    folder = Path(tempfile.mkdtemp(prefix=".scene-diffusion-", dir=Path(out).resolve().parent))
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(folder / Path(out).name), copy=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _commit_maps(out_dir: Path, encoded: dict[str, bytes]) -> None:
    """All four files or none: each written and synced to a temporary file, then all renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o022)  # read it (only by setting it), and put it back at once
    os.umask(umask)
    partials: dict[str, str] = {}
    try:
        for kind, data in encoded.items():
            fd, partial = tempfile.mkstemp(prefix=f".{FILES[kind]}.", suffix=".part", dir=out_dir)
            partials[kind] = partial
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(partial, 0o666 & ~umask)  # as a plain open() would: mkstemp makes files private (0600)
        for kind, partial in partials.items():
            os.replace(partial, out_dir / FILES[kind])
    finally:
        for partial in partials.values():
            Path(partial).unlink(missing_ok=True)
