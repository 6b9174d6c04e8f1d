"""The commands of `pda-repro` in one table, its parser and entry point: each command is a
`configure(parser)` that adds its arguments and a `run(args) -> int | None` (None = exit 0)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pda_repro.bench.cli_commands import configure_benchmark, configure_figures, run_benchmark, run_figures
from pda_repro.bench.qualitative import command as qualitative_command
from pda_repro.cli import explain_args, explain_run, zoo_commands
from pda_repro.cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER_ERROR,
    PROG,
    CLIError,
    Interrupted,
    debug,
    describe,
    error,
    note,
)
from pda_repro.convert import efficientnet as convert_efficientnet
from pda_repro.evaluate import cli as evaluate_cli
from pda_repro.train import mnist as train_mnist


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every default (options whose default is None/off say in words what happens); keep the
    description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is None or action.default is False or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are ONE line on stderr (``pda-repro: error: ...``) and exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        sub = self.prog[len(PROG) :].strip() if self.prog.startswith(PROG) else ""
        error(message + f" (see '{PROG} {sub + ' ' if sub else ''}--help')")
        raise SystemExit(EXIT_USER_ERROR)


@dataclass(frozen=True)
class Command:
    """``pda-repro <name>``: `configure` and `run`, or a group of `subcommands` (``pda-repro train mnist``)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], int | None] | None = None
    description: str | None = None
    subcommands: tuple[Command, ...] = ()


COMMANDS: tuple[Command, ...] = (
    Command(
        "explain",
        "explain images: weight-of-evidence maps as .npz, .png and .json",
        explain_args.configure,
        explain_run.run,
        description=explain_args.DESCRIPTION,
    ),  # fmt: skip
    Command("models", "list the model zoo", zoo_commands.configure_models, zoo_commands.run_models),
    Command(
        "benchmark",
        "benchmarks: `benchmark run` (Table 1, Fig 12, Figs 9/10/11/16 into results/), `regress`, and the "
        "stand-alone measurements (batch, sampler, parallel, module, warm)",
        configure_benchmark,
        run_benchmark,
    ),  # fmt: skip
    Command(
        "figures",
        "draw every benchmark table/figure from results/ into results/figures/ and write results/README.md",
        configure_figures,
        run_figures,
    ),  # fmt: skip
    Command(
        "qualitative",
        "the paper's qualitative figures (13-19, baselines): compute their maps, render the PNGs",
        qualitative_command.configure,
        qualitative_command.run,
    ),  # fmt: skip
    Command(
        "evaluate",
        evaluate_cli.HELP,
        evaluate_cli.configure,
        evaluate_cli.run,
        description=evaluate_cli.DESCRIPTION,
    ),  # fmt: skip
    Command(
        "train",
        "train a zoo net with its framework's solver",
        subcommands=(Command("mnist", train_mnist.HELP, train_mnist.configure, train_mnist.run),),
    ),  # fmt: skip
    Command(
        "convert",
        "convert a pretrained net into a zoo model",
        subcommands=(
            Command(
                "efficientnet",
                convert_efficientnet.HELP,
                convert_efficientnet.configure,
                convert_efficientnet.run,
            ),
        ),
    ),  # fmt: skip
    Command(
        "prototxts",
        "(re)write the zoo's deploy prototxts from our builders",
        zoo_commands.configure_prototxts,
        zoo_commands.run_prototxts,
    ),  # fmt: skip
)


def _add(subparsers: Any, commands: Sequence[Command], path: str) -> None:
    seen: set[str] = set()
    for cmd in commands:
        if cmd.name in seen:
            raise ValueError(f"subcommand {cmd.name!r} is already registered")
        seen.add(cmd.name)
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help,
                                    formatter_class=HelpFormatter)  # fmt: skip
        if cmd.subcommands:
            nested = sub.add_subparsers(
                dest=f"{path}{cmd.name}_command", metavar="COMMAND", parser_class=Parser
            )
            nested.required = True
            _add(nested, cmd.subcommands, f"{path}{cmd.name}_")
            continue
        if cmd.configure is not None:
            cmd.configure(sub)
        sub.set_defaults(_run=cmd.run, _command=f"{path}{cmd.name}")


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The parser of `commands` (default: every command of pda-repro)."""
    from pda_repro import __version__  # noqa: PLC0415

    parser = Parser(
        prog=PROG,
        description="Prediction Difference Analysis (Zintgraf et al. 2017) and its efficient variant: "
        "explain image classifications of Caffe nets (pycaffe or PyTorch), PyTorch modules and ONNX graphs.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    _add(subparsers, commands, "")
    return parser


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = COMMANDS) -> int:
    """Entry point of the ``pda-repro`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(commands)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argument errors
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USER_ERROR
    try:
        code = args._run(args)
    except CLIError as exc:
        if debug():
            raise
        error(str(exc))
        return EXIT_USER_ERROR
    except Interrupted as exc:
        if exc.checkpoint is not None and exc.checkpoint.exists():
            note(f"interrupted; progress saved in {exc.checkpoint}; rerunning the same command resumes")
        else:
            note("interrupted before this image's first checkpoint; rerunning the same command resumes "
                 "(finished images are kept, this one starts again)")  # fmt: skip
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        note("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:  # any I/O fault not met more specifically: one line too
        if debug():
            raise
        error(describe(exc, "access"))
        return EXIT_USER_ERROR
    return EXIT_OK if code is None else int(code)
