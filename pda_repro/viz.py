"""Pictures of weight-of-evidence maps in the paper's convention.

Red is evidence for the class, blue evidence against, white/grey none; the colour scale is symmetric
around 0 (``vmax = max |WE|`` unless given) and the colour's intensity (HSV saturation) is proportional
to |WE|. Overlays put the map's hue and saturation on a lightened greyscale copy of the input, as the
original PDA code's ``get_overlayed_image`` did. Drawing uses matplotlib's Agg canvas directly (no
pyplot state, no display needed); files are written atomically (pda_repro.io).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pda_repro.io import atomic_writer

__all__ = [
    "colormap",
    "heatmap_rgb",
    "overlay_rgb",
    "save_explanation_png",
    "symmetric_vmax",
    "to_gray",
]

DEFAULT_CMAP = "bwr"
_LUT_SIZE = 4097
OVERLAY_ALPHA = 0.8  # saturation of the overlay at |WE| = vmax (original code: alpha = 0.8)


def symmetric_vmax(maps: np.ndarray, vmax: float | None = None) -> float:
    """The half-width of the symmetric colour scale: `vmax` if given, else max |WE| (finite values).

    An all-zero (or all-NaN) map gets 1.0 so that it renders white instead of dividing by zero."""
    if vmax is not None:
        if not np.isfinite(vmax) or vmax <= 0:
            raise ValueError(f"vmax must be a positive finite number, got {vmax!r}")
        return float(vmax)
    values = np.abs(np.asarray(maps, dtype=np.float64))
    values = values[np.isfinite(values)]
    top = float(values.max()) if values.size else 0.0
    return top if top > 0 else 1.0


def _check_map(map2d: np.ndarray) -> np.ndarray:
    m = np.asarray(map2d, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D map (H, W), got shape {m.shape}")
    return m


def colormap(cmap: str = DEFAULT_CMAP):
    """The named matplotlib colour map with a fine, odd-sized table, so that WE = 0 hits its exact
    centre (white for 'bwr') and the quantisation of the colour scale is 1/2048 of vmax."""
    import matplotlib

    try:
        base = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colour map {cmap!r}") from None
    return base.resampled(_LUT_SIZE)


def heatmap_rgb(map2d: np.ndarray, vmax: float | None = None, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """H×W float map -> H×W×3 float RGB in [0, 1], colour scale [-vmax, vmax] (symmetric around 0).

    With the default 'bwr' map, WE = +vmax is pure red (1, 0, 0), WE = -vmax pure blue (0, 0, 1),
    WE = 0 white, and the saturation is |WE| / vmax (values beyond vmax are clipped)."""
    m = _check_map(map2d)
    top = symmetric_vmax(m, vmax)
    t = np.clip((np.nan_to_num(m) + top) / (2.0 * top), 0.0, 1.0)
    return np.asarray(colormap(cmap)(t)[..., :3], dtype=np.float64)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 (uint8 or float in [0, 1]) -> H×W float luminance in [0, 1] (ITU-R 601 weights)."""
    a = np.asarray(rgb, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None].repeat(3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an H×W×3 image, got shape {a.shape}")
    if np.asarray(rgb).dtype == np.uint8:
        a = a / 255.0
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def overlay_rgb(
    display_rgb: np.ndarray,
    map2d: np.ndarray,
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """The map drawn over the greyscale input, H×W×3 float RGB in [0, 1].

    The input is turned grey and lightened (g' = 1 - (1 - g)/2), then in HSV its hue and saturation are
    replaced by the heatmap's (saturation times `alpha`), so brightness shows the image and colour the
    evidence: no evidence leaves the grey image unchanged, intensity grows with |WE|."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    m = _check_map(map2d)
    gray = to_gray(display_rgb)
    if gray.shape != m.shape:
        raise ValueError(f"image is {gray.shape[0]}x{gray.shape[1]} but the map is {m.shape[0]}x{m.shape[1]}")
    light = 1.0 - (1.0 - gray) * 0.5
    hsv = rgb_to_hsv(np.repeat(light[..., None], 3, axis=2))
    mask = rgb_to_hsv(heatmap_rgb(m, vmax, cmap))
    hsv[..., 0] = mask[..., 0]
    hsv[..., 1] = mask[..., 1] * alpha
    return np.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def save_explanation_png(
    path: str | Path,
    display_rgb: np.ndarray,
    maps: np.ndarray,
    titles: str | Sequence[str],
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
    suptitle: str | None = None,
    colorbar_label: str = "weight of evidence (log2 odds)",
    dpi: int = 100,
) -> Path:
    """Write the paper's layout, one row per map: input | heatmap (with colour bar) | overlay.

    `maps` is H×W or n×H×W; `titles` one string per map (e.g. "monarch p=0.873"). Each row has its own
    symmetric scale (max |WE| of that map) unless `vmax` is given. Written atomically; returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    stack = np.asarray(maps, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"maps must be H×W or n×H×W, got shape {stack.shape}")
    title_list = [titles] if isinstance(titles, str) else list(titles)
    if len(title_list) != stack.shape[0]:
        raise ValueError(f"{stack.shape[0]} maps but {len(title_list)} titles")
    display = np.asarray(display_rgb)
    if display.ndim == 2:
        display = np.repeat(display[..., None], 3, axis=2)
    if display.shape[:2] != stack.shape[1:]:
        raise ValueError(
            f"image is {display.shape[0]}x{display.shape[1]} but the maps are {stack.shape[1]}x{stack.shape[2]}"
        )

    rows = stack.shape[0]
    fig = Figure(figsize=(11.0, 3.4 * rows + (0.4 if suptitle else 0.0)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 3, squeeze=False)
    for r in range(rows):
        m = stack[r]
        top = symmetric_vmax(m, vmax)
        ax_in, ax_map, ax_ov = axes[r]
        ax_in.imshow(display, interpolation="nearest")
        ax_in.set_title("input")
        im = ax_map.imshow(m, cmap=colormap(cmap), norm=Normalize(-top, top), interpolation="nearest")
        ax_map.set_title(title_list[r])
        cbar = fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.04)
        cbar.set_label(colorbar_label, fontsize=8)
        cbar.ax.tick_params(labelsize=7)
        ax_ov.imshow(overlay_rgb(display, m, vmax=top, cmap=cmap), interpolation="nearest")
        ax_ov.set_title("overlay (red: for, blue: against)", fontsize=9)
        for ax in (ax_in, ax_map, ax_ov):
            ax.set_xticks([])
            ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    return path
