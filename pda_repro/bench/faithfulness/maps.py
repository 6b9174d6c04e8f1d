"""The maps of a faithfulness plan and their metric evaluations, each computed once and kept on disk, or read
from results/qualitative/ where the qualitative figures made the very same map. The window maps (hours of CPU
in all) and every evaluation of a plan marked `stored` are kept in results/faithfulness/ (``faithfulness_store()``,
committed: a later run on any machine reads them); one-pass maps, the other plans' maps and evaluations (MNIST's
whole plan recomputes in minutes), checkpoints and task locks in ``faithfulness_cache()``. Seeds:
pda_repro.seeding streams of the run seed, the run's seed and the image name."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro import seeding
from pda_repro.bench.cells import CellSkipped
from pda_repro.bench.context import BenchContext
from pda_repro.bench.faithfulness.plans import CONTROLS, MapRun, Plan
from pda_repro.bench.results import REPO_ROOT, atomic_save_npz
from pda_repro.io import atomic_writer
from pda_repro.paths import cache_dir

__all__ = ["PlanState", "coverage", "evaluation", "faithfulness_cache", "faithfulness_store", "plan_state"]

QUALITATIVE = REPO_ROOT / "results" / "qualitative"
STORED_METHODS = ("pda", "epda", "epda_sampled", "occlusion")  # one evaluation per window: kept in the store


def faithfulness_store() -> Path:
    """results/faithfulness/<model>/<image>/: the window maps and every metric evaluation (committed)."""
    return REPO_ROOT / "results" / "faithfulness"


def faithfulness_cache() -> Path:
    """Where the one-pass maps (recomputed in about a second), the window maps' checkpoints and the task locks
    are kept."""
    return cache_dir("faithfulness")


def _kept_in(stored: bool) -> Path:
    return faithfulness_store() if stored else faithfulness_cache()


@dataclass
class PlanState:
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
                self.plan.model, backend=self.backend, device=self.ctx.settings.device, weights=weights,
                batch=self.plan.batch, seed=self.ctx.settings.seed,
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
                from pda_repro.bench.qualitative import mnist_marginal

                self.samplers[kind] = mnist_marginal(self.spec, self.plan.window)
            else:
                from pda_repro.bench.inputs import model_sampler

                base = model_sampler(
                    self.spec, self.plan.model, self.plan.window, self.plan.outer, self.ctx.settings.seed
                )
                self.samplers[kind] = base.with_border("shift" if kind.endswith("shift") else "clip")
        return self.samplers[kind]

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

            m = random_map((h, w), seeding.generator(self.ctx.settings.seed, run.seed, name))
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

        kwargs = {"window": self.plan.window, "outer": self.plan.outer, "samples": self.plan.samples}
        if run.stride is not None:
            kwargs["stride"] = run.stride
        # window methods keep their running sums in a checkpoint beside the map: an interrupted map resumes
        ckpt = None
        if METHODS[run.method].checkpointable:
            ckpt = faithfulness_cache() / self.plan.model / name / f"{path.stem}.checkpoint.npz"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(checkpoint=ckpt, keep_checkpoint=True)
        resumed = ckpt is not None and ckpt.is_file()  # cpu_seconds then counts only the resumed part
        t0 = time.process_time()
        res = explain(
            self.net, x, method=run.method, sampler=self.sampler(run.sampler), classes=[cls],
            rng=seeding.generator(self.ctx.settings.seed, run.seed, name), progress=False, **kwargs,
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
                "root_seed": self.ctx.settings.seed}  # fmt: skip

    def map_path(self, run: MapRun, name: str, cls: int) -> Path:
        """Where the computed map of `run` on photo `name` is kept (the request's digest in its name): the store
        for a window method of a stored plan, the cache otherwise."""
        digest = hashlib.sha256(
            json.dumps(self.request(run, name, cls), sort_keys=True).encode()
        ).hexdigest()[:16]
        root = _kept_in(self.plan.stored and run.method in STORED_METHODS)
        return root / self.plan.model / name / f"{run.key}-{digest}.npz"


_STATES: dict[tuple[int, str, str], PlanState] = {}


def plan_state(ctx: BenchContext, plan: Plan, backend: str) -> PlanState:
    key = (id(ctx), plan.model, backend)
    if key not in _STATES:
        _STATES.clear()  # one model at a time (the nets and maps are large)
        _STATES[key] = PlanState(ctx, plan, backend)
    st = _STATES[key]
    st.load()
    return st


def coverage(plan: Plan, run: MapRun, shape: tuple[int, int]) -> np.ndarray:
    from pda_repro.bench.qualitative import coverage_mask

    if run.stride is None or run.method in CONTROLS:
        return np.ones(shape, dtype=bool)
    return coverage_mask(shape[0], shape[1], plan.window, run.stride)


def fills(st: PlanState, i: int) -> dict[str, np.ndarray]:
    """The fill images of image i (computed once per image)."""
    from pda_repro.evaluate import fill_image

    name, x = st.images[i]
    if name not in st.fills:
        conditional = st.sampler("marginal" if st.plan.model == "mnist" else "conditional")
        st.fills[name] = {f: fill_image(x, f, st.plan.window, conditional) for f in st.plan.fills}
    return st.fills[name]


def evaluation(st: PlanState, key: str, i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(scores, curves) of run `key`'s map on image i: every metric of evaluate_map, kept (the store for a stored
    plan) under a digest of the map and the metric settings (an interrupted cell resumes image by image)."""
    from pda_repro.evaluate import evaluate_map

    plan = st.plan
    name, x = st.images[i]
    m, _ = st.get(key, i)
    settings = {"class": st.classes[i], "window": plan.window, "steps": plan.steps, "fc_runs": plan.fc_runs,
                "fills": list(plan.fills), "rng": [st.ctx.settings.seed, 7, i], "backend": st.backend,
                "map": hashlib.sha256(np.ascontiguousarray(m, dtype=np.float32).tobytes()).hexdigest()}  # fmt: skip
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = _kept_in(plan.stored) / plan.model / name / f"eval-{key}-{digest}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        return saved["scores"], saved["curves"]
    conditional = st.sampler("marginal" if plan.model == "mnist" else "conditional")
    t0 = time.process_time()
    scores, curves = evaluate_map(
        st.net, x, m, st.classes[i], plan.window, conditional, fills=plan.fills, steps=plan.steps,
        fc_runs=plan.fc_runs, rng=seeding.generator(st.ctx.settings.seed, 7, i), fill_images=fills(st, i),
    )  # fmt: skip
    scores = {**scores, "cpu_seconds_metrics": time.process_time() - t0}
    out = [{"kind": c.kind, "fill": c.settings.get("fill", "linear_imputation"),
            "fractions": np.asarray(c.fractions).tolist(), "scores": np.asarray(c.scores).tolist()} for c in curves]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "w") as fh:
        fh.write(json.dumps({"scores": scores, "curves": out}, default=float))
    return scores, out
