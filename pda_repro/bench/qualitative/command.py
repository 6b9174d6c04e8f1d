"""``pda-repro qualitative {compute, render}``: compute the qualitative figures' maps (resumable), or
draw the PNGs from the stored data only.

    pda-repro qualitative compute [--force] [--only fig13,fig14,...] [--subjects a,b] [--workers N]
    pda-repro qualitative render [--only ...]
"""

from __future__ import annotations

import argparse
import sys

from pda_repro.bench.qualitative.specs import FIGURE_KEYS, Settings
from pda_repro.bench.results import RESULTS_DIR

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `compute` and `render` subcommands and their options to `parser`."""
    sub = parser.add_subparsers(dest="qualitative_command", metavar="{compute,render}", required=True)
    c = sub.add_parser("compute", help="compute and save the maps (resumable)")
    c.add_argument("--force", action="store_true", help="recompute maps that exist")
    c.add_argument("--only", help=f"comma-separated figures: {','.join(FIGURE_KEYS)} (or full names)")
    c.add_argument("--results-dir", default=str(RESULTS_DIR))
    c.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    c.add_argument(
        "--photo-stride",
        type=int,
        default=Settings.photo_stride,
        help="window stride of the PDA comparisons on the photos (Figs 14/15, occlusion); 1 = full "
        "resolution (S forward passes per window and photo)",
    )
    c.add_argument(
        "--batch",
        type=int,
        default=None,
        help=f"images per forward pass on the photos (default {Settings.photo_batch} on cpu, the backend's "
        "default on cuda)",
    )
    c.add_argument(
        "--subjects",
        help="comma-separated image names: compute only these (e.g. to share the work among processes); "
        "figure JSONs are written by a later run without --subjects",
    )
    c.add_argument(
        "--workers", default="1", help="window methods on N Ray workers (or auto; pda_repro.parallel)"
    )
    c.add_argument("--cluster", default=None, help="a running Ray cluster's address for the window methods")
    c.add_argument("--no-progress", action="store_true")
    r = sub.add_parser("render", help="draw the PNGs from the saved data only")
    r.add_argument("--results-dir", default=str(RESULTS_DIR))
    r.add_argument("--only", help="comma-separated figures")


def _split(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    """Run the subcommand `configure` parsed; user errors raise pda_repro.cli.CLIError."""
    if args.qualitative_command == "compute":
        return _compute(args)
    from pda_repro.bench.qualitative.render import render_qualitative

    notes: list[str] = []
    for path in render_qualitative(args.results_dir, figures=_split(args.only), notes=notes):
        print(path)
    for note in notes:
        print(f"skipped: {note}", file=sys.stderr)
    return 0


def _compute(args: argparse.Namespace) -> int:
    from pda_repro.cli import CLIError

    for option, value in (("--threads", args.threads), ("--photo-stride", args.photo_stride)):
        if value < 1:
            raise CLIError(f"{option} must be >= 1, got {value}")
    if args.batch is not None and args.batch < 1:
        raise CLIError(f"--batch must be >= 1, got {args.batch}")
    from pda_repro import parallel

    try:
        parallel.set_defaults(args.workers if args.workers == "auto" else int(args.workers), args.cluster)
    except ValueError as exc:
        raise CLIError(f"--workers/--cluster: {exc}") from None
    import torch

    from pda_repro.backends import default_batch
    from pda_repro.bench.qualitative.maps import compute
    from pda_repro.bench.qualitative.paper import default_setup

    batch = args.batch or (Settings.photo_batch if args.device == "cpu" else default_batch(args.device))
    settings = Settings(seed=args.seed, device=args.device, photo_stride=args.photo_stride, photo_batch=batch)
    torch.set_num_threads(args.threads)
    try:
        report = compute(
            default_setup(settings),
            only=_split(args.only),
            results_dir=args.results_dir,
            force=args.force,
            progress=not args.no_progress,
            seed=args.seed,
            subjects=_split(args.subjects),
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {len(report.json_files)} figure JSON files")
    return 0
