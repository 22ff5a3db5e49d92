"""Add-on preferences: which backend, and how to reach it. One place, per user (not per file)."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, StringProperty

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def get_preferences(context=None):
    """This add-on's preferences; None when it is not enabled through the preferences (bare register())."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


class SCENEDIFF_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend: EnumProperty(
        name="Backend",
        items=[
            ("LOCAL", "Local", "Start `scene-diffusion serve` on this computer (loopback only) and use it"),
            ("REMOTE", "Remote Server", "A Scene Diffusion server elsewhere, e.g. a team's GPU machine"),
            ("A1111", "Automatic1111 / Forge", "A WebUI started with --api (ControlNet extension for depth)"),
            ("COMFYUI", "ComfyUI", "A ComfyUI server, used with its core nodes only"),
        ],
        default="LOCAL",
    )
    python: StringProperty(
        name="Python Executable", subtype="FILE_PATH",
        description="The Python of the environment where the backend is installed (pip install scene-diffusion). "
                    "Never Blender's own Python: torch is not installed into Blender",
        default="",
    )
    local_model: StringProperty(name="Model", default=DEFAULT_MODEL,
                                description="Hugging Face repo id, local folder or .safetensors file for the "
                                            "local server (testing/tiny-sd: a test model that paints noise)")
    local_port: IntProperty(name="Port", default=0, min=0, max=65535, description="0: pick a free port")
    url: StringProperty(name="URL", default="http://127.0.0.1:7860",
                        description="Address of the server, e.g. https://gpu.example.com "
                                    "(Automatic1111: port 7860, ComfyUI: port 8188)")
    token: StringProperty(name="Token", subtype="PASSWORD", default="",
                          description="The server's token (scene-diffusion serve --token)")
    username: StringProperty(name="User", default="",
                             description="Automatic1111: the user of --api-auth user:password (empty if none)")
    password: StringProperty(name="Password", subtype="PASSWORD", default="",
                             description="Automatic1111: the password of --api-auth; a proxy's, for ComfyUI")
    timeout: FloatProperty(name="Timeout", default=30.0, min=1.0, max=600.0, unit="TIME_ABSOLUTE",
                           description="Longest wait for one answer from the backend")

    def draw(self, context):
        from . import session

        layout = self.layout
        layout.prop(self, "backend", expand=True)
        box = layout.box()
        if self.backend == "LOCAL":
            box.prop(self, "python")
            if not self.python:
                box.label(text="Point this at the Python that has the backend installed", icon="INFO")
            box.prop(self, "local_model")
            box.prop(self, "local_port")
            row = box.row()
            server = session.local_server()
            if server is not None and server.running:
                row.label(text=f"Running at {server.url}", icon="CHECKMARK")
                row.operator("scene_diffusion.stop_local_server", icon="X")
            else:
                row.operator("scene_diffusion.start_local_server", icon="PLAY")
            if session.local_server_error():
                box.label(text=session.local_server_error(), icon="ERROR")
        else:
            box.prop(self, "url")
            if self.backend == "REMOTE":
                box.prop(self, "token")
            else:
                box.prop(self, "username")
                box.prop(self, "password")
            reason = session.network_refusal(self.url)
            if reason:
                box.label(text=reason, icon="ERROR")
        layout.prop(self, "timeout")
        row = layout.row()
        row.operator("scene_diffusion.test_connection", icon="LINKED")
        if session.connection_message():
            row.label(text=session.connection_message())


classes = (SCENEDIFF_AP_preferences,)
register, unregister = bpy.utils.register_classes_factory(classes)
