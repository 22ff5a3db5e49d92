"""Generation parameters carried inside every PNG.

Two text chunks: `parameters` in the Automatic1111 format, which many tools read (A1111/Forge's
"PNG Info", ComfyUI loaders, image browsers), and `scene_diffusion`, the same parameters as JSON,
exact and typed, for reproducing the image with this project.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from .engine.samplers import SAMPLERS
from .engine.samplers import canonical as canonical_sampler
from .engine.samplers import label as sampler_label
from .errors import InvalidRequest

A1111_KEY = "parameters"
JSON_KEY = "scene_diffusion"

# Our parameter name -> the label Automatic1111 writes, in the order it writes them.
_LABELS = (
    ("steps", "Steps"),
    ("sampler", "Sampler"),
    ("guidance", "CFG scale"),
    ("seed", "Seed"),
    ("size", "Size"),
    ("model", "Model"),
    ("strength", "Denoising strength"),
    ("mode", "Mode"),
    ("seamless", "Seamless"),
    ("controlnet_scale", "ControlNet weight"),
    ("version", "Version"),
)
_LABEL_TO_NAME = {label: name for name, label in _LABELS}
_INTS = {"steps", "seed"}
_FLOATS = {"guidance", "strength", "controlnet_scale"}
# One `Label: value` pair of the last line; a value is either a JSON string or runs to the next comma.
_PAIR = re.compile(r'\s*([\w ./-]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _format_value(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text)
    return text


def format_a1111(params: dict[str, Any]) -> str:
    """The `parameters` text: prompt, `Negative prompt:` line, then `Label: value, ...`."""
    lines = [params.get("prompt", "")]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    pairs = []
    values = dict(params)
    if "width" in values and "height" in values:
        values["size"] = f"{values['width']}x{values['height']}"
    if values.get("sampler") in SAMPLERS:
        values["sampler"] = sampler_label(values["sampler"])  # "Euler a", as A1111 and its readers spell it
    for name, label in _LABELS:
        value = values.get(name)
        if value is None or value == "":
            continue
        pairs.append(f"{label}: {_format_value(value)}")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def parse_a1111(text: str) -> dict[str, Any]:
    """Read an Automatic1111 `parameters` text (ours or another tool's) back into our parameter names.

    Labels we do not know are kept under their own label, so nothing written by another tool is lost.
    """
    lines = text.strip("\n").split("\n")
    params: dict[str, Any] = {}
    last = lines[-1] if lines else ""
    if len(lines) > 1 or _looks_like_pairs(last):
        if _looks_like_pairs(last):
            lines = lines[:-1]
            for label, raw in _PAIR.findall(last):
                label = label.strip()
                value: Any = json.loads(raw) if raw.startswith('"') else raw.strip()
                name = _LABEL_TO_NAME.get(label, label)
                if name == "size":
                    width, _, height = value.partition("x")
                    params["width"], params["height"] = int(width), int(height)
                    continue
                if name == "sampler":
                    with contextlib.suppress(InvalidRequest):
                        value = canonical_sampler(value)
                if name in _INTS:
                    value = int(value)
                elif name in _FLOATS:
                    value = float(value)
                params[name] = value
    prompt_lines, negative_lines, target = [], [], None
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].lstrip()
        (target if target is not None else prompt_lines).append(line)
    params["prompt"] = "\n".join(prompt_lines)
    params["negative_prompt"] = "\n".join(negative_lines)
    return params


def _looks_like_pairs(line: str) -> bool:
    return bool(re.match(r"^\s*(Steps|Size|Seed|Sampler|CFG scale|Model):", line))


def png_info(params: dict[str, Any]):
    """A PngInfo holding both chunks, for Image.save(..., pnginfo=...)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(A1111_KEY, format_a1111(params))
    info.add_itxt(JSON_KEY, json.dumps(params, sort_keys=True))
    return info


def read_png_parameters(image) -> dict[str, Any]:
    """Parameters stored in an opened PNG: the exact JSON chunk where present, else the A1111 text."""
    text = getattr(image, "text", None) or image.info
    if JSON_KEY in text:
        return json.loads(text[JSON_KEY])
    if A1111_KEY in text:
        return parse_a1111(text[A1111_KEY])
    return {}
