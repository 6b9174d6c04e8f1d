"""The paper's MNIST net in Caffe's LeNet layout (examples/mnist/lenet.prototxt, deploy form): 431,080
parameters. Input pixels are scaled by 1/256 (0.00390625) before the net, as Caffe's training did."""

from __future__ import annotations

from typing import Any

from pda_repro.netspec.builder import NetBuilder, filler


def mnist() -> Any:
    b = NetBuilder("LeNet")
    x = b.input("data", (64, 1, 28, 28))
    xavier, zero = filler("xavier"), filler("constant", value=0)
    x = b.conv("conv1", x, 20, 5, xavier, zero)
    x = b.pool("pool1", x, "MAX", 2, 2)
    x = b.conv("conv2", x, 50, 5, xavier, zero)
    x = b.pool("pool2", x, "MAX", 2, 2)
    x = b.inner_product("ip1", x, 500, xavier, zero)
    b.relu("relu1", x)
    x = b.inner_product("ip2", x, 10, xavier, zero)
    b.softmax("prob", x)
    return b.net
