"""Preprocessing: closed-form checks on tiny synthetic images with known pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pda_repro.preprocess import (
    ImageReadError,
    center_crop_box,
    deprocess,
    load_image,
    load_images,
    read_rgb,
    resize_size,
)
from pda_repro.zoo import ModelSpec


def make_spec(**kw) -> ModelSpec:
    base = dict(
        name="t",
        prototxt=Path("unused.prototxt"),
        input_shape=(3, 2, 3),
        channel_order="RGB",
        mean=(10.0, 20.0, 30.0),
        scale=0.5,
        resize=None,
        interpolation="bilinear",
    )
    base.update(kw)
    return ModelSpec(**base)


@pytest.fixture
def pixels(rng) -> np.ndarray:
    """A 2×3 RGB image of known, non-constant pixels."""
    return rng.integers(0, 256, size=(2, 3, 3), dtype=np.uint8)


def save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path, format="PNG")
    return path


def test_rgb_png_gives_exact_tensor(tmp_path, pixels):
    spec = make_spec()
    img = load_image(save_png(tmp_path / "a.png", pixels), spec)
    expected = np.empty((3, 2, 3), dtype=np.float64)
    for c, mean in enumerate((10.0, 20.0, 30.0)):
        for i in range(2):
            for j in range(3):
                expected[c, i, j] = (float(pixels[i, j, c]) - mean) * 0.5
    assert img.x.dtype == np.float32 and img.x.shape == (3, 2, 3)
    np.testing.assert_array_equal(img.x, expected.astype(np.float32))
    np.testing.assert_array_equal(img.display, pixels)
    assert img.original_size == (2, 3)
    assert img.path == tmp_path / "a.png"


def test_bgr_order_for_caffe_nets(tmp_path, pixels):
    # Caffe Model Zoo nets: channels B, G, R and the mean given in that order.
    spec = make_spec(channel_order="BGR", mean=(104.0, 117.0, 123.0), scale=1.0)
    x = load_image(save_png(tmp_path / "a.png", pixels), spec).x
    for c_net, c_rgb, mean in ((0, 2, 104.0), (1, 1, 117.0), (2, 0, 123.0)):
        np.testing.assert_array_equal(x[c_net], pixels[:, :, c_rgb].astype(np.float32) - mean)


def test_deprocess_inverts(tmp_path, pixels):
    for order, mean in (("RGB", (1.0, 2.0, 3.0)), ("BGR", (104.0, 117.0, 123.0))):
        spec = make_spec(channel_order=order, mean=mean, scale=0.0078125)
        img = load_image(save_png(tmp_path / "a.png", pixels), spec)
        np.testing.assert_array_equal(deprocess(img.x, spec), img.display)


def test_center_crop_after_shorter_side_resize(tmp_path, rng):
    # 4×6 image whose shorter side already equals `resize`: no resampling, the crop takes columns 1..4.
    arr = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    spec = make_spec(input_shape=(3, 4, 4), mean=(0.0, 0.0, 0.0), scale=1.0, resize=4)
    img = load_image(save_png(tmp_path / "wide.png", arr), spec)
    np.testing.assert_array_equal(img.display, arr[:, 1:5])
    # a tall one: rows 1..4
    tall = rng.integers(0, 256, size=(7, 4, 3), dtype=np.uint8)
    img = load_image(save_png(tmp_path / "tall.png", tall), spec)
    np.testing.assert_array_equal(img.display, tall[1:5])


def test_resize_geometry_closed_form():
    assert resize_size(480, 640, 256, (224, 224)) == (256, 341)  # int(256 * 640 / 480) = 341
    assert resize_size(640, 480, 256, (224, 224)) == (341, 256)
    assert resize_size(300, 300, None, (227, 227)) == (227, 227)
    assert center_crop_box(256, 341, (224, 224)) == (16, 58, 240, 282)
    with pytest.raises(ValueError, match="larger"):
        center_crop_box(10, 10, (11, 10))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resize_of_constant_image_is_constant(tmp_path, interpolation):
    arr = np.empty((30, 50, 3), dtype=np.uint8)
    arr[...] = (200, 100, 7)
    spec = make_spec(input_shape=(3, 8, 8), resize=10, interpolation=interpolation, mean=(0, 0, 0), scale=1.0)
    img = load_image(save_png(tmp_path / "c.png", arr), spec)
    assert img.display.shape == (8, 8, 3)
    np.testing.assert_array_equal(img.display, np.broadcast_to(np.array([200, 100, 7], np.uint8), (8, 8, 3)))
    # straight-to-input resize (resize=None) too
    img = load_image(tmp_path / "c.png", make_spec(input_shape=(3, 5, 7), interpolation=interpolation))
    assert img.x.shape == (3, 5, 7)
    np.testing.assert_array_equal(img.x[0], np.full((5, 7), (200 - 10) * 0.5, np.float32))


def test_exif_orientation_is_honoured(tmp_path):
    # Stored 16 high × 32 wide, left half black, right half white; EXIF orientation 6 says "rotate 90° CW
    # to display", so the displayed image is 32 high × 16 wide with the black half on top.
    arr = np.zeros((16, 32, 3), dtype=np.uint8)
    arr[:, 16:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    rgb = read_rgb(path)
    assert rgb.shape == (32, 16, 3)
    assert rgb[2:14].max() < 20 and rgb[18:30].min() > 235


def test_rgba_composited_over_white(tmp_path):
    arr = np.zeros((1, 3, 4), dtype=np.uint8)
    arr[0, 0] = (10, 20, 30, 255)  # opaque: kept
    arr[0, 1] = (10, 20, 30, 0)  # transparent: white background
    arr[0, 2] = (0, 0, 200, 102)  # 40 % opaque blue over white
    rgb = read_rgb(save_png(tmp_path / "rgba.png", arr, mode="RGBA"))
    np.testing.assert_array_equal(rgb[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(rgb[0, 1], [255, 255, 255])
    a = 102 / 255
    expected = np.array([255 * (1 - a), 255 * (1 - a), 200 * a + 255 * (1 - a)])
    np.testing.assert_allclose(rgb[0, 2], expected, atol=1)


def test_greyscale_replicated_and_gray_nets(tmp_path, rng):
    grey = rng.integers(0, 256, size=(2, 3), dtype=np.uint8)
    path = save_png(tmp_path / "g.png", grey, mode="L")
    rgb = read_rgb(path)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], grey)
    # A 1-channel net (MNIST-like: pixels * 1/256, no mean) on a greyscale file: exact.
    spec = make_spec(input_shape=(1, 2, 3), channel_order="GRAY", mean=(0.0,), scale=0.00390625)
    x = load_image(path, spec).x
    np.testing.assert_array_equal(x, grey[None].astype(np.float32) * np.float32(0.00390625))
    # ... and on a colour file: ITU-R 601-2 luma.
    colour = rng.integers(0, 256, size=(2, 3, 3), dtype=np.uint8)
    x = load_image(
        save_png(tmp_path / "c.png", colour),
        make_spec(input_shape=(1, 2, 3), channel_order="GRAY", mean=(0.0,), scale=1.0),
    ).x
    luma = colour[..., 0] * 0.299 + colour[..., 1] * 0.587 + colour[..., 2] * 0.114
    np.testing.assert_allclose(x[0], luma, atol=0.51)


def test_palette_cmyk_and_16bit(tmp_path, pixels):
    pal = Image.fromarray(pixels).quantize(colors=6)  # palette image with the exact 6 colours
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), pixels)

    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "c.tiff")
    np.testing.assert_array_equal(read_rgb(tmp_path / "c.tiff"), pixels)

    deep = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "d.png")[0, :, 0], [0, 100, 255])

    Image.fromarray(pixels).save(tmp_path / "b.bmp")
    np.testing.assert_array_equal(read_rgb(tmp_path / "b.bmp"), pixels)


def test_bad_files_raise_one_line_naming_the_file(tmp_path, pixels):
    missing = tmp_path / "nope.jpg"
    text = tmp_path / "notes.png"
    text.write_text("hello, not an image\n")
    buf = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(pixels, 40, 0), 40, 1)).save(buf, format="JPEG")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path, what in (
        (missing, "not found"),
        (text, "cannot read"),
        (truncated, "truncated"),
        (empty, "cannot read"),
        (tmp_path, "directory"),
    ):
        with pytest.raises(ImageReadError) as info:
            read_rgb(path)
        msg = str(info.value)
        assert str(path) in msg and what in msg and "\n" not in msg


def test_load_images_stacks(tmp_path, rng):
    arrays = [rng.integers(0, 256, size=(2, 3, 3), dtype=np.uint8) for _ in range(3)]
    paths = [save_png(tmp_path / f"{i}.png", a) for i, a in enumerate(arrays)]
    spec = make_spec()
    batch = load_images(paths, spec)
    assert batch.shape == (3, 3, 2, 3) and batch.dtype == np.float32
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(batch[i], load_image(p, spec).x)
    with pytest.raises(ValueError, match="no images"):
        load_images([], spec)


def test_bad_spec_values(tmp_path, pixels):
    path = save_png(tmp_path / "a.png", pixels)
    with pytest.raises(ValueError, match="channel order"):
        load_image(path, make_spec(channel_order="RBG"))
    with pytest.raises(ValueError, match="interpolation"):
        load_image(path, make_spec(input_shape=(3, 4, 4), interpolation="cubic-ish"))
