"""ERP <-> perspective (pinhole) views."""

from __future__ import annotations

import math

import torch

from ..budget import check_output_size
from ..errors import PanoInputError
from ._checks import check_bchw, check_erp
from .directions import (
    _check_size,
    _fov_pair,
    dirs_to_lonlat,
    erp_directions,
    perspective_directions,
    rotation_matrix,
)
from .remap import (
    build_e2p_remap,
    build_p2e_remap,
    fast_path_ok,
    fits,
    work_dtype,
)
from .sampling import (
    build_erp_plan,
    build_flat_plan,
    cached_plan,
    check_mode,
    default_row_chunks,
    sampling_dtype,
)


def _angles(yaw, pitch, roll) -> tuple[float, float, float]:
    out = []
    for v, nm in ((yaw, "yaw"), (pitch, "pitch"), (roll, "roll")):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise PanoInputError(f"{nm}: expected an angle in degrees, got {v!r}") from None
        if not math.isfinite(f):
            raise PanoInputError(f"{nm}: expected a finite angle in degrees, got {v!r}")
        out.append(round(f, 9))
    return tuple(out)


def _hw(hw, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in hw)
        if any(float(v) != int(v) for v in hw):
            raise ValueError
    except (TypeError, ValueError):
        raise PanoInputError(f"{name}: expected (height, width) as two positive integers, got {hw!r}") from None
    _check_size(h, f"{name} height")
    _check_size(w, f"{name} width")
    return h, w


def _fov_key(fov_deg):
    return round(float(fov_deg), 9) if isinstance(fov_deg, (int, float)) else tuple(round(float(v), 9) for v in fov_deg)


def e2p(
    erp: torch.Tensor,
    fov_deg,
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    out_hw: tuple[int, int] = (512, 512),
    mode: str = "bilinear",
) -> torch.Tensor:
    """Equirectangular (B, C, H, 2H) -> perspective view (B, C, h, w).

    ``fov_deg``: horizontal field of view in degrees (the vertical one follows from the aspect
    ratio with square pixels) or (h_fov, v_fov). Equivalent to py360convert
    ``e2p(e, (h_fov, v_fov), u_deg=yaw, v_deg=pitch, out_hw, in_rot_deg=roll)`` (note that
    py360convert uses a scalar fov for *both* directions).
    """
    check_mode(mode)
    erp = check_erp(erp, "panorama", channels=None)
    yaw, pitch, roll = _angles(yaw, pitch, roll)
    h, w = _hw(out_hw, "out_hw")
    _fov_pair(fov_deg, h, w)
    check_output_size("out_hw", w, h, erp.shape[0], erp.shape[1], erp.element_size(), "view")
    _, _, eh, ew = erp.shape
    if fast_path_ok(erp, mode) and fits(eh, ew, h, w):  # cv2.remap on the CPU (no gradient needed)
        wd = work_dtype(erp.dtype)

        def build_cv():
            hf, vf = _fov_pair(fov_deg, h, w)
            xm, ym = math.tan(math.radians(hf) / 2), math.tan(math.radians(vf) / 2)
            r = rotation_matrix(yaw, pitch, roll, dtype=torch.float64).numpy()
            return build_e2p_remap(xm, ym, h, w, eh, ew, r, mode, wd)

        key = ("e2p", eh, ew, _fov_key(fov_deg), yaw, pitch, roll, h, w, mode, "cv2", wd)
        return cached_plan(key, build_cv)(erp)
    dt = sampling_dtype(erp.dtype, erp.device)
    chunks = default_row_chunks()

    def build():
        d = perspective_directions(fov_deg, yaw, pitch, roll, h, w, device=erp.device, dtype=torch.float64)
        lon, lat = dirs_to_lonlat(d)
        return build_erp_plan(lon[None], lat[None], eh, ew, mode, dt, chunks)

    key = ("e2p", eh, ew, _fov_key(fov_deg), yaw, pitch, roll, h, w, mode, erp.device, dt, chunks)
    return cached_plan(key, build)(erp)


def p2e(
    img: torch.Tensor,
    fov_deg,
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    erp_hw: tuple[int, int] = (1024, 2048),
    mode: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Perspective view (B, C, h, w) -> (ERP (B, C, H, W), coverage mask (B, 1, H, W)).

    The inverse of :func:`e2p` with the same parameters. ERP pixels outside the view are 0 and
    have mask 0; the mask is 1 where the ERP pixel centre falls inside the view (up to half a
    pixel beyond the edge pixel centres).
    """
    check_mode(mode)
    img = check_bchw(img, "image", channels=None)
    yaw, pitch, roll = _angles(yaw, pitch, roll)
    eh, ew = _hw(erp_hw, "erp_hw")
    if ew != 2 * eh:
        raise PanoInputError(f"erp_hw: an equirectangular output must be 2:1 (width = 2 x height), got {ew}x{eh}")
    b, c, h, w = img.shape
    hf, vf = _fov_pair(fov_deg, h, w)
    check_output_size("erp_hw", ew, eh, b, c + 1, img.element_size(), "panorama")
    fast = fast_path_ok(img, mode) and fits(h, w, eh, ew)
    dt = work_dtype(img.dtype) if fast else sampling_dtype(img.dtype, img.device)
    dev = torch.device("cpu") if fast else img.device
    chunks = 1 if fast else default_row_chunks()

    def build():
        if fast:
            xm, ym = math.tan(math.radians(hf) / 2), math.tan(math.radians(vf) / 2)
            r = rotation_matrix(yaw, pitch, roll, dtype=torch.float64).numpy()
            return build_p2e_remap(xm, ym, h, w, eh, ew, r, mode, dt)
        d = erp_directions(eh, ew, device=dev, dtype=torch.float64)
        r = rotation_matrix(yaw, pitch, roll, device=dev, dtype=torch.float64)
        p = d @ r  # camera frame (row vectors: p = R^T d)
        z = p[..., 2]
        front = z > 1e-9
        zs = torch.where(front, z, torch.ones_like(z))
        xm = math.tan(math.radians(hf) / 2)
        ym = math.tan(math.radians(vf) / 2)
        col = (p[..., 0] / zs + xm) / (2 * xm) * (w - 1)
        row = (ym - p[..., 1] / zs) / (2 * ym) * (h - 1)
        inside = front & (col >= -0.5) & (col <= w - 0.5) & (row >= -0.5) & (row <= h - 0.5)
        col = torch.where(inside, col, torch.zeros_like(col)).clamp(0, w - 1)
        row = torch.where(inside, row, torch.zeros_like(row)).clamp(0, h - 1)
        plan = build_flat_plan(col[None], row[None], h, w, mode, dt, chunks)
        plan.mask = inside.to(dt)[None, None]
        return plan

    key = ("p2e", h, w, _fov_key(fov_deg), yaw, pitch, roll, eh, ew, mode, "cv2" if fast else img.device, dt, chunks)
    plan = cached_plan(key, build)
    out = plan(img)
    mask = plan.mask.to(img.dtype)
    return out * mask, mask.expand(b, 1, eh, ew).contiguous()
