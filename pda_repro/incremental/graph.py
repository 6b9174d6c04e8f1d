"""A net as the incremental engine sees it: values in SSA form and nodes in topological order.

Every node has one spatial kind, which is all the engine needs to know to re-compute only what a
changed window reaches (the paper's windows; Krypton's idea, for every window method):

  local      a sliding-window op -- convolution, pooling, LRN within a channel. Output row o reads
             input rows o*s - p + d*i, i < K (columns alike). `region(block, rows0, cols0)` computes an
             output block from the input block it reads, already padded with `pad_value`; rows0/cols0
             are the output block's absolute corners (for position-dependent divisors).
  pointwise  each output pixel depends on the same input pixel only (ReLU, BatchNorm, Scale, LRN
             across channels, Dropout, Split): `full` is applied to the changed block as it is.
  merge      several inputs combined pixel by pixel (Eltwise, Concat on channels): `full` is applied to
             every input gathered on the union of their changed boxes.
  dense      no spatial locality (InnerProduct, global pooling, Flatten, Softmax): the changed blocks
             are pasted into copies of the stored activations and the rest of the net runs in full.

A graph comes from a Caffe prototxt (pda_repro.incremental.caffe_graph) -- or, in the same form, from
any other description of a net; the engine (pda_repro.incremental.engine) and the multiply-add count
(pda_repro.incremental.cost) read only this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["local", "pointwise", "merge", "dense"]
Pair = tuple[int, int]


@dataclass(frozen=True)
class LocalGeometry:
    """Kernel, stride, pad, dilation as (rows, cols) pairs; the input and output sizes; the value
    padding takes (0 for convolution and average pooling, -FLT_MAX for Caffe's max pooling)."""

    kernel: Pair
    stride: Pair
    pad: Pair
    dilation: Pair
    in_size: Pair
    out_size: Pair
    pad_value: float = 0.0

    def reach(self, axis: int) -> int:
        """Input extent one output pixel reads along `axis`: d*(K-1) + 1."""
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1

    def output_box(self, axis: int, lo_in, size_in, common: bool):
        """(first output index, size) per window of the outputs whose receptive field (its hull)
        meets the changed input rows [lo_in, lo_in + size_in), clipped to the map. common=True: the
        engine's rule -- one size for all windows (the largest, at least 1), each box shifted to lie
        inside the map."""
        import numpy as np  # noqa: PLC0415

        s, p, out = self.stride[axis], self.pad[axis], self.out_size[axis]
        lo = np.maximum(0, -((self.reach(axis) - 1 - lo_in - p) // s))  # ceil((lo_in + p - reach + 1) / s)
        hi = np.minimum(out - 1, (lo_in + size_in - 1 + p) // s)
        size = np.maximum(0, hi - lo + 1)
        if common:
            size = np.full_like(size, min(out, max(1, int(size.max()))))
            lo = np.clip(lo, 0, out - size)
        return lo, size

    def bottom_pad(self, axis: int) -> int:
        """Padding after the input that the last output's window reaches (Caffe's ceil overhang)."""
        last = (self.out_size[axis] - 1) * self.stride[axis] - self.pad[axis] + self.reach(axis) - 1
        return max(0, last - (self.in_size[axis] - 1))


@dataclass
class Node:
    """One layer: `full(*inputs) -> outputs` on whole tensors; `region` for local nodes;
    `macs_per_pixel`: multiply-adds per output pixel over all channels (convolution and inner
    product; 0 for the rest) for the cost model."""

    name: str
    type: str
    kind: Kind
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    full: Callable[..., Sequence]
    geometry: LocalGeometry | None = None
    region: Callable | None = None
    macs_per_pixel: int = 0


@dataclass
class SpatialGraph:
    """Nodes in topological order. `shapes`: value -> shape at batch 1; `outputs`: role ("prob",
    "logits") -> value; `unsupported`: layers with no incremental rule (then the engine refuses the
    net and the backend re-runs it in full)."""

    nodes: list[Node]
    input: str
    outputs: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    unsupported: list[str] = field(default_factory=list)

    def spatial(self, value: str) -> bool:
        """Whether a value is an N×C×H×W feature map (crops of it make sense)."""
        return len(self.shapes[value]) == 4

    def last_reads(self) -> dict[str, int]:
        """Index of the last node reading each value (outputs count as read at the end)."""
        last: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                last[v] = i
        for v in self.outputs.values():
            last[v] = len(self.nodes)
        return last

    def note(self) -> str | None:
        """None when every layer has an incremental rule, else one line naming those that do not."""
        if not self.unsupported:
            return None
        shown = ", ".join(self.unsupported[:3]) + (" ..." if len(self.unsupported) > 3 else "")
        return f"no incremental rule for {shown}; this net is re-run in full for every window"
