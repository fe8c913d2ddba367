"""Cubemaps as files: a folder of six face images or one layout image (shared by the CLIs)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..budget import guard_alloc
from ..errors import PanoInputError
from ..io import (
    IMAGE_SUFFIXES,
    check_writable,
    decode_image,
    encode_image,
    image_bits,
    pixels_to_float,
    probe_image,
    read_image,
    to_uint_hwc,
    write_files,
)
from ..validate import check_choice
from .cube import DICE_XY, guess_layout, layout_to_faces
from .directions import FACE_NAMES

FILE_LAYOUTS = ("dict", "list", "horizon", "dice", "stack")


def _face_file(folder: Path, name: str) -> Path | None:
    for suf in IMAGE_SUFFIXES:
        for cand in (folder / f"{name}{suf}", folder / f"{name.lower()}{suf}"):
            if cand.is_file():
                return cand
    return None


def read_cubemap(path: str | os.PathLike, layout: str | None = None, name: str = "cubemap") -> tuple[torch.Tensor, int]:
    """Read a cubemap -> (faces (6, C, S, S) float 0..1, bit depth 8 or 16).

    ``path`` is either a folder holding ``F R B L U D`` images (``F.png`` ...; any supported image
    type, upper or lower case names) or one image in a layout: ``horizon`` (6 S x S, faces side by
    side), ``dice`` (4 S x 3 S cross) or ``stack`` (S x 6 S, faces F R B L U D top to bottom).
    ``layout`` ``None``/``dict``/``list`` for an image means: guess it from the aspect ratio.
    """
    p = Path(path)
    if layout is not None:
        check_choice(layout, "format", FILE_LAYOUTS)
    if p.is_dir():
        files = {}
        missing = []
        for k in FACE_NAMES:
            f = _face_file(p, k)
            if f is None:
                missing.append(k)
            files[k] = f
        if missing:
            raise PanoInputError(
                f"{name}: folder {p} lacks face image(s) {' '.join(missing)} (expected F R B L U D, e.g. F.png)"
            )
        faces = {k: read_image(f, f"{name} face {k}") for k, f in files.items()}
        chans = {t.shape[1] for t in faces.values()}
        if len(chans) != 1:
            # mixing grey/RGB/RGBA faces: bring all to the largest count of colour channels
            cmax = max(chans)
            faces = {k: _to_channels(t, cmax) for k, t in faces.items()}
        stack = layout_to_faces(faces, "dict", name)
        bits = max(image_bits(f) for f in files.values())
        return stack, bits
    if not p.exists():
        raise PanoInputError(f"{name}: {p} not found (expected a folder of F R B L U D images or a layout image)")
    w, h, bits, orientation = probe_image(p, name)
    if orientation >= 5:  # EXIF: displayed rotated by 90 degrees
        w, h = h, w
    lay = layout if layout in ("horizon", "dice", "stack") else guess_layout(h, w)
    if lay is None:
        raise PanoInputError(
            f"{name}: cannot tell the cubemap layout of a {w}x{h} image; expected horizon (6:1), dice (4:3) "
            "or stack (1:6), or a folder of F R B L U D images"
        )
    src, order, scale = decode_image(p, name)
    h, w = src.shape[:2]  # after the EXIF orientation
    if lay == "stack":
        if h != 6 * w:
            raise PanoInputError(f"{name}: a stack cubemap image must be 1:6 (six square faces on top of each other); got {w}x{h}")
        s = w
        cells = [(0, k) for k in range(6)]
    elif lay == "horizon":
        if w != 6 * h:
            raise PanoInputError(f"{name}: a horizon cubemap must be 6:1 (width = 6 x height); got {w}x{h}")
        s = h
        cells = [(k, 0) for k in range(6)]
    else:
        if h % 3 or w % 4 or w // 4 != h // 3:
            raise PanoInputError(f"{name}: a dice cubemap must be 4:3 (4 x 3 square faces); got {w}x{h}")
        s = h // 3
        cells = list(DICE_XY)
    # cut the faces from the integer pixels and convert each once: no float copy of the canvas
    with guard_alloc(f"{name} ({p.name}, faces {s}x{s})"):
        out = np.empty((6, s, s, len(order)), dtype=np.float32)
        for k, (cx, cy) in enumerate(cells):
            pixels_to_float(src[cy * s : (cy + 1) * s, cx * s : (cx + 1) * s], order, scale, out=out[k])
    del src
    return torch.from_numpy(out).permute(0, 3, 1, 2), bits


def _to_channels(t: torch.Tensor, c: int) -> torch.Tensor:
    if t.shape[1] == c:
        return t
    if t.shape[1] == 1:
        t = t.expand(-1, min(c, 3), -1, -1)
    if t.shape[1] == 3 and c == 4:
        t = torch.cat([t, torch.ones_like(t[:, :1])], 1)
    return t


def check_cubemap_output(path: str | os.PathLike, layout: str, force: bool = False, suffix: str = ".png") -> list[Path]:
    """Check where :func:`write_cubemap` would write, before any work (see ``io.check_writable``)."""
    check_choice(layout, "format", FILE_LAYOUTS)
    p = Path(path)
    if layout in ("dict", "list"):
        if p.exists() and not p.is_dir():
            raise PanoInputError(f"output: {p} exists and is not a folder (dict/list write six face images)")
        return [check_writable(p / f"{k}{suffix}", force) for k in FACE_NAMES]
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise PanoInputError(f"output: unsupported file type {p.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    return [check_writable(p, force)]


def write_cubemap(
    path: str | os.PathLike, faces: torch.Tensor, layout: str, bits: int = 8, force: bool = False, suffix: str = ".png"
) -> list[Path]:
    """Write (6, C, S, S) faces: ``dict``/``list`` -> folder ``path`` with F.png R.png ... D.png;
    ``horizon``/``dice``/``stack`` -> one image at ``path`` (``stack``: faces top to bottom).

    Values are clamped to 0..1. Refuses to overwrite existing files unless ``force``; a set of six
    files is written all-or-nothing; returns the written paths. The faces are converted to integers
    one by one and laid out as integers (no float copy of the layout image).
    """
    check_choice(layout, "format", FILE_LAYOUTS)
    if bits not in (8, 16):
        raise PanoInputError(f"bits: expected 8 or 16, got {bits}")
    p = Path(path)
    if layout in ("dict", "list"):
        targets = check_cubemap_output(p, layout, force, suffix)  # all first: never a partial set
        bufs = [encode_image(t, to_uint_hwc(faces[k : k + 1], bits, bgr=True)) for k, t in enumerate(targets)]
        return write_files(list(zip(targets, bufs)), force)
    check_cubemap_output(p, layout, force)
    c, s = faces.shape[1], faces.shape[-1]
    cells = {"stack": [(0, k) for k in range(6)], "horizon": [(k, 0) for k in range(6)], "dice": list(DICE_XY)}[layout]
    cols, rows = {"stack": (1, 6), "horizon": (6, 1), "dice": (4, 3)}[layout]
    with guard_alloc(f"output ({cols * s}x{rows * s})"):
        canvas = np.zeros((rows * s, cols * s, c), dtype=np.uint8 if bits == 8 else np.uint16)
        for k, (cx, cy) in enumerate(cells):
            canvas[cy * s : (cy + 1) * s, cx * s : (cx + 1) * s] = to_uint_hwc(faces[k : k + 1], bits, bgr=True)
    buf = encode_image(p, canvas)
    del canvas
    return write_files([(p, buf)], force)
