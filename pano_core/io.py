"""Reading and writing images as BCHW float tensors (8- and 16-bit PNG/JPEG/WebP/TIFF/BMP).

Memory: a file is decoded once into its integer pixels and converted to float32 in one pass into
a channels-last tensor (``(1, C, H, W)`` whose storage is ``(H, W, C)``: no layout copy; every
pano_core function accepts it and the OpenCV fast paths sample it in place). Writing converts the
float image to integers in bands of rows, so no full-size float temporary is made.

Size budget: the image size is read from the file header before decoding and a file above
:func:`pano_core.budget.max_pixels` is refused. Output files are written to a temporary file in
the target folder and moved into place with ``os.replace`` (an existing file is replaced only with
``force``; a failed write leaves nothing behind).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from .budget import check_pixels, guard_alloc
from .errors import PanoInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
_ROWS_PER_BAND = 256  # rows converted per step when writing


def probe_image(path: str | os.PathLike, name: str = "image") -> tuple[int, int, int, int]:
    """``(width, height, bits, exif_orientation)`` from the file header (no pixel decoding).

    ``bits`` is 16 for 16-bit PNG/TIFF, else 8; ``exif_orientation`` is the EXIF tag 0x0112
    (1 = as stored). Raises :class:`PanoInputError` for a file that is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise PanoInputError(f"{name}: file not found: {p}")
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: our own limit applies
            Image.MAX_IMAGE_PIXELS = None  # only the header is read here; check_pixels decides
            with Image.open(p) as im:
                w, h = im.size
                bits = 8
                if im.format == "PNG":
                    with open(p, "rb") as f:
                        head = f.read(26)
                    if len(head) >= 25 and head[12:16] == b"IHDR" and head[24] == 16:
                        bits = 16
                elif im.format == "TIFF":
                    bps = im.tag_v2.get(258) if hasattr(im, "tag_v2") else None
                    if bps is not None and max(bps if isinstance(bps, tuple) else (bps,)) == 16:
                        bits = 16
                try:
                    orientation = int(im.getexif().get(0x0112, 1) or 1)
                except Exception:  # a broken EXIF block must not stop the reading
                    orientation = 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise PanoInputError(
            f"{name}: cannot read {p} as an image (expected PNG, JPEG, WebP, TIFF or BMP): {e}"
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    return w, h, bits, orientation if 1 <= orientation <= 8 else 1


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an (H, W, C) array (views, no copy); the same
    transforms as PIL's ``ImageOps.exif_transpose``."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    t = np.swapaxes(arr, 0, 1)
    if orientation == 5:  # transpose
        return t
    if orientation == 6:  # rotate 90 degrees clockwise
        return t[:, ::-1]
    if orientation == 7:  # transverse
        return t[::-1, ::-1]
    if orientation == 8:  # rotate 90 degrees counter-clockwise
        return t[::-1]
    return arr


def decode_image(path: str | os.PathLike, name: str = "image", max_pixels: int | None = None):
    """Decode an image file -> ``(pixels, order, scale)`` without converting it to float.

    ``pixels`` is the (H, W, C) uint8/uint16/float array with the EXIF orientation applied (a view),
    ``order`` the source channel of each RGB(A)/grey output channel and ``scale`` the integer
    maximum (255, 65535 or 1). The size is checked against the pixel limit before decoding.
    """
    p = Path(path)
    w, h, _, orientation = probe_image(p, name)
    check_pixels(name, w, h, f"image {p.name}", limit=max_pixels)
    with guard_alloc(f"{name} ({p.name}, {w}x{h})"):
        data = np.fromfile(str(p), dtype=np.uint8)
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        del data
    if arr is None:
        raise PanoInputError(f"{name}: cannot decode {p} as an image (expected PNG, JPEG, WebP, TIFF or BMP)")
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
    c = arr.shape[2]
    if c not in (1, 2, 3, 4):
        raise PanoInputError(f"{name}: unsupported channel count {c} in {p}")
    # OpenCV decodes BGR(A): the colour channels are reversed while converting
    order = ([2, 1, 0] + ([3] if c == 4 else [])) if c in (3, 4) else list(range(c))
    return _orient(arr, orientation), order, scale


def pixels_to_float(src: np.ndarray, order: list[int], scale: float, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, C) integer pixels -> float32 (H, W, C) in 0..1, one pass per channel (into ``out``)."""
    if out is None:
        out = np.empty(src.shape[:2] + (len(order),), dtype=np.float32)
    for k, ch in enumerate(order):
        np.multiply(src[:, :, ch], np.float32(1.0 / scale), out=out[:, :, k], casting="unsafe")
    return out


def read_image(path: str | os.PathLike, name: str = "image", max_pixels: int | None = None) -> torch.Tensor:
    """Read an image file into a float32 tensor (1, C, H, W) in 0..1 (RGB or RGBA or grey).

    8-bit and 16-bit files are supported; the bit depth is kept in the value range only. JPEG
    EXIF orientation is applied. The result is channels-last in memory (see the module notes).
    Files above ``max_pixels`` (default :func:`pano_core.budget.max_pixels`) are refused before
    decoding.
    """
    src, order, scale = decode_image(path, name, max_pixels)
    with guard_alloc(f"{name} ({Path(path).name})"):
        out = pixels_to_float(src, order, scale)
    return torch.from_numpy(out).permute(2, 0, 1).unsqueeze(0)


def check_writable(path: str | os.PathLike, force: bool = False, name: str = "output") -> Path:
    """Check an output path before any work is done; creates missing parent folders.

    Refuses an existing file unless ``force``, an existing folder, a parent that is a file, and a
    folder where no file can be created (probed with a temporary file, which is removed).
    """
    p = Path(path)
    if p.is_dir():
        raise PanoInputError(f"{name}: {p} is a folder; expected a file name")
    if p.exists() and not force:
        raise PanoInputError(f"{name}: {p} already exists; pass --force to overwrite it")
    parent = p.parent
    for anc in (parent, *parent.parents):
        if anc.exists():
            if not anc.is_dir():
                raise PanoInputError(f"{name}: cannot write {p}: {anc} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pano360-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PanoInputError(f"{name}: cannot write to {parent}: {e.strerror or e}") from None
    return p


def to_uint_hwc(image: torch.Tensor, bits: int = 8, bgr: bool = False) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) float image in 0..1 -> (H, W, C) uint8/uint16 array.

    Values are clamped and rounded; converted in bands of rows (small temporaries).
    ``bgr`` reverses the colour channels of 3/4-channel images (OpenCV's order).
    """
    x = image.detach()
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise PanoInputError(f"image: expected one image to write, got a batch of {x.shape[0]}")
        x = x[0]
    c, h, w = x.shape
    if c not in (1, 3, 4):
        raise PanoInputError(f"image: cannot write {c} channels (expected 1, 3 or 4)")
    maxv = 255.0 if bits == 8 else 65535.0
    dtype = torch.uint8 if bits == 8 else torch.int32  # uint16 arithmetic is limited in torch
    out = np.empty((h, w, c), dtype=np.uint8 if bits == 8 else np.uint16)
    order = ([2, 1, 0] + ([3] if c == 4 else [])) if (bgr and c >= 3) else list(range(c))
    for r0 in range(0, h, _ROWS_PER_BAND):
        band = x[:, r0 : r0 + _ROWS_PER_BAND].float().cpu()
        band = band.clamp(0, 1).mul_(maxv).round_().to(dtype)
        blk = band.permute(1, 2, 0).numpy()
        out[r0 : r0 + band.shape[1]] = blk[:, :, order] if order != list(range(c)) else blk
    return out


def encode_image(path: str | os.PathLike, arr: np.ndarray, name: str = "output") -> bytes:
    """Encode an (H, W, C) uint8/uint16 array in OpenCV channel order by the suffix of ``path``."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise PanoInputError(f"{name}: unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, arr, params)
    if not ok:
        raise PanoInputError(f"{name}: could not encode {p}")
    return buf


def write_files(items: list[tuple[Path, np.ndarray]], force: bool = False, name: str = "output") -> list[Path]:
    """Write encoded buffers all-or-nothing: temporary files first, then ``os.replace`` each.

    If anything fails, the temporary files are removed and files this call created are deleted
    again, so a set of outputs (e.g. six cube faces) is never left half written.
    """
    temps: list[tuple[Path, Path]] = []
    done: list[Path] = []
    try:
        for p, buf in items:
            if p.exists() and not force:
                raise PanoInputError(f"{name}: {p} already exists; pass --force to overwrite it")
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
            temps.append((Path(tmp), p))
            with os.fdopen(fd, "wb") as f:
                f.write(memoryview(buf).cast("B"))
        for tmp, p in temps:
            if force:
                os.replace(tmp, p)
            else:
                os.link(tmp, p)  # fails if the file appeared meanwhile: never overwrites
                os.unlink(tmp)
            done.append(p)
    except OSError as e:
        for p in done:
            if not force:
                p.unlink(missing_ok=True)
        raise PanoInputError(f"{name}: could not write {e.filename or ''}: {e.strerror or e}") from None
    except BaseException:
        for p in done:
            if not force:
                p.unlink(missing_ok=True)
        raise
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    return [p for p, _ in items]


def write_image(path: str | os.PathLike, image: torch.Tensor, bits: int = 8, force: bool = False) -> Path:
    """Write a (1, C, H, W) or (C, H, W) tensor in 0..1 as PNG/JPEG (8 or 16 bit; JPEG is 8-bit only)."""
    if bits not in (8, 16):
        raise PanoInputError(f"bits: expected 8 or 16, got {bits}")
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise PanoInputError(f"output: unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    p = check_writable(p, force)
    if suffix in (".jpg", ".jpeg", ".webp", ".bmp"):
        bits = 8
    arr = to_uint_hwc(image, bits, bgr=True)
    buf = encode_image(p, arr)
    del arr
    return write_files([(p, buf)], force)[0]


def image_bits(path: str | os.PathLike) -> int:
    """Bit depth of an image file (8 or 16), from its header."""
    try:
        return probe_image(path)[2]
    except PanoInputError:
        return 8
