"""Analytic (structured) sampling grids for e2c / c2e, built in float32 from 1D pieces.

These produce the same plans as the generic builders in :mod:`.sampling` fed with
:func:`.directions.face_points` / :func:`.directions.erp_directions` (the tests check that), but
use the structure of the cube: side faces share one latitude pattern and have a longitude that
depends on the column only, the U/D faces mirror each other, and ERP pixels on a side face have a
face column that depends on the longitude only. So the one-shot cost of a call stays small.
"""

from __future__ import annotations

import math

import torch

from .directions import face_plane_coords
from .sampling import SamplePlan, build_cube_plan, footprint_outside, resolve_erp_taps, taps


def _outside_1d(x: torch.Tensor, mode: str, n: int) -> torch.Tensor:
    """Footprint test along one axis (pixel coordinates, n pixels)."""
    if mode == "nearest":
        r = torch.round(x)
        return (r < 0) | (r > n - 1)
    f = torch.floor(x)
    lo, hi = (0, 1) if mode == "bilinear" else (-1, 2)
    return (f + lo < 0) | (f + hi > n - 1)


def build_e2c_plan(h: int, w: int, s: int, mode: str, device, dtype) -> SamplePlan:
    """Plan for e2c: ERP (h, w) -> faces (6, s, s)."""
    f64 = torch.float64
    t = face_plane_coords(s, device, f64)  # (S,)
    t32 = t.to(torch.float32)
    deg = 180.0 / math.pi
    # side faces F R B L: lon = atan2(u, 0.5) + 90 k (per column), lat = atan(-t_i / hypot(u, 0.5))
    lon_loc = torch.atan2(t, torch.full_like(t, 0.5)) * deg  # (S,)
    r = torch.hypot(t, torch.full_like(t, 0.5)).to(torch.float32)
    lat_side = torch.atan(-t32[:, None] / r[None, :]) * deg  # (S, S)
    # U: point (u, 0.5, t_i); D: point (u, -0.5, -t_i) = U mirrored vertically, lat negated
    tj, ti = t32[None, :], t32[:, None]
    lon_u = torch.atan2(tj.expand(s, s), ti.expand(s, s)) * deg
    lat_u = torch.atan2(torch.full((s, s), 0.5, device=device), torch.hypot(tj, ti)) * deg
    lon_d = lon_u.flip(0)
    lat_d = -lat_u.flip(0)

    grid = torch.empty(6, s, s, 2, device=device, dtype=torch.float32)
    xs_1d = []
    for k in range(4):
        lon = torch.remainder(lon_loc + 90.0 * k + 180.0, 360.0) - 180.0  # [-180, 180)
        x = (lon / 360.0 + 0.5) * w - 0.5
        x = torch.remainder(x + 0.5, w) - 0.5
        xs_1d.append(x)
        grid[k, :, :, 0] = ((x + 0.5) * (2.0 / w) - 1.0).to(torch.float32)[None, :]
    gy_side = lat_side * (-1.0 / 90.0)
    grid[:4, :, :, 1] = gy_side
    for k, (lon, lat) in ((4, (lon_u, lat_u)), (5, (lon_d, lat_d))):
        grid[k, :, :, 0] = lon * (1.0 / 180.0)
        grid[k, :, :, 1] = lat * (-1.0 / 90.0)

    # patches: taps across the 0/360 seam or over a pole
    y_side = (0.5 - lat_side.double() / 180.0) * h - 0.5
    row_out = _outside_1d(y_side, mode, h)  # (S, S)
    pn, pp, px, py = [], [], [], []
    for k in range(4):
        out = _outside_1d(xs_1d[k], mode, w)[None, :] | row_out
        if bool(out.any()):
            ii, jj = torch.nonzero(out, as_tuple=True)
            pn.append(torch.full_like(ii, k))
            pp.append(ii * s + jj)
            px.append(xs_1d[k][jj])
            py.append(y_side[ii, jj])
    for k, (lon, lat) in ((4, (lon_u, lat_u)), (5, (lon_d, lat_d))):
        x = (lon.double() / 360.0 + 0.5) * w - 0.5
        x = torch.remainder(x + 0.5, w) - 0.5
        y = (0.5 - lat.double() / 180.0) * h - 0.5
        out = footprint_outside(x, y, mode, h, w)
        if bool(out.any()):
            ii, jj = torch.nonzero(out, as_tuple=True)
            pn.append(torch.full_like(ii, k))
            pp.append(ii * s + jj)
            px.append(x[ii, jj])
            py.append(y[ii, jj])
    patch = None
    if pn:
        x, y = torch.cat(px), torch.cat(py)
        xs, ys, ws = taps(x, y, mode)
        tidx = torch.stack([resolve_erp_taps(a, b, h, w) for a, b in zip(xs, ys)])
        patch = (torch.cat(pn), torch.cat(pp), tidx, torch.stack(ws).to(dtype))
    return SamplePlan(grid.to(dtype), (h, w), mode, patch)


def build_c2e_plan(s: int, h: int, w: int, mode: str, device, dtype, row_chunks: int = 1) -> SamplePlan:
    """Plan for c2e: faces atlas (6 s, s) -> ERP (h, w)."""
    f64 = torch.float64
    lon = ((torch.arange(w, device=device, dtype=f64) + 0.5) / w - 0.5) * (2 * math.pi)
    lat = (0.5 - (torch.arange(h, device=device, dtype=f64) + 0.5) / h) * math.pi
    k = torch.remainder(torch.round(lon / (math.pi / 2)), 4)  # side face per column: 0 F 1 R 2 B 3 L
    phi = lon - k * (math.pi / 2)
    phi = torch.remainder(phi + math.pi, 2 * math.pi) - math.pi
    alpha = 2.0 * (s - 1) / s
    f32 = torch.float32
    # side faces: u = 0.5 tan(phi) (per column), w = -0.5 tan(lat) / cos(phi)
    gx_side = (alpha * 0.5 * torch.tan(phi)).to(f32)  # (W,)
    tanlat = torch.tan(lat).to(f32)
    sec = (0.5 / torch.cos(phi)).to(f32)
    v = tanlat[:, None] * sec[None, :]  # = -w_side, (H, W)
    side = v.abs() <= 0.5
    # caps: x = 0.5 cot|lat| sin(lon), Z = 0.5 cot|lat| cos(lon)
    cot = (1.0 / torch.tan(lat.abs().clamp_min(1e-12))).to(f32)
    a = cot[:, None] * (0.5 * torch.sin(lon)).to(f32)[None, :]
    b = cot[:, None] * (0.5 * torch.cos(lon)).to(f32)[None, :]
    north = (lat > 0).to(f32)
    cap_off = (north * (4.0 / 3.0) + (1 - north) * (5.0 / 3.0) - 5.0 / 6.0)[:, None]  # U row 4, D row 5
    cap_sign = (north * 2 - 1)[:, None] * (alpha / 6.0)
    grid = torch.empty(1, h, w, 2, device=device, dtype=f32)
    gx = torch.where(side, gx_side[None, :], a * alpha)
    gx.clamp_(-alpha / 2, alpha / 2)
    side_off = (k.to(f32) / 3.0 - 5.0 / 6.0)[None, :]
    gy = torch.where(side, side_off - v * (alpha / 6.0), cap_off + cap_sign * b)
    grid[0, :, :, 0] = gx
    grid[0, :, :, 1] = gy
    if mode != "bicubic":
        return SamplePlan(grid.to(dtype), (6 * s, s), mode, None, row_chunks)
    # bicubic: rebuild continuous face coordinates and let the generic builder add the
    # cross-face patches (taps resolved through 3D onto the neighbour face)
    face = torch.where(side, k[None, :].expand(h, w), torch.where(lat[:, None] > 0, 4.0, 5.0).expand(h, w)).long()
    jj = (gx.double() / alpha + 0.5) * (s - 1)
    # gy = f/3 - 5/6 + (alpha/6) w  =>  w = (gy + 5/6 - f/3) * 6 / alpha
    wv = (gy.double() + 5.0 / 6.0 - face / 3.0) * 6.0 / alpha
    ii = (wv + 0.5) * (s - 1)
    plan = build_cube_plan(face[None], jj[None], ii[None], s, mode, dtype, row_chunks)
    return plan
