"""Rotating whole panoramas."""

from __future__ import annotations

import math

import torch

from ..errors import PanoInputError
from ._checks import check_erp
from .directions import dirs_to_lonlat, erp_directions, rotation_matrix
from .perspective import _angles
from .remap import build_rotate_remap, fast_path_ok, fits, work_dtype
from .sampling import build_erp_plan, cached_plan, check_mode, default_row_chunks, sampling_dtype


def rotate_erp(erp: torch.Tensor, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, mode: str = "bilinear"):
    """Rotate a panorama: the output is what a camera turned by (yaw, pitch, roll) sees.

    The output centre (lon 0, lat 0) shows the input direction that :func:`e2p` with the same
    angles looks at; ``out(d) = in(R d)`` with ``R = rotation_matrix(yaw, pitch, roll)``.
    ``rotate_erp(x, yaw=a)`` equals ``roll_erp(x, a)`` when ``a`` is a whole number of pixels.
    """
    check_mode(mode)
    erp = check_erp(erp, "panorama", channels=None)
    yaw, pitch, roll = _angles(yaw, pitch, roll)
    _, _, h, w = erp.shape
    if fast_path_ok(erp, mode) and fits(h, w):  # cv2.remap on the CPU (no gradient needed)
        wd = work_dtype(erp.dtype)

        def build_cv():
            return build_rotate_remap(h, w, rotation_matrix(yaw, pitch, roll, dtype=torch.float64).numpy(), mode, wd)

        return cached_plan(("rotate", h, w, yaw, pitch, roll, mode, "cv2", wd), build_cv)(erp)
    dt = sampling_dtype(erp.dtype, erp.device)
    chunks = default_row_chunks()

    def build():
        d = erp_directions(h, w, device=erp.device, dtype=torch.float64)
        r = rotation_matrix(yaw, pitch, roll, device=erp.device, dtype=torch.float64)
        lon, lat = dirs_to_lonlat(d @ r.T)
        return build_erp_plan(lon[None], lat[None], h, w, mode, dt, chunks)

    return cached_plan(("rotate", h, w, yaw, pitch, roll, mode, erp.device, dt, chunks), build)(erp)


def roll_erp(erp: torch.Tensor, yaw_deg: float) -> torch.Tensor:
    """Exact yaw rotation by a whole number of pixels (``torch.roll``, no resampling).

    ``yaw_deg`` is rounded to the nearest multiple of 360 / W. Positive yaw turns right: the
    content that was at longitude ``yaw`` moves to the image centre (like :func:`rotate_erp`).
    """
    erp = check_erp(erp, "panorama", channels=None)
    try:
        y = float(yaw_deg)
    except (TypeError, ValueError):
        raise PanoInputError(f"yaw: expected an angle in degrees, got {yaw_deg!r}") from None
    if not math.isfinite(y):
        raise PanoInputError(f"yaw: expected a finite angle in degrees, got {yaw_deg!r}")
    w = erp.shape[-1]
    shift = round(y * w / 360.0) % w
    if shift == 0:
        return erp.clone()
    return torch.roll(erp, -shift, dims=-1)


def yaw_to_pixels(yaw_deg: float, width: int) -> int:
    """The whole-pixel shift :func:`roll_erp` applies for ``yaw_deg`` on an ERP of ``width``."""
    return round(float(yaw_deg) * width / 360.0) % width
