"""Text-to-texture geometry measured with the pattern engine (smooth colour fields, no model): Suzanne,
textured from the default camera plus automatic views.

- reprojection PSNR: the textured mesh rendered from the first view (emission only) against the image
  generated for that view, on the pixels where Suzanne is seen (1 px in from the silhouette);
- coverage: the share of the UV map's texels that some view painted (Suzanne is closed);
- seam ratio: colour difference across UV seams (the same surface point looked up on both sides)
  over the difference between neighbouring painted texels.

    python benchmarks/texture_quality.py [--views 1 8] [--texture-size 1024] [--view-size 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def suzanne_scene():
    import addon_utils
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=False)
    bpy.data.objects.remove(bpy.data.objects["Cube"])
    bpy.ops.mesh.primitive_monkey_add()
    obj = bpy.context.active_object
    camera = bpy.context.scene.camera
    camera.location = (0.0, -4.2, 0.9)
    camera.rotation_euler = (1.39, 0.0, 0.0)
    addon_utils.enable("blender_addon")
    return bpy, obj


def measure(views: int, texture_size: int, view_size: int) -> dict:
    import texture_metrics as tm

    from backend.engine import create_engine
    from backend.inprocess import InProcessBackend
    from blender_addon import texturing
    from blender_addon.core.texture_job import TextureSettings
    from blender_addon.core.texturing import psnr

    bpy, obj = suzanne_scene()
    scene = bpy.context.scene
    uv_map = texturing.ensure_uv_map(obj)
    specs = texturing.automatic_views(obj, views, texturing.camera_spec(scene.camera))
    backend = InProcessBackend(create_engine("testing/pattern"))
    t0 = time.perf_counter()
    job = texturing.TextureSceneJob(bpy.context, obj, TextureSettings(prompt="x", steps=2, seed=3,
                                                                     texture_size=texture_size),
                                    specs, view_size, uv_map, backend_source=backend).start()
    while (outcome := job.tick(bpy.context)) is None:
        time.sleep(0.01)
    seconds = time.perf_counter() - t0
    finished = job.job.finished
    rgb, seen = tm.render_emission(scene, obj, outcome.images[0], uv_map, specs[0], view_size)
    first = finished.view_images[0][1] / 255.0
    ratio, seam, interior = tm.seam_ratio(obj, uv_map, finished.texture, finished.painted)
    backend.close()
    return {"views": views, "psnr": psnr(rgb, first, tm.erode(seen, 1)), "coverage": finished.coverage,
            "seam_ratio": ratio, "seam": seam, "interior": interior, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--view-size", type=int, default=512)
    args = parser.parse_args()
    print(f"Suzanne, {args.texture_size}² texture, {args.view_size}² views, pattern engine")
    print(f"{'views':>5} {'PSNR (dB)':>10} {'coverage':>9} {'seam ratio':>10} {'seam':>7} {'interior':>8} {'time':>6}")
    for views in args.views:
        r = measure(views, args.texture_size, args.view_size)
        print(f"{r['views']:>5} {r['psnr']:>10.2f} {r['coverage']:>9.1%} {r['seam_ratio']:>10.2f} {r['seam']:>7.4f} "
              f"{r['interior']:>8.4f} {r['seconds']:>5.1f}s")


if __name__ == "__main__":
    main()
