"""Cube padding: pad every face of a cubemap batch with its neighbour faces' pixels.

A cube face is a perspective view; a convolution that runs across its border needs the pixels
that lie *beyond* the border, which are on the neighbour faces. :func:`cube_pad` extends each
face plane outwards by ``width`` cells, takes the 3D direction of every new cell, finds the face
that direction falls on and samples that face there (bilinear by default). Nothing comes from a
hand-written adjacency table: orientation, flips and the rotated U/D faces all follow from the
face bases of :mod:`.directions` (``FACE_BASIS``, the py360convert convention).

**Cell convention.** Padding serves feature maps and latent token grids, where each pixel is a
cell of the face: a face of ``S`` cells covers the face plane ``[-0.5, 0.5]^2`` and cell
``(row i, column j)`` has its centre at ``u = (j + 0.5) / S - 0.5``, ``w = (i + 0.5) / S - 0.5``
(:func:`face_cell_directions`). This is the limit of the image convention of :mod:`.directions`
(edge pixels on the cube edges) for fine grids; on an image the two differ by at most half a
pixel, so padding an e2c image repeats the shared edge pixel once.

**Resampling.** A padded cell ``k`` cells outside a face lands on the neighbour face about
``k - 1/2`` cells inside it, with the coordinate along the edge slightly compressed toward the
edge midpoint (the perspective of the two planes); bilinear sampling (the default) reads it there,
``mode="nearest"`` takes the nearest cell. Samples falling between a face's outer cell centre
and its edge are clamped to that outer cell. For width 1 both modes give the classic
neighbour-row cube padding (up to the in-edge compression for ``bilinear``).

**Corners.** The padded corner squares (outside the face in both directions) are resampled the
same way: their directions lie beyond the cube corner, on one of the two faces that meet the
source face there, split along the diagonal. Cells exactly on the diagonal belong to both and
take the mean of the two samples, so the padding is symmetric under the cube's rotations (a 90°
yaw of the cube maps the padded cube onto itself).

Plans are built once per (size, width, mode, device, dtype) in float64 and cached
(:func:`cube_pad_cache_clear`); applying a plan is one copy of the interior plus a weighted gather
of at most K taps per border cell (K = 2 for width 1), with no Python loop over faces, and is
differentiable w.r.t. the faces. Channels-last inputs (what Sana's GLUMBConv feeds its depthwise
conv) are gathered C-rows at a time and padded channels-last.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..errors import PanoInputError
from ..validate import check_choice, check_int
from .directions import FACE_BASIS

__all__ = ["CUBE_PAD_MODES", "CubePadPlan", "cube_pad", "cube_pad_cache_clear", "cube_pad_plan", "face_cell_directions"]

CUBE_PAD_MODES = ("bilinear", "nearest")
_TIE_TOL = 1e-9  # relative tolerance for "on the diagonal" (exact ties in exact arithmetic)


def _basis64(device=None) -> torch.Tensor:
    return torch.tensor(FACE_BASIS, dtype=torch.float64, device=device)  # (6, 3[c, r, d], 3[xyz])


def _cell_coords(size: int, pad: int = 0) -> torch.Tensor:
    """(size + 2 pad,) plane coordinates of cell centres, extended ``pad`` cells past each edge."""
    c = torch.arange(-pad, size + pad, dtype=torch.float64)
    return (c + 0.5) / size - 0.5


def _cell_points(size: int, pad: int = 0) -> torch.Tensor:
    """(6, n, n, 3) points on the (extended) face planes of the cube of half-size 0.5, float64."""
    b = _basis64()
    t = _cell_coords(size, pad)
    u = t[None, None, :, None]  # columns
    w = t[None, :, None, None]  # rows
    return 0.5 * b[:, 0][:, None, None, :] + u * b[:, 1][:, None, None, :] + w * b[:, 2][:, None, None, :]


def face_cell_directions(size: int, pad: int = 0, device=None, dtype=None) -> torch.Tensor:
    """(6, S + 2 pad, S + 2 pad, 3) unit directions of the cell centres of faces F R B L U D.

    Cell ``(i, j)`` of a face of ``S`` cells is centred at plane coordinates
    ``((j + 0.5) / S - 0.5, (i + 0.5) / S - 0.5)`` (see the module docstring). With ``pad > 0``
    the face planes are extended by ``pad`` cells on every side (the padded cells of
    :func:`cube_pad`; their directions lie on the neighbour faces).
    """
    check_int(size, "size", 1)
    check_int(pad, "pad", 0)
    p = _cell_points(size, pad)
    d = p / p.norm(dim=-1, keepdim=True)
    return d.to(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())


@dataclass(frozen=True)
class CubePadPlan:
    """How :func:`cube_pad` fills the border of a (6, S + 2w, S + 2w) padded face stack.

    ``face``, ``row``, ``col`` (P,) are the padded border cells (output coordinates);
    ``src`` (P, K) index the source cells in the flattened (6 * S * S) face stack and ``weight``
    (P, K) are their sampling weights (rows sum to 1; unused taps have weight 0). Derived:
    ``src_face``/``src_pix`` (``src`` split into face and cell), ``dst_pix`` (row * n + col) and
    ``dst`` (the flat index in the (6 * n * n) padded stack).
    """

    size: int
    width: int
    face: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    src: torch.Tensor
    weight: torch.Tensor

    def __post_init__(self) -> None:
        area = self.size * self.size
        object.__setattr__(self, "src_face", torch.div(self.src, area, rounding_mode="floor"))
        object.__setattr__(self, "src_pix", self.src % area)
        n = self.size + 2 * self.width
        object.__setattr__(self, "dst_pix", self.row * n + self.col)
        object.__setattr__(self, "dst", self.face * (n * n) + self.row * n + self.col)

    def to(self, device=None, dtype=None) -> CubePadPlan:
        return CubePadPlan(
            self.size,
            self.width,
            self.face.to(device),
            self.row.to(device),
            self.col.to(device),
            self.src.to(device),
            self.weight.to(device=device, dtype=dtype),
        )


def _build_plan(size: int, width: int, mode: str) -> CubePadPlan:
    """The padding plan in float64 on the CPU (see the module docstring for the geometry)."""
    s, w = size, width
    n = s + 2 * w
    b = _basis64()
    pts = _cell_points(s, w)  # (6, n, n, 3)
    idx = torch.arange(n)
    inside = (idx >= w) & (idx < w + s)
    border = ~(inside[:, None] & inside[None, :])  # (n, n)
    face, row, col = torch.nonzero(border[None].expand(6, n, n), as_tuple=True)
    d = pts[face, row, col]  # (P, 3)
    # Coordinates of every border direction on every face's plane: u = 0.5 (d.r)/(d.c), ...
    dc = d @ b[:, 0].T  # (P, 6)
    dr = d @ b[:, 1].T
    dn = d @ b[:, 2].T
    front = dc > 0
    safe = torch.where(front, dc, torch.ones_like(dc))
    u = 0.5 * dr / safe
    v = 0.5 * dn / safe
    lim = 0.5 * (1 + _TIE_TOL)
    on = front & (u.abs() <= lim) & (v.abs() <= lim)
    on[torch.arange(len(face)), face] = False  # a padded cell never samples its own face
    count = on.sum(1)
    if bool((count < 1).any()):  # cannot happen for a cube; guards the geometry above
        raise RuntimeError(f"cube padding: {int((count < 1).sum())} padded cells found no face (size {s}, width {w})")
    # Continuous cell coordinates on each candidate face, clamped into the face's cell centres.
    x = ((u + 0.5) * s - 0.5).clamp(0, s - 1)
    y = ((v + 0.5) * s - 0.5).clamp(0, s - 1)
    g = torch.arange(6).expand_as(x)
    share = on.to(torch.float64) / count[:, None]
    if mode == "nearest":
        xi, yi = torch.floor(x + 0.5).long().clamp(0, s - 1), torch.floor(y + 0.5).long().clamp(0, s - 1)
        srcs = [(g * s + yi) * s + xi]
        wts = [share]
    else:
        x0, y0 = x.floor().long().clamp(0, s - 1), y.floor().long().clamp(0, s - 1)
        x1, y1 = (x0 + 1).clamp(max=s - 1), (y0 + 1).clamp(max=s - 1)
        fx, fy = x - x0, y - y0
        srcs = [(g * s + yy) * s + xx for yy in (y0, y1) for xx in (x0, x1)]
        wts = [share * a * c for a in (1 - fy, fy) for c in (1 - fx, fx)]
    src = torch.cat(srcs, 1)  # (P, 6 * taps): every face's taps, weight 0 off the candidate faces
    wt = torch.cat(wts, 1)
    # Merge duplicate taps and drop zero weights, keeping K = the most taps any cell needs.
    src = torch.where(wt > 0, src, torch.full_like(src, -1))
    order = torch.argsort(src, dim=1)
    src = src.gather(1, order)
    wt = wt.gather(1, order)
    first = torch.ones_like(src, dtype=torch.bool)
    first[:, 1:] = src[:, 1:] != src[:, :-1]
    slot = first.long().cumsum(1) - 1
    merged_w = torch.zeros_like(wt).scatter_add_(1, slot, wt)
    merged_s = torch.zeros_like(src).scatter_(1, slot, src)
    keep = merged_w > 0
    k = int(keep.sum(1).max())
    # Move the kept taps to the front of each row, then cut to K columns.
    pos = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]
    weight = merged_w.gather(1, pos)
    src = merged_s.gather(1, pos).clamp_min(0)
    weight = weight / weight.sum(1, keepdim=True)
    return CubePadPlan(s, w, face, row, col, src, weight)


@lru_cache(maxsize=64)
def _plan_cpu(size: int, width: int, mode: str) -> CubePadPlan:
    return _build_plan(size, width, mode)


@lru_cache(maxsize=128)
def _plan_on(size: int, width: int, mode: str, device: torch.device, dtype: torch.dtype) -> CubePadPlan:
    return _plan_cpu(size, width, mode).to(device=device, dtype=dtype)


def cube_pad_plan(size: int, width: int, mode: str = "bilinear", device=None, dtype=torch.float32) -> CubePadPlan:
    """The cached :class:`CubePadPlan` for faces of ``size`` cells padded by ``width``."""
    check_int(size, "size", 1)
    check_int(width, "width", 0)
    check_choice(mode, "mode", CUBE_PAD_MODES)
    return _plan_on(size, width, mode, torch.device(device) if device is not None else torch.device("cpu"), dtype)


def cube_pad_cache_clear() -> None:
    """Forget every cached padding plan."""
    _plan_on.cache_clear()
    _plan_cpu.cache_clear()


def cube_pad(faces: torch.Tensor, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Pad a cubemap face stack with its neighbour faces: (B*6, C, S, S) -> (B*6, C, S+2w, S+2w).

    ``faces``: the six faces F R B L U D of each panorama, contiguous in the batch (``stack``
    layout), oriented as py360convert's ``e2c``. ``width``: cells added on every side (0 returns
    the input). ``mode``: ``"bilinear"`` (default) or ``"nearest"`` resampling of the neighbour
    faces. The interior is the input unchanged; see the module docstring for the geometry,
    corners and caching. Differentiable w.r.t. ``faces``; any float dtype and device.
    """
    if not isinstance(faces, torch.Tensor) or faces.ndim != 4:
        raise PanoInputError(f"faces: expected a (B*6, C, S, S) tensor, got {_describe(faces)}")
    bf, c, h, w_ = faces.shape
    if bf % 6 or bf == 0 or h != w_:
        raise PanoInputError(
            f"faces: expected a stack of whole cubemaps (B*6, C, S, S): 6 square faces F R B L U D per panorama, "
            f"contiguous; got shape {tuple(faces.shape)}"
        )
    check_int(width, "width", 0)
    if width == 0:
        return faces
    if not faces.is_floating_point():
        raise PanoInputError(f"faces: expected a float tensor, got {faces.dtype}")
    plan = cube_pad_plan(h, width, mode, faces.device, faces.dtype)
    b = bf // 6
    n = h + 2 * width
    k = plan.src.shape[1]
    if faces.is_contiguous(memory_format=torch.channels_last) and not faces.is_contiguous():
        # Channels-last (what Sana's GLUMBConv feeds its depthwise conv): gather whole C-rows.
        rows = faces.permute(0, 2, 3, 1)  # (B*6, S, S, C), contiguous
        out = faces.new_empty(b, 6, n, n, c)
        out[:, :, width : width + h, width : width + h] = rows.view(b, 6, h, h, c)
        src = rows.reshape(b, 6 * h * h, c)
        vals = src.index_select(1, plan.src[:, 0]) * plan.weight[:, 0, None]
        for i in range(1, k):  # K <= 8 taps, not faces
            vals = vals + src.index_select(1, plan.src[:, i]) * plan.weight[:, i, None]
        out.view(b, 6 * n * n, c).index_copy_(1, plan.dst, vals)
        return out.view(bf, n, n, c).permute(0, 3, 1, 2)  # channels-last result
    out = faces.new_empty(b, 6, c, n, n)
    out[..., width : width + h, width : width + h] = faces.view(b, 6, c, h, h)
    flat = faces.reshape(b, 6, c, h * h)
    # advanced indices around a slice: (P, B, C) per tap
    vals = flat[:, plan.src_face[:, 0], :, plan.src_pix[:, 0]] * plan.weight[:, 0, None, None]
    for i in range(1, k):
        vals = vals + flat[:, plan.src_face[:, i], :, plan.src_pix[:, i]] * plan.weight[:, i, None, None]
    out.view(b, 6, c, n * n)[:, plan.face, :, plan.dst_pix] = vals
    return out.view(bf, c, n, n)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return type(x).__name__
