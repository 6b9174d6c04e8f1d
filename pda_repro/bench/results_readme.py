"""results/README.md: per env, our numbers beside the paper's, each with the setting it was measured in
(all read from the CSV/JSON files), and the list of figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pda_repro.bench.faithfulness_report import faithfulness_section
from pda_repro.bench.figure_data import (
    PAPER,
    best_profile_rows,
    fig12_frame,
    fmt_cell,
    fmt_seconds,
    md_table,
    models_sorted,
    one_per_cell,
    read_frame,
    read_meta,
)
from pda_repro.bench.incremental_module import results_section as module_incremental_section
from pda_repro.bench.parallel_report import parallel_section
from pda_repro.bench.results import RESULTS_DIR, atomic_write_text, envs


def _env_summary(env_dir: Path) -> list[str]:
    cells = {}
    for name in ("table1", "fig12", "fig9_10", "fig11", "fig16"):
        cells.update(read_meta(env_dir, name).get("cells", {}))
    if not cells:
        return []
    metas = list(cells.values())
    m = metas[0]
    dates = sorted(x.get("date", "") for x in metas)
    commits = sorted({str(x.get("git_commit", "?"))[:10] for x in metas})
    loads = [x.get("load_average_1_5_15", [None])[0] for x in metas if x.get("load_average_1_5_15")]
    loads = [v for v in loads if v is not None]
    lines = [
        f"- CPU: {m.get('cpu_model')} ({m.get('logical_cores')} logical cores, {m.get('memory_gib')} GiB)"
        + (f"; GPU: {m['gpu']}" if m.get("gpu") else ""),
        f"- torch {m.get('torch')} (BLAS {m.get('torch_blas')}, {m.get('torch_threads')} threads), numpy "
        f"{m.get('numpy')} ({m.get('numpy_blas')}), pycaffe: {m.get('pycaffe_build', 'not available')} "
        f"(BLAS {m.get('pycaffe_blas', '?')}, {m.get('pycaffe_blas_package', '')})",
        f"- measured {dates[0]} .. {dates[-1]}, git commit(s) {', '.join(commits)}; "
        f"1-minute load average during the cells {min(loads):.1f} .. {max(loads):.1f} "
        "(the machine is shared: other work ran alongside)"
        if loads
        else "",
    ]
    return [line for line in lines if line]


def _table1_section(env_dir: Path) -> list[str]:
    t1 = one_per_cell(read_frame(env_dir, "table1"), ["model", "backend", "device"])
    if t1.empty:
        return []
    rows = []
    for model in models_sorted(t1["model"]):
        sub = t1[t1["model"] == model]
        paper = PAPER["table1_ms"].get(model)
        for _, r in sub.sort_values("backend").iterrows():
            rows.append(
                [
                    model,
                    r["input_shape"],
                    r["backend"],
                    r["device"],
                    int(r["batch"]),
                    f"{r['median_ms']:.1f}",
                    f"{r['iqr_ms']:.1f}",
                    f"{r['min_ms']:.1f} .. {r['max_ms']:.1f}",
                    int(r["repeats"]),
                    f"{r['peak_rss_mib']:.0f}"
                    + (f" / GPU {r['cuda_peak_mib']:.0f}" if pd.notna(r.get("cuda_peak_mib")) else ""),
                    f"{paper:.0f}" if paper else "—",
                ]
            )
    return [
        "### Table 1 — one forward pass of a batch",
        "",
        f"Paper: {PAPER['table1_setting']}. Ours: one untimed warm-up batch, then the median of `repeats` "
        "timed batches (seeded noise input), peak resident memory of the timed block.",
        "",
        md_table(
            [
                "model",
                "input",
                "backend",
                "device",
                "batch",
                "median ms",
                "IQR ms",
                "min .. max ms",
                "repeats",
                "peak MiB",
                "paper K80 ms",
            ],
            rows,
        ),
        "",
    ]


def _fig12_section(env_dir: Path) -> list[str]:
    f12 = fig12_frame(env_dir)
    if f12.empty:
        return []
    rows = []
    for model in models_sorted(f12["model"]):
        for backend in sorted(f12[f12["model"] == model]["backend"].unique()):
            sub = f12[(f12["model"] == model) & (f12["backend"] == backend)].set_index("method")
            if not {"pda", "epda"} <= set(sub.index):
                continue
            p, e = sub.loc["pda"], sub.loc["epda"]

            def how(r: pd.Series) -> str:
                if bool(r["extrapolated"]):
                    return f"extrapolated from {int(r['extrapolated_from_windows'])} of {int(r['windows_total'])} windows"
                return f"measured, all {int(r['windows_total'])} windows"

            rows.append(
                [
                    model,
                    backend,
                    p["device"],
                    fmt_seconds(p["total_seconds"]),
                    fmt_seconds(p["sampling_seconds"]),
                    fmt_seconds(p["forward_seconds"]),
                    fmt_seconds(e["total_seconds"]),
                    f"{p['total_seconds'] / e['total_seconds']:.1f}x",
                    f"{how(p)}; {how(e)}",
                ]
            )
    first = f12.iloc[0]
    return [
        "### Figure 12 — time to explain one image",
        "",
        f"Setting: k={first['window']}, l={first['outer']}, S={int(f12['samples'].max())} (PDA), stride 1, batch "
        f"{first['batch']}, conditional Gaussian sampler (factorisations precomputed, not counted), the "
        "predicted class. Paper: PDA vs efficient PDA ≈ 10× "
        f"({PAPER['speedup_setting']}).",
        "",
        md_table(
            [
                "model",
                "backend",
                "device",
                "PDA total",
                "PDA sampling",
                "PDA forward",
                "efficient PDA total",
                "speed-up",
                "how",
            ],
            rows,
        ),
        "",
    ]


def _incremental_section(env_dir: Path) -> list[str]:
    """Incremental vs full inference (pda_repro/bench/incremental.py), with the ideal ratios and Krypton's."""
    frame = one_per_cell(read_frame(env_dir, "incremental"), ["model", "method"])
    if frame.empty:
        return []
    rows = []
    for model in models_sorted(frame["model"]):
        for method in ("epda", "pda"):
            sub = frame[(frame["model"] == model) & (frame["method"] == method)]
            if sub.empty:
                continue
            r = sub.iloc[0]
            target = "" if pd.isna(r.get("target_speedup")) else f"≥ {r['target_speedup']:g}×"
            how = (
                f"extrapolated from {int(r['windows_evaluated'])} of {int(r['windows_total'])} windows"
                if bool(r["extrapolated"])
                else f"all {int(r['windows_total'])} windows"
            )
            rows.append(
                [
                    model,
                    "efficient PDA" if method == "epda" else f"PDA (S={int(r['samples'])})",
                    fmt_seconds(r["full_seconds"]),
                    fmt_seconds(r["incremental_seconds"]),
                    f"**{r['speedup']:.2f}×**",
                    estimate_text(r),
                    target,
                    f"{r['ideal_ratio']:.2f}×",
                    f"{r['engine_ratio']:.2f}×",
                    f"{r['fraction_of_ideal']:.0%}",
                    f"{r['speedup_vs_full_default_batch']:.2f}×",
                    _ratio(r.get("layout_speedup")),
                    f"{r['peak_rss_full_mib']:.0f} / {r['peak_rss_incremental_mib']:.0f}",
                    f"{r['base_state_mib']:.1f}",
                    f"{r['max_abs_dprob']:.1e}",
                    f"{r['loop_overhead_fraction']:.1%}",
                    how,
                ]
            )
    first = frame.iloc[0]
    meta = read_meta(env_dir, "incremental").get("cells", {})
    loads = sorted({str(m.get("load_average_1_5_15")) for m in meta.values()})
    vgg = frame[(frame["model"] == "vgg16") & (frame["method"] == "epda")]
    krypton = ""
    if not vgg.empty:
        v = vgg.iloc[0]
        krypton = (
            f" Krypton (Nakandala et al. 2019), exact incremental occlusion on VGG-16 on a CPU: "
            f"{v['krypton_vgg16_cpu']:g}× (its paper); ours, efficient PDA on VGG-16: {v['speedup']:.2f}×."
        )
    return [
        "### Incremental inference — only what a window changes is recomputed",
        "",
        f"Setting: torch backend, {first['device']}, k={first['window']}, l={first['outer']}, S=10 (PDA), stride "
        f"{first['stride']}, batch {first['batch']} windows per call in both modes, 1 thread per library; per cell "
        "the same windows in the order full, incremental, incremental with contiguous maps, the same again, "
        "incremental, full (means of two runs each). *channels-last gain* = the contiguous runs' time / the "
        "incremental runs' time (the engine keeps its maps channels-last). "
        "*ideal* = full / incremental multiply-adds of convolutions and fully connected layers with each "
        "window's own changed box, over every window of a stride-1 run; *engine* = the same for the blocks "
        "the engine computes (one block size per batch); *whole-run estimate* = speed-up × engine ratio over "
        "every window / engine ratio over the timed windows. Full inference at the CPU default batch "
        f"({int(first['full_default_batch'])}) is the tool's behaviour before incremental inference."
        f"{krypton} Load average during the cells: {', '.join(loads)}.",
        "",
        md_table(
            [
                "model",
                "method",
                "full",
                "incremental",
                "speed-up",
                "whole-run estimate",
                "target",
                "ideal",
                "engine",
                "of ideal",
                "vs full at default batch",
                "channels-last gain",
                "peak RSS full / incr. [MiB]",
                "stored activations [MiB]",
                "max Δp",
                "loop overhead",
                "how",
            ],
            rows,
        ),
        "",
    ]


def _ratio(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.2f}×"


def estimate_text(r: Any) -> str:
    """The whole run's speed-up estimated from the timed windows (pda_repro/bench/incremental.py)."""
    value = r.get("speedup_run_estimate")
    return "" if value is None or pd.isna(value) else f"{value:.2f}×"


def _sampling_section(env_dir: Path) -> list[str]:
    lines = [
        "### Sampling time",
        "",
        f"Paper: ≈ {PAPER['sampling_seconds'] / 60:.0f} min for {PAPER['sampling_samples']:,} samples "
        f"({PAPER['sampling_setting']}).",
    ]
    f12 = fig12_frame(env_dir)
    if not f12.empty:
        pda = f12[f12["method"] == "pda"]
        for _, r in pda.iterrows():
            lines.append(
                f"- ours, inside PDA ({r['model']}, {r['backend']}): {r['sampling_seconds']:.2f} s for "
                f"{int(r['images_forwarded_total']):,} samples of a {r['window']}x{r['window']} window "
                f"(vectorised conditional sampler{', extrapolated' if bool(r['extrapolated']) else ''})"
            )
    sampler = read_meta(env_dir, "sampler")
    summary = sampler.get("summary")
    if isinstance(summary, dict) and summary:
        setting = sampler.get("setting", {})
        what = (
            ", ".join(f"{k}={v}" for k, v in setting.items()) if isinstance(setting, dict) else str(setting)
        )
        lines += ["", f"The sampler benchmark (`pda-repro benchmark sampler`; {what}):", ""]
        cols = sorted({k for v in summary.values() if isinstance(v, dict) for k in v})
        rows = [
            [name] + [fmt_cell(v.get(c)) for c in cols] for name, v in summary.items() if isinstance(v, dict)
        ]
        lines.append(md_table(["run"] + cols, rows))
    for path in sorted(env_dir.glob("sampler*.csv")):
        lines.append(f"\nSampler data: [{path.name}]({env_dir.name}/{path.name})")
    lines.append("")
    return lines


def _batch_section(env_dir: Path) -> list[str]:
    """Forward ms per image against batch size (`pda-repro benchmark batch`), one row per model/backend."""
    data = read_frame(env_dir, "batch_size")
    if data.empty:
        return []
    settings = read_meta(env_dir, "batch_size").get("settings", {})
    batches = sorted(int(b) for b in data["batch"].unique())
    rows = []
    for (model, backend), group in data.groupby(["model", "backend"], sort=False):
        by_batch = dict(zip(group["batch"].astype(int), group["ms_per_image_best"], strict=True))
        best = min(by_batch, key=by_batch.get)
        rows.append(
            [model, backend] + [f"{by_batch[b]:.3g}" if b in by_batch else "—" for b in batches] + [best]
        )
    threads = settings.get("threads", "?")
    return [
        "### Batch size on this CPU",
        "",
        f"Forward ms per image (best of {settings.get('rounds', '?')} rounds, {threads} thread(s) per library; "
        "`pda-repro benchmark batch`). The default batch on a CPU (pda_repro.backends.default_batch) is chosen "
        "from this table; the paper's 160 stays the benchmark setting.",
        "",
        md_table(["model", "backend"] + [f"batch {b}" for b in batches] + ["fastest"], rows),
        f"\nData: [batch_size.csv]({env_dir.name}/batch_size.csv)",
        "",
    ]


def _approx_section(env_dir: Path) -> list[str]:
    lines: list[str] = []
    f9 = best_profile_rows(read_frame(env_dir, "fig9_10"), ["model", "backend", "device", "weights"])
    if not f9.empty:
        rows = [
            [
                r["model"],
                r["backend"],
                r["layer"],
                int(r["neurons"]),
                f"{r['median_abs_mean']:.3g}",
                f"{r['median_std']:.3g}",
                f"{r['fraction_std_below_abs_mean']:.2f}",
                r["weights"],
            ]
            for _, r in f9.iterrows()
        ]
        lines += [
            "### Figs 9/10 — FC layers before ReLU under conditional sampling of the top-left window",
            "",
            "Paper: most neurons have mean and standard deviation near 0 and |mean| ≫ std (AlexNet, VGG-16, "
            "trained on ILSVRC).",
            "",
            md_table(
                [
                    "model",
                    "backend",
                    "layer",
                    "neurons",
                    "median abs(mean)",
                    "median std",
                    "fraction std < abs(mean)",
                    "weights",
                ],
                rows,
            ),
            "",
        ]
    f11 = best_profile_rows(read_frame(env_dir, "fig11"), ["model", "backend", "device", "weights"])
    if not f11.empty:
        sources = sorted(
            {c.get("images", "") for c in read_meta(env_dir, "fig11").get("cells", {}).values()} - {""}
        )
        rows = []
        for (model, backend, _), sub in f11.groupby(["model", "backend", "weights"]):
            d = sub["abs_am_minus_ngm"]
            rows.append(
                [
                    model,
                    backend,
                    len(sub),
                    int(sub["am_samples"].iloc[0]),
                    f"{d.median():.3g}",
                    f"{d.quantile(0.9):.3g}",
                    f"{d.max():.3g}",
                    f"{(d < 0.01).mean():.2f}",
                    sub["weights"].iloc[0],
                ]
            )
        lines += [
            "### Fig 11 — |arithmetic mean − normalised geometric mean|",
            "",
            "Paper (AlexNet, 200 ILSVRC images, 500 samples): for more than half of the images the error is "
            "very close to 0.",
            "",
            md_table(
                [
                    "model",
                    "backend",
                    "images",
                    "AM samples",
                    "median",
                    "90th pct",
                    "max",
                    "fraction < 0.01",
                    "weights",
                ],
                rows,
            ),
            "",
            *[f"Images: {src}." for src in sources],
            "",
        ]
    f16 = best_profile_rows(read_frame(env_dir, "fig16"), ["model", "backend", "device", "weights"])
    if not f16.empty:
        rows = []
        for (model, backend, _), sub in f16.groupby(["model", "backend", "weights"]):
            at = sub.set_index("S")
            picks = [s for s in (1, 10, 100, int(at.index.max())) if s in at.index]
            rows.append(
                [model, backend]
                + [f"{at.loc[s, 'abs_diff_median']:.3g}" for s in picks]
                + [", ".join(f"S={s}" for s in picks), sub["weights"].iloc[0]]
            )
        lines += [
            "### Fig 16 — |P_PDA(S) − P_epda| against S",
            "",
            "Paper: the difference fluctuates strongly for few samples and settles as S grows.",
            "",
            md_table(["model", "backend", "S=1", "S=10", "S=100", "S=max", "S values", "weights"], rows),
            "",
        ]
    return lines


def write_readme(
    results_dir: str | Path = RESULTS_DIR,
    figures: Sequence[Path] = (),
    qualitative: Sequence[Path] = (),
    notes: Sequence[str] = (),
) -> Path:
    """results/README.md: per env, our numbers beside the paper's, each with its setting, and the figures."""
    root = Path(results_dir)
    parts = [
        "# Benchmark results",
        "",
        "Generated by `pda-repro figures` (`make figures`) from the CSV/JSON files below — do not edit by hand.",
        "Every number comes with its setting; each CSV has a JSON beside it with the machine, library versions,",
        "git commit, exact command, date and load average of every cell. Quick-profile times of Figure 12 are",
        "extrapolated linearly from an evenly spread subset of windows and say so (`extrapolated`,",
        "`extrapolated_from_windows`). Absolute times depend on the machine; compare ratios across machines.",
        "",
        "## The paper's numbers (Shi et al., efficient PDA)",
        "",
        md_table(
            ["what", "paper", "setting"],
            [
                *[
                    [f"Table 1: {m} forward, batch 160", f"{v:.0f} ms", PAPER["table1_setting"]]
                    for m, v in PAPER["table1_ms"].items()
                ],
                [
                    "sampling for one image (PDA)",
                    f"≈ {PAPER['sampling_seconds'] / 60:.0f} min for {PAPER['sampling_samples']:,} samples",
                    PAPER["sampling_setting"],
                ],
                [
                    "Fig 12: PDA vs efficient PDA",
                    f"≈ {PAPER['speedup']:.0f}× faster",
                    PAPER["speedup_setting"],
                ],
            ],
        ),
        "",
    ]
    for env in envs(root):
        env_dir = root / env
        parts += [f"## {env}", ""]
        parts += _env_summary(env_dir) + [""]
        parts += _table1_section(env_dir)
        parts += _fig12_section(env_dir)
        parts += _incremental_section(env_dir)
        parts += module_incremental_section(env_dir)
        parts += _sampling_section(env_dir)
        parts += _batch_section(env_dir)
        parts += parallel_section(env_dir)
        parts += _approx_section(env_dir)
        parts += faithfulness_section(env_dir)
        mine = sorted(
            p for p in figures if p.name.endswith(f"{env}.png") or p.name.endswith(f"{env}_log.png")
        )
        if mine:
            parts += ["### Figures", ""] + [f"- [{p.name}](figures/{p.name})" for p in mine] + [""]
        data = sorted(p.name for p in env_dir.glob("*.csv"))
        parts += ["Data: " + ", ".join(f"[{d}]({env}/{d})" for d in data), ""]
    if qualitative:
        parts += (
            [
                "## Qualitative figures (Figs 13, 14, 15, 17, 18, 19 and baselines)",
                "",
                "Drawn from results/qualitative/ (maps as .npz, settings in the JSON beside each; see "
                "`pda-repro qualitative`).",
                "",
            ]
            + [f"- [{p.name}](figures/{p.name})" for p in sorted(qualitative)]
            + [""]
        )
    if notes:
        parts += ["## Not drawn", ""] + [f"- {n}" for n in notes] + [""]
    return atomic_write_text(root / "README.md", "\n".join(parts).rstrip() + "\n")
