"""Shared fixtures. No test reaches a model hub: HF_HUB_OFFLINE is forced before anything imports the hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY = "testing/tiny-sd"


@pytest.fixture(scope="session")
def tiny_engine():
    """One tiny engine for the session: the model loads once, as in production."""
    from backend.engine import create_engine

    return create_engine(TINY)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def gradient():
    """A 64x64 left-to-right grey ramp (a depth map: right side near)."""
    from PIL import Image

    return Image.fromarray(np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1)), "L")


@pytest.fixture
def square_mask():
    from PIL import Image

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is; `weights` tests only with SCENE_DIFFUSION_REAL_WEIGHTS=1."""
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_weights = pytest.mark.skip(reason="needs real weights in the cache: set SCENE_DIFFUSION_REAL_WEIGHTS=1")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "weights" in item.keywords and os.environ.get("SCENE_DIFFUSION_REAL_WEIGHTS") != "1":
            item.add_marker(skip_weights)
