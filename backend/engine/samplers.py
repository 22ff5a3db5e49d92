"""Sampler names (ours and Automatic1111's) mapped to diffusers schedulers.

A sampler is a scheduler class plus options; it is built from the model's own scheduler config, so
the noise schedule the model was trained with is kept.
"""

from __future__ import annotations

from ..errors import InvalidRequest

# name -> (diffusers class, extra config, Automatic1111 label)
SAMPLERS: dict[str, tuple[str, dict, str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}, "DPM++ SDE"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "pndm": ("PNDMScheduler", {}, "PLMS"),
}
_BY_LABEL = {label.lower(): name for name, (_, _, label) in SAMPLERS.items()}
# The class a model ships with -> our name, so the default sampler can be reported.
_BY_CLASS = {cls: name for name, (cls, extra, _) in reversed(SAMPLERS.items()) if not extra}


def canonical(name: str) -> str:
    """Our name for `name`, which may be ours or an A1111 label ("DPM++ 2M Karras"); "" means the model's own."""
    if not name:
        return ""
    key = name.strip()
    if key in SAMPLERS:
        return key
    if key.lower() in _BY_LABEL:
        return _BY_LABEL[key.lower()]
    raise InvalidRequest(f"unknown sampler '{name}': choose one of {', '.join(SAMPLERS)}")


def label(name: str) -> str:
    """The A1111 label of one of our sampler names (what goes into the `parameters` text)."""
    return SAMPLERS[name][2] if name in SAMPLERS else name


def name_of(scheduler) -> str:
    """Our name for a scheduler instance, or its class name when we have none for it."""
    cls = type(scheduler).__name__
    if cls == "DPMSolverMultistepScheduler" and scheduler.config.get("use_karras_sigmas"):
        return "dpmpp_2m_karras"
    return _BY_CLASS.get(cls, cls)


def build(name: str, base_config):
    import diffusers

    cls_name, extra, _ = SAMPLERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)
