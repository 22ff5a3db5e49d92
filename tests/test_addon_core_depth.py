"""Z pass -> depth image for depth ControlNets: near bright, background black."""

from __future__ import annotations

import numpy as np

from blender_addon.core.depth import FAR_LEVEL, NEAR_LEVEL, geometry_mask, normalized_depth

BACKGROUND = 1e10  # what Blender writes where nothing is hit


def scene():
    """A 4x5 Z pass: background around a slope from 2 m (left) to 6 m (right)."""
    z = np.full((4, 5), BACKGROUND, dtype=np.float32)
    z[1:3, 0:4] = [2.0, 3.0, 4.0, 6.0]
    return z


def test_near_is_bright_far_is_dim_background_is_black():
    depth = normalized_depth(scene())
    assert depth.dtype == np.uint8 and depth.shape == (4, 5)
    assert (depth[1:3, 0] == NEAR_LEVEL).all() and (depth[1:3, 3] == FAR_LEVEL).all()
    assert (np.diff(depth[1, :4].astype(int)) < 0).all()
    assert depth[0].sum() == 0 and depth[3].sum() == 0 and depth[:, 4].sum() == 0
    assert 0 < FAR_LEVEL < NEAR_LEVEL == 255


def test_disparity_by_default_linear_on_request():
    disparity = normalized_depth(scene())[1, :4].astype(float)
    linear = normalized_depth(scene(), inverse=False)[1, :4].astype(float)
    # 3 m: disparity (1/3 - 1/6) / (1/2 - 1/6) = 0.5; linear (6 - 3) / (6 - 2) = 0.75.
    assert abs(disparity[1] - (FAR_LEVEL + 0.5 * (NEAR_LEVEL - FAR_LEVEL))) <= 0.5
    assert abs(linear[1] - (FAR_LEVEL + 0.75 * (NEAR_LEVEL - FAR_LEVEL))) <= 0.5


def test_no_geometry_is_all_black():
    assert not normalized_depth(np.full((3, 3), BACKGROUND)).any()
    assert not normalized_depth(np.full((3, 3), np.inf)).any()
    assert not normalized_depth(np.zeros((0, 0))).any()


def test_nan_and_inf_are_background():
    z = scene()
    z[0, 0], z[0, 1], z[1, 1] = np.nan, np.inf, np.nan
    depth = normalized_depth(z)
    assert depth[0, 0] == depth[0, 1] == depth[1, 1] == 0
    assert depth[2, 1] > FAR_LEVEL  # the rest of the slope is unchanged
    np.testing.assert_array_equal(geometry_mask(z), depth > 0)


def test_flat_geometry_is_all_near():
    z = np.full((3, 3), BACKGROUND)
    z[1, 1:] = 5.0
    depth = normalized_depth(z)
    assert (depth[1, 1:] == NEAR_LEVEL).all() and depth.sum() == 2 * NEAR_LEVEL


def test_threshold_sets_what_counts_as_background():
    z = scene()
    z[1:3, 3] = 500.0  # a far wall
    assert (normalized_depth(z)[1:3, 3] == FAR_LEVEL).all()
    assert (normalized_depth(z, far_threshold=100.0)[1:3, 3] == 0).all()
