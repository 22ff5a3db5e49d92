"""A generation as Blender sees it: capture on the main thread, a JobRunner in the background, and
`tick()` applying what comes back, on the main thread, a few milliseconds at a time.

Nothing is added to the scene until the job is done and its images are decoded, so a failure or a
cancel leaves the file exactly as it was.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

import bpy
import numpy as np

from . import session
from .core.jobs import Finished, JobRunner, Progress
from .core.png import encode_png
from .core.protocol import JobIn

PREVIEW_IMAGE = "SceneDiffusion Preview"


@dataclass
class Outcome:
    """What the operator reports when the job ends."""

    state: str  # done, failed, cancelled
    message: str
    images: list = field(default_factory=list)
    warnings: tuple[str, ...] = ()


MAX_SEED = 2**31 - 1  # Blender's integer properties are signed 32-bit: seeds the panel can hold and restore


def _seed(settings) -> int:
    """The job's seed, always concrete: a random one is drawn here, so the panel can show and reuse it."""
    return random.randint(0, MAX_SEED) if settings.use_random_seed else settings.seed


def build_job(context, capture=None) -> JobIn:
    """The job for the panel's settings (and the camera capture, for restyle)."""
    settings = context.scene.scene_diffusion
    if not settings.prompt.strip():
        raise ValueError("type a prompt first")
    common = dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt, model=settings.model or None,
                  steps=settings.steps, guidance=settings.guidance, seed=_seed(settings),
                  seamless="" if settings.seamless == "NONE" else settings.seamless)
    if capture is None:
        return JobIn(width=settings.width - settings.width % 8, height=settings.height - settings.height % 8,
                     **common)
    return JobIn(width=capture.width, height=capture.height, strength=settings.strength,
                 controlnet_scale=settings.controlnet_scale, init_images=(encode_png(capture.color),),
                 depths=(encode_png(capture.depth),) if settings.use_depth else (), **common)


class SceneJob:
    """One running generation in this Blender session (there is at most one)."""

    def __init__(self, context, job: JobIn, action: str, capture=None) -> None:
        self.scene_name = context.scene.name
        self.action = action
        self.capture = capture
        self.runner = JobRunner(session.backend_source(context), job)
        self.progress: Progress | None = None
        self.outcome: Outcome | None = None
        self.longest_tick = 0.0
        self.started = time.perf_counter()

    def start(self) -> SceneJob:
        session.set_active_job(self)
        self.runner.start()
        return self

    def cancel(self) -> None:
        self.runner.cancel()

    @property
    def fraction(self) -> float:
        p = self.progress
        return p.step / p.total if p and p.total else 0.0

    def tick(self, context) -> Outcome | None:
        """Apply the events that have arrived; returns the outcome once the job has ended. Never blocks."""
        t0 = time.perf_counter()
        try:
            for event in self.runner.poll_once():
                if isinstance(event, Progress):
                    self.progress = event
                    if event.preview is not None:
                        _show_preview(event.preview)
                    _status(context, f"Scene Diffusion: step {event.step}/{event.total}  (Esc to cancel)")
                elif isinstance(event, Finished):
                    self.outcome = self._finish(context, event)
        finally:
            self.longest_tick = max(self.longest_tick, time.perf_counter() - t0)
        return self.outcome

    def _finish(self, context, event: Finished) -> Outcome:
        session.set_active_job(None)
        _status(context, None)
        preview = bpy.data.images.get(PREVIEW_IMAGE)
        if preview is not None:  # the live preview is the job's, not the artist's: it goes with the job
            bpy.data.images.remove(preview)
        if event.state == "cancelled":
            return Outcome("cancelled", "Generation cancelled: nothing was changed")
        if event.state == "failed":
            return Outcome("failed", f"Generation failed: {event.error}")
        scene = bpy.data.scenes.get(self.scene_name)
        if scene is None:
            return Outcome("failed", "The scene the job was started from is gone: the result was not added")
        return self._apply(context, scene, event)

    def _apply(self, context, scene, event: Finished) -> Outcome:
        """Put a finished job's results into the scene (subclasses make other things of them)."""
        try:
            images = apply_results(context, scene, event.results, self.action, self.capture)
        except Exception as exc:  # a failure here has already undone its own partial work
            return Outcome("failed", f"Could not add the result to the scene: {exc}")
        seconds = time.perf_counter() - self.started
        names = ", ".join(image.name for image in images)
        return Outcome("done", f"Generated {names} in {seconds:.1f} s", images, event.warnings)


def storage_folder(scene) -> str | None:
    """Where new images are saved: None to pack them into the .blend (the panel's Store Images choice)."""
    settings = getattr(scene, "scene_diffusion", None)
    if settings is None or settings.storage != "SAVE":
        return None
    if not bpy.data.filepath:
        raise ValueError("save the .blend first, or choose to pack images: 'Save Next to .blend' needs a saved file")
    return bpy.path.abspath("//scene_diffusion")


def add_history(scene, image, params: dict, action: str) -> None:
    """A result in the panel's history (newest selected), and its seed as the one to reuse."""
    settings = getattr(scene, "scene_diffusion", None)
    if settings is None:
        return
    item = settings.history.add()
    item.image, item.parameters, item.action = image, json.dumps(params), action
    settings.history_index = len(settings.history) - 1
    seed = params.get("seed")
    seed = int(seed) if seed is not None else -1
    settings.last_seed = seed if 0 <= seed <= MAX_SEED else -1


def apply_results(context, scene, results, action: str, capture=None) -> list:
    """Results as images (with their parameters), history entries, and the chosen output."""
    from . import materials

    settings = scene.scene_diffusion
    save_dir = storage_folder(scene)
    created = []
    with materials.Rollback() as rollback:  # any failure takes back every image, file and material made here
        for result in results:
            params = json.loads(result.text.get("scene_diffusion", "{}") or "{}")
            params.setdefault("parameters", result.text.get("parameters", ""))
            name = ("Restyle" if action == "RESTYLE" else "Generated") + f" {params.get('seed', '')}".rstrip()
            created.append(materials.new_image(name, result.pixels, params, pack=save_dir is None,
                                               save_dir=save_dir, rollback=rollback, png=result.png))
        if action == "RESTYLE" and capture is not None and settings.output == "PROJECT":
            camera = bpy.data.objects.get(capture.camera)
            visible = [o for o in scene.objects if o.type == "MESH" and o.visible_get()]
            problems = materials.projection_problems(visible)
            targets = [o for o in visible if o.name not in problems]
            if camera is None:
                raise ValueError("projecting onto objects needs a camera capture (Capture: Camera)")
            if not targets:
                raise ValueError("no visible mesh the result could be projected onto: "
                                 + "; ".join(f"{k}: {v}" for k, v in problems.items()))
            materials.project_from_camera(targets, camera, created[0], depth=capture.z, scene=scene,
                                          rollback=rollback)
        if action == "RESTYLE" and settings.output == "COMPOSITOR":
            compositor_output(scene, created[0])
    for image in created:
        add_history(scene, image, _params_of(image), action)
    _show_in_image_editor(context, created[0])
    return created


def _params_of(image) -> dict:
    try:
        return json.loads(image.get("scene_diffusion", "{}"))
    except (TypeError, ValueError):
        return {}


def compositor_output(scene, image) -> None:
    """Make `image` the frame's output: a compositor node tree that shows it (the previous one is kept)."""
    name = "SceneDiffusion Output"
    tree = bpy.data.node_groups.get(name) or bpy.data.node_groups.new(name, "CompositorNodeTree")
    tree.nodes.clear()
    node = tree.nodes.new("CompositorNodeImage")
    node.image = image
    if not tree.interface.items_tree.get("Image"):
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    out = tree.nodes.new("NodeGroupOutput")
    out.location = (300, 0)
    tree.links.new(node.outputs["Image"], out.inputs[0])
    scene["scene_diffusion_previous_compositor"] = getattr(scene.compositing_node_group, "name", "")
    scene.compositing_node_group = tree


def _show_preview(pixels: np.ndarray) -> None:
    height, width = pixels.shape[:2]
    image = bpy.data.images.get(PREVIEW_IMAGE)
    if image is None or tuple(image.size) != (width, height):
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(PREVIEW_IMAGE, width, height)
        image.use_fake_user = False
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., :3] = pixels[::-1, :, :3] / 255.0
    image.pixels.foreach_set(rgba.ravel())
    image.update()
    if not bpy.app.background:  # the panel shows the preview's icon: make and refresh it
        image.preview_ensure()
        image.preview.reload()


def _status(context, text) -> None:
    workspace = getattr(context, "workspace", None)
    if workspace is not None and not bpy.app.background:
        workspace.status_text_set(text)
    screen = getattr(context, "screen", None)
    if screen is not None:
        for area in screen.areas:
            if area.type in ("VIEW_3D", "IMAGE_EDITOR"):
                area.tag_redraw()


def _show_in_image_editor(context, image) -> None:
    screen = getattr(context, "screen", None)
    for area in screen.areas if screen is not None else ():
        if area.type == "IMAGE_EDITOR":
            area.spaces.active.image = image
            return
