"""`python -m pda_repro.netspec [--out DIR] [NAME ...]`: (re)write the zoo's deploy prototxts."""

from __future__ import annotations

import argparse

from pda_repro.netspec import BUILDERS, write_models
from pda_repro.zoo import MODELS_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pda_repro.netspec", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BUILDERS, []], help="nets to write (default: all)")
    parser.add_argument("--out", default=str(MODELS_DIR), help="directory (default: the repo's models/)")
    args = parser.parse_args(argv)
    for path in write_models(args.out, args.names or None):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
