"""bvlc_alexnet deploy net (Krizhevsky et al. 2012 as trained by BVLC): 60,965,224 parameters.

Layer names, types and hyper-parameters follow the Model Zoo's bvlc_alexnet deploy.prototxt (LRN before
pooling, grouped conv2/conv4/conv5); fillers and lr multipliers as in its train_val.prototxt."""

from __future__ import annotations

from typing import Any

from pda_repro.netspec.builder import NetBuilder, filler


def alexnet() -> Any:
    b = NetBuilder("AlexNet")
    x = b.input("data", (10, 3, 227, 227))
    gauss, zero, tenth = (
        filler("gaussian", std=0.01),
        filler("constant", value=0),
        filler("constant", value=0.1),
    )
    x = b.conv("conv1", x, 96, 11, gauss, zero, stride=4)
    b.relu("relu1", x)
    x = b.lrn("norm1", x, 5, 1e-4, 0.75)
    x = b.pool("pool1", x, "MAX", 3, 2)
    x = b.conv("conv2", x, 256, 5, gauss, tenth, pad=2, group=2)
    b.relu("relu2", x)
    x = b.lrn("norm2", x, 5, 1e-4, 0.75)
    x = b.pool("pool2", x, "MAX", 3, 2)
    x = b.conv("conv3", x, 384, 3, gauss, zero, pad=1)
    b.relu("relu3", x)
    x = b.conv("conv4", x, 384, 3, gauss, tenth, pad=1, group=2)
    b.relu("relu4", x)
    x = b.conv("conv5", x, 256, 3, gauss, tenth, pad=1, group=2)
    b.relu("relu5", x)
    x = b.pool("pool5", x, "MAX", 3, 2)
    b.ilsvrc_classifier(x, filler("gaussian", std=0.005), tenth, gauss, zero)
    return b.net
