"""Experiment `faithfulness`: which explanation is faithful to the model, and does efficient PDA agree with PDA?

    make benchmark EXPERIMENTS=faithfulness      # -> results/<env>/faithfulness.csv, agreement.csv,
                                                 #    faithfulness_randomisation.csv, faithfulness_curves.csv (+ .json)
    make figures                                 # curves, ranked bars with bootstrap 95 % intervals, README

Per model (mnist, efficientnet_lite0) three cells, each written as soon as it is done:

* agreement: every map of the plan (computed, or read from results/qualitative/ where the qualitative figures
  already made the very same map), then Spearman / SSIM / top-10 % overlap (pda_repro.evaluate.agreement) of the
  plan's pairs on the pixels both maps cover: PDA vs efficient PDA, vs epda_sampled, efficient PDA vs
  simplified, PDA vs PDA with another seed (the sampling-noise floor), stride 1 vs coarser strides,
  border="clip" vs "shift", and the random / all-equal controls;
* faithfulness: deletion + insertion AUC (blocks of k×k, fills mean / blur / zeros), ROAD MoRF + LeRF AUC and
  faithfulness correlation of every map the plan evaluates, incl. a random and an all-equal map; the mean
  curves over images go to faithfulness_curves.csv;
* faithfulness_randomisation: the model-randomisation sanity check (top layer / all layers re-drawn) for the
  plan's methods.

The explained class is the net's predicted class. Maps and metric evaluations are cached in
~/.cache/pda-repro/faithfulness/ (a rerun reuses them; a window map that is interrupted resumes from its
checkpoint there). `--profile quick` (the default) is the reduced plan: MNIST's 100 digits with every method,
and on EfficientNet-Lite0 all real photos with the cheap maps and efficient PDA at stride 5, the costly ones
(PDA, strides 1, 2 and 4) on the Fig 14 photos; `paper` is the issue's full plan (efficient PDA at stride 1 on
every photo). Every row says which plan, stride, S, seed and sampler made its map; each agreement JSON cell
lists every map (`notes.maps`, built from the plan) and the CPU seconds of each computed one.

Several processes can share the work before the cells run (each claims a task with a lock file):

    nice -n 19 python -m pda_repro.bench.faithfulness warm --model efficientnet_lite0 &   # one per core
    make benchmark EXPERIMENTS=faithfulness                                               # reads the caches
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.bench.common import BenchContext
from pda_repro.bench.plan import Cell, CellSkipped
from pda_repro.bench.results import REPO_ROOT, atomic_save_npz, cpu_model

__all__ = ["AGREEMENT", "CURVES", "EXPERIMENT", "RANDOMISATION", "MapRun", "Plan", "cells", "plan_for"]

EXPERIMENT = "faithfulness"
AGREEMENT = "agreement"
RANDOMISATION = "faithfulness_randomisation"
CURVES = "faithfulness_curves"
CONTROLS = ("random", "constant")
THRESHOLD = 0.5  # randomisation: the map "changed" when |Spearman| with the trained map is below this
QUALITATIVE = REPO_ROOT / "results" / "qualitative"
FIG14_PHOTOS = ("coffee", "orange", "squirrel_cls", "baboon", "messi5")  # the photos of Figs 14-16 and 19


@dataclass(frozen=True)
class MapRun:
    """One map per image: an explain() method (or a control) with its settings."""

    key: str
    method: str  # a pda_repro.methods name, or "random" / "constant"
    stride: int | None = None
    seed: int = 0
    sampler: str | None = None  # "marginal" | "conditional" | "conditional_shift" | None
    reuse: str | None = None  # file stem under results/qualitative/<set>/<photo>/ holding this very map
    images: int | None = None  # only the first n images of the plan


@dataclass(frozen=True)
class Plan:
    model: str
    profile: str
    window: int
    outer: int
    samples: int
    batch: int  # images per forward call (and window batch of explain)
    images: Callable[[Any], list[tuple[str, np.ndarray]]]
    image_note: str
    runs: tuple[MapRun, ...]
    evaluate: tuple[str, ...]  # run keys whose faithfulness is measured
    pairs: tuple[tuple[str, str, str], ...]  # (comparison, run a, run b)
    randomise: tuple[tuple[str, int | None], ...]  # (run key, first n images or None)
    steps: int | None = 20
    fc_runs: int = 30
    fills: tuple[str, ...] = (
        "mean",
        "blur",
        "zeros",
    )  # deletion / insertion fills (the first one: correlation)
    qualitative_set: str | None = None
    notes: dict[str, str] = field(default_factory=dict)
    # `warm` runs the maps (and their metrics) of these (run key, first n images or None) first, in this
    # order, then everything else cheapest first
    warm_first: tuple[tuple[str, int | None], ...] = ()

    def run(self, key: str) -> MapRun:
        for r in self.runs:
            if r.key == key:
                return r
        raise KeyError(key)


# -- the plans ----------------------------------------------------------------------------------------


def _mnist_images(count: int) -> Callable[[Any], list[tuple[str, np.ndarray]]]:
    def images(spec: Any) -> list[tuple[str, np.ndarray]]:
        from pda_repro.bench.inputs import mnist_inputs

        return mnist_inputs(spec, "test", count)

    return images


def _photo_images(
    names: Sequence[str] | None, first: Sequence[str] = ()
) -> Callable[[Any], list[tuple[str, np.ndarray]]]:
    """The photos `names` (None: every real photo, those of `first` first, the rest in photo_paths order)."""

    def images(spec: Any) -> list[tuple[str, np.ndarray]]:
        from pda_repro.data import photo_paths
        from pda_repro.preprocess import load_image

        paths = photo_paths()
        order = list(names) if names is not None else [*first, *(n for n in paths if n not in first)]
        return [(n, load_image(paths[n], spec).x) for n in order]

    return images


def _mnist_plan(profile: str) -> Plan:
    m = "marginal"
    runs = (
        MapRun("pda", "pda", 1, 0, m),
        MapRun("pda_seed1", "pda", 1, 1, m),
        MapRun("epda", "epda", 1, 0, m),
        MapRun("epda_s2", "epda", 2, 0, m),
        MapRun("epda_s4", "epda", 4, 0, m),
        MapRun("epda_sampled", "epda_sampled", 1, 0, m),
        MapRun("simplified", "simplified", 1, 0, m),
        MapRun("occlusion", "occlusion", 1),
        MapRun("saliency", "saliency"),
        MapRun("gradient_x_input", "gradient_x_input"),
        MapRun("gradcam", "gradcam"),
        MapRun("deep_taylor", "deep_taylor"),
        MapRun("epda_cond", "epda", 1, 0, "conditional"),
        MapRun("epda_cond_shift", "epda", 1, 0, "conditional_shift"),
        MapRun("random", "random"),
        MapRun("constant", "constant"),
    )
    evaluate = tuple(r.key for r in runs if r.key not in ("pda_seed1", "epda_s2", "epda_cond_shift"))
    pairs = (
        ("pda_vs_pda_other_seed", "pda", "pda_seed1"),
        ("pda_vs_epda", "pda", "epda"),
        ("pda_vs_epda_sampled", "pda", "epda_sampled"),
        ("epda_vs_epda_sampled", "epda", "epda_sampled"),
        ("epda_vs_simplified", "epda", "simplified"),
        ("epda_stride1_vs_stride2", "epda", "epda_s2"),
        ("epda_stride1_vs_stride4", "epda", "epda_s4"),
        ("epda_marginal_vs_conditional", "epda", "epda_cond"),
        ("border_clip_vs_shift", "epda_cond", "epda_cond_shift"),
        ("control_pda_vs_random", "pda", "random"),
        ("control_pda_vs_constant", "pda", "constant"),
        ("control_epda_vs_random", "epda", "random"),
    )
    n_pda = 20 if profile == "quick" else None
    randomise = (
        ("pda", n_pda),
        ("epda", None),
        ("simplified", None),
        ("occlusion", None),
        ("saliency", None),
        ("gradient_x_input", None),
        ("gradcam", None),
        ("deep_taylor", None),
        ("random", None),
        ("constant", None),
    )
    return Plan(
        model="mnist",
        profile=profile,
        window=4,
        outer=8,
        samples=10,
        batch=500,
        images=_mnist_images(100),
        image_note="the first 100 MNIST test digits",
        runs=runs,
        evaluate=evaluate,
        pairs=pairs,
        randomise=randomise,
        steps=None,
        fc_runs=50,
        notes={
            "sampler": "marginal = Fig 13's sampler (window values from random training digits); conditional ="
            " PatchGaussian k=4, l=8 fitted on 10,000 training digits (border clip or shift)",
            "randomisation": "PDA's randomisation check on the first 20 digits only (quick profile)"
            if n_pda
            else "",
        },
    )


def _lite0_plan(profile: str) -> Plan:
    c = "conditional"
    if profile == "paper":
        runs = (
            MapRun("pda_s5", "pda", 5, 0, c),
            MapRun("pda_s5_seed1", "pda", 5, 1, c),
            MapRun("epda_s5", "epda", 5, 0, c),
            MapRun("epda", "epda", 1, 0, c),
            MapRun("epda_s2", "epda", 2, 0, c),
            MapRun("epda_s4", "epda", 4, 0, c),
            MapRun("epda_sampled_s5", "epda_sampled", 5, 0, c),
            MapRun("simplified", "simplified", 1, 0, c),
            MapRun("occlusion", "occlusion", 1),
            MapRun("saliency", "saliency"),
            MapRun("gradient_x_input", "gradient_x_input"),
            MapRun("gradcam", "gradcam"),
            MapRun("epda_shift", "epda", 1, 0, "conditional_shift"),
            MapRun("random", "random"),
            MapRun("constant", "constant"),
        )
        pairs = (
            ("pda_vs_pda_other_seed", "pda_s5", "pda_s5_seed1"),
            ("pda_vs_epda", "pda_s5", "epda_s5"),
            ("pda_vs_epda_sampled", "pda_s5", "epda_sampled_s5"),
            ("epda_vs_simplified", "epda", "simplified"),
            ("epda_stride1_vs_stride2", "epda", "epda_s2"),
            ("epda_stride1_vs_stride4", "epda", "epda_s4"),
            ("border_clip_vs_shift", "epda", "epda_shift"),
            ("control_pda_vs_random", "pda_s5", "random"),
            ("control_epda_vs_random", "epda", "random"),
        )
        evaluate = ("pda_s5", "epda", "epda_s5", "epda_sampled_s5", "simplified", "occlusion", "saliency",
                    "gradient_x_input", "gradcam", "random", "constant")  # fmt: skip
        randomise = tuple(
            (k, None) for k in ("epda", "simplified", "saliency", "gradient_x_input", "gradcam", *CONTROLS)
        )
        return Plan("efficientnet_lite0", profile, 10, 18, 10, 4, _photo_images(None),
                    "all real photos (scikit-image, matplotlib, opencv-doc)", runs, evaluate, pairs,
                    randomise)  # fmt: skip
    # quick: all 27 photos (the five Fig 14 photos first, so `images=n` are the first n of them): the gradient
    # baselines, simplified, efficient PDA at stride 10 and the controls on every photo; the maps of the qualitative
    # figures (Fig 14/15/19, stride 5 and 1) on the Fig 14 photos; PDA at stride 10 with two seeds and efficient PDA
    # at strides 2 and 4 on the first photos only (their CPU cost: the maps' meta in faithfulness.json)
    f5 = len(FIG14_PHOTOS)
    runs = (
        MapRun("pda_s5", "pda", 5, 0, c, reuse="pda", images=f5),
        MapRun("epda_s5", "epda", 5, 0, c, reuse="epda", images=f5),
        MapRun("epda", "epda", 1, 0, c, reuse="epda_full", images=f5),
        MapRun("epda_sampled_s5", "epda_sampled", 5, 0, c, reuse="epda_sampled", images=f5),
        MapRun("simplified", "simplified", 1, 0, c, reuse="simplified_full"),
        MapRun("occlusion_s5", "occlusion", 5, reuse="occlusion", images=f5),
        MapRun("saliency", "saliency", reuse="saliency"),
        MapRun("gradient_x_input", "gradient_x_input", reuse="gradient_x_input"),
        MapRun("gradcam", "gradcam", reuse="gradcam"),
        MapRun("epda_s2", "epda", 2, 0, c, images=3),
        MapRun("epda_s4", "epda", 4, 0, c, images=2),
        MapRun("pda_s10", "pda", 10, 0, c, images=2),
        MapRun("pda_s10_seed1", "pda", 10, 1, c, images=2),
        MapRun("epda_s10", "epda", 10, 0, c),
        MapRun("epda_s5_shift", "epda", 5, 0, "conditional_shift", images=2),
        MapRun("random", "random"),
        MapRun("constant", "constant"),
    )
    pairs = (
        ("pda_vs_pda_other_seed", "pda_s10", "pda_s10_seed1"),
        ("pda_vs_epda", "pda_s10", "epda_s10"),
        ("pda_vs_epda", "pda_s5", "epda_s5"),
        ("pda_vs_epda_sampled", "pda_s5", "epda_sampled_s5"),
        ("epda_vs_epda_sampled", "epda_s5", "epda_sampled_s5"),
        ("epda_vs_simplified", "epda", "simplified"),
        ("epda_stride1_vs_stride2", "epda", "epda_s2"),
        ("epda_stride1_vs_stride4", "epda", "epda_s4"),
        ("epda_stride1_vs_stride5", "epda", "epda_s5"),
        ("epda_stride1_vs_stride10", "epda", "epda_s10"),
        ("epda_stride5_vs_stride10", "epda_s5", "epda_s10"),
        ("border_clip_vs_shift", "epda_s5", "epda_s5_shift"),
        ("control_pda_vs_random", "pda_s5", "random"),
        ("control_pda_vs_constant", "pda_s5", "constant"),
        ("control_epda_vs_random", "epda", "random"),
        ("control_epda_vs_random", "epda_s5", "random"),
    )
    evaluate = ("pda_s5", "pda_s10", "epda_s5", "epda", "epda_s2", "epda_s10", "epda_sampled_s5", "simplified",
                "occlusion_s5", "saliency", "gradient_x_input", "gradcam", "random", "constant")  # fmt: skip
    randomise = (
        ("saliency", f5),
        ("gradient_x_input", f5),
        ("gradcam", f5),
        ("simplified", f5),
        ("epda_s10", 1),
        ("random", f5),
        ("constant", f5),
    )
    return Plan(
        model="efficientnet_lite0",
        profile=profile,
        window=10,
        outer=18,
        samples=10,
        batch=4,
        images=_photo_images(None, first=FIG14_PHOTOS),
        image_note=f"all real photos, the {f5} Fig 14 photos ({', '.join(FIG14_PHOTOS)}) first",
        runs=runs,
        evaluate=evaluate,
        pairs=pairs,
        randomise=randomise,
        fills=("mean",),
        qualitative_set="efficientnet_lite0",
        notes={
            "scale": "reduced plan: each map at the stride and on the images its entry under `maps` names"
        },
        # efficient PDA on every photo (stride 10), then the noise floor and strides 4 and 2 photo by photo
        warm_first=(
            ("epda_s10", None),
            *((k, n) for n in range(1, 3) for k in ("pda_s10", "pda_s10_seed1", "epda_s4")),
            ("epda_s5_shift", None),
            ("epda_s2", None),
        ),
    )


def plan_for(model: str, profile: str) -> Plan | None:
    if model == "mnist":
        return _mnist_plan(profile)
    if model == "efficientnet_lite0":
        return _lite0_plan(profile)
    return None


# -- maps ------------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "pda-repro" / "faithfulness"


@dataclass
class _State:
    """What the cells of one model share: the net, samplers, images and their maps (loaded once)."""

    ctx: BenchContext
    plan: Plan
    backend: str
    net: Any = None
    spec: Any = None
    images: list[tuple[str, np.ndarray]] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    samplers: dict[str, Any] = field(default_factory=dict)
    maps: dict[tuple[str, str], tuple[np.ndarray, dict]] = field(default_factory=dict)
    fills: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # image name -> fill -> image
    cpu_seconds: float = 0.0

    def load(self) -> None:
        if self.net is not None:
            return
        from pda_repro import zoo
        from pda_repro.backends import load_backend
        from pda_repro.backends.base import BackendError

        self.spec = zoo.get(self.plan.model)
        weights, _ = self.ctx.weights_for(self.plan.model)
        try:
            self.net = load_backend(
                self.plan.model, backend=self.backend, device=self.ctx.device, weights=weights,
                batch=self.plan.batch, seed=self.ctx.seed,
            )  # fmt: skip
        except (ImportError, BackendError) as exc:
            raise CellSkipped(f"{self.backend} backend unavailable: {exc}") from exc
        self.images = self.plan.images(self.spec)
        probs, _ = self.net.forward(np.stack([x for _, x in self.images]))
        self.classes = [int(c) for c in np.argmax(probs, axis=1)]

    def sampler(self, kind: str | None) -> Any:
        if kind is None:
            return None
        if kind not in self.samplers:
            if kind == "marginal":
                from pda_repro.bench.qualitative import _mnist_marginal

                self.samplers[kind] = _mnist_marginal(self.spec, self.plan.window)
            else:
                from pda_repro.bench.inputs import model_sampler

                base = model_sampler(self.ctx, self.plan.model, self.plan.window, self.plan.outer)
                self.samplers[kind] = base.with_border("shift" if kind.endswith("shift") else "clip")
        return self.samplers[kind]

    def image_index(self, name: str) -> int:
        return [n for n, _ in self.images].index(name)

    def wanted(self, run: MapRun) -> list[int]:
        n = len(self.images) if run.images is None else min(run.images, len(self.images))
        return list(range(n))

    def settings(self, run: MapRun) -> dict[str, Any]:
        window_method = run.method in ("pda", "epda", "epda_sampled", "occlusion", "simplified")
        return {
            "method_name": run.method,
            "window": self.plan.window if window_method else None,
            "outer": self.plan.outer if run.sampler in ("conditional", "conditional_shift") else None,
            "samples": self.plan.samples if run.method == "pda" or run.method == "epda_sampled" else None,
            "stride": run.stride,
            "seed": run.seed if run.method in ("pda", "epda_sampled", "random") else None,
            "sampler": run.sampler,
            "border": ("shift" if run.sampler == "conditional_shift" else "clip")
            if run.sampler in ("conditional", "conditional_shift")
            else None,
        }

    def get(self, key: str, i: int) -> tuple[np.ndarray, dict]:
        """The map of run `key` on image i, computed once (disk cache), or read from results/qualitative."""
        run = self.plan.run(key)
        name, x = self.images[i]
        cls = self.classes[i]
        if (key, name) in self.maps:
            return self.maps[(key, name)]
        h, w = x.shape[1:]
        if run.method == "random":
            from pda_repro.evaluate import random_map

            words = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
            m = random_map((h, w), np.random.default_rng([self.ctx.seed, run.seed, words]))
            out = (m, {"source": "control: i.i.d. N(0, 1) per pixel", "cpu_seconds": 0.0})
        elif run.method == "constant":
            from pda_repro.evaluate import constant_map

            out = (constant_map((h, w)), {"source": "control: all pixels 0", "cpu_seconds": 0.0})
        elif run.reuse is not None and self._reuse_path(run, name).is_file():
            out = self._reuse(run, name, cls)
        else:
            out = self._compute(run, name, x, cls)
        self.maps[(key, name)] = out
        return out

    def _reuse_path(self, run: MapRun, name: str) -> Path:
        return QUALITATIVE / str(self.plan.qualitative_set) / name / f"{run.reuse}.npz"

    def _reuse(self, run: MapRun, name: str, cls: int) -> tuple[np.ndarray, dict]:
        """The qualitative figures' map of this run (same method, stride, class); a photo those figures do not
        show has its map computed with the run's settings instead (map_source says which)."""
        path = self._reuse_path(run, name)
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            m = np.asarray(f["map"], dtype=np.float32)
        req = meta.get("request", {})
        if (
            int(req.get("class", -1)) != cls
            or req.get("method") != run.method
            or req.get("stride") != run.stride
        ):
            raise CellSkipped(f"{path} was made for {req}, not {run.method} stride {run.stride} class {cls}")
        return m, {"source": str(path.relative_to(REPO_ROOT)), "cpu_seconds": meta.get("cpu_seconds"),
                   "inference": meta.get("params", {}).get("inference", "full")}  # fmt: skip

    def _compute(self, run: MapRun, name: str, x: np.ndarray, cls: int) -> tuple[np.ndarray, dict]:
        from pda_repro.explain import explain

        request = self.request(run, name, cls)
        path = self.map_path(run, name, cls)
        if path.is_file():
            with np.load(path, allow_pickle=False) as f:
                return np.asarray(f["map"], dtype=np.float32), json.loads(str(f["meta"]))
        from pda_repro.methods import METHODS

        words = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        kwargs = {"window": self.plan.window, "outer": self.plan.outer, "samples": self.plan.samples}
        if run.stride is not None:
            kwargs["stride"] = run.stride
        # window methods keep their running sums in a checkpoint beside the map: an interrupted map resumes
        ckpt = path.with_name(path.stem + ".checkpoint.npz") if METHODS[run.method].checkpointable else None
        if ckpt is not None:
            kwargs.update(checkpoint=ckpt, keep_checkpoint=True)
        resumed = ckpt is not None and ckpt.is_file()  # cpu_seconds then counts only the resumed part
        t0 = time.process_time()
        res = explain(
            self.net, x, method=run.method, sampler=self.sampler(run.sampler), classes=[cls],
            rng=np.random.default_rng([self.ctx.seed, run.seed, words]), progress=False, **kwargs,
        )  # fmt: skip
        cpu = time.process_time() - t0
        self.cpu_seconds += cpu
        meta = {"source": "computed", "cpu_seconds": cpu, "seconds": res.seconds, "inference": res.params.get("inference"),
                "forward_passes": res.forward_passes, "windows_evaluated": res.windows_evaluated,
                "images_forwarded": res.params.get("images_forwarded"),
                "resumed": resumed, "request": request}  # fmt: skip
        atomic_save_npz(path, map=res.maps[0], meta=np.asarray(json.dumps(meta, default=str)))
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        return res.maps[0], meta

    def request(self, run: MapRun, name: str, cls: int) -> dict[str, Any]:
        return {"model": self.plan.model, "image": name, "class": cls, "run": run.key,
                **self.settings(run), "backend": self.backend, "weights": self.ctx.weights_for(self.plan.model)[1],
                "root_seed": self.ctx.seed}  # fmt: skip

    def map_path(self, run: MapRun, name: str, cls: int) -> Path:
        """Where the computed map of `run` on photo `name` is cached (the request's digest in its name)."""
        digest = hashlib.sha256(
            json.dumps(self.request(run, name, cls), sort_keys=True).encode()
        ).hexdigest()[:16]
        return _cache_dir() / self.plan.model / name / f"{run.key}-{digest}.npz"


_STATES: dict[tuple[int, str, str], _State] = {}


def _state(ctx: BenchContext, plan: Plan, backend: str) -> _State:
    key = (id(ctx), plan.model, backend)
    if key not in _STATES:
        _STATES.clear()  # one model at a time (the nets and maps are large)
        _STATES[key] = _State(ctx, plan, backend)
    st = _STATES[key]
    st.load()
    return st


def _coverage(plan: Plan, run: MapRun, shape: tuple[int, int]) -> np.ndarray:
    from pda_repro.bench.qualitative import coverage_mask

    if run.stride is None or run.method in CONTROLS:
        return np.ones(shape, dtype=bool)
    return coverage_mask(shape[0], shape[1], plan.window, run.stride)


# -- the three cells -------------------------------------------------------------------------------------


def plan_notes(st: _State) -> dict[str, Any]:
    """The plan's notes plus, built from its settings, what every map is (method, stride, S, seed, sampler) and
    on which images it was made, and what the finest PDA grid would forward per image."""
    from pda_repro.methods.windows import WindowGrid

    plan, names = st.plan, [n for n, _ in st.images]
    h, w = st.images[0][1].shape[1:]
    maps = {}
    for run in plan.runs:
        s = st.settings(run)
        bits = [run.method] + [
            f"{k} {s[k]}" for k in ("stride", "window", "samples", "seed") if s[k] is not None
        ]
        if run.sampler:
            bits.append(f"{run.sampler} sampler")
        n = len(st.wanted(run))
        where = (
            f"all {n} images" if n == len(names) else f"{n} of {len(names)} images ({', '.join(names[:n])})"
        )
        if run.reuse is not None:
            read = sum(st._reuse_path(run, names[i]).is_file() for i in st.wanted(run))
            where += f"; {read} read from results/qualitative/{plan.qualitative_set}/*/{run.reuse}.npz"
        maps[run.key] = ", ".join(bits) + " on " + where
    pda_runs = [r for r in plan.runs if r.method == "pda"]
    finest = min((r.stride or 1) for r in pda_runs) if pda_runs else None
    out = {**plan.notes, "maps": maps}
    if finest is not None and finest > 1:
        n1 = WindowGrid(h, w, plan.window, 1).n_windows
        out["pda_finest_stride"] = (
            f"PDA at stride {finest} at the finest; stride 1 would forward {n1:,} windows × S={plan.samples} = "
            f"{n1 * plan.samples:,} images per image"
        )
    return out


def _base_row(st: _State, i: int) -> dict[str, Any]:
    return {"image": st.images[i][0], "class": st.classes[i], "profile": st.plan.profile, "cpu": cpu_model()}


def _maps_cpu(st: _State) -> dict[str, Any]:
    """{"run/image": CPU seconds} of every map of the plan that was computed (here or by `warm`), not read; None
    for a map resumed from a checkpoint (its CPU seconds count only the resumed part)."""
    for run in st.plan.runs:
        for i in st.wanted(run):
            st.get(run.key, i)
    return {
        f"{k}/{n}": None if m[1].get("resumed") else m[1].get("cpu_seconds")
        for (k, n), m in st.maps.items()
        if m[1].get("source") == "computed"
    }


def run_agreement(st: _State) -> tuple[list[dict], dict]:
    from pda_repro.evaluate import agreement

    t0 = time.process_time()
    rows = []
    for comparison, ka, kb in st.plan.pairs:
        ra, rb = st.plan.run(ka), st.plan.run(kb)
        for i in sorted(set(st.wanted(ra)) & set(st.wanted(rb))):
            (ma, meta_a), (mb, meta_b) = st.get(ka, i), st.get(kb, i)
            mask = _coverage(st.plan, ra, ma.shape) & _coverage(st.plan, rb, mb.shape)
            nums = agreement(ma, mb, mask, 0.1, np.random.default_rng([st.ctx.seed, i]))
            sa, sb = st.settings(ra), st.settings(rb)
            rows.append(
                {
                    **_base_row(st, i),
                    "comparison": comparison,
                    "map_a": ka,
                    "map_b": kb,
                    **{f"{k}_a": v for k, v in sa.items()},
                    **{f"{k}_b": v for k, v in sb.items()},
                    "inference_a": meta_a.get("inference"),
                    "inference_b": meta_b.get("inference"),
                    "pixels_compared": int(mask.sum()),
                    **nums,
                }
            )
    maps_cpu = _maps_cpu(st)
    extra = {
        "model": st.plan.model,
        "plan": st.plan.profile,
        "images": st.plan.image_note,
        "notes": plan_notes(st),
        "cpu_seconds_cell": time.process_time() - t0,
        "cpu_seconds_maps_computed": maps_cpu,
        "top_fraction": 0.1,
    }
    return rows, extra


def _fills(st: _State, i: int) -> dict[str, np.ndarray]:
    """The fill images of image i (computed once per image)."""
    from pda_repro.evaluate import fill_image

    name, x = st.images[i]
    if name not in st.fills:
        conditional = st.sampler("marginal" if st.plan.model == "mnist" else "conditional")
        st.fills[name] = {f: fill_image(x, f, st.plan.window, conditional) for f in st.plan.fills}
    return st.fills[name]


def evaluation(st: _State, key: str, i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(scores, curves) of run `key`'s map on image i: every metric of evaluate_map, cached on disk under a
    digest of the map and the metric settings (an interrupted faithfulness cell resumes image by image)."""
    from pda_repro.evaluate import evaluate_map

    plan = st.plan
    name, x = st.images[i]
    m, _ = st.get(key, i)
    settings = {"class": st.classes[i], "window": plan.window, "steps": plan.steps, "fc_runs": plan.fc_runs,
                "fills": list(plan.fills), "rng": [st.ctx.seed, 7, i], "backend": st.backend,
                "map": hashlib.sha256(np.ascontiguousarray(m, dtype=np.float32).tobytes()).hexdigest()}  # fmt: skip
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = _cache_dir() / plan.model / name / f"eval-{key}-{digest}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        return saved["scores"], saved["curves"]
    conditional = st.sampler("marginal" if plan.model == "mnist" else "conditional")
    t0 = time.process_time()
    scores, curves = evaluate_map(
        st.net, x, m, st.classes[i], plan.window, conditional, fills=plan.fills, steps=plan.steps,
        fc_runs=plan.fc_runs, rng=np.random.default_rng([st.ctx.seed, 7, i]), fill_images=_fills(st, i),
    )  # fmt: skip
    scores = {**scores, "cpu_seconds_metrics": time.process_time() - t0}
    out = [{"kind": c.kind, "fill": c.settings.get("fill", "linear_imputation"),
            "fractions": np.asarray(c.fractions).tolist(), "scores": np.asarray(c.scores).tolist()} for c in curves]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"scores": scores, "curves": out}, default=float))
    tmp.replace(path)
    return scores, out


def run_faithfulness(st: _State) -> tuple[list[dict], dict]:
    t0 = time.process_time()
    rows, curve_acc = [], {}
    plan = st.plan
    for i in range(len(st.images)):
        for key in plan.evaluate:
            run = plan.run(key)
            if i not in st.wanted(run):
                continue
            _, meta = st.get(key, i)
            scores, curves = evaluation(st, key, i)
            rows.append({**_base_row(st, i), "map": key, **st.settings(run), "inference": meta.get("inference"),
                         "map_source": meta.get("source"), **scores})  # fmt: skip
            for c in curves:
                curve_acc.setdefault((key, c["kind"], c["fill"]), []).append((c["fractions"], c["scores"]))
    curve_rows = []
    for (key, kind, fill), items in curve_acc.items():
        fr = np.mean([f for f, _ in items], axis=0)
        sc = np.array([s for _, s in items])
        for j in range(fr.size):
            curve_rows.append({"map": key, "kind": kind, "fill": fill, "point": j, "fraction": float(fr[j]),
                               "score_mean": float(sc[:, j].mean()), "score_std": float(sc[:, j].std()),
                               "images": int(sc.shape[0])})  # fmt: skip
    key = {"model": plan.model, "backend": st.backend, "device": st.ctx.device, "profile": plan.profile}
    st.ctx.store.write_cell(
        CURVES, key, curve_rows, st.ctx.cell_meta(plan=plan.profile),
        "Mean deletion / insertion / ROAD curves over the images of the faithfulness experiment "
        "(score = softmax probability of the explained class).",
        {"fraction": "fraction of pixels perturbed", "score_mean": "mean class probability over images"},
    )  # fmt: skip
    return rows, {"model": plan.model, "plan": plan.profile, "images": plan.image_note, "cpu_seconds_cell": time.process_time() - t0,
                  "notes": plan_notes(st), "cpu_seconds_maps_computed": _maps_cpu(st)}  # fmt: skip


def run_randomisation(st: _State) -> tuple[list[dict], dict]:
    from pda_repro.evaluate import randomisation_check
    from pda_repro.explain import explain

    t0 = time.process_time()
    plan = st.plan
    rows = []
    for key, limit in plan.randomise:
        run = plan.run(key)
        n = len(st.wanted(run)) if limit is None else min(limit, len(st.wanted(run)))
        for i in range(n):
            name, x = st.images[i]
            trained, meta = st.get(key, i)
            kwargs = {"window": plan.window, "outer": plan.outer, "samples": plan.samples}
            if run.stride is not None:
                kwargs["stride"] = run.stride

            def explain_fn(
                net: Any, image: np.ndarray, cls: int, run: MapRun = run, kwargs=kwargs, i: int = i
            ) -> np.ndarray:
                if run.method in CONTROLS:  # the control maps do not look at the net at all
                    return st.get(run.key, i)[0]
                return explain(net, image, method=run.method, sampler=st.sampler(run.sampler), classes=[cls],
                               rng=np.random.default_rng([st.ctx.seed, run.seed, 99]), progress=False,
                               **kwargs).maps[0]  # fmt: skip

            mask = _coverage(plan, run, trained.shape)
            checks = randomisation_check(st.net, explain_fn, x, st.classes[i], (1, "all"), st.ctx.seed + 1,
                                         THRESHOLD, mask, trained_map=trained)  # fmt: skip
            for r in checks:
                rows.append({**_base_row(st, i), "map": key, **st.settings(run), "threshold": THRESHOLD, **r})
    return rows, {"model": plan.model, "plan": plan.profile, "cpu_seconds_cell": time.process_time() - t0,
                  "randomised_from": "the prototxt's fillers, seed = run seed + 1"}  # fmt: skip


DESCRIPTIONS = {
    EXPERIMENT: "Faithfulness of each map to the model (pda_repro.evaluate): deletion / insertion AUC of the class "
    "probability when k×k blocks are replaced most-relevant-first by a fill (mean = the sampler's conditional "
    "mean of each block, blur = Gaussian σ=k/2, zeros) or put back into the fill image; ROAD MoRF / LeRF AUC "
    "(noisy linear imputation, noise 1 % of the image's range, 10/30/50/70/90 % of the pixels); faithfulness "
    "correlation (random 10 % of the blocks replaced by the mean fill). Lower deletion / MoRF and higher "
    "insertion / LeRF / correlation = more faithful; random and constant are controls.",
    AGREEMENT: "Agreement between two maps of the same image on the pixels both cover: Spearman rank correlation, "
    "SSIM (maps scaled by their max |value|, 7×7 windows) and top-10 % pixel overlap (chance = 0.1).",
    RANDOMISATION: "Model-randomisation sanity check (Adebayo et al. 2018): the top learnable layer (top1) or all "
    "layers re-drawn from seeded fillers; Spearman / SSIM of the map with the trained-model map; changed = "
    "|Spearman| < threshold.",
}


def cells(ctx: BenchContext, models: Sequence[str], backends: Sequence[str]) -> list[Cell]:
    """Three cells per model that has a plan (mnist, efficientnet_lite0); torch backend only (its incremental
    inference makes the window maps affordable; the metrics themselves run on any Backend)."""
    if "torch" not in backends:
        return []
    backend = "torch"
    out = []
    for model in models:
        plan = plan_for(model, ctx.profile)
        if plan is None:
            continue
        for experiment, fn, estimate in (
            (AGREEMENT, run_agreement, 4000.0 if model != "mnist" else 300.0),
            (EXPERIMENT, run_faithfulness, 1500.0 if model != "mnist" else 200.0),
            (RANDOMISATION, run_randomisation, 120.0),
        ):
            key = {"model": model, "backend": backend, "device": ctx.device, "profile": plan.profile}

            def run(fn=fn, plan=plan) -> tuple[list[dict], dict]:
                return fn(_state(ctx, plan, backend))

            out.append(
                Cell(
                    experiment=experiment,
                    key=key,
                    label=f"{experiment} {model}/{backend}/{ctx.device} ({plan.profile})",
                    estimate_seconds=estimate,
                    run=run,
                    model=model,
                    description=DESCRIPTIONS[experiment],
                )
            )
    return out


# -- warming the caches from several processes -------------------------------------------------------------

SECONDS_PER_WINDOW_FORWARD = (
    0.024  # only orders the work (cheap first); the measured costs are in the maps' meta
)
CHEAP_TASK = (
    10.0  # tasks estimated below this many seconds (maps read or made by one pass, their metrics) go first
)


def _map_cost(st: _State, run: MapRun, i: int) -> float:
    """A rough CPU-seconds figure for run's map on image i (0 when it is read, not computed)."""
    name, x = st.images[i]
    if run.method in CONTROLS or (run.reuse is not None and st._reuse_path(run, name).is_file()):
        return 0.0
    if run.stride is None or run.method == "simplified":
        return 0.5
    from pda_repro.methods.windows import WindowGrid

    n = WindowGrid(x.shape[1], x.shape[2], st.plan.window, run.stride).n_windows
    return n * (st.plan.samples if run.method in ("pda", "epda_sampled") else 1) * SECONDS_PER_WINDOW_FORWARD


def warm_tasks(st: _State) -> list[tuple[float, str, str, int]]:
    """Every map and every metric evaluation the three cells need: the cheap ones (< CHEAP_TASK), then those of
    plan.warm_first in its order, then the others cheapest first: (cost, kind, run, image); an evaluation comes
    after its map."""
    plan, tasks = st.plan, {}
    needed = {(k, i) for _, a, b in plan.pairs for k in (a, b) for i in st.wanted(plan.run(k))}
    needed |= {(k, i) for k, n in plan.randomise for i in st.wanted(plan.run(k))[:n]}
    for key in plan.evaluate:
        for i in st.wanted(plan.run(key)):
            needed.add((key, i))
            cost = _map_cost(st, plan.run(key), i)
            tasks[("eval", key, i)] = cost + 5.0
    for key, i in needed:
        tasks[("map", key, i)] = _map_cost(st, plan.run(key), i)

    def rank(key: str, i: int, cost: float) -> int:
        if cost < CHEAP_TASK:
            return -1
        for r, (k, n) in enumerate(plan.warm_first):
            if k == key and (n is None or i < n):
                return r
        return len(plan.warm_first)

    order = sorted((rank(key, i, c), c, kind, key, i) for (kind, key, i), c in tasks.items())
    return [(c, kind, key, i) for _, c, kind, key, i in order]


def _claim(lock: Path) -> bool:
    """Create `lock` holding our pid; a lock whose process is gone is taken over."""
    import os

    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or "0")
                os.kill(pid, 0)
                return False
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def warm(ctx: BenchContext, model: str, backend: str = "torch", say: Callable[[str], None] = print) -> int:
    """Compute every map and metric evaluation of `model`'s plan into the caches, claiming each task with a
    lock file so that several processes (one thread each) share the work; a killed process's map resumes
    from its checkpoint. Returns the number of tasks this process ran. The cells then read the caches."""
    plan = plan_for(model, ctx.profile)
    if plan is None:
        raise ValueError(f"no faithfulness plan for {model!r}")
    st = _state(ctx, plan, backend)
    locks = _cache_dir() / plan.model / "locks"
    ran, pending = 0, warm_tasks(st)
    while pending:
        left = []
        for task in pending:
            cost, kind, key, i = task
            run, (name, _) = plan.run(key), st.images[i]
            if (
                kind == "eval"
                and run.method not in CONTROLS
                and not (
                    (run.reuse is not None and st._reuse_path(run, name).is_file())
                    or st.map_path(run, name, st.classes[i]).is_file()
                )
            ):
                left.append(task)  # its map is not there yet
                continue
            lock = locks / f"{kind}-{key}-{name}.lock"
            if not _claim(lock):
                left.append(task)
                continue
            try:
                t0 = time.process_time()
                if kind == "map":
                    st.get(key, i)
                else:
                    evaluation(st, key, i)
                say(f"{kind} {key} {name}: {time.process_time() - t0:.1f} s CPU (estimate {cost:.0f})")
                ran += 1
            finally:
                lock.unlink(missing_ok=True)
        if len(left) == len(pending):
            time.sleep(10)  # everything left is held by another process or waits for a map
        pending = left
    return ran


def main(argv: Sequence[str] | None = None) -> int:
    """python -m pda_repro.bench.faithfulness warm --model M [--profile P] [--threads N]"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pda_repro.bench.faithfulness")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("warm", help="compute the maps and metric evaluations into the caches (run several)")
    w.add_argument("--model", required=True)
    w.add_argument("--profile", default="quick")
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from pda_repro.bench.results import RESULTS_DIR, ResultStore, env_name
    from pda_repro.bench.runner import limit_threads

    limit_threads(args.threads)
    ctx = BenchContext(store=ResultStore(RESULTS_DIR, env_name()), profile=args.profile, seed=args.seed,
                       threads=args.threads)  # fmt: skip
    n = warm(ctx, args.model, say=lambda m: print(m, flush=True))
    print(f"done: {n} tasks", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
