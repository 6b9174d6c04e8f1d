"""Slow, obvious references for the methods tests (float64, plain loops, no vectorisation).

* `NumpyChainBackend`: a Backend test double for chains of InnerProduct / ReLU layers ending in a
  Softmax (e.g. models/tiny/linear.prototxt), computed in float64 one image at a time, so its output
  for an image never depends on the batch it came in. Results are returned as float32 like a real
  backend.
* `conditional_gaussian`: the conditional mean and covariance of one window by brute force (the
  joint Gaussian of the in-image part of the outer patch and numpy.linalg.inv).
* `ZeroCovariance`: a sampler whose every sample is the conditional mean (zero covariance limit).
* `plain_window_we` / `plain_average`: Algorithm 1/2 as written in the paper -- a loop over windows,
  a WE sum and a count per pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format

from pda_repro._generated import caffe_pb2
from pda_repro.backends.base import Backend, BackendError
from pda_repro.paths import REPO_ROOT
from pda_repro.sampling import WindowImputer

TINY = REPO_ROOT / "models" / "tiny"


def parse_prototxt(path: Path) -> caffe_pb2.NetParameter:
    return text_format.Parse(Path(path).read_text(), caffe_pb2.NetParameter())


def random_weights(net_param: caffe_pb2.NetParameter, rng: np.random.Generator, scale: float = 0.5) -> dict:
    """Weights for every Convolution / InnerProduct layer, Caffe layout, float32 (shapes from the
    prototxt; biases non-zero)."""
    shapes: dict[str, tuple[int, ...]] = {}
    shape = None
    weights: dict[str, list[np.ndarray]] = {}
    for layer in net_param.layer:
        if layer.type == "Input":
            shape = tuple(layer.input_param.shape[0].dim[1:])
        elif layer.type == "InnerProduct":
            n_in = int(np.prod(shape))
            n_out = layer.inner_product_param.num_output
            weights[layer.name] = [
                (rng.standard_normal((n_out, n_in)) * scale / np.sqrt(n_in) * 3).astype(np.float32),
                (rng.standard_normal(n_out) * scale).astype(np.float32),
            ]
            shape = (n_out,)
        elif layer.type == "Convolution":
            p = layer.convolution_param
            k, pad = p.kernel_size[0], (p.pad[0] if p.pad else 0)
            c = shape[0]
            weights[layer.name] = [
                (rng.standard_normal((p.num_output, c, k, k)) * scale).astype(np.float32),
                (rng.standard_normal(p.num_output) * scale * 0.2).astype(np.float32),
            ]
            shape = (p.num_output, shape[1] + 2 * pad - k + 1, shape[2] + 2 * pad - k + 1)
        elif layer.type == "Pooling":
            p = layer.pooling_param
            out = [int(np.ceil((s - p.kernel_size) / p.stride)) + 1 for s in shape[1:]]
            shape = (shape[0], *out)
        shapes[layer.name] = shape
    return weights


# every method of the registry (the paper's methods and baselines), in the README's order
ALL_METHODS = (
    "pda",
    "epda",
    "epda_sampled",
    "simplified",
    "occlusion",
    "saliency",
    "gradient_x_input",
    "gradcam",
    "deep_taylor",
)


class NumpyChainBackend(Backend):
    """InnerProduct/ReLU chain + Softmax in float64, one image at a time (test double)."""

    name = "numpy"
    device = "cpu"

    def __init__(self, prototxt: Path, weights: dict[str, list[np.ndarray]], batch: int = 160) -> None:
        self.net_param = parse_prototxt(prototxt)
        self.batch = batch
        self.layers: list[tuple[str, str, str]] = []  # (type, name, top)
        self.weights = {k: [np.array(a, dtype=np.float32) for a in v] for k, v in weights.items()}
        for layer in self.net_param.layer:
            if layer.type == "Input":
                self.input_blob = layer.top[0]
                self.input_shape = tuple(int(d) for d in layer.input_param.shape[0].dim[1:])
            elif layer.type in ("InnerProduct", "ReLU"):
                self.layers.append((layer.type, layer.name, layer.top[0]))
            elif layer.type == "Softmax":
                self.prob_blob, self.logits_blob = layer.top[0], layer.bottom[0]
            else:
                raise BackendError(f"NumpyChainBackend does not run {layer.type} (layer {layer.name})")
        self.num_classes = int(self.weights[self.layers[-1][1]][0].shape[0])
        self.forward_calls: list[int] = []  # batch sizes seen, for tests

    # float64 maths on one image --------------------------------------------------------------------
    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        blobs = {self.input_blob: x.astype(np.float64)}
        h = x.astype(np.float64).reshape(-1)
        for kind, name, top in self.layers:
            if kind == "InnerProduct":
                w, b = (a.astype(np.float64) for a in self.weights[name])
                h = w @ h + b
            else:
                h = np.maximum(h, 0.0)
            blobs[top] = h.copy()
        z = h - h.max()
        blobs[self.prob_blob] = np.exp(z) / np.exp(z).sum()
        return blobs

    def _grad(self, x: np.ndarray, c: int, output: str, blob: str | None = None) -> np.ndarray:
        """Backpropagation by hand; with `blob`, the gradient w.r.t. that blob's final value."""
        blobs = self._run(x)
        p = blobs[self.prob_blob]
        g = np.zeros_like(p)
        g[c] = 1.0
        if output == "prob":
            g = p[c] * (g - p)  # d p_c / d z
        seen: dict[str, np.ndarray] = {}
        for kind, name, top in reversed(self.layers):
            seen.setdefault(top, g)  # an in-place top's final value is the last layer's output
            if kind == "InnerProduct":
                g = self.weights[name][0].astype(np.float64).T @ g
            else:
                g = g * (blobs[top] > 0)
        seen.setdefault(self.input_blob, g)
        return seen[blob] if blob is not None else g.reshape(x.shape)

    # Backend interface ------------------------------------------------------------------------------
    def forward(self, x):
        x = self.check_input(x)
        self.forward_calls.append(x.shape[0])
        out = [self._run(xi) for xi in x]
        probs = np.stack([o[self.prob_blob] for o in out]).astype(np.float32)
        logits = np.stack([o[self.logits_blob] for o in out]).astype(np.float32)
        return probs, logits

    def input_gradient(self, x, classes, output="prob"):
        x = self.check_input(x)
        c = self.class_vector(classes, x.shape[0])
        return np.stack([self._grad(xi, int(ci), output) for xi, ci in zip(x, c, strict=True)]).astype(
            np.float32
        )

    def blobs(self, x, names):
        x = self.check_input(x)
        out = [self._run(xi) for xi in x]
        return {n: np.stack([o[n] for o in out]).astype(np.float32) for n in names}

    def blob_gradient(self, x, blob, classes, output="logit"):
        x = self.check_input(x)
        c = self.class_vector(classes, x.shape[0])
        act = self.blobs(x, [blob])[blob]
        grad = np.stack([self._grad(xi, int(ci), output, blob) for xi, ci in zip(x, c, strict=True)])
        return act, grad.astype(np.float32)

    def get_weights(self):
        return {k: [a.copy() for a in v] for k, v in self.weights.items()}

    def set_weights(self, weights):
        for k, v in weights.items():
            self.weights[k] = [np.array(a, dtype=np.float32) for a in v]


LinearSoftmaxBackend = NumpyChainBackend  # the name the brief uses for the InnerProduct -> Softmax case


def conditional_gaussian(
    mean: np.ndarray, cov: np.ndarray, k: int, outer: int, x: np.ndarray, row: int, col: int
) -> tuple[np.ndarray, np.ndarray]:
    """Conditional mean (C, k, k) and covariance of the window at (row, col) given the in-image
    pixels of its l×l outer patch, by brute force: explicit index lists and numpy.linalg.inv."""
    c, h, w = x.shape
    l = outer  # noqa: E741 - the paper's name
    pad = (l - k) // 2
    win, obs, obs_values = [], [], []
    for ch in range(c):
        for i in range(l):
            for j in range(l):
                idx = (ch * l + i) * l + j
                yy, xx = row - pad + i, col - pad + j
                if pad <= i < pad + k and pad <= j < pad + k:
                    win.append(idx)
                elif 0 <= yy < h and 0 <= xx < w:
                    obs.append(idx)
                    obs_values.append(float(x[ch, yy, xx]))
    s_wo = cov[np.ix_(win, obs)]
    inv = np.linalg.inv(cov[np.ix_(obs, obs)])
    m = mean[win] + s_wo @ inv @ (np.array(obs_values) - mean[obs])
    s = cov[np.ix_(win, win)] - s_wo @ inv @ s_wo.T
    return m.reshape(c, k, k), s


def random_spd(dim: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """A well-conditioned random SPD matrix with correlated entries."""
    a = rng.standard_normal((dim, dim))
    return scale * (a @ a.T / dim + 0.5 * np.eye(dim))


class ZeroCovariance(WindowImputer):
    """Wraps a sampler so that every sample equals the conditional mean (zero conditional covariance)."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler
        self.k, self.channels = sampler.k, sampler.channels
        self.l = getattr(sampler, "l", None)

    def check(self, x) -> None:
        self.sampler.check(x)

    def mean_at(self, x, rows, cols, dtype=np.float32):
        return self.sampler.mean_at(x, rows, cols, dtype=dtype)

    def sample_at(self, x, rows, cols, n, rng, dtype=np.float32):
        rng.standard_normal(1)  # it is handed a generator like any sampler
        m = self.mean_at(x, rows, cols, dtype=dtype)
        return np.repeat(m[:, None], n, axis=1)


def laplace_log2_odds(p: float, n_train: int, n_classes: int) -> float:
    """log2 odds of (p N + 1)/(N + K), written out."""
    q = (p * n_train + 1.0) / (n_train + n_classes)
    return float(np.log2(q / (1.0 - q)))


def plain_average(window_values: dict[tuple[int, int], float], k: int, h: int, w: int) -> np.ndarray:
    """Algorithm 1 lines 11-14: WE[pixels of w] += v_w; counts += 1; WE / counts (0 where no window)."""
    total = np.zeros((h, w))
    counts = np.zeros((h, w))
    for (r, c), v in window_values.items():
        total[r : r + k, c : c + k] += v
        counts[r : r + k, c : c + k] += 1
    out = np.zeros((h, w))
    out[counts > 0] = total[counts > 0] / counts[counts > 0]
    return out


def plain_window_we(net, x, k, stride, cls, n_train, fill) -> np.ndarray:
    """One window at a time: x' = x with window filled by fill(r, c) (C,k,k); WE of class cls."""
    c, h, w = x.shape
    p_x = float(net.forward(x[None].astype(np.float32))[0][0, cls])
    values = {}
    for r in range(0, h - k + 1, stride):
        for q in range(0, w - k + 1, stride):
            xp = x.copy()
            xp[:, r : r + k, q : q + k] = fill(r, q)
            p = float(net.forward(xp[None].astype(np.float32))[0][0, cls])
            values[(r, q)] = laplace_log2_odds(p_x, n_train, net.num_classes) - laplace_log2_odds(
                p, n_train, net.num_classes
            )
    return plain_average(values, k, h, w)
