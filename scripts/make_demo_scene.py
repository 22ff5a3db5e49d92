"""Writes demo/scene.blend, the scene the README's main job textures: Suzanne (smooth, subdivided, with
its UV map), a camera framing her three-quarter on, a sun and a floor. Run again only to change it."""

from __future__ import annotations

import math
from pathlib import Path

import bpy

OUT = Path(__file__).resolve().parents[1] / "demo" / "scene.blend"


def main() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_monkey_add(location=(0, 0, 0))
    suzanne = bpy.context.active_object
    modifier = suzanne.modifiers.new("Subdivision", "SUBSURF")
    modifier.levels = modifier.render_levels = 1
    bpy.ops.object.modifier_apply(modifier=modifier.name)
    bpy.ops.object.shade_smooth()
    bpy.ops.mesh.primitive_plane_add(size=6, location=(0, 0, -1.0))
    bpy.context.active_object.name = "Floor"
    bpy.ops.object.camera_add(location=(2.6, -3.6, 1.3))
    camera = bpy.context.active_object
    direction = -camera.location
    camera.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    camera.data.lens = 55
    scene.camera = camera
    bpy.ops.object.light_add(type="SUN", rotation=(math.radians(40), 0, math.radians(30)))
    bpy.context.active_object.data.energy = 3.0
    scene.render.resolution_x = scene.render.resolution_y = 512
    OUT.parent.mkdir(exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(OUT), compress=True)
    print(OUT)


if __name__ == "__main__":
    main()
