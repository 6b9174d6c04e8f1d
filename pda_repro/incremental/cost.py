"""Multiply-adds of full vs incremental inference, from a SpatialGraph's geometry alone.

Counted: convolution and inner-product multiply-adds (`Node.macs_per_pixel` × output pixels);
pooling, LRN and pointwise layers count 0. For a window, a local node's output box is every output
whose receptive field (its hull, dilation gaps included) meets the changed input box, clipped to
the map; pointwise nodes keep the box; merges take the union; from the first dense node on,
everything is computed in full. The ideal ratio of a run is

    full multiply-adds per image × windows / Σ over the windows of their incremental multiply-adds

(`ideal_ratio`). `engine_ratio` counts what the engine really computes: every window of a batch
gets the batch's largest block (pda_repro.incremental.engine), so border windows cost as much as
interior ones.
"""

from __future__ import annotations

import numpy as np

from pda_repro.incremental.graph import SpatialGraph


def _pixels(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[2:])) if len(shape) == 4 else 1


def full_macs(graph: SpatialGraph) -> int:
    """Multiply-adds of one full forward pass (batch 1)."""
    return sum(n.macs_per_pixel * _pixels(graph.shapes[n.outputs[0]]) for n in graph.nodes)


def window_macs(
    graph: SpatialGraph, window: int, rows: np.ndarray, cols: np.ndarray, batch: int | None = None
) -> np.ndarray:
    """Incremental multiply-adds for each window (k×k at rows[i], cols[i]), float64 (N,).

    batch=None: each window's own clipped box (the ideal); batch=B: the engine's blocks, windows
    taken B at a time in the given order, each batch's blocks as large as its largest."""
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    if batch is None:
        return _macs(graph, window, rows, cols, common=False)
    parts = [
        _macs(graph, window, rows[s : s + batch], cols[s : s + batch], common=True)
        for s in range(0, rows.size, batch)
    ]
    return np.concatenate(parts)


def ideal_ratio(graph: SpatialGraph, window: int, rows: np.ndarray, cols: np.ndarray) -> float:
    """Full / incremental multiply-adds over the windows of a run (the best an exact engine can do)."""
    return full_macs(graph) * len(rows) / float(window_macs(graph, window, rows, cols).sum())


def engine_ratio(graph: SpatialGraph, window: int, rows: np.ndarray, cols: np.ndarray, batch: int) -> float:
    """Full / incremental multiply-adds of what the engine computes at this batch."""
    return full_macs(graph) * len(rows) / float(window_macs(graph, window, rows, cols, batch).sum())


def changed_boxes(graph: SpatialGraph, window: int, rows: np.ndarray, cols: np.ndarray) -> dict[str, tuple]:
    """Each value's changed box per window: (row0, rows, col0, cols) arrays; "full" past the
    switch to full inference; values the windows do not reach are absent."""
    boxes: dict[str, tuple] = {}
    _macs(graph, window, np.asarray(rows), np.asarray(cols), common=False, boxes=boxes)
    return {v: b for v, b in boxes.items() if b is not None}


def _macs(
    graph: SpatialGraph,
    window: int,
    rows: np.ndarray,
    cols: np.ndarray,
    common: bool,
    boxes: dict | None = None,
) -> np.ndarray:
    """Per-window multiply-adds; boxes are (lo, size) per axis, sizes per window or common."""
    n = rows.size
    boxes = {} if boxes is None else boxes
    boxes[graph.input] = (rows, np.full(n, window), cols, np.full(n, window))
    total = np.zeros(n, dtype=np.float64)
    for node in graph.nodes:
        ins = [boxes.get(v) for v in node.inputs]
        out_shape = graph.shapes[node.outputs[0]]
        if all(b is None for b in ins):
            out = None
        elif node.kind == "dense" or any(b == "full" for b in ins if isinstance(b, str)):
            out = "full"
        elif node.kind == "local":
            g = node.geometry
            r0, rs, c0, cs = ins[0]
            out = (*g.output_box(0, r0, rs, common), *g.output_box(1, c0, cs, common))
        elif node.kind == "pointwise":
            out = ins[0]
        else:
            out = _union([b for b in ins if b is not None], out_shape[2:], common)
        if out == "full":
            total += node.macs_per_pixel * _pixels(out_shape)
        elif out is not None:
            total += node.macs_per_pixel * out[1] * out[3]
        for v in node.outputs:
            boxes[v] = out
    return total


def _union(boxes: list[tuple], hw: tuple[int, int], common: bool) -> tuple:
    out = []
    for axis, limit in ((0, hw[0]), (1, hw[1])):
        lo = np.min([b[2 * axis] for b in boxes], axis=0)
        hi = np.max([b[2 * axis] + b[2 * axis + 1] for b in boxes], axis=0)
        size = hi - lo
        if common:
            size = np.full_like(size, min(limit, int(size.max())))
            lo = np.clip(lo, 0, limit - size)
        out += [lo, size]
    return tuple(out)
