"""The ``pda-repro`` command line: one tree of commands, the table `pda_repro.cli.commands.COMMANDS`.

    pda-repro explain IMAGE [IMAGE ...] [--model NAME|deploy.prototxt] [--method epda] ...
    pda-repro models | benchmark | figures | evaluate | train mnist | convert efficientnet | prototxts
    pda-repro --version

Each command is a ``configure(parser)`` adding its arguments and a ``run(args) -> int | None``; a run
raises :class:`CLIError` for a user error, printed as ``pda-repro: error: <message>`` (one line, no
traceback) with exit code 2. Ctrl-C exits 130. Set ``PDA_REPRO_DEBUG=1`` to see tracebacks.

Modules: errors (how errors and notes are printed), argtypes (argument types), commands (the table of
commands, the parser, `main`), explain_args / explain_run / outputs / whole_images (`pda-repro
explain`), zoo_commands (`models`, `prototxts`). The command tree is imported on first use of
`main`, `build_parser`, `COMMANDS` or `Command`: the modules whose commands it lists import `errors` and
`argtypes` from here without importing the tree (and so themselves) first.
"""

from __future__ import annotations

from typing import Any

from pda_repro.cli.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, CLIError

__all__ = ["COMMANDS", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "CLIError", "Command", "build_parser", "main"]

_TREE = frozenset({"COMMANDS", "Command", "build_parser", "main"})


def __getattr__(name: str) -> Any:
    if name in _TREE:
        from pda_repro.cli import commands  # noqa: PLC0415

        return getattr(commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
