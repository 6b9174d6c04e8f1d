"""The faithfulness text of results/README.md and the project README's stride block: rankings, controls,
agreement claims and the stride choice, every number read from the CSV/JSON files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pda_repro.bench.faithfulness_figures import (
    AGREEMENT_METRICS,
    CONTROL_MAPS,
    EXPERIMENT_FAITHFULNESS,
    FAITHFULNESS_METRICS,
    MIN_IMAGES_FOR_A_VERDICT,
    RANKED_METRICS,
    STRIDE_RHO,
    agreement_summary,
    ci_text,
    faithfulness_ranking,
    ranking_groups,
)
from pda_repro.bench.figure_data import md_table, models_sorted, read_frame, read_meta
from pda_repro.bench.results import envs


def _map_costs(cells: dict[str, Any], model: str) -> list[str]:
    """'key: median s (n images)' for every map the model's cell computed (not read from disk, not resumed)."""
    per: dict[str, list[float]] = {}
    for cid, c in cells.items():
        if f"model={model}|" in f"{cid}|":
            for k, v in (c.get("cpu_seconds_maps_computed") or {}).items():
                if v is not None:
                    per.setdefault(k.split("/", 1)[0], []).append(float(v))
    return [f"`{k}` {np.median(v):.1f} s ({len(v)})" for k, v in per.items()]


def _ranking_table(ranking: pd.DataFrame) -> list[str]:
    rows = []
    for _, r in ranking.iterrows():
        rows.append([r["label"], int(r["deletion_auc_mean_n"]), f"{r['mean_rank']:.1f}",
                     *[ci_text(r, c) for c in RANKED_METRICS]])  # fmt: skip
    head = ["map", "n", "mean rank",
            *[FAITHFULNESS_METRICS[c][0] + (" ↑" if FAITHFULNESS_METRICS[c][1] else " ↓") for c in RANKED_METRICS]]  # fmt: skip
    return [md_table(head, rows), ""]


def _control_lines(ranking: pd.DataFrame) -> list[str]:
    """Controls: a metric that puts a control in the top half of the maps is not measuring faithfulness."""
    flagged = []
    for c in RANKED_METRICS:
        higher = FAITHFULNESS_METRICS[c][1]
        order = (
            ranking.dropna(subset=[f"{c}_mean"])
            .sort_values(f"{c}_mean", ascending=not higher)["map"]
            .tolist()
        )
        for ctrl in CONTROL_MAPS:
            if ctrl in order and order.index(ctrl) < len(order) / 2:
                flagged.append(
                    f"{FAITHFULNESS_METRICS[c][0]} puts `{ctrl}` at {order.index(ctrl) + 1} of {len(order)}"
                )
    return [
        "Controls: "
        + (
            "; ".join(flagged) + " (that metric does not separate maps from noise here)."
            if flagged
            else "every metric ranks the random and the all-equal map in the bottom half."
        ),
        "",
    ]


def faithfulness_section(env_dir: Path) -> list[str]:
    """README: the ranking, the agreement numbers and the sanity check, beside the paper's claims."""
    frame, agree, rand = (
        read_frame(env_dir, n) for n in ("faithfulness", "agreement", "faithfulness_randomisation")
    )
    if frame.empty and agree.empty:
        return []
    lines = [
        "### Faithfulness and agreement (issue: measure faithfulness)",
        "",
        "`make benchmark EXPERIMENTS=faithfulness` (pda_repro.bench.faithfulness; metrics in pda_repro.evaluate).",
        "Score = softmax probability of the predicted class. Deletion/insertion: k×k blocks, most relevant first,",
        "replaced by (deletion) or restored into (insertion) a fill: `mean` = the sampler's conditional mean of each",
        "block (MNIST: the marginal sampler's dataset mean), `blur` = Gaussian σ = k/2, `zeros`. ROAD: noisy linear",
        "imputation of 10–90 % of the pixels. Faithfulness correlation: 10 % of the blocks, mean fill. Every value",
        "is the mean over images with a percentile-bootstrap 95 % interval. `mean rank` averages the map's rank",
        "over deletion (mean fill), insertion (mean fill), ROAD MoRF, ROAD LeRF and the correlation (1 = best).",
        "Maps are ranked by their signed value (positive = evidence for the class), so LeRF removes the evidence",
        "*against* the class first; the PDA-family maps are signed, saliency and Grad-CAM are not.",
        "",
    ]
    meta = {
        **read_meta(env_dir, EXPERIMENT_FAITHFULNESS).get("cells", {})
    }  # the ranked maps: their plan, their cost
    for model in models_sorted(frame["model"]) if not frame.empty else []:
        sub = frame[frame["model"] == model]
        plan_notes = [c.get("notes", {}) for cid, c in meta.items() if f"model={model}|" in f"{cid}|"]
        notes = next((n for n in plan_notes if n), {})
        groups = ranking_groups(sub)
        for j, (images, rows_g) in enumerate(groups):
            ranking = faithfulness_ranking(rows_g)
            what = (f"{len(images)} images, profile {', '.join(sorted(sub['profile'].unique()))}" if j == 0 else
                    f"the {len(images)} images every map below was evaluated on: {', '.join(sorted(images))}")  # fmt: skip
            lines += [f"#### {model}: ranking ({what})", ""]
            if j == 0 and notes.get("scale"):
                lines += [f"Scale: {notes['scale']}." + (f" {notes['pda_finest_stride']}." if notes.get("pda_finest_stride") else ""), ""]  # fmt: skip
            if j == 0 and notes.get("maps"):
                lines += ["Maps: " + "; ".join(f"`{k}` = {v}" for k, v in notes["maps"].items()) + ".", ""]
                cost = _map_costs(meta, model)
                if cost:
                    lines += ["CPU seconds per computed map (median over the images it was computed on; "
                              "faithfulness.json): " + "; ".join(cost) + ".", ""]  # fmt: skip
            if j == 0 and len(groups) > 1:
                lines += ["Only the maps made on all of these images are ranked here; the next table ranks every "
                          "map on the images they share.", ""]  # fmt: skip
            lines += _ranking_table(ranking)
            lines += _control_lines(ranking)
        lines += _ranking_claims(groups)
    if not agree.empty:
        summary = agreement_summary(agree)
        settings = agree.groupby(["model", "comparison", "map_a", "map_b"], sort=False).first().reset_index()
        for model in models_sorted(summary["model"]):
            s = summary[summary["model"] == model]
            rows = []
            for _, r in s.iterrows():
                st = settings[(settings["model"] == model) & (settings["comparison"] == r["comparison"])
                              & (settings["map_a"] == r["map_a"]) & (settings["map_b"] == r["map_b"])].iloc[0]  # fmt: skip
                rows.append([r["comparison"], f"{r['map_a']} (s{st['stride_a']:.0f})" if pd.notna(st["stride_a"]) else r["map_a"],
                             f"{r['map_b']} (s{st['stride_b']:.0f})" if pd.notna(st["stride_b"]) else r["map_b"],
                             int(max(r["spearman_n"], r["ssim_n"])),
                             *[ci_text(r, c) for c in AGREEMENT_METRICS]])  # fmt: skip
            lines += [f"#### {model}: agreement between maps", "",
                      md_table(["comparison", "map a", "map b", "images", *AGREEMENT_METRICS.values()], rows), ""]  # fmt: skip
            lines += _agreement_claims(s)
        stride = _stride_env_lines(env_dir)
        if stride:
            lines += ["#### Choosing the stride", "", *stride, ""]
    if not rand.empty:
        from pda_repro.evaluate.summary import summarise

        r = summarise(rand.assign(changed_share=rand["changed"].astype(float)), ["model", "map", "level"],
                      ["spearman", "ssim", "changed_share"])  # fmt: skip
        rows = [[x["model"], x["map"], x["level"], int(max(x["spearman_n"], x["ssim_n"])), ci_text(x, "spearman"), ci_text(x, "ssim"),
                 f"{x['changed_share_mean']:.2f}"] for _, x in r.iterrows()]  # fmt: skip
        thr = rand["threshold"].iloc[0]
        lines += ["#### Model-randomisation sanity check", "",
                  f"top1 = the output layer re-drawn from the prototxt's seeded fillers, all = every learnable layer; "
                  f"`changed` = share of images whose map has |Spearman| < {thr:g} with the trained-model map "
                  "(a map that ignores the weights keeps ρ ≈ 1 and changed = 0, as the random and constant controls do).", "",
                  md_table(["model", "map", "randomised", "images", "Spearman ρ", "SSIM", "changed"], rows), ""]  # fmt: skip
    return lines


def _agreement_claims(summary: pd.DataFrame) -> list[str]:
    """The paper's qualitative claims (Figs 14-16, 19) beside what the agreement numbers say."""

    def get(comparison: str, map_a: str | None = None) -> Any:
        rows = summary[summary["comparison"] == comparison]
        if map_a is not None:
            rows = rows[rows["map_a"] == map_a]
        return None if rows.empty else rows.iloc[0]

    out = []
    floor, sampled = get("pda_vs_pda_other_seed"), get("pda_vs_epda_sampled")
    # PDA vs efficient PDA from the same PDA map as the comparison it is set against (same stride)
    epda = get("pda_vs_epda", None if floor is None else floor["map_a"])
    if floor is not None and epda is not None:
        n = int(min(floor["spearman_n"], epda["spearman_n"]))
        if n < MIN_IMAGES_FOR_A_VERDICT:
            verdict = f"on {n} image(s) only, so no verdict; the gap in ρ is {floor['spearman_mean'] - epda['spearman_mean']:.2f}."
        elif epda["spearman_high"] < floor["spearman_low"]:
            verdict = "differs from PDA by MORE than PDA differs from itself (intervals do not overlap)."
        else:
            verdict = "is not distinguishable from PDA's own seed-to-seed variation at this scale."
        out.append(
            f"- Paper (Figs 14/16): PDA and efficient PDA differ, PDA being the noisier. Measured: PDA vs PDA with "
            f"another seed ρ = {ci_text(floor, 'spearman')} (the sampling-noise floor), PDA vs efficient PDA "
            f"ρ = {ci_text(epda, 'spearman')} ({epda['map_a']} ~ {epda['map_b']}): efficient PDA " + verdict
        )
    epda = None if sampled is None else get("pda_vs_epda", sampled["map_a"])
    if sampled is not None and epda is not None:
        closer = sampled["spearman_low"] > epda["spearman_high"]
        out.append(
            f"- Paper (Fig 15): with the conditional mean replaced by the mean of 10 samples, the maps look like "
            f"PDA's (shape differences come from sampling). Measured: PDA vs epda_sampled ρ = "
            f"{ci_text(sampled, 'spearman')} vs PDA vs efficient PDA ρ = {ci_text(epda, 'spearman')}: "
            + ("epda_sampled is closer to PDA." if closer else "no clear difference (intervals overlap).")
        )
    simp = get("epda_vs_simplified")
    if simp is not None:
        out.append(f"- Paper (Fig 19): the simplified variant is 'too noisy'. Measured: efficient PDA vs simplified "
                   f"ρ = {ci_text(simp, 'spearman')}, SSIM {ci_text(simp, 'ssim')}.")  # fmt: skip
    strides = summary[summary["comparison"].str.startswith("epda_stride1_vs_")]
    if not strides.empty:
        parts = []
        for _, r in strides.iterrows():
            stride = int(r["comparison"].rsplit("stride", 1)[-1])
            parts.append(
                f"stride {stride}: ρ = {ci_text(r, 'spearman')}, top-10 % overlap {ci_text(r, 'top_overlap')}"
            )
        out.append("- Stride (efficient PDA, vs stride 1): " + "; ".join(parts) + " (the CLI's default stride: "
                   "see `Choosing the stride` below).")  # fmt: skip
    border = get("border_clip_vs_shift")
    if border is not None:
        out.append(f"- Border rule (conditional sampler, clip vs the original code's shift): ρ = "
                   f"{ci_text(border, 'spearman')}, SSIM {ci_text(border, 'ssim')}, top-10 % overlap "
                   f"{ci_text(border, 'top_overlap')}.")  # fmt: skip
    return out + [""] if out else []


def cli_default_stride() -> int:
    """`pda-repro explain`'s default --stride, read from the CLI's parser."""
    import argparse

    from pda_repro.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return int(sub.choices["explain"].get_default("stride"))


def stride_lines(results_dir: Path) -> list[str]:
    """'Choosing the stride' for every env with agreement data (see _stride_env_lines)."""
    return [line for env in envs(Path(results_dir)) for line in _stride_env_lines(Path(results_dir) / env)]


def _stride_env_lines(env_dir: Path) -> list[str]:
    """Efficient PDA at stride s vs stride 1 per model (Spearman ρ over images, windows per image), the rule and
    the stride it picks, and the CLI's default."""
    from pda_repro import zoo
    from pda_repro.evaluate.summary import stride_choice
    from pda_repro.grid import WindowGrid

    lines: list[str] = []
    env = env_dir.name
    agree = read_frame(env_dir, "agreement")
    if agree.empty:
        return lines
    table, choice = stride_choice(agree, STRIDE_RHO, MIN_IMAGES_FOR_A_VERDICT)
    if table.empty:
        return lines
    rank = {m: i for i, m in enumerate(models_sorted(table["model"]))}
    table = table.sort_values(["model", "stride"], key=lambda c: c.map(rank) if c.name == "model" else c)
    rows = []
    for _, r in table.iterrows():
        sub = agree[(agree["model"] == r["model"]) & agree["comparison"].str.endswith(f"stride{r['stride']}")
                    & agree["comparison"].str.startswith("epda_stride1_vs_")]  # fmt: skip
        k = int(sub["window_a"].iloc[0])
        _, h, w = zoo.get(r["model"]).input_shape
        n1, ns = WindowGrid(h, w, k, 1).n_windows, WindowGrid(h, w, k, int(r["stride"])).n_windows
        rows.append([r["model"], int(r["stride"]), f"{ns:,} ({n1 / ns:.1f}× fewer)", int(r["spearman_n"]),
                     ci_text(r, "spearman"),
                     "yes" if r["kept"] else "no"])  # fmt: skip
    default = cli_default_stride()
    models = ", ".join(models_sorted(table["model"]))
    lines += [
        f"Efficient PDA at stride s against the same map at stride 1 ({env}: {models}; agreement.csv, "
        "`make benchmark EXPERIMENTS=faithfulness`): Spearman ρ of the two maps on the pixels both cover, mean "
        "over images with a bootstrap 95 % interval. A stride *keeps* the stride-1 map when at least "
        f"{MIN_IMAGES_FOR_A_VERDICT} images were measured and the interval's lower end is ≥ {STRIDE_RHO:g}.",
        "",
        md_table(["model", "stride", "windows per image", "images", "ρ vs stride 1", "keeps"], rows),
        "",
        f"The largest stride that every model measuring it keeps, all smaller strides kept too: **{choice}**. "
        + (
            f"`pda-repro explain`'s default `--stride` is {default}, this choice."
            if default == choice
            else f"`pda-repro explain`'s default `--stride` is {default}; the measurement supports {choice}."
        ),
    ]
    return lines


def stride_block(results_dir: Path) -> str:
    return "\n".join(stride_lines(results_dir)) or "(no stride measurement in results/*/agreement.csv yet)"


SAME_STRIDE_PAIRS = (("pda", "epda"), ("pda_s10", "epda_s10"), ("pda_s5", "epda_s5"))  # PDA, efficient PDA


def _ranking_claims(groups: list[tuple[frozenset, pd.DataFrame]]) -> list[str]:
    """Fig 14's claim (efficient PDA less noisy, on the object; judged by eye) beside the faithfulness numbers of
    PDA and efficient PDA at the same stride: which one the 95 % intervals favour, metric by metric; one line
    per stride both were evaluated at, on the most images both share."""
    out = []
    for pair in SAME_STRIDE_PAIRS:
        group = next((g for _, g in groups if set(pair) <= set(g["map"])), None)
        if group is None:
            continue
        ranking = faithfulness_ranking(group[group["map"].isin(pair)])
        a, b = (ranking[ranking["map"] == k].iloc[0] for k in pair)
        verdicts = []
        for c in RANKED_METRICS:
            label, higher = FAITHFULNESS_METRICS[c]
            if f"{c}_low" not in a or pd.isna(a[f"{c}_low"]) or pd.isna(b[f"{c}_low"]):
                continue  # not measured
            lo_a, hi_a, lo_b, hi_b = a[f"{c}_low"], a[f"{c}_high"], b[f"{c}_low"], b[f"{c}_high"]
            if hi_b < lo_a or hi_a < lo_b:
                better_b = (b[f"{c}_mean"] > a[f"{c}_mean"]) == higher
                verdicts.append(f"{label}: {'efficient PDA' if better_b else 'PDA'} better")
            else:
                verdicts.append(f"{label}: no clear difference")
        n = group[group["map"] == pair[0]]["image"].nunique()
        out += [
            f"Paper (Fig 14, by eye): efficient PDA is less noisy and focuses on the object. Measured faithfulness, "
            f"{a['label']} vs {b['label']} on {n} images (95 % intervals): " + "; ".join(verdicts) + ".",
            "",
        ]
    return out
