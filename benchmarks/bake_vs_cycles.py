"""Projection and baking alone (no generation): 8 views into a 2048² texture on a ~100k-triangle mesh,
against Blender's own Cycles bake of a texture of the same size on the same mesh, in one run.

Ours: rasterise the UV map's texels (positions, normals), weigh and sample each view (occlusion against
its Z pass, facing, depth edges, border), blend, fill and pad: `blender_addon.core.texturing`, numpy.
Cycles: `bpy.ops.object.bake(type="EMIT")` into a 2048² image, 1 sample, on the CPU.
The views' Z/UV passes are rendered beforehand and timed apart (they are Blender renders either way).

    python benchmarks/bake_vs_cycles.py [--size 2048] [--views 8] [--segments 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--segments", type=int, default=256)
    parser.add_argument("--view-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import bpy  # noqa: I001 (first: it makes Blender's own modules, addon_utils, importable)
    import addon_utils
    import numpy as np

    from blender_addon import texturing
    from blender_addon.core import texturing as tx

    bpy.ops.wm.read_factory_settings(use_empty=False)
    bpy.data.objects.remove(bpy.data.objects["Cube"])
    bpy.ops.mesh.primitive_uv_sphere_add(segments=args.segments, ring_count=args.segments * 25 // 32, radius=1.0)
    obj = bpy.context.active_object
    addon_utils.enable("blender_addon")
    obj.data.calc_loop_triangles()
    triangles = len(obj.data.loop_triangles)
    scene = bpy.context.scene

    uv_map = texturing.ensure_uv_map(obj)
    t0 = time.perf_counter()
    specs = texturing.automatic_views(obj, args.views, texturing.camera_spec(scene.camera))
    passes = [texturing.render_passes(scene, obj, spec, args.view_size) for spec in specs]
    render_seconds = time.perf_counter() - t0
    mesh = texturing.mesh_arrays(obj, uv_map)
    rng = np.random.default_rng(0)
    images = [rng.random((args.view_size, args.view_size, 3), dtype=np.float32) for _ in passes]

    def ours() -> None:  # what TextureJob does with the views' results: views in parallel, then blended
        surface = tx.rasterize(*mesh, args.size)
        accumulator = tx.TextureAccumulator(surface)

        def one_view(pair):
            view_passes, image = pair
            return tx.contribution(image, *tx.view_weights(view_passes.view, surface))

        for part in tx.parallel_map(one_view, list(zip(passes, images, strict=True))):
            accumulator.add_contribution(part)
        accumulator.texture()

    image = bpy.data.images.new("bake", args.size, args.size)
    material = bpy.data.materials.new("bake")
    tree = material.node_tree
    node = tree.nodes.new("ShaderNodeTexImage")
    node.image = image
    tree.nodes.active = node
    obj.data.materials.append(material)
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples = "CPU", 1
    bpy.ops.object.select_all(action="DESELECT")
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj

    def cycles() -> None:
        bpy.ops.object.bake(type="EMIT", margin=4, use_clear=True)

    ours_times, cycles_times = [], []
    for _ in range(args.repeats + 1):  # alternate; the first round warms both up
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        cycles()
        t2 = time.perf_counter()
        ours_times.append(t1 - t0)
        cycles_times.append(t2 - t1)
    mine, theirs = statistics.median(ours_times[1:]), statistics.median(cycles_times[1:])
    print(f"{triangles} triangles, {args.size}² texture, {args.views} views of {args.view_size}² "
          f"(their Z/UV passes rendered in {render_seconds:.1f} s, apart)")
    print(f"projection + baking (numpy): {mine:.2f} s   Cycles EMIT bake: {theirs:.2f} s   ratio {mine / theirs:.2f}")


if __name__ == "__main__":
    main()
