"""What every figure and results text of `pda-repro figures` shares: reading an env's CSV/JSON, the
paper's reference numbers, model order and colours, one row per cell, and small formatters."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pda_repro.bench.results import atomic_write_bytes

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


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def read_frame(env_dir: Path, name: str) -> pd.DataFrame:
    path = env_dir / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def read_meta(env_dir: Path, name: str) -> dict[str, Any]:
    path = env_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def models_sorted(names: Sequence[str]) -> list[str]:
    rank = {m: i for i, m in enumerate(MODEL_ORDER)}
    return sorted(set(names), key=lambda m: (rank.get(m, len(rank)), m))


def random_weights(weights: str) -> bool:
    return str(weights).startswith("random")


def machine_line(env_dir: Path) -> str:
    """'AMD EPYC, 2 cores, torch 2.13.0 (mkl), pycaffe ...' from any cell's metadata in the env."""
    for name in ("table1", "fig12", "fig9_10", "fig11", "fig16"):
        cells = read_meta(env_dir, name).get("cells", {})
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
    frame = read_frame(env_dir, "fig12")
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


def fmt_seconds(s: float) -> str:
    s = float(s)
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s" if s < 10 else f"{s:.0f} s"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|")  # a pipe inside a cell would split it

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)
