"""The ``pda-repro`` command line: one tree of commands, registered in `pda_repro.cli.main.COMMANDS`.

    pda-repro explain IMAGE [IMAGE ...] [--model NAME|deploy.prototxt] [--method epda] ...
    pda-repro models | benchmark | figures | evaluate | train mnist | convert efficientnet | prototxts
    pda-repro --version

Each command is a ``configure(parser)`` adding its arguments and a ``run(args) -> int | None``; a run
raises :class:`CLIError` for a user error, printed as ``pda-repro: error: <message>`` (one line, no
traceback) with exit code 2. Ctrl-C exits 130. Set ``PDA_REPRO_DEBUG=1`` to see tracebacks.

Modules: errors (how errors and notes are printed), argtypes (argument types), main (the parser, the
table of commands, `main`), explain_args / explain_run / outputs / whole_images (`pda-repro explain`),
zoo_commands (`models`, `prototxts`).
"""

from __future__ import annotations

from pda_repro.cli.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, CLIError
from pda_repro.cli.main import COMMANDS, Command, build_parser, main

__all__ = ["COMMANDS", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "CLIError", "Command", "build_parser", "main"]
