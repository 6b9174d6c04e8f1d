"""Table 1 (forward time of a batch per model and backend, the paper's K80 beside) and Figure 12 (time to
explain one image, PDA vs efficient PDA, stacked sampling/forward/other) from results/<env>/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pda_repro.bench.figure_data import (
    BACKEND_COLOURS,
    PAPER,
    PART_ALPHA,
    fmt_seconds,
    models_sorted,
    pyplot,
    save_figure,
)


def plot_table1(frame: pd.DataFrame, env: str, out: Path, machine: str) -> Path:
    plt = pyplot()
    models = models_sorted(frame["model"])
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
    return save_figure(fig, out / f"table1_{env}.png")


# --- Figure 12 ------------------------------------------------------------------------------------------


def plot_fig12(frame: pd.DataFrame, env: str, out: Path, machine: str, log: bool) -> Path:
    """Grouped bars: per model, PDA and efficient PDA for each backend; linear bars are stacked into
    forward / sampling / other, the log variant shows totals. Extrapolated bars are hatched and labelled."""
    plt = pyplot()
    models = models_sorted(frame["model"])
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
            label = fmt_seconds(row["total_seconds"])
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
    return save_figure(fig, out / f"fig12_{env}{'_log' if log else ''}.png")
