"""The public facade: load a net, explain one image with any method of the METHODS registry.

    from pda_repro import load_model, explain
    net = load_model("vgg16", backend="torch")
    res = explain(net, image, method="epda", window=10, outer=18, sampler=gaussian,
                  rng=np.random.default_rng(0))
    res.maps   # (n_classes, H, W) float32; PDA-family methods: weight of evidence in log2 odds

Every argument is checked before the first forward pass; a wrong one is a ValueError naming the value
and what was expected.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.backends.base import Backend
from pda_repro.grid import WindowGrid
from pda_repro.methods import METHODS, get_method
from pda_repro.methods.base import ProgressCallback, RunContext, check_positive_int, model_spec

DEFAULT_TRAIN_SIZE_1000 = 100_000  # N of the original PDA code for the ILSVRC nets


@dataclass
class Explanation:
    """The result of explain().

    maps: (n_classes, H, W) float32, one map per entry of `classes`. Units depend on the method
      (params["units"]): pda/epda/epda_sampled/occlusion give the weight of evidence in log2 odds
      (positive = evidence for the class); simplified a first-order probability (or logit)
      difference; the gradient baselines their own relevance.
    classes: (n_classes,) int64; probs: (K,) float32 P(c|x) of the image.
    params: every argument that shaped the maps, plus facts (windows_total, root_seed, units, ...).
    seconds: wall time of this call; forward_passes: backend.forward calls of this call (incl. the
      one on the image; params["images_forwarded"] counts images); timings: seconds spent
      drawing/imputing ("sampling"), in forward ("forward") and backward ("backward") passes, and the
      rest ("other") -- after a resume they include the interrupted run's time saved in the
      checkpoint; windows_evaluated: windows run (fewer than params["windows_total"] with
      window_subset).
    """

    maps: np.ndarray
    classes: np.ndarray
    probs: np.ndarray
    params: dict[str, Any]
    seconds: float
    forward_passes: int
    timings: dict[str, float] = field(default_factory=dict)
    windows_evaluated: int = 0

    @property
    def method(self) -> str:
        return str(self.params.get("method", ""))


def load_model(
    model: Any,
    backend: str = "torch",
    device: str = "cpu",
    weights: Any = None,
    batch: int | None = None,
    *,
    input_shape: tuple[int, int, int] | None = None,
    output: str | None = None,
    preprocess: Any = None,
    seed: int = 0,
) -> Backend:
    """A Backend for a zoo name or a prototxt path (see pda_repro.backends.load_backend), or for a
    PyTorch model: an nn.Module (`input_shape=(C, H, W)` needed), a .onnx file or
    "torchvision:<arch>" (weights: a state_dict file; without: seeded random weights, `seed`).

    For zoo names the net carries its ModelSpec as `net.model_spec`; explain() reads the Laplace
    N (train_size) and deep Taylor's input bounds (input_range) from it. PyTorch models carry their
    preprocessing there: `preprocess` = "imagenet" (the default), a .json/.toml file or a dict
    (pda_repro.presets). output: what the PyTorch model returns, "logits" (default) or
    "probabilities". batch: images per framework call (None: pda_repro.backends.default_batch(device)
    -- 160 on a GPU, 4 on a CPU)."""
    from pda_repro.backends import load_backend  # noqa: PLC0415

    options = {"input_shape": input_shape, "output": output, "preprocess": preprocess}
    options = {k: v for k, v in options.items() if v is not None}
    return load_backend(
        model, backend=backend, device=device, weights=weights, batch=batch, seed=seed, **options
    )


def _check_image(net: Backend, image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array C×H×W, got {type(image).__name__}")
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
        raise ValueError(f"image must hold real numbers, got dtype {image.dtype}")
    expected = tuple(net.input_shape)
    if image.shape != expected:
        hint = " (one image C×H×W, not a batch)" if image.ndim == 4 else ""
        raise ValueError(
            f"image shape {image.shape} does not match the net's input {expected} (C×H×W){hint}; "
            "preprocess it with pda_repro.preprocess.load_image"
        )
    x = np.ascontiguousarray(image, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        c, i, j = np.argwhere(~finite)[0]
        raise ValueError(
            f"image has {int((~finite).sum())} NaN/Inf pixels (first at channel {c}, row {i}, col {j})"
        )
    return x


def _check_classes(net: Backend, classes: Any) -> np.ndarray:
    k = net.num_classes
    if classes is None:
        return np.arange(k, dtype=np.int64)
    arr = np.atleast_1d(np.asarray(classes))
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"classes must be an int or a non-empty sequence of ints, got {classes!r}")
    bad = arr[(arr < 0) | (arr >= k)]
    if bad.size:
        raise ValueError(f"class index {int(bad[0])} out of range 0..{k - 1} (the net has {k} classes)")
    return arr.astype(np.int64)


def _check_rng(rng: Any) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(
                f"rng must be a numpy.random.Generator, an int seed >= 0 or None, got {int(rng)}"
            )
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def _default_train_size(net: Backend) -> int | None:
    spec = model_spec(net)
    if spec is not None and getattr(spec, "train_size", None):
        return int(spec.train_size)
    if net.num_classes == 1000:
        return DEFAULT_TRAIN_SIZE_1000
    return None


def explain(
    net: Backend,
    image: np.ndarray,
    method: str = "epda",
    window: int = 10,
    outer: int = 18,
    samples: int = 10,
    stride: int = 1,
    batch: int | None = None,
    sampler: Any = None,
    classes: int | Sequence[int] | None = None,
    rng: np.random.Generator | int | None = None,
    output: str | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    window_subset: int | Sequence[int] | None = None,
    *,
    train_size: int | None = None,
    callback: ProgressCallback | None = None,
    checkpoint_batches: int = 50,
    checkpoint_seconds: float = 30.0,
    keep_checkpoint: bool = False,
    inference: str | None = None,
    workers: int | str | None = None,
    cluster: str | None = None,
    **method_options: Any,
) -> Explanation:
    """Explain `net`'s decision on one preprocessed image (C×H×W) with `method`.

    method: a name of pda_repro.methods.METHODS -- "pda" (Algorithm 1), "epda" (Algorithm 2),
      "epda_sampled" (Fig. 15), "simplified" (Algorithm 3), "occlusion", "saliency",
      "gradient_x_input", "gradcam", "deep_taylor". Each takes the generic arguments it needs
      (window/outer/samples/stride/sampler/output/train_size; the others are ignored) and its own
      options as keywords: value (fill) for occlusion, blob for gradcam, bounds for deep_taylor.
    train_size: N of the Laplace correction of the log-odds methods (default: the net's spec
      `net.model_spec.train_size`, else 100,000 for 1000-class nets, else an error asking for it).
    window/outer/samples/stride: k, l, S and the window stride. sampler: the imputer
      (pda_repro.sampling.PatchGaussian / MarginalSampler) fitted for k, l and the image's channels.
    batch: at most this many window evaluations per backend.forward_windows call (None: the
      backend's choice for the inference mode, `net.window_batch(mode)`). Which noise a window sees
      does not depend on batch or inference; the maps do only at float32 rounding of the forward
      pass (a batch's composition changes the kernels' summation order): within 1e-4 in weight of
      evidence (tests/test_faults.py: batch 1 vs 4, full vs incremental, on MNIST) and 1e-5 in
      probability (tests/test_incremental.py).
    classes: class indices to explain (default all K). rng: Generator or int seed for the
      sampling methods (default seed 0); one root seed is taken from it.
    output: "prob" or "logit" for the gradient methods (None: the method's default).
    progress: tqdm bar with ETA; callback(done, total) after every batch.
    checkpoint: path; window methods save their running sums there every `checkpoint_batches`
      batches or `checkpoint_seconds` seconds and resume from it when rerun with the same arguments.
    keep_checkpoint: leave the completed run's checkpoint in place (the caller removes it once
      its results are written, so an interrupt between the two never loses the run).
    window_subset: evaluate only this many evenly spread windows, or exactly the windows of a
      sequence of window ids (row-major; timing and extrapolation).
    inference: how the backend computes the images with a window replaced -- "full" (paste and
      re-run the whole net), "incremental" (re-compute only what the window changes; exact up to
      float rounding), "auto" (incremental where the backend has it); None: the backend's own
      setting (`net.inference`, default "auto"). The mode used is params["inference"].
    workers: window methods only (None: pda_repro.parallel.DEFAULTS, normally 1) -- 1: in-process;
      N: N single-threaded Ray actors on this machine
      (Ray started embedded); "auto": in-process unless the run is long enough to pay for starting
      Ray, then every local core (pda_repro.parallel.AutoExecutor). The maps equal the in-process
      run's bitwise at the same batch. params["executor"] / params["workers"] say what ran.
    cluster: a running Ray cluster's address ("host:6379", "auto"): the windows go to actors there
      (workers=N of them, or "auto": all its CPUs, or GPUs on cuda); an unreachable address is a
      ValueError (pda_repro.parallel.ClusterError) before any forward pass.
    """
    started = time.perf_counter()
    cls = get_method(method)
    x = _check_image(net, image)
    class_ids = _check_classes(net, classes)
    generator = _check_rng(rng)
    if checkpoint is not None and not cls.checkpointable:
        checkpointable = [n for n, c in METHODS.items() if c.checkpointable]
        raise ValueError(
            f"checkpoint is only supported by {', '.join(checkpointable)}; method {method!r} is not"
        )
    if window_subset is not None and not cls.supports_window_subset:
        raise ValueError(f"window_subset applies to window methods only; method {method!r} has no windows")
    checkpoint_batches = check_positive_int("checkpoint_batches", checkpoint_batches)
    try:
        inference_used = net.resolve_inference(inference)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    batch = check_positive_int("batch", net.window_batch(inference_used) if batch is None else batch)
    from pda_repro import parallel  # noqa: PLC0415

    if workers is None:
        workers, cluster = parallel.DEFAULTS["workers"], cluster or parallel.DEFAULTS["cluster"]
    parallel.check_workers(workers), parallel.check_cluster(cluster)
    executor = None
    if cls.checkpointable:  # the window methods: their chunks can run anywhere
        executor = parallel.make_executor(workers, cluster, device=net.device)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable, got {type(callback).__name__}")

    generic = {"window": window, "outer": outer, "samples": samples, "stride": stride, "sampler": sampler}
    if output is not None:
        generic["output"] = output
    kwargs = {name: value for name, value in generic.items() if name in cls.uses}
    accepted = cls.option_names()
    unknown = sorted(set(method_options) - set(accepted))
    if unknown:
        raise ValueError(
            f"method {method!r} does not take {', '.join(unknown)}; its options: {', '.join(accepted)}"
        )
    if "output" in generic and "output" not in cls.uses and output not in ("prob",):
        raise ValueError(f"method {method!r} explains class probabilities; output={output!r} does not apply")
    kwargs.update(method_options)
    if "train_size" in accepted and kwargs.get("train_size") is None:
        kwargs["train_size"] = train_size if train_size is not None else _default_train_size(net)
    instance = cls(**kwargs)
    instance.validate(net, x)

    if window_subset is not None:  # checked against the number of windows before any forward
        WindowGrid(x.shape[1], x.shape[2], instance.window, instance.stride).subset(window_subset)
    t0 = time.perf_counter()
    probs, logits = net.forward(x[None])
    t_first = time.perf_counter() - t0
    if not np.isfinite(probs).all():
        raise ValueError(
            "the net gives NaN/Inf class probabilities for the image (forward pass of the image; "
            f"weights {net.weights_source})"
        )
    ctx = RunContext(
        net=net,
        image=x,
        classes=class_ids,
        probs=probs[0],
        logits=logits[0],
        batch=batch,
        rng=generator,
        progress=progress,
        callback=callback,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        checkpoint_options={
            "every_batches": checkpoint_batches,
            "every_seconds": float(checkpoint_seconds),
            "remove_when_done": not keep_checkpoint,
        },
        window_subset=window_subset,
        executor=executor,
    )
    t1 = time.perf_counter()
    previous_inference = net.inference
    net.inference = inference_used
    try:
        result = instance.run(ctx)
    finally:
        net.inference = previous_inference
    t_run = time.perf_counter() - t1
    bad = np.flatnonzero(~np.isfinite(np.asarray(result.maps)).reshape(len(class_ids), -1).all(axis=1))
    if bad.size:
        raise ValueError(
            f"method {cls.name!r} produced NaN/Inf in the maps of class {int(class_ids[bad[0]])} "
            "(window evaluations / reduction stage); the image's probabilities were finite"
        )
    seconds = time.perf_counter() - started
    timings = {"sampling": 0.0, "forward": 0.0, "backward": 0.0, "other": 0.0, **result.timings}
    timings["forward"] += t_first
    timings["other"] += max(0.0, seconds - t_run - t_first)  # validation and bookkeeping here
    params = {
        "method": cls.name,
        **instance.params(),
        "classes": class_ids.tolist(),
        "batch": batch,
        "backend": net.name,
        "device": net.device,
        "inference": inference_used,
        "net": net.net_param.name,
        "image_shape": list(x.shape),
        "window_subset": window_subset
        if window_subset is None or isinstance(window_subset, int)
        else f"{len(window_subset)} given window ids",
        "images_forwarded": result.images_forwarded + 1,
        "backward_passes": result.backward_passes,
        **result.params,
    }
    return Explanation(
        maps=np.asarray(result.maps, dtype=np.float32),
        classes=class_ids,
        probs=np.asarray(probs[0], dtype=np.float32),
        params=params,
        seconds=seconds,
        forward_passes=result.forward_passes + 1,
        timings=timings,
        windows_evaluated=result.windows_evaluated,
    )
