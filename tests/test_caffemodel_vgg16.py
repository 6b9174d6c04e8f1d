"""A full-size VGG-16 caffemodel (553 MB, the official file's layout) reads in bounded memory and loads
into both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pda_repro import proto, zoo
from pda_repro.backends import load_backend
from pda_repro.backends.caffemodel import write_caffemodel
from pda_repro.backends.fillers import random_weights
from pda_repro.paths import REPO_ROOT
from tests.conftest import require_caffe

GIB = 1024**3

# Peak resident memory of a fresh process: VmHWM of /proc/self/status (getrusage's ru_maxrss would carry
# over the parent's peak through fork + exec).
READ_AND_MEASURE = textwrap.dedent(
    """
    import json, sys, time
    from pda_repro.backends.caffemodel import read_caffemodel

    def peak_rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    before = peak_rss()
    start = time.perf_counter()
    weights = read_caffemodel(sys.argv[1])
    seconds = time.perf_counter() - start
    values = sum(b.size for blobs in weights.values() for b in blobs)
    print(json.dumps({"seconds": seconds, "peak_rss": peak_rss(), "rss_before": before, "values": int(values)}))
    """
)


@pytest.mark.slow
@pytest.mark.caffe
def test_full_size_vgg16_caffemodel(tmp_path):
    require_caffe()
    net = proto.deploy_net(proto.read_prototxt(zoo.get("vgg16").prototxt))
    weights = random_weights(net, np.random.default_rng(16))
    path = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    write_caffemodel(
        path, weights, net_name=net.name, layer_types={layer.name: layer.type for layer in net.layer}
    )
    assert path.stat().st_size > 553_000_000
    kept = {"conv1_1": weights["conv1_1"], "fc8": weights["fc8"]}
    del weights

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", READ_AND_MEASURE, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    print(
        f"\nread {path.stat().st_size / 1e6:.0f} MB VGG-16 caffemodel in {stats['seconds']:.2f} s; "
        f"peak RSS {stats['peak_rss'] / GIB:.2f} GiB (interpreter before reading {stats['rss_before'] / GIB:.2f} GiB)"
    )
    assert stats["values"] == 138_357_544
    assert stats["peak_rss"] < 2 * GIB

    x = np.random.default_rng(0).uniform(-120, 130, (1, 3, 224, 224)).astype(np.float32)
    torch_net = load_backend("vgg16", "torch", weights=path, batch=1)
    for layer, blobs in kept.items():
        for ours, original in zip(torch_net.get_weights()[layer], blobs, strict=True):
            np.testing.assert_array_equal(ours, original)
    probs_t, logits_t = torch_net.forward(x)
    del torch_net
    caffe_net = load_backend("vgg16", "caffe", weights=path, batch=1)
    np.testing.assert_array_equal(caffe_net.get_weights()["fc8"][0], kept["fc8"][0])
    probs_c, logits_c = caffe_net.forward(x)
    np.testing.assert_allclose(probs_t, probs_c, atol=1e-5)
    np.testing.assert_allclose(logits_t, logits_c, atol=1e-4 * float(np.abs(logits_c).max()))
