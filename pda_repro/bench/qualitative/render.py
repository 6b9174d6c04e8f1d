"""Draw the qualitative figures from what `maps` stored: each figure JSON under results/qualitative/ and
the .npz files it lists. Nothing here loads a net or computes a map.

    from pda_repro.bench.qualitative import render_qualitative
    pngs = render_qualitative(results_dir)   # list[Path] written to <results_dir>/figures/
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.bench.qualitative.maps import FIGURES_DIRNAME, QUALITATIVE_DIRNAME, read_npz
from pda_repro.bench.results import RESULTS_DIR
from pda_repro.grid import WindowGrid
from pda_repro.io import atomic_writer

__all__ = ["coverage_mask", "render_qualitative"]


def coverage_mask(height: int, width: int, window: int, stride: int) -> np.ndarray:
    """H×W bool: True where a window of the stride-s grid covers the pixel (WindowGrid.coverage)."""
    return WindowGrid(height, width, window, stride).coverage()


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(p, width) for p in text.split("\n"))


def _caption(doc: dict[str, Any]) -> str:
    """The text under a figure: model, settings, samplers and notes, all as stored in its JSON."""
    lines = [
        f"Model: {doc['model']}; weights: {doc['weights']}"
        + (f" (sha256 {doc['weights_sha256'][:12]})." if doc.get("weights_sha256") else "."),
        f"Settings: {doc['caption']}",
    ]
    samplers = sorted({r["sampler"] for r in doc["runs"].values() if r.get("sampler")})
    lines += [f"Sampler: {s}." for s in samplers]
    lines += [f"Note ({k}): {v}" for k, v in doc.get("notes", {}).items()]
    lines.append(
        "Colours: red = evidence for the class, blue = against; each map has its own scale, symmetric "
        "around 0 (colour bar); overlays on the greyscale input. Data: results/qualitative/"
        f"{doc['figure']}.json"
    )
    return "\n".join(lines)


def _fmt_prob(p: float) -> str:
    """3 decimals; within 0.001 of 1 written as 1−ε (e.g. "1−2.3e-05") instead of "1.000"."""
    if 0.999 < p < 1.0:
        return f"1−{1.0 - p:.1e}"
    return f"{p:.3f}"


def _row_title(subject: dict[str, Any]) -> str:
    name = subject.get("explained_name", "?")
    prob = subject.get("explained_prob", float("nan"))
    text = f"{name}  p={_fmt_prob(prob)}"
    if subject.get("predicted") is not None and subject.get("predicted") != subject.get("explained"):
        text += f"\n(top-1: {subject['predicted_name']} {_fmt_prob(subject['predicted_prob'])})"
    if subject.get("correct") is False:
        text += "  [WRONG]"
    return text


def _no_ticks(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_map(fig: Any, ax: Any, m: np.ndarray, covered: np.ndarray | None, units: str) -> float:
    """A map on its own symmetric scale with a colour bar; pixels no window covers in grey."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from pda_repro.viz import colormap, heatmap_rgb, symmetric_vmax

    values = m[covered] if covered is not None and covered.any() else m
    top = symmetric_vmax(values)
    rgb = heatmap_rgb(m, vmax=top)
    if covered is not None:
        rgb[~covered] = 0.82  # grey: no window covers these pixels
    ax.imshow(rgb, interpolation="nearest")
    ax.set_anchor("W")
    cax = ax.inset_axes((1.03, 0.0, 0.06, 1.0))
    cbar = fig.colorbar(ScalarMappable(Normalize(-top, top), colormap()), cax=cax)
    cbar.ax.tick_params(labelsize=6)
    cbar.set_label(units, fontsize=6, labelpad=1)
    return top


def _draw_not_applicable(ax: Any, header: str, message: str) -> None:
    ax.text(
        0.5,
        0.5,
        _wrap("not applicable: " + message, 30),
        fontsize=5.5,
        ha="center",
        va="center",
        transform=ax.transAxes,
        wrap=True,
    )
    ax.set_title(header, fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _render_figure(doc: dict[str, Any], root: Path, out: Path) -> Path:
    """One PNG: a row per subject (input, then map [+ overlay] per column) and the caption below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pda_repro.viz import overlay_rgb

    set_dir = root / doc["image_set"]
    pairs = doc["layout"] == "pairs"
    columns = doc["columns"]
    n_rows = len(doc["subjects"])
    n_cols = 1 + (2 if pairs else 1) * len(columns)
    # map columns are wider: their colour bar sits beside the square panel
    ratios = [1.0] + ([1.6, 1.0] if pairs else [1.6]) * len(columns)
    wspace, title_room, margin = 0.12, 0.55, 0.15  # title_room: inches above each panel for its title
    width = 2.0 * sum(ratios) + 2 * margin
    # GridSpec: the mean cell width is avail / (n + wspace (n - 1)); cells scale with their ratios
    mean_w = (width - 2 * margin) / (n_cols + wspace * (n_cols - 1))
    unit = mean_w * n_cols / sum(ratios)  # width of a ratio-1 cell = the height of a square panel
    caption = _wrap(_caption(doc), int(width * 13))
    cap_h = 0.13 * (caption.count("\n") + 1) + 0.25
    title_h = 0.45 + title_room
    grid_h = unit * n_rows + title_room * (n_rows - 1)
    height = grid_h + cap_h + title_h
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(f"{doc['title']}\n{doc['model']}", fontsize=10, y=1 - 0.06 / height)
    gs = fig.add_gridspec(
        n_rows,
        n_cols,
        width_ratios=ratios,
        left=margin / width,
        right=1 - margin / width,
        top=1 - title_h / height,
        bottom=cap_h / height,
        wspace=wspace,
        hspace=title_room / unit,
    )
    fig.text(0.01, 0.005, caption, fontsize=7, va="bottom", ha="left", family="sans-serif")
    for r, subject in enumerate(doc["subjects"]):
        sub_dir = set_dir / subject["name"]
        display = read_npz(sub_dir / "input.npz")["display"]
        ax = fig.add_subplot(gs[r, 0])
        ax.imshow(display, interpolation="nearest")
        ax.set_title(_row_title(subject), fontsize=8)
        ax.set_ylabel(_wrap(subject.get("note") or subject["name"], 34), fontsize=6)
        _no_ticks(ax)
        col = 1
        for key in columns:
            run = doc["runs"][key]
            data = read_npz(sub_dir / f"{key}.npz")
            ax = fig.add_subplot(gs[r, col])
            _no_ticks(ax)
            if "map" not in data:
                _draw_not_applicable(ax, run["label"], data["meta"].get("error", "not available"))
                col += 2 if pairs else 1
                continue
            m = np.asarray(data["map"], dtype=np.float64)
            covered = None
            if run.get("stride") and run.get("window"):
                covered = coverage_mask(m.shape[0], m.shape[1], int(run["window"]), int(run["stride"]))
            top = _draw_map(fig, ax, m, covered, run.get("units", ""))
            ax.set_title(f"{run['label']}\n|max|={top:.3g}", fontsize=7.5)
            col += 1
            if pairs:
                ax = fig.add_subplot(gs[r, col])
                ax.imshow(
                    overlay_rgb(display, np.where(covered, m, 0.0) if covered is not None else m, vmax=top)
                )
                ax.set_title("overlay", fontsize=7.5)
                _no_ticks(ax)
                col += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out) as fh:
        fig.savefig(fh, format="png", dpi=100)
    return out


def render_qualitative(
    results_dir: str | Path = RESULTS_DIR,
    figures: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> list[Path]:
    """Draw every qualitative figure whose data exist into <results_dir>/figures/<name>.png.

    Reads only <results_dir>/qualitative/<name>.json and the .npz files it lists; never computes.
    `figures`: figure names or keys (default all found). Missing or incomplete data: skipped, and the
    reason appended to `notes`."""
    root = Path(results_dir) / QUALITATIVE_DIRNAME
    out_dir = Path(results_dir) / FIGURES_DIRNAME
    written: list[Path] = []
    docs = sorted(root.glob("*.json")) if root.is_dir() else []
    for path in docs:
        doc = json.loads(path.read_text())
        if figures and doc.get("figure") not in figures and doc.get("key") not in figures:
            continue
        if not doc.get("complete"):
            if notes is not None:
                notes.append(f"{doc.get('figure')}: data incomplete, run `pda-repro qualitative compute`")
            continue
        try:
            written.append(_render_figure(doc, root, out_dir / f"{doc['figure']}.png"))
        except (OSError, KeyError) as exc:
            if notes is not None:
                notes.append(f"{doc.get('figure')}: cannot render ({exc})")
    if not docs and notes is not None:
        notes.append(f"no qualitative data under {root}")
    return written
