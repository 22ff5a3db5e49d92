"""The sidebar panel: 3D Viewport > Sidebar (N) > Diffusion."""

from __future__ import annotations

import bpy

from . import session


class SCENEDIFF_UL_history(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        params = item.params
        label = f"{params.get('seed', '?')}: {params.get('prompt', '')[:40]}"
        icon_value = item.image.preview.icon_id if item.image is not None and item.image.preview else 0
        if icon_value:
            layout.label(text=label, icon_value=icon_value)
        else:
            layout.label(text=label, icon="IMAGE_DATA")


class SCENEDIFF_PT_panel(bpy.types.Panel):
    bl_idname = "SCENEDIFF_PT_panel"
    bl_label = "Scene Diffusion"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Diffusion"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.scene_diffusion
        layout.prop(settings, "action", text="")
        layout.prop(settings, "prompt", text="")
        layout.prop(settings, "negative_prompt", text="Avoid")

        job = session.active_job()
        if job is None:
            layout.operator("scene_diffusion.generate", icon="PLAY")
            layout.operator("scene_diffusion.seamless_material", icon="MATERIAL")
        else:
            row = layout.row(align=True)
            progress = job.progress
            text = f"Step {progress.step}/{progress.total}" if progress else "Waiting for the backend..."
            if progress is not None and getattr(progress, "stage", ""):
                text = f"{progress.stage.capitalize()}: {text.lower()}"
            row.progress(factor=job.fraction, type="BAR", text=text)
            row.operator("scene_diffusion.cancel", text="", icon="X")
            preview = bpy.data.images.get("SceneDiffusion Preview")
            if preview is not None and preview.preview is not None:
                layout.template_icon(icon_value=preview.preview.icon_id, scale=6.0)


class SCENEDIFF_PT_settings(bpy.types.Panel):
    bl_label = "Settings"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Diffusion"
    bl_parent_id = "SCENEDIFF_PT_panel"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.scene_diffusion
        layout.prop(settings, "model", placeholder="backend default")
        row = layout.row(align=True)
        row.prop(settings, "use_random_seed", text="", icon="FILE_REFRESH")
        sub = row.row(align=True)
        sub.enabled = not settings.use_random_seed
        sub.prop(settings, "seed")
        row.operator("scene_diffusion.reuse_seed", text="", icon="RECOVER_LAST")
        layout.prop(settings, "steps")
        layout.prop(settings, "guidance")
        col = layout.column(align=True)
        col.prop(settings, "width")
        col.prop(settings, "height")
        layout.prop(settings, "seamless")
        if settings.action == "TEXTURE":
            layout.prop(settings, "texture_first_view")
            layout.prop(settings, "texture_views")
            layout.prop(settings, "texture_size")
            layout.prop(settings, "texture_view_size")
            layout.prop(settings, "texture_sharpness")
            layout.prop(settings, "controlnet_scale")
        if settings.action == "RESTYLE":
            layout.prop(settings, "source")
            if settings.source == "CAMERA":
                layout.prop(settings, "render_engine")
            layout.prop(settings, "use_render_size")
            layout.prop(settings, "strength")
            layout.prop(settings, "use_depth")
            if settings.use_depth:
                layout.prop(settings, "controlnet_scale")
            layout.prop(settings, "output")
        layout.prop(settings, "storage")


class SCENEDIFF_PT_history(bpy.types.Panel):
    bl_label = "Results"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Diffusion"
    bl_parent_id = "SCENEDIFF_PT_panel"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.scene_diffusion
        layout.template_list("SCENEDIFF_UL_history", "", settings, "history", settings, "history_index", rows=3)
        row = layout.row(align=True)
        row.operator("scene_diffusion.restore_parameters", icon="LOOP_BACK")
        row.operator("scene_diffusion.apply_material", icon="MATERIAL")
        if 0 <= settings.history_index < len(settings.history):
            params = settings.history[settings.history_index].params
            box = layout.box()
            for key in ("prompt", "seed", "steps", "guidance", "model", "mode"):
                if key in params:
                    box.label(text=f"{key}: {params[key]}")


classes = (SCENEDIFF_UL_history, SCENEDIFF_PT_panel, SCENEDIFF_PT_settings, SCENEDIFF_PT_history)
register, unregister = bpy.utils.register_classes_factory(classes)
