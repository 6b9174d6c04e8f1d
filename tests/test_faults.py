"""Faults and bad input, as a demanding user meets them: every one is exit 2 and ONE line on stderr naming
the value (no traceback), inputs stay byte-identical, and --out holds complete valid results or none.

MNIST-sized (the zoo's 28×28 net, synthetic digits, window 4, stride 4): most cases call the CLI's
`main()` in this process; SIGKILL at random points of the write step, SIGTERM and concurrent runs use
subprocesses. Full disks and read-only file systems are small tmpfs mounts where this machine lets the
test mount one (root in a container usually can), and fault-injecting wrappers otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pda_repro import cli
from pda_repro.backends.caffemodel import read_caffemodel, write_caffemodel
from pda_repro.io import OutputLock

REPO = Path(__file__).resolve().parent.parent
MNIST_WEIGHTS = REPO / "models" / "mnist.caffemodel"
MNIST_PROTOTXT = REPO / "models" / "mnist.prototxt"


# --------------------------------------------------------------------------------------------------
# The world: input files, a warm sampler cache, helpers
# --------------------------------------------------------------------------------------------------
def _digit(rng: np.random.Generator, column: int) -> np.ndarray:
    img = (rng.random((28, 28)) * 40).astype(np.uint8)
    img[5:23, column : column + 4] = 230
    img[5:8, column - 6 : column + 4] = 230
    return img


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a loaded shared machine two threads made these tiny runs ~30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(1607)
    root = tmp_path_factory.mktemp("faults")
    (root / "imgs").mkdir()
    (root / "fit").mkdir()
    Image.fromarray(_digit(rng, 14)).save(root / "imgs" / "seven.png")
    Image.fromarray(_digit(rng, 11)).save(root / "imgs" / "one.png")
    for i in range(4):
        Image.fromarray(_digit(rng, 9 + 2 * i)).save(root / "fit" / f"d{i}.png")
    w = {"root": root, "imgs": root / "imgs", "fit": root / "fit", "cache": root / "cache"}
    w["seven"], w["one"] = root / "imgs" / "seven.png", root / "imgs" / "one.png"
    code, _, err = _main(*_base(w), w["seven"], "--out", root / "warm-up")  # fits and caches the sampler
    assert code == 0, err
    return w


def _base(w: dict[str, Path], cache: Path | None = None) -> list[object]:
    return ["explain", "--model", "mnist", "--window", "4", "--outer", "8", "--stride", "4",
            "--n-patches", "300", "--fit-images", w["fit"], "--sampler-cache", cache or w["cache"],
            "--no-progress", "--checkpoint-seconds", "0.05", "--inference", "full"]  # fmt: skip


def _main(*args: object) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _digests(*roots: Path) -> dict[str, str]:
    files = [p for r in roots for p in ([r] if r.is_file() else sorted(r.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(autouse=True)
def _inputs_untouched(world):
    """Every case: the input images, fit images and the model files are byte-identical afterwards."""
    from PIL import Image as PILImage

    limit = PILImage.MAX_IMAGE_PIXELS
    before = _digests(world["imgs"], world["fit"], MNIST_WEIGHTS, MNIST_PROTOTXT)
    yield
    PILImage.MAX_IMAGE_PIXELS = limit  # --max-pixels sets it for the process
    assert _digests(world["imgs"], world["fit"], MNIST_WEIGHTS, MNIST_PROTOTXT) == before


def _strict_json(text: str) -> dict:
    def bad_constant(name: str) -> None:
        raise AssertionError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=bad_constant)


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_complete_or_none(out: Path) -> list[str]:
    """Each result stem in `out` has all three files, a strict-JSON record and the npz/png it lists;
    no temporary file is left. Returns the stems."""
    if not out.exists():
        return []
    assert not [p for p in out.rglob("*.tmp")], sorted(out.rglob("*"))
    stems = sorted({p.stem for p in out.iterdir() if p.suffix in (".npz", ".png", ".json")})
    for stem in stems:
        files = [out / f"{stem}{s}" for s in (".npz", ".png", ".json")]
        assert all(p.is_file() for p in files), f"incomplete result {stem}: {sorted(out.iterdir())}"
        record = _strict_json(files[2].read_text())
        assert record["files"]["npz_sha256"] == _file_sha(files[0])
        assert record["files"]["png_sha256"] == _file_sha(files[1])
        with np.load(files[0]) as f:
            assert np.isfinite(f["maps"]).all() and f["maps"].shape[1:] == (28, 28)
        with Image.open(files[1]) as im:
            im.verify()
    return stems


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("pda-repro: error:")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A small tmpfs at `path` (a full disk or a read-only file system); skips where mount is refused."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}); the injected faults cover it"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# --------------------------------------------------------------------------------------------------
# Bad arguments: refused before anything is written (the sampler cache included)
# --------------------------------------------------------------------------------------------------
BAD_ARGS = [
    (["--seed", "-1"], ["--seed", "'-1'"]),
    (["--seed", "abc"], ["--seed", "'abc'"]),
    (["--checkpoint-seconds", "nan"], ["--checkpoint-seconds", "'nan'"]),
    (["--checkpoint-seconds", "0"], ["--checkpoint-seconds", "'0'"]),
    (["--checkpoint-seconds", "inf"], ["--checkpoint-seconds", "'inf'"]),
    (["--train-size", "0"], ["--train-size", "'0'"]),
    (["--train-size", "-5"], ["--train-size", "'-5'"]),
    (["--stride", "0"], ["--stride", "'0'"]),
    (["--window", "0"], ["--window", "'0'"]),
    (["--window", "40"], ["--window 40", "28×28"]),
    (["--outer", "4"], ["--outer 4", "--window 4"]),
    (["--outer", "9"], ["--outer minus --window must be even"]),
    (["--batch", "0"], ["--batch", "'0'"]),
    (["--n-patches", "0"], ["--n-patches", "'0'"]),
    (["--scale", "nan"], ["--scale", "'nan'"]),
    (["--scale", "0"], ["--scale", "'0'"]),
    (["--resize", "0"], ["--resize", "'0'"]),
    (["--mean", "1,2,3"], ["--mean has 3 values", "1 channel"]),
    (["--mean", "abc"], ["--mean", "'abc'"]),
    (["--mean", "nan"], ["--mean", "'nan'"]),
    (["--class", "top0"], ["'top0'", "N >= 1"]),
    (["--class", "12"], ["class index 12", "0..9"]),
    (["--class", "-1"], ["class index -1"]),
    (["--class", "giraffe"], ["'giraffe'", "labels"]),
    (["--model", "mnsit"], ["'mnsit'", "did you mean 'mnist'"]),
    (["--method", "epad"], ["'epad'", "did you mean 'epda'"]),
    (["--backend", "tf"], ["--backend", "'tf'"]),
    (["--inference", "fast"], ["--inference", "'fast'"]),
    (["--sampler", "nowhere.npz"], ["nowhere.npz", "not found"]),
    (["--sampler", "conditonal"], ["'conditonal'", "did you mean 'conditional'"]),
    (["--weights", "missing.caffemodel"], ["missing.caffemodel", "not found"]),
    (["--max-pixels", "0"], ["--max-pixels", "'0'"]),
    (["-O", "foo=1"], ["no option 'foo'"]),
    (["-O", "window=3"], ["-O window", "--window"]),
    (["--labels", "no-labels.txt"], ["no-labels.txt", "not found"]),
    (["--model", "nowhere/net.prototxt"], ["nowhere/net.prototxt", "not found"]),
]


@pytest.mark.parametrize("args, needles", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments(world, tmp_path, args, needles):
    cache, out = tmp_path / "cache", tmp_path / "out"
    base = _base(world, cache)
    for flag in ("--model", "--sampler"):  # a case's own value replaces the base's
        if flag in args and flag in base:
            i = base.index(flag)
            del base[i : i + 2]
    code, stdout, err = _main(*base, world["seven"], *args, "--out", out)
    assert_one_line_error(code, err, *needles)
    assert not out.exists() and not cache.exists(), "nothing is written for refused arguments"
    assert stdout == ""


@pytest.mark.parametrize(
    "content, needle",
    [(b"\xff\xfe\x00binary", "not UTF-8"), (b"zero\none\n", "has 2 names, model mnist has 10")],
)
def test_bad_label_files(world, tmp_path, content, needle):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(content)
    code, _, err = _main(*_base(world), world["seven"], "--labels", labels, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "labels.txt", needle)
    assert not (tmp_path / "out").exists()


def test_fit_images_that_hold_no_image(world, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = _base(world, tmp_path / "cache")
    base[base.index("--fit-images") + 1] = empty
    code, _, err = _main(*base, world["seven"], "--out", tmp_path / "out")
    assert_one_line_error(code, err, "--fit-images", str(empty))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Bad images: each fails alone with one line, the good one is done
# --------------------------------------------------------------------------------------------------
def _bad_image(kind: str, where: Path, good: Path) -> Path:
    path = where / f"{kind}.png"
    if kind == "missing":
        return path
    if kind == "text":
        path.write_text("not an image\n")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:100])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "loop":
        os.symlink(where / "loop-b.png", path)
        os.symlink(path, where / "loop-b.png")
    elif kind == "dangling":
        os.symlink(where / "gone.png", path)
    elif kind == "wrong-suffix":
        path.write_bytes(b"GIF89a" + b"\0" * 20)
    return path


BAD_IMAGES = {
    "missing": "not found",
    "text": "cannot read image",
    "truncated": "truncated",
    "empty": "cannot read image",
    "loop": "symlink loop",
    "dangling": "not found",
    "wrong-suffix": "cannot read image",
}


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_a_bad_image_fails_alone(world, tmp_path, kind):
    bad = _bad_image(kind, tmp_path, world["seven"])
    out = tmp_path / "out"
    code, _, err = _main(*_base(world), bad, world["seven"], "--out", out)
    assert_one_line_error(code, err, bad.name, BAD_IMAGES[kind])
    assert assert_complete_or_none(out) == ["seven"]


def test_no_image_matches(world, tmp_path):
    for arg, needle in ((str(tmp_path / "*.jpg"), "no files match"), (str(tmp_path), "holds no image")):
        code, _, err = _main(*_base(world), arg, "--out", tmp_path / "out")
        assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_an_image_above_the_pixel_limit_says_so_and_the_limit_can_be_raised(world, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.full((60, 50), 128, np.uint8)).save(big)
    out = tmp_path / "out"
    code, _, err = _main(*_base(world), big, "--out", out, "--max-pixels", "1000")
    line = assert_one_line_error(code, err, "big.png", "--max-pixels", "1,000")
    assert "corrupt" not in line
    code, _, err = _main(*_base(world), big, "--out", out, "--max-pixels", "2000000")
    assert code == 0, err
    assert assert_complete_or_none(out) == ["big"]


def test_a_tiny_image_warns_about_upsampling(world, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(_digit(np.random.default_rng(3), 2)[8:14, 8:14]).save(tiny)
    code, _, err = _main(*_base(world), tiny, "--out", tmp_path / "out")
    assert code == 0, err
    warning = [line for line in err.splitlines() if "upsampled" in line]
    assert len(warning) == 1 and "6×6" in warning[0], err
    record = _strict_json((tmp_path / "out" / "tiny.json").read_text())
    assert any("upsampled 4.7×" in w for w in record["warnings"]), record["warnings"]


def test_a_stride_larger_than_the_window_warns_how_much_is_unexplained(world, tmp_path):
    args = _base(world)
    args[args.index("--stride") + 1] = "10"
    code, _, err = _main(*args, world["seven"], "--out", tmp_path / "out")
    assert code == 0, err
    k, s, n = 4, 10, 28  # windows at 0, 10, 20 cover 12 of 28 rows and columns
    expected = f"{100 * (1 - (12 / n) ** 2):.1f} %"
    lines = [line for line in err.splitlines() if "covered by no window" in line]
    assert (
        len(lines) == 1
        and expected in lines[0]
        and f"--stride {s}" in lines[0]
        and f"--window {k}" in lines[0]
    )
    record = _strict_json((tmp_path / "out" / "seven.json").read_text())
    assert any(expected in w for w in record["warnings"])


# --------------------------------------------------------------------------------------------------
# --out: never over an input, never a file, never unwritable without one clear line
# --------------------------------------------------------------------------------------------------
def test_out_equal_to_the_image_folder_is_refused(world):
    code, _, err = _main(*_base(world), world["imgs"], "--out", world["imgs"])
    assert_one_line_error(code, err, str(world["imgs"]), "overwrite inputs")
    assert sorted(p.name for p in world["imgs"].iterdir()) == ["one.png", "seven.png"]


def test_out_containing_an_input_is_refused(world):
    code, _, err = _main(*_base(world), world["seven"], "--out", world["root"])
    assert_one_line_error(code, err, "contains the input", "seven.png")


def test_out_containing_the_fit_images_is_refused(world):
    code, _, err = _main(*_base(world), world["seven"], "--out", world["fit"])
    assert_one_line_error(code, err, "is the input", str(world["fit"]))


def test_out_containing_the_weights_is_refused(world, tmp_path):
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(MNIST_WEIGHTS.read_bytes())
    code, _, err = _main(*_base(world), world["seven"], "--weights", weights, "--out", tmp_path)
    assert_one_line_error(code, err, "contains the input", "w.caffemodel")
    assert weights.read_bytes() == MNIST_WEIGHTS.read_bytes()


def test_out_that_is_a_file_is_refused(world, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    code, _, err = _main(*_base(world), world["seven"], "--out", target)
    assert_one_line_error(code, err, "results.txt", "is a file")
    assert target.read_text() == "keep me\n"


def test_out_below_a_file_is_one_line(world, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, _, err = _main(*_base(world), world["seven"], "--out", tmp_path / "afile" / "out")
    assert_one_line_error(code, err, "afile", "Not a directory")


def test_out_on_a_read_only_file_system(world, tmp_path):
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as ro:
        code, _, err = _main(*_base(world), world["seven"], "--out", ro)
        assert_one_line_error(code, err, str(ro), "Read-only file system")
        code, _, err = _main(*_base(world), world["seven"], "--out", ro / "sub")
        assert_one_line_error(code, err, "sub", "Read-only file system")


@pytest.mark.parametrize("size", ["8k", "40k"])
def test_out_on_a_full_disk(world, tmp_path, size):
    with tmpfs(tmp_path / "full", size) as full:
        code, _, err = _main(*_base(world), world["seven"], world["one"], "--out", full)
        assert_one_line_error(code, err, str(full), "No space left on device")
        assert assert_complete_or_none(full) == []


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "target",
    ["numpy.savez_compressed", "pda_repro.viz.save_explanation_png", "pathlib.Path.write_text", "os.replace"],
)
def test_injected_disk_full_while_writing_results(world, tmp_path, monkeypatch, target):
    """Where no tmpfs can be mounted these are the full disk: each step of the write fails cleanly."""
    out = tmp_path / "out"
    monkeypatch.setattr(target, _enospc)
    code, _, err = _main(*_base(world), world["seven"], "--out", out)
    assert_one_line_error(code, err, str(out), "No space left on device")
    assert assert_complete_or_none(out) == []
    monkeypatch.undo()
    code, _, err = _main(*_base(world), world["seven"], "--out", out)
    assert code == 0, err
    assert assert_complete_or_none(out) == ["seven"] and not (out / ".checkpoints").exists()


def test_injected_disk_full_while_checkpointing(world, tmp_path, monkeypatch):
    import pda_repro.methods.windows as windows

    monkeypatch.setattr(windows.Checkpoint, "save", _enospc)
    args = _base(world)
    args[args.index("--stride") + 1] = "1"
    code, _, err = _main(*args, world["seven"], "--out", tmp_path / "out", "--checkpoint-seconds", "0.001")
    assert_one_line_error(code, err, "checkpoint", "No space left on device")
    assert assert_complete_or_none(tmp_path / "out") == []


def test_stale_temporary_files_of_a_killed_run_are_removed(world, tmp_path):
    out = tmp_path / "out"
    (out / ".checkpoints").mkdir(parents=True)
    stale = [out / ".seven.npz.4242.abcd.tmp", out / ".checkpoints" / "seven-1234.npz.x1y2.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    code, _, err = _main(*_base(world), world["seven"], "--out", out)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and "temporary file" in err
    assert assert_complete_or_none(out) == ["seven"]


def test_a_second_run_on_a_locked_out_says_who_holds_it(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):
        code, _, err = _main(*_base(world), world["seven"], "--out", out)
        assert_one_line_error(code, err, "in use by another run", f"pid {os.getpid()}")
        assert sorted(p.name for p in out.iterdir()) == [OutputLock.NAME]
    code, _, err = _main(*_base(world), world["seven"], "--out", out)
    assert code == 0, err
    assert not (out / OutputLock.NAME).exists()


def test_an_unreadable_checkpoint_is_dropped_not_fatal(world, tmp_path):
    out = tmp_path / "out"
    code, _, err = _main(*_base(world), world["seven"], "--out", out, "--force")
    assert code == 0
    key = _strict_json((out / "seven.json").read_text())["settings_hash"]
    reference = np.load(out / "seven.npz")["maps"]
    (out / "seven.json").unlink()
    (out / ".checkpoints").mkdir()
    (out / ".checkpoints" / f"seven-{key}.npz").write_bytes(b"PK\x03\x04 cut short")
    code, _, err = _main(*_base(world), world["seven"], "--out", out)
    assert code == 0, err
    assert "unreadable" in err
    np.testing.assert_array_equal(np.load(out / "seven.npz")["maps"], reference)


# --------------------------------------------------------------------------------------------------
# "Up to date" by content
# --------------------------------------------------------------------------------------------------
def _run_ok(*args: object) -> str:
    code, _, err = _main(*args)
    assert code == 0, err
    return err


def _was_skipped(err: str) -> bool:
    return "up to date" in err


@pytest.fixture
def done(world, tmp_path) -> Path:
    out = tmp_path / "out"
    _run_ok(*_base(world), world["seven"], "--out", out)
    return out


def test_rerun_is_up_to_date_and_keeps_the_files(world, done):
    stamps = {p: p.stat().st_mtime_ns for p in done.iterdir()}
    assert _was_skipped(_run_ok(*_base(world), world["seven"], "--out", done))
    assert {p: p.stat().st_mtime_ns for p in done.iterdir()} == stamps


@pytest.mark.parametrize("victim", ["seven.npz", "seven.png"])
def test_a_truncated_result_is_redone(world, done, victim):
    path = done / victim
    path.write_bytes(path.read_bytes()[:50])
    err = _run_ok(*_base(world), world["seven"], "--out", done)
    assert not _was_skipped(err) and "recomputing" in err
    assert assert_complete_or_none(done) == ["seven"]


def test_an_invalid_json_record_is_redone(world, done):
    (done / "seven.json").write_text('{"settings_hash": NaN')
    assert not _was_skipped(_run_ok(*_base(world), world["seven"], "--out", done))
    assert assert_complete_or_none(done) == ["seven"]


def test_retrained_weights_of_the_same_size_are_not_up_to_date(world, tmp_path):
    weights = tmp_path / "w" / "mnist.caffemodel"
    weights.parent.mkdir()
    arrays = read_caffemodel(MNIST_WEIGHTS)
    write_caffemodel(weights, arrays)
    out = tmp_path / "out"
    _run_ok(*_base(world), world["seven"], "--weights", weights, "--out", out)
    size = weights.stat().st_size
    arrays["ip2"][1] = arrays["ip2"][1] + np.float32(0.5)  # "retrained": same shapes, other values
    write_caffemodel(weights, arrays)
    assert weights.stat().st_size == size
    assert not _was_skipped(_run_ok(*_base(world), world["seven"], "--weights", weights, "--out", out))


def test_prototxt_by_parsed_content(world, tmp_path):
    net = tmp_path / "net" / "lenet.prototxt"
    net.parent.mkdir()
    text = MNIST_PROTOTXT.read_text()
    net.write_text(text)
    args = [
        *_base(world),
        world["seven"],
        "--model",
        net,
        "--weights",
        MNIST_WEIGHTS,
        "--out",
        tmp_path / "out",
    ]
    del args[1:3]  # the base's --model mnist
    _run_ok(*args)
    net.write_text("# only a comment more\n" + text)
    assert _was_skipped(_run_ok(*args)), "a comment does not change the net"
    net.write_text(text.replace("pool: MAX", "pool: AVE", 1))
    assert not _was_skipped(_run_ok(*args)), "an edited layer does"


def test_an_edited_image_of_the_same_name_is_redone(world, tmp_path):
    image = tmp_path / "in" / "digit.png"
    image.parent.mkdir()
    image.write_bytes(world["seven"].read_bytes())
    out = tmp_path / "out"
    _run_ok(*_base(world), image, "--out", out)
    image.write_bytes(world["one"].read_bytes())
    assert not _was_skipped(_run_ok(*_base(world), image, "--out", out))


def test_other_fit_images_refit_the_sampler_and_redo(world, tmp_path, done):
    fit = tmp_path / "fit"
    fit.mkdir()
    for p in world["fit"].iterdir():
        (fit / p.name).write_bytes(p.read_bytes())
    args = _base(world)
    args[args.index("--fit-images") + 1] = fit
    assert _was_skipped(_run_ok(*args, world["seven"], "--out", done)), "same content, same sampler"
    Image.fromarray(_digit(np.random.default_rng(9), 5)).save(fit / "d0.png")
    err = _run_ok(*args, world["seven"], "--out", done)
    assert "fitting the conditional sampler" in err and not _was_skipped(err)


@pytest.mark.parametrize("change", [["--seed", "5"], ["--batch", "3"], ["--force"]])
def test_other_settings_or_force_recompute(world, done, change):
    assert not _was_skipped(_run_ok(*_base(world), world["seven"], "--out", done, *change))


# --------------------------------------------------------------------------------------------------
# The sampler cache
# --------------------------------------------------------------------------------------------------
def _cache_entry(cache: Path) -> Path:
    return min(p for p in cache.iterdir() if p.name.startswith("patch_gaussian_mnist_"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_corrupt_cache_entry_is_rebuilt(world, tmp_path, damage):
    cache = tmp_path / "cache"
    _run_ok(*_base(world, cache), world["seven"], "--out", tmp_path / "a")
    entry = _cache_entry(cache)
    good = entry.read_bytes()
    entry.write_bytes(
        {"truncate": good[: len(good) // 2], "garbage": b"\x00garbage" * 99, "empty": b""}[damage]
    )
    for attempt in range(2):  # rebuilt once, then used
        err = _run_ok(*_base(world, cache), world["seven"], "--out", tmp_path / f"b{attempt}")
        assert ("fitting the conditional sampler" in err) == (attempt == 0)
    from pda_repro.sampling import PatchGaussian

    PatchGaussian.load(_cache_entry(cache))


def test_a_read_only_sampler_cache_fails_before_fitting(world, tmp_path):
    with tmpfs(tmp_path / "cache", "64k", read_only=True) as cache:
        code, _, err = _main(*_base(world, cache), world["seven"], "--out", tmp_path / "out")
        assert_one_line_error(code, err, str(cache), "Read-only file system")
        assert "fitting" not in err
    assert not (tmp_path / "out").exists()


def test_injected_unwritable_sampler_cache(world, tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    cache = tmp_path / "cache"
    code, _, err = _main(*_base(world, cache), world["seven"], "--out", tmp_path / "out")
    assert_one_line_error(code, err, str(cache), "Permission denied")


def test_a_sampler_cache_that_is_a_file(world, tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    code, _, err = _main(*_base(world, cache), world["seven"], "--out", tmp_path / "out")
    assert_one_line_error(code, err, str(cache))


def test_a_truncated_sampler_file(world, tmp_path):
    bad = tmp_path / "sampler.npz"
    bad.write_bytes(_cache_entry(world["cache"]).read_bytes()[:300])
    code, _, err = _main(*_base(world), world["seven"], "--sampler", bad, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "sampler.npz", "cannot load sampler")


# --------------------------------------------------------------------------------------------------
# Weights and numerical guards
# --------------------------------------------------------------------------------------------------
def _weights_variant(tmp_path: Path, kind: str) -> Path:
    arrays = read_caffemodel(MNIST_WEIGHTS)
    path = tmp_path / "w" / f"{kind}.caffemodel"
    path.parent.mkdir(exist_ok=True)
    if kind == "nan":
        arrays["conv1"][0][0, 0, 0, 0] = np.nan
    elif kind == "inf":
        arrays["ip1"][1][3] = np.inf
    elif kind == "missing":
        del arrays["ip2"]
    write_caffemodel(path, arrays)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "empty":
        path.write_bytes(b"")
    return path


WEIGHT_FAULTS = {
    "nan": ["nan.caffemodel", "'conv1' blob 0", "NaN/Inf"],
    "inf": ["inf.caffemodel", "'ip1' blob 1", "NaN/Inf"],
    "missing": ["missing.caffemodel", "ip2", "--allow-missing-weights"],
    "truncated": ["truncated.caffemodel", "truncated"],
    "empty": ["empty.caffemodel", "empty"],
}


@pytest.mark.parametrize("kind", sorted(WEIGHT_FAULTS))
def test_bad_weights(world, tmp_path, kind):
    weights = _weights_variant(tmp_path, kind)
    code, _, err = _main(*_base(world), world["seven"], "--weights", weights, "--out", tmp_path / "out")
    assert_one_line_error(code, err, *WEIGHT_FAULTS[kind])
    assert not (tmp_path / "out").exists()


def test_missing_weights_allowed_are_a_warning_in_output_and_json(world, tmp_path):
    weights = _weights_variant(tmp_path, "missing")
    out = tmp_path / "out"
    err = _run_ok(
        *_base(world), world["seven"], "--weights", weights, "--out", out, "--allow-missing-weights"
    )
    assert [line for line in err.splitlines() if line.startswith("pda-repro: warning:") and "ip2" in line]
    record = _strict_json((out / "seven.json").read_text())
    assert any("ip2" in w for w in record["warnings"]) and record["settings"]["missing_weights"] == ["ip2"]


def test_nan_probabilities_stop_the_image_naming_the_stage(world, tmp_path, monkeypatch):
    from pda_repro.backends.torch_backend import TorchBackend

    forward = TorchBackend.forward

    def nan_forward(self, x):
        probs, logits = forward(self, x)
        return np.full_like(probs, np.nan), logits

    monkeypatch.setattr(TorchBackend, "forward", nan_forward)
    code, _, err = _main(*_base(world), world["seven"], "--out", tmp_path / "out")
    assert_one_line_error(code, err, "seven.png", "NaN/Inf class probabilities", "forward pass of the image")
    assert not list((tmp_path / "out").glob("seven.*"))


def test_json_is_always_strict():
    from pda_repro.cli.outputs import dumps

    text = dumps({"a": float("nan"), "b": [np.float32(np.inf), 1.5], "c": np.arange(2)})
    assert _strict_json(text) == {"a": None, "b": [None, 1.5], "c": [0, 1]}


# --------------------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(world):
    from pda_repro import zoo
    from pda_repro.explain import load_model
    from pda_repro.preprocess import load_image, load_images
    from pda_repro.sampling import MarginalSampler

    spec = zoo.get("mnist")
    net = load_model("mnist")
    x = load_image(world["seven"], spec).x
    sampler = MarginalSampler(load_images(sorted(world["fit"].iterdir()), spec), 4)
    return net, x, sampler


@pytest.mark.parametrize("rng, needle", [(-1, "rng"), ("seed", "rng"), (True, "rng")])
def test_api_bad_rng_names_rng(api, rng, needle):
    from pda_repro.explain import explain

    net, x, sampler = api
    with pytest.raises(ValueError, match=needle):
        explain(net, x, method="pda", window=4, stride=4, samples=2, sampler=sampler, rng=rng, progress=False)


def test_api_nan_probabilities_and_maps_name_the_stage(api, monkeypatch):
    from pda_repro.explain import explain

    net, x, sampler = api
    kwargs = dict(method="pda", window=4, stride=4, samples=2, sampler=sampler, progress=False)
    windows = net.forward_windows

    def nan_windows(*args, **kw):
        probs, logits = windows(*args, **kw)
        return np.full_like(probs, np.nan), logits

    monkeypatch.setattr(net, "forward_windows", nan_windows)
    with pytest.raises(ValueError, match="NaN/Inf in the maps of class"):
        explain(net, x, classes=[3], rng=np.random.default_rng(0), **kwargs)
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda batch: (np.full_like(forward(batch)[0], np.nan), None))
    with pytest.raises(ValueError, match="NaN/Inf class probabilities for the image"):
        explain(net, x, rng=np.random.default_rng(0), **kwargs)


def test_api_nan_weights_name_the_layer():
    from pda_repro.backends import BackendError, load_backend

    arrays = read_caffemodel(MNIST_WEIGHTS)
    arrays["conv2"][0][1, 2, 3, 4] = np.nan
    with pytest.raises(BackendError, match="layer 'conv2' blob 0 holds 1 NaN/Inf"):
        load_backend("mnist", weights=arrays)


def test_api_maps_depend_on_batch_and_inference_only_at_float32_rounding(api):
    """What explain's docstring promises: batch 1 and 4, full and incremental inference agree to 1e-4
    in weight of evidence."""
    from pda_repro.explain import explain

    net, x, sampler = api
    maps = [
        explain(net, x, method="pda", window=4, stride=6, samples=2, sampler=sampler, batch=b,
                inference=mode, rng=np.random.default_rng(11), progress=False, classes=[0, 7]).maps
        for b, mode in ((1, "full"), (4, "full"), (4, "incremental"), (1, "incremental"))
    ]  # fmt: skip
    assert np.abs(maps[0]).max() > 1e-3  # the maps are not trivially zero
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Processes: SIGKILL at random points of the write step, SIGTERM, concurrent runs
# --------------------------------------------------------------------------------------------------
KILL_WRAPPER = r"""
import os, signal, sys
import numpy as np
import pda_repro.cli as cli, pda_repro.explain, pda_repro.viz as viz
ex = sys.modules["pda_repro.explain"]
at, count, armed = int(os.environ["KILL_AT"]), [0], [False]
def tick():
    if armed[0]:
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
def wrap(mod, name):
    orig = getattr(mod, name)
    def wrapped(*a, **k):
        tick()
        return orig(*a, **k)
    setattr(mod, name, wrapped)
for mod, name in [(np, "savez_compressed"), (viz, "save_explanation_png"), (os, "replace"),
                  (os, "fsync"), (os, "chmod"), (os, "unlink"), (os, "rmdir")]:
    wrap(mod, name)
explain = ex.explain
def armed_explain(*a, **k):
    result = explain(*a, **k)
    armed[0] = True
    return result
ex.explain = armed_explain
code = cli.main(sys.argv[1:])
print("WRITE_STEPS", count[0], file=sys.stderr)
sys.exit(code)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PDA_REPRO_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _subprocess(args: list[object], kill_at: int = 0, **kw) -> subprocess.CompletedProcess:
    env = {**_env(), "KILL_AT": str(kill_at)}
    cmd = [sys.executable, "-c", KILL_WRAPPER, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, env=env, **kw)


def test_sigkill_at_random_points_of_the_write_step(world, tmp_path):
    """Five kills at random write steps: every file is the old or the new version (the JSON record says
    which set is complete), nothing temporary is left after the rerun, and the rerun gives the new maps."""
    rng = np.random.default_rng(5)
    pda = ["--method", "pda", "--samples", "2"]
    out = tmp_path / "out"
    reference = {}
    for seed in (1, 2):
        ref_out = tmp_path / f"ref{seed}"
        _run_ok(*_base(world), *pda, world["seven"], "--seed", seed, "--out", ref_out)
        reference[seed] = (
            np.load(ref_out / "seven.npz")["maps"],
            _strict_json((ref_out / "seven.json").read_text())["settings_hash"],
        )
    assert not np.array_equal(reference[1][0], reference[2][0])
    for target in (out, tmp_path / "dry"):  # the dry run counts the write steps from the same state
        _run_ok(*_base(world), *pda, world["seven"], "--seed", 1, "--out", target)
    dry = _subprocess([*_base(world), *pda, world["seven"], "--seed", 2, "--out", tmp_path / "dry"])
    assert dry.returncode == 0, dry.stderr
    steps = int(dry.stderr.split("WRITE_STEPS")[1].split()[0])
    assert steps >= 10
    for i, at in enumerate(rng.choice(np.arange(1, steps + 1), size=5, replace=False)):
        old, new = (1, 2) if i % 2 == 0 else (2, 1)
        proc = _subprocess(
            [*_base(world), *pda, world["seven"], "--seed", new, "--out", out], kill_at=int(at)
        )
        assert proc.returncode == -signal.SIGKILL, (at, proc.stderr)
        record = _strict_json((out / "seven.json").read_text())
        assert record["settings_hash"] in (reference[old][1], reference[new][1])
        maps = np.load(out / "seven.npz")["maps"]
        assert any(np.array_equal(maps, reference[s][0]) for s in (old, new)), at
        with Image.open(out / "seven.png") as im:
            im.verify()
        err = _run_ok(*_base(world), *pda, world["seven"], "--seed", new, "--out", out)
        assert assert_complete_or_none(out) == ["seven"]
        np.testing.assert_array_equal(np.load(out / "seven.npz")["maps"], reference[new][0])
        assert not (out / ".checkpoints").exists() and not (out / OutputLock.NAME).exists(), err


def test_sigterm_keeps_a_checkpoint_and_the_rerun_resumes_bitwise(world, tmp_path):
    slow = [*_base(world), "--method", "pda", "--samples", "4", "--batch", "1", world["seven"]]
    slow[slow.index("--stride") + 1] = "1"
    reference = tmp_path / "ref"
    _run_ok(*slow, "--out", reference)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pda_repro.cli", *map(str, slow), "--out", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not list((out / ".checkpoints").glob("*.npz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((out / ".checkpoints").glob("*.npz")), "no checkpoint within 60 s"
    proc.send_signal(signal.SIGTERM)  # checkpoints come every 0.05 s of a run of 2,500 evaluations
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == cli.EXIT_INTERRUPTED and "Traceback" not in err, err
    assert list((out / ".checkpoints").glob("*.npz")) and not list(out.glob("seven.*"))
    _run_ok(*slow, "--out", out)
    np.testing.assert_array_equal(
        np.load(out / "seven.npz")["maps"], np.load(reference / "seven.npz")["maps"]
    )


def test_concurrent_runs_on_one_out_never_interleave(world, tmp_path):
    out = tmp_path / "out"
    cmds = [
        [sys.executable, "-m", "pda_repro.cli", *map(str, _base(world)), "--method", "pda", "--samples", "2",
         "--seed", str(seed), str(world["seven"]), str(world["one"]), "--out", str(out)]
        for seed in (1, 2)
    ]  # fmt: skip
    procs = [subprocess.Popen(c, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]  # fmt: skip
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        if code != 0:
            assert_one_line_error(code, err, "in use by another run", "pid ")
    assert assert_complete_or_none(out) == ["one", "seven"]
    seeds = {_strict_json((out / f"{s}.json").read_text())["settings"]["seed"] for s in ("one", "seven")}
    assert len(seeds) == 1, "both images come from the same run"
