"""Caffe prototxt handling: load caffe_pb2, parse/write prototxt, normalise to a deploy net, infer shapes.

Parsing is protobuf's `text_format` into `caffe_pb2.NetParameter` -- there is no hand-written prototxt
parser here. `infer_shapes` walks the layers as Caffe's `Net::Init` would and raises `ProtoError` naming
the layer wherever Caffe would hit a CHECK (which aborts pycaffe's process), so a net that passes it is
safe to hand to pycaffe. It also gives every layer's learnable blob shapes (parameter counts, fillers,
weight shape checks).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pda_repro import caffe_quirks
from pda_repro.io import atomic_writer

Shape = tuple[int, ...]


class ProtoError(ValueError):
    """A prototxt that cannot be parsed or that describes a net Caffe would reject."""


_PYCAFFE_PB2 = "caffe.proto.caffe_pb2"


def caffe_pb2() -> ModuleType:
    """The generated protobuf module for caffe.proto (made by `make setup`, no pycaffe needed).

    protobuf refuses to register caffe.proto's messages twice in one process, so only one of
    pycaffe's `caffe.proto.caffe_pb2` and our `pda_repro._generated.caffe_pb2` may ever be imported:
    if pycaffe's is already loaded it is returned; otherwise ours is, and it is also entered in
    sys.modules as `caffe.proto.caffe_pb2`, so that a later `import caffe` reuses it."""
    if _PYCAFFE_PB2 in sys.modules and sys.modules[_PYCAFFE_PB2] is not None:
        return sys.modules[_PYCAFFE_PB2]
    try:
        from pda_repro._generated import caffe_pb2 as module  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the checkout
        raise ImportError(
            "pda_repro._generated.caffe_pb2 is missing or broken; run `make setup` to generate it "
            f"from caffe.proto with protoc ({exc})"
        ) from exc
    sys.modules.setdefault(_PYCAFFE_PB2, module)
    return module


# -- reading and writing ----------------------------------------------------------------------------
def parse_prototxt(text: str, source: str = "<string>") -> Any:
    """Parse prototxt text into a caffe_pb2.NetParameter; a syntax error names `source`, line and column."""
    from google.protobuf import text_format  # noqa: PLC0415

    net = caffe_pb2().NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        where = f"{source}:{line}:{column}" if line is not None else source
        raise ProtoError(f"prototxt syntax error at {where}: {exc}") from None
    return net


def read_prototxt(path: str | os.PathLike) -> Any:
    """Read and parse a prototxt file (not normalised; see `deploy_net`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtoError(f"prototxt not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ProtoError(f"{path} is not a text prototxt ({exc})") from None
    return parse_prototxt(text, source=str(path))


def net_to_text(net: Any, header: str = "") -> str:
    """The prototxt text of a NetParameter, optionally preceded by `# `-comment lines."""
    from google.protobuf import text_format  # noqa: PLC0415

    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + text_format.MessageToString(net)


def write_prototxt(net: Any, path: str | os.PathLike, header: str = "") -> None:
    """Write a NetParameter as prototxt text, atomically."""
    with atomic_writer(path) as fh:
        fh.write(net_to_text(net, header).encode("utf-8"))


# -- normalisation to a deploy net ------------------------------------------------------------------
# Caffe's UpgradeV1LayerType, for the V1 layer types a deploy net can contain.
_V1_TYPES = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "THRESHOLD": "Threshold",
}


def _upgrade_v1_layers(net: Any) -> Any:
    """Convert V1 `layers {type: CONVOLUTION ...}` entries to `layer {type: "Convolution" ...}`."""
    pb = caffe_pb2()
    new = pb.NetParameter()
    new.CopyFrom(net)
    del new.layers[:]
    param_fields = {f.name for f in pb.LayerParameter.DESCRIPTOR.fields if f.name.endswith("_param")}
    enum = pb.V1LayerParameter.LayerType
    for old in net.layers:
        if old.HasField("layer"):
            raise ProtoError(f"layer {old.layer.name!r} uses the V0 prototxt format, which is not supported")
        layer = new.layer.add()
        layer.name = old.name
        enum_name = enum.Name(old.type)
        layer.type = _V1_TYPES.get(enum_name, f"V1:{enum_name}")
        layer.bottom.extend(old.bottom)
        layer.top.extend(old.top)
        layer.include.extend(old.include)
        layer.exclude.extend(old.exclude)
        layer.loss_weight.extend(old.loss_weight)
        layer.blobs.extend(old.blobs)
        for descriptor, value in old.ListFields():
            if descriptor.name in param_fields:
                getattr(layer, descriptor.name).CopyFrom(value)
    return new


def _rule_matches(rule: Any, phase: int) -> bool:
    """Caffe's Net::StateMeetsRule for the state {phase, level 0, no stages}."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and rule.min_level > 0:
        return False
    if rule.HasField("max_level") and rule.max_level < 0:
        return False
    return len(rule.stage) == 0


def deploy_net(net: Any, phase: str = "TEST") -> Any:
    """A copy of `net` as Caffe would instantiate it: V1 layers upgraded, layers filtered by phase
    (Caffe's FilterNet), and legacy `input:`/`input_shape`/`input_dim` declarations turned into an
    Input layer named after the blob."""
    pb = caffe_pb2()
    if not isinstance(net, pb.NetParameter):
        raise TypeError(f"expected a caffe_pb2.NetParameter, got {type(net).__name__}")
    if len(net.layers) and len(net.layer):
        raise ProtoError("the net mixes V1 `layers` and new `layer` entries")
    if len(net.layers):
        net = _upgrade_v1_layers(net)
    phase_value = pb.Phase.Value(phase)
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    del out.input[:]
    del out.input_shape[:]
    del out.input_dim[:]
    out.ClearField("state")
    if len(net.input):
        shapes: list[Shape] = []
        if len(net.input_shape):
            shapes = [tuple(s.dim) for s in net.input_shape]
        elif len(net.input_dim):
            dims = list(net.input_dim)
            shapes = [tuple(dims[i : i + 4]) for i in range(0, len(dims), 4)]
        if len(shapes) != len(net.input):
            raise ProtoError(
                f"the net declares {len(net.input)} input blob(s) {list(net.input)} but "
                f"{len(shapes)} input shape(s)"
            )
        for name, shape in zip(net.input, shapes, strict=True):
            layer = out.layer.add(name=name, type="Input", top=[name])
            layer.input_param.shape.add().dim.extend(shape)
    for layer in net.layer:
        if len(layer.include) and len(layer.exclude):
            raise ProtoError(f"layer {layer.name!r} specifies both include and exclude rules")
        if len(layer.include):
            keep = any(_rule_matches(r, phase_value) for r in layer.include)
        else:
            keep = not any(_rule_matches(r, phase_value) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


# -- shape inference --------------------------------------------------------------------------------
@dataclass
class NetShapes:
    """Result of `infer_shapes`: blob shapes after every layer, learnable blob shapes per layer."""

    blobs: dict[str, Shape] = field(default_factory=dict)  # final shape of every blob
    params: dict[str, list[Shape]] = field(default_factory=dict)  # layer name -> learnable blob shapes
    tops: dict[str, list[Shape]] = field(default_factory=dict)  # layer name -> its top shapes
    bottoms: dict[str, list[Shape]] = field(default_factory=dict)  # layer name -> its bottom shapes
    inputs: dict[str, Shape] = field(default_factory=dict)  # Input layer tops

    def parameter_count(self) -> int:
        return sum(math.prod(s) for shapes in self.params.values() for s in shapes)


def _two(layer: Any, repeated: Sequence[int], h: int, w: int, has_hw: bool, what: str, default: int) -> tuple:
    """(h, w) of a Convolution/Pooling size given as a repeated field or its _h/_w pair."""
    if has_hw:
        if len(repeated):
            raise ProtoError(f"layer {layer.name!r}: {what} is either {what} or {what}_h/{what}_w, not both")
        return (h, w)
    if len(repeated) == 0:
        return (default, default)
    if len(repeated) == 1:
        return (repeated[0], repeated[0])
    if len(repeated) == 2:
        return (repeated[0], repeated[1])
    raise ProtoError(f"layer {layer.name!r}: {what} has {len(repeated)} values; only 2-D nets are supported")


def conv_geometry(layer: Any) -> dict[str, tuple[int, int]]:
    """kernel, stride, pad, dilation of a Convolution layer as (h, w) pairs."""
    p = layer.convolution_param
    kernel = _two(
        layer,
        p.kernel_size,
        p.kernel_h,
        p.kernel_w,
        p.HasField("kernel_h") or p.HasField("kernel_w"),
        "kernel",
        0,
    )
    stride = _two(
        layer, p.stride, p.stride_h, p.stride_w, p.HasField("stride_h") or p.HasField("stride_w"), "stride", 1
    )
    pad = _two(layer, p.pad, p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), "pad", 0)
    dilation = _two(layer, p.dilation, 0, 0, False, "dilation", 1)
    if min(kernel) <= 0:
        raise ProtoError(f"layer {layer.name!r}: kernel size must be positive, got {kernel}")
    if min(stride) <= 0 or min(dilation) <= 0:
        raise ProtoError(f"layer {layer.name!r}: stride and dilation must be positive")
    return {"kernel": kernel, "stride": stride, "pad": pad, "dilation": dilation}


def pool_geometry(layer: Any, bottom: Shape) -> dict[str, Any]:
    """kernel, stride, pad as (h, w) pairs and the output size of a Pooling layer (Caffe's rules)."""
    p = layer.pooling_param
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise ProtoError(f"layer {layer.name!r}: global pooling takes no kernel size")
        kernel = (bottom[2], bottom[3])
    else:
        if p.HasField("kernel_size") == (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise ProtoError(f"layer {layer.name!r}: pooling needs kernel_size OR kernel_h and kernel_w")
        kernel = (p.kernel_size, p.kernel_size) if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
    if p.HasField("pad_h") != p.HasField("pad_w") or (p.HasField("pad") and p.HasField("pad_h")):
        raise ProtoError(f"layer {layer.name!r}: pad is pad OR pad_h and pad_w")
    if p.HasField("stride_h") != p.HasField("stride_w") or (p.HasField("stride") and p.HasField("stride_h")):
        raise ProtoError(f"layer {layer.name!r}: stride is stride OR stride_h and stride_w")
    pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad, p.pad)
    stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
    if min(kernel) <= 0 or min(stride) <= 0:
        raise ProtoError(f"layer {layer.name!r}: pooling kernel and stride must be positive")
    if p.global_pooling and (max(pad) or stride != (1, 1)):
        raise ProtoError(f"layer {layer.name!r}: global pooling needs pad 0 and stride 1")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise ProtoError(f"layer {layer.name!r}: pooling pad {pad} must be smaller than the kernel {kernel}")
    if p.pool not in (p.MAX, p.AVE):
        raise ProtoError(f"layer {layer.name!r}: pooling method {p.PoolMethod.Name(p.pool)} is not supported")
    out = tuple(
        caffe_quirks.pooled_size(bottom[2 + i], kernel[i], stride[i], pad[i], p.ceil_mode) for i in range(2)
    )
    if min(out) < 1:
        raise ProtoError(f"layer {layer.name!r}: pooling kernel {kernel} does not fit the input {bottom}")
    return {"kernel": kernel, "stride": stride, "pad": pad, "out": out, "ceil_mode": p.ceil_mode}


def _axis(layer: Any, axis: int, ndim: int) -> int:
    """Caffe's Blob::CanonicalAxisIndex."""
    if not -ndim <= axis < ndim:
        raise ProtoError(f"layer {layer.name!r}: axis {axis} out of range for a {ndim}-axis blob")
    return axis % ndim


def _require_4d(layer: Any, shape: Shape) -> None:
    if len(shape) != 4:
        raise ProtoError(f"layer {layer.name!r} ({layer.type}) needs a 4-axis N×C×H×W input, got {shape}")


def _same(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [shapes[0]] * max(1, len(layer.top)), []


def _shape_input(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    given = [tuple(s.dim) for s in layer.input_param.shape]
    if len(given) not in (1, len(layer.top)):
        raise ProtoError(f"layer {layer.name!r}: {len(given)} input shapes for {len(layer.top)} tops")
    tops = given * len(layer.top) if len(given) == 1 else given
    for shape in tops:
        if len(shape) == 0 or min(shape) < 1:
            raise ProtoError(f"layer {layer.name!r}: input shape {shape} must have positive dimensions")
    return tops, []


def _shape_convolution(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.convolution_param
    _require_4d(layer, shapes[0])
    n, c, h, w = shapes[0]
    if p.axis != 1:
        raise ProtoError(f"layer {layer.name!r}: only convolution over axis 1 is supported")
    g = conv_geometry(layer)
    group = p.group
    if group < 1 or c % group or p.num_output % group or p.num_output < 1:
        raise ProtoError(
            f"layer {layer.name!r}: {c} input channels and num_output {p.num_output} must both be "
            f"divisible by group {group}"
        )
    out = []
    for i, size in enumerate((h, w)):
        extent = g["dilation"][i] * (g["kernel"][i] - 1) + 1
        o = (size + 2 * g["pad"][i] - extent) // g["stride"][i] + 1
        if o < 1:
            raise ProtoError(f"layer {layer.name!r}: kernel {g['kernel']} does not fit the input {shapes[0]}")
        out.append(o)
    params = [(p.num_output, c // group, *g["kernel"])]
    if p.bias_term:
        params.append((p.num_output,))
    return [(n, p.num_output, *out)], params


def _shape_pooling(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    _require_4d(layer, shapes[0])
    if len(layer.top) != 1:
        raise ProtoError(f"layer {layer.name!r}: pooling with a mask top is not supported")
    n, c = shapes[0][:2]
    return [(n, c, *pool_geometry(layer, shapes[0])["out"])], []


def _shape_lrn(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    _require_4d(layer, shapes[0])
    if layer.lrn_param.local_size % 2 != 1:
        raise ProtoError(
            f"layer {layer.name!r}: LRN local_size must be odd, got {layer.lrn_param.local_size}"
        )
    return [shapes[0]], []


def _shape_inner_product(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.inner_product_param
    if p.num_output < 1:
        raise ProtoError(f"layer {layer.name!r}: num_output must be positive")
    axis = _axis(layer, p.axis, len(shapes[0]))
    k = math.prod(shapes[0][axis:])
    params = [(k, p.num_output) if p.transpose else (p.num_output, k)]
    if p.bias_term:
        params.append((p.num_output,))
    return [(*shapes[0][:axis], p.num_output)], params


def _shape_concat(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.concat_param
    ndim = len(shapes[0])
    axis = _axis(layer, p.concat_dim if p.HasField("concat_dim") else p.axis, ndim)
    for shape in shapes[1:]:
        if len(shape) != ndim or any(
            a != b for i, (a, b) in enumerate(zip(shape, shapes[0], strict=True)) if i != axis
        ):
            raise ProtoError(
                f"layer {layer.name!r}: bottoms {shapes} differ outside the concatenation axis {axis}"
            )
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return [tuple(out)], []


def _shape_softmax(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    _axis(layer, layer.softmax_param.axis, len(shapes[0]))
    return [shapes[0]], []


def _shape_batch_norm(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    c = 1 if len(shapes[0]) == 1 else shapes[0][1]
    return [shapes[0]], [(c,), (c,), (1,)]


def _shape_scale(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.scale_param
    x = shapes[0]
    if len(shapes) == 2:
        scale_shape = shapes[1]
        axis = _axis(layer, p.axis, len(x))
        if tuple(x[axis : axis + len(scale_shape)]) != tuple(scale_shape):
            raise ProtoError(
                f"layer {layer.name!r}: scale blob {scale_shape} does not match {x} at axis {axis}"
            )
        params: list[Shape] = []
    else:
        axis = _axis(layer, p.axis, len(x)) if len(x) else 0
        end = len(x) if p.num_axes == -1 else axis + p.num_axes
        if p.num_axes < -1 or end > len(x):
            raise ProtoError(f"layer {layer.name!r}: num_axes {p.num_axes} does not fit the input {x}")
        scale_shape = tuple(x[axis:end])
        params = [scale_shape]
    if p.bias_term:
        params.append(tuple(scale_shape))
    return [x], params


def _shape_eltwise(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.eltwise_param
    if len(shapes) < 2:
        raise ProtoError(f"layer {layer.name!r}: Eltwise needs at least 2 bottoms")
    if any(s != shapes[0] for s in shapes):
        raise ProtoError(f"layer {layer.name!r}: Eltwise bottoms have different shapes {shapes}")
    if len(p.coeff) and (p.operation != p.SUM or len(p.coeff) != len(shapes)):
        raise ProtoError(f"layer {layer.name!r}: Eltwise takes one coeff per bottom, and only for SUM")
    return [shapes[0]], []


def _shape_flatten(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    x = shapes[0]
    start = _axis(layer, layer.flatten_param.axis, len(x))
    end = _axis(layer, layer.flatten_param.end_axis, len(x))
    if end < start:
        raise ProtoError(f"layer {layer.name!r}: flatten end_axis before axis")
    return [(*x[:start], math.prod(x[start : end + 1]), *x[end + 1 :])], []


def _shape_elementwise(layer: Any, shapes: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    if len(layer.top) != 1 or len(shapes) != 1:
        raise ProtoError(f"layer {layer.name!r} ({layer.type}) takes exactly one bottom and one top")
    return [shapes[0]], []


# Layer type -> (number of bottoms allowed (min, max), shape function). The one list of layer types we
# support: the torch backend implements exactly these and the caffe backend refuses anything else.
LAYER_SHAPES = {
    "Input": ((0, 0), _shape_input),
    "Convolution": ((1, 1), _shape_convolution),
    "Pooling": ((1, 1), _shape_pooling),
    "LRN": ((1, 1), _shape_lrn),
    "ReLU": ((1, 1), _shape_elementwise),
    "ReLU6": ((1, 1), _shape_elementwise),
    "Sigmoid": ((1, 1), _shape_elementwise),
    "TanH": ((1, 1), _shape_elementwise),
    "Dropout": ((1, 1), _shape_elementwise),
    "InnerProduct": ((1, 1), _shape_inner_product),
    "Concat": ((1, 10_000), _shape_concat),
    "Softmax": ((1, 1), _shape_softmax),
    "BatchNorm": ((1, 1), _shape_batch_norm),
    "Scale": ((1, 2), _shape_scale),
    "Eltwise": ((2, 10_000), _shape_eltwise),
    "Flatten": ((1, 1), _shape_flatten),
    "Split": ((1, 1), _same),
}


def check_layer_type(layer: Any) -> None:
    """Raise ProtoError naming the layer if its type is not one we support."""
    if layer.type not in LAYER_SHAPES:
        raise ProtoError(
            f"layer {layer.name!r} has unsupported type {layer.type!r}; supported types: "
            f"{', '.join(sorted(LAYER_SHAPES))}"
        )


def infer_shapes(net: Any, batch: int | None = None) -> NetShapes:
    """Walk a deploy net (see `deploy_net`) and compute every blob's shape, as Caffe's Net::Init would.

    `batch` replaces the leading dimension of every Input blob. Raises ProtoError naming the layer on an
    unsupported type, a missing bottom, or a geometry Caffe would reject with a CHECK."""
    result = NetShapes()
    names: set[str] = set()
    for layer in net.layer:
        if not layer.name:
            raise ProtoError(f"a {layer.type or 'typeless'} layer has no name")
        if layer.name in names:
            raise ProtoError(f"layer name {layer.name!r} is used twice")
        names.add(layer.name)
        check_layer_type(layer)
        (low, high), shape_fn = LAYER_SHAPES[layer.type]
        if not low <= len(layer.bottom) <= high:
            raise ProtoError(
                f"layer {layer.name!r} ({layer.type}) has {len(layer.bottom)} bottoms; expected {low}..{high}"
                if high < 10_000
                else f"at least {low}"
            )
        if layer.type != "Input" and len(layer.top) < 1:
            raise ProtoError(f"layer {layer.name!r} ({layer.type}) has no top")
        if layer.type not in ("Split", "Input") and len(layer.top) > 1:
            raise ProtoError(f"layer {layer.name!r} ({layer.type}) has {len(layer.top)} tops; expected 1")
        for bottom in layer.bottom:
            if bottom not in result.blobs:
                raise ProtoError(
                    f"layer {layer.name!r} ({layer.type}) reads blob {bottom!r}, which no earlier layer produces"
                )
        for i, top in enumerate(layer.top):
            in_place = i < len(layer.bottom) and layer.bottom[i] == top
            if top in result.blobs and not in_place:
                raise ProtoError(
                    f"layer {layer.name!r} writes blob {top!r}, which already exists (not in place)"
                )
        bottoms = [result.blobs[b] for b in layer.bottom]
        tops, params = shape_fn(layer, bottoms)
        if layer.type == "Input" and batch is not None:
            tops = [(batch, *s[1:]) for s in tops]
        for top, shape in zip(layer.top, tops, strict=True):
            result.blobs[top] = tuple(int(d) for d in shape)
            if layer.type == "Input":
                result.inputs[top] = result.blobs[top]
        result.tops[layer.name] = [result.blobs[t] for t in layer.top]
        result.bottoms[layer.name] = bottoms
        if params:
            result.params[layer.name] = [tuple(int(d) for d in s) for s in params]
        if len(layer.blobs) not in (0, len(params)):
            raise ProtoError(f"layer {layer.name!r} carries {len(layer.blobs)} blobs; expected {len(params)}")
    return result


def count_parameters(net: Any) -> int:
    """Number of learnable values of a net (shape inference over its deploy form)."""
    return infer_shapes(deploy_net(net)).parameter_count()


@dataclass(frozen=True)
class NetIO:
    """Where a classification deploy net starts and ends."""

    input_blob: str
    input_shape: Shape  # (C, H, W)
    prob_blob: str
    logits_blob: str
    num_classes: int


def net_io(net: Any, shapes: NetShapes | None = None) -> NetIO:
    """The single input blob, and the last Softmax layer's output (probabilities) and input (logits)."""
    shapes = shapes or infer_shapes(net)
    if len(shapes.inputs) != 1:
        raise ProtoError(f"the net must have exactly one input blob, found {list(shapes.inputs)}")
    ((input_blob, input_shape),) = shapes.inputs.items()
    if len(input_shape) != 4:
        raise ProtoError(f"input blob {input_blob!r} must be N×C×H×W, got shape {input_shape}")
    softmax = [layer for layer in net.layer if layer.type == "Softmax"]
    if not softmax:
        raise ProtoError("the net has no Softmax layer producing class probabilities")
    last = softmax[-1]
    prob_shape = shapes.blobs[last.top[0]]
    if len(prob_shape) != 2 and not (len(prob_shape) == 4 and prob_shape[2:] == (1, 1)):
        raise ProtoError(f"Softmax {last.name!r} output must be N×K, got shape {prob_shape}")
    return NetIO(input_blob, tuple(input_shape[1:]), last.top[0], last.bottom[0], int(prob_shape[1]))
