"""The material maker: a seamless texture from the panel's prompt, set up with derived maps as a new material
on the selected objects.

The job is the panel's text-to-image job (prompt, negative prompt, model, steps, guidance, seed) at the
operator's size with seamless tiling on both axes, run like Generate: modal from the UI (Blender stays
responsive, Esc cancels), a blocking loop from scripts. Nothing enters the scene until the result is
back, tiles, and its maps, images and material are all made; then they go in as one undo step.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty

from . import generation, session
from .core.clients import BackendError
from .core.local_server import LocalServerError
from .core.maps import MapSettings, NotTileable, check_tiles, derive_maps
from .operators import JobOperator

ACTION = "MATERIAL"


def material_targets(context) -> tuple[list, dict[str, str]]:
    """(selected objects that can take a material, {name: why not} for the others)."""
    from . import materials

    selected = list(getattr(context, "selected_objects", None) or ())
    problems = materials.material_problems(selected)
    return [o for o in selected if o.name not in problems], problems


@dataclasses.dataclass(frozen=True)
class MaterialOptions:
    settings: MapSettings
    mapping: str = "OBJECT"
    box_projection: bool = True
    scale: float = 1.0


class MaterialJob(generation.SceneJob):
    """A SceneJob whose result becomes a seamless material on `targets` (object names) instead of an image."""

    def __init__(self, context, job, targets: list[str], options: MaterialOptions, skipped: dict[str, str]) -> None:
        super().__init__(context, job, ACTION)
        self.targets = targets
        self.options = options
        self.skipped = skipped
        self.material = None

    def _apply(self, context, scene, event):
        """The result goes into a material (with its derived maps) rather than an image alone. The tiling
        check, the maps and their PNGs are computed in a worker thread; a later tick builds the material."""
        from . import seamless

        result = event.results[0]
        backend = self._backend_name(context)
        params = json.loads(result.text.get("scene_diffusion", "{}") or "{}")
        params.setdefault("parameters", result.text.get("parameters", ""))
        settings = self.options.settings

        def prepare():
            try:
                pixels = result.pixels[..., :3]
                check_tiles(pixels, backend)
                maps = derive_maps(pixels, settings)
                self._prepared = (maps, params, seamless.encode_maps(maps, params, settings))
            except Exception as exc:  # reported by the next tick
                self._prepared = exc

        self._prepared = None
        self._scene_name = scene.name
        self._worker = threading.Thread(target=prepare, name="scene-diffusion-maps", daemon=True)
        self._worker.start()
        session.set_active_job(self)  # still busy until the material is in
        return None

    def tick(self, context):
        worker = getattr(self, "_worker", None)
        if worker is None:
            return super().tick(context)
        if worker.is_alive():
            return None
        self._worker = None
        session.set_active_job(None)
        self.outcome = self._build(context)
        return self.outcome

    def _build(self, context):
        prepared = self._prepared
        if isinstance(prepared, NotTileable):
            return generation.Outcome("failed", f"Material not made: {prepared}; nothing was added")
        if isinstance(prepared, Exception):
            return generation.Outcome("failed", f"Could not make the material: {prepared}")
        scene = bpy.data.scenes.get(self._scene_name)
        if scene is None:
            return generation.Outcome("failed", "The scene the job was started from is gone: nothing was added")
        maps, params, pngs = prepared
        try:
            self.material, albedo = apply_material_maps(scene, maps, params, pngs, self.targets, self.options)
        except Exception as exc:  # each step has already taken back its own work
            return generation.Outcome("failed", f"Could not add the material to the scene: {exc}")
        seconds = time.perf_counter() - self.started
        message = f"Made material {self.material.name} on {len(self.targets)} object(s) in {seconds:.1f} s"
        if self.skipped:
            message += "; skipped " + ", ".join(f"{name} ({why})" for name, why in self.skipped.items())
        return generation.Outcome("done", message, [albedo])

    @staticmethod
    def _backend_name(context) -> str:
        from .preferences import get_preferences

        if session.override_backend:
            return "the backend"
        preferences = get_preferences(context)
        if preferences is not None and preferences.backend == "REMOTE":
            return f"the backend at {preferences.url}"
        return "the local backend"


def apply_material_result(scene, result, targets: list[str], options: MaterialOptions, backend: str = "the backend"):
    """(material, albedo image): the result checked for tiling, its maps, the material on the objects that
    are still there, and a history entry for the albedo. All or nothing. (The operator does the same with the
    numpy part in a worker thread.)"""
    pixels = result.pixels[..., :3]
    check_tiles(pixels, backend)
    params = json.loads(result.text.get("scene_diffusion", "{}") or "{}")
    params.setdefault("parameters", result.text.get("parameters", ""))
    return apply_material_maps(scene, derive_maps(pixels, options.settings), params, None, targets, options)


def apply_material_maps(scene, maps, params: dict, pngs, targets: list[str], options: MaterialOptions):
    """(material, albedo image) from derived maps (and their PNGs when already encoded)."""
    from . import materials, seamless

    objects = [obj for name in targets if (obj := bpy.data.objects.get(name)) is not None]
    if not objects:
        raise ValueError("the objects selected when the job started are gone")
    settings = scene.scene_diffusion
    save_dir = generation.storage_folder(scene)
    name = " ".join(str(params.get("prompt") or settings.prompt).split())[:40] or "Seamless"
    with materials.Rollback() as rollback:
        material = seamless.build_seamless_material(
            name, maps, params, settings=options.settings, objects=objects, mapping=options.mapping,
            box_projection=options.box_projection, scale=options.scale, pack=save_dir is None, save_dir=save_dir,
            rollback=rollback, pngs=pngs)
    albedo = next(n.image for n in material.node_tree.nodes if n.name == seamless.NODE_NAMES["albedo"])
    generation.add_history(scene, albedo, params, ACTION)
    return material, albedo


class SCENEDIFF_OT_seamless_material(JobOperator, bpy.types.Operator):
    bl_idname = "scene_diffusion.seamless_material"
    bl_label = "Seamless Material"
    bl_description = ("Generate a tileable texture from the prompt, derive height, normal and roughness maps, and "
                      "add it as a new material on the selected objects (their materials are kept); Esc cancels")
    bl_options = {"REGISTER", "UNDO"}

    size: IntProperty(name="Size", default=512, min=64, max=2048, step=8,
                      description="Texture width and height in pixels (rounded down to a multiple of 8)")
    normal_strength: FloatProperty(name="Normal Strength", default=2.0, min=0.0, soft_max=20.0,
                                   description="Relief depth in texture pixels: how far the brightest part "
                                               "stands above the darkest")
    height_blur: FloatProperty(name="Height Smoothing", default=1.0, min=0.0, soft_max=8.0, subtype="PIXEL",
                               description="Blur of the height (in pixels) before the normals are taken: "
                                           "keeps pixel noise out of the relief")
    roughness_low: FloatProperty(name="Roughness Min", default=0.3, min=0.0, max=1.0, subtype="FACTOR",
                                 description="Roughness where the texture is even")
    roughness_high: FloatProperty(name="Roughness Max", default=0.9, min=0.0, max=1.0, subtype="FACTOR",
                                  description="Roughness where the texture is busiest")
    mapping: EnumProperty(
        name="Mapping",
        items=[("OBJECT", "Object", "Object coordinates: no UVs needed, same texture size on every object"),
               ("UV", "UV", "The mesh's active render UV map (uses the normal map in tangent space)")],
        default="OBJECT",
    )
    box_projection: BoolProperty(name="Box Projection", default=True,
                                 description="Object mapping: project along the object's X, Y and Z axes, blended "
                                             "at the corners (for meshes without good UVs)")
    scale: FloatProperty(name="Scale", default=1.0, min=0.001, soft_max=100.0,
                         description="Repeats per object unit (Object) or per UV square (UV)")

    @classmethod
    def poll(cls, context):
        if cls._settings_if_ready(context, "Type a prompt first: it describes the material") is None:
            return False
        targets, _ = material_targets(context)
        if not targets:
            cls.poll_message_set("Select the objects for the material (meshes, curves or text, in Object Mode)")
            return False
        return True

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "size")
        layout.prop(self, "normal_strength")
        layout.prop(self, "height_blur")
        col = layout.column(align=True)
        col.prop(self, "roughness_low")
        col.prop(self, "roughness_high")
        layout.prop(self, "mapping")
        row = layout.row()
        row.enabled = self.mapping == "OBJECT"
        row.prop(self, "box_projection")
        layout.prop(self, "scale")

    def _options(self) -> MaterialOptions:
        low, high = sorted((self.roughness_low, self.roughness_high))
        settings = MapSettings(height_blur=self.height_blur, normal_strength=self.normal_strength,
                               roughness_low=low, roughness_high=high)
        return MaterialOptions(settings=settings, mapping=self.mapping,
                               box_projection=self.box_projection and self.mapping == "OBJECT", scale=self.scale)

    def _start(self, context) -> bool:
        targets, skipped = material_targets(context)
        if not targets:
            self.report({"ERROR"}, "Select the objects for the material (meshes, curves or text, in Object Mode)")
            return False
        size = self.size - self.size % 8
        try:
            options = self._options()
            options.settings.validate()
            job = dataclasses.replace(generation.build_job(context), width=size, height=size, seamless="xy",
                                      count=1)
            self._job = MaterialJob(context, job, [o.name for o in targets], options, skipped).start()
        except (BackendError, LocalServerError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return False
        except Exception as exc:  # one clear report, nothing changed
            self.report({"ERROR"}, f"Could not start: {exc}")
            return False
        return True

    def _report(self, outcome):
        if outcome.state == "done" and self._job.skipped:  # some selected objects could not take it
            self.report({"WARNING"}, outcome.message)
            return {"FINISHED"}
        return super()._report(outcome)


classes = (SCENEDIFF_OT_seamless_material,)
register, unregister = bpy.utils.register_classes_factory(classes)
