"""Reading and writing images as BCHW float tensors (8- and 16-bit PNG/JPEG)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .errors import PanoInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


def read_image(path: str | os.PathLike, name: str = "image") -> torch.Tensor:
    """Read an image file into a float32 tensor (1, C, H, W) in 0..1 (RGB or RGBA or grey).

    8-bit and 16-bit files are supported; the bit depth is kept in the value range only.
    """
    p = Path(path)
    if not p.is_file():
        raise PanoInputError(f"{name}: file not found: {p}")
    data = np.fromfile(str(p), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if arr is None:
        raise PanoInputError(f"{name}: cannot read {p} as an image (expected PNG, JPEG, WebP, TIFF or BMP)")
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:
        scale = 65535.0
    elif arr.dtype in (np.float32, np.float64):
        scale = 1.0
    else:
        raise PanoInputError(f"{name}: unsupported pixel type {arr.dtype} in {p}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32) / scale)
    return t.permute(2, 0, 1).unsqueeze(0).contiguous()


def check_writable(path: str | os.PathLike, force: bool = False, name: str = "output") -> Path:
    """Refuse to overwrite an existing file unless ``force``; create parent folders."""
    p = Path(path)
    if p.exists() and not force:
        raise PanoInputError(f"{name}: {p} already exists; pass --force to overwrite it")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def write_image(path: str | os.PathLike, image: torch.Tensor, bits: int = 8, force: bool = False) -> Path:
    """Write a (1, C, H, W) or (C, H, W) tensor in 0..1 as PNG/JPEG (8 or 16 bit; JPEG is 8-bit only)."""
    p = check_writable(path, force)
    if bits not in (8, 16):
        raise PanoInputError(f"bits: expected 8 or 16, got {bits}")
    suffix = p.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise PanoInputError(f"output: unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if suffix in (".jpg", ".jpeg", ".webp", ".bmp"):
        bits = 8
    x = image.detach().float().cpu()
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise PanoInputError(f"image: expected one image to write, got a batch of {x.shape[0]}")
        x = x[0]
    arr = x.clamp(0, 1).permute(1, 2, 0).numpy()
    maxv = 255.0 if bits == 8 else 65535.0
    arr = np.round(arr * maxv).astype(np.uint8 if bits == 8 else np.uint16)
    if arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    elif arr.shape[2] == 1:
        arr = arr[:, :, 0]
    else:
        raise PanoInputError(f"image: cannot write {arr.shape[2]} channels (expected 1, 3 or 4)")
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, arr, params)
    if not ok:
        raise PanoInputError(f"output: could not encode {p}")
    buf.tofile(str(p))
    return p


def image_bits(path: str | os.PathLike) -> int:
    """Bit depth of an image file (8 or 16)."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return 16 if arr is not None and arr.dtype == np.uint16 else 8
