"""`pda-repro benchmark run`: choose the cells for the requested models/backends/experiments and run them.

Model selections:
  * a zoo name, or several separated by commas;
  * ``all``: alexnet, vgg16, googlenet, mnist (+ efficientnet_lite0 when the zoo has it);
  * ``default`` (bare ``make benchmark``): every experiment for mnist with its trained weights, plus
    Table 1, Fig 12 and Figs 9/10 for alexnet — every table and figure for at least one model on both
    backends.
"""

from __future__ import annotations

from pathlib import Path

from pda_repro.bench import approximation, fig12, incremental, table1
from pda_repro.bench.cells import Cell, RunReport, run_cells
from pda_repro.bench.context import BACKENDS, BenchContext, available_models
from pda_repro.bench.faithfulness import cells as faithfulness
from pda_repro.bench.results import ResultStore, env_name
from pda_repro.bench.settings import RunSettings

EXPERIMENTS = ("table1", "fig12", "incremental", "approx")
# Long experiments run only when named (not part of "all"): the faithfulness runs take CPU hours at full scale.
OPT_IN_EXPERIMENTS = ("faithfulness",)
APPROX_FIGURES = ("fig9_10", "fig11", "fig16")  # what "approx" stands for; each may also be named alone
# What `--model default` runs: experiment -> models.
DEFAULT_PLAN: dict[str, tuple[str, ...]] = {
    "table1": ("mnist", "alexnet"),
    "fig12": ("mnist", "alexnet"),
    "incremental": ("mnist", "alexnet"),
    "approx": ("mnist", "alexnet"),
    "faithfulness": ("mnist", "efficientnet_lite0"),
}


def _builder(experiment: str):
    if experiment == "table1":
        return table1.cells
    if experiment == "fig12":
        return fig12.cells
    if experiment == "incremental":
        return incremental.cells
    if experiment == "faithfulness":
        return faithfulness.cells
    figures = APPROX_FIGURES if experiment == "approx" else (experiment,)
    return lambda ctx, models, backends: approximation.cells(ctx, models, backends, figures)


def parse_experiments(text: str) -> list[str]:
    """'table1,fig12' -> ['table1', 'fig12']; 'all' -> every experiment but the opt-in ones (faithfulness);
    'approx' = Figs 9/10, 11 and 16, which can also be named one by one (fig9_10, fig11, fig16); unknown names
    are an error."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or names == ["all"]:
        return list(EXPERIMENTS)
    known = EXPERIMENTS + APPROX_FIGURES + OPT_IN_EXPERIMENTS
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(
            f"unknown experiment(s) {', '.join(bad)}; expected some of {', '.join(known)} or all"
        )
    if "approx" in names:
        names = [n for n in names if n not in APPROX_FIGURES]
    return [e for e in known if e in names]


def parse_backends(text: str) -> list[str]:
    if text == "all":
        return list(BACKENDS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if not names or bad:
        raise ValueError(f"backend must be caffe, torch or all (or a comma list), got {text!r}")
    return names


def parse_models(text: str) -> list[str] | None:
    """None for 'default' (the per-experiment DEFAULT_PLAN); the model list otherwise."""
    if text == "default":
        return None
    known = available_models()
    if text == "all":
        return known
    from pda_repro import zoo

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError("--model needs a model name, 'all' or 'default'")
    for n in names:
        zoo.get(n)  # KeyError naming the known models
    return names


def _plan_name(experiment: str) -> str:
    return "approx" if experiment in APPROX_FIGURES else experiment


def plan_cells(
    ctx: BenchContext, models: list[str] | None, backends: list[str], experiments: list[str]
) -> list[Cell]:
    """Cells grouped by model, then backend (each net is loaded once and freed after its last cell), Table 1
    first (it calibrates the ETA)."""
    order: list[str] = []
    for exp in experiments:
        for m in DEFAULT_PLAN[_plan_name(exp)] if models is None else models:
            if m not in order:
                order.append(m)
    cells: list[Cell] = []
    for model in order:
        for backend in backends:
            for exp in experiments:
                if models is None and model not in DEFAULT_PLAN[_plan_name(exp)]:
                    continue
                cells.extend(_builder(exp)(ctx, [model], [backend]))
    return cells


def run(settings: RunSettings) -> RunReport:
    """Run the cells `settings` selects; results go to <settings.results_dir>/<env>/."""
    experiments = parse_experiments(settings.experiments)
    backends = parse_backends(settings.backend)
    models = parse_models(settings.model)
    if settings.weights is not None and (models is None or len(models) != 1):
        raise ValueError(
            f"--weights {settings.weights} belongs to one model: pass --model with exactly one name "
            f"(got --model {settings.model})"
        )
    from pda_repro.bench.timing import limit_threads

    limit_threads(settings.thread_limit)
    store = ResultStore(Path(settings.results_dir), env_name(settings.device))
    ctx = BenchContext(store=store, settings=settings)
    cells = plan_cells(ctx, models, backends, experiments)
    if settings.show_progress:
        print(f"benchmark: {len(cells)} cells -> {store.dir}", flush=True)
    report = run_cells(ctx, cells, show_progress=settings.show_progress)
    if settings.show_progress:
        print(
            f"benchmark: {len(report.written)} written, {len(report.skipped_existing)} already there, "
            f"{len(report.not_run)} not run, in {report.seconds:.0f} s",
            flush=True,
        )
        for label, why in report.not_run:
            print(f"  not run: {label}: {why}", flush=True)
    return report
