"""``pano360 doctor --comfyui PATH``: which model files each shipped workflow needs, present or not."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..doctor import report
from ..errors import PanoInputError

SHIPPED = Path(__file__).resolve().parents[2] / "workflows"


def run_doctor(args: argparse.Namespace) -> int:
    root = args.comfyui or os.environ.get("COMFYUI_PATH")
    if not root:
        raise PanoInputError("--comfyui: give the ComfyUI folder (or set COMFYUI_PATH)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise PanoInputError(f"--comfyui: {root} is not a folder")
    folder = Path(args.workflows) if args.workflows else SHIPPED
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise PanoInputError(f"--workflows: no workflow .json files in {folder}")
    text, missing = report(root, files)
    print(text)
    return 1 if (missing and args.strict) else 0


def register(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="list, per shipped workflow, which model files a ComfyUI has and where missing ones go",
        description="For every workflow (default: the pack's workflows/), list the model files its loader "
        "nodes name, whether they are in the ComfyUI's models/ folders, and where a missing file goes "
        "(with its source and licence for the weights our templates use).",
    )
    p.add_argument("--comfyui", default=None, help="ComfyUI folder (default: $COMFYUI_PATH)")
    p.add_argument("--workflows", default=None, help="folder of UI-format workflows (default: the shipped ones)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a model file is missing")
    p.set_defaults(func=run_doctor)
