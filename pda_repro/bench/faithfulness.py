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

The explained class is the net's predicted class. Maps are cached in ~/.cache/pda-repro/faithfulness/ (a rerun
reuses them). `--profile quick` (the default) is the reduced plan that fits a shared 2-core CPU, `paper` the
issue's full plan (all 27 photos, efficient PDA at stride 1); every row says which plan, stride, S, seed and
sampler made its map, and each JSON cell stores the CPU seconds.
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
    qualitative_set: str | None = None
    notes: dict[str, str] = field(default_factory=dict)

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


def _photo_images(names: Sequence[str] | None) -> Callable[[Any], list[tuple[str, np.ndarray]]]:
    def images(spec: Any) -> list[tuple[str, np.ndarray]]:
        from pda_repro.bench.inputs import photo_inputs
        from pda_repro.data import photo_paths
        from pda_repro.preprocess import load_image

        if names is None:
            return photo_inputs(spec)
        paths = photo_paths()
        return [(n, load_image(paths[n], spec).x) for n in names]

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
    # quick: the five Fig 14 photos; maps the qualitative figures already computed are read, not recomputed
    runs = (
        MapRun("pda_s5", "pda", 5, 0, c, reuse="pda"),
        MapRun("epda_s5", "epda", 5, 0, c, reuse="epda"),
        MapRun("epda", "epda", 1, 0, c, reuse="epda_full"),
        MapRun("epda_sampled_s5", "epda_sampled", 5, 0, c, reuse="epda_sampled"),
        MapRun("simplified", "simplified", 1, 0, c, reuse="simplified_full"),
        MapRun("occlusion_s5", "occlusion", 5, reuse="occlusion"),
        MapRun("saliency", "saliency", reuse="saliency"),
        MapRun("gradient_x_input", "gradient_x_input", reuse="gradient_x_input"),
        MapRun("gradcam", "gradcam", reuse="gradcam"),
        MapRun("epda_s2", "epda", 2, 0, c, images=1),
        MapRun("epda_s4", "epda", 4, 0, c, images=2),
        MapRun("pda_s10", "pda", 10, 0, c, images=1),
        MapRun("pda_s10_seed1", "pda", 10, 1, c, images=1),
        MapRun("epda_s10", "epda", 10, 0, c, images=1),
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
        ("border_clip_vs_shift", "epda_s5", "epda_s5_shift"),
        ("control_pda_vs_random", "pda_s5", "random"),
        ("control_pda_vs_constant", "pda_s5", "constant"),
        ("control_epda_vs_random", "epda", "random"),
    )
    evaluate = ("pda_s5", "epda_s5", "epda", "epda_sampled_s5", "simplified", "occlusion_s5", "saliency",
                "gradient_x_input", "gradcam", "random", "constant")  # fmt: skip
    randomise = (
        ("saliency", None),
        ("gradient_x_input", None),
        ("gradcam", None),
        ("simplified", None),
        ("epda_s10", 1),
        ("random", None),
        ("constant", None),
    )
    return Plan(
        model="efficientnet_lite0",
        profile=profile,
        window=10,
        outer=18,
        samples=10,
        batch=4,
        images=_photo_images(("coffee", "orange", "squirrel_cls", "baboon", "messi5")),
        image_note="the five Fig 14 photos (coffee, orange, squirrel_cls, baboon, messi5)",
        runs=runs,
        evaluate=evaluate,
        pairs=pairs,
        randomise=randomise,
        qualitative_set="efficientnet_lite0",
        notes={
            "scale": "reduced to fit a shared 2-core CPU (~36 ms per EfficientNet-Lite0 forward): 5 of the 27 "
            "photos; PDA at stride 5 (maps of the Fig 14 run) and at stride 10 with two seeds on coffee only; "
            "efficient PDA at stride 1 and 5 (Fig 14/19 maps), stride 4 on coffee and orange, stride 10 on "
            "coffee, stride 2 on coffee; border shift at stride 5 on coffee and orange. Not run: PDA "
            "at stride 1 (462,250 forward passes per photo), the other 22 photos",
        },
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
        elif run.reuse is not None:
            out = self._reuse(run, name, cls)
        else:
            out = self._compute(run, name, x, cls)
        self.maps[(key, name)] = out
        return out

    def _reuse(self, run: MapRun, name: str, cls: int) -> tuple[np.ndarray, dict]:
        path = QUALITATIVE / str(self.plan.qualitative_set) / name / f"{run.reuse}.npz"
        if not path.is_file():
            raise CellSkipped(
                f"{path} is missing (run `python -m pda_repro.bench.qualitative compute` first)"
            )
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

        request = {"model": self.plan.model, "image": name, "class": cls, "run": run.key,
                   **self.settings(run), "backend": self.backend, "weights": self.ctx.weights_for(self.plan.model)[1],
                   "root_seed": self.ctx.seed}  # fmt: skip
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
        path = _cache_dir() / self.plan.model / name / f"{run.key}-{digest}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as f:
                return np.asarray(f["map"], dtype=np.float32), json.loads(str(f["meta"]))
        words = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        kwargs = {"window": self.plan.window, "outer": self.plan.outer, "samples": self.plan.samples}
        if run.stride is not None:
            kwargs["stride"] = run.stride
        t0 = time.process_time()
        res = explain(
            self.net, x, method=run.method, sampler=self.sampler(run.sampler), classes=[cls],
            rng=np.random.default_rng([self.ctx.seed, run.seed, words]), progress=False, **kwargs,
        )  # fmt: skip
        cpu = time.process_time() - t0
        self.cpu_seconds += cpu
        meta = {"source": "computed", "cpu_seconds": cpu, "seconds": res.seconds, "inference": res.params.get("inference"),
                "forward_passes": res.forward_passes, "request": request}  # fmt: skip
        atomic_save_npz(path, map=res.maps[0], meta=np.asarray(json.dumps(meta, default=str)))
        return res.maps[0], meta


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


def _base_row(st: _State, i: int) -> dict[str, Any]:
    return {"image": st.images[i][0], "class": st.classes[i], "profile": st.plan.profile, "cpu": cpu_model()}


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
    maps_cpu = {
        f"{k}/{n}": m[1].get("cpu_seconds")
        for (k, n), m in st.maps.items()
        if m[1].get("source") == "computed"
    }
    extra = {
        "model": st.plan.model,
        "plan": st.plan.profile,
        "images": st.plan.image_note,
        "notes": st.plan.notes,
        "cpu_seconds_cell": time.process_time() - t0,
        "cpu_seconds_maps_computed": maps_cpu,
        "top_fraction": 0.1,
    }
    return rows, extra


def run_faithfulness(st: _State) -> tuple[list[dict], dict]:
    from pda_repro.evaluate import evaluate_map, fill_image

    t0 = time.process_time()
    rows, curve_acc = [], {}
    plan = st.plan
    conditional = st.sampler("marginal" if plan.model == "mnist" else "conditional")
    for i, (_, x) in enumerate(st.images):
        fills = {f: fill_image(x, f, plan.window, conditional) for f in ("mean", "blur", "zeros")}
        for key in plan.evaluate:
            run = plan.run(key)
            if i not in st.wanted(run):
                continue
            m, meta = st.get(key, i)
            rng = np.random.default_rng([st.ctx.seed, 7, i])
            scores, curves = evaluate_map(
                st.net, x, m, st.classes[i], plan.window, conditional, steps=plan.steps,
                fc_runs=plan.fc_runs, rng=rng, fill_images=fills,
            )  # fmt: skip
            rows.append({**_base_row(st, i), "map": key, **st.settings(run), "inference": meta.get("inference"),
                         "map_source": meta.get("source"), **scores})  # fmt: skip
            for c in curves:
                ck = (key, c.kind, c.settings.get("fill", "linear_imputation"))
                curve_acc.setdefault(ck, []).append((c.fractions, c.scores))
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
                  "notes": plan.notes}  # fmt: skip


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
            (AGREEMENT, run_agreement, 900.0 if model != "mnist" else 300.0),
            (EXPERIMENT, run_faithfulness, 400.0 if model != "mnist" else 200.0),
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
