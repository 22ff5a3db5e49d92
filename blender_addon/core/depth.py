"""Blender's Z pass turned into the depth image a depth ControlNet expects.

Depth ControlNets were trained on MiDaS estimates: relative inverse depth, normalised per image, near
bright. So by default the visible geometry's disparity (1/z) is spread over its own range, which keeps
the contrast where the eye and the model look (near the camera) in deep scenes, and is close to linear
for a single object. Background (what the Z pass marks as very far, or NaN/inf) is black, and the
farthest geometry stops at FAR_LEVEL rather than 0, so an object's silhouette stays distinct from it.
"""

from __future__ import annotations

import numpy as np

NEAR_LEVEL = 255
FAR_LEVEL = 24  # the farthest visible geometry; background is 0


def geometry_mask(z: np.ndarray, far_threshold: float = 1e9) -> np.ndarray:
    """True where the Z pass shows geometry: finite, in front of the camera, nearer than far_threshold.

    Blender writes 1e10 (Workbench, EEVEE, Cycles alike) where a ray hits nothing.
    """
    z = np.asarray(z)
    with np.errstate(invalid="ignore"):
        return np.isfinite(z) & (z > 0) & (z < far_threshold)


def normalized_depth(z: np.ndarray, far_threshold: float = 1e9, inverse: bool = True) -> np.ndarray:
    """A uint8 depth map of z's shape: NEAR_LEVEL at the nearest geometry, FAR_LEVEL at the farthest, 0 behind.

    `z` is a Z pass (distance from the camera, as Blender renders it); `inverse=False` spreads depth
    linearly instead of as disparity. An image without geometry is all zeros; geometry at a single
    depth (a plane facing the camera) is all NEAR_LEVEL.
    """
    z = np.asarray(z, dtype=np.float64)
    mask = geometry_mask(z, far_threshold)
    out = np.zeros(z.shape, dtype=np.uint8)
    if not mask.any():
        return out
    values = z[mask]
    nearness = 1.0 / values if inverse else -values
    low, high = nearness.min(), nearness.max()
    if high > low:
        t = (nearness - low) / (high - low)  # 1 at the nearest, 0 at the farthest
    else:
        t = np.ones_like(nearness)
    out[mask] = np.rint(FAR_LEVEL + t * (NEAR_LEVEL - FAR_LEVEL)).astype(np.uint8)
    return out
