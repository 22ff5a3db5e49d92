"""Seamless tiling: wrap-around padding in every convolution of the UNet, VAE and ControlNet.

A texture tiles when the network never sees an image border: each 2D convolution pads circularly on
the tiled axes (and with zeros, as before, on the others). The change is made on the module
instances for the duration of one job and undone afterwards, so the next job is not affected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def seamless(modules: Iterable, axes: str) -> Iterator[None]:
    """Within the block, every Conv2d in `modules` wraps around on `axes` ("x", "y" or "xy")."""
    if not axes:
        yield
        return
    import torch
    import torch.nn.functional as F

    wrap_x, wrap_y = "x" in axes, "y" in axes
    patched: list = []

    def wrapped_forward(conv: torch.nn.Conv2d):
        pad_y, pad_x = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, conv.padding)

        def conv_forward(input, weight, bias):
            # F.pad order: (left, right, top, bottom). Circular on tiled axes, zeros on the others.
            if pad_x:
                input = F.pad(input, (pad_x, pad_x, 0, 0), mode="circular" if wrap_x else "constant")
            if pad_y:
                input = F.pad(input, (0, 0, pad_y, pad_y), mode="circular" if wrap_y else "constant")
            return F.conv2d(input, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

        return conv_forward

    try:
        for module in modules:
            if module is None:
                continue
            for conv in module.modules():
                if isinstance(conv, torch.nn.Conv2d) and conv.padding_mode == "zeros" and conv.padding != (0, 0):
                    if isinstance(conv.padding, str):  # "same"/"valid": leave alone, not used by SD models
                        continue
                    conv._conv_forward = wrapped_forward(conv)
                    patched.append(conv)
        yield
    finally:
        for conv in patched:
            del conv._conv_forward  # the instance attribute goes; the class method shows through again
