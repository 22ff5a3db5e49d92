"""Operators: generate (modal, never blocking), cancel, apply as material, history, backend set-up."""

from __future__ import annotations

import time

import bpy
from bpy.app.handlers import persistent
from bpy.props import IntProperty

from . import session
from .core.clients import BackendError
from .core.local_server import LocalServerError

TICK_SECONDS = 0.1


def _settings(context):
    return context.scene.scene_diffusion


class JobOperator:
    """What every job-running operator shares: a modal timer in the UI (Esc cancels), a polling loop for
    scripts and background mode, and one report at the end. Subclasses start the job in `_start()`,
    which sets `self._job` (anything with tick(context), cancel()) or reports why not and returns False."""

    _timer = None
    _job = None

    def _start(self, context) -> bool:
        raise NotImplementedError

    @classmethod
    def _settings_if_ready(cls, context, no_prompt: str = "Type a prompt first"):
        """The panel's settings when a job could start (none running, a prompt typed); else None, with the
        reason set as the poll message."""
        if session.active_job() is not None:
            cls.poll_message_set("A generation is already running: wait for it or cancel it")
            return None
        settings = getattr(context.scene, "scene_diffusion", None)
        if settings is None or not settings.prompt.strip():
            cls.poll_message_set(no_prompt)
            return None
        return settings

    def invoke(self, context, event):
        if not self._start(context):
            return {"CANCELLED"}
        self._timer = context.window_manager.event_timer_add(TICK_SECONDS, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        outcome = self._job.tick(context)
        if outcome is None:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._report(outcome)

    def execute(self, context):
        """Scripts and background mode (no event loop): the same job, polled until it ends."""
        if not self._start(context):
            return {"CANCELLED"}
        while (outcome := self._job.tick(context)) is None:
            time.sleep(0.01)
        return self._report(outcome)

    def _report(self, outcome):
        if outcome.state == "done":
            for warning in getattr(outcome, "warnings", ()):
                self.report({"WARNING"}, warning)
            self.report({"INFO"}, outcome.message)
            return {"FINISHED"}
        self.report({"WARNING"} if outcome.state == "cancelled" else {"ERROR"}, outcome.message)
        return {"CANCELLED"}


class SCENEDIFF_OT_generate(JobOperator, bpy.types.Operator):
    bl_idname = "scene_diffusion.generate"
    bl_label = "Generate"
    bl_description = "Run the panel's action on the backend; Blender stays responsive, Esc cancels"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        settings = cls._settings_if_ready(context)
        if settings is None:
            return False
        if settings.action == "RESTYLE" and settings.source == "CAMERA" and context.scene.camera is None:
            cls.poll_message_set("Restyle needs an active camera (or capture the viewport)")
            return False
        if settings.action == "TEXTURE":
            from .texturing import texture_problems

            problem = texture_problems(context.active_object)
            if problem:
                cls.poll_message_set(problem[0].upper() + problem[1:])
                return False
            if settings.texture_first_view == "CAMERA" and context.scene.camera is None:
                cls.poll_message_set("Texturing starts from the active camera: add one, or start from the viewport")
                return False
        return True

    def _start(self, context):
        from . import generation
        from .texturing import TexturingError

        settings = _settings(context)
        capture = None
        try:
            if settings.action == "TEXTURE":
                self._job = texture_job(context).start()
                return True
            if settings.action == "RESTYLE":
                capture = capture_for_restyle(context)
            job = generation.build_job(context, capture)
            self._job = generation.SceneJob(context, job, settings.action, capture).start()
        except (BackendError, LocalServerError, ValueError, TexturingError) as exc:
            self.report({"ERROR"}, str(exc))
            return False
        except Exception as exc:  # capture errors and the like: one clear report, nothing changed
            self.report({"ERROR"}, f"Could not start: {exc}")
            return False
        return True


def capture_for_restyle(context):
    from . import capture

    settings = _settings(context)
    scene = context.scene
    width, height = capture.output_size(scene, max(settings.width, settings.height), settings.use_render_size,
                                        settings.width, settings.height)
    fast = settings.render_engine == "WORKBENCH"
    if settings.source == "VIEWPORT":
        with capture.viewport_camera(context) as camera:
            return capture.render_camera(scene, camera, width, height, fast=True)
    return capture.render_camera(scene, scene.camera, width, height, fast=fast)


def texture_job(context, backend_source=None):
    """The texturing job for the active object, from the panel's settings (views rendered here, now)."""
    from . import capture, texturing
    from .core.texture_job import TextureSettings
    from .generation import _seed

    settings = _settings(context)
    obj = context.active_object
    problem = texturing.texture_problems(obj)
    if problem:
        raise texturing.TexturingError(problem)
    if settings.texture_first_view == "VIEWPORT":
        with capture.viewport_camera(context) as camera:
            first = texturing.camera_spec(camera)
    else:
        first = texturing.camera_spec(context.scene.camera)
    specs = texturing.automatic_views(obj, settings.texture_views, first)
    uv_map = texturing.ensure_uv_map(obj)
    job_settings = TextureSettings(
        prompt=settings.prompt, negative_prompt=settings.negative_prompt, model=settings.model or None,
        steps=settings.steps, guidance=settings.guidance, seed=_seed(settings),
        controlnet_scale=settings.controlnet_scale, texture_size=int(settings.texture_size),
        sharpness=settings.texture_sharpness)
    view_size = settings.texture_view_size - settings.texture_view_size % 8
    return texturing.TextureSceneJob(context, obj, job_settings, specs, view_size, uv_map,
                                     backend_source=backend_source)


class SCENEDIFF_OT_cancel(bpy.types.Operator):
    bl_idname = "scene_diffusion.cancel"
    bl_label = "Cancel"
    bl_description = "Stop the running generation on the backend (nothing is added to the scene)"

    @classmethod
    def poll(cls, context):
        if session.active_job() is None:
            cls.poll_message_set("No generation is running")
            return False
        return True

    def execute(self, context):
        session.active_job().cancel()
        return {"FINISHED"}


def _history_item(context, index: int = -1):
    settings = _settings(context)
    index = settings.history_index if index < 0 else index
    if 0 <= index < len(settings.history):
        return settings.history[index]
    return None


class SCENEDIFF_OT_apply_material(bpy.types.Operator):
    bl_idname = "scene_diffusion.apply_material"
    bl_label = "Apply as Material"
    bl_description = "A new material with the selected result on the selected objects (your materials are kept)"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        item = _history_item(context)
        if item is None or item.image is None:
            cls.poll_message_set("Generate an image first, then select it in the history")
            return False
        if not context.selected_objects:
            cls.poll_message_set("Select the objects to apply it to")
            return False
        return True

    def execute(self, context):
        from . import materials

        item = _history_item(context)
        try:
            with materials.Rollback() as rollback:  # no material is left behind if assigning fails
                material = materials.image_material(item.image, rollback=rollback)
                materials.assign_material(list(context.selected_objects), material, rollback=rollback)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Applied {material.name} to {len(context.selected_objects)} object(s)")
        return {"FINISHED"}


class SCENEDIFF_OT_restore_parameters(bpy.types.Operator):
    bl_idname = "scene_diffusion.restore_parameters"
    bl_label = "Restore Parameters"
    bl_description = "Put this result's prompt, seed and settings back into the panel, to make it again or vary it"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(default=-1, options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        if _history_item(context) is None:
            cls.poll_message_set("No result in the history yet")
            return False
        return True

    def execute(self, context):
        from .properties import RESTORABLE

        item = _history_item(context, self.index)
        if item is None:
            self.report({"ERROR"}, "No such result in the history")
            return {"CANCELLED"}
        from .generation import MAX_SEED

        params = item.params
        if not 0 <= int(params.get("seed", 0)) <= MAX_SEED:
            self.report({"ERROR"}, f"Seed {params['seed']} is beyond what Blender's seed field holds (0..{MAX_SEED})")
            return {"CANCELLED"}
        settings = _settings(context)
        for prop, key in RESTORABLE.items():
            if key in params and params[key] is not None:
                setattr(settings, prop, type(getattr(settings, prop))(params[key]))
        settings.use_random_seed = False
        settings.seamless = params.get("seamless") or "NONE"
        self.report({"INFO"}, f"Restored the parameters of seed {params.get('seed')}")
        return {"FINISHED"}


class SCENEDIFF_OT_reuse_seed(bpy.types.Operator):
    bl_idname = "scene_diffusion.reuse_seed"
    bl_label = "Reuse Last Seed"
    bl_description = "Use the seed of the last result (and turn Random Seed off)"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        if _settings(context).last_seed < 0:
            cls.poll_message_set("No result yet")
            return False
        return True

    def execute(self, context):
        settings = _settings(context)
        settings.seed, settings.use_random_seed = settings.last_seed, False
        return {"FINISHED"}


class SCENEDIFF_OT_test_connection(bpy.types.Operator):
    bl_idname = "scene_diffusion.test_connection"
    bl_label = "Test Connection"
    bl_description = "Ask the backend who it is; says exactly what is wrong if it does not answer"

    def execute(self, context):
        try:
            backend = session.backend_source(context)()
            health = backend.health()
            session.set_known_models(backend.models())
        except (BackendError, LocalServerError) as exc:
            session.set_connection_message(str(exc))
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        text = f"OK: {health.model} on {health.device} ({', '.join(health.modes)})"
        session.set_connection_message(text)
        self.report({"INFO"}, text)
        return {"FINISHED"}


class SCENEDIFF_OT_start_local_server(bpy.types.Operator):
    bl_idname = "scene_diffusion.start_local_server"
    bl_label = "Start Local Server"
    bl_description = "Start the backend on this computer (loopback only); it stops when Blender quits"

    def execute(self, context):
        from .preferences import get_preferences

        try:
            server = session.start_local_server(get_preferences(context))
        except LocalServerError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Starting the local backend at {server.url} (the model loads first)")
        return {"FINISHED"}


class SCENEDIFF_OT_stop_local_server(bpy.types.Operator):
    bl_idname = "scene_diffusion.stop_local_server"
    bl_label = "Stop"
    bl_description = "Stop the local backend"

    def execute(self, context):
        session.stop_local_server()
        return {"FINISHED"}


@persistent
def _cancel_on_file_change(*_args):
    """Opening another file mid-job: stop the job; its results have no scene to go to."""
    job = session.active_job()
    if job is not None:
        job.cancel()
        session.set_active_job(None)


classes = (
    SCENEDIFF_OT_generate,
    SCENEDIFF_OT_cancel,
    SCENEDIFF_OT_apply_material,
    SCENEDIFF_OT_restore_parameters,
    SCENEDIFF_OT_reuse_seed,
    SCENEDIFF_OT_test_connection,
    SCENEDIFF_OT_start_local_server,
    SCENEDIFF_OT_stop_local_server,
)
_register, _unregister = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register()
    bpy.app.handlers.load_pre.append(_cancel_on_file_change)


def unregister() -> None:
    if _cancel_on_file_change in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_cancel_on_file_change)
    _unregister()

