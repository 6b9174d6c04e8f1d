"""The SpatialGraph of a PyTorch module, from its torch.fx trace (the same nodes as caffe_graph's).

`fx_graph(module, example, output)` traces the module (an fx.GraphModule, e.g. onnx2torch's, is
used as it is), propagates shapes with `example` (1×C×H×W) and gives every fx node a spatial kind:

  local      Conv2d / F.conv2d (zero padding, groups, dilation), MaxPool2d / AvgPool2d and their
             functional forms (padding, dilation, ceil_mode, count_include_pad, divisor_override),
             constant padding (ZeroPad2d, ConstantPad2d, F.pad, onnx2torch's Pad) as a 1×1 "kernel"
  pointwise  BatchNorm2d in eval mode, activations (ReLU, ReLU6, SiLU, Hardswish, Sigmoid, ... and
             their functional forms), Dropout in eval mode, arithmetic with a per-channel constant
  merge      add/sub/mul/div of equally shaped maps, cat on channels
  dense      AdaptiveAvgPool2d, flatten, view/reshape, Linear, means, shape queries, and anything
             on values that are no longer N×C×H×W maps: from the first one on, the net runs in full

Every node's `full` evaluates the fx node itself (modules and parameters are the traced module's,
so new weights are seen at once). Shape queries (x.size(0) for a view) are placed just before their
first user, so they do not end the spatial part early. A spatial op without a rule, or local layers
after the first dense node (squeeze-and-excitation), leave `unsupported` non-empty: the backend then
re-runs the net in full, with a one-line note.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pda_repro.incremental.graph import LocalGeometry, Node, SpatialGraph

POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.GELU, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
)  # fmt: skip
POINTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.hardtanh, F.silu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.gelu,
    F.mish, F.softplus, F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh, torch.clamp,
    torch.clip, torch.exp, operator.neg,
}  # fmt: skip
POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "clamp", "clip", "contiguous", "exp", "neg"}
BINARY_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div
}  # fmt: skip
BINARY_METHODS = {"add", "sub", "mul", "div"}
SHAPE_METHODS = {"size", "dim"}
MAX_POOL_FUNCTIONS = {"max_pool2d", "_max_pool2d", "boolean_dispatch"}
DENSE_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear, nn.Softmax)
DENSE_FUNCTIONS = {torch.flatten, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.linear, torch.mean}
DENSE_METHODS = {"view", "reshape", "flatten", "mean", "squeeze", "amax", "sum"}
ONNX_DENSE = {"OnnxGlobalAveragePool", "OnnxGlobalAveragePoolWithKnownInputShape", "OnnxReshape",
              "OnnxFlatten", "OnnxShape", "OnnxGather", "OnnxUnsqueezeStaticAxes", "OnnxSqueezeStaticAxes"}  # fmt: skip
ONNX_BINARY = {"add", "sub", "mul", "_onnx_div"}
ONNX_POINTWISE = {
    "OnnxClip",
    "OnnxHardSigmoid",
    "OnnxErf",
    "OnnxNeg",
    "OnnxFunction",
    "OnnxSqrt",
    "OnnxReciprocal",
    "OnnxPow",
}  # fmt: skip (elementwise; their other inputs are checked)


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): ...
def _max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
): ...
def _avg_pool2d(
    input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
): ...
def _pad(input, pad, mode="constant", value=None): ...


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


class _InlineSequential(fx.Tracer):
    """Keeps every submodule of a GraphModule a leaf except nn.Sequential, whose children it traces
    (onnx2torch wraps padding + pooling in one)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return not isinstance(m, nn.Sequential)


def trace(module: nn.Module) -> fx.GraphModule:
    """`module` as an fx.GraphModule (a GraphModule, e.g. onnx2torch's, re-traced only through its
    nn.Sequential parts); forward's arguments after the first are fixed at their defaults. Raises what
    torch.fx raises for an untraceable module."""
    if isinstance(module, fx.GraphModule):
        if not any(isinstance(m, nn.Sequential) for m in module.modules()):
            return module
        return fx.GraphModule(module, _InlineSequential().trace(module))
    params = list(inspect.signature(module.forward).parameters.values())[1:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return fx.symbolic_trace(module, concrete_args=concrete or None)


class _Builder:
    """Walks one traced graph; see the module docstring."""

    def __init__(self, gm: fx.GraphModule, example: torch.Tensor) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        ShapeProp(gm).propagate(example)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"the traced model takes {len(placeholders)} inputs; one image tensor is needed")
        self.input = placeholders[0]
        self.dep: set[fx.Node] = {self.input}  # nodes whose value depends on the image
        self.shape_only: set[fx.Node] = set()  # values derived from shapes alone
        for n in gm.graph.nodes:
            ins = self._dep_args(n)
            if n.op in ("call_module", "call_function", "call_method") and ins:
                self.dep.add(n)
                if self._is_shape_query(n) or all(a in self.shape_only for a in ins):
                    self.shape_only.add(n)

    # -- helpers ---------------------------------------------------------------------------------
    def _dep_args(self, n: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg(
            (n.args, n.kwargs), lambda a: found.append(a) if a in self.dep and a not in found else None
        )
        return found

    def _is_shape_query(self, n: fx.Node) -> bool:
        if n.op == "call_method" and n.target in SHAPE_METHODS:
            return True
        if n.op == "call_function" and n.target is getattr and n.args[1] == "shape":
            return True
        return n.op == "call_module" and type(self.modules[n.target]).__name__ == "OnnxShape"

    def shape(self, n: fx.Node) -> tuple[int, ...]:
        meta = n.meta.get("tensor_meta")
        return tuple(int(s) for s in meta.shape) if hasattr(meta, "shape") else ()

    def const(self, n: Any) -> Any:
        """The value of an argument that does not depend on the image (evaluated now)."""
        if not isinstance(n, fx.Node):
            return n
        if n.op == "get_attr":
            value: Any = self.gm
            for part in str(n.target).split("."):
                value = getattr(value, part)
            return value
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), self.const)
        return _call(n, self.modules, args, kwargs)

    def full(self, n: fx.Node, ins: list[fx.Node]) -> Callable[..., list]:
        names = [a.name for a in ins]

        def run(*tensors: Any) -> list:
            env = dict(zip(names, tensors, strict=True))
            args, kwargs = fx.node.map_arg(
                (n.args, n.kwargs), lambda a: env[a.name] if a.name in env else self.const(a)
            )
            if "inplace" in kwargs:
                kwargs = {**kwargs, "inplace": False}
            return [_call(n, self.modules, args, kwargs)]

        return run

    def bound(self, stub: Callable, n: fx.Node) -> dict[str, Any]:
        """The call's arguments by name (constants evaluated; the image argument left as its node)."""
        b = inspect.signature(stub).bind(*n.args, **n.kwargs)
        b.apply_defaults()
        return {k: (v if k == "input" else self.const(v)) for k, v in b.arguments.items()}

    # -- the rules ---------------------------------------------------------------------------------
    def rule(self, n: fx.Node, ins: list[fx.Node]) -> tuple[str | None, Any]:
        """(kind, local rule or None) of a node; kind None = no rule for this spatial op."""
        if n in self.shape_only or not all(len(self.shape(a)) == 4 for a in ins):
            return "dense", None
        out = self.shape(n)
        module = self.modules.get(n.target) if n.op == "call_module" else None
        cls = type(module).__name__ if module is not None else ""
        if isinstance(module, DENSE_MODULES) or cls in ONNX_DENSE or len(out) != 4:
            return "dense", None
        if n.op == "call_function" and n.target in DENSE_FUNCTIONS:
            return "dense", None
        if n.op == "call_method" and n.target in DENSE_METHODS:
            return "dense", None
        first = n.args[0] if n.args else n.kwargs.get("input")
        local = self._local(n, module, cls) if ins == [first] else None
        if local is not None:
            return ("local", local) if local != "none" else (None, None)
        if self._pointwise(n, module, ins, out):
            return "pointwise", None
        if self._merge(n, module, cls, ins, out):
            return "merge", None
        return None, None

    def _local(self, n: fx.Node, module: Any, cls: str) -> Any:
        """A (geometry-maker, region, macs) triple for local ops; "none" when the op is local but
        outside the rules; None when it is not a local op."""
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                return "none"
            pad = _conv_pad(module.padding, module.kernel_size, module.dilation)
            if pad is None:
                return "none"
            return _conv_rule(lambda: module.weight, lambda: module.bias, module.stride, pad,
                              module.dilation, module.groups)  # fmt: skip
        if n.op == "call_function" and n.target is F.conv2d:
            a = self.bound(_conv2d, n)
            pad = _conv_pad(a["padding"], a["weight"].shape[2:], _pair(a["dilation"]))
            if pad is None:
                return "none"
            w_node, b_node = _arg(n, 1, "weight"), _arg(n, 2, "bias")
            return _conv_rule(lambda: self.const(w_node), lambda: self.const(b_node), _pair(a["stride"]), pad,
                              _pair(a["dilation"]), int(a["groups"]))  # fmt: skip
        if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
            opts = {k: getattr(module, k, None) for k in ("kernel_size", "stride", "padding", "dilation",
                    "ceil_mode", "count_include_pad", "divisor_override", "return_indices")}  # fmt: skip
            return _pool_rule(isinstance(module, nn.MaxPool2d), opts)
        if n.op == "call_function" and _target_name(n) in MAX_POOL_FUNCTIONS | {"avg_pool2d"}:
            is_max = _target_name(n) in MAX_POOL_FUNCTIONS
            return _pool_rule(is_max, self.bound(_max_pool2d if is_max else _avg_pool2d, n))
        if isinstance(module, nn.ZeroPad2d | nn.ConstantPad2d):
            return _pad_rule(module.padding, float(module.value))
        if n.op == "call_function" and n.target is F.pad:
            a = self.bound(_pad, n)
            if a["mode"] != "constant":
                return "none"
            return _pad_rule(a["pad"], float(a["value"] or 0.0))
        if cls in ("OnnxPadStatic", "OnnxPadDynamic"):
            if module.mode != "constant":
                return "none"
            if cls == "OnnxPadStatic":
                return _pad_rule(module.pads, float(module.constant_value))
            from onnx2torch.node_converters.pad import _onnx_padding_to_torch  # noqa: PLC0415

            value = self.const(n.args[2]) if len(n.args) > 2 else 0.0
            return _pad_rule(_onnx_padding_to_torch(self.const(n.args[1]).tolist()), float(value or 0.0))
        return None

    def _pointwise(self, n: fx.Node, module: Any, ins: list[fx.Node], out: tuple) -> bool:
        if len(ins) != 1 or self.shape(ins[0]) != out:
            return False
        if type(module).__name__ in ONNX_POINTWISE or self._binary(n, module):
            return self._channel_constants(n, ins)
        if module is not None:
            if isinstance(module, nn.BatchNorm2d):
                return not module.training and module.running_mean is not None
            return isinstance(module, POINTWISE_MODULES)
        if n.op == "call_function" and n.target is F.dropout:
            return n.kwargs.get("training", n.args[2] if len(n.args) > 2 else True) is False
        if n.op == "call_function" and n.target in POINTWISE_FUNCTIONS:
            return self._channel_constants(n, ins)
        if n.op == "call_method" and n.target in POINTWISE_METHODS:
            return self._channel_constants(n, ins)
        return False

    def _channel_constants(self, n: fx.Node, ins: list[fx.Node]) -> bool:
        """Whether the other arguments are the same at every pixel (numbers, per-channel tensors)."""
        others: list[Any] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: others.append(a) if a not in ins else None)
        for a in others:
            value = self.const(a)
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                if value.dim() < 2 or value.shape[-1] != 1 or value.shape[-2] != 1:
                    return False
        return True

    def _binary(self, n: fx.Node, module: Any) -> bool:
        if module is not None:
            fn = getattr(module, "math_op_function", None)
            return (
                type(module).__name__ == "OnnxBinaryMathOperation"
                and getattr(fn, "__name__", "") in ONNX_BINARY
            )
        if n.op == "call_function":
            return n.target in BINARY_FUNCTIONS
        return n.op == "call_method" and n.target in BINARY_METHODS

    def _merge(self, n: fx.Node, module: Any, cls: str, ins: list[fx.Node], out: tuple) -> bool:
        shapes = [self.shape(a) for a in ins]
        if self._binary(n, module):
            return len(ins) == 2 and all(s == out for s in shapes) and self._channel_constants(n, ins)
        is_cat = (n.op == "call_function" and n.target in (torch.cat, torch.concat)) or cls == "OnnxConcat"
        if not is_cat:
            return False
        if cls == "OnnxConcat":
            dim, parts = module.axis, list(n.args)
        else:
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
            parts = list(n.args[0])
        return dim in (1, -3) and all(p in ins for p in parts) and all(s[2:] == out[2:] for s in shapes)

    # -- the graph ---------------------------------------------------------------------------------
    def order(self) -> list[fx.Node]:
        """The image-dependent nodes in an order that runs shape queries just before their first user."""
        order: list[fx.Node] = []
        placed: set[fx.Node] = set()

        def place(n: fx.Node) -> None:
            if n in placed:
                return
            for a in self._dep_args(n):
                place(a)
            placed.add(n)
            order.append(n)

        placed.add(self.input)
        for n in self.gm.graph.nodes:
            if n in self.dep and n not in self.shape_only and n is not self.input:
                place(n)
        return order

    def build(self, output: str) -> SpatialGraph:
        nodes: list[Node] = []
        shapes = {self.input.name: self.shape(self.input)}
        unsupported: list[str] = []
        first_dense: str | None = None
        for n in self.order():
            ins = self._dep_args(n)
            kind, local = self.rule(n, ins)
            name = str(n.target) if n.op == "call_module" else n.name
            what = type(self.modules[n.target]).__name__ if n.op == "call_module" else _target_name(n)
            if kind is None and first_dense is None:
                unsupported.append(f"{name!r} ({what})")
            if kind == "dense" and first_dense is None and n not in self.shape_only:
                first_dense = name
            kind = kind or "dense"
            if kind == "local" and first_dense is not None and self.shape(ins[0])[2:] != (1, 1):
                unsupported.append(f"{name!r} ({what}) after the switch to full inference at {first_dense!r}")
                kind = "dense"
            node = Node(name, what, kind, tuple(a.name for a in ins), (n.name,), self.full(n, ins))
            shapes[n.name] = self.shape(n)
            if kind == "local":
                make_geometry, node.region, macs = local
                node.geometry = make_geometry(self.shape(ins[0])[2:], self.shape(n)[2:])
                node.macs_per_pixel = int(macs())
            elif isinstance(self.modules.get(n.target) if n.op == "call_module" else None, nn.Linear):
                node.macs_per_pixel = int(self.modules[n.target].weight.numel())
            nodes.append(node)
        result = _output_node(self.gm).args[0]
        if isinstance(result, tuple | list) and len(result) == 1:
            result = result[0]
        if not isinstance(result, fx.Node) or result not in self.dep:
            raise ValueError("the traced model's output is not one tensor computed from the image")
        scores = result.name
        outputs = _score_nodes(nodes, shapes, scores, output)
        return SpatialGraph(nodes, self.input.name, outputs, shapes, unsupported)


def _call(n: fx.Node, modules: dict[str, nn.Module], args: Any, kwargs: dict) -> Any:
    if n.op == "call_module":
        return modules[n.target](*args, **kwargs)
    if n.op == "call_function":
        return n.target(*args, **kwargs)
    if n.op == "call_method":
        return getattr(args[0], n.target)(*args[1:], **kwargs)
    raise ValueError(f"cannot evaluate fx node {n.name!r} ({n.op})")


def _arg(n: fx.Node, index: int, name: str) -> Any:
    return n.args[index] if len(n.args) > index else n.kwargs.get(name)


def _target_name(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


def _output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "output")


def _conv_pad(padding: Any, kernel: Any, dilation: Any) -> tuple[int, int] | None:
    """Symmetric zero padding of a convolution; None for an asymmetric "same"."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(_pair(tuple(kernel)), _pair(dilation), strict=True)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return _pair(padding)


def _conv_rule(weight: Callable, bias: Callable, stride: Any, pad: tuple, dilation: Any, groups: int):
    stride, dilation = _pair(stride), _pair(dilation)

    def geometry(in_hw: tuple, out_hw: tuple) -> LocalGeometry:
        return LocalGeometry(tuple(weight().shape[2:]), stride, pad, dilation, in_hw, out_hw)

    def region(block: torch.Tensor, rows0: np.ndarray, cols0: np.ndarray) -> torch.Tensor:
        return F.conv2d(block, weight(), bias(), stride, 0, dilation, groups)

    return geometry, region, lambda: weight().numel()


def _pool_rule(is_max: bool, a: dict[str, Any]) -> Any:
    if a.get("return_indices"):
        return "none"
    kernel = _pair(a["kernel_size"])
    stride = _pair(a["stride"]) if a["stride"] not in (None, [], ()) else kernel
    pad, dilation = _pair(a["padding"]), _pair(a.get("dilation") or 1)
    if is_max:

        def geometry(in_hw: tuple, out_hw: tuple) -> LocalGeometry:
            return LocalGeometry(kernel, stride, pad, dilation, in_hw, out_hw, float("-inf"))

        def region(block: torch.Tensor, rows0: np.ndarray, cols0: np.ndarray) -> torch.Tensor:
            return F.max_pool2d(block, kernel, stride, 0, dilation)

        return geometry, region, lambda: 0
    include_pad, override = bool(a["count_include_pad"]), a["divisor_override"]
    holder: dict[str, np.ndarray] = {}

    def geometry(in_hw: tuple, out_hw: tuple) -> LocalGeometry:
        div = [_avg_divisors(in_hw[i], kernel[i], stride[i], pad[i], out_hw[i], include_pad) for i in (0, 1)]
        holder["factor"] = np.full(out_hw, kernel[0] * kernel[1] / override) if override else \
            (kernel[0] * kernel[1]) / np.outer(div[0], div[1])  # fmt: skip
        return LocalGeometry(kernel, stride, pad, (1, 1), in_hw, out_hw, 0.0)

    def region(block: torch.Tensor, rows0: np.ndarray, cols0: np.ndarray) -> torch.Tensor:
        mean = F.avg_pool2d(block, kernel, stride)
        oh, ow = mean.shape[-2:]
        rr = rows0[:, None, None] + np.arange(oh)[None, :, None]
        cc = cols0[:, None, None] + np.arange(ow)[None, None, :]
        factor = torch.as_tensor(holder["factor"][rr, cc], dtype=block.dtype, device=block.device)
        return mean * factor[:, None]

    return geometry, region, lambda: 0


def _avg_divisors(size: int, k: int, s: int, p: int, out: int, include_pad: bool) -> np.ndarray:
    """PyTorch's average-pooling divisor along one axis for each output index."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    if include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def _pad_rule(pads: Any, value: float) -> Any:
    """Constant padding (left, right, top, bottom[, 0...]) as a local op with a 1×1 kernel."""
    pads = [int(p) for p in (pads if not isinstance(pads, int) else [pads] * 4)]
    pads += [0] * (4 - len(pads))
    if any(p < 0 for p in pads) or any(pads[4:]):
        return "none"
    left, _, top, _ = pads[:4]

    def geometry(in_hw: tuple, out_hw: tuple) -> LocalGeometry:
        return LocalGeometry((1, 1), (1, 1), (top, left), (1, 1), in_hw, out_hw, value)

    def region(block: torch.Tensor, rows0: np.ndarray, cols0: np.ndarray) -> torch.Tensor:
        return block

    return geometry, region, lambda: 0


def _score_nodes(nodes: list[Node], shapes: dict, scores: str, output: str) -> dict[str, str]:
    """Append the node turning the model's scores into the other role (softmax or log)."""
    if output == "logits":
        nodes.append(
            Node("softmax", "Softmax", "dense", (scores,), ("prob",), lambda z: [torch.softmax(z, 1)])
        )
        shapes["prob"] = shapes[scores]
        return {"prob": "prob", "logits": scores}
    nodes.append(Node("log", "Log", "dense", (scores,), ("logits",), lambda p: [safe_log(p)]))
    shapes["logits"] = shapes[scores]
    return {"prob": scores, "logits": "logits"}


def safe_log(p: torch.Tensor) -> torch.Tensor:
    """log p with p clipped at the dtype's smallest normal number (a probability 0 stays finite)."""
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def fx_graph(module: nn.Module, example: torch.Tensor, output: str = "logits") -> SpatialGraph:
    """The SpatialGraph of `module` (eval mode) for inputs shaped like `example` (1×C×H×W).

    output: "logits" (the module returns scores; a softmax node gives "prob") or "probabilities"
    (it returns probabilities; "logits" = their log). Raises what torch.fx raises when the module
    cannot be traced (the backend turns it into a note)."""
    gm = trace(module)
    return _Builder(gm, example).build(output)
