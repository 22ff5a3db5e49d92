"""Read the OpenEXR files Blender writes for render passes, with numpy alone.

Blender has no Python API that hands over a render pass as an array in background mode (the Render
Result image has no pixels there), so the add-on renders to an EXR and reads it back here. Only what
Blender writes is supported: scanline images, single-part or multi-part (Blender 5's multilayer files
are multi-part, one part per pass), channels of type HALF, FLOAT or UINT, compression NONE, ZIP or
ZIPS (zlib, which the standard library has). Tiled and deep files and the other codecs (PIZ, DWAA,
...) are refused with a ValueError naming what to use instead.

Layout reference: "The OpenEXR File Layout" (openexr.com) and OpenEXR's `internal_zip.c`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from os import PathLike

import numpy as np

MAGIC = 20000630

_COMPRESSIONS = ("NONE", "RLE", "ZIPS", "ZIP", "PIZ", "PXR24", "B44", "B44A", "DWAA", "DWAB", "HTJ2K256", "HTJ2K32")
_LINES_PER_CHUNK = {"NONE": 1, "ZIPS": 1, "ZIP": 16}
_PIXEL_TYPES = {0: ("UINT", "<u4"), 1: ("HALF", "<f2"), 2: ("FLOAT", "<f4")}

_TILED = 0x200
_NON_IMAGE = 0x800
_MULTI_PART = 0x1000


@dataclass(frozen=True)
class _Channel:
    name: str
    dtype: str
    x_sampling: int
    y_sampling: int


@dataclass(frozen=True)
class _Part:
    name: str
    kind: str
    channels: tuple[_Channel, ...]
    compression: str
    data_window: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax (inclusive)
    display_window: tuple[int, int, int, int]
    chunk_count: int | None

    @property
    def width(self) -> int:
        return self.data_window[2] - self.data_window[0] + 1

    @property
    def height(self) -> int:
        return self.data_window[3] - self.data_window[1] + 1

    @property
    def lines_per_chunk(self) -> int:
        return _LINES_PER_CHUNK[self.compression]


def read_exr(path: str | PathLike) -> dict[str, np.ndarray]:
    """Every channel of an EXR file as float32 (height, width) arrays, top row first.

    Arrays span the display window (the full frame): pixels outside the data window are 0. Names are
    as stored: "ViewLayer.Combined.R", "ViewLayer.Depth.Z" in multilayer files, "R", "G", "B", "A" in
    single-layer ones. In a multi-part file whose channel names do not already start with their part's
    name, the part name is put in front ("part.R"), so that parts cannot shadow each other.
    UINT channels are converted to float32 (exact up to 2**24).
    """
    data = memoryview(open(path, "rb").read())
    where = f"{path}"
    if len(data) < 8 or struct.unpack_from("<i", data, 0)[0] != MAGIC:
        raise ValueError(f"{where} is not an OpenEXR file (no EXR magic number)")
    version = struct.unpack_from("<I", data, 4)[0]
    if version & 0xFF != 2:
        raise ValueError(f"{where}: OpenEXR format version {version & 0xFF} is not supported (only 2)")
    flags = version & ~0xFF
    if flags & _NON_IMAGE:
        raise ValueError(f"{where} holds deep data, which is not supported: write a plain scanline EXR")
    if flags & _TILED:
        raise ValueError(f"{where} is a tiled EXR, which is not supported: write a scanline EXR")
    multi_part = bool(flags & _MULTI_PART)

    pos = 8
    headers = []
    while True:
        attributes, pos = _read_header(data, pos, where)
        headers.append(attributes)
        if not multi_part:
            break
        if data[pos] == 0:  # an empty header ends the list of parts
            pos += 1
            break
    parts = [_part(attributes, index, multi_part, where) for index, attributes in enumerate(headers)]

    tables = []
    for part in parts:
        count = part.chunk_count if part.chunk_count is not None else -(-part.height // part.lines_per_chunk)
        if pos + 8 * count > len(data):
            raise ValueError(f"{where} is truncated (its chunk offset table is incomplete)")
        tables.append(np.frombuffer(data, dtype="<u8", count=count, offset=pos))
        pos += 8 * count

    channels: dict[str, np.ndarray] = {}
    for index, (part, offsets) in enumerate(zip(parts, tables, strict=True)):
        for name, array in _read_part(data, part, index if multi_part else None, offsets, where).items():
            if multi_part and len(parts) > 1 and part.name and not name.startswith(part.name + "."):
                name = f"{part.name}.{name}"
            channels[name] = array
    return channels


def find_channel(channels: dict[str, np.ndarray], *suffixes: str) -> np.ndarray:
    """The first channel whose name is, or ends with ".", one of the suffixes, tried in the order given.

    `find_channel(ch, "Depth.Z", "Z")` finds "ViewLayer.Depth.Z" in a multilayer file and "Z" in a
    single-layer one. A suffix may start with a dot or not: ".Depth.Z" and "Depth.Z" mean the same.
    """
    for suffix in suffixes:
        bare = suffix.lstrip(".")
        for name, array in channels.items():
            if name == bare or name.endswith("." + bare):
                return array
    raise KeyError(f"no channel ending in {' or '.join(map(repr, suffixes))}; the file has: "
                   f"{', '.join(sorted(channels)) or 'no channels'}")


# -- header --------------------------------------------------------------------------------------


def _read_string(data: memoryview, pos: int, where: str) -> tuple[str, int]:
    end = pos
    size = len(data)
    while end < size and data[end] != 0:
        end += 1
    if end >= size:
        raise ValueError(f"{where} is truncated (in its header)")
    return bytes(data[pos:end]).decode("latin-1"), end + 1


def _read_header(data: memoryview, pos: int, where: str) -> tuple[dict[str, tuple[str, bytes]], int]:
    attributes = {}
    while True:
        if pos >= len(data):
            raise ValueError(f"{where} is truncated (in its header)")
        if data[pos] == 0:
            return attributes, pos + 1
        name, pos = _read_string(data, pos, where)
        kind, pos = _read_string(data, pos, where)
        if pos + 4 > len(data):
            raise ValueError(f"{where} is truncated (in its header)")
        size = struct.unpack_from("<i", data, pos)[0]
        pos += 4
        if size < 0 or pos + size > len(data):
            raise ValueError(f"{where} is truncated or corrupt (attribute {name!r})")
        attributes[name] = (kind, bytes(data[pos:pos + size]))
        pos += size


def _read_channels(value: bytes, where: str) -> tuple[_Channel, ...]:
    channels = []
    pos = 0
    while pos < len(value) and value[pos] != 0:
        end = value.index(b"\0", pos)
        name = value[pos:end].decode("latin-1")
        pixel_type, _linear, x_sampling, y_sampling = struct.unpack_from("<iB3xii", value, end + 1)
        if pixel_type not in _PIXEL_TYPES:
            raise ValueError(f"{where}: channel {name!r} has unknown pixel type {pixel_type}")
        channels.append(_Channel(name, _PIXEL_TYPES[pixel_type][1], x_sampling, y_sampling))
        pos = end + 1 + 16
    return tuple(channels)


def _part(attributes: dict[str, tuple[str, bytes]], index: int, multi_part: bool, where: str) -> _Part:
    def required(name: str) -> bytes:
        if name not in attributes:
            raise ValueError(f"{where}: header {index} lacks the required attribute {name!r}")
        return attributes[name][1]

    kind = attributes.get("type", ("string", b"scanlineimage"))[1].decode("latin-1")
    if kind != "scanlineimage":
        what = "deep" if kind.startswith("deep") else "tiled" if kind == "tiledimage" else f"{kind!r}"
        raise ValueError(f"{where}: part {index} is a {what} image, which is not supported: write a scanline EXR")
    code = required("compression")[0]
    compression = _COMPRESSIONS[code] if code < len(_COMPRESSIONS) else f"#{code}"
    if compression not in _LINES_PER_CHUNK:
        raise ValueError(f"{where} uses {compression} compression, which this reader does not support: "
                         "write the EXR with codec NONE, ZIP or ZIPS")
    channels = _read_channels(required("channels"), where)
    for channel in channels:
        if (channel.x_sampling, channel.y_sampling) != (1, 1):
            raise ValueError(f"{where}: channel {channel.name!r} is subsampled "
                             f"({channel.x_sampling}x{channel.y_sampling}), which is not supported")
    data_window = struct.unpack("<4i", required("dataWindow"))
    display_window = struct.unpack("<4i", required("displayWindow"))
    if data_window[2] < data_window[0] or data_window[3] < data_window[1]:
        raise ValueError(f"{where}: empty data window {data_window}")
    chunk_count = struct.unpack("<i", attributes["chunkCount"][1])[0] if "chunkCount" in attributes else None
    if multi_part and chunk_count is None:
        raise ValueError(f"{where}: part {index} of a multi-part file lacks 'chunkCount'")
    name = attributes.get("name", ("string", b""))[1].decode("latin-1")
    return _Part(name, kind, channels, compression, data_window, display_window, chunk_count)


# -- pixels --------------------------------------------------------------------------------------


def _read_part(data: memoryview, part: _Part, part_number: int | None, offsets: np.ndarray,
               where: str) -> dict[str, np.ndarray]:
    """Decode every chunk of one part into a buffer of whole scanlines, then split it by channel."""
    xmin, ymin, _, ymax = part.data_window
    width, height = part.width, part.height
    line_bytes = sum(np.dtype(c.dtype).itemsize for c in part.channels) * width
    pixels = bytearray(line_bytes * height)
    prefix = "<iii" if part_number is not None else "<ii"
    prefix_size = struct.calcsize(prefix)
    for offset in offsets.tolist():
        if offset == 0 or offset + prefix_size > len(data):
            raise ValueError(f"{where} is truncated (a chunk is missing)")
        fields = struct.unpack_from(prefix, data, offset)
        if part_number is not None and fields[0] != part_number:
            raise ValueError(f"{where} is corrupt (a chunk of part {fields[0]} is listed under part {part_number})")
        y, size = fields[-2:]
        start = offset + prefix_size
        if not ymin <= y <= ymax or size < 0 or start + size > len(data):
            raise ValueError(f"{where} is truncated or corrupt (chunk at line {y})")
        lines = min(part.lines_per_chunk, ymax - y + 1)
        expected = lines * line_bytes
        block = _decompress(part.compression, data[start:start + size], expected, where)
        pixels[(y - ymin) * line_bytes:(y - ymin) * line_bytes + expected] = block

    # One scanline is each channel's `width` samples in turn, so a structured dtype splits them at once.
    line = np.dtype([(f"c{i}", c.dtype, (width,)) for i, c in enumerate(part.channels)])
    rows = np.frombuffer(pixels, dtype=line, count=height)
    return {c.name: _place(rows[f"c{i}"], part) for i, c in enumerate(part.channels)}


def _place(values: np.ndarray, part: _Part) -> np.ndarray:
    """The data window's values in a display-window-sized float32 array (0 where there is no data)."""
    values = values.astype(np.float32)
    if part.data_window == part.display_window:
        return values
    dxmin, dymin, dxmax, dymax = part.display_window
    out = np.zeros((dymax - dymin + 1, dxmax - dxmin + 1), dtype=np.float32)
    xmin, ymin, xmax, ymax = part.data_window
    x0, y0, x1, y1 = max(xmin, dxmin), max(ymin, dymin), min(xmax, dxmax), min(ymax, dymax)
    if x0 <= x1 and y0 <= y1:
        out[y0 - dymin:y1 - dymin + 1, x0 - dxmin:x1 - dxmin + 1] = \
            values[y0 - ymin:y1 - ymin + 1, x0 - xmin:x1 - xmin + 1]
    return out


def _decompress(compression: str, block: memoryview, expected: int, where: str) -> bytes:
    # Writers store a chunk raw when compressing would not make it smaller.
    if compression == "NONE" or len(block) == expected:
        if len(block) != expected:
            raise ValueError(f"{where} is corrupt (a chunk has {len(block)} bytes, expected {expected})")
        return bytes(block)
    try:
        raw = zlib.decompress(block)
    except zlib.error as exc:
        raise ValueError(f"{where} is corrupt (a {compression} chunk does not inflate: {exc})") from None
    if len(raw) != expected:
        raise ValueError(f"{where} is corrupt (a chunk inflates to {len(raw)} bytes, expected {expected})")
    return _unpredict(np.frombuffer(raw, dtype=np.uint8))


def _unpredict(t: np.ndarray) -> bytes:
    """Undo the ZIP codec's byte predictor and its split of even and odd bytes into two halves."""
    deltas = t - np.uint8(128)  # uint8 arithmetic wraps, as the C code's does
    deltas[0] = t[0]
    t = np.cumsum(deltas, dtype=np.uint8)
    out = np.empty_like(t)
    half = (len(t) + 1) // 2
    out[0::2] = t[:half]
    out[1::2] = t[half:]
    return out.tobytes()
