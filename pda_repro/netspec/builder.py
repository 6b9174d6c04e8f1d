"""A small builder of Caffe NetParameters over caffe_pb2 (no pycaffe needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pda_repro.proto import caffe_pb2

# lr/decay multipliers of the Model Zoo's weight and bias blobs: (lr_mult, decay_mult) each.
ZOO_MULTIPLIERS = ((1.0, 1.0), (2.0, 0.0))


def filler(kind: str, **values: float) -> Any:
    """A caffe_pb2.FillerParameter, e.g. filler("gaussian", std=0.01)."""
    result = caffe_pb2().FillerParameter(type=kind)
    for key, value in values.items():
        setattr(result, key, value)
    return result


class NetBuilder:
    """Appends layers to a NetParameter; every method returns the name of the blob it produced."""

    def __init__(self, name: str, multipliers: Sequence[tuple[float, float]] | None = ZOO_MULTIPLIERS):
        self.net = caffe_pb2().NetParameter(name=name, force_backward=True)
        self.multipliers = multipliers

    def _layer(self, name: str, kind: str, bottoms: Sequence[str], top: str) -> Any:
        layer = self.net.layer.add(name=name, type=kind)
        layer.bottom.extend(bottoms)
        layer.top.append(top)
        return layer

    def _learnable(self, layer: Any) -> None:
        for lr_mult, decay_mult in self.multipliers or ():
            layer.param.add(lr_mult=lr_mult, decay_mult=decay_mult)

    def input(self, top: str, shape: Sequence[int]) -> str:
        layer = self.net.layer.add(name=top, type="Input", top=[top])
        layer.input_param.shape.add().dim.extend(shape)
        return top

    def conv(
        self,
        name: str,
        bottom: str,
        num_output: int,
        kernel: int,
        weight_filler: Any,
        bias_filler: Any,
        stride: int = 1,
        pad: int = 0,
        group: int = 1,
        top: str | None = None,
    ) -> str:
        layer = self._layer(name, "Convolution", [bottom], top or name)
        self._learnable(layer)
        p = layer.convolution_param
        p.num_output = num_output
        if pad:
            p.pad.append(pad)
        p.kernel_size.append(kernel)
        if stride != 1:
            p.stride.append(stride)
        if group != 1:
            p.group = group
        p.weight_filler.CopyFrom(weight_filler)
        p.bias_filler.CopyFrom(bias_filler)
        return layer.top[0]

    def relu(self, name: str, blob: str) -> str:
        """ReLU in place (top == bottom), as in the zoo nets."""
        return self._layer(name, "ReLU", [blob], blob).top[0]

    def pool(
        self,
        name: str,
        bottom: str,
        method: str,
        kernel: int,
        stride: int,
        pad: int = 0,
        top: str | None = None,
    ) -> str:
        layer = self._layer(name, "Pooling", [bottom], top or name)
        p = layer.pooling_param
        p.pool = p.PoolMethod.Value(method)
        p.kernel_size = kernel
        p.stride = stride
        if pad:
            p.pad = pad
        return layer.top[0]

    def lrn(
        self, name: str, bottom: str, local_size: int, alpha: float, beta: float, top: str | None = None
    ) -> str:
        layer = self._layer(name, "LRN", [bottom], top or name)
        layer.lrn_param.local_size = local_size
        layer.lrn_param.alpha = alpha
        layer.lrn_param.beta = beta
        return layer.top[0]

    def inner_product(
        self,
        name: str,
        bottom: str,
        num_output: int,
        weight_filler: Any,
        bias_filler: Any,
        top: str | None = None,
    ) -> str:
        layer = self._layer(name, "InnerProduct", [bottom], top or name)
        self._learnable(layer)
        p = layer.inner_product_param
        p.num_output = num_output
        p.weight_filler.CopyFrom(weight_filler)
        p.bias_filler.CopyFrom(bias_filler)
        return layer.top[0]

    def dropout(self, name: str, blob: str, ratio: float) -> str:
        """Dropout in place; the identity at test time."""
        layer = self._layer(name, "Dropout", [blob], blob)
        layer.dropout_param.dropout_ratio = ratio
        return blob

    def concat(self, name: str, bottoms: Sequence[str], top: str | None = None) -> str:
        return self._layer(name, "Concat", bottoms, top or name).top[0]

    def softmax(self, name: str, bottom: str, top: str | None = None) -> str:
        return self._layer(name, "Softmax", [bottom], top or name).top[0]

    def ilsvrc_classifier(
        self, bottom: str, hidden_weight: Any, hidden_bias: Any, out_weight: Any, out_bias: Any
    ) -> str:
        """The AlexNet/VGG head: fc6, fc7 (4096 each, ReLU, dropout 0.5), fc8 (1000 classes), Softmax."""
        x = bottom
        for i in (6, 7):
            x = self.inner_product(f"fc{i}", x, 4096, hidden_weight, hidden_bias)
            self.relu(f"relu{i}", x)
            self.dropout(f"drop{i}", x, 0.5)
        x = self.inner_product("fc8", x, 1000, out_weight, out_bias)
        return self.softmax("prob", x)
