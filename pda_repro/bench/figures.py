"""`pda-repro figures`: draw every benchmark table and figure from results/ (never recomputing anything)
into results/figures/*.png, and write results/README.md with our numbers beside the paper's.

Inputs per env directory results/<env>/: table1.csv, fig12.csv, fig9_10.csv (+ fig9_10/*.npz), fig11.csv,
fig16.csv and their .json metadata (any may be missing). Outputs (one set per env):
  table1_<env>.png                   forward time of one batch per model and backend, paper's K80 beside
  fig12_<env>.png / fig12_<env>_log.png   PDA vs efficient PDA per model and backend (grouped bars, stacked
                                     sampling/forward/other; log-scale variant); extrapolated bars hatched
  fig9_10_<model>_<env>.png          histograms of per-neuron mean and std of the FC layers (pre-ReLU)
  fig11_<model>_<env>.png            histogram of |AM - NGM| over the images
  fig16_<model>_<env>.png            |P_PDA(S) - P_epda| against S
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pda_repro.bench.incremental_module import results_section as module_incremental_section
from pda_repro.bench.parallel_report import parallel_section
from pda_repro.bench.results import (
    RESULTS_DIR,
    atomic_write_bytes,
    atomic_write_text,
    envs,
    replace_generated_block,
    weights_slug,
)

PAPER = {
    "table1_ms": {"alexnet": 342.0, "vgg16": 3301.0, "googlenet": 634.0},
    "table1_setting": "Caffe2 + cuDNN on a Tesla K80, batch 160",
    "sampling_seconds": 300.0,
    "sampling_samples": 501_760,
    "sampling_setting": "NumPy, per window, Intel Core i5: 224 x 224 x 10 samples of a 10 x 10 window",
    "speedup": 10.0,
    "speedup_setting": "Caffe + cuDNN, Tesla K80, batch 160, k=10, l=18, S=10 (AlexNet, VGG-16, GoogLeNet)",
}
MODEL_ORDER = ("alexnet", "vgg16", "googlenet", "mnist", "efficientnet_lite0")
BACKEND_COLOURS = {"caffe": "#4c72b0", "torch": "#dd8452", "torch incremental": "#55a868"}
# Both backends run the same net on the same samples, so their curves coincide: caffe thick, torch dashed.
BACKEND_WIDTH = {"caffe": 2.6, "torch": 1.1}
BACKEND_DASH = {"caffe": "-", "torch": "--"}
PART_ALPHA = {"forward": 1.0, "sampling": 0.55, "other": 0.25}

__all__ = ["render_all", "write_readme"]


@dataclass
class Rendered:
    figures: list[Path] = field(default_factory=list)
    qualitative: list[Path] = field(default_factory=list)
    readme: Path | None = None
    notes: list[str] = field(default_factory=list)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _read(env_dir: Path, name: str) -> pd.DataFrame:
    path = env_dir / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _meta(env_dir: Path, name: str) -> dict[str, Any]:
    path = env_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _models_sorted(names: Sequence[str]) -> list[str]:
    rank = {m: i for i, m in enumerate(MODEL_ORDER)}
    return sorted(set(names), key=lambda m: (rank.get(m, len(rank)), m))


def _random_weights(weights: str) -> bool:
    return str(weights).startswith("random")


def _machine_line(env_dir: Path) -> str:
    """'AMD EPYC, 2 cores, torch 2.13.0 (mkl), pycaffe ...' from any cell's metadata in the env."""
    for name in ("table1", "fig12", "fig9_10", "fig11", "fig16"):
        cells = _meta(env_dir, name).get("cells", {})
        if cells:
            m = next(iter(cells.values()))
            gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
            return f"{m.get('cpu_model')}, {m.get('logical_cores')} cores{gpu}, torch {m.get('torch')}"
    return env_dir.name


def one_per_cell(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per ``keys`` when a results file holds several settings of the same measurement: the paper
    profile before the quick one, batch 160 (the paper's) before others."""
    if frame.empty:
        return frame
    rank = pd.Series(0, index=frame.index)
    if "profile" in frame:
        rank += (frame["profile"] != "paper").astype(int) * 2
    if "batch" in frame:
        rank += (frame["batch"] != 160).astype(int)
    ordered = frame.assign(_rank=rank).sort_values("_rank", kind="stable")
    return ordered.drop_duplicates(list(keys), keep="first").drop(columns="_rank")


def fig12_frame(env_dir: Path) -> pd.DataFrame:
    """Figure 12's rows, one per (model, backend, device, method); rows computed with incremental
    inference are a backend of their own, labelled "torch incremental"."""
    frame = _read(env_dir, "fig12")
    if not frame.empty and "inference" in frame:
        incremental = frame["inference"].fillna("full") == "incremental"
        frame = frame.assign(backend=frame["backend"].where(~incremental, frame["backend"] + " incremental"))
    return one_per_cell(frame, ["model", "backend", "device", "method"])


def best_profile_rows(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """For experiments with many rows per cell (Figs 9/10, 11, 16): per ``keys`` group keep the rows of the
    paper profile where it was run, else those of the quick profile."""
    if frame.empty or "profile" not in frame:
        return frame
    best = frame.groupby(list(keys))["profile"].transform(
        lambda p: "paper" if (p == "paper").any() else p.iloc[0]
    )
    return frame[frame["profile"] == best]


# --- Table 1 --------------------------------------------------------------------------------------------


def plot_table1(frame: pd.DataFrame, env: str, out: Path, machine: str) -> Path:
    plt = _plt()
    models = _models_sorted(frame["model"])
    backends = sorted(frame["backend"].unique())
    has_paper = any(m in PAPER["table1_ms"] for m in models)
    n_bars = len(backends) + (1 if has_paper else 0)
    width = 0.8 / n_bars
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(models) + 2), 4.2))
    x = np.arange(len(models))
    for j, backend in enumerate(backends):
        sub = frame[frame["backend"] == backend].set_index("model")
        med = [sub.loc[m, "median_ms"] if m in sub.index else np.nan for m in models]
        lo = [sub.loc[m, "median_ms"] - sub.loc[m, "min_ms"] if m in sub.index else 0 for m in models]
        hi = [sub.loc[m, "max_ms"] - sub.loc[m, "median_ms"] if m in sub.index else 0 for m in models]
        ax.bar(
            x + (j - (n_bars - 1) / 2) * width,
            med,
            width,
            yerr=[lo, hi],
            capsize=3,
            color=BACKEND_COLOURS.get(backend),
            label=f"ours: {backend} (median, min-max)",
        )
        for xi, v, up in zip(x + (j - (n_bars - 1) / 2) * width, med, hi, strict=True):
            if np.isfinite(v):
                ax.annotate(
                    f"{v:.0f}",
                    (xi, v + up),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    if has_paper:
        paper = [PAPER["table1_ms"].get(m, np.nan) for m in models]
        ax.bar(
            x + (n_bars - 1 - (n_bars - 1) / 2) * width,
            paper,
            width,
            color="#999999",
            label=f"paper: {PAPER['table1_setting']}",
        )
        for xi, v in zip(x + (n_bars - 1 - (n_bars - 1) / 2) * width, paper, strict=True):
            if np.isfinite(v):
                ax.annotate(
                    f"{v:.0f}",
                    (xi, v),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.set_xticks(x, models)
    ax.set_yscale("log")
    lows = [float(frame["min_ms"].min())] + [v for m, v in PAPER["table1_ms"].items() if m in models]
    ax.set_ylim(min(lows) / 3, float(frame["max_ms"].max()) * 3)
    ax.set_ylabel("forward time of one batch [ms] (log)")
    batch = ", ".join(str(b) for b in sorted(frame["batch"].unique()))
    device = ", ".join(sorted(frame["device"].unique()))
    ax.set_title(f"Table 1: one forward pass, batch {batch}, {device} — {env}\n{machine}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out / f"table1_{env}.png")


# --- Figure 12 ------------------------------------------------------------------------------------------


def plot_fig12(frame: pd.DataFrame, env: str, out: Path, machine: str, log: bool) -> Path:
    """Grouped bars: per model, PDA and efficient PDA for each backend; linear bars are stacked into
    forward / sampling / other, the log variant shows totals. Extrapolated bars are hatched and labelled."""
    plt = _plt()
    models = _models_sorted(frame["model"])
    backends = sorted(frame["backend"].unique())
    combos = [(b, m) for b in backends for m in ("pda", "epda")]
    width = 0.8 / len(combos)
    fig, ax = plt.subplots(figsize=(max(7.0, 2.2 * len(models) + 2), 4.8))
    x = np.arange(len(models))
    any_extrapolated = False
    for j, (backend, method) in enumerate(combos):
        sub = frame[(frame["backend"] == backend) & (frame["method"] == method)].set_index("model")
        pos = x + (j - (len(combos) - 1) / 2) * width
        colour = BACKEND_COLOURS.get(backend, "#55a868")
        name = "PDA" if method == "pda" else "efficient PDA"
        for xi, model in zip(pos, models, strict=True):
            if model not in sub.index:
                continue
            row = sub.loc[model]
            extrapolated = bool(row["extrapolated"])
            any_extrapolated |= extrapolated
            hatch = "//" if extrapolated else None
            edge = "black" if method == "pda" else colour
            if log:
                ax.bar(
                    xi,
                    row["total_seconds"],
                    width,
                    color=colour,
                    alpha=1.0 if method == "pda" else 0.5,
                    hatch=hatch,
                    edgecolor=edge,
                )
            else:
                bottom = 0.0
                for part in ("forward", "sampling", "other"):
                    v = float(row[f"{part}_seconds"])
                    ax.bar(
                        xi,
                        v,
                        width,
                        bottom=bottom,
                        color=colour,
                        alpha=PART_ALPHA[part] * (1.0 if method == "pda" else 0.7),
                        hatch=hatch,
                        edgecolor=edge,
                        linewidth=0.5,
                    )
                    bottom += v
            label = _fmt_seconds(row["total_seconds"])
            if extrapolated:
                label += f"\n(extrap. {int(row['extrapolated_from_windows'])} w)"
            ax.annotate(
                label,
                (xi, row["total_seconds"]),
                ha="center",
                va="bottom",
                fontsize=6,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.bar(
            np.nan,
            np.nan,
            width,
            color=colour,
            alpha=1.0 if method == "pda" else 0.5,
            edgecolor="black" if method == "pda" else colour,
            label=f"{name} ({backend})",
        )
    # speed-up labels under the model names
    ticks = []
    for model in models:
        parts = []
        for backend in backends:
            sub = frame[(frame["model"] == model) & (frame["backend"] == backend)].set_index("method")
            if {"pda", "epda"} <= set(sub.index):
                parts.append(
                    f"{backend}: {sub.loc['pda', 'total_seconds'] / sub.loc['epda', 'total_seconds']:.1f}x"
                )
        ticks.append(model + "".join(f"\n{part}" for part in parts))  # one line per backend
    ax.set_xticks(x, ticks, fontsize=8)
    if log:
        ax.set_yscale("log")
        ax.set_ylabel("seconds to explain one image (log)")
    else:
        ax.set_ylabel("seconds to explain one image\n(stacked: forward | sampling | other)")
    if any_extrapolated:
        ax.bar(
            np.nan,
            np.nan,
            width,
            color="white",
            hatch="//",
            edgecolor="black",
            label="hatched: extrapolated linearly from a subset of windows",
        )
    first = frame.iloc[0]
    setting = (
        f"k={first['window']}, l={first['outer']}, S={int(frame['samples'].max())}, batch {first['batch']}"
    )
    profiles = ", ".join(sorted(frame["profile"].unique()))
    ax.set_title(
        f"Fig 12: time to explain one image, PDA vs efficient PDA ({setting}; profile {profiles})\n"
        f"{env}: {machine}; paper: ≈{PAPER['speedup']:.0f}x speed-up on a K80",
        fontsize=9,
    )
    top = float(frame["total_seconds"].max())
    if log:
        ax.set_ylim(float(frame["total_seconds"].min()) / 3, top * 4)
    else:
        ax.set_ylim(0, top * 1.2)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1 - 0.05 * len(backends)), ncol=3)
    return _save(fig, out / f"fig12_{env}{'_log' if log else ''}.png")


def _fmt_seconds(s: float) -> str:
    s = float(s)
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s" if s < 10 else f"{s:.0f} s"


# --- Figs 9/10 ------------------------------------------------------------------------------------------


def plot_fig9_10(
    frame: pd.DataFrame, env_dir: Path, model: str, out: Path, stem: str | None = None
) -> Path | None:
    plt = _plt()
    sub = frame[frame["model"] == model]
    layers = list(dict.fromkeys(sub["layer"]))
    if not layers:
        return None
    fig, axes = plt.subplots(len(layers), 2, figsize=(9, 2.8 * len(layers)), squeeze=False)
    weights = sub["weights"].iloc[0]
    for i, layer in enumerate(layers):
        for backend, rows in sub[sub["layer"] == layer].groupby("backend"):
            data = np.load(env_dir / rows["data_file"].iloc[0])
            safe = layer.replace("/", "_")
            for j, stat in enumerate(("mean", "std")):
                values = data[f"{safe}__{stat}"]
                axes[i, j].hist(
                    values,
                    bins=60,
                    histtype="step",
                    linewidth=BACKEND_WIDTH.get(backend, 1.2),
                    linestyle=BACKEND_DASH.get(backend, "-"),
                    color=BACKEND_COLOURS.get(backend),
                    label=f"{backend} ({values.size} neurons)",
                )
        for j, stat in enumerate(("mean", "std")):
            axes[i, j].set_title(f"{layer} (before ReLU): per-neuron {stat}", fontsize=9)
            axes[i, j].set_ylabel("neurons")
            axes[i, j].legend(fontsize=7)
    r0 = sub.iloc[0]
    warn = (
        "  RANDOM WEIGHTS (seeded fillers): not the paper's trained net" if _random_weights(weights) else ""
    )
    fig.suptitle(
        f"Figs 9/10 analogue — {model}: {int(r0['samples'])} conditional samples of the {int(r0['window'])}x"
        f"{int(r0['window'])} top-left window (l={int(r0['outer'])}), image {r0['image']}\nweights: {weights}{warn}",
        fontsize=9,
        color="darkred" if warn else "black",
    )
    fig.tight_layout()
    return _save(fig, out / f"fig9_10_{stem or model}_{env_dir.name}.png")


# --- Fig 11 ---------------------------------------------------------------------------------------------


def plot_fig11(
    frame: pd.DataFrame, env_dir: Path, model: str, out: Path, stem: str | None = None
) -> Path | None:
    plt = _plt()
    sub = frame[frame["model"] == model]
    if sub.empty:
        return None
    meta = _meta(env_dir, "fig11").get("cells", {})
    source = next((c.get("images") for cid, c in meta.items() if f"model={model}|" in cid), "")
    fig, ax = plt.subplots(figsize=(7, 4))
    top = float(sub["abs_am_minus_ngm"].max()) or 1e-6
    bins = np.linspace(0, top, 31)
    for backend, rows in sub.groupby("backend"):
        ax.hist(
            rows["abs_am_minus_ngm"],
            bins=bins,
            histtype="step",
            linewidth=BACKEND_WIDTH.get(backend, 1.2),
            linestyle=BACKEND_DASH.get(backend, "-"),
            color=BACKEND_COLOURS.get(backend),
            label=f"{backend}: {len(rows)} images, median {rows['abs_am_minus_ngm'].median():.2g}",
        )
    r0 = sub.iloc[0]
    weights = r0["weights"]
    warn = " — RANDOM WEIGHTS" if _random_weights(weights) else ""
    ax.set_xlabel("|AM - NGM| of the predicted class's probability")
    ax.set_ylabel("images")
    ax.set_title(
        f"Fig 11 analogue — {model}: window {int(r0['window'])}x{int(r0['window'])} at ({int(r0['window_row'])},"
        f"{int(r0['window_col'])}), AM from {int(r0['am_samples'])} conditional samples, NGM = softmax(logits at the "
        f"conditional mean)\nweights: {weights}{warn}",
        fontsize=8,
    )
    if source:
        fig.text(0.01, -0.03, f"images: {source}", fontsize=7, wrap=True, va="top")
    ax.legend(fontsize=7)
    return _save(fig, out / f"fig11_{stem or model}_{env_dir.name}.png")


# --- Fig 16 ---------------------------------------------------------------------------------------------


def plot_fig16(
    frame: pd.DataFrame, env_dir: Path, model: str, out: Path, stem: str | None = None
) -> Path | None:
    plt = _plt()
    sub = frame[frame["model"] == model]
    if sub.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for backend, rows in sub.groupby("backend"):
        rows = rows.sort_values("S")
        colour = BACKEND_COLOURS.get(backend)
        width = BACKEND_WIDTH.get(backend, 1.2)
        ax.plot(
            rows["S"],
            rows["abs_diff_run0"],
            color=colour,
            linewidth=width,
            linestyle=BACKEND_DASH.get(backend, "-"),
            label=f"{backend}: one sequence",
        )
        ax.plot(
            rows["S"],
            rows["abs_diff_median"],
            color=colour,
            linewidth=width / 2,
            linestyle=":",
            label=f"{backend}: median of {int(rows['repeats'].iloc[0])} sequences",
        )
        ax.fill_between(rows["S"], rows["abs_diff_q1"], rows["abs_diff_q3"], color=colour, alpha=0.15)
    r0 = sub.iloc[0]
    weights = r0["weights"]
    warn = " — RANDOM WEIGHTS" if _random_weights(weights) else ""
    ax.set_xlabel("S (samples drawn at the window)")
    ax.set_ylabel("|P_PDA(c|x\\w) - P_epda(c|x\\w)|")
    ax.set_title(
        f"Fig 16 analogue — {model}: image {r0['image']}, class {int(r0['class'])}, window "
        f"{int(r0['window'])}x{int(r0['window'])} at ({int(r0['window_row'])},{int(r0['window_col'])}), l={int(r0['outer'])}"
        f"\nweights: {weights}{warn}",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    return _save(fig, out / f"fig16_{stem or model}_{env_dir.name}.png")


# --- all ------------------------------------------------------------------------------------------------


def render_all(results_dir: str | Path = RESULTS_DIR, readme: bool = True) -> Rendered:
    """Render every figure of every env under ``results_dir`` and (optionally) write its README.md."""
    root = Path(results_dir)
    out = root / "figures"
    done = Rendered()
    for env in envs(root):
        env_dir = root / env
        machine = _machine_line(env_dir)
        t1 = one_per_cell(_read(env_dir, "table1"), ["model", "backend", "device"])
        if not t1.empty:
            done.figures.append(plot_table1(t1, env, out, machine))
        f12 = fig12_frame(env_dir)
        if not f12.empty:
            for log in (False, True):
                done.figures.append(plot_fig12(f12, env, out, machine, log))
        for name, plot in (("fig9_10", plot_fig9_10), ("fig11", plot_fig11), ("fig16", plot_fig16)):
            frame = best_profile_rows(_read(env_dir, name), ["model", "backend", "device", "weights"])
            if frame.empty:
                continue
            for model in _models_sorted(frame["model"]):
                weights = sorted(frame.loc[frame["model"] == model, "weights"].astype(str).unique())
                for w in weights:  # one figure per set of weights (e.g. random and an official caffemodel)
                    stem = model if len(weights) == 1 else f"{model}_{weights_slug(w)}"
                    path = plot(frame[frame["weights"].astype(str) == w], env_dir, model, out, stem)
                    if path is not None:
                        done.figures.append(path)
        done.figures += render_faithfulness(env_dir, out)
    done.qualitative = _render_qualitative(root, done.notes)
    if readme:
        done.readme = write_readme(root, done.figures, done.qualitative, done.notes)
    return done


def _render_qualitative(root: Path, notes: list[str]) -> list[Path]:
    """The qualitative figures (Figs 13-15, 17-19; pda_repro.bench.qualitative) from results/qualitative/."""
    try:
        from pda_repro.bench.qualitative import render_qualitative
    except ImportError:
        return []
    try:
        return list(render_qualitative(root, notes=notes))
    except Exception as exc:  # noqa: BLE001 - one broken figure set must not stop the benchmark figures
        notes.append(f"qualitative figures failed: {type(exc).__name__}: {exc}")
        return []


# --- README ---------------------------------------------------------------------------------------------


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|")  # a pipe inside a cell would split it

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _env_summary(env_dir: Path) -> list[str]:
    cells = {}
    for name in ("table1", "fig12", "fig9_10", "fig11", "fig16"):
        cells.update(_meta(env_dir, name).get("cells", {}))
    if not cells:
        return []
    metas = list(cells.values())
    m = metas[0]
    dates = sorted(x.get("date", "") for x in metas)
    commits = sorted({str(x.get("git_commit", "?"))[:10] for x in metas})
    loads = [x.get("load_average_1_5_15", [None])[0] for x in metas if x.get("load_average_1_5_15")]
    loads = [v for v in loads if v is not None]
    lines = [
        f"- CPU: {m.get('cpu_model')} ({m.get('logical_cores')} logical cores, {m.get('memory_gib')} GiB)"
        + (f"; GPU: {m['gpu']}" if m.get("gpu") else ""),
        f"- torch {m.get('torch')} (BLAS {m.get('torch_blas')}, {m.get('torch_threads')} threads), numpy "
        f"{m.get('numpy')} ({m.get('numpy_blas')}), pycaffe: {m.get('pycaffe_build', 'not available')} "
        f"(BLAS {m.get('pycaffe_blas', '?')}, {m.get('pycaffe_blas_package', '')})",
        f"- measured {dates[0]} .. {dates[-1]}, git commit(s) {', '.join(commits)}; "
        f"1-minute load average during the cells {min(loads):.1f} .. {max(loads):.1f} "
        "(the machine is shared: other work ran alongside)"
        if loads
        else "",
    ]
    return [line for line in lines if line]


def _table1_section(env_dir: Path) -> list[str]:
    t1 = one_per_cell(_read(env_dir, "table1"), ["model", "backend", "device"])
    if t1.empty:
        return []
    rows = []
    for model in _models_sorted(t1["model"]):
        sub = t1[t1["model"] == model]
        paper = PAPER["table1_ms"].get(model)
        for _, r in sub.sort_values("backend").iterrows():
            rows.append(
                [
                    model,
                    r["input_shape"],
                    r["backend"],
                    r["device"],
                    int(r["batch"]),
                    f"{r['median_ms']:.1f}",
                    f"{r['iqr_ms']:.1f}",
                    f"{r['min_ms']:.1f} .. {r['max_ms']:.1f}",
                    int(r["repeats"]),
                    f"{r['peak_rss_mib']:.0f}"
                    + (f" / GPU {r['cuda_peak_mib']:.0f}" if pd.notna(r.get("cuda_peak_mib")) else ""),
                    f"{paper:.0f}" if paper else "—",
                ]
            )
    return [
        "### Table 1 — one forward pass of a batch",
        "",
        f"Paper: {PAPER['table1_setting']}. Ours: one untimed warm-up batch, then the median of `repeats` "
        "timed batches (seeded noise input), peak resident memory of the timed block.",
        "",
        _md_table(
            [
                "model",
                "input",
                "backend",
                "device",
                "batch",
                "median ms",
                "IQR ms",
                "min .. max ms",
                "repeats",
                "peak MiB",
                "paper K80 ms",
            ],
            rows,
        ),
        "",
    ]


def _fig12_section(env_dir: Path) -> list[str]:
    f12 = fig12_frame(env_dir)
    if f12.empty:
        return []
    rows = []
    for model in _models_sorted(f12["model"]):
        for backend in sorted(f12[f12["model"] == model]["backend"].unique()):
            sub = f12[(f12["model"] == model) & (f12["backend"] == backend)].set_index("method")
            if not {"pda", "epda"} <= set(sub.index):
                continue
            p, e = sub.loc["pda"], sub.loc["epda"]

            def how(r: pd.Series) -> str:
                if bool(r["extrapolated"]):
                    return f"extrapolated from {int(r['extrapolated_from_windows'])} of {int(r['windows_total'])} windows"
                return f"measured, all {int(r['windows_total'])} windows"

            rows.append(
                [
                    model,
                    backend,
                    p["device"],
                    _fmt_seconds(p["total_seconds"]),
                    _fmt_seconds(p["sampling_seconds"]),
                    _fmt_seconds(p["forward_seconds"]),
                    _fmt_seconds(e["total_seconds"]),
                    f"{p['total_seconds'] / e['total_seconds']:.1f}x",
                    f"{how(p)}; {how(e)}",
                ]
            )
    first = f12.iloc[0]
    return [
        "### Figure 12 — time to explain one image",
        "",
        f"Setting: k={first['window']}, l={first['outer']}, S={int(f12['samples'].max())} (PDA), stride 1, batch "
        f"{first['batch']}, conditional Gaussian sampler (factorisations precomputed, not counted), the "
        "predicted class. Paper: PDA vs efficient PDA ≈ 10× "
        f"({PAPER['speedup_setting']}).",
        "",
        _md_table(
            [
                "model",
                "backend",
                "device",
                "PDA total",
                "PDA sampling",
                "PDA forward",
                "efficient PDA total",
                "speed-up",
                "how",
            ],
            rows,
        ),
        "",
    ]


def _incremental_section(env_dir: Path) -> list[str]:
    """Incremental vs full inference (pda_repro/bench/incremental.py), with the ideal ratios and Krypton's."""
    frame = one_per_cell(_read(env_dir, "incremental"), ["model", "method"])
    if frame.empty:
        return []
    rows = []
    for model in _models_sorted(frame["model"]):
        for method in ("epda", "pda"):
            sub = frame[(frame["model"] == model) & (frame["method"] == method)]
            if sub.empty:
                continue
            r = sub.iloc[0]
            target = "" if pd.isna(r.get("target_speedup")) else f"≥ {r['target_speedup']:g}×"
            how = (
                f"extrapolated from {int(r['windows_evaluated'])} of {int(r['windows_total'])} windows"
                if bool(r["extrapolated"])
                else f"all {int(r['windows_total'])} windows"
            )
            rows.append(
                [
                    model,
                    "efficient PDA" if method == "epda" else f"PDA (S={int(r['samples'])})",
                    _fmt_seconds(r["full_seconds"]),
                    _fmt_seconds(r["incremental_seconds"]),
                    f"**{r['speedup']:.2f}×**",
                    _estimate(r),
                    target,
                    f"{r['ideal_ratio']:.2f}×",
                    f"{r['engine_ratio']:.2f}×",
                    f"{r['fraction_of_ideal']:.0%}",
                    f"{r['speedup_vs_full_default_batch']:.2f}×",
                    f"{r['peak_rss_full_mib']:.0f} / {r['peak_rss_incremental_mib']:.0f}",
                    f"{r['base_state_mib']:.1f}",
                    f"{r['max_abs_dprob']:.1e}",
                    f"{r['loop_overhead_fraction']:.1%}",
                    how,
                ]
            )
    first = frame.iloc[0]
    meta = _meta(env_dir, "incremental").get("cells", {})
    loads = sorted({str(m.get("load_average_1_5_15")) for m in meta.values()})
    vgg = frame[(frame["model"] == "vgg16") & (frame["method"] == "epda")]
    krypton = ""
    if not vgg.empty:
        v = vgg.iloc[0]
        krypton = (
            f" Krypton (Nakandala et al. 2019), exact incremental occlusion on VGG-16 on a CPU: "
            f"{v['krypton_vgg16_cpu']:g}× (its paper); ours, efficient PDA on VGG-16: {v['speedup']:.2f}×."
        )
    return [
        "### Incremental inference — only what a window changes is recomputed",
        "",
        f"Setting: torch backend, {first['device']}, k={first['window']}, l={first['outer']}, S=10 (PDA), stride "
        f"{first['stride']}, batch {first['batch']} windows per call in both modes, 1 thread per library; per cell "
        "the same windows in the order full, incremental, incremental, full (means of two runs each). "
        "*ideal* = full / incremental multiply-adds of convolutions and fully connected layers with each "
        "window's own changed box, over every window of a stride-1 run; *engine* = the same for the blocks "
        "the engine computes (one block size per batch); *whole-run estimate* = speed-up × engine ratio over "
        "every window / engine ratio over the timed windows. Full inference at the CPU default batch "
        f"({int(first['full_default_batch'])}) is the tool's behaviour before incremental inference."
        f"{krypton} Load average during the cells: {', '.join(loads)}.",
        "",
        _md_table(
            [
                "model",
                "method",
                "full",
                "incremental",
                "speed-up",
                "whole-run estimate",
                "target",
                "ideal",
                "engine",
                "of ideal",
                "vs full at default batch",
                "peak RSS full / incr. [MiB]",
                "stored activations [MiB]",
                "max Δp",
                "loop overhead",
                "how",
            ],
            rows,
        ),
        "",
    ]


def _estimate(r: Any) -> str:
    """The whole run's speed-up estimated from the timed windows (pda_repro/bench/incremental.py)."""
    value = r.get("speedup_run_estimate")
    return "" if value is None or pd.isna(value) else f"{value:.2f}×"


README_BLOCK = ("<!-- incremental-speedups: generated by `make figures` from results/*/incremental.csv -->",
                "<!-- /incremental-speedups -->")  # fmt: skip
STRIDE_BLOCK = ("<!-- stride-choice: generated by `make figures` from results/*/agreement.csv -->",
                "<!-- /stride-choice -->")  # fmt: skip


def update_project_readme(readme: Path, results_dir: str | Path = RESULTS_DIR) -> Path | None:
    """Replace the generated block of the project README (between README_BLOCK's markers) with the
    measured incremental speed-ups of every env; None when the README has no such block."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if README_BLOCK[0] not in text or README_BLOCK[1] not in text:
        return None
    rows = []
    for env in envs(Path(results_dir)):
        frame = one_per_cell(_read(Path(results_dir) / env, "incremental"), ["model", "method"])
        for model in _models_sorted(frame["model"]) if not frame.empty else []:
            for method in ("epda", "pda"):
                sub = frame[(frame["model"] == model) & (frame["method"] == method)]
                if sub.empty:
                    continue
                r = sub.iloc[0]
                rows.append(
                    [
                        model,
                        "efficient PDA" if method == "epda" else f"PDA, S={int(r['samples'])}",
                        _fmt_seconds(r["full_default_batch_seconds"]),
                        _fmt_seconds(r["full_seconds"]),
                        _fmt_seconds(r["incremental_seconds"]),
                        f"{r['speedup']:.2f}×",
                        _estimate(r),
                        f"{r['ideal_ratio']:.2f}×",
                        "" if pd.isna(r.get("target_speedup")) else f"≥ {r['target_speedup']:g}×",
                        f"{r['base_state_mib']:.{0 if r['base_state_mib'] >= 10 else 1}f} MiB",
                        f"{env}, {r['device']}, k={r['window']}, l={r['outer']}, stride {r['stride']}, batch "
                        f"{int(r['batch'])} (full at default: {int(r['full_default_batch'])}), 1 thread"
                        + (
                            f", extrapolated from {int(r['windows_evaluated'])} windows"
                            if r["extrapolated"]
                            else ""
                        ),
                    ]
                )
    table = _md_table(
        [
            "model",
            "method",
            "full, default batch",
            "full",
            "incremental",
            "speed-up",
            "whole-run estimate",
            "ideal",
            "target",
            "stored",
            "setting",
        ],
        rows,
    )
    written = replace_generated_block(readme, README_BLOCK, table)
    return replace_generated_block(readme, STRIDE_BLOCK, stride_block(Path(results_dir))) or written


def _sampling_section(env_dir: Path) -> list[str]:
    lines = [
        "### Sampling time",
        "",
        f"Paper: ≈ {PAPER['sampling_seconds'] / 60:.0f} min for {PAPER['sampling_samples']:,} samples "
        f"({PAPER['sampling_setting']}).",
    ]
    f12 = fig12_frame(env_dir)
    if not f12.empty:
        pda = f12[f12["method"] == "pda"]
        for _, r in pda.iterrows():
            lines.append(
                f"- ours, inside PDA ({r['model']}, {r['backend']}): {r['sampling_seconds']:.2f} s for "
                f"{int(r['images_forwarded_total']):,} samples of a {r['window']}x{r['window']} window "
                f"(vectorised conditional sampler{', extrapolated' if bool(r['extrapolated']) else ''})"
            )
    sampler = _meta(env_dir, "sampler")
    summary = sampler.get("summary")
    if isinstance(summary, dict) and summary:
        setting = sampler.get("setting", {})
        what = (
            ", ".join(f"{k}={v}" for k, v in setting.items()) if isinstance(setting, dict) else str(setting)
        )
        lines += ["", f"The sampler benchmark (benchmarks/bench_sampler.py; {what}):", ""]
        cols = sorted({k for v in summary.values() if isinstance(v, dict) for k in v})
        rows = [
            [name] + [_fmt_cell(v.get(c)) for c in cols] for name, v in summary.items() if isinstance(v, dict)
        ]
        lines.append(_md_table(["run"] + cols, rows))
    for path in sorted(env_dir.glob("sampler*.csv")):
        lines.append(f"\nSampler data: [{path.name}]({env_dir.name}/{path.name})")
    lines.append("")
    return lines


def _batch_section(env_dir: Path) -> list[str]:
    """Forward ms per image against batch size (benchmarks/bench_batch.py), one row per model/backend."""
    data = _read(env_dir, "batch_size")
    if data.empty:
        return []
    settings = _meta(env_dir, "batch_size").get("settings", {})
    batches = sorted(int(b) for b in data["batch"].unique())
    rows = []
    for (model, backend), group in data.groupby(["model", "backend"], sort=False):
        by_batch = dict(zip(group["batch"].astype(int), group["ms_per_image_best"], strict=True))
        best = min(by_batch, key=by_batch.get)
        rows.append(
            [model, backend] + [f"{by_batch[b]:.3g}" if b in by_batch else "—" for b in batches] + [best]
        )
    threads = settings.get("threads", "?")
    return [
        "### Batch size on this CPU",
        "",
        f"Forward ms per image (best of {settings.get('rounds', '?')} rounds, {threads} thread(s) per library; "
        "benchmarks/bench_batch.py). The default batch on a CPU (pda_repro.backends.default_batch) is chosen "
        "from this table; the paper's 160 stays the benchmark setting.",
        "",
        _md_table(["model", "backend"] + [f"batch {b}" for b in batches] + ["fastest"], rows),
        f"\nData: [batch_size.csv]({env_dir.name}/batch_size.csv)",
        "",
    ]


def _fmt_cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _approx_section(env_dir: Path) -> list[str]:
    lines: list[str] = []
    f9 = best_profile_rows(_read(env_dir, "fig9_10"), ["model", "backend", "device", "weights"])
    if not f9.empty:
        rows = [
            [
                r["model"],
                r["backend"],
                r["layer"],
                int(r["neurons"]),
                f"{r['median_abs_mean']:.3g}",
                f"{r['median_std']:.3g}",
                f"{r['fraction_std_below_abs_mean']:.2f}",
                r["weights"],
            ]
            for _, r in f9.iterrows()
        ]
        lines += [
            "### Figs 9/10 — FC layers before ReLU under conditional sampling of the top-left window",
            "",
            "Paper: most neurons have mean and standard deviation near 0 and |mean| ≫ std (AlexNet, VGG-16, "
            "trained on ILSVRC).",
            "",
            _md_table(
                [
                    "model",
                    "backend",
                    "layer",
                    "neurons",
                    "median abs(mean)",
                    "median std",
                    "fraction std < abs(mean)",
                    "weights",
                ],
                rows,
            ),
            "",
        ]
    f11 = best_profile_rows(_read(env_dir, "fig11"), ["model", "backend", "device", "weights"])
    if not f11.empty:
        sources = sorted(
            {c.get("images", "") for c in _meta(env_dir, "fig11").get("cells", {}).values()} - {""}
        )
        rows = []
        for (model, backend, _), sub in f11.groupby(["model", "backend", "weights"]):
            d = sub["abs_am_minus_ngm"]
            rows.append(
                [
                    model,
                    backend,
                    len(sub),
                    int(sub["am_samples"].iloc[0]),
                    f"{d.median():.3g}",
                    f"{d.quantile(0.9):.3g}",
                    f"{d.max():.3g}",
                    f"{(d < 0.01).mean():.2f}",
                    sub["weights"].iloc[0],
                ]
            )
        lines += [
            "### Fig 11 — |arithmetic mean − normalised geometric mean|",
            "",
            "Paper (AlexNet, 200 ILSVRC images, 500 samples): for more than half of the images the error is "
            "very close to 0.",
            "",
            _md_table(
                [
                    "model",
                    "backend",
                    "images",
                    "AM samples",
                    "median",
                    "90th pct",
                    "max",
                    "fraction < 0.01",
                    "weights",
                ],
                rows,
            ),
            "",
            *[f"Images: {src}." for src in sources],
            "",
        ]
    f16 = best_profile_rows(_read(env_dir, "fig16"), ["model", "backend", "device", "weights"])
    if not f16.empty:
        rows = []
        for (model, backend, _), sub in f16.groupby(["model", "backend", "weights"]):
            at = sub.set_index("S")
            picks = [s for s in (1, 10, 100, int(at.index.max())) if s in at.index]
            rows.append(
                [model, backend]
                + [f"{at.loc[s, 'abs_diff_median']:.3g}" for s in picks]
                + [", ".join(f"S={s}" for s in picks), sub["weights"].iloc[0]]
            )
        lines += [
            "### Fig 16 — |P_PDA(S) − P_epda| against S",
            "",
            "Paper: the difference fluctuates strongly for few samples and settles as S grows.",
            "",
            _md_table(["model", "backend", "S=1", "S=10", "S=100", "S=max", "S values", "weights"], rows),
            "",
        ]
    return lines


def write_readme(
    results_dir: str | Path = RESULTS_DIR,
    figures: Sequence[Path] = (),
    qualitative: Sequence[Path] = (),
    notes: Sequence[str] = (),
) -> Path:
    """results/README.md: per env, our numbers beside the paper's, each with its setting, and the figures."""
    root = Path(results_dir)
    parts = [
        "# Benchmark results",
        "",
        "Generated by `pda-repro figures` (`make figures`) from the CSV/JSON files below — do not edit by hand.",
        "Every number comes with its setting; each CSV has a JSON beside it with the machine, library versions,",
        "git commit, exact command, date and load average of every cell. Quick-profile times of Figure 12 are",
        "extrapolated linearly from an evenly spread subset of windows and say so (`extrapolated`,",
        "`extrapolated_from_windows`). Absolute times depend on the machine; compare ratios across machines.",
        "",
        "## The paper's numbers (Shi et al., efficient PDA)",
        "",
        _md_table(
            ["what", "paper", "setting"],
            [
                *[
                    [f"Table 1: {m} forward, batch 160", f"{v:.0f} ms", PAPER["table1_setting"]]
                    for m, v in PAPER["table1_ms"].items()
                ],
                [
                    "sampling for one image (PDA)",
                    f"≈ {PAPER['sampling_seconds'] / 60:.0f} min for {PAPER['sampling_samples']:,} samples",
                    PAPER["sampling_setting"],
                ],
                [
                    "Fig 12: PDA vs efficient PDA",
                    f"≈ {PAPER['speedup']:.0f}× faster",
                    PAPER["speedup_setting"],
                ],
            ],
        ),
        "",
    ]
    for env in envs(root):
        env_dir = root / env
        parts += [f"## {env}", ""]
        parts += _env_summary(env_dir) + [""]
        parts += _table1_section(env_dir)
        parts += _fig12_section(env_dir)
        parts += _incremental_section(env_dir)
        parts += module_incremental_section(env_dir)
        parts += _sampling_section(env_dir)
        parts += _batch_section(env_dir)
        parts += parallel_section(env_dir)
        parts += _approx_section(env_dir)
        parts += _faithfulness_section(env_dir)
        mine = sorted(
            p for p in figures if p.name.endswith(f"{env}.png") or p.name.endswith(f"{env}_log.png")
        )
        if mine:
            parts += ["### Figures", ""] + [f"- [{p.name}](figures/{p.name})" for p in mine] + [""]
        data = sorted(p.name for p in env_dir.glob("*.csv"))
        parts += ["Data: " + ", ".join(f"[{d}]({env}/{d})" for d in data), ""]
    if qualitative:
        parts += (
            [
                "## Qualitative figures (Figs 13, 14, 15, 17, 18, 19 and baselines)",
                "",
                "Drawn from results/qualitative/ (maps as .npz, settings in the JSON beside each; see "
                "`python -m pda_repro.bench.qualitative`).",
                "",
            ]
            + [f"- [{p.name}](figures/{p.name})" for p in sorted(qualitative)]
            + [""]
        )
    if notes:
        parts += ["## Not drawn", ""] + [f"- {n}" for n in notes] + [""]
    return atomic_write_text(root / "README.md", "\n".join(parts).rstrip() + "\n")


# --- faithfulness (pda_repro.bench.faithfulness) ---------------------------------------------------------

# metric column -> (label, True when higher is better)
FAITHFULNESS_METRICS = {
    "deletion_auc_mean": ("deletion AUC, mean fill", False),
    "insertion_auc_mean": ("insertion AUC, mean fill", True),
    "deletion_auc_blur": ("deletion AUC, blur fill", False),
    "insertion_auc_blur": ("insertion AUC, blur fill", True),
    "deletion_auc_zeros": ("deletion AUC, zeros fill", False),
    "insertion_auc_zeros": ("insertion AUC, zeros fill", True),
    "road_morf_auc": ("ROAD MoRF AUC", False),
    "road_lerf_auc": ("ROAD LeRF AUC", True),
    "faithfulness_correlation": ("faithfulness correlation", True),
}
RANKED_METRICS = (
    "deletion_auc_mean",
    "insertion_auc_mean",
    "road_morf_auc",
    "road_lerf_auc",
    "faithfulness_correlation",
)
AGREEMENT_METRICS = {"spearman": "Spearman ρ", "ssim": "SSIM", "top_overlap": "top-10 % overlap"}
CONTROL_MAPS = ("random", "constant")
EXPERIMENT_FAITHFULNESS = "faithfulness"
MIN_IMAGES_FOR_A_VERDICT = 3  # the README says "differs" only with intervals over at least this many images
# a coarser stride "keeps" the stride-1 map when the 95 % interval of their Spearman ρ lies above this
STRIDE_RHO = 0.9


def _map_label(row: Any) -> str:
    """'pda (S=10, s5)' from a faithfulness row's settings."""
    bits = []
    if pd.notna(row.get("samples")):
        bits.append(f"S={int(row['samples'])}")
    if pd.notna(row.get("stride")):
        bits.append(f"s{int(row['stride'])}")
    if row.get("border") == "shift":
        bits.append("shift")
    return f"{row['map']}" + (f" ({', '.join(bits)})" if bits else "")


def faithfulness_ranking(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model and map: mean [bootstrap 95 % CI] of every metric over images, and the mean rank over
    RANKED_METRICS (1 = best; maps ranked per metric by their mean), sorted by that rank."""
    from pda_repro.evaluate.summary import summarise

    cols = [c for c in FAITHFULNESS_METRICS if c in frame.columns]
    frame = frame.assign(label=[_map_label(r) for _, r in frame.iterrows()])
    out = []
    for model, group in frame.groupby("model", sort=False):
        s = summarise(group, ["map", "label"], cols)
        ranks = []
        for c in RANKED_METRICS:
            if f"{c}_mean" in s:
                higher = FAITHFULNESS_METRICS[c][1]
                ranks.append(s[f"{c}_mean"].rank(ascending=not higher, na_option="bottom"))
        s["mean_rank"] = np.mean(ranks, axis=0)
        s.insert(0, "model", model)
        out.append(s.sort_values("mean_rank", kind="stable"))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def ranking_groups(frame: pd.DataFrame) -> list[tuple[frozenset, pd.DataFrame]]:
    """One model's faithfulness rows split so that maps are ranked on the same images: for every distinct set
    of images some map was evaluated on (largest first), the rows on those images of every map evaluated on
    all of them."""
    sets = frame.groupby("map", sort=False)["image"].agg(frozenset)
    out = []
    for images in sorted(set(sets), key=lambda s: (-len(s), sorted(s))):
        maps = [m for m, s in sets.items() if s >= images]
        out.append((images, frame[frame["map"].isin(maps) & frame["image"].isin(images)]))
    return out


def agreement_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model and comparison (and the two maps): mean [CI] of Spearman, SSIM and top overlap over images."""
    from pda_repro.evaluate.summary import summarise

    return summarise(frame, ["model", "comparison", "map_a", "map_b"], list(AGREEMENT_METRICS))


def _ci_text(row: Any, col: str, digits: int = 3) -> str:
    m, lo, hi = row.get(f"{col}_mean"), row.get(f"{col}_low"), row.get(f"{col}_high")
    if m is None or pd.isna(m):
        return "n/a"
    if row.get(f"{col}_n") == 1:  # one image: no interval
        return f"{m:.{digits}f} (1 image)"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def plot_faithfulness_curves(curves: pd.DataFrame, model: str, env: str, out: Path, note: str) -> Path:
    """Mean deletion / insertion curves per map and fill, and the ROAD curves, for one model."""
    plt = _plt()
    data = curves[curves["model"] == model]
    panels = [("deletion", f) for f in ("mean", "blur", "zeros")] + [
        ("insertion", f) for f in ("mean", "blur", "zeros")
    ]
    panels += [("road_morf", "linear_imputation"), ("road_lerf", "linear_imputation")]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5), sharey=True)
    order = list(dict.fromkeys(data["map"]))
    cmap = plt.get_cmap("tab20")
    for ax, (kind, fill) in zip(axes.ravel(), panels, strict=True):
        part = data[(data["kind"] == kind) & (data["fill"] == fill)]
        for i, m in enumerate(order):
            line = part[part["map"] == m].sort_values("point")
            if line.empty:
                continue
            control = m in CONTROL_MAPS
            ax.plot(line["fraction"], line["score_mean"], color="0.4" if control else cmap(i % 20),
                    ls={"random": "--", "constant": ":"}.get(m, "-"), lw=1.0 if control else 1.4, label=m)  # fmt: skip
        title = kind.replace("_", " ") + ("" if kind.startswith("road") else f", {fill} fill")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("fraction of pixels " + ("inserted" if kind == "insertion" else "removed"))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("P(class) — mean over images")
    axes[1, 0].set_ylabel("P(class) — mean over images")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(f"Faithfulness curves, {model} ({env}); {note}", fontsize=10)
    fig.subplots_adjust(right=0.86, hspace=0.35)
    return _save(fig, out / f"faithfulness_curves_{model}_{env}.png")


def plot_faithfulness_ranking(
    ranking: pd.DataFrame, model: str, env: str, out: Path, note: str, name: str | None = None
) -> Path:
    """Ranked bars (mean over images, bootstrap 95 % CI) per metric, best at the top."""
    plt = _plt()
    data = ranking[ranking["model"] == model]
    metrics = [c for c in RANKED_METRICS if f"{c}_mean" in data]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.32 * len(data) + 1.8))
    for ax, col in zip(np.atleast_1d(axes), metrics, strict=True):
        label, higher = FAITHFULNESS_METRICS[col]
        d = data.dropna(subset=[f"{col}_mean"]).sort_values(f"{col}_mean", ascending=higher)
        y = np.arange(len(d))
        mean = d[f"{col}_mean"].to_numpy()
        err = np.vstack([mean - d[f"{col}_low"].to_numpy(), d[f"{col}_high"].to_numpy() - mean])
        colours = ["0.6" if m in CONTROL_MAPS else "#4c72b0" for m in d["map"]]
        ax.barh(y, mean, xerr=err, color=colours, ecolor="0.2", capsize=2)
        ax.set_yticks(y, d["label"], fontsize=8)
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} = better)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Faithfulness ranking, {model} ({env}): mean over images, bootstrap 95 % CI; grey = controls; "
                 f"{note}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return _save(fig, out / (name or f"faithfulness_ranking_{model}_{env}.png"))


def plot_agreement(summary: pd.DataFrame, model: str, env: str, out: Path) -> Path:
    plt = _plt()
    data = summary[summary["model"] == model].iloc[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.35 * len(data) + 1.8), sharey=True)
    labels = [
        f"{r.comparison}: {r.map_a} ~ {r.map_b} (n={int(max(r.spearman_n, r.ssim_n))})"
        + (", ρ undefined" if r.spearman_n == 0 else "")
        for r in data.itertuples()
    ]
    y = np.arange(len(data))
    for ax, (col, name) in zip(axes, AGREEMENT_METRICS.items(), strict=True):
        mean = data[f"{col}_mean"].to_numpy()
        err = np.vstack([mean - data[f"{col}_low"].to_numpy(), data[f"{col}_high"].to_numpy() - mean])
        colours = ["0.6" if c.startswith("control") else "#dd8452" for c in data["comparison"]]
        ax.barh(y, np.nan_to_num(mean), xerr=np.nan_to_num(err), color=colours, ecolor="0.2", capsize=2)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    fig.suptitle(f"Agreement between maps, {model} ({env}): mean over images, bootstrap 95 % CI", fontsize=10)
    fig.tight_layout()
    return _save(fig, out / f"agreement_{model}_{env}.png")


def render_faithfulness(env_dir: Path, out: Path) -> list[Path]:
    """The faithfulness figures of one env (nothing when its CSVs are missing)."""
    env = env_dir.name
    done = []
    frame, curves, agree = (_read(env_dir, n) for n in ("faithfulness", "faithfulness_curves", "agreement"))
    for model in _models_sorted(frame["model"]) if not frame.empty else []:
        n = frame.loc[frame["model"] == model, "image"].nunique()
        for j, (images, rows) in enumerate(ranking_groups(frame[frame["model"] == model])):
            ranking = faithfulness_ranking(rows)
            name = None if j == 0 else f"faithfulness_ranking_{model}_{env}_{len(images)}images.png"
            done.append(plot_faithfulness_ranking(ranking, model, env, out, f"{len(images)} images", name))
        if not curves.empty and (curves["model"] == model).any():
            note = f"mean over the images each map was evaluated on (up to {n})"
            done.append(plot_faithfulness_curves(curves, model, env, out, note))
    if not agree.empty:
        summary = agreement_summary(agree)
        for model in _models_sorted(agree["model"]):
            done.append(plot_agreement(summary, model, env, out))
    return done


def _map_costs(cells: dict[str, Any], model: str) -> list[str]:
    """'key: median s (n images)' for every map the model's cell computed (not read from disk, not resumed)."""
    per: dict[str, list[float]] = {}
    for cid, c in cells.items():
        if f"model={model}|" in f"{cid}|":
            for k, v in (c.get("cpu_seconds_maps_computed") or {}).items():
                if v is not None:
                    per.setdefault(k.split("/", 1)[0], []).append(float(v))
    return [f"`{k}` {np.median(v):.1f} s ({len(v)})" for k, v in per.items()]


def _ranking_table(ranking: pd.DataFrame) -> list[str]:
    rows = []
    for _, r in ranking.iterrows():
        rows.append([r["label"], int(r["deletion_auc_mean_n"]), f"{r['mean_rank']:.1f}",
                     *[_ci_text(r, c) for c in RANKED_METRICS]])  # fmt: skip
    head = ["map", "n", "mean rank",
            *[FAITHFULNESS_METRICS[c][0] + (" ↑" if FAITHFULNESS_METRICS[c][1] else " ↓") for c in RANKED_METRICS]]  # fmt: skip
    return [_md_table(head, rows), ""]


def _control_lines(ranking: pd.DataFrame) -> list[str]:
    """Controls: a metric that puts a control in the top half of the maps is not measuring faithfulness."""
    flagged = []
    for c in RANKED_METRICS:
        higher = FAITHFULNESS_METRICS[c][1]
        order = (
            ranking.dropna(subset=[f"{c}_mean"])
            .sort_values(f"{c}_mean", ascending=not higher)["map"]
            .tolist()
        )
        for ctrl in CONTROL_MAPS:
            if ctrl in order and order.index(ctrl) < len(order) / 2:
                flagged.append(
                    f"{FAITHFULNESS_METRICS[c][0]} puts `{ctrl}` at {order.index(ctrl) + 1} of {len(order)}"
                )
    return [
        "Controls: "
        + (
            "; ".join(flagged) + " (that metric does not separate maps from noise here)."
            if flagged
            else "every metric ranks the random and the all-equal map in the bottom half."
        ),
        "",
    ]


def _faithfulness_section(env_dir: Path) -> list[str]:
    """README: the ranking, the agreement numbers and the sanity check, beside the paper's claims."""
    frame, agree, rand = (
        _read(env_dir, n) for n in ("faithfulness", "agreement", "faithfulness_randomisation")
    )
    if frame.empty and agree.empty:
        return []
    lines = [
        "### Faithfulness and agreement (issue: measure faithfulness)",
        "",
        "`make benchmark EXPERIMENTS=faithfulness` (pda_repro.bench.faithfulness; metrics in pda_repro.evaluate).",
        "Score = softmax probability of the predicted class. Deletion/insertion: k×k blocks, most relevant first,",
        "replaced by (deletion) or restored into (insertion) a fill: `mean` = the sampler's conditional mean of each",
        "block (MNIST: the marginal sampler's dataset mean), `blur` = Gaussian σ = k/2, `zeros`. ROAD: noisy linear",
        "imputation of 10–90 % of the pixels. Faithfulness correlation: 10 % of the blocks, mean fill. Every value",
        "is the mean over images with a percentile-bootstrap 95 % interval. `mean rank` averages the map's rank",
        "over deletion (mean fill), insertion (mean fill), ROAD MoRF, ROAD LeRF and the correlation (1 = best).",
        "Maps are ranked by their signed value (positive = evidence for the class), so LeRF removes the evidence",
        "*against* the class first; the PDA-family maps are signed, saliency and Grad-CAM are not.",
        "",
    ]
    meta = {
        **_meta(env_dir, EXPERIMENT_FAITHFULNESS).get("cells", {})
    }  # the ranked maps: their plan, their cost
    for model in _models_sorted(frame["model"]) if not frame.empty else []:
        sub = frame[frame["model"] == model]
        plan_notes = [c.get("notes", {}) for cid, c in meta.items() if f"model={model}|" in f"{cid}|"]
        notes = next((n for n in plan_notes if n), {})
        groups = ranking_groups(sub)
        for j, (images, rows_g) in enumerate(groups):
            ranking = faithfulness_ranking(rows_g)
            what = (f"{len(images)} images, profile {', '.join(sorted(sub['profile'].unique()))}" if j == 0 else
                    f"the {len(images)} images every map below was evaluated on: {', '.join(sorted(images))}")  # fmt: skip
            lines += [f"#### {model}: ranking ({what})", ""]
            if j == 0 and notes.get("scale"):
                lines += [f"Scale: {notes['scale']}." + (f" {notes['pda_finest_stride']}." if notes.get("pda_finest_stride") else ""), ""]  # fmt: skip
            if j == 0 and notes.get("maps"):
                lines += ["Maps: " + "; ".join(f"`{k}` = {v}" for k, v in notes["maps"].items()) + ".", ""]
                cost = _map_costs(meta, model)
                if cost:
                    lines += ["CPU seconds per computed map (median over the images it was computed on; "
                              "faithfulness.json): " + "; ".join(cost) + ".", ""]  # fmt: skip
            if j == 0 and len(groups) > 1:
                lines += ["Only the maps made on all of these images are ranked here; the next table ranks every "
                          "map on the images they share.", ""]  # fmt: skip
            lines += _ranking_table(ranking)
            lines += _control_lines(ranking)
        lines += _ranking_claims(faithfulness_ranking(groups[-1][1]))
    if not agree.empty:
        summary = agreement_summary(agree)
        settings = agree.groupby(["model", "comparison", "map_a", "map_b"], sort=False).first().reset_index()
        for model in _models_sorted(summary["model"]):
            s = summary[summary["model"] == model]
            rows = []
            for _, r in s.iterrows():
                st = settings[(settings["model"] == model) & (settings["comparison"] == r["comparison"])
                              & (settings["map_a"] == r["map_a"]) & (settings["map_b"] == r["map_b"])].iloc[0]  # fmt: skip
                rows.append([r["comparison"], f"{r['map_a']} (s{st['stride_a']:.0f})" if pd.notna(st["stride_a"]) else r["map_a"],
                             f"{r['map_b']} (s{st['stride_b']:.0f})" if pd.notna(st["stride_b"]) else r["map_b"],
                             int(max(r["spearman_n"], r["ssim_n"])),
                             *[_ci_text(r, c) for c in AGREEMENT_METRICS]])  # fmt: skip
            lines += [f"#### {model}: agreement between maps", "",
                      _md_table(["comparison", "map a", "map b", "images", *AGREEMENT_METRICS.values()], rows), ""]  # fmt: skip
            lines += _agreement_claims(s)
        stride = _stride_env_lines(env_dir)
        if stride:
            lines += ["#### Choosing the stride", "", *stride, ""]
    if not rand.empty:
        from pda_repro.evaluate.summary import summarise

        r = summarise(rand.assign(changed_share=rand["changed"].astype(float)), ["model", "map", "level"],
                      ["spearman", "ssim", "changed_share"])  # fmt: skip
        rows = [[x["model"], x["map"], x["level"], int(max(x["spearman_n"], x["ssim_n"])), _ci_text(x, "spearman"), _ci_text(x, "ssim"),
                 f"{x['changed_share_mean']:.2f}"] for _, x in r.iterrows()]  # fmt: skip
        thr = rand["threshold"].iloc[0]
        lines += ["#### Model-randomisation sanity check", "",
                  f"top1 = the output layer re-drawn from the prototxt's seeded fillers, all = every learnable layer; "
                  f"`changed` = share of images whose map has |Spearman| < {thr:g} with the trained-model map "
                  "(a map that ignores the weights keeps ρ ≈ 1 and changed = 0, as the random and constant controls do).", "",
                  _md_table(["model", "map", "randomised", "images", "Spearman ρ", "SSIM", "changed"], rows), ""]  # fmt: skip
    return lines


def _agreement_claims(summary: pd.DataFrame) -> list[str]:
    """The paper's qualitative claims (Figs 14-16, 19) beside what the agreement numbers say."""

    def get(comparison: str, map_a: str | None = None) -> Any:
        rows = summary[summary["comparison"] == comparison]
        if map_a is not None:
            rows = rows[rows["map_a"] == map_a]
        return None if rows.empty else rows.iloc[0]

    out = []
    floor, sampled = get("pda_vs_pda_other_seed"), get("pda_vs_epda_sampled")
    # PDA vs efficient PDA from the same PDA map as the comparison it is set against (same stride)
    epda = get("pda_vs_epda", None if floor is None else floor["map_a"])
    if floor is not None and epda is not None:
        n = int(min(floor["spearman_n"], epda["spearman_n"]))
        if n < MIN_IMAGES_FOR_A_VERDICT:
            verdict = f"on {n} image(s) only, so no verdict; the gap in ρ is {floor['spearman_mean'] - epda['spearman_mean']:.2f}."
        elif epda["spearman_high"] < floor["spearman_low"]:
            verdict = "differs from PDA by MORE than PDA differs from itself (intervals do not overlap)."
        else:
            verdict = "is not distinguishable from PDA's own seed-to-seed variation at this scale."
        out.append(
            f"- Paper (Figs 14/16): PDA and efficient PDA differ, PDA being the noisier. Measured: PDA vs PDA with "
            f"another seed ρ = {_ci_text(floor, 'spearman')} (the sampling-noise floor), PDA vs efficient PDA "
            f"ρ = {_ci_text(epda, 'spearman')} ({epda['map_a']} ~ {epda['map_b']}): efficient PDA " + verdict
        )
    epda = None if sampled is None else get("pda_vs_epda", sampled["map_a"])
    if sampled is not None and epda is not None:
        closer = sampled["spearman_low"] > epda["spearman_high"]
        out.append(
            f"- Paper (Fig 15): with the conditional mean replaced by the mean of 10 samples, the maps look like "
            f"PDA's (shape differences come from sampling). Measured: PDA vs epda_sampled ρ = "
            f"{_ci_text(sampled, 'spearman')} vs PDA vs efficient PDA ρ = {_ci_text(epda, 'spearman')}: "
            + ("epda_sampled is closer to PDA." if closer else "no clear difference (intervals overlap).")
        )
    simp = get("epda_vs_simplified")
    if simp is not None:
        out.append(f"- Paper (Fig 19): the simplified variant is 'too noisy'. Measured: efficient PDA vs simplified "
                   f"ρ = {_ci_text(simp, 'spearman')}, SSIM {_ci_text(simp, 'ssim')}.")  # fmt: skip
    strides = summary[summary["comparison"].str.startswith("epda_stride1_vs_")]
    if not strides.empty:
        parts = []
        for _, r in strides.iterrows():
            stride = int(r["comparison"].rsplit("stride", 1)[-1])
            parts.append(
                f"stride {stride}: ρ = {_ci_text(r, 'spearman')}, top-10 % overlap {_ci_text(r, 'top_overlap')}"
            )
        out.append("- Stride (efficient PDA, vs stride 1): " + "; ".join(parts) + " (the CLI's default stride: "
                   "see `Choosing the stride` below).")  # fmt: skip
    border = get("border_clip_vs_shift")
    if border is not None:
        out.append(f"- Border rule (conditional sampler, clip vs the original code's shift): ρ = "
                   f"{_ci_text(border, 'spearman')}, SSIM {_ci_text(border, 'ssim')}, top-10 % overlap "
                   f"{_ci_text(border, 'top_overlap')}.")  # fmt: skip
    return out + [""] if out else []


def cli_default_stride() -> int:
    """`pda-repro explain`'s default --stride, read from the CLI's parser."""
    import argparse

    from pda_repro.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return int(sub.choices["explain"].get_default("stride"))


def stride_lines(results_dir: Path) -> list[str]:
    """'Choosing the stride' for every env with agreement data (see _stride_env_lines)."""
    return [line for env in envs(Path(results_dir)) for line in _stride_env_lines(Path(results_dir) / env)]


def _stride_env_lines(env_dir: Path) -> list[str]:
    """Efficient PDA at stride s vs stride 1 per model (Spearman ρ over images, windows per image), the rule and
    the stride it picks, and the CLI's default."""
    from pda_repro import zoo
    from pda_repro.evaluate.summary import stride_choice
    from pda_repro.methods.windows import WindowGrid

    lines: list[str] = []
    env = env_dir.name
    agree = _read(env_dir, "agreement")
    if agree.empty:
        return lines
    table, choice = stride_choice(agree, STRIDE_RHO, MIN_IMAGES_FOR_A_VERDICT)
    if table.empty:
        return lines
    rank = {m: i for i, m in enumerate(_models_sorted(table["model"]))}
    table = table.sort_values(["model", "stride"], key=lambda c: c.map(rank) if c.name == "model" else c)
    rows = []
    for _, r in table.iterrows():
        sub = agree[(agree["model"] == r["model"]) & agree["comparison"].str.endswith(f"stride{r['stride']}")
                    & agree["comparison"].str.startswith("epda_stride1_vs_")]  # fmt: skip
        k = int(sub["window_a"].iloc[0])
        _, h, w = zoo.get(r["model"]).input_shape
        n1, ns = WindowGrid(h, w, k, 1).n_windows, WindowGrid(h, w, k, int(r["stride"])).n_windows
        rows.append([r["model"], int(r["stride"]), f"{ns:,} ({n1 / ns:.1f}× fewer)", int(r["spearman_n"]),
                     _ci_text(r, "spearman"),
                     "yes" if r["kept"] else "no"])  # fmt: skip
    default = cli_default_stride()
    models = ", ".join(_models_sorted(table["model"]))
    lines += [
        f"Efficient PDA at stride s against the same map at stride 1 ({env}: {models}; agreement.csv, "
        "`make benchmark EXPERIMENTS=faithfulness`): Spearman ρ of the two maps on the pixels both cover, mean "
        "over images with a bootstrap 95 % interval. A stride *keeps* the stride-1 map when at least "
        f"{MIN_IMAGES_FOR_A_VERDICT} images were measured and the interval's lower end is ≥ {STRIDE_RHO:g}.",
        "",
        _md_table(["model", "stride", "windows per image", "images", "ρ vs stride 1", "keeps"], rows),
        "",
        f"The largest stride that every model measuring it keeps, all smaller strides kept too: **{choice}**. "
        + (
            f"`pda-repro explain`'s default `--stride` is {default}, this choice."
            if default == choice
            else f"`pda-repro explain`'s default `--stride` is {default}; the measurement supports {choice}."
        ),
    ]
    return lines


def stride_block(results_dir: Path) -> str:
    return "\n".join(stride_lines(results_dir)) or "(no stride measurement in results/*/agreement.csv yet)"


def _ranking_claims(ranking: pd.DataFrame) -> list[str]:
    """Fig 14's claim (efficient PDA less noisy, on the object; judged by eye) beside the faithfulness numbers of
    PDA and efficient PDA at the same stride: which one the 95 % intervals favour, metric by metric."""
    keys = set(ranking["map"])
    pair = next(
        ((a, b) for a, b in (("pda", "epda"), ("pda_s5", "epda_s5")) if a in keys and b in keys), None
    )
    if pair is None:
        return []
    a, b = (ranking[ranking["map"] == k].iloc[0] for k in pair)
    verdicts = []
    for c in RANKED_METRICS:
        label, higher = FAITHFULNESS_METRICS[c]
        lo_a, hi_a, lo_b, hi_b = a[f"{c}_low"], a[f"{c}_high"], b[f"{c}_low"], b[f"{c}_high"]
        if pd.isna(lo_a) or pd.isna(lo_b):
            continue
        if hi_b < lo_a or hi_a < lo_b:
            better_b = (b[f"{c}_mean"] > a[f"{c}_mean"]) == higher
            verdicts.append(f"{label}: {'efficient PDA' if better_b else 'PDA'} better")
        else:
            verdicts.append(f"{label}: no clear difference")
    return [
        f"Paper (Fig 14, by eye): efficient PDA is less noisy and focuses on the object. Measured faithfulness, "
        f"{a['label']} vs {b['label']} (95 % intervals): " + "; ".join(verdicts) + ".",
        "",
    ]
