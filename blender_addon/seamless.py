"""Seamless materials: a tileable albedo and its derived maps as one Principled BSDF material.

Main thread only (bpy data), all-or-nothing like ``materials``: what a failed call created is removed
again (pass one ``materials.Rollback`` to chain calls). The maps themselves come from
``core.maps`` (numpy), so the add-on and the CLI build the same material from the same pixels.

The node graph (``seamless_material``)::

    Texture Coordinate (Object | UV) -> Mapping (Scale <- Value "Scale") -> the four Image Textures
    Albedo    (sRGB)      -> Base Color
    Roughness (Non-Color) -> Roughness
    UV mapping:     Normal (Non-Color) -> Normal Map (tangent space, the active render UV map) -> Normal
    Object mapping: Height (Non-Color) -> Bump (Distance = relief / Scale)                      -> Normal

Why the relief changes with the mapping: a tangent-space normal map is only right where the texture
runs along the mesh's UV tangents. With Object coordinates (and box projection) the texture runs along
the object's axes instead, whatever the UVs are (or if there are none), and Blender's Bump node,
which differentiates the height where it is shaded, is right for any coordinates. Both nodes are
always in the graph with their images, so switching by hand is one link.

The relief matches between the two: the normal map encodes a height of 1 as ``strength`` texture
pixels, and the Bump node gets Distance = strength / (texture width x Scale) object units.
Displacement is left unwired (true displacement needs Cycles with adaptive subdivision); link the
Height texture to the Material Output's Displacement for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import bpy
import numpy as np

from . import materials
from .core.maps import DEFAULT_SETTINGS, MAP_NAMES, MapSettings, derive_maps

PROPERTY = "scene_diffusion_seamless"
"""Custom property on the material: JSON of its mapping, scale and map settings."""

MAPPINGS = ("OBJECT", "UV")
NON_COLOR = "Non-Color"
NODE_NAMES = {"albedo": "Albedo", "height": "Height", "normal": "Normal", "roughness": "Roughness"}


def new_map_image(name: str, kind: str, pixels: np.ndarray, params: dict | None = None, *,
                  pack: bool = True, save_dir: str | None = None,
                  rollback: materials.Rollback | None = None, png: bytes | None = None) -> bpy.types.Image:
    """One map as a Blender image (``materials.new_image``: parameters stored, packed or saved as PNG).

    Single-channel maps are stored as grey RGB. Every map but the albedo is switched to Non-Color:
    its values are data, not colours. That switch is made on the PNG-backed image, which Blender
    simply decodes again; on a generated image (``pack=False`` and no ``save_dir``) it would come out
    blank in Blender 5.0, so that is refused.
    """
    if kind not in MAP_NAMES:
        raise ValueError(f"unknown map {kind!r}: one of {', '.join(MAP_NAMES)}")
    if not pack and save_dir is None:
        raise ValueError("map images must be packed or saved: a generated image loses its pixels when its "
                         "colour space changes")
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    with materials._transaction(rollback) as rb:
        image = materials.new_image(name, pixels, params, pack=pack, save_dir=save_dir, rollback=rb, png=png)
        if kind != "albedo":
            image.colorspace_settings.name = NON_COLOR
        image["scene_diffusion_map"] = kind
        return image


def seamless_material(
    name: str,
    albedo_image: bpy.types.Image,
    height_image: bpy.types.Image,
    normal_image: bpy.types.Image,
    roughness_image: bpy.types.Image,
    *,
    mapping: str = "OBJECT",
    box_projection: bool = True,
    box_blend: float = 0.2,
    scale: float = 1.0,
    normal_strength: float = 2.0,
    rollback: materials.Rollback | None = None,
) -> bpy.types.Material:
    """A new material tiling the four maps (see the module's docstring for the graph).

    ``mapping``: "OBJECT" (object-space coordinates: the texture keeps its size across objects and
    needs no UVs) or "UV" (the active render UV map). ``box_projection`` (Object mapping only):
    project each image along the object's X, Y and Z axes, blended over ``box_blend`` at the
    corners, for meshes without good UVs. ``scale``: repeats per object unit (Object) or per UV
    square (UV), the Value node "Scale" driving the Mapping node. ``normal_strength``: the strength
    the normal map was made with (``core.maps.normal_map``), for the Bump node's distance. The
    non-colour images are set to Non-Color if they are not already.
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {', '.join(MAPPINGS)}, got {mapping!r}")
    if box_projection and mapping != "OBJECT":
        raise ValueError("box projection needs Object mapping (it projects along the object's axes, not the UVs)")
    if scale <= 0:
        raise ValueError(f"the scale must be positive, got {scale}")
    images = {"albedo": albedo_image, "height": height_image, "normal": normal_image, "roughness": roughness_image}
    for kind, image in images.items():
        if image is None:
            raise ValueError(f"the {kind} image is missing")
    with materials._transaction(rollback) as rb:
        for kind, image in images.items():
            if kind != "albedo" and image.colorspace_settings.name != NON_COLOR:
                previous = image.colorspace_settings.name
                image.colorspace_settings.name = NON_COLOR
                rb.on_failure(lambda image=image, previous=previous: setattr(image.colorspace_settings, "name",
                                                                             previous))
        material = rb.created(bpy.data.materials.new(name))
        _seamless_nodes(material, images, mapping, box_projection, box_blend, scale, normal_strength)
        material[materials.PROPERTY] = True
        material[PROPERTY] = json.dumps({"mapping": mapping, "box_projection": box_projection, "scale": scale,
                                         "normal_strength": normal_strength,
                                         "images": {k: image.name for k, image in images.items()}})
        return material


def _seamless_nodes(material, images: dict, mapping: str, box: bool, box_blend: float, scale: float,
                    normal_strength: float) -> None:
    tree, bsdf = materials._principled_tree(material)
    links = tree.links
    node = materials._node

    coordinates = node(tree, "ShaderNodeTexCoord", (-1300, 0), label="Texture Coordinate")
    scale_value = node(tree, "ShaderNodeValue", (-1300, -300), label="Scale")
    scale_value.name = "Scale"
    scale_value.outputs["Value"].default_value = scale
    mapper = node(tree, "ShaderNodeMapping", (-1080, 0), label="Mapping")
    mapper.name = "Mapping"
    mapper.vector_type = "POINT"
    links.new(coordinates.outputs["Object" if mapping == "OBJECT" else "UV"], mapper.inputs["Vector"])
    links.new(scale_value.outputs["Value"], mapper.inputs["Scale"])  # one number scales x, y and z alike

    textures = {}
    for row, kind in enumerate(("albedo", "roughness", "normal", "height")):
        texture = node(tree, "ShaderNodeTexImage", (-760, 360 - row * 300), label=NODE_NAMES[kind])
        texture.name = NODE_NAMES[kind]
        texture.image = images[kind]
        texture.extension = "REPEAT"
        if box:
            texture.projection, texture.projection_blend = "BOX", box_blend
        links.new(mapper.outputs["Vector"], texture.inputs["Vector"])
        textures[kind] = texture
    textures["height"].interpolation = "Cubic"  # the Bump node differentiates it: no facets from linear steps

    links.new(textures["albedo"].outputs["Color"], bsdf.inputs["Base Color"])
    links.new(textures["roughness"].outputs["Color"], bsdf.inputs["Roughness"])

    normal_map = node(tree, "ShaderNodeNormalMap", (-400, -300), label="Normal Map")
    normal_map.name = "Normal Map"
    normal_map.space = "TANGENT"
    links.new(textures["normal"].outputs["Color"], normal_map.inputs["Color"])

    # Bump distance in object units: `normal_strength` texture pixels, divided by the Scale (repeats per unit).
    width = max(1, images["height"].size[0])
    distance = node(tree, "ShaderNodeMath", (-560, -760), label="Relief / Scale")
    distance.name = "Relief"
    distance.operation = "DIVIDE"
    distance.inputs[0].default_value = normal_strength / width
    links.new(scale_value.outputs["Value"], distance.inputs[1])
    bump = node(tree, "ShaderNodeBump", (-400, -600), label="Bump")
    bump.name = "Bump"
    links.new(textures["height"].outputs["Color"], bump.inputs["Height"])
    links.new(distance.outputs["Value"], bump.inputs["Distance"])

    relief = normal_map if mapping == "UV" else bump
    links.new(relief.outputs["Normal"], bsdf.inputs["Normal"])


def build_seamless_material(
    name: str,
    maps: dict[str, np.ndarray],
    params: dict | None = None,
    *,
    map_params: dict[str, dict] | None = None,
    settings: MapSettings = DEFAULT_SETTINGS,
    objects: Iterable[bpy.types.Object] = (),
    mapping: str = "OBJECT",
    box_projection: bool = True,
    scale: float = 1.0,
    pack: bool = True,
    save_dir: str | None = None,
    rollback: materials.Rollback | None = None,
    pngs: dict[str, bytes] | None = None,
) -> bpy.types.Material:
    """The four map images, the material, and (when ``objects``) a new slot on each: one transaction.

    ``pngs``: the maps already encoded by ``encode_maps`` (in a worker thread), stored as they are.

    ``maps``: the arrays of ``core.maps.derive_maps``. Each image's parameters are the generation
    ``params`` plus ``map`` (its name) and ``map_settings`` (``settings.describe``), unless
    ``map_params`` gives a map's parameters as they are (the CLI: those read from its PNG files).
    Box projection applies with Object mapping only (ignored with UV). Objects that cannot take a
    material raise ValueError before anything is created.
    """
    objects = list(objects)
    materials._raise_problems(materials.material_problems(objects))
    with materials._transaction(rollback) as rb:
        images = {}
        for kind in MAP_NAMES:
            stored = map_parameters(kind, params, settings, map_params)
            images[kind] = new_map_image(f"{name} {kind.capitalize()}", kind, maps[kind], stored, pack=pack,
                                         save_dir=save_dir, rollback=rb, png=(pngs or {}).get(kind))
        material = seamless_material(name, images["albedo"], images["height"], images["normal"],
                                     images["roughness"], mapping=mapping,
                                     box_projection=box_projection and mapping == "OBJECT", scale=scale,
                                     normal_strength=settings.normal_strength, rollback=rb)
        if objects:
            materials.assign_material(objects, material, rollback=rb)
        return material


def map_parameters(kind: str, params: dict | None, settings: MapSettings, map_params: dict | None = None) -> dict:
    """What is stored with one map: the generation's parameters plus the map's name and settings (or, from
    the CLI, the parameters read back from that map's PNG)."""
    if map_params and kind in map_params:
        return map_params[kind]
    return dict(params or {}, map=kind, map_settings=settings.describe(kind))


def encode_maps(maps: dict[str, np.ndarray], params: dict | None, settings: MapSettings) -> dict[str, bytes]:
    """Each map as the PNG ``new_map_image`` would store. Touches no Blender data: runs in a worker thread."""
    from .core.png import encode_png

    pngs = {}
    for kind in MAP_NAMES:
        pixels = np.asarray(maps[kind])
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        pngs[kind] = encode_png(pixels, materials._png_text(map_parameters(kind, params, settings)))
    return pngs


def material_from_albedo(name: str, albedo: np.ndarray, params: dict | None = None, *,
                         settings: MapSettings = DEFAULT_SETTINGS, **options) -> bpy.types.Material:
    """``derive_maps`` then ``build_seamless_material``: what the operator does with a generated image."""
    return build_seamless_material(name, derive_maps(albedo, settings), params, settings=settings, **options)
