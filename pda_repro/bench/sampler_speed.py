"""Sampler benchmark: all conditional samples PDA needs for one image, vectorised vs per-window reference.

The paper's setting ("Sampling Time", Section 2): a 224×224 RGB image, window k=10, outer patch l=18, S=10
samples per window, stride 1 — here 215·215 windows × 10 = 462,250 samples of 300 numbers (the paper
counts 224·224·10 = 501,760; it measured about 5 minutes with NumPy on an Intel Core i5).

* vectorised: pda_repro.sampling.PatchGaussian — cold (clipping cases factorised inside the timing) and
  warm (factors cached), plus conditional means (efficient PDA) and window-loop style sample_at calls.
* reference: tests/reference/sampling_ref.ReferenceSampler, per window factorise + draw in NumPy float64 —
  timed on an evenly spread subset of the windows and extrapolated to all of them (the CSV says so).

The patch Gaussian is fitted on real photos that ship with installed packages (scikit-image's chelsea,
coffee, rocket and matplotlib's grace_hopper; RGB float 0..255); the image sampled is scikit-image's
astronaut resized to 224×224.  Writes results/<env>/sampler.csv and sampler.json atomically.

    pda-repro benchmark sampler [--reference-windows N] [--repeats N] [--reference-windows-default-threads N]

The reference sampler lives with the tests (tests/reference/sampling_ref.py): run it from the repository root.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.bench.results import (
    RESULTS_DIR,
    atomic_write_csv,
    atomic_write_json,
    env_name,
    machine_metadata,
)
from pda_repro.grid import window_starts
from pda_repro.sampling import PatchGaussian, blas_thread_counts, limit_blas_threads

__all__ = ["run"]

SIDE, K, L, S, STRIDE, SEED = 224, 10, 18, 10, 1, 0
FIT_PATCHES = 20_000
TAG = "rgb255-float"  # RGB, float, 0..255, no mean subtraction (timings do not depend on preprocessing)
FIT_SOURCE = "skimage.data chelsea,coffee,rocket + matplotlib grace_hopper.jpg"
IMAGE = "skimage.data.astronaut resized to 224x224"
TARGET_SECONDS, TARGET_SPEEDUP = 10.0, 50.0


def fit_photos() -> list[np.ndarray]:
    """C×H×W float32 (0..255) photos from scikit-image and matplotlib's bundled sample data."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photos.append(np.asarray(Image.open(f).convert("RGB")))
    return [np.ascontiguousarray(p.transpose(2, 0, 1), dtype=np.float32) for p in photos]


def sampled_image() -> np.ndarray:
    import skimage.data
    import skimage.transform

    img = skimage.transform.resize(
        skimage.data.astronaut(), (SIDE, SIDE), anti_aliasing=True, preserve_range=True
    )
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def load_model() -> PatchGaussian:
    return PatchGaussian.fit_cached(
        fit_photos, K, L, channels=3, tag=TAG, source=FIT_SOURCE, n_patches=FIT_PATCHES, seed=SEED
    )


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def all_windows() -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(window_starts(SIDE, K, STRIDE), window_starts(SIDE, K, STRIDE), indexing="ij")
    return rows.ravel(), cols.ravel()


def clipping_cases() -> int:
    """How many ways the outer patch is clipped by the image border over all windows (each factorised once)."""
    margin = (L - K) // 2
    starts = window_starts(SIDE, K, STRIDE)
    per_axis = {(min(int(s), margin), min(SIDE - K - int(s), margin)) for s in starts}
    return len(per_axis) ** 2


def timed(fn: Callable[[], Any]) -> tuple[float, float, float]:
    """(seconds, 1-min load before, after)."""
    before = load1()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, before, load1()


def blas_label(blas_threads: int | None) -> str:
    default = ",".join(map(str, blas_thread_counts())) or "unknown"
    return "1" if blas_threads == 1 else f"default ({default})"


def vectorised_rows(model: PatchGaussian, repeats: int, blas_threads: int | None) -> list[dict]:
    """Time the vectorised sampler: cold, warm, conditional means and window-loop style chunks."""
    x = sampled_image()
    rows, cols = all_windows()
    n_windows = rows.size
    base = {"implementation": "vectorised", "blas_threads": blas_label(blas_threads), "dtype": "float32"}
    out = []

    def row(operation, seconds, windows_timed, before, after, extrapolated=False, note="", **extra):
        out.append(
            {
                **base,
                "operation": operation,
                "windows_timed": windows_timed,
                "seconds": seconds,
                "seconds_per_window": seconds / n_windows,
                "extrapolated": extrapolated,
                "load_1min_before": before,
                "load_1min_after": after,
                "note": note,
                **extra,
            }
        )

    fresh = PatchGaussian(model.mean, model.cov, K, L, 3, blas_threads=blas_threads)  # no cached factors
    t_fac, b0, a0 = timed(lambda: fresh.precompute(SIDE, SIDE))
    t_smp, b1, a1 = timed(lambda: fresh.sample(x, S, np.random.default_rng(1)))
    row(
        "factorise_clipping_cases",
        t_fac,
        n_windows,
        b0,
        a0,
        note=f"{clipping_cases()} clipping cases, float64 Cholesky",
    )
    row("sample_all_cold", t_fac + t_smp, n_windows, b0, a1, note="factorisation + sample(x, 10, rng)")
    warm = []
    for rep in range(repeats):
        t, b, a = timed(lambda rep=rep: fresh.sample(x, S, np.random.default_rng(100 + rep)))
        warm.append(t)
    row(
        "sample_all_warm",
        float(np.median(warm)),
        n_windows,
        b,
        a,
        note=f"median of {repeats}; min {min(warm):.3f} s",
    )
    t, b, a = timed(lambda: fresh.conditional_means(x))
    row("conditional_means_all", t, n_windows, b, a, note="efficient PDA's means, all windows")
    for per_call, limit in ((1024, n_windows), (16, 3200 if blas_threads == 1 else 1600)):
        sel = slice(0, limit)

        def chunks(per_call=per_call, sel=sel):
            r, c = rows[sel], cols[sel]
            for a in range(0, r.size, per_call):
                fresh.sample_at(x, r[a : a + per_call], c[a : a + per_call], S, np.random.default_rng(a))

        t, b, a = timed(chunks)
        timed_windows = min(limit, n_windows)
        row(
            f"sample_at_{per_call}_windows_per_call",
            t * n_windows / timed_windows,
            timed_windows,
            b,
            a,
            extrapolated=timed_windows < n_windows,
            note=(
                f"window-loop style: sample_at on {per_call} windows per call, fresh generator per call"
                + (
                    f"; first {timed_windows} windows (row-major) timed, scaled to all"
                    if timed_windows < n_windows
                    else ""
                )
            ),
        )
    return out


def reference_rows(model: PatchGaussian, n_ref: int, blas_threads: int | None) -> tuple[list[dict], float]:
    """Time the per-window reference on an evenly spread subset; also check its means against ours."""
    from tests.reference.sampling_ref import (
        ReferenceSampler,  # the tests' float64 reference (repository root)
    )

    x = sampled_image()
    rows, cols = all_windows()
    pick = np.unique(np.linspace(0, rows.size - 1, n_ref).round().astype(int))
    ref = ReferenceSampler(model.mean, model.cov, K, L)
    rng = np.random.default_rng(2)
    with limit_blas_threads(blas_threads):
        t, b, a = timed(lambda: ref.sample_at(x, rows[pick], cols[pick], S, rng))
    per_window = t / pick.size
    check = pick[:: max(1, pick.size // 25)]  # exactness check on ~25 of the timed windows
    ours = model.mean_at(x, rows[check], cols[check], dtype=np.float64)
    diff = float(np.abs(ours - ref.mean_at(x.astype(np.float64), rows[check], cols[check])).max())
    row = {
        "implementation": "reference",
        "blas_threads": blas_label(blas_threads),
        "dtype": "float64",
        "operation": "sample_all_extrapolated",
        "windows_timed": int(pick.size),
        "seconds": per_window * rows.size,
        "seconds_per_window": per_window,
        "extrapolated": True,
        "load_1min_before": b,
        "load_1min_after": a,
        "note": (
            f"per window: numpy cholesky + solve + cholesky + draw; {pick.size} windows evenly spread over "
            f"all {rows.size} (row-major linspace) timed ({t:.2f} s), scaled to all"
        ),
    }
    return [row], diff


def run(
    reference_windows: int = 200,
    repeats: int = 3,
    reference_windows_default_threads: int = 40,
    results_dir: str | Path = RESULTS_DIR,
) -> Path:
    """Time the vectorised sampler and the reference (extrapolated); write sampler.csv/.json, return the CSV
    path. `reference_windows_default_threads` 0 skips the reference under the libraries' BLAS threads."""
    meta = machine_metadata()
    model = load_model()
    with limit_blas_threads(1):
        t_fit0 = time.perf_counter()
        PatchGaussian.fit(fit_photos(), K, L, n_patches=FIT_PATCHES, rng=np.random.default_rng(SEED))
        t_fit = time.perf_counter() - t_fit0
    rows = vectorised_rows(model, repeats, 1) + vectorised_rows(model, repeats, None)
    ref_rows, mean_diff = reference_rows(model, reference_windows, 1)
    if reference_windows_default_threads:
        ref_rows += reference_rows(model, reference_windows_default_threads, None)[0]
    rows += ref_rows
    rows.append(
        {
            "implementation": "vectorised",
            "blas_threads": "1",
            "dtype": "float64",
            "operation": "fit",
            "windows_timed": 0,
            "seconds": t_fit,
            "seconds_per_window": float("nan"),
            "extrapolated": False,
            "load_1min_before": None,
            "load_1min_after": load1(),
            "note": f"PatchGaussian.fit on {FIT_PATCHES} random 18x18x3 patches of the 4 photos (one-off, cached)",
        }
    )
    n_windows = all_windows()[0].size
    setting = {
        "image": IMAGE,
        "height": SIDE,
        "width": SIDE,
        "channels": 3,
        "k": K,
        "l": L,
        "S": S,
        "stride": STRIDE,
        "windows": n_windows,
        "samples": n_windows * S,
        "fit_source": FIT_SOURCE,
        "fit_patches": FIT_PATCHES,
        "preprocessing_tag": TAG,
    }
    for r in rows:
        r.update({k: v for k, v in setting.items() if k not in ("fit_source", "preprocessing_tag")})

    def pick(impl, op, thr):
        for r in rows:
            if (r["implementation"], r["operation"], r["blas_threads"]) == (impl, op, thr):
                return r["seconds"]
        return None

    summary = {}
    for thr in sorted({r["blas_threads"] for r in rows if r["implementation"] == "vectorised"}):
        cold, warm = pick("vectorised", "sample_all_cold", thr), pick("vectorised", "sample_all_warm", thr)
        ref_s = pick("reference", "sample_all_extrapolated", thr)
        if cold is None or ref_s is None:
            continue
        summary[f"blas_threads={thr}"] = {
            "reference_extrapolated_s": round(ref_s, 1),
            "vectorised_cold_s": round(cold, 3),
            "vectorised_warm_s": round(warm, 3),
            "conditional_means_s": round(pick("vectorised", "conditional_means_all", thr), 3),
            "speedup_vs_reference_cold": round(ref_s / cold, 1),
            "speedup_vs_reference_warm": round(ref_s / warm, 1),
            "target_under_10s_met": cold < TARGET_SECONDS,
            "target_50x_met": ref_s / cold >= TARGET_SPEEDUP,
        }
    env = env_name("cpu")
    out_dir = Path(results_dir) / env
    atomic_write_csv(out_dir / "sampler.csv", rows)
    atomic_write_json(
        out_dir / "sampler.json",
        {
            "experiment": "sampler",
            "description": __doc__,
            "env": env,
            "machine": meta,
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "setting": setting,
            "reference_windows_timed": [r["windows_timed"] for r in ref_rows],
            "max_abs_mean_diff_vectorised_vs_reference_float64": mean_diff,
            "summary": summary,
            "targets": {"all_samples_under_s": TARGET_SECONDS, "speedup_at_least": TARGET_SPEEDUP},
            "notes": [
                "load_1min_before/after per row: the machine's 1-minute load average around each timing.",
                "Reference rows are extrapolated from an evenly spread subset of windows (extrapolated=True).",
                f"sample_all_cold includes factorising all {clipping_cases()} clipping cases; warm reuses the "
                "cached factors.",
                "blas_threads=1: numpy's and scipy's OpenBLAS limited to 1 thread (PatchGaussian's default, "
                "pda_repro.sampling.limit_blas_threads); default: the libraries' own thread count.",
                "Speedups compare vectorised and reference under the same BLAS thread setting.",
            ],
        },
    )
    print(json.dumps({"env": env, **summary}, indent=2))
    return out_dir / "sampler.csv"
