"""VGG_ILSVRC_16_layers deploy net (Simonyan & Zisserman 2014, configuration D): 138,357,544 parameters.

Layer names, types and hyper-parameters follow the Model Zoo's VGG_ILSVRC_16_layers_deploy.prototxt
(published in the V1 format; written here in the current one -- Caffe upgrades V1 on load, and weights
are matched by layer name). That release has no train_val, so the fillers are our choice: Caffe's
"xavier" for the weights (variance 1/fan_in, as Caffe re-trainings of VGG used) and zero biases."""

from __future__ import annotations

from typing import Any

from pda_repro.netspec.builder import NetBuilder, filler

# (number of 3×3 convolutions, channels) per block, configuration D.
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def vgg16() -> Any:
    b = NetBuilder("VGG_ILSVRC_16_layers", multipliers=None)
    x = b.input("data", (10, 3, 224, 224))
    weight, zero = filler("xavier"), filler("constant", value=0)
    for block, (convs, channels) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, convs + 1):
            x = b.conv(f"conv{block}_{i}", x, channels, 3, weight, zero, pad=1)
            b.relu(f"relu{block}_{i}", x)
        x = b.pool(f"pool{block}", x, "MAX", 2, 2)
    b.ilsvrc_classifier(x, weight, zero, weight, zero)
    return b.net
