"""The faithfulness figures (pda_repro.bench.faithfulness): mean deletion/insertion/ROAD curves, ranked
bars with bootstrap 95 % intervals, and the agreement between maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pda_repro.bench.figure_data import models_sorted, pyplot, read_frame, save_figure

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


def ci_text(row: Any, col: str, digits: int = 3) -> str:
    m, lo, hi = row.get(f"{col}_mean"), row.get(f"{col}_low"), row.get(f"{col}_high")
    if m is None or pd.isna(m):
        return "n/a"
    if row.get(f"{col}_n") == 1:  # one image: no interval
        return f"{m:.{digits}f} (1 image)"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def plot_faithfulness_curves(curves: pd.DataFrame, model: str, env: str, out: Path, note: str) -> Path:
    """Mean deletion / insertion curves per map and fill, and the ROAD curves, for one model."""
    plt = pyplot()
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
    return save_figure(fig, out / f"faithfulness_curves_{model}_{env}.png")


def plot_faithfulness_ranking(
    ranking: pd.DataFrame, model: str, env: str, out: Path, note: str, name: str | None = None
) -> Path:
    """Ranked bars (mean over images, bootstrap 95 % CI) per metric, best at the top."""
    plt = pyplot()
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
    return save_figure(fig, out / (name or f"faithfulness_ranking_{model}_{env}.png"))


def plot_agreement(summary: pd.DataFrame, model: str, env: str, out: Path) -> Path:
    plt = pyplot()
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
    return save_figure(fig, out / f"agreement_{model}_{env}.png")


def render_faithfulness(env_dir: Path, out: Path) -> list[Path]:
    """The faithfulness figures of one env (nothing when its CSVs are missing)."""
    env = env_dir.name
    done = []
    frame, curves, agree = (
        read_frame(env_dir, n) for n in ("faithfulness", "faithfulness_curves", "agreement")
    )
    for model in models_sorted(frame["model"]) if not frame.empty else []:
        n = frame.loc[frame["model"] == model, "image"].nunique()
        for j, (images, rows) in enumerate(ranking_groups(frame[frame["model"] == model])):
            ranking = faithfulness_ranking(rows)
            name = None if j == 0 else f"faithfulness_ranking_{model}_{env}_{len(images)}images.png"
            done.append(plot_faithfulness_ranking(ranking, model, env, out, f"{len(images)} images", name))
        for old in out.glob(f"faithfulness_ranking_{model}_{env}_*images.png"):
            if old not in done:  # an image set the maps no longer share
                old.unlink()
        if not curves.empty and (curves["model"] == model).any():
            note = f"mean over the images each map was evaluated on (up to {n})"
            done.append(plot_faithfulness_curves(curves, model, env, out, note))
    if not agree.empty:
        summary = agreement_summary(agree)
        for model in models_sorted(agree["model"]):
            done.append(plot_agreement(summary, model, env, out))
    return done
