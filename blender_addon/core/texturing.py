"""Text-to-texture geometry in numpy: the target UV map's texels, their projection into camera views,
weighting, blending, filling and padding. No bpy: Blender supplies the mesh arrays and the render
passes, this module does the maths, vectorised (no Python loops over texels or triangles).

Conventions: images and textures are (rows, columns, ...) arrays, top row first, as they are viewed.
UV (0, 0) is the texture's bottom-left corner, so texel (row r, column c) has its centre at
u = (c + 0.5) / size, v = 1 - (r + 0.5) / size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CANDIDATES_PER_CHUNK = 4_000_000


@dataclass(frozen=True)
class Surface:
    """What each texel of the target UV map is: covered or not, and where it lies on the mesh (world space)."""

    size: int
    mask: np.ndarray  # (size, size) bool: texels computed (inside a triangle, or within `margin` of one)
    index: np.ndarray  # (M,) flat indices of those texels
    position: np.ndarray  # (M, 3) float32
    normal: np.ndarray  # (M, 3) float32, unit
    interior: np.ndarray  # (size, size) bool: texels whose centre lies inside a triangle (the UV map's own)


@dataclass(frozen=True)
class View:
    """One camera's view: matrices, its render passes, and (once generated) its image."""

    world_to_camera: np.ndarray  # (4, 4)
    projection: np.ndarray  # (4, 4) camera -> clip (OpenGL convention)
    z: np.ndarray  # (H, W) planar depth along the view axis; background huge
    origin: np.ndarray  # (3,) camera position (world)
    ortho: bool = False

    @property
    def height(self) -> int:
        return self.z.shape[0]

    @property
    def width(self) -> int:
        return self.z.shape[1]


def rasterize(uv: np.ndarray, positions: np.ndarray, normals: np.ndarray, size: int, margin: float = 1.5
              ) -> Surface:
    """The texels of a UV map: for each texel centre inside a UV triangle, the interpolated position and normal.

    uv: (T, 3, 2) per-corner UVs; positions, normals: (T, 3, 3) per-corner world positions and normals.
    Candidates are the texels of each triangle's bounding box, enumerated for all triangles at once (in
    chunks of a few million), tested with barycentric coordinates. Texels up to `margin` pixels outside
    a triangle get its extrapolated position too: bilinear lookups at an island's edge (a UV seam) then
    read colours projected from the right place on the surface, so both sides of a seam agree.
    """
    uv = np.asarray(uv, np.float64)
    # pixel space: x to the right, y down from the top row (float32 is exact to 1/4000 px at 8192²)
    px = np.stack([uv[..., 0] * size, (1.0 - uv[..., 1]) * size], axis=-1).astype(np.float32)
    lo = np.floor(px.min(axis=1) - 0.5 - margin).astype(np.int64) + 1
    hi = np.floor(px.max(axis=1) - 0.5 + margin).astype(np.int64)
    lo = np.clip(lo, 0, size - 1)
    hi = np.clip(hi, -1, size - 1)
    extent = np.maximum(hi - lo + 1, 0)
    counts = extent[:, 0] * extent[:, 1]
    a, b, c = px[:, 0], px[:, 1], px[:, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    usable = (counts > 0) & (np.abs(det) > 1e-12)
    # a triangle's height over each edge, in pixels: turns barycentric coordinates into distances
    lengths = np.stack([np.linalg.norm(c - b, axis=1), np.linalg.norm(a - c, axis=1), np.linalg.norm(b - a, axis=1)],
                       axis=1)
    heights = np.abs(det)[:, None] / np.maximum(lengths, 1e-12)
    triangles = np.nonzero(usable)[0]
    cumulative = np.cumsum(counts[triangles])
    positions = np.asarray(positions, np.float32)
    normals = np.asarray(normals, np.float32)
    chunks, start = [], 0
    while start < len(triangles):
        base = cumulative[start - 1] if start else 0
        stop = max(int(np.searchsorted(cumulative, base + CANDIDATES_PER_CHUNK, side="right")), start + 1)
        chunks.append(triangles[start:stop])
        start = stop

    def work(chunk):
        return _rasterize_chunk(chunk, counts[chunk], lo[chunk], extent[chunk], a[chunk], b[chunk], c[chunk],
                                det[chunk], heights[chunk], margin, positions, normals, size)

    parts = parallel_map(work, chunks)
    mask = np.zeros(size * size, bool)
    interior = np.zeros(size * size, bool)
    position = np.zeros((size * size, 3), np.float32)
    normal = np.zeros((size * size, 3), np.float32)
    # all margin texels first, then all texels inside a triangle: a texel's own triangle always wins
    for which in (0, 1):
        for part in parts:
            flat, pos, nrm = part[which]
            mask[flat] = True
            position[flat] = pos
            normal[flat] = nrm
            if which:
                interior[flat] = True
    index = np.nonzero(mask)[0]
    n = normal[index]
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    return Surface(size=size, mask=mask.reshape(size, size), index=index, position=position[index],
                   normal=n, interior=interior.reshape(size, size))


def _rasterize_chunk(tris, counts, lo, extent, a, b, c, det, heights, margin, positions, normals, size):
    """((margin texels, positions, normals), (inside texels, positions, normals)) of a chunk of triangles."""
    owner = np.repeat(np.arange(len(tris), dtype=np.int32), counts)
    offset = np.arange(owner.size, dtype=np.int32) - np.repeat((np.cumsum(counts) - counts).astype(np.int32), counts)
    width = extent[owner, 0].astype(np.int32)
    row, col = np.divmod(offset, width)
    x = lo[owner, 0].astype(np.int32) + col
    y = lo[owner, 1].astype(np.int32) + row
    cx, cy = x + np.float32(0.5), y + np.float32(0.5)
    ax, ay = a[owner, 0], a[owner, 1]
    d = det[owner]
    w1 = ((cx - ax) * (c[owner, 1] - ay) - (c[owner, 0] - ax) * (cy - ay)) / d
    w2 = ((b[owner, 0] - ax) * (cy - ay) - (cx - ax) * (b[owner, 1] - ay)) / d
    w0 = 1.0 - w1 - w2
    h = heights[owner]
    d0, d1, d2 = w0 * h[:, 0], w1 * h[:, 1], w2 * h[:, 2]  # signed distances to the edges, in pixels
    near = np.minimum(np.minimum(d0, d1), d2)
    flat = y * size + x
    inside = near >= -1e-7
    results = []
    for select in ((near >= -1e-7 - margin) & ~inside, inside):
        tri = tris[owner[select]]
        weights = np.stack([w0[select], w1[select], w2[select]], axis=1).astype(np.float32)
        results.append((flat[select], np.einsum("ij,ijk->ik", weights, positions[tri]),
                        np.einsum("ij,ijk->ik", weights, normals[tri])))
    return results


def project(view: View, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image coordinates (x right, y down, in pixels), planar depth and in-front flag of world points."""
    homogeneous = np.c_[points, np.ones(len(points))]
    camera = homogeneous @ view.world_to_camera.T
    clip = camera @ view.projection.T
    w = clip[:, 3]
    ahead = w > 1e-9
    safe = np.where(ahead, w, 1.0)
    ndc = clip[:, :2] / safe[:, None]
    xy = np.stack([(ndc[:, 0] * 0.5 + 0.5) * view.width, (0.5 - ndc[:, 1] * 0.5) * view.height], axis=1)
    depth = -camera[:, 2]
    return xy, depth, ahead


def depth_edges(z: np.ndarray, ramp: int = 6, threshold: float = 0.04) -> np.ndarray:
    """0 at depth discontinuities (and the silhouette), rising linearly to 1 `ramp` pixels away.

    Projected colour is least reliable where depth jumps: a pixel there mixes two surfaces.
    """
    finite = z < 1e9
    zz = np.where(finite, z, 0.0)
    edge = np.zeros(z.shape, bool)
    for axis in (0, 1):
        a = np.take(zz, range(z.shape[axis] - 1), axis=axis)
        b = np.take(zz, range(1, z.shape[axis]), axis=axis)
        fa = np.take(finite, range(z.shape[axis] - 1), axis=axis)
        fb = np.take(finite, range(1, z.shape[axis]), axis=axis)
        jump = (fa != fb) | (np.abs(a - b) > threshold * np.maximum(np.minimum(a, b), 1e-6))
        lead = [slice(None)] * 2
        lead[axis] = slice(0, -1)
        trail = [slice(None)] * 2
        trail[axis] = slice(1, None)
        edge[tuple(lead)] |= jump
        edge[tuple(trail)] |= jump
    distance = np.full(z.shape, float(ramp))
    front = edge
    for step in range(ramp):
        distance[front & (distance > step)] = step
        grown = front.copy()
        grown[1:] |= front[:-1]
        grown[:-1] |= front[1:]
        grown[:, 1:] |= front[:, :-1]
        grown[:, :-1] |= front[:, 1:]
        front = grown
    return distance / ramp


def view_weights(view: View, surface: Surface, sharpness: float = 4.0, tolerance: float = 0.01,
                 border: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """For each covered texel: how much this view can be trusted there (0 = not seen), and where it lands.

    Weight = facing^sharpness (cosine between the surface normal and the direction to the camera),
    times fades near depth edges and the image border; 0 where the texel is behind what the view's
    Z pass saw (hidden), outside the frame, or facing away. Texels facing away are dropped first, so
    the projection works on the half of the surface the camera can see.
    """
    weight = np.zeros(len(surface.index), np.float32)
    xy = np.full((len(surface.index), 2), -1.0, np.float32)
    origin = view.origin.astype(np.float32)
    if view.ortho:
        to_camera = np.broadcast_to(-view.world_to_camera[2, :3].astype(np.float32), surface.position.shape)
        facing = np.einsum("ij,ij->i", surface.normal, to_camera)
    else:
        to_camera = origin[None, :] - surface.position
        facing = np.einsum("ij,ij->i", surface.normal, to_camera) / np.maximum(
            np.sqrt(np.einsum("ij,ij->i", to_camera, to_camera)), 1e-12)
    front = np.nonzero(facing > 0)[0]
    if not len(front):
        return weight, xy
    points, facing = surface.position[front], facing[front]
    matrix = (view.projection @ view.world_to_camera).astype(np.float32)
    clip = points @ matrix[:, :3].T + matrix[:, 3]
    w = clip[:, 3]
    depth = -(points @ view.world_to_camera[2, :3].astype(np.float32) + np.float32(view.world_to_camera[2, 3]))
    ahead = w > 1e-9
    w = np.where(ahead, w, 1.0)
    height, width = view.z.shape
    px = (clip[:, 0] / w * 0.5 + 0.5) * width
    py = (0.5 - clip[:, 1] / w * 0.5) * height
    inside = ahead & (px >= 0) & (px < width) & (py >= 0) & (py < height)
    col = np.clip(px.astype(np.int64), 0, width - 1)
    row = np.clip(py.astype(np.int64), 0, height - 1)
    # the farthest Z of the pixel and the 3 nearest around the projected point: texels on silhouettes and
    # creases are not lost to a neighbouring pixel
    col2 = np.clip(np.where(px - col >= 0.5, col + 1, col - 1), 0, width - 1)
    row2 = np.clip(np.where(py - row >= 0.5, row + 1, row - 1), 0, height - 1)
    z = view.z
    seen = np.maximum(np.maximum(z[row, col], z[row, col2]), np.maximum(z[row2, col], z[row2, col2]))
    unoccluded = depth <= seen * (1.0 + tolerance) + 1e-6
    edge = depth_edges(z)[row, col]
    margin = np.minimum(np.minimum(px, width - px), np.minimum(py, height - py)) / (border * max(width, height))
    value = facing ** sharpness * np.clip(edge, 0.0, 1.0) * np.clip(margin, 0.0, 1.0)
    weight[front] = np.where(inside & unoccluded, value, 0.0)
    xy[front] = np.stack([px, py], axis=1)
    return weight, xy


def sample(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of an (H, W, C) float image at pixel coordinates (x right, y down; centres at .5)."""
    height, width = image.shape[:2]
    x = np.clip(xy[:, 0] - 0.5, 0, width - 1)
    y = np.clip(xy[:, 1] - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def contribution(image: np.ndarray, weight: np.ndarray, xy: np.ndarray, blend: float = 2.0):
    """One view's part of the blend: (texels it sees, their weight^blend, the colours it gives them, weights).
    Independent per view, so views can be computed in parallel threads (numpy releases the GIL)."""
    seen = np.nonzero(weight > 0)[0]
    return seen, weight[seen] ** np.float32(blend), sample(image, xy[seen]), weight


def parallel_map(function, items: list) -> list:
    """`function` over `items` on a few threads (numpy's large operations run without the GIL)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(workers, thread_name_prefix="scene-diffusion-view") as pool:
        return list(pool.map(function, items))


class TextureAccumulator:
    """Views blended into the texture by weight. `coverage` is the best weight any view gave each texel."""

    def __init__(self, surface: Surface) -> None:
        self.surface = surface
        count = len(surface.index)
        self.colour_sum = np.zeros((count, 3), np.float32)
        self.weight_sum = np.zeros(count, np.float32)
        self.coverage = np.zeros(count, np.float32)

    def add(self, image: np.ndarray, weight: np.ndarray, xy: np.ndarray, blend: float = 2.0) -> None:
        """Blend a view's image (H, W, 3 float 0..1). `blend` sharpens towards the best view where views overlap."""
        self.add_contribution(contribution(image, weight, xy, blend))

    def add_contribution(self, part: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Add what `contribution` computed for one view (the cheap, sequential part of blending)."""
        seen, w, colours, weight = part
        self.colour_sum[seen] += colours * w[:, None]
        self.weight_sum[seen] += w
        np.maximum(self.coverage, weight, out=self.coverage)

    def colours(self) -> tuple[np.ndarray, np.ndarray]:
        """(colours (M, 3), painted (M,) bool) of the covered texels."""
        painted = self.weight_sum > 0
        colours = np.zeros_like(self.colour_sum)
        colours[painted] = self.colour_sum[painted] / self.weight_sum[painted, None]
        return colours, painted

    def texture(self, padding: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(texture (size, size, 3) float, painted (size, size) bool): unpainted texels filled, islands padded."""
        size = self.surface.size
        colours, painted = self.colours()
        flat = np.zeros((size * size, 3), np.float32)
        known = np.zeros(size * size, bool)
        flat[self.surface.index[painted]] = colours[painted]
        known[self.surface.index[painted]] = True
        texture = push_pull(flat.reshape(size, size, 3), known.reshape(size, size))
        return texture.astype(np.float32), known.reshape(size, size)


def push_pull(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill unknown pixels from known ones, smoothly, at every scale (a pull-push pyramid).

    Filling the whole texture also pads every UV island outwards, so mip-mapping and bilinear lookups
    near island borders meet the island's own colours, not black: no seams show.
    """
    if known.all() or not known.any():
        return image.copy() if known.any() else np.full_like(image, 0.5)
    levels = [(image * known[..., None], known.astype(image.dtype))]
    while min(levels[-1][1].shape) > 1:
        colour, weight = levels[-1]
        h, w = weight.shape
        ph, pw = h + h % 2, w + w % 2
        colour = np.pad(colour, ((0, ph - h), (0, pw - w), (0, 0)))
        weight = np.pad(weight, ((0, ph - h), (0, pw - w)))
        c = colour.reshape(ph // 2, 2, pw // 2, 2, -1).sum(axis=(1, 3))
        wsum = weight.reshape(ph // 2, 2, pw // 2, 2).sum(axis=(1, 3))
        levels.append((c, wsum))
    # push: from coarse to fine, unknown pixels take the (normalised) coarser value
    colour, weight = levels[-1]
    filled = colour / np.maximum(weight, 1e-12)[..., None]
    for colour, weight in reversed(levels[:-1]):
        h, w = weight.shape
        up = np.repeat(np.repeat(filled, 2, axis=0), 2, axis=1)[:h, :w]
        here = colour / np.maximum(weight, 1e-12)[..., None]
        filled = np.where((weight > 0)[..., None], here, up)
    return np.where(known[..., None], image, filled)


def view_lookup(texture: np.ndarray, coverage_texture: np.ndarray, uv: np.ndarray, alpha: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The current texture and its coverage as a view sees them, through the view's UV pass.

    uv: (H, W, 2) UV of the surface seen at each pixel; alpha: (H, W) 1 where the object is seen.
    Returns (image (H, W, 3) float, coverage (H, W) float, 0 where the object is not seen).
    """
    size = texture.shape[0]
    height, width = alpha.shape
    xy = np.stack([uv[..., 0].ravel() * size, (1.0 - uv[..., 1].ravel()) * size], axis=1)
    image = sample(texture, xy).reshape(height, width, -1)
    coverage = sample(coverage_texture[..., None], xy).reshape(height, width)
    seen = alpha > 0.5
    return np.where(seen[..., None], image, 0.0), np.where(seen, coverage, 0.0)


def inpaint_mask(coverage: np.ndarray, alpha: np.ndarray, threshold: float = 0.3, grow: int = 2) -> np.ndarray:
    """uint8 mask (255 = generate) of what a view sees of the object but no view has covered well yet,
    grown by a few pixels so the new paint overlaps and blends with the old."""
    need = (alpha > 0.5) & (coverage < threshold)
    for _ in range(grow):
        grown = need.copy()
        grown[1:] |= need[:-1]
        grown[:-1] |= need[1:]
        grown[:, 1:] |= need[:, :-1]
        grown[:, :-1] |= need[:, 1:]
        need = grown & (alpha > 0.5)
    return (need * 255).astype(np.uint8)


def coverage_texture(surface: Surface, coverage: np.ndarray) -> np.ndarray:
    out = np.zeros(surface.size * surface.size, np.float32)
    out[surface.index] = coverage
    return out.reshape(surface.size, surface.size)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB of two images in 0..1 (over `mask` when given)."""
    diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    if mask is not None:
        diff = diff[mask]
    mse = float(diff.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)
