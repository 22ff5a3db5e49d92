"""The add-on's EXR reader against files real Blender writes, and against hand-built edge cases."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from blender_addon.core.exr import find_channel, read_exr

bpy = pytest.importorskip("bpy")

W, H = 64, 48
CODECS = ("NONE", "ZIP", "ZIPS")
DEPTHS = ("16", "32")


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """The default cube, shifted into the top half of the frame, rendered to every supported EXR flavour."""
    folder = tmp_path_factory.mktemp("exr")
    bpy.ops.wm.read_factory_settings(use_empty=False)
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
    scene.render.film_transparent = True
    scene.view_layers[0].use_pass_z = True
    scene.camera.data.shift_y = -0.3  # the view moves down: the cube sits in the top half
    settings = scene.render.image_settings
    files = {}
    for media in ("MULTI_LAYER_IMAGE", "IMAGE"):
        settings.media_type = media
        if media == "IMAGE":
            settings.file_format = "OPEN_EXR"
        for codec in (*CODECS, "PIZ"):
            for depth in DEPTHS:
                settings.exr_codec, settings.color_depth = codec, depth
                scene.render.filepath = str(folder / f"{media}-{codec}-{depth}.exr")
                bpy.ops.render.render(write_still=True)
                files[media, codec, depth] = scene.render.filepath
    settings.file_format = "PNG"
    settings.color_mode, settings.color_depth = "RGBA", "8"
    scene.render.filepath = str(folder / "render.png")
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(scene.render.filepath)
    # Blender's pixels run bottom row first: flipped, they are the image as viewed.
    files["png"] = np.array(image.pixels[:], dtype=np.float32).reshape(H, W, 4)[::-1]
    bpy.data.images.remove(image)
    return files


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_multilayer_render_passes(renders, codec, depth):
    channels = read_exr(renders["MULTI_LAYER_IMAGE", codec, depth])
    assert set(channels) == {"ViewLayer.Combined.R", "ViewLayer.Combined.G", "ViewLayer.Combined.B",
                             "ViewLayer.Combined.A", "ViewLayer.Depth.Z"}
    for array in channels.values():
        assert array.shape == (H, W) and array.dtype == np.float32
    z = find_channel(channels, ".Depth.Z", "Z")
    alpha = find_channel(channels, "Combined.A")
    cube = z < 1e9
    assert 50 < cube.sum() < H * W / 2
    assert np.isfinite(z[cube]).all() and 5 < z[cube].min() < z[cube].max() < 20  # the camera is ~11 m away
    assert (z[~cube] >= 1e9).all()  # Blender's "nothing here" is 1e10
    np.testing.assert_array_equal(alpha > 0.5, cube)
    for name in "RGB":
        values = find_channel(channels, f"Combined.{name}")[cube]
        assert (values >= 0).all() and (values <= 1).all() and values.max() > 0.05


@pytest.mark.parametrize("codec", CODECS)
def test_top_row_comes_first(renders, codec):
    """The cube was framed into the top half; a PNG of the same frame, as Blender loads it, agrees."""
    z = find_channel(read_exr(renders["MULTI_LAYER_IMAGE", codec, "32"]), "Depth.Z")
    rows = np.nonzero((z < 1e9).any(axis=1))[0]
    assert rows.min() < H // 4 and rows.max() < H // 2 + 4
    png_alpha = renders["png"][..., 3]
    np.testing.assert_array_equal(png_alpha > 0.5, z < 1e9)


@pytest.mark.parametrize("codec", CODECS)
def test_half_and_float_files_agree(renders, codec):
    half = read_exr(renders["MULTI_LAYER_IMAGE", codec, "16"])
    full = read_exr(renders["MULTI_LAYER_IMAGE", codec, "32"])
    for name in full:
        np.testing.assert_allclose(half[name], full[name], rtol=2e-3, atol=1e-3)
    # Blender keeps Depth in FLOAT even in a half file: no 1e10 -> inf overflow.
    np.testing.assert_array_equal(half["ViewLayer.Depth.Z"], full["ViewLayer.Depth.Z"])


@pytest.mark.parametrize("codec", CODECS)
def test_single_layer_file(renders, codec):
    channels = read_exr(renders["IMAGE", codec, "16"])
    assert set(channels) == {"R", "G", "B", "A"}
    multi = read_exr(renders["MULTI_LAYER_IMAGE", codec, "16"])
    np.testing.assert_array_equal(find_channel(channels, "A"), multi["ViewLayer.Combined.A"])
    np.testing.assert_array_equal(find_channel(channels, "Combined.R", "R"), multi["ViewLayer.Combined.R"])


def test_unsupported_codec_is_named(renders):
    with pytest.raises(ValueError, match="PIZ compression.*NONE, ZIP or ZIPS"):
        read_exr(renders["MULTI_LAYER_IMAGE", "PIZ", "16"])


def test_find_channel_lists_what_there_is():
    channels = {"ViewLayer.Combined.R": np.zeros((1, 1)), "ViewLayer.Depth.Z": np.ones((1, 1))}
    assert find_channel(channels, "Normal.X", "Depth.Z")[0, 0] == 1
    assert find_channel(channels, ".Depth.Z")[0, 0] == 1
    with pytest.raises(KeyError, match="ViewLayer.Combined.R, ViewLayer.Depth.Z"):
        find_channel(channels, "Normal.X")
    with pytest.raises(KeyError):
        find_channel(channels, "Z.R")  # a suffix matches whole name parts only


# -- hand-built files: what Blender does not write but the format allows -------------------------------


def write_exr(path, channels, compression=0, data_window=None, display_window=None, flags=0,
              decreasing=False, kind=None):
    """A minimal single-part scanline EXR: channels {name: (array, pixel_type)}, NONE (0) or ZIP (3)."""
    names = sorted(channels)
    height, width = channels[names[0]][0].shape
    data_window = data_window or (0, 0, width - 1, height - 1)
    display_window = display_window or data_window
    dtypes = {0: "<u4", 1: "<f2", 2: "<f4"}

    def attribute(name, kind, value):
        return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value

    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", channels[n][1], 0, 1, 1) for n in names) + b"\0"
    header = b"".join([
        attribute("channels", "chlist", chlist),
        attribute("compression", "compression", bytes([compression])),
        attribute("dataWindow", "box2i", struct.pack("<4i", *data_window)),
        attribute("displayWindow", "box2i", struct.pack("<4i", *display_window)),
        attribute("lineOrder", "lineOrder", bytes([1 if decreasing else 0])),
        attribute("pixelAspectRatio", "float", struct.pack("<f", 1)),
        attribute("screenWindowCenter", "v2f", struct.pack("<2f", 0, 0)),
        attribute("screenWindowWidth", "float", struct.pack("<f", 1)),
        *([attribute("type", "string", kind.encode())] if kind else []),
    ]) + b"\0"
    lines_per_chunk = 16 if compression == 3 else 1
    chunks = []
    for first in range(0, height, lines_per_chunk):
        rows = range(first, min(first + lines_per_chunk, height))
        raw = b"".join(np.ascontiguousarray(channels[n][0][r], dtype=dtypes[channels[n][1]]).tobytes()
                       for r in rows for n in names)
        if compression == 3:
            raw = np.frombuffer(raw, dtype=np.uint8)
            t = np.concatenate([raw[0::2], raw[1::2]])
            predicted = t.copy()
            predicted[1:] = (t[1:].astype(np.int16) - t[:-1] + 128) & 0xFF
            raw = zlib.compress(predicted.tobytes())
        chunks.append(struct.pack("<ii", data_window[1] + first, len(raw)) + raw)
    if decreasing:
        chunks.reverse()
    start = 8 + len(header) + 8 * len(chunks)
    offsets, position = [], start
    for chunk in chunks:
        offsets.append(position)
        position += len(chunk)
    if decreasing:
        offsets.reverse()  # the table is by increasing y, wherever the chunk lies
    with open(path, "wb") as f:
        f.write(struct.pack("<iI", 20000630, 2 | flags) + header + struct.pack(f"<{len(offsets)}Q", *offsets))
        f.write(b"".join(chunks))
    return path


def ramp(height=20, width=7):
    return np.arange(height * width, dtype=np.float32).reshape(height, width)


@pytest.mark.parametrize("compression", [0, 3])
def test_mixed_pixel_types_in_one_part(tmp_path, compression):
    values = ramp()
    path = write_exr(tmp_path / "mixed.exr", {"Y": (values, 1), "Z": (values * 1000, 2), "id": (values, 0)},
                     compression=compression)
    channels = read_exr(path)
    np.testing.assert_array_equal(channels["Y"], values)
    np.testing.assert_array_equal(channels["Z"], values * 1000)
    np.testing.assert_array_equal(channels["id"], values)
    assert all(a.dtype == np.float32 for a in channels.values())


def test_decreasing_line_order(tmp_path):
    values = ramp()
    path = write_exr(tmp_path / "down.exr", {"R": (values, 2)}, decreasing=True)
    np.testing.assert_array_equal(read_exr(path)["R"], values)


def test_data_window_is_placed_in_the_display_window(tmp_path):
    values = ramp(4, 3) + 1
    path = write_exr(tmp_path / "crop.exr", {"Z": (values, 2)}, data_window=(12, 5, 14, 8),
                     display_window=(10, 3, 19, 11))
    z = read_exr(path)["Z"]
    assert z.shape == (9, 10)
    np.testing.assert_array_equal(z[2:6, 2:5], values)
    assert z.sum() == values.sum()


def test_overscan_is_cropped_to_the_display_window(tmp_path):
    values = ramp(6, 6)
    path = write_exr(tmp_path / "overscan.exr", {"Z": (values, 2)}, data_window=(-1, -1, 4, 4),
                     display_window=(0, 0, 3, 3))
    np.testing.assert_array_equal(read_exr(path)["Z"], values[1:5, 1:5])


def test_refusals_are_clear(tmp_path):
    text = tmp_path / "a.exr"
    text.write_text("not an image at all")
    with pytest.raises(ValueError, match="not an OpenEXR file"):
        read_exr(text)
    values = ramp()
    with pytest.raises(ValueError, match="tiled"):
        read_exr(write_exr(tmp_path / "tiled.exr", {"R": (values, 2)}, flags=0x200))
    with pytest.raises(ValueError, match="deep"):
        read_exr(write_exr(tmp_path / "deep.exr", {"R": (values, 2)}, flags=0x800))
    with pytest.raises(ValueError, match="deep"):
        read_exr(write_exr(tmp_path / "deep2.exr", {"R": (values, 2)}, kind="deepscanline"))
    with pytest.raises(ValueError, match="DWAA compression"):
        read_exr(write_exr(tmp_path / "dwaa.exr", {"R": (values, 2)}, compression=8))
    whole = write_exr(tmp_path / "whole.exr", {"R": (values, 2)}).read_bytes()
    cut = tmp_path / "cut.exr"
    cut.write_bytes(whole[:-100])
    with pytest.raises(ValueError, match="truncated"):
        read_exr(cut)
