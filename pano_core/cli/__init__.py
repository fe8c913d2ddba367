"""The ``pano360`` command.

Lives here: argument parsing and file I/O of the subcommands. Not here: any panorama math or
model code (the subcommands call ``pano_core``'s packages).

Subcommands live in modules of this package; each module defines
``register(subparsers)`` which adds its parsers and sets ``func`` on them
(``func(args) -> int``). Modules are discovered automatically.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import PanoInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pano360", description="360° panorama tools (Pano360).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors (2) and --help (0) return their exit code
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PanoInputError as e:
        print(f"pano360 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
