"""Scene Diffusion: diffusion models in Blender's 3D viewport (3D Viewport > Sidebar > Diffusion).

The extension imports bpy, the standard library, numpy and requests only; the diffusion itself runs in
a backend (a local server the add-on starts, a remote one, or a server the artist already runs).
bpy modules are imported in register(), so `blender_addon.core` stays importable without Blender.
"""

from __future__ import annotations

_modules: list = []


def _bpy_modules() -> list:
    from . import operators, preferences, properties, seamless_ops, ui

    return [properties, preferences, operators, seamless_ops, ui]


def register() -> None:
    modules = _bpy_modules()
    for module in modules:
        module.register()
    _modules[:] = modules


def unregister() -> None:
    from . import session

    session.shutdown()
    for module in reversed(_modules or _bpy_modules()):
        module.unregister()
    _modules.clear()
