"""Heatmap colours and the explanation PNG: red for, blue against, symmetric scale, intensity ∝ |WE|."""

from __future__ import annotations

import os

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv
from PIL import Image

from pda_repro.io import atomic_writer
from pda_repro.viz import (
    heatmap_rgb,
    overlay_rgb,
    save_explanation_png,
    symmetric_vmax,
    to_gray,
)


@pytest.fixture
def signed_map(rng) -> np.ndarray:
    m = rng.normal(size=(6, 7))
    m[0, 0], m[0, 1], m[0, 2] = 3.0, -3.0, 0.0  # max |WE| = 3 at both signs, and an exact zero
    m = np.clip(m, -3.0, 3.0)
    return m


def test_colours_of_positive_negative_and_zero(signed_map):
    rgb = heatmap_rgb(signed_map)
    np.testing.assert_allclose(rgb[0, 0], [1, 0, 0], atol=0.01)  # +vmax: red
    np.testing.assert_allclose(rgb[0, 1], [0, 0, 1], atol=0.01)  # -vmax: blue
    np.testing.assert_allclose(rgb[0, 2], [1, 1, 1], atol=0.01)  # 0: white
    pos, neg = signed_map > 0.05, signed_map < -0.05
    assert np.all(rgb[pos][:, 0] >= rgb[pos][:, 2]) and np.all(rgb[neg][:, 2] >= rgb[neg][:, 0])


def test_intensity_proportional_to_abs_we(signed_map):
    # bwr: saturation = |WE| / vmax (up to the fine colour table's quantisation).
    sat = rgb_to_hsv(heatmap_rgb(signed_map))[..., 1]
    np.testing.assert_allclose(sat, np.abs(signed_map) / 3.0, atol=1e-3)


def test_symmetric_scale(signed_map):
    assert symmetric_vmax(signed_map) == 3.0
    # Only positive values: -max still maps to blue, i.e. the scale is [-max, max], not [min, max].
    pos_only = np.abs(signed_map) + 0.5
    rgb = heatmap_rgb(pos_only)
    top = float(pos_only.max())
    i = np.unravel_index(np.argmin(pos_only), pos_only.shape)
    sat = rgb_to_hsv(rgb)[..., 1]
    np.testing.assert_allclose(sat[i], pos_only[i] / top, atol=0.01)
    assert rgb[i][0] > rgb[i][2]  # still red-ish: smallest positive value is not drawn blue
    # a given vmax is used as is (and clips)
    rgb = heatmap_rgb(np.array([[1.0, -1.0, 4.0]]), vmax=2.0)
    np.testing.assert_allclose(rgb_to_hsv(rgb)[0, :, 1], [0.5, 0.5, 1.0], atol=0.01)
    assert symmetric_vmax(np.zeros((2, 2))) == 1.0
    with pytest.raises(ValueError, match="vmax"):
        symmetric_vmax(signed_map, vmax=-1.0)


def test_overlay_keeps_grey_where_no_evidence(rng, signed_map):
    display = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    over = overlay_rgb(display, signed_map)
    light = 1.0 - (1.0 - to_gray(display)) * 0.5
    # zero evidence: the lightened grey value in all three channels
    np.testing.assert_allclose(over[0, 2], [light[0, 2]] * 3, atol=1e-9)
    # brightness (HSV value) is the image's everywhere; saturation 0.8 * |WE| / vmax; hue red/blue by sign
    hsv = rgb_to_hsv(over)
    np.testing.assert_allclose(hsv[..., 2], light, atol=1e-9)
    np.testing.assert_allclose(hsv[..., 1], 0.8 * np.abs(signed_map) / 3.0, atol=0.02)
    assert over[0, 0][0] > over[0, 0][2] and over[0, 1][2] > over[0, 1][0]
    with pytest.raises(ValueError, match="map is"):
        overlay_rgb(display, signed_map[:5])


def test_save_explanation_png(tmp_path, rng, signed_map):
    display = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "out.png"
    maps = np.stack([signed_map, -signed_map])
    assert save_explanation_png(path, display, maps, ["cat p=0.910", "dog p=0.050"]) == path
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
        arr = np.asarray(im.convert("RGB")).astype(int)
    # the figure has strongly red and strongly blue pixels (heatmap and colour bar)
    red = (arr[..., 0] > 200) & (arr[..., 1] < 60) & (arr[..., 2] < 60)
    blue = (arr[..., 2] > 200) & (arr[..., 0] < 60) & (arr[..., 1] < 60)
    assert red.sum() > 50 and blue.sum() > 50
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]  # no temp files left over
    # a single map + title works too; mismatched titles are an error and write nothing
    save_explanation_png(tmp_path / "one.png", display, signed_map, "cat p=0.910")
    with pytest.raises(ValueError, match="titles"):
        save_explanation_png(tmp_path / "bad.png", display, maps, ["only one"])
    assert not (tmp_path / "bad.png").exists()


def test_atomic_writer_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as fh:
        fh.write(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]
    with atomic_writer(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["x.bin"]
