"""Analytic (structured) sampling grids for e2c / c2e, built in float32 from 1D pieces.

These produce the same plans as the generic builders in :mod:`.sampling` fed with
:func:`.directions.face_points` / :func:`.directions.erp_directions` (the tests check that), but
use the structure of the cube: side faces share one latitude pattern and have a longitude that
depends on the column only, the U/D faces mirror each other, and ERP pixels on a side face have a
face column that depends on the longitude only. Every full-size array is produced by one
broadcast operation, so the one-shot cost of a call stays small. Pixels whose footprint may leave
the ERP (seam, poles) are found with conservative thresholds and recomputed exactly in float64.
"""

from __future__ import annotations

import math

import torch

from .directions import dirs_to_lonlat, face_plane_coords, face_points
from .sampling import SamplePlan, build_cube_plan, erp_pixel_coords, footprint_outside, resolve_erp_taps, taps

_DEG = 180.0 / math.pi


def _safe_lonlat(mode: str, h: int, w: int, margin: float = 1e-3) -> tuple[float, float]:
    """(max |lon|, max |lat|) in degrees inside which an ERP footprint surely stays on the image."""
    # safe pixel coordinates: lo <= x <= w - 1 - lo (and the same for y), symmetric in lon/lat;
    # taps reach 0 (nearest: rounding), 1 (bilinear) or 2 (bicubic) pixels beyond floor(x)
    lo = {"nearest": -0.5, "bilinear": 0.0, "bicubic": 1.0}[mode]
    lon_max = ((w - 1 - lo - margin + 0.5) / w - 0.5) * 360.0
    lat_max = (0.5 - (lo + margin + 0.5) / h) * 180.0
    return lon_max, lat_max


def build_e2c_plan(h: int, w: int, s: int, mode: str, device, dtype) -> SamplePlan:
    """Plan for e2c: ERP (h, w) -> faces (6, s, s)."""
    f32 = torch.float32
    t = face_plane_coords(s, device, torch.float64)  # (S,)
    t32 = t.to(f32)
    lon_loc = torch.atan2(t, torch.full_like(t, 0.5)) * _DEG  # side faces: lon per column, (S,)
    r = torch.hypot(t, torch.full_like(t, 0.5)).to(f32)
    grid = torch.empty(6, s, s, 2, device=device, dtype=f32)
    # side faces F R B L: gy = -lat / 90 with lat = atan(-t_i / r_j), shared by the four faces
    gy_side = torch.atan(t32[:, None] / r[None, :]).mul_(_DEG / 90.0)  # (S, S) (= -lat / 90)
    lon_k = []
    for k in range(4):
        lon = torch.remainder(lon_loc + 90.0 * k + 180.0, 360.0) - 180.0  # [-180, 180)
        lon_k.append(lon)
        grid[k, :, :, 0] = (lon / 180.0).to(f32)[None, :]
        grid[k, :, :, 1] = gy_side
    # U: point (u, 0.5, t_i); D: point (u, -0.5, -t_i) = U mirrored vertically with lat negated
    tj, ti = t32[None, :], t32[:, None]
    lon_u = torch.atan2(tj.expand(s, s), ti.expand(s, s)).mul_(_DEG)
    lat_u = torch.atan2(torch.full((1, 1), 0.5, device=device), torch.hypot(tj, ti)).mul_(_DEG)
    grid[4, :, :, 0] = lon_u / 180.0
    grid[4, :, :, 1] = lat_u / -90.0
    grid[5, :, :, 0] = grid[4, :, :, 0].flip(0)
    grid[5, :, :, 1] = -grid[4, :, :, 1].flip(0)

    # patches: candidates found with conservative thresholds, then checked and computed exactly
    lon_max, lat_max = _safe_lonlat(mode, h, w)
    row_out = gy_side.abs() > lat_max / 90.0  # (S, S)
    cand = torch.zeros(6, s, s, dtype=torch.bool, device=device)
    for k in range(4):
        cand[k] = (lon_k[k].abs() > lon_max).to(device)[None, :] | row_out
    cap = (lat_u > lat_max) | (lon_u.abs() > lon_max)
    cand[4] = cap
    cand[5] = cap.flip(0)
    patch = None
    if bool(cand.any()):
        n_idx, r_idx, c_idx = torch.nonzero(cand, as_tuple=True)
        pts = face_points(s, device=device, dtype=torch.float64)[n_idx, r_idx, c_idx]  # exact, float64
        lon, lat = dirs_to_lonlat(pts)
        x, y = erp_pixel_coords(lon, lat, h, w)
        x = torch.remainder(x + 0.5, w) - 0.5
        keep = footprint_outside(x, y, mode, h, w)
        if bool(keep.any()):
            x, y = x[keep], y[keep]
            xs, ys, ws = taps(x, y, mode)
            tidx = torch.stack([resolve_erp_taps(a, b, h, w) for a, b in zip(xs, ys)])
            patch = (n_idx[keep], r_idx[keep] * s + c_idx[keep], tidx, torch.stack(ws).to(dtype))
    return SamplePlan(grid if dtype == f32 else grid.to(dtype), (h, w), mode, patch)


def build_c2e_plan(s: int, h: int, w: int, mode: str, device, dtype, row_chunks: int = 1) -> SamplePlan:
    """Plan for c2e: faces atlas (6 s, s) -> ERP (h, w).

    In normalised atlas coordinates (align_corners=False) a face point ``0.5 c + u r + v n`` of
    face ``f`` is at ``gx = alpha u``, ``gy = f / 3 - 5 / 6 + alpha v / 6`` with
    ``alpha = 2 (S - 1) / S``.
    """
    f64, f32 = torch.float64, torch.float32
    lon = ((torch.arange(w, device=device, dtype=f64) + 0.5) / w - 0.5) * (2 * math.pi)
    lat = (0.5 - (torch.arange(h, device=device, dtype=f64) + 0.5) / h) * math.pi
    k = torch.remainder(torch.round(lon / (math.pi / 2)), 4)  # side face per column: 0 F 1 R 2 B 3 L
    phi = torch.remainder(lon - k * (math.pi / 2) + math.pi, 2 * math.pi) - math.pi  # [-45, 45] deg
    alpha = 2.0 * (s - 1) / s
    cos_phi = torch.cos(phi)
    tanlat = torch.tan(lat)
    # a pixel lies on a side face when |tan(lat)| <= cos(phi)
    side = tanlat.abs().to(f32)[:, None] <= cos_phi.to(f32)[None, :]
    # caps: u = 0.5 cot|lat| sin(lon); v = +-0.5 cot|lat| cos(lon) (U: +, D: -)
    cot = 1.0 / torch.tan(lat.abs().clamp_min(1e-12))
    north = lat > 0
    grid = torch.empty(1, h, w, 2, device=device, dtype=f32)
    gx_side = (alpha * 0.5 * torch.tan(phi)).to(f32)[None, :]
    gx_cap = torch.mm(cot.to(f32)[:, None], (alpha * 0.5 * torch.sin(lon)).to(f32)[None, :])
    torch.where(side, gx_side, gx_cap, out=grid[0, :, :, 0])
    # side: v = -0.5 tan(lat) / cos(phi)
    # (rank-1 updates through addmm: much faster than broadcasting addcmul)
    gy_side = torch.addmm((k / 3.0 - 5.0 / 6.0).to(f32)[None, :], tanlat.to(f32)[:, None],
                          (-alpha / 12.0 / cos_phi).to(f32)[None, :])
    cap_off = torch.where(north, 4.0 / 3.0, 5.0 / 3.0) - 5.0 / 6.0
    cap_fac = torch.where(north, 1.0, -1.0) * cot * (alpha / 12.0)
    gy_cap = torch.addmm(cap_off.to(f32)[:, None], cap_fac.to(f32)[:, None], torch.cos(lon).to(f32)[None, :])
    torch.where(side, gy_side, gy_cap, out=grid[0, :, :, 1])
    if mode != "bicubic":
        return SamplePlan(grid if dtype == f32 else grid.to(dtype), (6 * s, s), mode, None, row_chunks)
    # bicubic: continuous face coordinates for the generic builder, which adds the cross-face
    # patches (taps resolved through 3D onto the neighbour face)
    gx, gy = grid[0, :, :, 0].double(), grid[0, :, :, 1].double()
    face = torch.where(side, k[None, :].expand(h, w), torch.where(north[:, None], 4.0, 5.0).expand(h, w)).long()
    if s == 1:  # alpha = 0: a 1-pixel face has the single coordinate 0
        jj = ii = torch.zeros_like(gx)
    else:
        jj = (gx / alpha + 0.5) * (s - 1)
        vv = (gy + 5.0 / 6.0 - face / 3.0) * 6.0 / alpha
        ii = (vv + 0.5) * (s - 1)
    return build_cube_plan(face[None], jj[None], ii[None], s, mode, dtype, row_chunks)
