"""The benchmark subcommands of ``pda-repro`` (registered through pda_repro.cli's plugin hook):

pda-repro benchmark run [--model M] [--backend B] [--device D] [--batch N] [--profile P]
                        [--weights W] [--force] [--experiments table1,fig12,incremental,approx]
pda-repro benchmark regress [--update-baseline] [--tolerance 2.0]
pda-repro figures [--results DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pda_repro.bench.results import RESULTS_DIR, command_line


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return n


def _threads(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 0 (0: library defaults), got {value!r}"
        ) from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (0: library defaults), got {value!r}")
    return n


def _factor(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a factor >= 1 (e.g. 2.0), got {value!r}") from None
    if not f >= 1:
        raise argparse.ArgumentTypeError(f"expected a factor >= 1 (e.g. 2.0), got {value!r}")
    return f


def configure_benchmark(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark_command", metavar="{run,regress}")
    sub.required = True
    run = sub.add_parser(
        "run",
        help="measure Table 1, Figure 12 and the approximation figures into results/<env>/",
        description="Measure Table 1 (forward time of a batch), Figure 12 (time to explain one image, PDA vs "
        "efficient PDA) and the approximation figures (9/10, 11, 16) into results/<env>/<experiment>.csv "
        "+ .json. Cells already measured are skipped unless --force; an interrupted run resumes.",
        formatter_class=parser.formatter_class,
    )
    run.add_argument(
        "--model",
        default="default",
        help="alexnet, vgg16, googlenet, mnist, efficientnet_lite0, a comma list, 'all' (the zoo), or "
        "'default' (mnist: everything; alexnet: Table 1, Fig 12, Figs 9/10 — a few minutes on 2 cores)",
    )
    run.add_argument("--backend", default="all", help="caffe, torch or all")
    run.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (cuda: torch backend)")
    run.add_argument("--batch", type=_positive_int, default=160, help="images per forward pass")
    run.add_argument(
        "--profile",
        default="quick",
        choices=("quick", "paper"),
        help="quick: Fig 12 on an evenly spread subset of windows, extrapolated (labelled); paper: "
        "every window",
    )
    run.add_argument(
        "--weights",
        default=None,
        help="a .caffemodel for the (single) --model (e.g. the official "
        "bvlc_alexnet.caffemodel); default: the zoo's trained weights, else seeded random",
    )
    run.add_argument("--force", action="store_true", help="re-measure cells already in results/")
    run.add_argument(
        "--experiments",
        default="table1,fig12,incremental,approx",
        help="comma list of table1, fig12, incremental, approx (Figs 9/10, 11, 16), or all; faithfulness (long) "
        "only when named",
    )
    run.add_argument("--results", default=str(RESULTS_DIR), help="results directory")
    run.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    run.add_argument(
        "--threads",
        type=_threads,
        default=1,
        help="threads per library (torch, numpy's and pycaffe's OpenBLAS); 0 = the libraries' defaults. One by "
        "default: on a shared machine multi-threaded pools oversubscribe the cores and timings stop meaning anything",
    )
    run.add_argument(
        "--workers",
        default="1",
        help="window methods' explain() runs: N Ray workers on this machine (1: in-process) or auto "
        "(pda_repro.parallel); the maps do not change, timings of 1-process cells do",
    )
    run.add_argument("--cluster", default=None, help="a running Ray cluster's address for those runs")
    run.add_argument(
        "--inference",
        choices=("auto", "incremental", "full"),
        default="auto",
        help="how Figure 12's explanations compute a window's forward pass: incremental where the backend "
        "has it (auto), or always full re-inference; the incremental experiment measures both",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress lines")
    run.add_argument(
        "--inner-progress", action="store_true", help="also a tqdm bar inside each explain() run"
    )
    reg = sub.add_parser(
        "regress",
        help="runtime regression check on ratios measured in one run (make regress)",
        description="Measure a small fixed configuration and compare ratios measured in this run (efficient/PDA "
        "time, vectorised/reference sampler time, torch/caffe forward time) with the ones stored in "
        "results/<env>/regress_baseline.json; exit 1 when one is worse than allowed.",
        formatter_class=parser.formatter_class,
    )
    reg.add_argument("--update-baseline", action="store_true", help="store this run's ratios as the baseline")
    reg.add_argument(
        "--tolerance",
        type=_factor,
        default=None,
        help="allowed factor for every ratio (default: the stored ones — 1.5 for efficient/PDA, 2 for the others)",
    )
    reg.add_argument("--results", default=str(RESULTS_DIR), help="results directory")


def run_benchmark(args: argparse.Namespace) -> int:
    from pda_repro.cli import CLIError

    if args.benchmark_command == "regress":
        from pda_repro.bench.regress import run_regress

        code = run_regress(
            args.results,
            update_baseline=args.update_baseline,
            tolerance=args.tolerance,
            command=command_line(),
        )
        return code
    from pda_repro import parallel
    from pda_repro.bench.run import RunRequest, run

    try:
        workers = args.workers if args.workers == "auto" else int(args.workers)
        parallel.set_defaults(workers, args.cluster)
        if args.cluster:
            parallel.make_executor(workers, args.cluster)  # a bad address: one line, exit 2, now
    except ValueError as exc:
        raise CLIError(f"--workers/--cluster: {exc}") from None
    request = RunRequest(
        model=args.model,
        backend=args.backend,
        device=args.device,
        batch=args.batch,
        profile=args.profile,
        weights=args.weights,
        force=args.force,
        experiments=args.experiments,
        results_dir=args.results,
        seed=args.seed,
        progress=not args.no_progress,
        inner_progress=args.inner_progress,
        threads=args.threads or None,
        inference=args.inference,
    )
    try:
        report = run(request, command=command_line())
    except (ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CLIError(str(msg)) from None
    return 1 if report.not_run and not (report.written or report.skipped_existing) else 0


def configure_figures(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        default=str(RESULTS_DIR),
        help="results directory (read; figures/ and README.md are written inside it)",
    )
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite results/README.md")


def run_figures(args: argparse.Namespace) -> int:
    from pda_repro.bench.figures import render_all

    done = render_all(args.results, readme=not args.no_readme)
    if not args.no_readme and Path(args.results).resolve() == Path(RESULTS_DIR).resolve():
        from pda_repro.bench.figures import update_project_readme
        from pda_repro.bench.incremental_module import update_readme as update_module_readme
        from pda_repro.bench.parallel_report import update_parallel_readme
        from pda_repro.bench.results import REPO_ROOT

        updated = update_project_readme(REPO_ROOT / "README.md", args.results)
        updated = update_parallel_readme(REPO_ROOT / "README.md", args.results) or updated
        if update_module_readme(REPO_ROOT / "README.md", args.results):
            updated = REPO_ROOT / "README.md"
        if updated is not None:
            print(updated)
    for path in [*done.figures, *done.qualitative]:
        print(path)
    for note in done.notes:
        print(f"figures: not drawn: {note}")
    if done.readme is not None:
        print(done.readme)
    if not done.figures:
        print(f"figures: nothing to draw under {args.results}/<env>/ (run `make benchmark` first)")
    return 0


def register(add_subcommand: Any) -> None:
    """Called by pda_repro.cli when it builds its parser."""
    add_subcommand(
        "benchmark",
        "benchmarks: `benchmark run` (Table 1, Fig 12, Figs 9/10/11/16 into results/) and `benchmark regress`",
        configure_benchmark,
        run_benchmark,
    )
    add_subcommand(
        "figures",
        "draw every benchmark table/figure from results/ into results/figures/ and write results/README.md",
        configure_figures,
        run_figures,
    )
