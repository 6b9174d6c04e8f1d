"""The benchmark subcommands of ``pda-repro`` (imported by pda_repro's command line):

pda-repro benchmark run [--model M] [--backend B] [--device D] [--batch N] [--profile P]
                        [--weights W] [--force] [--experiments table1,fig12,incremental,approx]
pda-repro benchmark regress [--update-baseline] [--tolerance F]
pda-repro benchmark batch|sampler|parallel|module ...   (stand-alone measurements into results/<env>/)
pda-repro benchmark warm --model M                        (fill the faithfulness caches; one per core)
pda-repro figures [--results DIR]

`benchmark run`'s options fill one RunSettings (pda_repro.bench.settings), which the runner and every
experiment read.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pda_repro.bench.results import RESULTS_DIR, command_line

if TYPE_CHECKING:
    from pda_repro.bench.settings import RunSettings


def _names(value: str) -> list[str]:
    """'a,b' -> ['a', 'b'] (empty items dropped)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _positive_ints(value: str) -> list[int]:
    from pda_repro.cli.argtypes import positive_int  # pda_repro.cli imports this module

    items = _names(value)
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers >= 1, got {value!r}")
    return [positive_int(v) for v in items]


def configure_benchmark(parser: argparse.ArgumentParser) -> None:
    from pda_repro.cli.argtypes import float_at_least, int_at_least, positive_int  # pda_repro.cli imports us

    sub = parser.add_subparsers(
        dest="benchmark_command", metavar="{run,regress,batch,sampler,parallel,module,warm}"
    )
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
        "'default' (mnist: everything; alexnet: Table 1, Fig 12, Figs 9/10)",
    )
    run.add_argument("--backend", default="all", help="caffe, torch or all")
    run.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (cuda: torch backend)")
    run.add_argument("--batch", type=positive_int, default=160, help="images per forward pass")
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
    run.add_argument("--results", dest="results_dir", default=str(RESULTS_DIR), help="results directory")
    run.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    run.add_argument(
        "--threads",
        type=int_at_least(0, " (0: library defaults)"),
        default=1,
        help="threads per library (torch, numpy's and pycaffe's OpenBLAS); 0 = the libraries' defaults. One by "
        "default: where other processes share the cores, multi-threaded pools oversubscribe them and timings stop "
        "meaning anything",
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
    run.add_argument("--no-progress", dest="show_progress", action="store_false", help="no progress lines")
    run.add_argument(
        "--inner-progress",
        dest="show_inner_progress",
        action="store_true",
        help="also a tqdm bar inside each explain() run",
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
        type=float_at_least(1, "a factor", " (e.g. 2.0)"),
        default=None,
        help="allowed factor for every ratio (default: the stored ones — 1.5 for efficient/PDA, 2 for the others)",
    )
    reg.add_argument("--results", default=str(RESULTS_DIR), help="results directory")
    _configure_measurements(sub, parser.formatter_class)


def _configure_measurements(sub: Any, formatter: Any) -> None:
    """The stand-alone measurements: batch, sampler, parallel, module, and the faithfulness warm-up."""
    from pda_repro.bench import batch_size, incremental_module, parallel_speed
    from pda_repro.cli.argtypes import float_at_least, int_at_least, non_negative_int, positive_int

    threads = int_at_least(0, " (0: library defaults)")
    results = {"default": str(RESULTS_DIR), "help": "results directory"}
    b = sub.add_parser(
        "batch",
        help="forward time per image against batch size -> results/<env>/batch_size.csv",
        description=batch_size.__doc__.split("\n\n")[0],
        formatter_class=formatter,
    )
    b.add_argument("--models", type=_names, default=list(batch_size.DEFAULT_MODELS))
    b.add_argument("--backends", type=_names, default=["torch"])
    b.add_argument("--batches", type=_positive_ints, default=list(batch_size.DEFAULT_BATCHES))
    b.add_argument("--rounds", type=positive_int, default=3)
    b.add_argument("--min-images", type=positive_int, default=32)
    b.add_argument("--threads", type=threads, default=1, help="threads per library; 0 = library defaults")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--results-dir", **results)
    s = sub.add_parser(
        "sampler",
        help="all conditional samples of one image, vectorised vs per-window reference -> sampler.csv",
        description="Sampler benchmark: all conditional samples PDA needs for one image (paper Sec. 2, "
        "'Sampling Time'), vectorised vs the per-window reference.",
        formatter_class=formatter,
    )
    s.add_argument("--reference-windows", type=positive_int, default=200)
    s.add_argument("--repeats", type=positive_int, default=3)
    s.add_argument(
        "--reference-windows-default-threads",
        type=non_negative_int,
        default=40,
        help="windows for the reference with default BLAS threads (0: skip)",
    )
    s.add_argument("--results-dir", **results)
    p = sub.add_parser(
        "parallel",
        help="window-loop throughput on Ray workers vs one process -> results/<env>/parallel.csv",
        description=parallel_speed.__doc__.split("\n\n")[0],
        formatter_class=formatter,
    )
    p.add_argument("--models", type=_names, default=list(parallel_speed.DEFAULT_MODELS))
    p.add_argument("--rounds", type=positive_int, default=2)
    p.add_argument("--chunks", type=positive_int, default=8, help="work units per run (windows split evenly)")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--before-model", default="efficientnet_lite0", help="model of the 'before' timing")
    p.add_argument("--windows", type=positive_int, default=None, help="windows per model (default: WINDOWS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--full-image",
        type=_names,
        default=["efficientnet_lite0", "vgg16"],
        help="models (comma-separated) whose whole image (every window at --full-image-stride) is also run, "
        "once per config ('' to skip)",
    )
    p.add_argument("--full-image-stride", type=positive_int, default=2)
    p.add_argument(
        "--scaling-rounds", type=positive_int, default=3, help="rounds of the machine-scaling test"
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows and per-model settings of models not run now from the existing parallel.csv/.json",
    )
    p.add_argument(
        "--projection-only",
        action="store_true",
        help="measure the driver's per-chunk costs and add the projection to an existing parallel.json",
    )
    p.add_argument("--results-dir", **results)
    m = sub.add_parser(
        "module",
        help="incremental vs full inference on PyTorch models -> results/<env>/incremental_module.csv",
        description=incremental_module.__doc__.splitlines()[0],
        formatter_class=formatter,
    )
    m.add_argument(
        "--windows", type=positive_int, default=incremental_module.WINDOWS, help="windows timed per mode"
    )
    m.add_argument(
        "--repeats",
        type=positive_int,
        default=incremental_module.REPEATS,
        help="ABBA repetitions (the median is kept)",
    )
    m.add_argument("--results", **results)
    m.add_argument("--force", action="store_true", help="re-measure stored cells")
    m.add_argument(
        "--readme",
        nargs="?",
        const="README.md",
        default=None,
        metavar="FILE",
        help="only regenerate the table in FILE (default README.md) from the results",
    )
    w = sub.add_parser(
        "warm",
        help="compute the faithfulness maps and metric evaluations ahead of the cells (run several at once)",
        description="Compute every map and metric evaluation of a model's faithfulness plan into "
        "results/faithfulness/ (the window maps and evaluations) and the cache (one-pass maps), each task "
        "claimed with a lock file, so that several processes share the work; "
        "`benchmark run --experiments faithfulness` then reads them.",
        formatter_class=formatter,
    )
    w.add_argument("--model", required=True)
    w.add_argument("--profile", default="quick", choices=("quick", "paper"))
    w.add_argument("--threads", type=threads, default=1, help="threads per library; 0 = library defaults")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument(
        "--stop-after",
        type=float_at_least(0.0, "seconds"),
        default=None,
        metavar="SECONDS",
        help="start no new task after this many seconds (the task under way is finished)",
    )


def _run_measurement(args: argparse.Namespace) -> int:
    command = args.benchmark_command
    if command == "batch":
        from pda_repro.bench import batch_size

        batch_size.run(args.models, args.backends, args.batches, args.rounds, args.min_images, args.threads,
                       args.seed, args.results_dir)  # fmt: skip
    elif command == "sampler":
        from pda_repro.bench import sampler_speed

        sampler_speed.run(args.reference_windows, args.repeats, args.reference_windows_default_threads,
                          args.results_dir)  # fmt: skip
    elif command == "parallel":
        from pda_repro.bench import parallel_speed

        parallel_speed.run(
            args.models, args.rounds, args.chunks, args.workers, args.before_model, args.windows, args.seed,
            args.full_image, args.full_image_stride, args.scaling_rounds, args.merge, args.projection_only,
            args.results_dir,
        )  # fmt: skip
    elif command == "module":
        from pda_repro.bench import incremental_module

        if args.readme:
            updated = incremental_module.update_readme(args.readme, args.results)
            print(f"{args.readme}: {'updated' if updated else 'no block'}")
        else:
            print(incremental_module.run(args.results, args.windows, args.force, args.repeats))
    else:
        from pda_repro.bench.context import BenchContext
        from pda_repro.bench.faithfulness.warm import warm
        from pda_repro.bench.results import ResultStore, env_name
        from pda_repro.bench.settings import RunSettings
        from pda_repro.bench.timing import limit_threads

        settings = RunSettings(
            profile=args.profile, seed=args.seed, threads=args.threads, command=command_line()
        )
        limit_threads(settings.thread_limit)
        ctx = BenchContext(store=ResultStore(RESULTS_DIR, env_name()), settings=settings)
        from pda_repro.bench.cells import CellSkipped

        try:
            n = warm(ctx, args.model, say=lambda m: print(m, flush=True), stop_after=args.stop_after)
        except CellSkipped as exc:
            raise ValueError(f"benchmark warm --model {args.model}: {exc}") from None
        print(f"done: {n} tasks", flush=True)
    return 0


def _settings(args: argparse.Namespace) -> RunSettings:
    """The RunSettings `benchmark run`'s options name (each option's dest is a RunSettings field)."""
    from pda_repro.bench.settings import RunSettings

    names = {f.name for f in dataclasses.fields(RunSettings)} - {"command"}
    return RunSettings(**{n: getattr(args, n) for n in names}, command=command_line())


def run_benchmark(args: argparse.Namespace) -> int:
    from pda_repro.cli import CLIError

    if args.benchmark_command == "regress":
        from pda_repro.bench.regress import run_regress

        return run_regress(
            args.results,
            update_baseline=args.update_baseline,
            tolerance=args.tolerance,
            command=command_line(),
        )
    if args.benchmark_command != "run":
        try:
            return _run_measurement(args)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    from pda_repro import parallel
    from pda_repro.bench.runner import run

    try:
        settings = _settings(args)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        workers = settings.workers if settings.workers == "auto" else int(settings.workers)
        parallel.set_defaults(workers, settings.cluster)
        if settings.cluster:
            parallel.make_executor(workers, settings.cluster)  # a bad address: one line, exit 2, now
    except ValueError as exc:
        raise CLIError(f"--workers/--cluster: {exc}") from None
    try:
        report = run(settings)
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
