"""Incremental vs full inference on PyTorch models (ModuleBackend, torch.fx graph): a sibling of
pda_repro/bench/incremental.py, measured by its `measure_net` (the same ABBA order, batch, columns).

Setting: torchvision resnet18 with seeded random weights (seed 0; the speed of a forward pass does
not depend on the weights), torchvision's ImageNet preprocessing, efficient PDA, k=10, l=18, stride 1,
the predicted class of the Figure 12 photo, 1 torch thread; REPEATS ABBA measurements one after the
other, each of WINDOWS windows in runs of RUN consecutive windows spread over the image
(extrapolated to all windows as in the Caffe rows); the row is the repetition with the median
speed-up, with the range of all (a single run may see the machine's load change). The
conditional sampler is fitted on the bundled photos (cached on disk). Rows go to
results/<env>/incremental_module.csv/json with the machine's metadata.

    pda-repro benchmark module [--windows N] [--repeats N] [--force] [--readme [FILE]]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pda_repro.bench import incremental
from pda_repro.bench.context import BenchContext
from pda_repro.bench.results import RESULTS_DIR, ResultStore, command_line, env_name, replace_generated_block
from pda_repro.bench.settings import RunSettings

EXPERIMENT = "incremental_module"
MODELS = ("torchvision:resnet18",)
METHOD = "epda"
WINDOWS = 64
REPEATS = 7
DESCRIPTION = (
    "Incremental vs full inference of PyTorch models (torch.fx graph on the incremental engine): one efficient-PDA "
    "explanation timed in both modes on the same windows (order full, incremental, incremental, full), at the "
    "same batch, plus full inference at the CPU default batch; extrapolated from an evenly spread subset of windows."
)
COLUMNS = {
    **incremental.COLUMNS,
    "model": "PyTorch model (torchvision:<arch>, seeded random weights)",
    "backend": "torch-module (pda_repro.backends.module_backend)",
    "fraction_of_ideal_run_estimate": "speedup_run_estimate / ideal_ratio",
    "repeats": "ABBA measurements of the cell, one after the other; the row is the one with the median speed-up",
    "speedups": "the speed-up of every repetition, in order (space separated)",
    "speedup_min": "the smallest speed-up of the repetitions",
    "speedup_max": "the largest speed-up of the repetitions",
}


def sampler_for(ctx: BenchContext, net: Any, model: str) -> Any:
    """The conditional patch Gaussian fitted on the bundled photos preprocessed for the net."""
    from pda_repro.bench.inputs import SAMPLER_PATCHES, photo_inputs
    from pda_repro.data import photo_paths
    from pda_repro.sampling import PatchGaussian

    spec = net.model_spec
    scale = spec.scale if isinstance(spec.scale, tuple) else (spec.scale,)
    tag = (
        f"{model.replace(':', '-')}-{spec.channel_order}-mean{','.join(f'{m:g}' for m in spec.mean)}-scale"
        + ",".join(f"{s:g}" for s in scale)
    )
    return PatchGaussian.fit_cached(
        lambda: [x for _, x in photo_inputs(spec)], incremental.WINDOW, incremental.OUTER,
        channels=spec.input_shape[0], tag=tag, source="photos:" + ",".join(sorted(photo_paths())),
        n_patches=SAMPLER_PATCHES, seed=ctx.settings.seed,
    )  # fmt: skip


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the median speed-up (the upper one of an even count), with the repetitions' range."""
    speedups = [r["speedup"] for r in rows]
    row = dict(rows[sorted(range(len(rows)), key=speedups.__getitem__)[len(rows) // 2]])
    row.update(repeats=len(rows), speedups=" ".join(f"{v:.3f}" for v in speedups), speedup_min=min(speedups),
               speedup_max=max(speedups))  # fmt: skip
    return row


def measure(ctx: BenchContext, model: str, windows: int, repeats: int = REPEATS) -> dict[str, Any]:
    """The median of `repeats` rows of incremental.measure_net for a PyTorch model."""
    from pda_repro.bench.inputs import TIMING_PHOTO
    from pda_repro.data import photo_paths
    from pda_repro.explain import load_model
    from pda_repro.preprocess import load_image

    net = load_model(model, seed=ctx.settings.seed)
    image = load_image(photo_paths()[TIMING_PHOTO], net.model_spec).x
    sampler = sampler_for(ctx, net, model)
    sampler.precompute(*image.shape[1:])
    rows = [
        incremental.measure_net(
            ctx, net, model, METHOD, windows, image, TIMING_PHOTO, sampler, net.weights_source
        )
        for _ in range(repeats)
    ]
    row = median_row(rows)
    row["fraction_of_ideal_run_estimate"] = row["speedup_run_estimate"] / row["ideal_ratio"]
    return {"model": model, "backend": net.name, "device": ctx.settings.device, "method": METHOD, **row}


def run(
    results_dir: str | Path = RESULTS_DIR, windows: int = WINDOWS, force: bool = False, repeats: int = REPEATS
) -> Path:
    """Measure every model of MODELS not yet stored (all with force); returns the CSV path."""
    from pda_repro.bench.timing import limit_threads

    limit_threads(1)
    store = ResultStore(Path(results_dir), env_name("cpu"))
    settings = RunSettings(device="cpu", force=force, threads=1, command=command_line())
    ctx = BenchContext(store=store, settings=settings)
    for model in MODELS:
        key = {
            "model": model,
            "backend": "torch-module",
            "device": "cpu",
            "method": METHOD,
            "windows": windows,
            "repeats": repeats,
        }
        if not force and store.has_cell(EXPERIMENT, key):
            continue
        row = measure(ctx, model, windows, repeats)
        setting = (f"{model} k={incremental.WINDOW} l={incremental.OUTER} S=1 stride={incremental.STRIDE} {METHOD}, "
                   f"batch {row['batch']} windows per call, inference full vs incremental (ABBA), {windows} windows, "
                   f"median of {repeats} repetitions, torch-module backend, 1 torch thread")  # fmt: skip
        meta = ctx.cell_meta(setting=setting, batch=row["batch"])
        store.write_cell(EXPERIMENT, key, [row], meta, DESCRIPTION, COLUMNS)
    return store.csv_path(EXPERIMENT)


README_BLOCK = (
    "<!-- module-incremental: generated by `make figures` from results/*/incremental_module.csv -->",
    "<!-- /module-incremental -->",
)


def readme_table(results_dir: str | Path = RESULTS_DIR) -> str:
    """The measured rows of every env as a Markdown table (numbers only from the CSVs)."""
    import pandas as pd

    lines = ["| model | method | full | incremental | speed-up | whole-run estimate | ideal (MAC ratio) | "
             "fraction of ideal | range of repetitions | stored | 1-min load | setting |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for csv in sorted(Path(results_dir).glob(f"*/{EXPERIMENT}.csv")):
        meta = ResultStore(Path(results_dir), csv.parent.name).read_meta(EXPERIMENT).get("cells", {})
        for _, r in pd.read_csv(csv).iterrows():
            load = meta.get(r["cell"], {}).get("load_average_1_5_15", ["?"])[0]
            lines.append(
                f"| {r['model']} | efficient PDA | {r['full_seconds'] / 60:.1f} min | "
                f"{r['incremental_seconds'] / 60:.1f} min | {r['speedup']:.2f}× | {r['speedup_run_estimate']:.2f}× | "
                f"{r['ideal_ratio']:.2f}× | {r['fraction_of_ideal']:.0%} | {r['speedup_min']:.2f}–{r['speedup_max']:.2f}× "
                f"({int(r['repeats'])} runs) | {r['base_state_mib']:.0f} MiB | {load} | "
                f"{csv.parent.name}, k={r['window']}, l={r['outer']}, stride {r['stride']}, batch {int(r['batch'])}, "
                f"1 thread, {r['weights']} weights, median of {int(r['repeats'])} runs, extrapolated from {int(r['windows_evaluated'])} of "
                f"{int(r['windows_total'])} windows |"
            )  # fmt: skip
    return "\n".join(lines)


def results_section(env_dir: Path) -> list[str]:
    """results/README.md: the PyTorch-model rows of this env (nothing when none were measured)."""
    if not (Path(env_dir) / f"{EXPERIMENT}.csv").is_file():
        return []
    return [
        "### Incremental inference on PyTorch models (torch.fx)",
        "",
        "`pda-repro benchmark module` (`make bench-module`): full vs incremental inference, "
        "interleaved (ABBA), the ideal multiply-add ratio from pda_repro.incremental.cost.",
        "",
        readme_table(Path(env_dir).parent),
        "",
    ]


def update_readme(readme: str | Path, results_dir: str | Path = RESULTS_DIR) -> bool:
    """Replace the README's block between README_BLOCK's markers (atomically); False when it has none."""
    return replace_generated_block(readme, README_BLOCK, readme_table(results_dir)) is not None
