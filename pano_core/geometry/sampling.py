"""Sampling plans: precomputed grids for ``torch.nn.functional.grid_sample`` plus exact "patches".

A :class:`SamplePlan` samples one source image (an ERP panorama, a cube-face atlas or a flat
image) at fixed fractional pixel positions. The bulk of the work is one ``grid_sample`` call
(vectorised, parallel over the batch dimension) on the *unpadded* source with border padding.
Output pixels whose interpolation footprint leaves the source (across the 0°/360° seam, over a
pole, or across a cube-face edge) are recomputed exactly from explicit tap indices and weights
(the "patch"), so wrap-around sampling has no clamping seam and no padded copy of the source is
ever made. Everything is differentiable with respect to the source image.

Plans are cached in a bounded LRU cache keyed by (kind, shapes, parameters, mode, device, dtype);
the same cache holds the cv2.remap plans of the CPU path (:mod:`.remap`).

This is the path for autograd and non-CPU devices; CPU tensors that need no gradient take the
cv2.remap path of :mod:`.remap`, which gives the same results.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
import torch.nn.functional as F

from ..validate import check_choice

MODES = ("nearest", "bilinear", "bicubic")

_lock = threading.Lock()
_cache: OrderedDict[Hashable, SamplePlan] = OrderedDict()
_stats = {"hits": 0, "misses": 0}
_limits = {"maxsize": 16, "max_bytes": 1 << 30}


def check_mode(mode: str) -> str:
    return check_choice(mode, "mode", MODES)


def clear_cache() -> None:
    """Drop every cached sampling plan (and reset the hit/miss counters)."""
    with _lock:
        _cache.clear()
        _stats["hits"] = 0
        _stats["misses"] = 0


def cache_info() -> dict:
    """{'hits', 'misses', 'size', 'maxsize', 'bytes', 'max_bytes'} of the plan cache."""
    with _lock:
        return {
            **_stats,
            "size": len(_cache),
            "maxsize": _limits["maxsize"],
            "bytes": sum(p.nbytes for p in _cache.values()),
            "max_bytes": _limits["max_bytes"],
        }


def set_cache_limits(maxsize: int | None = None, max_bytes: int | None = None) -> None:
    """Change the LRU bounds (number of plans, total bytes); 0 disables caching."""
    with _lock:
        if maxsize is not None:
            _limits["maxsize"] = int(maxsize)
        if max_bytes is not None:
            _limits["max_bytes"] = int(max_bytes)
        _evict()


def _evict() -> None:
    total = sum(p.nbytes for p in _cache.values())
    while _cache and (len(_cache) > _limits["maxsize"] or total > _limits["max_bytes"]):
        _, p = _cache.popitem(last=False)
        total -= p.nbytes


def cached_plan(key: Hashable, build: Callable[[], SamplePlan]) -> SamplePlan:
    """Return the plan for ``key`` from the LRU cache, building (and caching) it if missing."""
    with _lock:
        plan = _cache.get(key)
        if plan is not None:
            _cache.move_to_end(key)
            _stats["hits"] += 1
            return plan
        _stats["misses"] += 1
    plan = build()
    with _lock:
        if _limits["maxsize"] > 0 and plan.nbytes <= _limits["max_bytes"]:
            _cache[key] = plan
            _cache.move_to_end(key)
            _evict()
    return plan


def sampling_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """dtype used for grids and sampling (half precision is sampled in float32 on the CPU)."""
    if dtype in (torch.float16, torch.bfloat16) and device.type == "cpu":
        return torch.float32
    return dtype


def _cubic_weights(t: torch.Tensor, a: float = -0.75) -> list[torch.Tensor]:
    """Weights of taps at offsets -1, 0, 1, 2 for fractional position t (Keys, a = -0.75, as torch/cv2)."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def taps(x: torch.Tensor, y: torch.Tensor, mode: str):
    """Integer tap positions and weights for fractional pixel positions (P,) -> lists of K tensors."""
    if mode == "nearest":
        return [torch.round(x).long()], [torch.round(y).long()], [torch.ones_like(x)]
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    if mode == "bilinear":
        offs = (0, 1)
        wx = [1 - fx, fx]
        wy = [1 - fy, fy]
    else:
        offs = (-1, 0, 1, 2)
        wx = _cubic_weights(fx)
        wy = _cubic_weights(fy)
    xs, ys, ws = [], [], []
    for a, wya in zip(offs, wy):
        for b, wxb in zip(offs, wx):
            xs.append(x0 + b)
            ys.append(y0 + a)
            ws.append(wya * wxb)
    return xs, ys, ws


def footprint_outside(x: torch.Tensor, y: torch.Tensor, mode: str, h: int, w: int) -> torch.Tensor:
    """True where the interpolation footprint of (x, y) leaves the h x w pixel grid."""
    if mode == "nearest":
        xr, yr = torch.round(x), torch.round(y)
        return (xr < 0) | (xr > w - 1) | (yr < 0) | (yr > h - 1)
    x0, y0 = torch.floor(x), torch.floor(y)
    lo, hi = (0, 1) if mode == "bilinear" else (-1, 2)
    return (x0 + lo < 0) | (x0 + hi > w - 1) | (y0 + lo < 0) | (y0 + hi > h - 1)


class SamplePlan:
    """Precomputed sampling of a (B, C, Hs, Ws) source into (B * N, C, h, w).

    ``grid``: (N, h, w, 2) normalised coordinates for grid_sample (align_corners=False).
    ``patch``: optional (pn, pp, tidx, tw): output image ``pn`` (0..N-1), flat output pixel ``pp``,
    flat source indices ``tidx`` (K, P) and weights ``tw`` (K, P) that replace those pixels.
    """

    def __init__(self, grid: torch.Tensor, src_hw: tuple[int, int], mode: str, patch=None, row_chunks: int = 1):
        self.grid = grid.contiguous()
        self.src_hw = src_hw
        self.mode = mode
        self.patch = patch
        n, h, w, _ = grid.shape
        self.n, self.h, self.w = n, h, w
        self.row_chunks = row_chunks if (n == 1 and row_chunks > 1 and h % row_chunks == 0) else 1

    @property
    def nbytes(self) -> int:
        b = self.grid.numel() * self.grid.element_size()
        if self.patch is not None:
            b += sum(t.numel() * t.element_size() for t in self.patch)
        extra = getattr(self, "mask", None)  # p2e keeps its coverage mask on the plan
        if isinstance(extra, torch.Tensor):
            b += extra.numel() * extra.element_size()
        return b

    def __call__(self, src: torch.Tensor) -> torch.Tensor:
        hs, ws = self.src_hw
        if tuple(src.shape[-2:]) != (hs, ws):  # pragma: no cover - internal misuse
            raise RuntimeError(f"plan built for a {hs}x{ws} source, got {tuple(src.shape)}")
        b, c = src.shape[:2]
        in_dtype = src.dtype
        src = src.to(self.grid.dtype)
        n, h, w = self.n, self.h, self.w
        outs = []
        for i in range(b):
            s = src[i : i + 1]
            k = self.row_chunks
            if k > 1:
                g = self.grid.view(k, h // k, w, 2)
                o = F.grid_sample(s.expand(k, -1, -1, -1), g, self.mode, "border", align_corners=False)
                o = o.transpose(0, 1).reshape(1, c, h, w)
            else:
                o = F.grid_sample(s.expand(n, -1, -1, -1), self.grid, self.mode, "border", align_corners=False)
            outs.append(o)
        out = outs[0] if b == 1 else torch.cat(outs, 0)
        if self.patch is not None:
            pn, pp, tidx, tw = self.patch
            k, p = tidx.shape
            flat = src.reshape(b, c, hs * ws)
            vals = (flat.index_select(2, tidx.reshape(-1)).view(b, c, k, p) * tw).sum(2)  # (b, c, P)
            out = out.contiguous()  # (row chunking can leave a non-contiguous view)
            out5 = out.view(b, n, c, h * w)
            out5[:, pn, :, pp] = vals.permute(2, 0, 1)
        return out.to(in_dtype)


def default_row_chunks() -> int:
    return max(1, min(torch.get_num_threads(), 8))


# ---------------------------------------------------------------------------------------------
# Plan builders
# ---------------------------------------------------------------------------------------------


def erp_pixel_coords(lon_deg: torch.Tensor, lat_deg: torch.Tensor, h: int, w: int):
    """ERP continuous pixel coordinates (x = column, y = row; pixel centres at integers)."""
    x = (lon_deg / 360.0 + 0.5) * w - 0.5
    y = (0.5 - lat_deg / 180.0) * h - 0.5
    return x, y


def resolve_erp_taps(xi: torch.Tensor, yi: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Flat indices of integer ERP taps, wrapping columns and reflecting rows over the poles."""
    top = yi < 0
    bottom = yi > h - 1
    yi = torch.where(top, -1 - yi, torch.where(bottom, 2 * h - 1 - yi, yi)).clamp(0, h - 1)
    xi = torch.where(top | bottom, xi + w // 2, xi)
    xi = torch.remainder(xi, w)
    return yi * w + xi


def build_erp_plan(
    lon_deg: torch.Tensor, lat_deg: torch.Tensor, h: int, w: int, mode: str, dtype: torch.dtype, row_chunks: int = 1
) -> SamplePlan:
    """Plan sampling an h x w ERP at directions given as lon/lat (N, ho, wo) in degrees."""
    x, y = erp_pixel_coords(lon_deg.double(), lat_deg.double(), h, w)
    # x wraps: keep x in [-0.5, w - 0.5) so grid_sample's border padding only matters near the seam
    x = torch.remainder(x + 0.5, w) - 0.5
    grid = torch.stack(((x + 0.5) * (2.0 / w) - 1.0, (y + 0.5) * (2.0 / h) - 1.0), dim=-1).to(dtype)
    outside = footprint_outside(x, y, mode, h, w)
    patch = None
    if bool(outside.any()):
        n_idx, r_idx, c_idx = torch.nonzero(outside, as_tuple=True)
        wo = x.shape[-1]
        xp, yp = x[outside], y[outside]
        xs, ys, ws = taps(xp, yp, mode)
        tidx = torch.stack([resolve_erp_taps(a, b, h, w) for a, b in zip(xs, ys)])
        tw = torch.stack(ws).to(dtype)
        patch = (n_idx, r_idx * wo + c_idx, tidx, tw)
    return SamplePlan(grid, (h, w), mode, patch, row_chunks)


def build_flat_plan(x: torch.Tensor, y: torch.Tensor, h: int, w: int, mode: str, dtype: torch.dtype, row_chunks: int = 1):
    """Plan sampling a flat h x w image (border clamp) at pixel coordinates x, y (N, ho, wo)."""
    grid = torch.stack(((x + 0.5) * (2.0 / w) - 1.0, (y + 0.5) * (2.0 / h) - 1.0), dim=-1).to(dtype)
    return SamplePlan(grid, (h, w), mode, None, row_chunks)


def build_cube_plan(
    face: torch.Tensor, j: torch.Tensor, i: torch.Tensor, s: int, mode: str, dtype: torch.dtype, row_chunks: int = 1
) -> SamplePlan:
    """Plan sampling a vertical face atlas (6 S, S) (faces F R B L U D stacked top to bottom).

    ``face``/``j``/``i`` (N, ho, wo): face index and continuous column/row within the face.
    Taps that fall off a face (bicubic near edges) are resolved through 3D onto the neighbour face.
    """
    from .directions import _basis, dirs_to_cube, face_plane_coords  # noqa: F401

    j = j.double().clamp(0, s - 1)
    i = i.double().clamp(0, s - 1)
    yy = face.double() * s + i
    grid = torch.stack(((j + 0.5) * (2.0 / s) - 1.0, (yy + 0.5) * (2.0 / (6 * s)) - 1.0), dim=-1).to(dtype)
    outside = footprint_outside(j, i, mode, s, s)
    patch = None
    if mode == "bicubic" and bool(outside.any()):
        n_idx, r_idx, c_idx = torch.nonzero(outside, as_tuple=True)
        wo = j.shape[-1]
        fp = face[outside]
        xs, ys, ws = taps(j[outside], i[outside], mode)
        b = _basis(j.device, torch.float64)[fp]  # (P, 3, 3)
        scale = 1.0 / (s - 1) if s > 1 else 0.0
        idx = []
        for xi, yi in zip(xs, ys):
            u = xi.double() * scale - 0.5
            v = yi.double() * scale - 0.5
            pt = 0.5 * b[:, 0] + u[:, None] * b[:, 1] + v[:, None] * b[:, 2]
            f2, j2, i2 = dirs_to_cube(pt, s)
            j2 = torch.round(j2).long().clamp(0, s - 1)
            i2 = torch.round(i2).long().clamp(0, s - 1)
            idx.append((f2 * s + i2) * s + j2)
        patch = (n_idx, r_idx * wo + c_idx, torch.stack(idx), torch.stack(ws).to(dtype))
    return SamplePlan(grid, (6 * s, s), mode, patch, row_chunks)


def faces_to_atlas(faces: torch.Tensor) -> torch.Tensor:
    """(B*6, C, S, S) -> (B, C, 6 S, S) vertical atlas (F R B L U D from top to bottom)."""
    bn, c, s, _ = faces.shape
    return faces.view(bn // 6, 6, c, s, s).transpose(1, 2).reshape(bn // 6, c, 6 * s, s)


def plan_key(*parts) -> tuple:
    return tuple(round(p, 9) if isinstance(p, float) else p for p in parts)


_ = math  # keep import for type users
