"""Shared argparse helpers of the ``pano360`` subcommands.

Argument types (``type=`` callables that raise :class:`argparse.ArgumentTypeError`, so a bad
value is an argparse usage error with exit code 2) and the output checks every subcommand
makes before doing any work. Private module (leading underscore): not a subcommand module.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from ..errors import PanoInputError
from ..io import IMAGE_SUFFIXES

__all__ = [
    "positive_int",
    "nonneg_int",
    "finite_float",
    "fraction",
    "angle",
    "fov",
    "size_wh",
    "add_device_args",
    "add_force",
    "check_image_output",
    "check_not_input",
]


def _int(text: str, minimum: int, expected: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return v


def _float(text: str, expected: str, expected_finite: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected {expected_finite}, got {text!r}")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int(text, 1, "a positive integer")


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    return _int(text, 0, "an integer >= 0")


def finite_float(text: str) -> float:
    """A finite number (no nan/inf)."""
    return _float(text, "a number", "a finite number")


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    v = finite_float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def angle(text: str) -> float:
    """A finite angle in degrees."""
    return _float(text, "an angle in degrees", "a finite angle in degrees")


def fov(text: str) -> float:
    """A field of view in degrees, 0 < fov < 180 (a pinhole view cannot see 180 degrees)."""
    v = _float(text, "a field of view in degrees", "a finite field of view in degrees")
    if not 0.0 < v < 180.0:
        raise argparse.ArgumentTypeError(f"expected a field of view in degrees between 0 and 180 (exclusive), got {text!r}")
    return v


def size_wh(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (e.g. ``640x480``) -> ``(width, height)``, both >= 1."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def add_device_args(p: argparse.ArgumentParser, vae_tiling_help: str = "decode in tiles (less memory for large panoramas)",
                    offload_help: str = "CPU offload: model (one whole model at a time on the GPU) or sequential "
                                        "(layer by layer, slowest)") -> None:
    """``--device``, ``--dtype``, ``--offload`` and ``--vae-tiling`` of the generators."""
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="weights dtype (default auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--offload", choices=("none", "model", "sequential"), default="none", help=offload_help)
    p.add_argument("--vae-tiling", action="store_true", help=vae_tiling_help)


def add_force(p: argparse.ArgumentParser, help: str = "overwrite an existing output file") -> None:
    """The ``--force`` flag: outputs are never overwritten without it."""
    p.add_argument("--force", action="store_true", help=help)


def check_image_output(path: str, force: bool, name: str = "-o/--output") -> Path:
    """Cheap check before any work: a supported image suffix, and no existing file unless ``force``.

    Creates nothing (unlike :func:`pano_core.io.check_writable`, which the writers call at the end).
    """
    out = Path(path)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise PanoInputError(f"{name}: unsupported file type {out.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if out.exists() and not force:
        raise PanoInputError(f"output: {out} already exists; pass --force to overwrite it")
    return out


def check_not_input(input_path: str, output_path: str, force: bool) -> Path:
    """Refuse to write over the input file unless ``force``; returns the output path."""
    out = Path(output_path)
    if Path(input_path).resolve() == out.resolve() and not force:
        raise PanoInputError(f"output: {out} is the input; pass --force to overwrite it")
    return out
