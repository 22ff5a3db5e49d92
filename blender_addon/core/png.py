"""PNG encoding and decoding in numpy and zlib: Blender's Python has no PIL.

Encoding writes filter 0 rows (fast, and sizes don't matter on loopback); decoding undoes all five
PNG row filters and reads the text chunks, where generated images carry their parameters.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)
_CHANNELS = {v: k for k, v in _COLOR_TYPES.items()}


class PNGError(ValueError):
    pass


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, text: dict[str, str] | None = None, level: int = 1) -> bytes:
    """PNG bytes of an (H, W), (H, W, 1..4) uint8 array, top row first; `text` goes into iTXt chunks."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise PNGError(f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _COLOR_TYPES:
        raise PNGError(f"expected (H, W[, 1..4]) pixels, got shape {array.shape}")
    height, width, channels = array.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), array.reshape(height, width * channels)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        chunks.append(_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")))
    chunks.append(_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)))
    chunks.append(_chunk(b"IEND", b""))
    return SIGNATURE + b"".join(chunks)


def decode_png(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """(pixels, text): pixels (H, W, C) uint8 top row first (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).

    8-bit, non-interlaced, non-palette images: what diffusion servers write. Others raise PNGError.
    """
    if not data.startswith(SIGNATURE):
        raise PNGError("not a PNG image")
    pos, idat, text, header = len(SIGNATURE), [], {}, None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            text[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            text[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"IEND":
            break
    if header is None:
        raise PNGError("PNG without a header")
    width, height, depth, color_type, _, _, interlace = header
    if depth != 8 or color_type not in _CHANNELS or interlace:
        raise PNGError(f"unsupported PNG (bit depth {depth}, colour type {color_type}, interlace {interlace})")
    channels = _CHANNELS[color_type]
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    if raw.size != height * (stride + 1):
        raise PNGError("truncated PNG image data")
    raw = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.int16)
    for y in range(height):
        kind, row = raw[y, 0], raw[y, 1:].astype(np.int16)
        if kind == 0:
            line = row
        elif kind == 1:  # Sub: each byte adds the one `channels` to its left: a running sum per channel
            line = np.cumsum(row.reshape(width, channels), axis=0).reshape(stride) & 0xFF
        elif kind == 2:  # Up
            line = (row + previous) & 0xFF
        elif kind == 3:  # Average: depends on the left neighbour, so pixel by pixel
            line = _unfilter_sequential(row, previous, channels, _average)
        elif kind == 4:  # Paeth
            line = _unfilter_sequential(row, previous, channels, _paeth)
        else:
            raise PNGError(f"bad PNG row filter {kind}")
        out[y] = line
        previous = line.astype(np.int16)
    return out.reshape(height, width, channels), text


def _average(left, up, up_left):
    return (left + up) >> 1


def _paeth(left, up, up_left):
    p = left + up - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
    return np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))


def _unfilter_sequential(row, previous, channels, predictor):
    """Rows whose predictor needs the decoded left pixel: walk pixels, all channels of one at a time."""
    line = np.zeros_like(row)
    width = row.size // channels
    row, prev, line = (a.reshape(width, channels) for a in (row, previous, line))
    zero = np.zeros(channels, np.int16)
    for x in range(width):
        left = line[x - 1] if x else zero
        up_left = prev[x - 1] if x else zero
        line[x] = (row[x] + predictor(left, prev[x], up_left)) & 0xFF
    return line.reshape(-1)
