"""Per-file settings: one PropertyGroup on the Scene (`scene.scene_diffusion`), with the result history.

Runtime state (the running job, the local server) lives in `session`, not here: it must not be saved
into the .blend or undone by Ctrl-Z.
"""

from __future__ import annotations

import json

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

# Fields restored from a history entry into the panel: property name -> parameter name in the metadata.
RESTORABLE = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "steps": "steps",
    "guidance": "guidance",
    "width": "width",
    "height": "height",
    "strength": "strength",
    "controlnet_scale": "controlnet_scale",
}


def _model_search(self, context, edit_text):
    from . import session

    return [name for name in session.known_models() if edit_text.lower() in name.lower()]


class SCENEDIFF_PG_history_item(bpy.types.PropertyGroup):
    """One generated result: the image and the parameters that reproduce it."""

    image: PointerProperty(type=bpy.types.Image, name="Image")
    parameters: StringProperty(name="Parameters", description="generation parameters (JSON)")
    action: StringProperty(name="Action")

    @property
    def params(self) -> dict:
        try:
            return json.loads(self.parameters or "{}")
        except ValueError:
            return {}


class SCENEDIFF_PG_settings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to generate", default="")
    negative_prompt: StringProperty(name="Negative", description="What to avoid", default="")
    model: StringProperty(name="Model", description="Model on the backend (empty: the backend's default); "
                                                    "Test Connection lists the backend's models here",
                          search=_model_search)
    action: EnumProperty(
        name="Action",
        items=[
            ("RESTYLE", "Restyle Camera", "Re-imagine the active camera's render, held in place by its depth"),
            ("IMAGE", "Generate Image", "A new image from the prompt alone"),
            ("TEXTURE", "Texture Selected Object", "Paint the active mesh from several views onto its UV map"),
        ],
        default="RESTYLE",
    )
    use_random_seed: BoolProperty(name="Random Seed", default=True,
                                  description="Pick a new seed for every job (it is stored with the result)")
    seed: IntProperty(name="Seed", default=0, min=0, description="Seed used when Random Seed is off")
    steps: IntProperty(name="Steps", default=25, min=1, max=150, description="Denoising steps")
    guidance: FloatProperty(name="Guidance", default=7.0, min=0.0, max=30.0,
                            description="How strictly to follow the prompt (classifier-free guidance)")
    width: IntProperty(name="Width", default=512, min=64, max=2048, step=8, description="Multiple of 8")
    height: IntProperty(name="Height", default=512, min=64, max=2048, step=8, description="Multiple of 8")
    use_render_size: BoolProperty(name="Use Render Aspect", default=True,
                                  description="Restyle: keep the scene's render aspect ratio, longest side = Width")
    strength: FloatProperty(name="Strength", default=0.6, min=0.0, max=1.0, subtype="FACTOR",
                            description="Restyle: how much of the render is repainted")
    controlnet_scale: FloatProperty(name="Depth Weight", default=1.0, min=0.0, max=2.0,
                                    description="Restyle: how strongly the scene's depth holds the composition")
    use_depth: BoolProperty(name="Hold Composition by Depth", default=True,
                            description="Condition on the scene's own depth (Z pass)")
    seamless: EnumProperty(
        name="Seamless",
        items=[("NONE", "Off", ""), ("x", "X", "Tile horizontally"), ("y", "Y", "Tile vertically"),
               ("xy", "Both", "Tile on both axes")],
        default="NONE",
    )
    source: EnumProperty(
        name="Capture",
        items=[("CAMERA", "Camera", "Render the active camera"),
               ("VIEWPORT", "Viewport", "The 3D viewport as you see it")],
        default="CAMERA",
    )
    render_engine: EnumProperty(
        name="Render With",
        items=[("WORKBENCH", "Fast (Workbench)", "A quick solid render of the camera"),
               ("SCENE", "Scene Engine", "The scene's own render engine and settings (slower)")],
        default="WORKBENCH",
    )
    output: EnumProperty(
        name="Result",
        items=[("IMAGE", "Image", "A new image, shown in an Image Editor"),
               ("COMPOSITOR", "Compositor Output", "Also make it the frame's output through the compositor"),
               ("PROJECT", "Project onto Objects", "Also project it onto the visible objects as a material")],
        default="IMAGE",
    )
    storage: EnumProperty(
        name="Store Images",
        items=[("PACK", "Pack in .blend", "Keep generated images inside the .blend file"),
               ("SAVE", "Save Next to .blend", "Write PNGs into a folder beside the .blend (needs a saved file)")],
        default="PACK",
    )
    texture_views: IntProperty(name="Views", default=8, min=1, max=16,
                               description="Texture: the camera (or viewport) view, then a ring around the object "
                                           "and views from top and bottom")
    texture_size: EnumProperty(name="Texture Size", items=[(str(n), f"{n} px", "") for n in (512, 1024, 2048, 4096)],
                               default="1024")
    texture_view_size: IntProperty(name="View Size", default=512, min=128, max=1024, step=64,
                                   description="Texture: size of each generated view (square, multiple of 8)")
    texture_sharpness: FloatProperty(name="Blend Sharpness", default=4.0, min=0.5, max=16.0,
                                     description="Texture: how much less an oblique view counts (facing^sharpness); "
                                                 "higher keeps the most head-on view where views overlap")
    texture_first_view: EnumProperty(
        name="First View",
        items=[("CAMERA", "Camera", "The active camera"), ("VIEWPORT", "Viewport", "The 3D viewport's view")],
        default="CAMERA",
    )
    history: CollectionProperty(type=SCENEDIFF_PG_history_item)
    history_index: IntProperty(name="Result", default=0, min=0)
    last_seed: IntProperty(default=-1, options={"HIDDEN"})


classes = (SCENEDIFF_PG_history_item, SCENEDIFF_PG_settings)
_register, _unregister = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register()
    bpy.types.Scene.scene_diffusion = PointerProperty(type=SCENEDIFF_PG_settings)


def unregister() -> None:
    del bpy.types.Scene.scene_diffusion
    _unregister()
