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
    for sp in sub.choices.values():  # the size budget is an option of every subcommand
        sp.add_argument("--max-pixels", type=_max_pixels, default=None, metavar="N",
                        help="largest image (input or output) in pixels; default $PANO360_MAX_PIXELS or "
                        "134217728 (16384x8192)")
    return parser


def _max_pixels(text: str) -> int:
    from ._args import positive_int

    return positive_int(text)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors (2) and --help (0) return their exit code
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..budget import set_max_pixels

    try:
        set_max_pixels(args.max_pixels)
        return int(args.func(args) or 0)
    except PanoInputError as e:
        print(f"pano360 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"pano360 {args.command}: error: not enough memory for this input; choose a smaller size",
              file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"pano360 {args.command}: error:{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        set_max_pixels(None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
