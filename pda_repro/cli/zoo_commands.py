"""`pda-repro models` (the zoo with parameter counts) and `pda-repro prototxts` (our builders write
the zoo's deploy prototxts)."""

from __future__ import annotations

import argparse


def configure_models(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run_models(args: argparse.Namespace) -> int:
    """One line per zoo model: name, parameters, input shape, weights."""
    from pda_repro import zoo  # noqa: PLC0415

    header = ("model", "parameters", "input (C×H×W)", "weights")
    cells = [header] + [
        (r.name, f"{r.parameters:,}" if r.parameters is not None else "-", r.input_shape, r.weights)
        for r in zoo.model_table()
    ]
    widths = [max(len(str(c[i])) for c in cells) for i in range(3)]
    for c in cells:
        print(f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:<{widths[2]}}  {c[3]}")
    return 0


def configure_prototxts(parser: argparse.ArgumentParser) -> None:
    from pda_repro.netspec import BUILDERS  # noqa: PLC0415
    from pda_repro.zoo import MODELS_DIR  # noqa: PLC0415

    parser.add_argument(
        "names", nargs="*", metavar="NET", help=f"nets to write, of {', '.join(BUILDERS)} (default: all)"
    )
    parser.add_argument("--out", default=str(MODELS_DIR), help="directory (default: the repo's models/)")


def run_prototxts(args: argparse.Namespace) -> int:
    """Write the prototxts (pda_repro.netspec.write_models) and print their paths."""
    from pda_repro.cli.errors import CLIError  # noqa: PLC0415
    from pda_repro.netspec import BUILDERS, write_models  # noqa: PLC0415

    unknown = [n for n in args.names if n not in BUILDERS]
    if unknown:
        raise CLIError(
            f"no prototxt builder for {', '.join(map(repr, unknown))}; expected one of {', '.join(BUILDERS)}"
        )
    for path in write_models(args.out, args.names or None):
        print(path)
    return 0
