"""`pda-repro` through the real command line (subprocesses of `python -m pda_repro.cli`).

Small settings keep it fast: the MNIST net on a real test digit (28×28, window 4, stride 2) for every
method, EfficientNet-Lite0 on a bundled photo with a sparse window grid for the default path.
"""

from __future__ import annotations

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

from pda_repro.methods import METHODS

CLI = [sys.executable, "-m", "pda_repro.cli"]
REPO = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    """The test's environment, one torch thread per CLI process (tiny batches on a shared 2-core box)."""
    env = {k: v for k, v in os.environ.items() if k != "PDA_REPRO_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    env = cli_env()
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("pda-repro: error:")]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def digit_png(work) -> Path:
    """The first MNIST test digit (a 7), saved as a greyscale PNG."""
    from pda_repro.data import mnist

    images, labels = mnist("test")
    path = work / "digit.png"
    Image.fromarray(images[0]).save(path)
    assert labels[0] == 7
    return path


@pytest.fixture(scope="module")
def mnist_args(work) -> list[str]:
    cache = work / "sampler-cache"
    return ["--model", "mnist", "--window", "4", "--outer", "8", "--stride", "2", "--samples", "4",
            "--no-progress", "--sampler-cache", str(cache)]  # fmt: skip


def predicted_top1(model: str, image: Path) -> tuple[int, float]:
    """What the model predicts, computed here with the library (same default weights as the CLI)."""
    from pda_repro import zoo
    from pda_repro.explain import load_model
    from pda_repro.preprocess import load_image

    net = load_model(model)
    x = load_image(image, zoo.get(model)).x
    probs, _ = net.forward(x[None])
    return int(np.argmax(probs[0])), float(np.max(probs[0]))


@pytest.fixture(scope="module")
def mnist_top1(digit_png) -> tuple[int, float]:
    return predicted_top1("mnist", digit_png)


def check_outputs(out: Path, stem: str, shape: tuple[int, ...], top1: tuple[int, float], method: str) -> dict:
    files = {p.name for p in out.iterdir() if p.is_file()}
    assert files == {f"{stem}.npz", f"{stem}.png", f"{stem}.json"}, files  # nothing else (no temp files)
    summary = json.loads((out / f"{stem}.json").read_text())
    assert summary["method"] == method
    assert summary["top5"][0]["index"] == top1[0]
    assert summary["top5"][0]["prob"] == pytest.approx(top1[1], rel=1e-4, abs=1e-6)
    probs = [e["prob"] for e in summary["top5"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True)
    assert summary["explained"][0]["index"] == top1[0]  # default --class top1
    assert summary["forward_passes"] >= 1 and summary["seconds"] > 0
    assert {"backend", "device", "model", "weights", "settings"} <= set(summary)
    with np.load(out / f"{stem}.npz") as f:
        maps = f["maps"]
        assert maps.dtype == np.float32 and maps.shape == shape
        assert np.isfinite(maps).all()
        assert list(f["classes"]) == [top1[0]]
        assert json.loads(str(f["settings"]))["method"] == method
    with Image.open(out / f"{stem}.png") as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 200
    return summary


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_on_a_real_digit(work, digit_png, mnist_args, mnist_top1, method):
    out = work / f"out-{method}"
    proc = run_cli("explain", digit_png, *mnist_args, "--method", method, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = check_outputs(out, "digit", (1, 28, 28), mnist_top1, method)
    settings = summary["settings"]
    uses = METHODS[method].uses
    assert ("window" in settings) == ("window" in uses)
    if "sampler" in uses:
        assert summary["sampler"]["kind"] == "conditional"
        assert summary["sampler"]["images"].startswith("mnist-train")
    if "window" in uses:
        with np.load(out / "digit.npz") as f:
            assert np.abs(f["maps"]).max() > 0  # a window method moves the probability somewhere


def test_default_model_on_a_bundled_photo(work):
    """The out-of-the-box path: efficientnet_lite0, efficient PDA, conditional sampler fitted on the
    bundled photos (sparse windows to stay fast); a second run reuses the fitted sampler."""
    from pda_repro.data import photo_paths

    photo = photo_paths()["chelsea"]
    cache, out = work / "photo-cache", work / "out-photo"
    common = [
        "--window",
        "16",
        "--outer",
        "18",
        "--stride",
        "96",
        "--no-progress",
        "--sampler-cache",
        cache,
        "--out",
        out,
    ]
    proc = run_cli("explain", photo, *common)
    assert proc.returncode == 0, proc.stderr
    top1 = predicted_top1("efficientnet_lite0", photo)
    summary = check_outputs(out, "chelsea", (1, 224, 224), top1, "epda")
    assert summary["model"] == "efficientnet_lite0" and summary["sampler"]["images"].startswith("photos:")
    assert summary["windows_evaluated"] == 9  # rows/cols 0, 96, 192
    assert summary["settings"]["batch"] == 16  # no --batch on cpu: the incremental window batch, recorded
    assert summary["settings"]["inference"] == "incremental"
    (fitted,) = list(cache.iterdir())
    stamp = fitted.stat().st_mtime_ns

    # same image, named and indexed classes: the sampler comes from the cache (file untouched)
    proc = run_cli("explain", photo, *common, "--class", "tabby cat", "285", "top1", "--force")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "chelsea.json").read_text())
    explained = [e["index"] for e in summary["explained"]]
    assert explained[:2] == [281, 285] and (top1[0] in explained)
    with np.load(out / "chelsea.npz") as f:
        assert f["maps"].shape == (len(explained), 224, 224)
    assert [p.stat().st_mtime_ns for p in cache.iterdir()] == [stamp]


def test_bad_images_fail_alone(work, digit_png, mnist_args, mnist_top1):
    bad = work / "bad-inputs"
    bad.mkdir()
    text = bad / "notes.png"
    text.write_text("not an image\n")
    truncated = bad / "cut.png"
    truncated.write_bytes(digit_png.read_bytes()[:120])
    out = work / "out-mixed"
    proc = run_cli("explain", bad / "missing.jpg", text, digit_png, truncated, *mnist_args, "--out", out)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 3, proc.stderr
    assert "missing.jpg" in errors[0] and "not found" in errors[0]
    assert "notes.png" in errors[1] and "cannot read image" in errors[1]
    assert "cut.png" in errors[2] and ("truncated" in errors[2] or "corrupt" in errors[2])
    check_outputs(out, "digit", (1, 28, 28), mnist_top1, "epda")  # the good one is done, nothing else


@pytest.fixture(scope="module")
def wrong_weights(work) -> Path:
    """A caffemodel whose conv1 has the wrong shape for the mnist net."""
    from pda_repro.backends.caffemodel import write_caffemodel

    path = work / "wrong.caffemodel"
    write_caffemodel(
        path, {"conv1": [np.ones((7, 1, 3, 3), np.float32), np.ones(7, np.float32)]}, net_name="x"
    )
    return path


@pytest.mark.parametrize(
    "case, args, expected",
    [
        ("model", ["--model", "mnsit"], ["unknown model 'mnsit'", "did you mean 'mnist'"]),
        (
            "method",
            ["--model", "mnist", "--method", "epad"],
            ["unknown method 'epad'", "did you mean 'epda'"],
        ),
        ("weights", ["--model", "mnist", "--weights", "{wrong}"], ["wrong.caffemodel", "conv1"]),
        ("window", ["--model", "mnist", "--window", "40"], ["--window 40", "28×28"]),
        ("class", ["--class", "tabyy cat"], ["'tabyy cat'", "did you mean 'tabby cat'"]),
        ("index", ["--model", "mnist", "--class", "12"], ["class index 12", "0..9"]),
        ("sampler", ["--model", "mnist", "--sampler", "nowhere.npz"], ["nowhere.npz", "not found"]),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(work, digit_png, wrong_weights, case, args, expected):
    out = work / f"out-bad-{case}"
    args = [a.replace("{wrong}", str(wrong_weights)) for a in args]
    proc = run_cli("explain", digit_png, *args, "--out", out, "--no-progress")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    assert not out.exists()  # nothing written


def test_interrupt_then_rerun_resumes_to_the_same_maps(work, digit_png, mnist_args):
    """Ctrl-C (SIGINT) after the first checkpoint: exit 130 and a resume hint; the rerun finishes from the
    checkpoint and its maps equal an uninterrupted run's exactly."""
    slow = [
        *mnist_args,
        "--method",
        "pda",
        "--batch",
        "1",
        "--checkpoint-seconds",
        "0.05",
    ]  # 676 forward calls
    reference = work / "out-reference"
    proc = run_cli("explain", digit_png, *slow, "--out", reference)
    assert proc.returncode == 0, proc.stderr

    out = work / "out-resumed"
    ckpt_dir = out / ".checkpoints"
    env = cli_env()
    cmd = [*CLI, "explain", str(digit_png), *map(str, slow), "--out", str(out)]
    # SIGINT at its default in the child (a job started in the background inherits it ignored, and Python then
    # keeps ignoring it), so Ctrl-C reaches the CLI as it does in a terminal
    child = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if ckpt_dir.is_dir() and any(p.suffix == ".npz" for p in ckpt_dir.iterdir()):
            break
        time.sleep(0.01)
    assert child.poll() is None, "the run ended before a checkpoint appeared; make the setting slower"
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "rerunning the same command resumes" in stderr and "Traceback" not in stderr
    (checkpoint,) = [p for p in ckpt_dir.iterdir() if p.suffix == ".npz"]
    assert not (out / "digit.npz").exists()  # nothing but the checkpoint for an unfinished image
    with np.load(checkpoint) as f:
        assert 0 < int(f["cursor"])

    proc = run_cli(*cmd[3:])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "digit.json").read_text())
    assert summary["params"]["resumed_evaluations"] > 0
    assert not checkpoint.exists()
    with np.load(out / "digit.npz") as a, np.load(reference / "digit.npz") as b:
        np.testing.assert_array_equal(a["maps"], b["maps"])
        np.testing.assert_array_equal(a["classes"], b["classes"])


def test_rerun_skips_up_to_date_and_force_recomputes(work, digit_png, mnist_args):
    out = work / "out-saliency"  # written by test_every_method_on_a_real_digit[saliency] when it ran first
    args = ["explain", digit_png, *mnist_args, "--method", "saliency", "--out", out]
    if not (out / "digit.json").exists():
        assert run_cli(*args).returncode == 0
    stamp = (out / "digit.npz").stat().st_mtime_ns
    proc = run_cli(*args)
    assert proc.returncode == 0 and "up to date" in proc.stderr
    assert (out / "digit.npz").stat().st_mtime_ns == stamp
    proc = run_cli(*args, "--force")
    assert proc.returncode == 0 and "up to date" not in proc.stderr
    assert (out / "digit.npz").stat().st_mtime_ns != stamp


def test_help_models_version():
    proc = run_cli("explain", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for default in ("(default: epda)", "(default: efficientnet_lite0)", "(default: 10)", "(default: 18)",
                    "(default: 160 on cuda, the paper's; on cpu 4 with full inference", "(default: conditional)", "(default: pda-out)", "(default: torch)"):  # fmt: skip
        assert default in text, default
    for name in METHODS:
        assert name in text

    from pda_repro import __version__, zoo

    proc = run_cli("models")
    assert proc.returncode == 0
    for name in zoo.names():
        assert name in proc.stdout
    assert "60,965,224" in proc.stdout  # alexnet's parameter count

    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"pda-repro {__version__}"


@pytest.mark.parametrize(
    "argv",
    [[], ["explain"], ["models"], ["benchmark"], ["benchmark", "run"], ["benchmark", "regress"], ["figures"],
     ["evaluate"], ["train"], ["train", "mnist"], ["convert"], ["convert", "efficientnet"], ["prototxts"],
     ["qualitative"], ["benchmark", "batch"], ["benchmark", "sampler"], ["benchmark", "parallel"],
     ["benchmark", "module"], ["benchmark", "warm"]],
)  # fmt: skip
def test_every_command_has_help(argv, capsys):
    from pda_repro import cli

    assert cli.main([*argv, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: pda-repro {' '.join(argv)}".rstrip())


def test_benchmark_warm_negative_stop_after_is_a_one_line_error(capsys):
    from pda_repro import cli

    assert cli.main(["benchmark", "warm", "--model", "mnist", "--stop-after", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--stop-after" in err and "expected seconds >= 0, got '-1'" in err and "Traceback" not in err


def test_prototxts_unknown_net_is_a_one_line_error(tmp_path, capsys):
    from pda_repro import cli

    assert cli.main(["prototxts", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        == "pda-repro: error: no prototxt builder for 'nope'; expected one of alexnet, vgg16, googlenet, mnist"
    )
    assert not list(tmp_path.iterdir())


def test_registered_subcommands_and_errors(capsys):
    """A command is a row of the command table; CLIError -> one line and exit 2."""
    from pda_repro import cli

    seen = {}

    def configure(parser):
        parser.add_argument("--n", type=int, default=3)

    def run(args):
        seen["n"] = args.n
        if args.n < 0:
            raise cli.CLIError(f"--n must be >= 0, got {args.n}")
        return 0

    commands = (*cli.COMMANDS, cli.Command("selftest-cmd", "a test command", configure, run))
    with pytest.raises(ValueError, match="already registered"):
        cli.build_parser((*commands, cli.Command("selftest-cmd", "again", configure, run)))
    assert cli.main(["selftest-cmd", "--n", "5"], commands) == 0 and seen["n"] == 5
    assert cli.main(["selftest-cmd", "--n", "-1"], commands) == 2
    err = capsys.readouterr().err
    assert err.strip() == "pda-repro: error: --n must be >= 0, got -1"
    assert cli.main(["selftest-cmd", "--n", "x"], commands) == 2
    assert len(error_lines(capsys.readouterr().err)) == 1


def test_directories_and_globs_explain_each_with_unique_names(work, digit_png, mnist_args):
    """A directory gives its image files, a glob its matches; equal stems get -2, -3 suffixes."""
    folder = work / "many"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "x.png").write_bytes(digit_png.read_bytes())
    (folder / "a" / "readme.txt").write_text("not an image")
    out = work / "out-many"
    proc = run_cli(
        "explain",
        folder / "a",
        str(folder / "*" / "x.png"),
        *mnist_args,
        "--method",
        "saliency",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir() if p.is_file())
    assert names == ["x-2.json", "x-2.npz", "x-2.png", "x.json", "x.npz", "x.png"]  # a/x.png once, b/x.png
    images = {json.loads((out / n).read_text())["image"] for n in ("x.json", "x-2.json")}
    assert images == {str(folder / "a" / "x.png"), str(folder / "b" / "x.png")}


def test_class_requests_and_names():
    from pda_repro.cli import CLIError
    from pda_repro.cli.explain_args import classes_for, resolve_class_request, unique_stems

    names = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark", "tabby, tabby cat"]
    assert resolve_class_request(["top2", "3", "Goldfish", "tabby_cat", "top9"], names) == [
        "top2",
        3,
        1,
        3,
        "top4",
    ]
    probs = np.array([0.1, 0.2, 0.6, 0.1])
    assert classes_for(["top2", 3, 1], probs) == [2, 1, 3]  # duplicates dropped, order kept
    assert classes_for(["top1"], np.array([0.3, 0.3, 0.4, 0.0])) == [2]
    with pytest.raises(CLIError, match=r"'tabyy' .*did you mean 'tabby'"):
        resolve_class_request(["tabyy"], names)
    with pytest.raises(CLIError, match=r"class index 4 out of range 0\.\.3"):
        resolve_class_request(["4"], names)
    assert unique_stems([Path("a/x.png"), Path("b/x.jpg"), Path("y.png"), Path("c/x.png")]) == [
        "x",
        "x-2",
        "y",
        "x-3",
    ]
