"""Where the benchmarks find the full-size shared test panoramas (never a silent fallback).

Looked up in ``$PANO360_DATA`` when it is set (only there), else in
``<repo>/../shared/data/panoramas`` (the layout of the development machines) and
``/work/shared/data/panoramas``. When a panorama is in none of them the
benchmark stops and says where it looked; pass ``--image PATH`` (or set ``PANO360_DATA``) to use
another file, e.g. the 1024x512 copy in tests/assets, knowingly.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def data_dirs() -> list[Path]:
    if os.environ.get("PANO360_DATA"):
        return [Path(os.environ["PANO360_DATA"])]
    dirs = [ROOT.parent / "shared" / "data" / "panoramas", Path("/work/shared/data/panoramas")]
    return [d for i, d in enumerate(dirs) if d.resolve() not in {x.resolve() for x in dirs[:i]}]


def shared_panorama(name: str) -> Path:
    """Path of a shared panorama; SystemExit naming the folders tried when it is missing."""
    for d in data_dirs():
        if (d / name).is_file():
            return d / name
    tried = ", ".join(str(d) for d in data_dirs())
    raise SystemExit(
        f"benchmark input {name} not found (looked in {tried}); set PANO360_DATA to the folder of the "
        f"shared panoramas or pass --image PATH (tests/assets/{name} is a 1024x512 copy)"
    )
