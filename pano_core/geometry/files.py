"""Cubemaps as files: a folder of six face images or one layout image (shared by the CLIs)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import PanoInputError
from ..io import IMAGE_SUFFIXES, check_writable, image_bits, read_image, write_image
from ..validate import check_choice
from .cube import faces_to_layout, guess_layout, layout_to_faces
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
    img = read_image(p, name)
    h, w = img.shape[-2:]
    lay = layout if layout in ("horizon", "dice", "stack") else guess_layout(h, w)
    if lay is None:
        raise PanoInputError(
            f"{name}: cannot tell the cubemap layout of a {w}x{h} image; expected horizon (6:1), dice (4:3) "
            "or stack (1:6), or a folder of F R B L U D images"
        )
    if lay == "stack":
        if h != 6 * w:
            raise PanoInputError(f"{name}: a stack cubemap image must be 1:6 (six square faces on top of each other); got {w}x{h}")
        c = img.shape[1]
        stack = img.view(1, c, 6, w, w).transpose(1, 2).reshape(6, c, w, w)
    else:
        stack = layout_to_faces(img, lay, name)
    return stack, image_bits(p)


def _to_channels(t: torch.Tensor, c: int) -> torch.Tensor:
    if t.shape[1] == c:
        return t
    if t.shape[1] == 1:
        t = t.expand(-1, min(c, 3), -1, -1)
    if t.shape[1] == 3 and c == 4:
        t = torch.cat([t, torch.ones_like(t[:, :1])], 1)
    return t


def write_cubemap(
    path: str | os.PathLike, faces: torch.Tensor, layout: str, bits: int = 8, force: bool = False, suffix: str = ".png"
) -> list[Path]:
    """Write (6, C, S, S) faces: ``dict``/``list`` -> folder ``path`` with F.png R.png ... D.png;
    ``horizon``/``dice``/``stack`` -> one image at ``path`` (``stack``: faces top to bottom).
    Refuses to overwrite existing files unless ``force``; returns the written paths."""
    check_choice(layout, "format", FILE_LAYOUTS)
    p = Path(path)
    if layout in ("dict", "list"):
        if p.exists() and not p.is_dir():
            raise PanoInputError(f"output: {p} exists and is not a folder (dict/list write six face images)")
        targets = [p / f"{k}{suffix}" for k in FACE_NAMES]
        for t in targets:  # check all first: never write a partial set
            check_writable(t, force)
        return [write_image(t, faces[k : k + 1], bits=bits, force=force) for k, t in enumerate(targets)]
    check_writable(p, force)
    if layout == "stack":
        c, s = faces.shape[1], faces.shape[-1]
        img = faces.reshape(1, 6, c, s, s).transpose(1, 2).reshape(1, c, 6 * s, s)
    else:
        img = faces_to_layout(faces, layout)
    return [write_image(p, img, bits=bits, force=force)]
