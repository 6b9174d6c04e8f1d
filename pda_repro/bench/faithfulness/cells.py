"""The faithfulness experiment's three result cells per model: agreement between maps, faithfulness
metrics (with the mean curves), and the model-randomisation check; `cells` lists them for the runner."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pda_repro import seeding
from pda_repro.bench.cells import Cell
from pda_repro.bench.context import BenchContext
from pda_repro.bench.faithfulness import plans
from pda_repro.bench.faithfulness.maps import PlanState, coverage, evaluation, plan_state
from pda_repro.bench.faithfulness.plans import CONTROLS, MapRun
from pda_repro.bench.results import cpu_model

__all__ = ["AGREEMENT", "CURVES", "DESCRIPTIONS", "EXPERIMENT", "RANDOMISATION", "cells", "plan_notes"]

EXPERIMENT = "faithfulness"
AGREEMENT = "agreement"
RANDOMISATION = "faithfulness_randomisation"
CURVES = "faithfulness_curves"
THRESHOLD = 0.5  # randomisation: the map "changed" when |Spearman| with the trained map is below this


def plan_notes(st: PlanState) -> dict[str, Any]:
    """The plan's notes plus, built from its settings, what every map is (method, stride, S, seed, sampler) and
    on which images it was made, and what the finest PDA grid would forward per image."""
    from pda_repro.grid import WindowGrid

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


def _base_row(st: PlanState, i: int) -> dict[str, Any]:
    return {"image": st.images[i][0], "class": st.classes[i], "profile": st.plan.profile, "cpu": cpu_model()}


def _maps_cpu(st: PlanState) -> dict[str, Any]:
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


def run_agreement(st: PlanState) -> tuple[list[dict], dict]:
    from pda_repro.evaluate import agreement

    t0 = time.process_time()
    rows = []
    for comparison, ka, kb in st.plan.pairs:
        ra, rb = st.plan.run(ka), st.plan.run(kb)
        for i in sorted(set(st.wanted(ra)) & set(st.wanted(rb))):
            (ma, meta_a), (mb, meta_b) = st.get(ka, i), st.get(kb, i)
            mask = coverage(st.plan, ra, ma.shape) & coverage(st.plan, rb, mb.shape)
            nums = agreement(ma, mb, mask, 0.1, seeding.generator(st.ctx.settings.seed, i))
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


def run_faithfulness(st: PlanState) -> tuple[list[dict], dict]:
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
    key = {
        "model": plan.model,
        "backend": st.backend,
        "device": st.ctx.settings.device,
        "profile": plan.profile,
    }
    st.ctx.store.write_cell(
        CURVES, key, curve_rows, st.ctx.cell_meta(plan=plan.profile),
        "Mean deletion / insertion / ROAD curves over the images of the faithfulness experiment "
        "(score = softmax probability of the explained class).",
        {"fraction": "fraction of pixels perturbed", "score_mean": "mean class probability over images"},
    )  # fmt: skip
    return rows, {"model": plan.model, "plan": plan.profile, "images": plan.image_note, "cpu_seconds_cell": time.process_time() - t0,
                  "notes": plan_notes(st), "cpu_seconds_maps_computed": _maps_cpu(st)}  # fmt: skip


def run_randomisation(st: PlanState) -> tuple[list[dict], dict]:
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
                               rng=seeding.generator(st.ctx.settings.seed, run.seed, 99), progress=False,
                               **kwargs).maps[0]  # fmt: skip

            mask = coverage(plan, run, trained.shape)
            checks = randomisation_check(st.net, explain_fn, x, st.classes[i], (1, "all"), st.ctx.settings.seed + 1,
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
        plan = plans.plan_for(model, ctx.settings.profile)
        if plan is None:
            continue
        for experiment, fn, estimate in (
            (AGREEMENT, run_agreement, 4000.0 if model != "mnist" else 300.0),
            (EXPERIMENT, run_faithfulness, 1500.0 if model != "mnist" else 200.0),
            (RANDOMISATION, run_randomisation, 120.0),
        ):
            key = {"model": model, "backend": backend, "device": ctx.settings.device, "profile": plan.profile}

            def run(fn=fn, plan=plan) -> tuple[list[dict], dict]:
                return fn(plan_state(ctx, plan, backend))

            out.append(
                Cell(
                    experiment=experiment,
                    key=key,
                    label=f"{experiment} {model}/{backend}/{ctx.settings.device} ({plan.profile})",
                    estimate_seconds=estimate,
                    run=run,
                    model=model,
                    description=DESCRIPTIONS[experiment],
                )
            )
    return out
