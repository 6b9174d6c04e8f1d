"""How `pda-repro` reports: user errors as one line ``pda-repro: error: <message>`` and exit 2, notes on
stderr, Ctrl-C as exit 130. ``PDA_REPRO_DEBUG=1`` shows tracebacks instead."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROG = "pda-repro"
EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A user error: printed as one line ``pda-repro: error: <message>``, exit code 2."""


class Fatal(CLIError):
    """A user-facing error that ends the whole run (the output cannot be written)."""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) during an image; `checkpoint` is where its progress is, if saved."""

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__("interrupted")
        self.checkpoint = checkpoint


def debug() -> bool:
    """Whether PDA_REPRO_DEBUG asks for tracebacks."""
    return os.environ.get("PDA_REPRO_DEBUG", "") not in ("", "0")


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def error(message: str) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def describe(exc: OSError, action: str, path: Path | str | None = None) -> str:
    """One line for an OSError (pda_repro.io.describe_os_error)."""
    from pda_repro.io import describe_os_error  # noqa: PLC0415

    return describe_os_error(exc, action, path)
