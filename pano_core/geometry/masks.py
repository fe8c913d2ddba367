"""ERP masks: bands around the 0°/360° wrap seam or the cube-face edges, and pole caps."""

from __future__ import annotations

import math

import torch

from ..errors import PanoInputError
from ..validate import check_choice
from .directions import _check_size, dirs_to_cube, erp_directions, erp_lonlat

SEAM_KINDS = ("wrap", "cube", "both")
POLES = ("both", "north", "south")


def _nonneg(v, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise PanoInputError(f"{name}: expected a number >= 0, got {v!r}") from None
    if not math.isfinite(f) or f < 0:
        raise PanoInputError(f"{name}: expected a number >= 0, got {v!r}")
    return f


def _ramp(dist: torch.Tensor, half: float, feather: float) -> torch.Tensor:
    """1 inside ``dist <= half``, linear fall-off to 0 over ``feather`` beyond it."""
    if feather <= 0:
        return (dist <= half).to(dist.dtype)
    return (1 - (dist - half) / feather).clamp(0, 1)


def seam_mask(
    height: int,
    width: int,
    kind: str = "wrap",
    band_px: float = 16,
    feather_px: float = 8,
    face_size: int | None = None,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """(1, 1, H, W) ERP mask of seams, 1 on the seam band, feathered linearly to 0.

    ``kind``: ``wrap`` = the 0°/360° seam (left/right image edges), band measured in ERP columns;
    ``cube`` = the edges of the cube faces (F R B L U D, face size ``face_size``, default W // 4),
    band measured in face pixels; ``both`` = the maximum of the two. ``band_px`` is the full width
    of the band (half on each side of the seam), ``feather_px`` the width of the linear fall-off.
    """
    _check_size(height, "height")
    _check_size(width, "width")
    check_choice(kind, "kind", SEAM_KINDS)
    half = _nonneg(band_px, "band_px") / 2
    feather = _nonneg(feather_px, "feather_px")
    out = torch.zeros(height, width, dtype=torch.float64, device=device)
    if kind in ("wrap", "both"):
        c = torch.arange(width, dtype=torch.float64, device=device) + 0.5
        dist = torch.minimum(c, width - c)  # columns from the seam
        out = torch.maximum(out, _ramp(dist, half, feather)[None, :].expand(height, width))
    if kind in ("cube", "both"):
        s = width // 4 if face_size is None else face_size
        _check_size(s, "face_size")
        d = erp_directions(height, width, device=device, dtype=torch.float64)
        _, j, i = dirs_to_cube(d, max(s, 2))
        scale = max(s - 1, 1)
        dist = torch.minimum(torch.minimum(j, scale - j), torch.minimum(i, scale - i))  # face pixels
        out = torch.maximum(out, _ramp(dist, half, feather))
    return out.to(dtype)[None, None]


def pole_mask(
    height: int,
    width: int,
    lat_deg: float = 60.0,
    feather_deg: float = 5.0,
    pole: str = "both",
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """(1, 1, H, W) ERP mask, 1 where |latitude| >= ``lat_deg`` (north: lat >= , south: lat <= -),
    rising linearly from 0 at ``lat_deg - feather_deg``."""
    _check_size(height, "height")
    _check_size(width, "width")
    check_choice(pole, "pole", POLES)
    t = _nonneg(lat_deg, "lat_deg")
    if t > 90:
        raise PanoInputError(f"lat_deg: expected a latitude between 0 and 90, got {lat_deg!r}")
    feather = _nonneg(feather_deg, "feather_deg")
    _, lat = erp_lonlat(height, width, device=device, dtype=torch.float64)
    if pole == "north":
        a = lat
    elif pole == "south":
        a = -lat
    else:
        a = lat.abs()
    if feather > 0:
        m = ((a - (t - feather)) / feather).clamp(0, 1)
    else:
        m = (a >= t).to(torch.float64)
    return m.to(dtype)[None, None, :, None].expand(1, 1, height, width).contiguous()
