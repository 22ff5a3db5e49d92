"""Measuring a texture against geometry (with the pattern engine): reprojection PSNR, coverage, seams.

Shared by the texturing tests and benchmarks/texture_quality.py.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np


def texture_pixels(image) -> np.ndarray:
    width, height = image.size
    flat = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(flat)
    return flat.reshape(height, width, 4)[::-1, :, :3].copy()


def render_emission(scene, obj, image, uv_map: str, spec, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The textured object alone, emission only, through `spec`: (rgb (size, size, 3) 0..1, seen mask)."""
    import bpy

    from blender_addon import texturing
    from blender_addon.core.exr import find_channel, read_exr

    material = bpy.data.materials.new("Emission check")
    tree = material.node_tree
    tree.nodes.clear()
    uv = tree.nodes.new("ShaderNodeUVMap")
    uv.uv_map = uv_map
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.image, tex.interpolation = image, "Linear"
    emission = tree.nodes.new("ShaderNodeEmission")
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(uv.outputs["UV"], tex.inputs["Vector"])
    tree.links.new(tex.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], out.inputs["Surface"])
    saved_materials = [slot.material for slot in obj.material_slots]
    view_transform = scene.view_settings.view_transform
    data = bpy.data.cameras.new("check")
    camera = bpy.data.objects.new("check", data)
    try:
        if not obj.material_slots:
            obj.data.materials.append(material)
        for slot in obj.material_slots:
            slot.material = material
        scene.view_settings.view_transform = "Standard"
        camera.matrix_world = spec.matrix_world
        data.lens, data.sensor_width = spec.lens, spec.sensor_width
        scene.collection.objects.link(camera)
        with tempfile.TemporaryDirectory() as folder, texturing._isolated_render(scene, obj, camera, size):
            path = os.path.join(folder, "check.exr")
            scene.render.filepath = path
            bpy.ops.render.render(write_still=True, scene=scene.name)
            channels = read_exr(path)
        rgb = np.stack([find_channel(channels, f"Combined.{c}") for c in "RGB"], axis=-1)
        seen = find_channel(channels, "Depth.Z", "Z") < 1e9
        # Combined in the EXR is scene-linear: encode with the sRGB curve to compare with 8-bit images
        srgb = np.where(rgb <= 0.0031308, rgb * 12.92, 1.055 * np.power(np.clip(rgb, 0, None), 1 / 2.4) - 0.055)
        return np.clip(srgb, 0, 1), seen
    finally:
        for slot, original in zip(obj.material_slots, saved_materials, strict=False):
            slot.material = original
        scene.view_settings.view_transform = view_transform
        bpy.data.objects.remove(camera)
        bpy.data.cameras.remove(data)
        bpy.data.materials.remove(material)


def erode(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    for _ in range(steps):
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        mask = inner
    return mask


def seam_ratio(obj, uv_map: str, texture: np.ndarray, painted: np.ndarray) -> tuple[float, float, float]:
    """(ratio, seam difference, interior difference): colour difference across UV seams (the same surface
    point looked up on both sides) against the difference between neighbouring painted texels."""
    from blender_addon.core.texturing import sample

    mesh = obj.data
    loops = len(mesh.loops)
    corner_vert = np.empty(loops, np.int32)
    mesh.loops.foreach_get("vertex_index", corner_vert)
    uv = np.empty(loops * 2, np.float32)
    mesh.uv_layers[uv_map].uv.foreach_get("vector", uv)
    uv = uv.reshape(-1, 2)
    start = np.empty(len(mesh.polygons), np.int32)
    total = np.empty(len(mesh.polygons), np.int32)
    mesh.polygons.foreach_get("loop_start", start)
    mesh.polygons.foreach_get("loop_total", total)
    face = np.repeat(np.arange(len(total)), total)
    position = np.arange(loops) - np.repeat(start, total)
    nxt = np.repeat(start, total) + (position + 1) % np.repeat(total, total)
    a, b = corner_vert, corner_vert[nxt]
    key = np.minimum(a, b).astype(np.int64) * (len(mesh.vertices) + 1) + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    pairs = np.nonzero(key_sorted[1:] == key_sorted[:-1])[0]
    first, second = order[pairs], order[pairs + 1]
    same_direction = a[first] == a[second]
    # UVs of the edge's two endpoints, on each side, in the same vertex order
    uv_a0, uv_a1 = uv[first], uv[nxt[first]]
    uv_b0 = np.where(same_direction[:, None], uv[second], uv[nxt[second]])
    uv_b1 = np.where(same_direction[:, None], uv[nxt[second]], uv[second])
    seam = (np.abs(uv_a0 - uv_b0).max(axis=1) > 1e-5) | (np.abs(uv_a1 - uv_b1).max(axis=1) > 1e-5)
    seam &= face[first] != face[second]
    size = texture.shape[0]

    def lookup(points: np.ndarray) -> np.ndarray:
        return sample(texture, np.stack([points[:, 0] * size, (1 - points[:, 1]) * size], axis=1))

    diffs = []
    for t in (0.25, 0.5, 0.75):
        pa = uv_a0[seam] * (1 - t) + uv_a1[seam] * t
        pb = uv_b0[seam] * (1 - t) + uv_b1[seam] * t
        diffs.append(np.abs(lookup(pa) - lookup(pb)).mean(axis=1))
    seam_difference = float(np.concatenate(diffs).mean()) if seam.any() else 0.0
    both_x = painted[:, 1:] & painted[:, :-1]
    both_y = painted[1:] & painted[:-1]
    interior = np.concatenate([np.abs(texture[:, 1:] - texture[:, :-1])[both_x].mean(axis=1),
                               np.abs(texture[1:] - texture[:-1])[both_y].mean(axis=1)])
    interior_difference = float(interior.mean())
    return seam_difference / max(interior_difference, 1e-9), seam_difference, interior_difference
