"""The qualitative-figures pipeline (pda_repro.bench.qualitative) on a tiny setting: the tiny conv net of
models/tiny/ with seeded weights, two random 2×10×10 images, a patch Gaussian fitted on random images.

Checks: the stored maps are exactly what explain() gives for the same seeded request; a second compute
recomputes nothing; an interrupted compute keeps what it finished, leaves no half-written file and
resumes; render reads only the stored data (explain/load_model forbidden) and writes PNGs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pda_repro.bench import qualitative as q
from pda_repro.bench.qualitative import command, maps, paper
from pda_repro.cli import CLIError
from pda_repro.explain import explain, load_model
from pda_repro.grid import WindowGrid
from pda_repro.sampling import PatchGaussian
from pda_repro.seeding import generator

TINY = Path(__file__).resolve().parent.parent / "models" / "tiny" / "conv.prototxt"
N_TRAIN = 1000


@pytest.fixture
def tiny_setup(rng: np.random.Generator) -> q.Setup:
    images = rng.uniform(0.0, 1.0, size=(2, 2, 10, 10)).astype(np.float32)
    fit_images = rng.uniform(0.0, 1.0, size=(20, 2, 10, 10)).astype(np.float32)
    sampler = PatchGaussian.fit(fit_images, 2, 4, n_patches=400, rng=rng)
    subjects = [
        q.Subject(
            f"img{i}", images[i], np.repeat((images[i, 0] * 255).astype(np.uint8)[..., None], 3, axis=2)
        )
        for i in range(2)
    ]
    gauss = {"window": 2, "outer": 4, "sampler": "gauss"}
    runs = {
        "pda": q.MethodRun(key="pda", method="pda", label="PDA", samples=3, stride=2, **gauss),
        "epda": q.MethodRun(key="epda", method="epda", label="efficient PDA", stride=2, **gauss),
        "simplified": q.MethodRun(
            key="simplified", method="simplified", label="simplified", stride=1, **gauss
        ),
        "saliency": q.MethodRun(key="saliency", method="saliency", label="saliency"),
        "deep_taylor": q.MethodRun(
            key="deep_taylor", method="deep_taylor", label="deep Taylor", options={"bounds": [0.0, 1.0]}
        ),
        "occlusion": q.MethodRun(
            key="occlusion", method="occlusion", label="occlusion", window=2, stride=2, options={"value": 0.5}
        ),
        "bad": q.MethodRun(
            key="bad", method="gradcam", label="Grad-CAM (bad blob)", options={"blob": "nope"}, may_fail=True
        ),
    }
    image_set = q.ImageSet(
        name="tiny",
        model="tiny conv net",
        weights="seeded random fillers",
        net=lambda: load_model(TINY, batch=8),
        subjects=lambda: subjects,
        class_names=lambda: ["a", "b", "c", "d"],
        runs=runs,
        samplers={"gauss": q.SamplerSpec("PatchGaussian k=2 l=4 on random images", lambda: sampler)},
        batch=8,
        train_size=N_TRAIN,
        checkpoints=True,
        notes={"stride": "stride 2: a test"},
    )
    figures = [
        q.FigureSpec(
            name="figA_tiny",
            key="figA",
            image_set="tiny",
            layout="pairs",
            columns=("pda", "epda"),
            title="A",
            caption="pairs layout",
        ),
        q.FigureSpec(
            name="figB_tiny",
            key="figB",
            image_set="tiny",
            layout="grid",
            columns=("simplified", "saliency", "deep_taylor", "occlusion", "bad"),
            title="B",
            caption="grid",
        ),
    ]
    return q.Setup({"tiny": image_set}, figures)


def _compute(setup: q.Setup, tmp_path: Path, **kw) -> q.ComputeReport:
    return q.compute(
        setup, results_dir=tmp_path, progress=False, checkpoint_dir=tmp_path / "ckpt", log=None, **kw
    )


def _forbid(monkeypatch: pytest.MonkeyPatch, module: object, *names: str) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("must not be called")

    for name in names:
        monkeypatch.setattr(module, name, boom)


def test_compute_stores_what_explain_gives(tiny_setup: q.Setup, tmp_path: Path) -> None:
    report = _compute(tiny_setup, tmp_path)
    assert sorted(report.failed) == ["tiny/img0/bad", "tiny/img1/bad"]
    assert len(report.computed) == 2 * 6 and not report.skipped
    net = load_model(TINY, batch=8)
    sampler = tiny_setup.image_sets["tiny"].samplers["gauss"].build()
    root = tmp_path / "qualitative" / "tiny"
    for subject in tiny_setup.image_sets["tiny"].subjects():
        info = json.loads(str(np.load(root / subject.name / "input.npz")["meta"]))
        probs, _ = net.forward(subject.x[None])
        assert info["predicted"] == int(np.argmax(probs[0]))
        assert info["predicted_prob"] == pytest.approx(float(probs[0].max()), rel=1e-6)
        stored = np.load(root / subject.name / "pda.npz")["map"]
        expected = explain(
            net,
            subject.x,
            "pda",
            window=2,
            outer=4,
            samples=3,
            stride=2,
            sampler=sampler,
            classes=[info["predicted"]],
            rng=generator(0, "tiny", subject.name, "pda"),
            train_size=N_TRAIN,
            progress=False,
        ).maps[0]
        np.testing.assert_array_equal(stored, expected)
        assert np.abs(stored).max() > 0
        bad = np.load(root / subject.name / "bad.npz")
        assert "map" not in bad.files and "nope" in json.loads(str(bad["meta"]))["error"]
    doc = json.loads((tmp_path / "qualitative" / "figA_tiny.json").read_text())
    assert doc["complete"] and doc["runs"]["pda"]["stride"] == 2 and doc["notes"]["stride"]
    assert [s["name"] for s in doc["subjects"]] == ["img0", "img1"]
    assert not list((tmp_path / "ckpt").rglob("*.ckpt"))  # explain removes finished checkpoints


def test_second_compute_recomputes_nothing(
    tiny_setup: q.Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _compute(tiny_setup, tmp_path)
    files = sorted((tmp_path / "qualitative" / "tiny").rglob("*.npz"))
    before = {p: p.read_bytes() for p in files}
    _forbid(monkeypatch, maps, "explain")
    report = _compute(tiny_setup, tmp_path)
    assert not report.computed and not report.failed and len(report.skipped) == 2 * 7
    assert {p: p.read_bytes() for p in files} == before


def test_json_rewritten_from_reused_maps_keeps_the_machine_that_computed_them(
    tiny_setup: q.Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _compute(tiny_setup, tmp_path)
    jsons = sorted((tmp_path / "qualitative").glob("*.json"))
    assert jsons
    for path in jsons:  # as if another machine had computed the maps
        doc = json.loads(path.read_text())
        doc["machine"] = {**doc["machine"], "cpu_model": "elsewhere", "date": "2000-01-01T00:00:00+00:00"}
        path.write_text(json.dumps(doc))
    _forbid(monkeypatch, maps, "explain")
    _compute(tiny_setup, tmp_path)
    for path in jsons:
        assert json.loads(path.read_text())["machine"]["cpu_model"] == "elsewhere"


def test_force_and_changed_settings_recompute(
    tiny_setup: q.Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _compute(tiny_setup, tmp_path, only=["figA"])
    image_set = tiny_setup.image_sets["tiny"]
    image_set.runs["pda"] = dataclasses.replace(image_set.runs["pda"], samples=4)  # S changed: stale
    report = _compute(tiny_setup, tmp_path, only=["figA"])
    assert sorted(report.computed) == ["tiny/img0/pda", "tiny/img1/pda"]
    report = _compute(tiny_setup, tmp_path, only=["figA"], force=True)
    assert len(report.computed) == 4


def test_interrupted_compute_keeps_finished_maps_and_resumes(
    tiny_setup: q.Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def flaky(*args, **kwargs):
        calls.append(kwargs["method"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return explain(*args, **kwargs)

    monkeypatch.setattr(maps, "explain", flaky)
    with pytest.raises(KeyboardInterrupt):
        _compute(tiny_setup, tmp_path, only=["figA"])
    root = tmp_path / "qualitative"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.npz")) == [
        "tiny/img0/epda.npz",
        "tiny/img0/input.npz",
        "tiny/img0/pda.npz",
        "tiny/img1/input.npz",
    ]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not (root / "figA_tiny.json").exists()
    calls.clear()
    report = _compute(tiny_setup, tmp_path, only=["figA"])
    assert calls == ["pda", "epda"] and sorted(report.computed) == ["tiny/img1/epda", "tiny/img1/pda"]


def test_failed_write_leaves_no_file(
    tiny_setup: q.Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pda_repro.bench.results as results

    def no_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        _compute(tiny_setup, tmp_path, only=["figA"])
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and "ckpt" not in p.parts]


def test_render_reads_only_data(tiny_setup: q.Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _compute(tiny_setup, tmp_path)
    _forbid(monkeypatch, importlib.import_module("pda_repro.explain"), "explain", "load_model")
    _forbid(monkeypatch, maps, "explain", "compute")
    _forbid(monkeypatch, paper, "load_model", "default_setup")
    _forbid(monkeypatch, q, "compute", "default_setup")
    notes: list[str] = []
    paths = q.render_qualitative(tmp_path, notes=notes)
    assert [p.name for p in paths] == ["figA_tiny.png", "figB_tiny.png"] and not notes
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 300
    (tmp_path / "qualitative" / "tiny" / "img1" / "epda.npz").unlink()
    notes.clear()
    assert [p.name for p in q.render_qualitative(tmp_path, notes=notes)] == ["figB_tiny.png"]
    assert len(notes) == 1 and notes[0].startswith("figA_tiny")


def test_subjects_share_out_the_work_and_a_full_run_writes_the_json(
    tiny_setup: q.Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes (--subjects img0 / img1) compute disjoint maps and no JSON; a run without
    --subjects then computes nothing and writes the figure JSONs."""
    report = _compute(tiny_setup, tmp_path, only=["figA"], subjects=["img1"])
    assert sorted(report.computed) == ["tiny/img1/epda", "tiny/img1/pda"] and not report.json_files
    assert not (tmp_path / "qualitative" / "tiny" / "img0" / "pda.npz").exists()
    assert not (tmp_path / "qualitative" / "figA_tiny.json").exists()
    report = _compute(tiny_setup, tmp_path, only=["figA"], subjects=["img0"])
    assert sorted(report.computed) == ["tiny/img0/epda", "tiny/img0/pda"]
    _forbid(monkeypatch, maps, "explain")
    report = _compute(tiny_setup, tmp_path, only=["figA"])
    assert not report.computed and len(report.skipped) == 4
    doc = json.loads((tmp_path / "qualitative" / "figA_tiny.json").read_text())
    assert doc["complete"] and [s["name"] for s in doc["subjects"]] == ["img0", "img1"]
    with pytest.raises(ValueError, match=r"unknown subject\(s\) \['img7'\].*img0, img1"):
        _compute(tiny_setup, tmp_path, subjects=["img0", "img7"])


def test_figure_notes_override_the_image_set_notes(tiny_setup: q.Setup, tmp_path: Path) -> None:
    tiny_setup.figures[0] = dataclasses.replace(
        tiny_setup.figures[0], notes={"stride": "stride 1 here", "extra": "x"}
    )
    _compute(tiny_setup, tmp_path)
    doc_a = json.loads((tmp_path / "qualitative" / "figA_tiny.json").read_text())
    doc_b = json.loads((tmp_path / "qualitative" / "figB_tiny.json").read_text())
    assert doc_a["notes"] == {"stride": "stride 1 here", "extra": "x"}
    assert doc_b["notes"] == {"stride": "stride 2: a test"}


def test_unknown_figure_and_missing_weights(tiny_setup: q.Setup, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="figZ"):
        _compute(tiny_setup, tmp_path, only=["figZ"])
    tiny_setup.image_sets["tiny"].weights_file = tmp_path / "absent.caffemodel"
    with pytest.raises(ValueError, match="absent.caffemodel"):
        _compute(tiny_setup, tmp_path)


@pytest.mark.parametrize(
    ("h", "w", "k", "s"), [(10, 10, 2, 2), (224, 224, 10, 10), (11, 9, 3, 4), (28, 28, 4, 1)]
)
def test_coverage_mask_matches_window_grid(h: int, w: int, k: int, s: int) -> None:
    grid = WindowGrid(h, w, k, s)
    brute = np.zeros((h, w), dtype=bool)
    for r, c in zip(*grid.corners(), strict=True):
        brute[r : r + k, c : c + k] = True
    np.testing.assert_array_equal(q.coverage_mask(h, w, k, s), brute)


def test_rotate_and_crop_has_no_empty_corners(rng: np.random.Generator) -> None:
    photo = rng.integers(100, 256, size=(60, 80, 3), dtype=np.uint8)
    for angle in (15.0, -15.0, 40.0):
        out = q.rotate_and_crop(photo, angle, (32, 32), "bicubic")
        assert out.shape == (32, 32, 3) and out.min() > 40  # no black fill from outside the photo
    # angle 0: the centred 60×60 square, resized
    same = q.rotate_and_crop(photo, 0.0, (60, 60), "bicubic")
    np.testing.assert_array_equal(same, photo[:, 10:70])


def test_same_class_photo_is_another_image_of_the_class() -> None:
    """Fig 17's second row: a crop of a different photo, classified as the Fig 14 row's class."""
    from pda_repro import zoo

    settings = q.Settings()
    first, second = q.same_class_subjects(zoo.get("efficientnet_lite0"), settings)
    assert first.name == settings.same_class_of and second.name == f"{settings.same_class_photo}_crop"
    assert second.x.shape == first.x.shape == (3, 224, 224) and second.display.shape == (224, 224, 3)
    assert second.expected_class == first.expected_class == q.PHOTO_CLASSES[settings.same_class_of]
    assert second.note == "fruits.jpg, cropped"
    fig17 = next(f for f in q.default_setup(settings).figures if f.key == "fig17")
    assert "crop of fruits (x 0.15-0.65, y 0.1-0.9 of the photo)" in fig17.caption
    assert np.abs(second.x - first.x).mean() > 0.1  # a different image, not the same one again
    probs, _ = load_model("efficientnet_lite0", batch=2).forward(np.stack([first.x, second.x]))
    assert list(np.argmax(probs, axis=1)) == [first.expected_class] * 2  # both correctly classified
    with pytest.raises(ValueError, match="photo 'no_such_photo' not found"):
        q.same_class_subjects(zoo.get("efficientnet_lite0"), q.Settings(same_class_photo="no_such_photo"))


def test_default_setup_covers_the_figure_keys() -> None:
    setup = q.default_setup()
    assert {f.key for f in setup.figures} == set(q.FIGURE_KEYS)
    for fig in setup.figures:
        runs = setup.image_sets[fig.image_set].runs
        assert all(c in runs for c in fig.columns)
        strides = {runs[c].stride for c in fig.columns if runs[c].stride is not None}
        assert len(strides) <= 1, f"{fig.name}: one stride per figure"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--photo-stride", "0"], "--photo-stride must be >= 1, got 0"),
        (["--batch", "0"], "--batch must be >= 1"),
    ],
)
def test_compute_cli_rejects_bad_settings(args: list[str], message: str, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    command.configure(parser)
    with pytest.raises(CLIError, match=re.escape(message)):  # pda-repro: exit code 2, the message on stderr
        command.run(parser.parse_args(["compute", "--results-dir", str(tmp_path), *args]))
    assert not list(tmp_path.iterdir())


def test_settings_for_a_gpu_full_resolution_run() -> None:
    """`compute --device cuda --photo-stride 1`: every photo run at stride 1 on the GPU, said so."""
    setup = q.default_setup(q.Settings(device="cuda", photo_stride=1, photo_batch=160))
    photos = setup.image_sets["efficientnet_lite0"]
    assert {photos.runs[k].stride for k in ("pda", "epda", "epda_sampled", "occlusion")} == {1}
    assert photos.batch == 160 and "CUDA" in photos.model
    assert photos.notes["stride"].startswith("stride 1: full resolution")
