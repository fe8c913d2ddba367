"""Pole refinement (DiT360's "panoramic refinement").

Equirectangular panoramas are stretched near the poles, and generators often leave swirls or
smears there. The fix: look at the poles through the top (``U``) and bottom (``D``) cube faces,
where they are undistorted, mask the centre of those faces, inpaint it with any 2-D inpainter,
project the faces back and blend them into the panorama.

Pipeline::

    faces, masks = extract_pole_faces(erp)          # (2B, C, S, S): U, D of each panorama
    filled = inpainter(faces, masks)                # any Inpainter (OpenCV, diffusers, ...)
    out = merge_pole_faces(erp, filled, masks)      # only the pole region changes

or in one call ``refine_poles(erp, inpainter)``.

Guarantee: ``merge_pole_faces`` changes only the ERP pixels that sample a nonzero blend weight
on the ``U``/``D`` faces. The blend weight is the mask dilated by ``feather`` face pixels with a
linear ramp (1 inside the mask, falling to 0 over ``feather`` pixels outside it). Every other
pixel of the panorama is returned bit-identical.

Default mask: the central half of each pole face (``fraction=0.5``: pixels 256..768 of a 1024
face), as in DiT360.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import PanoInputError
from .validate import check_bchw, check_erp, check_finite

__all__ = [
    "DEFAULT_FRACTION",
    "DEFAULT_FEATHER",
    "pole_face_size",
    "pole_mask",
    "feather_mask",
    "extract_pole_faces",
    "merge_pole_faces",
    "pole_weight_erp",
    "refine_poles",
    "check_fraction",
    "check_feather",
    "Inpainter",
    "OpenCVInpainter",
    "DiffusersInpainter",
    "make_inpainter",
]

DEFAULT_FRACTION = 0.5
DEFAULT_FEATHER = 16

# Index of the U and D faces in a F R B L U D cube stack.
_U, _D = 4, 5


# --------------------------------------------------------------------------------------------
# masks


def pole_face_size(width: int, face_size: int | None = None, multiple: int = 1) -> int:
    """Face size used for a panorama of ``width`` pixels.

    ``face_size`` None or 0 means ``width // 4``. The result is rounded down to a multiple of
    ``multiple`` (e.g. 16 for latent diffusion models: VAE /8 and 2x2 patches), at least
    ``multiple``.
    """
    if multiple < 1:
        raise PanoInputError(f"multiple: expected a positive integer, got {multiple}")
    s = int(face_size) if face_size else int(width) // 4
    if s < 0:
        raise PanoInputError(f"face_size: expected 0 (automatic) or a positive size, got {face_size}")
    s = max(multiple, (s // multiple) * multiple)
    if s < 4:
        raise PanoInputError(f"face_size: pole faces of {s} px are too small (need at least 4 px)")
    return s


def check_fraction(fraction: float) -> float:
    """Validate the mask ``fraction`` (0, 1]; returns it as a float."""
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise PanoInputError(f"fraction: expected a number in (0, 1], got {fraction!r}") from None
    if not (0.0 < f <= 1.0) or f != f:
        raise PanoInputError(f"fraction: expected a number in (0, 1] (share of the face side to inpaint), got {fraction}")
    return f


def check_feather(feather: int) -> int:
    """Validate ``feather`` (a whole number of face pixels >= 0); returns it as an int."""
    if isinstance(feather, bool) or not isinstance(feather, (int, np.integer)) and not (
        isinstance(feather, float) and float(feather).is_integer()
    ):
        raise PanoInputError(f"feather: expected a whole number of face pixels >= 0, got {feather!r}")
    feather = int(feather)
    if feather < 0:
        raise PanoInputError(f"feather: expected a whole number of face pixels >= 0, got {feather}")
    return feather


def _mask_bounds(face_size: int, fraction: float) -> tuple[int, int]:
    """Start (inclusive) and end (exclusive) of the central square, symmetric about the centre."""
    a = int(round(face_size * (1.0 - fraction) / 2.0))
    b = face_size - a
    if b <= a:  # a tiny face and a tiny fraction: keep at least the centre pixel(s)
        a = (face_size - 1) // 2
        b = face_size - a
    return a, b


def pole_mask(
    face_size: int,
    fraction: float = DEFAULT_FRACTION,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Binary mask (1, 1, S, S): 1 on the central square covering ``fraction`` of the side.

    ``fraction=0.5`` on a 1024 face marks rows and columns 256..767 (the central half).
    """
    fraction = check_fraction(fraction)
    if int(face_size) < 1:
        raise PanoInputError(f"face_size: expected a positive size, got {face_size}")
    s = int(face_size)
    a, b = _mask_bounds(s, fraction)
    m = torch.zeros(1, 1, s, s, device=device, dtype=dtype)
    m[..., a:b, a:b] = 1
    return m


def feather_mask(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Blend weight from masks (N, 1, S, S) in 0..1: the mask plus a linear ramp around it.

    Outside the mask's support (``mask > 0``) the weight is ``1 - d / (feather + 1)`` where ``d`` is
    the Euclidean distance in pixels to the nearest mask pixel, so it falls from
    ``feather / (feather + 1)`` next to the mask to exactly 0 at ``feather + 1`` pixels and beyond.
    Inside the support the mask's own values are kept (``max`` of both). A band wider than the room
    left around the mask is cut at the face border. The distance is computed on the CPU (OpenCV);
    the result is on the mask's device, not differentiable w.r.t. the mask.
    """
    import cv2

    feather = check_feather(feather)
    w = mask.clamp(0, 1)
    if feather == 0:
        return w
    support = (w > 0).detach().cpu()
    out = []
    for k in range(support.shape[0]):
        sup = support[k, 0].numpy()
        if not sup.any():
            out.append(torch.zeros(sup.shape, dtype=torch.float32))
            continue
        outside = np.ascontiguousarray((~sup).astype(np.uint8))
        d = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        out.append(torch.from_numpy(np.clip(1.0 - d / (feather + 1.0), 0.0, 1.0)))
    ramp = torch.stack(out)[:, None].to(device=w.device, dtype=w.dtype)
    return torch.maximum(w, ramp)


# --------------------------------------------------------------------------------------------
# extract / merge


def extract_pole_faces(
    erp: torch.Tensor,
    fraction: float = DEFAULT_FRACTION,
    face_size: int | None = None,
    mode: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project the poles of ERP panoramas (B, C, H, 2H) onto the ``U`` and ``D`` cube faces.

    Returns ``(faces, masks)``: faces (2B, C, S, S) ordered ``U0, D0, U1, D1, ...`` (oriented
    exactly like py360convert's ``e2c``) and masks (2B, 1, S, S), 1 on the central square to
    inpaint. ``face_size`` defaults to W // 4.
    """
    erp = check_erp(erp, "panorama")
    fraction = check_fraction(fraction)
    return _extract(erp, fraction, pole_face_size(erp.shape[-1], face_size), mode)


def _extract(erp: torch.Tensor, fraction: float, s: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .geometry import e2c

    b, c, h, w = erp.shape
    cube = e2c(erp, face_size=s, mode=mode, layout="stack")
    faces = cube.reshape(b, 6, c, s, s)[:, _U : _D + 1].reshape(2 * b, c, s, s).contiguous()
    masks = pole_mask(s, fraction, device=erp.device, dtype=erp.dtype).expand(2 * b, 1, s, s).contiguous()
    return faces, masks


def _check_pole_masks(masks: torch.Tensor | None, n: int, s: int, name: str) -> torch.Tensor | None:
    if masks is None:
        return None
    if not isinstance(masks, torch.Tensor):
        raise PanoInputError(f"{name}: expected a tensor (N, 1, S, S), got {type(masks).__name__}")
    if masks.ndim == 3:
        masks = masks.unsqueeze(1)
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise PanoInputError(f"{name}: expected one-channel masks (N, 1, S, S), got shape {tuple(masks.shape)}")
    if tuple(masks.shape[-2:]) != (s, s):
        raise PanoInputError(
            f"{name}: masks must have the size of the pole faces ({s}x{s}); got {masks.shape[-1]}x{masks.shape[-2]}"
        )
    if masks.shape[0] not in (1, 2, n):
        raise PanoInputError(
            f"{name}: expected {n} masks (U and D of each panorama), 2 (shared U, D) or 1; got {masks.shape[0]}"
        )
    if not torch.is_floating_point(masks):
        masks = masks.float()
    if not bool(torch.isfinite(masks).all()):
        raise PanoInputError(f"{name}: contains NaN or infinite values; expected numbers in 0..1")
    if masks.shape[0] == 2 and n != 2:
        masks = masks.repeat(n // 2, 1, 1, 1)
    return masks.expand(n, 1, s, s)


_BAND_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
_BAND_CACHE_MAX = 8


@functools.lru_cache(maxsize=16)
def _row_radius(h: int, w: int, s: int) -> torch.Tensor:
    """Distance in face pixels from the U/D face centre of every ERP row's circle of latitude
    (inf where the row does not reach the face), top rows measured on U, bottom rows on D."""
    from .geometry import dirs_to_cube, erp_directions

    # Each row is a circle of latitude around the face centre. Measure it in the column at
    # longitude ~45 degrees (towards a face corner), where it stays on U/D the longest.
    col = min(w - 1, int(round((45.0 / 360.0 + 0.5) * w - 0.5)))
    d = erp_directions(h, w, dtype=torch.float64)[:, col]
    face, j, i = dirs_to_cube(d, s)
    c = (s - 1) / 2.0
    r = torch.hypot(j - c, i - c)
    top = torch.arange(h) < h // 2
    on = torch.where(top, face == _U, face == _D)
    return torch.where(on, r, torch.full_like(r, float("inf")))


def _band_plan(h: int, w: int, s: int, n_top: int, n_bottom: int, mode: str, device, dtype):
    """Sampling grid of the rows ``[0, n_top)`` and ``[h - n_bottom, h)`` of an h x w ERP from an
    atlas (2 S, S) holding the U face above the D face; plus the row indices and a validity map
    (pixels that look at U (top band) or D (bottom band)). Cached."""
    from .geometry import dirs_to_cube, erp_directions

    key = (h, w, s, n_top, n_bottom, mode, str(device), dtype)
    hit = _BAND_CACHE.get(key)
    if hit is not None:
        return hit
    rows = torch.cat([torch.arange(n_top), torch.arange(h - n_bottom, h)])
    d = erp_directions(h, w, dtype=torch.float64)[rows]  # (R, W, 3)
    face, j, i = dirs_to_cube(d, s)
    want = torch.cat([torch.full((n_top,), _U), torch.full((n_bottom,), _D)])[:, None]
    valid = face == want
    j = j.clamp(0, s - 1)
    i = i.clamp(0, s - 1) + (want - _U) * s  # D lies below U in the atlas
    grid = torch.stack(((j + 0.5) * (2.0 / s) - 1.0, (i + 0.5) * (2.0 / (2 * s)) - 1.0), dim=-1)
    plan = (rows.to(device), grid[None].to(device=device, dtype=dtype), valid[None, None].to(device))
    if len(_BAND_CACHE) >= _BAND_CACHE_MAX:
        _BAND_CACHE.pop(next(iter(_BAND_CACHE)))
    _BAND_CACHE[key] = plan
    return plan


def _band_rows(h: int, w: int, s: int, wface: torch.Tensor) -> tuple[int, int]:
    """How many top / bottom ERP rows can see a nonzero weight on the U / D faces."""
    b = wface.shape[0] // 2
    per = wface.reshape(b, 2, s, s).detach()
    radius = _row_radius(h, w, s)
    c = (s - 1) / 2.0
    counts = []
    for k, half in ((0, slice(0, h // 2)), (1, slice(h // 2, h))):
        nz = (per[:, k] > 0).any(0)
        if not bool(nz.any()):
            counts.append(0)
            continue
        rr = nz.any(1).nonzero().flatten()
        cc = nz.any(0).nonzero().flatten()
        # farthest reach of the support from the face centre, plus the bilinear footprint
        dy = max(abs(float(rr[0]) - c), abs(float(rr[-1]) - c)) + 1.5
        dx = max(abs(float(cc[0]) - c), abs(float(cc[-1]) - c)) + 1.5
        reach = (dx * dx + dy * dy) ** 0.5
        sel = (radius[half] <= reach).nonzero().flatten()
        if sel.numel() == 0:
            counts.append(0)
        elif k == 0:
            counts.append(int(sel.max()) + 2)
        else:
            counts.append(h - (h // 2 + int(sel.min())) + 2)
    return min(counts[0], h // 2), min(counts[1], h - h // 2)


def _project_poles(h: int, w: int, atlas: torch.Tensor, wface: torch.Tensor, mode: str):
    """Project U/D atlases (B, C, 2S, S) to the polar ERP bands.

    Returns ``((n_top, n_bottom), values (B, C, n_top + n_bottom, W), valid)``: the first
    ``n_top`` rows of values belong to the top of the ERP, the others to its last ``n_bottom``."""
    s = atlas.shape[-1]
    n_top, n_bottom = _band_rows(h, w, s, wface)
    if n_top + n_bottom == 0:
        return (0, 0), None, None
    _, grid, valid = _band_plan(h, w, s, n_top, n_bottom, mode, atlas.device, atlas.dtype)
    b = atlas.shape[0]
    vals = F.grid_sample(atlas, grid.expand(b, -1, -1, -1), mode=mode, padding_mode="border", align_corners=False)
    return (n_top, n_bottom), vals, valid


def pole_weight_erp(
    erp_hw: tuple[int, int],
    masks: torch.Tensor,
    feather: int = DEFAULT_FEATHER,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Blend weight on the ERP grid (B, 1, H, W) for pole masks (2B, 1, S, S) (U, D per panorama):
    exactly the weight :func:`merge_pole_faces` uses (0 where the panorama stays bit-identical)."""
    h, w = erp_hw
    masks = masks.float() if not torch.is_floating_point(masks) else masks
    n, _, s, _ = masks.shape
    b = n // 2
    wface = feather_mask(masks, feather)
    out = masks.new_zeros(b, 1, h, w)
    if mode == "bicubic":
        from .geometry import c2e

        cube = masks.new_zeros(b, 6, 1, s, s)
        cube[:, _U : _D + 1] = wface.reshape(b, 2, 1, s, s)
        return c2e(cube.reshape(b * 6, 1, s, s), height=h, width=w, mode=mode, layout="stack").clamp(0, 1)
    atlas = wface.reshape(b, 2, 1, s, s).transpose(1, 2).reshape(b, 1, 2 * s, s)
    (n_top, n_bottom), vals, valid = _project_poles(h, w, atlas, wface, mode)
    if vals is not None:
        wt = (vals * valid).clamp(0, 1)
        out[:, :, :n_top] = wt[:, :, :n_top]
        out[:, :, h - n_bottom :] = wt[:, :, n_top:]
    return out


def merge_pole_faces(
    erp: torch.Tensor,
    faces: torch.Tensor,
    masks: torch.Tensor | None = None,
    feather: int = DEFAULT_FEATHER,
    fraction: float = DEFAULT_FRACTION,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Blend (inpainted) pole faces back into ERP panoramas.

    ``erp`` (B, C, H, 2H); ``faces`` (2B, C, S, S) ordered ``U0, D0, U1, D1, ...`` as returned
    by :func:`extract_pole_faces`; ``masks`` (2B, 1, S, S) (or 2 or 1 masks shared by every
    panorama; None: the central square of ``fraction``). The faces are projected back onto the
    polar bands of the ERP (the inverse of ``e2c``'s U/D faces; ``mode`` nearest or bilinear,
    bicubic goes through ``c2e``) and blended with the feathered mask weight (see
    :func:`feather_mask`, :func:`pole_weight_erp`). ERP pixels whose weight is 0 are returned
    bit-identical. Differentiable w.r.t. ``erp`` and ``faces``.
    """
    erp = check_erp(erp, "panorama")
    faces = check_bchw(faces, "pole_faces")
    feather = check_feather(feather)
    if mode not in ("nearest", "bilinear", "bicubic"):
        raise PanoInputError(f"mode: expected nearest, bilinear or bicubic, got {mode!r}")
    b, c, h, w = erp.shape
    if faces.shape[-1] != faces.shape[-2]:
        raise PanoInputError(f"pole_faces: faces must be square; got {faces.shape[-1]}x{faces.shape[-2]} (W x H)")
    if faces.shape[0] != 2 * b:
        raise PanoInputError(
            f"pole_faces: expected {2 * b} faces (U and D for each of the {b} panoramas), got {faces.shape[0]}"
        )
    if faces.shape[1] != c:
        raise PanoInputError(f"pole_faces: expected {c} channels like the panorama, got {faces.shape[1]}")
    s = faces.shape[-1]
    if masks is None:
        masks = pole_mask(s, fraction, device=faces.device, dtype=faces.dtype).expand(2 * b, 1, s, s)
    else:
        masks = _check_pole_masks(masks, 2 * b, s, "pole_masks")
    return _merge(erp, faces, masks, feather, mode)


def _merge(erp: torch.Tensor, faces: torch.Tensor, masks: torch.Tensor, feather: int, mode: str) -> torch.Tensor:
    """:func:`merge_pole_faces` without the input checks (faces (2B, C, S, S), masks (2B, 1, S, S))."""
    b, c, h, w = erp.shape
    s = faces.shape[-1]
    faces = faces.to(device=erp.device, dtype=erp.dtype)
    masks = masks.to(device=erp.device, dtype=erp.dtype)
    wface = feather_mask(masks, feather)

    if mode == "bicubic":
        from .geometry import c2e

        cube = erp.new_zeros(b, 6, c + 1, s, s)
        cube[:, _U : _D + 1, :c] = faces.reshape(b, 2, c, s, s)
        cube[:, _U : _D + 1, c:] = wface.reshape(b, 2, 1, s, s)
        proj = c2e(cube.reshape(b * 6, c + 1, s, s), height=h, width=w, mode=mode, layout="stack").to(erp.dtype)
        img, wt = proj[:, :c], proj[:, c:].clamp(0, 1)
        return torch.where(wt > 0, torch.lerp(erp, img, wt), erp)

    both = torch.cat([faces, wface], dim=1)  # (2B, C+1, S, S)
    atlas = both.reshape(b, 2, c + 1, s, s).transpose(1, 2).reshape(b, c + 1, 2 * s, s)
    (n_top, n_bottom), vals, valid = _project_poles(h, w, atlas, wface, mode)
    out = erp.clone()
    if vals is None:
        return out
    img, wt = vals[:, :c], (vals[:, c:] * valid).clamp(0, 1)
    for src, dst in ((slice(0, n_top), slice(0, n_top)), (slice(n_top, n_top + n_bottom), slice(h - n_bottom, h))):
        band, bw = erp[:, :, dst], wt[:, :, src]
        out[:, :, dst] = torch.where(bw > 0, torch.lerp(band, img[:, :, src], bw), band)
    return out


# --------------------------------------------------------------------------------------------
# inpainters


@runtime_checkable
class Inpainter(Protocol):
    """Fills masked regions of images.

    ``__call__(images (N, C, S, S) float 0..1, masks (N, 1, S, S) 0..1, 1 = fill)`` returns
    (N, C, S, S) float 0..1. Pixels outside the mask may change a little (e.g. a VAE round trip);
    :func:`merge_pole_faces` only uses them in the feather band.
    """

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor: ...


class OpenCVInpainter:
    """OpenCV inpainting, no weights needed: ``method`` "telea" (Telea 2004, fast marching) or
    "ns" (Navier-Stokes). ``radius``: neighbourhood radius in pixels.

    3-channel images are inpainted as 8-bit RGB (one call); other channel counts channel by
    channel in 16 bit. Pixels outside the mask are returned unchanged.
    """

    METHODS = ("telea", "ns")

    def __init__(self, method: str = "telea", radius: float = 3.0):
        import cv2

        m = str(method).lower().replace("opencv-", "").replace("navier-stokes", "ns")
        if m not in self.METHODS:
            raise PanoInputError(f"method: expected one of {', '.join(self.METHODS)}, got {method!r}")
        if not radius > 0:
            raise PanoInputError(f"radius: expected a positive number of pixels, got {radius}")
        self.method = m
        self.radius = float(radius)
        self._flag = cv2.INPAINT_TELEA if m == "telea" else cv2.INPAINT_NS

    def __repr__(self) -> str:
        return f"OpenCVInpainter(method={self.method!r}, radius={self.radius})"

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        import cv2

        images = check_bchw(images, "images")
        n, c, s1, s2 = images.shape
        if isinstance(masks, torch.Tensor) and masks.ndim == 3:
            masks = masks.unsqueeze(1)
        masks = _check_pole_masks(masks, n, s1, "masks") if s1 == s2 else masks
        if not isinstance(masks, torch.Tensor) or masks.ndim != 4 or masks.shape[-2:] != images.shape[-2:]:
            got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise PanoInputError(f"masks: expected (N, 1, {s1}, {s2}) masks, got {got}")
        imgs = images.detach().float().cpu()
        holes = masks.detach().float().cpu()[:, 0] > 0.5
        out = imgs.clone()
        margin = int(math.ceil(self.radius)) + 2  # pixels farther from the hole do not take part
        for i in range(n):
            hole_t = holes[i]
            if not bool(hole_t.any()):
                continue
            rows = hole_t.any(1).nonzero().flatten()
            cols = hole_t.any(0).nonzero().flatten()
            r0, r1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, s1)
            c0, c1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, s2)
            crop = imgs[i, :, r0:r1, c0:c1].clamp(0, 1)
            hole = np.ascontiguousarray(hole_t[r0:r1, c0:c1].numpy().astype(np.uint8) * 255)
            if c == 3:
                arr = np.ascontiguousarray((crop.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8))
                res = cv2.inpaint(arr, hole, self.radius, self._flag)
                filled = torch.from_numpy(res.astype(np.float32) / 255.0).permute(2, 0, 1)
            else:
                # one channel at a time in 16 bit (OpenCV's float32 Telea path is unreliable)
                chans = []
                for ch in range(c):
                    arr = np.ascontiguousarray((crop[ch].numpy() * 65535.0 + 0.5).astype(np.uint16))
                    res = cv2.inpaint(arr, hole, self.radius, self._flag)
                    chans.append(torch.from_numpy(res.astype(np.float32) / 65535.0))
                filled = torch.stack(chans)
            sel = hole_t[r0:r1, c0:c1]
            out[i, :, r0:r1, c0:c1] = torch.where(sel, filled, imgs[i, :, r0:r1, c0:c1])
        return out.to(device=images.device, dtype=images.dtype)


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise PanoInputError(f"dtype: expected auto or one of {', '.join(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _model_index_class(path_or_id: str) -> str | None:
    p = Path(path_or_id) / "model_index.json"
    if p.is_file():
        try:
            return json.loads(p.read_text()).get("_class_name")
        except (OSError, ValueError) as e:
            raise PanoInputError(f"model: cannot read {p}: {e}") from None
    return None


class DiffusersInpainter:
    """Inpainting with a diffusers pipeline (e.g. ``black-forest-labs/FLUX.1-Fill-dev`` via
    ``FluxFillPipeline``, or any pipeline ``AutoPipelineForInpainting`` can build).

    Build it with :meth:`from_pretrained` (local folder or hub id) or wrap an existing pipeline.
    Faces are resized to ``size`` (a multiple of 16; None keeps their size rounded down to 16),
    inpainted in one batch with a seeded generator, and resized back.
    """

    def __init__(
        self,
        pipe: Any,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float | None = None,
        strength: float = 1.0,
        seed: int = 0,
        size: int | None = None,
        extra_call_kwargs: dict | None = None,
    ):
        self.pipe = pipe
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = guidance_scale
        self.strength = float(strength)
        self.seed = int(seed)
        self.size = size
        self.extra_call_kwargs = dict(extra_call_kwargs or {})
        if self.num_inference_steps < 1:
            raise PanoInputError(f"steps: expected at least 1, got {num_inference_steps}")
        if not 0.0 < self.strength <= 1.0:
            raise PanoInputError(f"strength: expected a number in (0, 1], got {strength}")
        if size is not None and (int(size) < 16 or int(size) % 16):
            raise PanoInputError(f"size: expected a multiple of 16 (>= 16), got {size}")

    def __repr__(self) -> str:
        return f"DiffusersInpainter({type(self.pipe).__name__}, steps={self.num_inference_steps}, seed={self.seed})"

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        pipeline: str = "auto",
        dtype: str | torch.dtype | None = "auto",
        device: str | None = None,
        offload: str = "none",
        local_files_only: bool = False,
        variant: str | None = None,
        progress: bool = False,
        **kwargs: Any,
    ) -> DiffusersInpainter:
        """Load an inpainting pipeline from a local diffusers folder or a hub id.

        ``pipeline``: "auto" (the class named in ``model_index.json`` when it is an inpainting
        or fill pipeline, else ``AutoPipelineForInpainting``), "flux-fill" (``FluxFillPipeline``)
        or "auto-inpaint" (``AutoPipelineForInpainting``). ``dtype``: auto (bf16 on CUDA, fp32
        on CPU), fp32, fp16, bf16. ``device``: default cuda if available. ``offload``: "none",
        "model" (``enable_model_cpu_offload``) or "sequential"
        (``enable_sequential_cpu_offload``). Weights are only read from safetensors files.
        Remaining keyword arguments go to :class:`DiffusersInpainter` (prompt, seed, ...).
        """
        import diffusers

        src = str(path_or_id)
        if not src:
            raise PanoInputError("model: expected a diffusers folder or a hub id, got an empty string")
        local = Path(src).expanduser()
        is_hub_id = src.count("/") == 1 and not src.startswith((".", "/", "~")) and not local.exists()
        if local.exists():
            if not (local / "model_index.json").is_file():
                raise PanoInputError(f"model: {local} is not a diffusers pipeline folder (no model_index.json)")
            src = str(local)
        elif not is_hub_id:
            raise PanoInputError(f"model: folder not found: {src} (expected a diffusers folder or a hub id 'org/name')")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = _resolve_dtype(dtype, device)
        if offload not in ("none", "model", "sequential"):
            raise PanoInputError(f"offload: expected none, model or sequential, got {offload!r}")

        # diffusers renamed ``torch_dtype`` to ``dtype`` (the old name still works, with a warning).
        dtype_key = "dtype" if hasattr(diffusers.utils, "deprecation_utils") and hasattr(
            diffusers.utils.deprecation_utils, "_resolve_dtype"
        ) else "torch_dtype"
        load_kw: dict[str, Any] = {
            dtype_key: torch_dtype,
            "use_safetensors": True,
            "local_files_only": local_files_only,
        }
        if variant:
            load_kw["variant"] = variant
        if pipeline == "flux-fill":
            pipe_cls: Any = diffusers.FluxFillPipeline
        elif pipeline == "auto-inpaint":
            pipe_cls = diffusers.AutoPipelineForInpainting
        elif pipeline == "auto":
            name = _model_index_class(src)
            if name and ("Inpaint" in name or "Fill" in name) and hasattr(diffusers, name):
                pipe_cls = getattr(diffusers, name)
            elif name is None and "flux" in src.lower() and "fill" in src.lower():
                pipe_cls = diffusers.FluxFillPipeline
            else:
                pipe_cls = diffusers.AutoPipelineForInpainting
        else:
            raise PanoInputError(f"pipeline: expected auto, flux-fill or auto-inpaint, got {pipeline!r}")
        try:
            pipe = pipe_cls.from_pretrained(src, **load_kw)
        except (OSError, ValueError) as e:
            raise PanoInputError(f"model: cannot load an inpainting pipeline from {src!r}: {e}") from e
        if offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe = pipe.to(device)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=not progress)
        return cls(pipe, **kwargs)

    def _call_kwargs(self, images: torch.Tensor, masks: torch.Tensor, size: int) -> dict[str, Any]:
        n = images.shape[0]
        params = inspect.signature(self.pipe.__call__).parameters

        def per_image(p):
            return list(p) if isinstance(p, (list, tuple)) else [p] * n

        kw: dict[str, Any] = {
            "prompt": per_image(self.prompt),
            "image": images,
            "mask_image": masks,
            "height": size,
            "width": size,
            "num_inference_steps": self.num_inference_steps,
            "generator": torch.Generator(device="cpu").manual_seed(self.seed),
            "output_type": "pt",
        }
        if self.negative_prompt is not None and "negative_prompt" in params:
            kw["negative_prompt"] = per_image(self.negative_prompt)
        if self.guidance_scale is not None:
            kw["guidance_scale"] = float(self.guidance_scale)
        if "strength" in params:
            kw["strength"] = self.strength
        kw.update(self.extra_call_kwargs)
        return {k: v for k, v in kw.items() if k in params or k in self.extra_call_kwargs}

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        images = check_bchw(images, "images")
        n, c, h, w = images.shape
        if isinstance(masks, torch.Tensor) and masks.ndim == 3:
            masks = masks.unsqueeze(1)
        masks = _check_pole_masks(masks, n, h, "masks") if h == w else masks
        if c != 3:
            # the pipelines work on RGB: grey is expanded (and averaged back), extra channels
            # (alpha) are kept as they are
            rgb = images[:, :1].expand(-1, 3, -1, -1) if c in (1, 2) else images[:, :3]
            out = self(rgb, masks)
            head = out.mean(dim=1, keepdim=True) if c in (1, 2) else out
            return torch.cat([head, images[:, head.shape[1] :]], dim=1)
        size = int(self.size) if self.size else max(16, (max(h, w) // 16) * 16)
        x = images.detach().float().cpu().clamp(0, 1)
        m = (masks.detach().float().cpu() > 0.5).float()
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            m = F.interpolate(m, size=(size, size), mode="nearest")
        kw = self._call_kwargs(x, m, size)
        with torch.inference_mode():
            result = self.pipe(**kw)
        out = result.images if hasattr(result, "images") else result[0]
        if isinstance(out, np.ndarray):
            out = torch.from_numpy(out).permute(0, 3, 1, 2)
        out = out.float().cpu().clamp(0, 1)
        if out.shape[0] != n:
            raise PanoInputError(f"inpainter: the pipeline returned {out.shape[0]} images for {n} inputs")
        if tuple(out.shape[-2:]) != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return out.to(device=images.device, dtype=images.dtype)


def make_inpainter(spec: str | Inpainter | None = "opencv", **kwargs: Any) -> Inpainter:
    """Inpainter from a short spec: ``opencv`` / ``opencv-telea`` (default), ``opencv-ns``, or
    ``diffusers:PATH_OR_HUB_ID`` (keyword arguments go to :meth:`DiffusersInpainter.from_pretrained`).
    An object that is already callable is returned as is."""
    if spec is None:
        spec = "opencv"
    if not isinstance(spec, str):
        if callable(spec):
            return spec
        raise PanoInputError(f"inpainter: expected a spec string or a callable, got {type(spec).__name__}")
    s = spec.strip()
    low = s.lower()
    if low in ("opencv", "opencv-telea", "telea"):
        return OpenCVInpainter("telea", **kwargs)
    if low in ("opencv-ns", "ns", "navier-stokes"):
        return OpenCVInpainter("ns", **kwargs)
    if low.startswith("diffusers:"):
        target = s.split(":", 1)[1]
        if not target:
            raise PanoInputError("inpainter: diffusers:PATH_OR_ID needs a folder or a hub id after the colon")
        return DiffusersInpainter.from_pretrained(target, **kwargs)
    raise PanoInputError(f"inpainter: expected opencv, opencv-ns or diffusers:PATH_OR_ID, got {spec!r}")


# --------------------------------------------------------------------------------------------
# channels: models inpaint RGB; grey and alpha panoramas are mapped to RGB and back


def split_rgb_alpha(erp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a 1–4 channel panorama into RGB (grey expanded to 3 channels) and alpha (or None).

    Channel counts 2 and 4 carry alpha in the last channel.
    """
    c = erp.shape[1]
    colour, alpha = (erp[:, :-1], erp[:, -1:]) if c in (2, 4) else (erp, None)
    rgb = colour.expand(-1, 3, -1, -1) if colour.shape[1] == 1 else colour
    return rgb, alpha


def join_rgb_alpha(out: torch.Tensor, rgb: torch.Tensor, erp: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_rgb_alpha` for a refined ``out`` (same shape as ``rgb``): a grey
    panorama gets the channel mean where ``out`` changed (unchanged pixels stay bit-identical);
    the alpha channel of ``erp`` is re-attached unchanged."""
    c = erp.shape[1]
    colour = erp[:, :-1] if c in (2, 4) else erp
    if colour.shape[1] == 1:
        changed = (out != rgb).any(dim=1, keepdim=True)
        out = torch.where(changed, out.mean(dim=1, keepdim=True), colour)
    return torch.cat([out, erp[:, -1:]], dim=1) if c in (2, 4) else out


# --------------------------------------------------------------------------------------------
# one shot


def refine_poles(
    erp: torch.Tensor,
    inpainter: Inpainter | str | None = None,
    fraction: float = DEFAULT_FRACTION,
    feather: int = DEFAULT_FEATHER,
    face_size: int | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Refine the poles of ERP panoramas (B, C, H, 2H): extract the ``U``/``D`` faces, inpaint the
    central ``fraction`` of each with ``inpainter`` (an :class:`Inpainter` or a spec for
    :func:`make_inpainter`; default OpenCV Telea), project back and blend (``feather`` face
    pixels). Only the pole regions change; the rest of the panorama is bit-identical.
    """
    erp = check_erp(erp, "panorama")
    feather = check_feather(feather)
    fraction = check_fraction(fraction)
    if mode not in ("nearest", "bilinear", "bicubic"):
        raise PanoInputError(f"mode: expected nearest, bilinear or bicubic, got {mode!r}")
    inp = make_inpainter(inpainter)
    faces, masks = _extract(erp, fraction, pole_face_size(erp.shape[-1], face_size), mode)
    filled = inp(faces, masks)
    if not isinstance(filled, torch.Tensor) or tuple(filled.shape) != tuple(faces.shape):
        got = tuple(filled.shape) if isinstance(filled, torch.Tensor) else type(filled).__name__
        raise PanoInputError(f"inpainter: expected output of shape {tuple(faces.shape)}, got {got}")
    check_finite(filled, "inpainter output")
    return _merge(erp, filled, masks, feather, mode)
