"""`pda-repro benchmark regress` (`make regress`, run by `make test`): a runtime regression check that
never compares absolute times across machines.

A small fixed configuration (``CONFIG``) measures RATIOS within one run, on one machine:

* ``epda_over_pda/<model>/<backend>``: efficient PDA's time per window / PDA's (ideally ≈ 1/S = 0.1);
* ``vectorised_over_reference_sampler``: per-window time of the vectorised conditional sampler (its
  per-clipping-case factors precomputed, as in a full-image run) / the per-window NumPy reference sampler
  of tests/reference/sampling_ref.py (the paper's way), 3×224×224, k=10, l=18, S=10;
* ``torch_over_caffe_forward/<model>``: median forward time of one batch, torch backend / caffe backend;
* ``incremental_over_full/<model>``: efficient PDA's time per window with incremental inference / with
  full re-inference, torch backend, the same windows at the same batch, interleaved (ideally ≈ 1/the
  net's incremental speed-up; it grows when the engine loses its advantage).

The efficient/PDA and torch/caffe ratios run with full re-inference (inference="full"), as they did
before incremental inference existed.

and compares each with the ratio stored for the same configuration in results/<env>/regress_baseline.json
(this env's file first, else any env's with the same configuration hash). A ratio fails when it is worse
than the stored one by more than its tolerance factor: larger for the first two ("lower is better"); for
torch/caffe either way, since a slowdown of either backend is a regression of our code.

Tolerances (``TOLERANCES``): 1.5× for efficient/PDA — structural (≈ 1/S, the same backend on both sides);
2× for the sampler and torch/caffe ratios, which depend on the BLAS and
CPU of the machine that runs CI (the baseline may come from another env). All measurements run with one
thread per library: where other processes share the cores, multi-threaded pools make timings meaningless. A real
regression worth catching (efficient PDA losing its S-fold advantage, the sampler falling back to
per-window factorisation, a backend copying every batch twice) moves a ratio by more than that.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.bench.results import REPO_ROOT, RESULTS_DIR, atomic_write_json, env_name, machine_metadata

BASELINE_NAME = "regress_baseline.json"
DEFAULT_TOLERANCE = 2.0
# efficient/PDA is structural (≈ 1/S, the same backend on both sides): observed within ±5 % over five runs
# here, so 1.5× already means efficient PDA lost a third of its advantage. The sampler and torch/caffe
# ratios depend on the BLAS/CPU pairing of the machine that runs CI: 2×.
TOLERANCES = {
    "epda_over_pda": 1.5,
    "vectorised_over_reference_sampler": 2.0,
    "torch_over_caffe_forward": 2.0,
    "incremental_over_full": 2.0,
}


def tolerance_for(name: str, override: float | None = None) -> float:
    """The allowed factor for ratio ``name`` (its family's default, or ``override`` for every ratio)."""
    if override is not None:
        return float(override)
    return TOLERANCES.get(name.split("/")[0], DEFAULT_TOLERANCE)


CONFIG: dict[str, Any] = {
    "version": 2,
    "models": ["mnist", "alexnet"],
    "backends": ["caffe", "torch"],
    "batch": 160,
    "window": 10,
    "outer": 18,
    "samples": 10,
    # windows timed per method: whole batches of evaluations (PDA: batch/S windows per batch)
    "pda_windows": {"mnist": 160, "alexnet": 16},  # 10 and 1 batches of 160 per repeat
    "epda_windows": {"mnist": 361, "alexnet": 160},  # all windows (3 batches) and 1 batch per repeat
    "forward_batches": {"mnist": 20, "alexnet": 1},  # timed forward batches per repeat
    "sampler": {
        "shape": [3, 224, 224],
        "window": 10,
        "outer": 18,
        "samples": 10,
        "reference_windows": 24,
        "vectorised_windows": 2048,
    },
    "incremental": {"model": "alexnet", "windows": 64, "batch": 16},  # efficient PDA, torch
    "repeats": 3,
    "threads": 1,  # per library: ratios are only stable single-threaded where processes share the cores
}

__all__ = ["CONFIG", "Check", "compare", "config_hash", "find_baseline", "measure", "run_regress"]


def config_hash(config: Mapping[str, Any] = CONFIG) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


# --- comparison (pure; unit-tested with injected ratios) ------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    measured: float
    baseline: float | None
    tolerance: float
    two_sided: bool
    ok: bool
    message: str


def direction_of(name: str) -> bool:
    """True when a ratio is checked both ways (torch/caffe), False for 'lower is better'."""
    return name.startswith("torch_over_caffe")


def compare(
    measured: Mapping[str, float],
    baseline: Mapping[str, float],
    tolerance: float | Mapping[str, float] = DEFAULT_TOLERANCE,
) -> list[Check]:
    """Compare measured ratios with the baseline's. A ratio fails when measured > baseline × tol (or, for
    two-sided ratios, also measured < baseline / tol). Ratios missing on either side are reported as
    failures: a baseline ratio not measured means part of the check did not run."""
    checks = []
    for name in sorted(set(measured) | set(baseline)):
        tol = float(tolerance.get(name, DEFAULT_TOLERANCE) if isinstance(tolerance, Mapping) else tolerance)
        if tol < 1:
            raise ValueError(f"tolerance for {name} must be a factor >= 1, got {tol}")
        two = direction_of(name)
        m, b = measured.get(name), baseline.get(name)
        if m is None:
            checks.append(
                Check(name, math.nan, b, tol, two, False, f"{name}: in the baseline but not measured")
            )
            continue
        if b is None:
            checks.append(
                Check(
                    name,
                    m,
                    None,
                    tol,
                    two,
                    False,
                    f"{name}: measured {m:.4g} but not in the baseline (rerun with --update-baseline)",
                )
            )
            continue
        if not (math.isfinite(m) and m > 0 and math.isfinite(b) and b > 0):
            checks.append(
                Check(
                    name,
                    m,
                    b,
                    tol,
                    two,
                    False,
                    f"{name}: ratios must be positive, got measured {m} baseline {b}",
                )
            )
            continue
        factor = m / b
        worse = factor > tol or (two and factor < 1 / tol)
        bound = f"[{b / tol:.4g}, {b * tol:.4g}]" if two else f"<= {b * tol:.4g}"
        verdict = "FAIL" if worse else "ok"
        checks.append(
            Check(
                name,
                m,
                b,
                tol,
                two,
                not worse,
                f"{verdict:4s} {name}: {m:.4g} (baseline {b:.4g}, x{factor:.2f}; allowed {bound})",
            )
        )
    return checks


def find_baseline(results_dir: Path, env: str, chash: str) -> tuple[Path, dict[str, Any]] | None:
    """This env's baseline with configuration hash ``chash``, else any env's with that hash."""
    candidates = [results_dir / env / BASELINE_NAME] + sorted(
        p for p in results_dir.glob(f"*/{BASELINE_NAME}") if p.parent.name != env
    )
    for path in candidates:
        if path.is_file():
            doc = json.loads(path.read_text())
            if doc.get("config_hash") == chash:
                return path, doc
    return None


# --- measurement ----------------------------------------------------------------------------------------


@dataclass
class Measurement:
    ratios: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _reference_sampler_class() -> type:
    path = REPO_ROOT / "tests" / "reference" / "sampling_ref.py"
    if not path.is_file():
        raise FileNotFoundError(f"the reference sampler {path} is missing")
    spec = importlib.util.spec_from_file_location("_pda_sampling_ref", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.ReferenceSampler


def _median_ratio(a: list[float], b: list[float]) -> float:
    return float(np.median(np.asarray(a) / np.asarray(b)))


def measure_sampler_ratio(
    config: Mapping[str, Any], rng: np.random.Generator
) -> tuple[float, dict[str, Any]]:
    """Per-window time of the vectorised sampler (factors precomputed) / the reference sampler's."""
    from pda_repro.sampling import PatchGaussian

    s = config["sampler"]
    c, h, w = s["shape"]
    k, outer, n = s["window"], s["outer"], s["samples"]
    dim = c * outer * outer
    # a smooth, positive-definite patch covariance (exponential decay with pixel distance) and an image
    ch, ii, jj = np.meshgrid(np.arange(c), np.arange(outer), np.arange(outer), indexing="ij")
    pos = np.stack([ii.ravel(), jj.ravel()], 1).astype(float)
    dist = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    same = ch.ravel()[:, None] == ch.ravel()[None]
    cov = np.exp(-dist / 3.0) * np.where(same, 1.0, 0.5) + 1e-3 * np.eye(dim)
    mean = rng.normal(0, 0.1, dim)
    image = rng.normal(0, 1, (c, h, w)).astype(np.float32)
    fast = PatchGaussian(mean, cov, k, outer, c)
    fast.precompute(h, w)
    slow = _reference_sampler_class()(mean, cov, k, outer)
    interior = np.arange(outer, h - outer - k)
    r_idx = rng.choice(interior, s["reference_windows"])
    c_idx = rng.choice(interior, s["reference_windows"])
    grid_r, grid_c = np.meshgrid(np.arange(h - k + 1), np.arange(w - k + 1), indexing="ij")
    pick = np.round(np.linspace(0, grid_r.size - 1, s["vectorised_windows"])).astype(int)
    fr, fc = grid_r.ravel()[pick], grid_c.ravel()[pick]
    ref_times, vec_times = [], []
    for _ in range(config["repeats"]):
        t0 = time.perf_counter()
        slow.sample_at(image.astype(np.float64), r_idx, c_idx, n, rng)
        ref_times.append((time.perf_counter() - t0) / len(r_idx))
        t0 = time.perf_counter()
        fast.sample_at(image, fr, fc, n, rng)
        vec_times.append((time.perf_counter() - t0) / len(fr))
    ratio = _median_ratio(vec_times, ref_times)
    return ratio, {
        "reference_s_per_window": float(np.median(ref_times)),
        "vectorised_s_per_window": float(np.median(vec_times)),
    }


def measure(
    config: Mapping[str, Any] = CONFIG,
    seed: int = 0,
    say: Callable[[str], None] = print,
    require_caffe: bool = False,
) -> Measurement:
    """Measure every ratio of ``config`` on this machine (same run, interleaved where it matters)."""
    from pda_repro.backends import load_backend
    from pda_repro.bench.context import BenchContext
    from pda_repro.bench.inputs import timing_image
    from pda_repro.bench.results import ResultStore
    from pda_repro.bench.settings import RunSettings
    from pda_repro.bench.timing import limit_threads
    from pda_repro.explain import explain

    started = time.perf_counter()
    out = Measurement()
    out.details["threads"] = limit_threads(config["threads"])
    rng = np.random.default_rng(seed)
    ratio, details = measure_sampler_ratio(config, rng)
    out.ratios["vectorised_over_reference_sampler"] = ratio
    out.details["sampler"] = details
    say(f"  sampler: vectorised/reference per window = {ratio:.4g}")
    ctx = BenchContext(
        store=ResultStore(RESULTS_DIR, "regress-scratch"),
        settings=RunSettings(batch=config["batch"], seed=seed),
    )
    k, outer, s = config["window"], config["outer"], config["samples"]
    for model in config["models"]:
        image, _ = timing_image(ctx, model)
        sampler, _ = ctx.sampler(model, k, outer, (image.shape[1], image.shape[2]))
        train_size = int(ctx.spec(model).train_size)
        forward_times: dict[str, list[float]] = {}
        for backend in config["backends"]:
            try:
                net = load_backend(model, backend=backend, device="cpu", batch=config["batch"], seed=seed)
            except ImportError as exc:
                if require_caffe:
                    raise
                out.missing.append(f"{model}/{backend}: {exc}")
                say(f"  {model}/{backend}: not available ({exc}); its ratios are not checked")
                continue
            limit_threads(config["threads"])  # pycaffe's OpenBLAS is loaded with the caffe backend
            cls = int(np.argmax(net.forward(image[None])[0][0]))
            batch_x = np.repeat(image[None], config["batch"], axis=0)
            net.forward(batch_x)  # warm-up
            times = {"pda": [], "epda": []}
            fwd = []
            for rep in range(config["repeats"]):
                for method in ("pda", "epda"):
                    n = config[f"{method}_windows"][model]
                    res = explain(
                        net,
                        image,
                        method=method,
                        window=k,
                        outer=outer,
                        samples=s,
                        batch=config["batch"],
                        sampler=sampler,
                        classes=[cls],
                        rng=np.random.default_rng(seed + rep),
                        progress=False,
                        window_subset=n,
                        train_size=train_size,
                        inference="full",
                    )
                    times[method].append(res.seconds / res.windows_evaluated)
                t0 = time.perf_counter()
                for _ in range(config["forward_batches"][model]):
                    net.forward(batch_x)
                fwd.append(time.perf_counter() - t0)
            forward_times[backend] = fwd
            ratio = _median_ratio(times["epda"], times["pda"])
            out.ratios[f"epda_over_pda/{model}/{backend}"] = ratio
            out.details[f"{model}/{backend}"] = {
                "pda_s_per_window": float(np.median(times["pda"])),
                "epda_s_per_window": float(np.median(times["epda"])),
                "forward_s_per_batch": float(np.median(fwd)) / config["forward_batches"][model],
            }
            say(f"  {model}/{backend}: efficient/PDA per window = {ratio:.4g}")
            if backend == "torch" and model == config["incremental"]["model"]:
                ratio = _incremental_ratio(net, image, sampler, cls, train_size, config, seed)
                out.ratios[f"incremental_over_full/{model}"] = ratio
                say(f"  {model}/torch: incremental/full per window = {ratio:.4g}")
            del net
        if {"torch", "caffe"} <= set(forward_times):
            ratio = _median_ratio(forward_times["torch"], forward_times["caffe"])
            out.ratios[f"torch_over_caffe_forward/{model}"] = ratio
            say(f"  {model}: torch/caffe forward = {ratio:.4g}")
    out.seconds = time.perf_counter() - started
    return out


def _incremental_ratio(
    net, image, sampler, cls: int, train_size: int, config: Mapping[str, Any], seed: int
) -> float:
    """Efficient PDA per window, incremental / full inference, same windows and batch, ABBA order."""
    from pda_repro.explain import explain

    inc = config["incremental"]
    times: dict[str, list[float]] = {"full": [], "incremental": []}
    for rep in range(config["repeats"]):
        for inference in ("full", "incremental") if rep % 2 == 0 else ("incremental", "full"):
            res = explain(
                net, image, method="epda", window=config["window"], outer=config["outer"], batch=inc["batch"],
                sampler=sampler, classes=[cls], rng=np.random.default_rng(seed), progress=False,
                window_subset=inc["windows"], train_size=train_size, inference=inference,
            )  # fmt: skip
            times[inference].append(res.seconds / res.windows_evaluated)
    return _median_ratio(times["incremental"], times["full"])


def run_regress(
    results_dir: str | Path = RESULTS_DIR,
    update_baseline: bool = False,
    tolerance: float | None = None,
    say: Callable[[str], None] = print,
    command: str | None = None,
) -> int:
    """Measure, then compare with (or, with update_baseline, store) the baseline. Returns the exit code:
    0 all ratios within tolerance, 1 a regression (or a missing ratio), 2 no baseline to compare with."""
    import os

    results_dir = Path(results_dir)
    env = env_name("cpu")
    chash = config_hash()
    in_ci = bool(os.environ.get("CI"))
    say(
        f"regress: configuration {chash} ({', '.join(CONFIG['models'])}; {', '.join(CONFIG['backends'])}), env {env}"
    )
    try:
        m = measure(CONFIG, say=say, require_caffe=in_ci)
    except ImportError as exc:  # only with CI set: every backend must run there
        say(f"regress: FAILED: a backend does not load in CI: {exc}")
        return 1
    say(f"regress: measured in {m.seconds:.0f} s")
    if update_baseline:
        path = results_dir / env / BASELINE_NAME
        previous = json.loads(path.read_text()) if path.is_file() else {}
        runs = [r for r in previous.get("runs", []) if previous.get("config_hash") == chash] + [m.ratios]
        spread = {
            name: [min(r[name] for r in runs if name in r), max(r[name] for r in runs if name in r)]
            for name in m.ratios
        }
        doc = {
            "config": CONFIG,
            "config_hash": chash,
            "env": env,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "tolerance": {name: tolerance_for(name, tolerance) for name in m.ratios},
            "ratios": {name: float(np.median([r[name] for r in runs if name in r])) for name in m.ratios},
            "observed_spread": spread,
            "runs": runs,
            "details": m.details,
            "machine": machine_metadata(command),
        }
        atomic_write_json(path, doc)
        say(f"regress: baseline written to {path} (median of {len(runs)} run(s) with this configuration)")
        return 0
    found = find_baseline(results_dir, env, chash)
    if found is None:
        say(
            f"regress: no {BASELINE_NAME} for configuration {chash} under {results_dir}/*/; "
            "create one with `pda-repro benchmark regress --update-baseline`"
        )
        return 2
    path, doc = found
    say(
        f"regress: comparing with {path.relative_to(results_dir.parent) if path.is_relative_to(results_dir.parent) else path}"
    )
    baseline = dict(doc["ratios"])
    for missing in m.missing:  # a backend absent here (no pycaffe outside CI): its ratios are not compared
        model, backend = missing.split(":")[0].split("/")
        for name in list(baseline):
            if name.endswith(f"/{model}/{backend}") or (name == f"torch_over_caffe_forward/{model}"):
                say(f"  (skipped {name}: {missing})")
                del baseline[name]
    stored = doc.get("tolerance", {})
    tolerances = {
        name: tolerance_for(name, tolerance)
        if tolerance is not None
        else stored.get(name, tolerance_for(name))
        for name in set(m.ratios) | set(baseline)
    }
    checks = compare(m.ratios, baseline, tolerances)
    for c in checks:
        say("  " + c.message)
    failed = [c for c in checks if not c.ok]
    say(
        f"regress: {'FAILED: ' + str(len(failed)) + ' ratio(s) worse than allowed' if failed else 'all ratios within tolerance'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_regress())
