"""The approximation experiments of paper Sections 2.1 and 3: Figures 9/10, 11 and 16.

* Figs 9/10 (``fig9_10``): fill the k×k window at the image's top-left corner with 160 samples of the
  conditional Gaussian (one batch), forward, and take the mean and standard deviation over the 160 of every
  neuron of the fully-connected layers' outputs *before* their ReLU (AlexNet/VGG-16: fc6, fc7). For the
  other nets the analogous layers are used and named in the results (``FC_LAYERS``). Per-neuron means and
  standard deviations go to results/<env>/fig9_10/<model>_<backend>.npz; the CSV holds a summary per
  layer. Cheap (one batch), so it also runs on random weights, labelled as such.
* Fig 11 (``fig11``): for each of ``n_images`` real images (crops/flips of the photos where there are
  fewer, see ``inputs.distinct_images``), at the fixed window in the image centre: AM = mean over
  ``am_samples`` conditional samples of P(c|x_s) (c = the class predicted on the image), NGM = P(c|x')
  = softmax(logits(x')) with x' the image whose window holds the conditional mean (what efficient PDA
  computes), and |AM − NGM|. Also softmax of the mean sampled logits (the exact normalised geometric mean
  of the samples), to tell the two approximations apart.
* Fig 16 (``fig16``): at one window (image centre) of one image, |P_PDA(S) − P_epda| for S = 1..S_max,
  P_PDA(S) the mean of the first S sampled probabilities, over ``repeats`` independent sequences.

Figs 11/16 only mean something with trained weights; they run for models that have them (the zoo's trained
mnist / converted efficientnet_lite0, or --weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pda_repro.bench.cells import Cell, CellSkipped, net_or_skip
from pda_repro.bench.context import BenchContext
from pda_repro.bench.inputs import distinct_images, is_mnist_like, timing_image
from pda_repro.bench.results import atomic_save_npz, weights_slug

# Layers whose outputs (before the ReLU that follows, where one does) Figs 9/10 show. Caffe's ReLUs run
# in place, so the backends name the value right after layer L wrote blob B as "B@L" (before the ReLU).
FC_LAYERS: dict[str, tuple[str, ...]] = {
    "alexnet": ("fc6", "fc7"),
    "vgg16": ("fc6", "fc7"),
    "mnist": ("ip1", "ip2"),
    "googlenet": ("loss3/classifier",),
    "efficientnet_lite0": ("conv_head", "fc"),
}


def pre_relu_blob(layer: str) -> str:
    """The backend blob name of layer ``layer``'s own output (before any in-place layer): "fc6@fc6"."""
    return f"{layer}@{layer}"


FC_LAYER_NOTES = {
    "alexnet": "fc6, fc7: the two 4096-unit fully-connected layers, before relu6/relu7 (as the paper)",
    "vgg16": "fc6, fc7: the two 4096-unit fully-connected layers, before relu6/relu7 (as the paper)",
    "mnist": "ip1 (500 units, before relu1) and ip2 (the 10 logits; no ReLU follows)",
    "googlenet": "loss3/classifier (the only fully-connected layer: the 1000 logits)",
    "efficientnet_lite0": "conv_head (the 1x1 head convolution, 1280x7x7 units, before ReLU6; the net has one "
    "fully-connected layer) and fc (the 1000 logits; no nonlinearity follows)",
}


@dataclass(frozen=True)
class ApproxSetting:
    window: int
    outer: int
    fig9_samples: int = 160
    n_images: int = 200
    am_samples: int = 500
    s_max: int = 500
    repeats: int = 5

    def describe(self) -> dict[str, Any]:
        return dict(self.__dict__)


def setting_for(spec: Any, profile: str) -> ApproxSetting:
    """The paper's settings for the paper profile (k=10, l=18; mnist k=4, l=12 — the 4×4 window of the
    paper's MNIST figure); the quick profile takes 100 instead of 500 samples for the arithmetic mean
    (Fig 11) and 3 instead of 5 sequences (Fig 16). Every row records the numbers it used."""
    window, outer = (4, 12) if is_mnist_like(spec) else (10, 18)
    if profile == "paper":
        return ApproxSetting(window=window, outer=outer)
    return ApproxSetting(window=window, outer=outer, am_samples=100, repeats=3)


def fc_layers(model: str, net: Any) -> tuple[str, ...]:
    """The layers Figs 9/10 use for ``model`` (the fully-connected ones, before their ReLU)."""
    if model in FC_LAYERS:
        return FC_LAYERS[model]
    layers = [layer.name for layer in net.net_param.layer if layer.type == "InnerProduct"]
    if not layers:
        raise CellSkipped(f"{model} has no InnerProduct layer for Figs 9/10")
    return tuple(layers[-2:])


def center_window(shape: tuple[int, int, int], window: int) -> tuple[int, int]:
    """Top-left corner of the window in the middle of the image (the 'fixed window' of Figs 11/16)."""
    _, h, w = shape
    return (h - window) // 2, (w - window) // 2


def fill_window(image: np.ndarray, patches: np.ndarray, row: int, col: int) -> np.ndarray:
    """Copies of ``image`` (C,H,W), one per patch (n,C,k,k), with the window at (row, col) replaced."""
    n, _, k, _ = patches.shape
    out = np.repeat(image[None], n, axis=0)
    out[:, :, row : row + k, col : col + k] = patches
    return out


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# --- Figs 9/10 -------------------------------------------------------------------------------------------


def neuron_statistics(activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron mean and standard deviation (ddof=1) over the samples (axis 0) of an (n, ...) blob."""
    flat = np.asarray(activations, dtype=np.float64).reshape(activations.shape[0], -1)
    if flat.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a standard deviation, got {flat.shape[0]}")
    return flat.mean(axis=0), flat.std(axis=0, ddof=1)


def summarise_neurons(mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """One CSV row's worth of a layer's per-neuron statistics."""
    abs_mean = np.abs(mean)
    ratio = abs_mean[std > 0] / std[std > 0]
    return {
        "neurons": int(mean.size),
        "median_abs_mean": float(np.median(abs_mean)),
        "median_std": float(np.median(std)),
        "max_std": float(std.max()),
        "median_abs_mean_over_std": float(np.median(ratio)) if ratio.size else None,
        "fraction_std_below_abs_mean": float(np.mean(std < abs_mean)),
    }


def run_fig9_10(ctx: BenchContext, model: str, backend_name: str) -> tuple[list[dict], dict]:
    net = _net(ctx, model, backend_name)
    spec = ctx.spec(model)
    setting = setting_for(spec, ctx.settings.profile)
    layers = fc_layers(model, net)
    image, image_name = timing_image(ctx, model)
    sampler, _ = ctx.sampler(model, setting.window, setting.outer)
    rng = ctx.rng("fig9_10", model)
    patches = sampler.sample_at(image, np.array([0]), np.array([0]), setting.fig9_samples, rng)[0]
    batch = fill_window(image, patches, 0, 0)
    blobs = net.blobs(batch, [pre_relu_blob(layer) for layer in layers])
    arrays: dict[str, np.ndarray] = {}
    rows = []
    _, weights = ctx.weights_for(model)
    npz_rel = f"fig9_10/{model}_{backend_name}_{ctx.settings.device}_{ctx.settings.profile}_{weights_slug(weights)}.npz"
    for layer in layers:
        mean, std = neuron_statistics(blobs[pre_relu_blob(layer)])
        safe = layer.replace("/", "_")
        arrays[f"{safe}__mean"] = mean.astype(np.float32)
        arrays[f"{safe}__std"] = std.astype(np.float32)
        rows.append(
            {
                "weights": weights,
                "layer": layer,
                "samples": setting.fig9_samples,
                "window": setting.window,
                "outer": setting.outer,
                "window_row": 0,
                "window_col": 0,
                "image": image_name,
                **summarise_neurons(mean, std),
                "data_file": npz_rel,
            }
        )
    atomic_save_npz(
        ctx.store.dir / npz_rel,
        layers=np.array(list(layers)),
        weights=np.array(weights),
        **arrays,
    )
    return rows, {"layers_note": FC_LAYER_NOTES.get(model, ", ".join(layers)), **setting.describe()}


# --- Fig 11 --------------------------------------------------------------------------------------------


def am_ngm(
    net: Any,
    sampler: Any,
    image: np.ndarray,
    row: int,
    col: int,
    n: int,
    batch: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """AM and NGM of the predicted class's probability with the window at (row, col) marginalised."""
    p_image, _ = net.forward(image[None])
    c = int(np.argmax(p_image[0]))
    k = sampler.k
    mean_patch = sampler.mean_at(image, np.array([row]), np.array([col]))[0]
    p_mean, _ = net.forward(fill_window(image, mean_patch[None], row, col))
    total_p = 0.0
    total_z: np.ndarray | None = None
    for start in range(0, n, batch):
        m = min(batch, n - start)
        patches = sampler.sample_at(image, np.array([row]), np.array([col]), m, rng)[0]
        p, z = net.forward(fill_window(image, patches.reshape(m, -1, k, k), row, col))
        total_p += float(np.sum(p[:, c], dtype=np.float64))
        zs = np.sum(z.astype(np.float64), axis=0)
        total_z = zs if total_z is None else total_z + zs
    am = total_p / n
    ngm = float(p_mean[0, c])
    ngm_sampled = float(softmax(total_z / n)[c])
    return {
        "class": c,
        "p_image": float(p_image[0, c]),
        "am": am,
        "ngm": ngm,
        "abs_am_minus_ngm": abs(am - ngm),
        "ngm_of_sampled_logits": ngm_sampled,
        "abs_am_minus_ngm_of_sampled_logits": abs(am - ngm_sampled),
    }


def run_fig11(ctx: BenchContext, model: str, backend_name: str) -> tuple[list[dict], dict]:
    net = _net(ctx, model, backend_name)
    spec = ctx.spec(model)
    setting = setting_for(spec, ctx.settings.profile)
    images, source = distinct_images(ctx, model, setting.n_images)
    sampler, _ = ctx.sampler(model, setting.window, setting.outer)
    row, col = center_window(tuple(spec.input_shape), setting.window)
    _, weights = ctx.weights_for(model)
    rows = []
    for i, (name, image) in enumerate(images):
        rng = ctx.rng("fig11", model, i)
        res = am_ngm(net, sampler, image, row, col, setting.am_samples, ctx.settings.batch, rng)
        rows.append(
            {
                "weights": weights,
                "image_index": i,
                "image": name,
                "window": setting.window,
                "outer": setting.outer,
                "window_row": row,
                "window_col": col,
                "am_samples": setting.am_samples,
                **res,
            }
        )
        if ctx.progress is not None and (i + 1) % 50 == 0:
            ctx.progress.say(f"      fig11 {model}/{backend_name}: {i + 1}/{len(images)} images")
    return rows, {"images": source, **setting.describe()}


# --- Fig 16 --------------------------------------------------------------------------------------------


def pda_convergence(
    net: Any,
    sampler: Any,
    image: np.ndarray,
    row: int,
    col: int,
    s_max: int,
    repeats: int,
    batch: int,
    rng: np.random.Generator,
) -> tuple[int, float, np.ndarray]:
    """(class, P_epda, P_PDA(S) for S=1..s_max as a (repeats, s_max) array): running means of the sampled
    probabilities of the predicted class, one independent sequence per repeat."""
    p_image, _ = net.forward(image[None])
    c = int(np.argmax(p_image[0]))
    k = sampler.k
    mean_patch = sampler.mean_at(image, np.array([row]), np.array([col]))[0]
    p_epda = float(net.forward(fill_window(image, mean_patch[None], row, col))[0][0, c])
    curves = np.empty((repeats, s_max), dtype=np.float64)
    for r in range(repeats):
        probs = []
        for start in range(0, s_max, batch):
            m = min(batch, s_max - start)
            patches = sampler.sample_at(image, np.array([row]), np.array([col]), m, rng)[0]
            p, _ = net.forward(fill_window(image, patches.reshape(m, -1, k, k), row, col))
            probs.append(p[:, c].astype(np.float64))
        seq = np.concatenate(probs)
        curves[r] = np.cumsum(seq) / np.arange(1, s_max + 1)
    return c, p_epda, curves


def run_fig16(ctx: BenchContext, model: str, backend_name: str) -> tuple[list[dict], dict]:
    net = _net(ctx, model, backend_name)
    spec = ctx.spec(model)
    setting = setting_for(spec, ctx.settings.profile)
    image, image_name = timing_image(ctx, model)
    sampler, _ = ctx.sampler(model, setting.window, setting.outer)
    row, col = center_window(tuple(spec.input_shape), setting.window)
    c, p_epda, curves = pda_convergence(
        net,
        sampler,
        image,
        row,
        col,
        setting.s_max,
        setting.repeats,
        ctx.settings.batch,
        ctx.rng("fig16", model),
    )
    diff = np.abs(curves - p_epda)
    q1, med, q3 = np.quantile(diff, [0.25, 0.5, 0.75], axis=0)
    _, weights = ctx.weights_for(model)
    rows = [
        {
            "weights": weights,
            "image": image_name,
            "class": c,
            "window": setting.window,
            "outer": setting.outer,
            "window_row": row,
            "window_col": col,
            "repeats": setting.repeats,
            "S": s + 1,
            "p_epda": p_epda,
            "p_pda_run0": curves[0, s],
            "abs_diff_run0": diff[0, s],
            "abs_diff_median": med[s],
            "abs_diff_q1": q1[s],
            "abs_diff_q3": q3[s],
        }
        for s in range(setting.s_max)
    ]
    return rows, setting.describe()


# --- plan ----------------------------------------------------------------------------------------------

DESCRIPTIONS = {
    "fig9_10": (
        "Figs 9/10: per-neuron mean and standard deviation, over a batch of conditional samples of the "
        "window at the image's top-left corner, of fully-connected layers' outputs before ReLU. Summary "
        "per layer; the per-neuron arrays are in data_file (NPZ, keys <layer>__mean / <layer>__std)."
    ),
    "fig11": (
        "Fig 11: |arithmetic mean - normalised geometric mean| of the predicted class's probability with "
        "the centre window marginalised: AM over am_samples conditional samples, NGM = softmax(logits at "
        "the conditional mean) (efficient PDA); one row per image."
    ),
    "fig16": (
        "Fig 16: |P_PDA(S) - P_epda| at the centre window of one image for S = 1..S_max; P_PDA(S) = mean of "
        "the first S sampled probabilities; median and quartiles over `repeats` independent sequences, and "
        "one sequence (run0) as the paper plots."
    ),
}
RUNNERS = {"fig9_10": run_fig9_10, "fig11": run_fig11, "fig16": run_fig16}


def cells(
    ctx: BenchContext,
    models: Sequence[str],
    backends: Sequence[str],
    figures: Sequence[str] = ("fig9_10", "fig11", "fig16"),
) -> list[Cell]:
    """Figs 9/10 for every model with FC layers listed (random weights labelled); Figs 11/16 for models
    with trained weights only; ``figures`` picks which of the three."""
    out = []
    for model in models:
        spec = ctx.spec(model)
        setting = setting_for(spec, ctx.settings.profile)
        _, weights = ctx.weights_for(model)
        trained = ctx.has_trained_weights(model)
        for backend_name in backends:
            spb = ctx.seconds_per_batch(model, backend_name)
            plan = []
            if model in FC_LAYERS or trained:
                plan.append(("fig9_10", 2 * spb + 5.0))
            if trained:
                n11 = setting.n_images * (setting.am_samples + 2)
                plan.append(("fig11", n11 / ctx.settings.batch * spb * 1.3 + 5.0))
                n16 = setting.repeats * setting.s_max + 2
                plan.append(("fig16", n16 / ctx.settings.batch * spb * 1.3 + 5.0))
            for experiment, estimate in plan:
                if experiment not in figures:
                    continue
                key = {
                    "model": model,
                    "backend": backend_name,
                    "device": ctx.settings.device,
                    "weights": weights,
                    "profile": ctx.settings.profile,
                }

                def run(
                    experiment: str = experiment,
                    model: str = model,
                    backend_name: str = backend_name,
                    key=key,
                ):
                    rows, meta = RUNNERS[experiment](ctx, model, backend_name)
                    prune_superseded(ctx, experiment, key)
                    return rows, meta

                label = f"{experiment} {model}/{backend_name}/{ctx.settings.device} ({weights})"
                out.append(Cell(experiment, key, label, estimate, run, model, DESCRIPTIONS[experiment]))
    return out


def _weights_file(label: str) -> str | None:
    """'mnist.caffemodel (sha256 1234abcd)' -> 'mnist.caffemodel'; None for random weights."""
    return label.split(" (sha256 ")[0] if " (sha256 " in label else None


def prune_superseded(ctx: BenchContext, experiment: str, key: dict[str, Any]) -> list[str]:
    """Remove the cells this one supersedes: same model, backend, device and profile, weights from a file of
    the same name with another hash (a retrained models/mnist.caffemodel, say). Cells with other weights
    files (an official caffemodel beside random weights) stay. Returns the removed cell ids."""
    mine = _weights_file(str(key["weights"]))
    if mine is None:
        return []
    frame = ctx.store.read(experiment)
    if frame.empty:
        return []
    same = frame
    for field_name in ("model", "backend", "device", "profile"):
        same = same[same[field_name].astype(str) == str(key[field_name])]
    stale = [
        cid
        for cid, weights in same.groupby("cell")["weights"].first().items()
        if weights != key["weights"] and _weights_file(str(weights)) == mine
    ]
    for cid in stale:
        ctx.store.remove_cell(experiment, cid)
    return stale


def _net(ctx: BenchContext, model: str, backend_name: str) -> Any:
    return net_or_skip(ctx, model, backend_name)
