"""``python -m pda_repro.cli``: the ``pda-repro`` command."""

from pda_repro.cli import main

raise SystemExit(main())
