"""Pole faces: extraction from an ERP, masks, feathering, merging back, channel handling.

The top (``U``) and bottom (``D``) cube faces see the poles undistorted. :func:`extract_pole_faces`
projects them out (with the default mask: the central ``fraction`` of each face, DiT360: 0.5),
:func:`merge_pole_faces` projects inpainted faces back and blends them in with a feathered
weight (:func:`feather_mask`, :func:`pole_weight_erp`). Guarantee: only the ERP pixels that sample
a nonzero blend weight change; every other pixel is returned bit-identical.

Channels: models inpaint RGB. :func:`split_rgb_alpha` / :func:`join_rgb_alpha` map grey and alpha
panoramas to RGB and back; :func:`rgb_faces` brings inpainted faces (grey, RGB, RGBA) to RGB;
:func:`merge_pole_faces_rgb` does all of it around :func:`merge_pole_faces`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PanoInputError
from ..validate import check_bchw, check_erp

__all__ = [
    "DEFAULT_FRACTION",
    "DEFAULT_FEATHER",
    "pole_face_size",
    "pole_mask",
    "feather_mask",
    "extract_pole_faces",
    "merge_pole_faces",
    "merge_pole_faces_rgb",
    "pole_weight_erp",
    "check_fraction",
    "check_feather",
    "split_rgb_alpha",
    "join_rgb_alpha",
    "rgb_faces",
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
    from ..geometry.cube import e2c_pole_faces

    b = erp.shape[0]
    faces = e2c_pole_faces(erp, s, mode)  # U, D only: no side faces made
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
    from ..geometry import dirs_to_cube, erp_directions

    # Each row is a circle of latitude around the face centre. Measure it in the column at
    # longitude ~45 degrees (towards a face corner), where it stays on U/D the longest.
    col = min(w - 1, int(round((45.0 / 360.0 + 0.5) * w - 0.5)))
    d = erp_directions(h, w, dtype=torch.float64, cols=torch.tensor([col]))[:, 0]
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
    from ..geometry import dirs_to_cube, erp_directions

    key = (h, w, s, n_top, n_bottom, mode, str(device), dtype)
    hit = _BAND_CACHE.get(key)
    if hit is not None:
        return hit
    rows = torch.cat([torch.arange(n_top), torch.arange(h - n_bottom, h)])
    want_all = torch.cat([torch.full((n_top,), _U), torch.full((n_bottom,), _D)])[:, None]
    grid = torch.empty(len(rows), w, 2, dtype=dtype)
    valid = torch.empty(len(rows), w, dtype=torch.bool)
    step = max(1, (1 << 20) // w)  # float64 work in chunks of ~1 Mpx rows, not the whole band at once
    for a in range(0, len(rows), step):
        sl = slice(a, a + step)
        face, j, i = dirs_to_cube(erp_directions(h, w, dtype=torch.float64, rows=rows[sl]), s)  # (r, W)
        want = want_all[sl]
        valid[sl] = face == want
        j = j.clamp(0, s - 1)
        i = i.clamp(0, s - 1) + (want - _U) * s  # D lies below U in the atlas
        grid[sl, :, 0] = (j + 0.5) * (2.0 / s) - 1.0
        grid[sl, :, 1] = (i + 0.5) * (2.0 / (2 * s)) - 1.0
    plan = (rows.to(device), grid[None].to(device=device), valid[None, None].to(device))
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
        from ..geometry import c2e

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
        from ..geometry import c2e

        cube = erp.new_zeros(b, 6, c + 1, s, s)
        cube[:, _U : _D + 1, :c] = faces.reshape(b, 2, c, s, s)
        cube[:, _U : _D + 1, c:] = wface.reshape(b, 2, 1, s, s)
        proj = c2e(cube.reshape(b * 6, c + 1, s, s), height=h, width=w, mode=mode, layout="stack").to(erp.dtype)
        img, wt = proj[:, :c], proj[:, c:].clamp(0, 1)
        return torch.where(wt > 0, torch.lerp(erp, img, wt), erp)

    both = torch.cat([faces, wface], dim=1)  # (2B, C+1, S, S)
    atlas = both.reshape(b, 2, c + 1, s, s).transpose(1, 2).reshape(b, c + 1, 2 * s, s)
    del both
    out = erp.clone()
    n_top, n_bottom = _band_rows(h, w, s, wface)
    if n_top + n_bottom == 0:
        return out
    _, grid, valid = _band_plan(h, w, s, n_top, n_bottom, mode, atlas.device, atlas.dtype)
    # project and blend in chunks of ~1 Mpx rows: the samples and blend temporaries stay small
    # (each ERP pixel is sampled independently, so the result is the same as in one piece)
    step = max(1, (1 << 20) // w)
    for src0, src1, dst0 in ((0, n_top, 0), (n_top, n_top + n_bottom, h - n_bottom)):
        for a in range(src0, src1, step):
            e = min(a + step, src1)
            vals = F.grid_sample(atlas, grid[:, a:e].expand(b, -1, -1, -1), mode=mode, padding_mode="border",
                                 align_corners=False)
            bw = (vals[:, c:] * valid[:, :, a:e]).clamp(0, 1)
            rows = slice(dst0 + a - src0, dst0 + e - src0)
            band = erp[:, :, rows]
            out[:, :, rows] = torch.where(bw > 0, torch.lerp(band, vals[:, :c], bw), band)
    return out


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


def rgb_faces(faces: torch.Tensor, name: str = "pole_faces") -> torch.Tensor:
    """Inpainted faces as RGB: an alpha channel (4 channels) is dropped, grey (1) is expanded."""
    faces = check_bchw(faces, name, channels=(1, 3, 4))
    if faces.shape[1] == 4:
        return faces[:, :3]
    return faces.expand(-1, 3, -1, -1) if faces.shape[1] == 1 else faces


def merge_pole_faces_rgb(
    erp: torch.Tensor,
    faces: torch.Tensor,
    masks: torch.Tensor | None = None,
    feather: int = DEFAULT_FEATHER,
    fraction: float = DEFAULT_FRACTION,
) -> torch.Tensor:
    """:func:`merge_pole_faces` for a 1-4 channel panorama and grey/RGB/RGBA faces: the faces are
    made RGB (:func:`rgb_faces`), merged into the panorama's RGB, and the panorama's own channel
    layout (grey, alpha) is restored (:func:`join_rgb_alpha`)."""
    erp = check_erp(erp, "panorama")
    rgb, _ = split_rgb_alpha(erp)
    out = merge_pole_faces(rgb, rgb_faces(faces), masks, feather=feather, fraction=fraction)
    return join_rgb_alpha(out, rgb, erp)
