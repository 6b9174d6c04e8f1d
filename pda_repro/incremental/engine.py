"""Exact incremental inference: the image with a window replaced, re-computing only what it changes.

`prepare(x)` runs the net once on the unmodified image and keeps every activation (local layers'
inputs also padded, once). `forward_windows(state, rows, cols, patches)` then computes N modified
images at once: the input's change is a k×k block per window; every node maps the changed blocks
of its inputs to the changed block of its output --

  local      output rows o with o*s - p <= last changed row and o*s - p + d*(K-1) >= first changed row
             (columns alike), clipped to the output; the input block those rows read is gathered
             from the stored (padded) activation with the window's changed values laid over it
  pointwise  the same block
  merge      the union of the inputs' blocks, each input gathered on it
  dense      the blocks pasted into copies of the stored activations; from here on, full tensors

-- as ONE batched operation per node: all windows of a batch share one block size (the largest
clipped size among them), each block shifted to lie inside the map, which recomputes a few
unchanged values (they equal the stored ones). Values outside a block equal the stored ones, so the
result is the full forward pass's up to float rounding (tests: tests/test_incremental.py).

Layout: `prepare(x, channels_last=True)` keeps every feature map channels-last (N×H×W×C in memory),
and the blocks follow: a block's slice copies are then runs of whole pixels, and the CPU
convolutions read their input without converting it (the `incremental` benchmark's
`layout_speedup` column times both layouts). The dense rest of the net gets contiguous maps, as
in a plain forward pass (a module's `view` needs them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pda_repro.incremental.graph import Node, SpatialGraph


@dataclass
class Block:
    """The changed part of a feature map for N windows: data (N, C, h, w) at top-left corners
    (rows0[i], cols0[i]), always inside the map. Outside it the map equals the stored activation."""

    data: torch.Tensor
    rows0: np.ndarray
    cols0: np.ndarray


@dataclass
class BaseState:
    """Activations of the unmodified image (batch 1) by value, and the padded inputs of local nodes."""

    values: dict[str, torch.Tensor]
    padded: dict[str, torch.Tensor]
    memory_format: torch.memory_format = torch.contiguous_format  # of the maps and the blocks

    def nbytes(self) -> int:
        tensors = list(self.values.values()) + list(self.padded.values())
        return int(sum(t.numel() * t.element_size() for t in tensors))


class IncrementalEngine:
    """Runs a SpatialGraph incrementally (see the module docstring)."""

    def __init__(self, graph: SpatialGraph) -> None:
        if graph.unsupported:
            raise ValueError(graph.note())
        if not graph.spatial(graph.input):
            raise ValueError(f"input {graph.input!r} is not an N×C×H×W image")
        self.graph = graph
        self.last_read = graph.last_reads()
        # the first dense node: from there on the net runs in full; tail_reads = what it reads
        self.switch = next((i for i, n in enumerate(graph.nodes) if n.kind == "dense"), len(graph.nodes))
        made_before = {graph.input} | {v for n in graph.nodes[: self.switch] for v in n.outputs}
        read_after = {v for n in graph.nodes[self.switch :] for v in n.inputs} | set(graph.outputs.values())
        self.tail_reads = sorted(made_before & read_after)

    # -- the unmodified image ----------------------------------------------------------------------
    def prepare(self, x: torch.Tensor, channels_last: bool = True) -> BaseState:
        """Run the net on one image (1×C×H×W) and keep what forward_windows needs, every map
        channels-last or (channels_last=False) contiguous."""
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        values = {self.graph.input: x.contiguous(memory_format=fmt)}
        for i, node in enumerate(self.graph.nodes):
            if i == self.switch:  # the dense rest runs on contiguous maps, as forward_windows gives it
                values.update({v: values[v].contiguous() for v in self.tail_reads})
            outs = node.full(*(values[v] for v in node.inputs))
            values.update(zip(node.outputs, outs, strict=True))
        padded = {}
        for node in self.graph.nodes:
            if node.kind == "local":
                g = node.geometry
                pads = (g.pad[1], g.bottom_pad(1), g.pad[0], g.bottom_pad(0))
                v = values[node.inputs[0]].contiguous(memory_format=fmt)
                padded[node.name] = F.pad(v, pads, value=g.pad_value)[0]
        return BaseState(values, padded, fmt)

    # -- N modified images ---------------------------------------------------------------------------
    def forward_windows(
        self,
        state: BaseState,
        rows: np.ndarray,
        cols: np.ndarray,
        patches: torch.Tensor,
        spatial_batch: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Outputs (by role: "prob", "logits") of the N images whose k×k window at (rows[i], cols[i])
        is patches[i] (N×C×k×k, the dtype and device of the stored activations).

        spatial_batch: windows per block computation up to the first dense node (None: all N); the
        dense rest of the net then runs once on all N -- big batches spread its weight reads, small
        ones keep the common block size of the spatial part small."""
        n = patches.shape[0]
        step = n if spatial_batch is None else max(1, int(spatial_batch))
        parts = [
            self._spatial(state, rows[s : s + step], cols[s : s + step], patches[s : s + step])
            for s in range(0, n, step)
        ]
        live: dict[str, torch.Tensor | None] = {
            v: parts[0][v] if len(parts) == 1 else torch.cat([p[v] for p in parts]) for v in parts[0]
        }
        for i in range(self.switch, len(self.graph.nodes)):
            node = self.graph.nodes[i]
            outs = node.full(*(live[v] for v in node.inputs))
            live.update(zip(node.outputs, outs, strict=True))
            for v in node.inputs:
                if self.last_read[v] == i:
                    live.pop(v, None)
        return {role: live[v] for role, v in self.graph.outputs.items()}

    def _spatial(
        self, state: BaseState, rows: np.ndarray, cols: np.ndarray, patches: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Run the nodes before the first dense one on blocks; return every value the rest reads, as
        full tensors (the blocks pasted into copies of the stored activations)."""
        n = patches.shape[0]
        live: dict[str, Block | None] = {self.graph.input: Block(patches, rows, cols)}
        for i in range(self.switch):
            node = self.graph.nodes[i]
            ins = [live.get(v) for v in node.inputs]
            if all(b is None for b in ins):
                outs = None  # the node does not see the windows
            elif node.kind == "local":
                outs = [self._local(state, node, ins[0])]
            elif node.kind == "pointwise":
                data = node.full(ins[0].data)
                outs = [Block(d, ins[0].rows0, ins[0].cols0) for d in data]
            else:
                outs = self._merge(state, node, ins)
            if outs is not None:
                live.update(zip(node.outputs, outs, strict=True))
            for v in node.inputs:
                if self.last_read[v] == i:
                    live.pop(v, None)
        return {v: self._materialise(state, v, live.get(v), n) for v in self.tail_reads}

    # -- node rules ------------------------------------------------------------------------------
    def _local(self, state: BaseState, node: Node, block: Block) -> Block:
        g = node.geometry
        out0, size = [], []
        for axis, corner in ((0, block.rows0), (1, block.cols0)):
            o, s = g.output_box(axis, corner, block.data.shape[2 + axis], common=True)
            out0.append(o)
            size.append(int(s[0]))
        extent = [(size[a] - 1) * g.stride[a] + g.reach(a) for a in (0, 1)]
        # the input block in padded coordinates (the padded map starts at -pad)
        starts = [out0[a] * g.stride[a] for a in (0, 1)]
        src = state.padded[node.name]
        corner_in = [starts[a] - g.pad[a] for a in (0, 1)]  # in unpadded input coordinates
        data = _overlay(src, starts, extent, block, corner_in, state.memory_format)
        return Block(node.region(data, out0[0], out0[1]), out0[0], out0[1])

    def _merge(self, state: BaseState, node: Node, ins: list[Block | None]) -> list[Block]:
        changed = [b for b in ins if b is not None]
        h, w = self.graph.shapes[node.inputs[0]][2:]
        corner, size = [], []
        for axis, limit in ((0, h), (1, w)):
            lo = np.min([(b.rows0 if axis == 0 else b.cols0) for b in changed], axis=0)
            hi = np.max(
                [(b.rows0 if axis == 0 else b.cols0) + b.data.shape[2 + axis] for b in changed], axis=0
            )
            s = min(limit, int((hi - lo).max()))
            corner.append(np.clip(lo, 0, limit - s))
            size.append(s)
        blocks = []
        for v, b in zip(node.inputs, ins, strict=True):
            if b is not None and b.data.shape[2:] == tuple(size) and _same(b, corner):
                blocks.append(b.data)
                continue
            base = state.values[v][0]
            blocks.append(_overlay(base, corner, size, b, corner, state.memory_format))
        return [Block(d, corner[0], corner[1]) for d in node.full(*blocks)]

    def _materialise(
        self, state: BaseState, value: str, b: Block | torch.Tensor | None, n: int
    ) -> torch.Tensor:
        base = state.values[value]
        if isinstance(b, torch.Tensor):
            return b
        # a copy (never a view of the stored map), contiguous as the dense rest expects
        full = base.expand(n, *base.shape[1:]).clone(memory_format=torch.contiguous_format)
        if b is None:
            return full
        h, w = b.data.shape[2:]
        idx_n, rr, cc = _grid(b.rows0, b.cols0, h, w, full.device)
        full[idx_n, :, rr, cc] = b.data.permute(0, 2, 3, 1)
        return full


def _same(b: Block, corner: list[np.ndarray]) -> bool:
    return np.array_equal(b.rows0, corner[0]) and np.array_equal(b.cols0, corner[1])


def _grid(rows0: np.ndarray, cols0: np.ndarray, h: int, w: int, device) -> tuple[torch.Tensor, ...]:
    """Index tensors (N,1,1), (N,h,1), (N,1,w) addressing the h×w blocks at the given corners."""
    n = rows0.shape[0]
    idx_n = torch.arange(n, device=device)[:, None, None]
    rr = torch.as_tensor(rows0[:, None] + np.arange(h), device=device)[:, :, None]
    cc = torch.as_tensor(cols0[:, None] + np.arange(w), device=device)[:, None, :]
    return idx_n, rr, cc


def _overlay(
    src: torch.Tensor,
    starts: list[np.ndarray],
    size: list[int],
    block: Block | None,
    corner: list[np.ndarray],
    memory_format: torch.memory_format,
) -> torch.Tensor:
    """N blocks of size `size` cut from the stored C×H'×W' map `src` at `starts` (in src's
    coordinates), with the changed `block` laid over them; `corner` is the same blocks' top-left in
    the block's coordinates. Returns (N, C, size[0], size[1]) in `memory_format`.

    One slice copy per window (cheaper than a gather by index tensors)."""
    hs, ws = size
    n = starts[0].shape[0]
    out = torch.empty(
        (n, src.shape[0], hs, ws), dtype=src.dtype, device=src.device, memory_format=memory_format
    )
    for i, (r, c) in enumerate(zip(starts[0].tolist(), starts[1].tolist(), strict=True)):
        out[i] = src[:, r : r + hs, c : c + ws]
    if block is None:
        return out
    bh, bw = block.data.shape[2:]
    # the overlap of each window's block with the cut-out, in both coordinate frames
    r_lo = np.maximum(corner[0], block.rows0)
    r_hi = np.minimum(corner[0] + hs, block.rows0 + bh)
    c_lo = np.maximum(corner[1], block.cols0)
    c_hi = np.minimum(corner[1] + ws, block.cols0 + bw)
    spans = np.stack(
        [r_lo - corner[0], r_hi - corner[0], c_lo - corner[1], c_hi - corner[1],
         r_lo - block.rows0, r_hi - block.rows0, c_lo - block.cols0, c_hi - block.cols0],
        axis=1,
    )  # fmt: skip
    for i, (a0, a1, b0, b1, e0, e1, f0, f1) in enumerate(spans.tolist()):
        if a1 > a0 and b1 > b0:
            out[i, :, a0:a1, b0:b1] = block.data[i, :, e0:e1, f0:f1]
    return out
