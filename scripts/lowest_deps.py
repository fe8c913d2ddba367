#!/usr/bin/env python3
"""Install the lowest diffusers (and transformers) that ``pyproject.toml`` allows into a folder.

    python scripts/lowest_deps.py [--root DIR]     # prints the folder; idempotent

The minimum versions are read from ``pyproject.toml`` (``diffusers>=X`` in the dependencies,
``transformers>=Y`` in the ``test`` extra), so the declared range is what gets tested. They are
installed with ``pip install --no-deps --target`` into ``DIR/diffusers-X_transformers-Y`` (default
``DIR``: ``<repo>/.venv/lowest``), together with the ``huggingface-hub`` and ``tokenizers`` versions
that this transformers declares (its own ``Requires-Dist``), so that ``PYTHONPATH=<folder>``
runs the tests against them on top of the normal environment (torch, peft, ... unchanged).
``scripts/pano360-dev test`` runs the diffusers-path tests once that way. Only the standard
library is imported here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the diffusers-path test files run against the lowest versions
TESTS = ("tests/test_dit360_edit.py", "tests/test_dit360_pipeline.py", "tests/test_jopano_pipeline.py")


def minimum(text: str, name: str) -> str:
    """The lowest version of ``name`` pyproject text allows: the highest of its ``>=`` bounds (the
    dependencies and the test extra may both name it)."""
    found = re.findall(rf'"{re.escape(name)}\s*>=\s*([0-9][0-9A-Za-z.]*)', text)
    if not found:
        raise SystemExit(f"lowest_deps: no '{name}>=' requirement in pyproject.toml")
    return max(found, key=lambda v: [int(x) for x in re.findall(r"\d+", v)])


def requires(dist_info: Path, name: str) -> str | None:
    """The version specifier a distribution's METADATA declares for ``name`` (without extras/markers)."""
    for line in (dist_info / "METADATA").read_text(encoding="utf-8").splitlines():
        if not line.startswith("Requires-Dist:") or ";" in line:
            continue
        req = line.split(":", 1)[1].strip()
        m = re.match(r"([A-Za-z0-9_.-]+)\s*(\(?)([^)]*)\)?", req)
        if m and m.group(1).lower().replace("_", "-") == name:
            return m.group(3).strip()
    return None


def pip(target: Path, *specs: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
           "--target", str(target), *specs]
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(REPO / ".venv" / "lowest"), help="parent folder of the install")
    ap.add_argument("--print-versions", action="store_true", help="print 'diffusers transformers' minima and exit")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless the diffusers/transformers this Python imports are the minima")
    args = ap.parse_args()
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    d, t = minimum(text, "diffusers"), minimum(text, "transformers")
    if args.print_versions:
        print(d, t)
        return 0
    if args.check:
        import diffusers
        import transformers

        def norm(v):
            parts = [int(x) for x in re.findall(r"\d+", v)[:3]]
            return parts + [0] * (3 - len(parts))

        got = (diffusers.__version__, transformers.__version__)
        ok = norm(got[0]) == norm(d) and norm(got[1]) == norm(t)
        print(f"diffusers {got[0]} (minimum {d}), transformers {got[1]} (minimum {t}): {'ok' if ok else 'MISMATCH'}")
        return 0 if ok else 1
    target = Path(args.root) / f"diffusers-{d}_transformers-{t}"
    stamp = target / ".complete"
    if not stamp.is_file():
        target.mkdir(parents=True, exist_ok=True)
        pip(target, f"diffusers=={d}", f"transformers=={t}")
        info = next(target.glob("transformers-*.dist-info"))
        extra = [f"{n}{requires(info, n) or ''}" for n in ("huggingface-hub", "tokenizers")]
        pip(target, *extra)
        stamp.write_text(f"diffusers=={d} transformers=={t} {' '.join(extra)}\n")
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
