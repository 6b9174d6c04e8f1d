"""The approximation figures from results/<env>/: Figs 9/10 (per-neuron mean and std of the FC layers),
Fig 11 (|AM - NGM| over the images) and Fig 16 (|P_PDA(S) - P_epda| against S)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pda_repro.bench.figure_data import (
    BACKEND_COLOURS,
    BACKEND_DASH,
    BACKEND_WIDTH,
    pyplot,
    random_weights,
    read_meta,
    save_figure,
)

# --- Figs 9/10 ------------------------------------------------------------------------------------------


def plot_fig9_10(
    frame: pd.DataFrame, env_dir: Path, model: str, out: Path, stem: str | None = None
) -> Path | None:
    plt = pyplot()
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
    warn = "  RANDOM WEIGHTS (seeded fillers): not the paper's trained net" if random_weights(weights) else ""
    fig.suptitle(
        f"Figs 9/10 analogue — {model}: {int(r0['samples'])} conditional samples of the {int(r0['window'])}x"
        f"{int(r0['window'])} top-left window (l={int(r0['outer'])}), image {r0['image']}\nweights: {weights}{warn}",
        fontsize=9,
        color="darkred" if warn else "black",
    )
    fig.tight_layout()
    return save_figure(fig, out / f"fig9_10_{stem or model}_{env_dir.name}.png")


# --- Fig 11 ---------------------------------------------------------------------------------------------


def plot_fig11(
    frame: pd.DataFrame, env_dir: Path, model: str, out: Path, stem: str | None = None
) -> Path | None:
    plt = pyplot()
    sub = frame[frame["model"] == model]
    if sub.empty:
        return None
    meta = read_meta(env_dir, "fig11").get("cells", {})
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
    warn = " — RANDOM WEIGHTS" if random_weights(weights) else ""
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
    return save_figure(fig, out / f"fig11_{stem or model}_{env_dir.name}.png")


# --- Fig 16 ---------------------------------------------------------------------------------------------


def plot_fig16(
    frame: pd.DataFrame, env_dir: Path, model: str, out: Path, stem: str | None = None
) -> Path | None:
    plt = pyplot()
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
    warn = " — RANDOM WEIGHTS" if random_weights(weights) else ""
    ax.set_xlabel("S (samples drawn at the window)")
    ax.set_ylabel("|P_PDA(c|x\\w) - P_epda(c|x\\w)|")
    ax.set_title(
        f"Fig 16 analogue — {model}: image {r0['image']}, class {int(r0['class'])}, window "
        f"{int(r0['window'])}x{int(r0['window'])} at ({int(r0['window_row'])},{int(r0['window_col'])}), l={int(r0['outer'])}"
        f"\nweights: {weights}{warn}",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    return save_figure(fig, out / f"fig16_{stem or model}_{env_dir.name}.png")


# --- all ------------------------------------------------------------------------------------------------
