"""bvlc_googlenet deploy net (Szegedy et al. 2014, as trained by BVLC), without the auxiliary
classifiers: 6,998,552 parameters.

Layer names (conv1/7x7_s2, inception_3a/1x1, ..., loss3/classifier), types and hyper-parameters follow
the Model Zoo's bvlc_googlenet deploy.prototxt; fillers and lr multipliers as in its train_val."""

from __future__ import annotations

from typing import Any

from pda_repro.netspec.builder import NetBuilder, filler

# inception module -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), Table 1 of the paper.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _inception(b: NetBuilder, name: str, x: str, sizes: tuple[int, ...]) -> str:
    n1, n3r, n3, n5r, n5, npool = sizes
    bias = filler("constant", value=0.2)
    p = f"inception_{name}"
    branch1 = b.conv(f"{p}/1x1", x, n1, 1, filler("xavier", std=0.03), bias)
    b.relu(f"{p}/relu_1x1", branch1)
    reduce3 = b.conv(f"{p}/3x3_reduce", x, n3r, 1, filler("xavier", std=0.09), bias)
    b.relu(f"{p}/relu_3x3_reduce", reduce3)
    branch3 = b.conv(f"{p}/3x3", reduce3, n3, 3, filler("xavier", std=0.03), bias, pad=1)
    b.relu(f"{p}/relu_3x3", branch3)
    reduce5 = b.conv(f"{p}/5x5_reduce", x, n5r, 1, filler("xavier", std=0.2), bias)
    b.relu(f"{p}/relu_5x5_reduce", reduce5)
    branch5 = b.conv(f"{p}/5x5", reduce5, n5, 5, filler("xavier", std=0.03), bias, pad=2)
    b.relu(f"{p}/relu_5x5", branch5)
    pooled = b.pool(f"{p}/pool", x, "MAX", 3, 1, pad=1)
    branch_pool = b.conv(f"{p}/pool_proj", pooled, npool, 1, filler("xavier", std=0.1), bias)
    b.relu(f"{p}/relu_pool_proj", branch_pool)
    return b.concat(f"{p}/output", [branch1, branch3, branch5, branch_pool])


def googlenet() -> Any:
    b = NetBuilder("GoogleNet")
    x = b.input("data", (10, 3, 224, 224))
    bias = filler("constant", value=0.2)
    x = b.conv("conv1/7x7_s2", x, 64, 7, filler("xavier", std=0.1), bias, stride=2, pad=3)
    b.relu("conv1/relu_7x7", x)
    x = b.pool("pool1/3x3_s2", x, "MAX", 3, 2)
    x = b.lrn("pool1/norm1", x, 5, 1e-4, 0.75)
    x = b.conv("conv2/3x3_reduce", x, 64, 1, filler("xavier", std=0.1), bias)
    b.relu("conv2/relu_3x3_reduce", x)
    x = b.conv("conv2/3x3", x, 192, 3, filler("xavier", std=0.03), bias, pad=1)
    b.relu("conv2/relu_3x3", x)
    x = b.lrn("conv2/norm2", x, 5, 1e-4, 0.75)
    x = b.pool("pool2/3x3_s2", x, "MAX", 3, 2)
    x = _inception(b, "3a", x, INCEPTION["3a"])
    x = _inception(b, "3b", x, INCEPTION["3b"])
    x = b.pool("pool3/3x3_s2", x, "MAX", 3, 2)
    for name in ("4a", "4b", "4c", "4d", "4e"):
        x = _inception(b, name, x, INCEPTION[name])
    x = b.pool("pool4/3x3_s2", x, "MAX", 3, 2)
    x = _inception(b, "5a", x, INCEPTION["5a"])
    x = _inception(b, "5b", x, INCEPTION["5b"])
    x = b.pool("pool5/7x7_s1", x, "AVE", 7, 1)
    b.dropout("pool5/drop_7x7_s1", x, 0.4)
    x = b.inner_product("loss3/classifier", x, 1000, filler("xavier"), filler("constant", value=0))
    b.softmax("prob", x)
    return b.net
