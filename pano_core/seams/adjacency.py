"""Cube-face adjacency derived geometrically from :func:`pano_core.geometry.face_directions`.

No hand-written table: every border pixel of every face is mapped to its 3D direction, projected
onto the cube surface and quantised to an integer lattice key. In the py360convert convention the
first and last pixel centres of a face lie *on* the cube edges, so the border pixels of two faces
that meet at an edge are the same 3D points: pixels with equal keys are one physical point, seen
by two faces (edge pixels) or three faces (the eight cube corners).

From the keys we get:

* ``groups`` -- for every border pixel, the id of its physical point (used by the cross-face
  blender to average the faces meeting there);
* ``edges`` -- the 12 cube edges as ``(face_a, side_a, face_b, side_b, reverse)``, where a side is
  ``top``/``bottom``/``left``/``right`` and ``reverse`` tells whether face b's side pixels run in
  the opposite order to face a's (used by the metrics to align the bands on both sides).

Results are cached per face size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..errors import PanoInputError
from ..geometry import FACE_BASIS, FACE_NAMES, face_directions
from ..geometry.directions import face_plane_coords

SIDES = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class Edge:
    """One cube edge shared by ``face_a``'s ``side_a`` and ``face_b``'s ``side_b`` (face indices)."""

    face_a: int
    side_a: str
    face_b: int
    side_b: str
    reverse: bool

    @property
    def name(self) -> str:
        return f"{FACE_NAMES[self.face_a]}-{FACE_NAMES[self.face_b]}"


@dataclass(frozen=True)
class CubeAdjacency:
    """Border-pixel groups and edges of a cube with faces of ``size`` pixels."""

    size: int
    border_index: torch.Tensor  # (K,) flat indices into a (6, S, S) face stack
    group: torch.Tensor  # (K,) physical point id of each border pixel
    group_count: torch.Tensor  # (G,) number of faces seeing each point (2 or 3)
    edges: tuple[Edge, ...]


def ring_indices(size: int) -> np.ndarray:
    """Flat indices of the 1-pixel border of an S x S face in row-major order (4S - 4 of them)."""
    s = size
    mid = np.arange(1, s - 1, dtype=np.int64) * s
    return np.concatenate([np.arange(s, dtype=np.int64), np.stack([mid, mid + s - 1], 1).reshape(-1),
                           np.arange((s - 1) * s, s * s, dtype=np.int64)])


def side_index(size: int, side: str) -> torch.Tensor:
    """(S, 2) (row, col) of the pixels of a face side, in increasing row/column order."""
    s = size
    r = torch.arange(s)
    if side == "top":
        return torch.stack([torch.zeros_like(r), r], 1)
    if side == "bottom":
        return torch.stack([torch.full_like(r, s - 1), r], 1)
    if side == "left":
        return torch.stack([r, torch.zeros_like(r)], 1)
    if side == "right":
        return torch.stack([r, torch.full_like(r, s - 1)], 1)
    raise ValueError(side)


def _keys(size: int) -> torch.Tensor:
    """(6, S, S, 3) integer lattice keys of all pixel centres on the cube surface (reference for
    :func:`_pixel_keys`, which computes the keys of given pixels only)."""
    d = face_directions(size, dtype=torch.float64)
    p = d / d.abs().amax(dim=-1, keepdim=True)  # cube of half-size 1
    return torch.round(p * (size - 1)).to(torch.int64)  # coordinates -(S-1) + 2j


def _pixel_keys(size: int, face: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """(N, 3) lattice keys of the pixel centres (face, row, col): the same numbers as
    ``_keys(size)[face, row, col]`` (a face pixel's point on the cube of half-size 1 is twice its
    point on the half-size-0.5 cube of ``face_points``), computed for these pixels only."""
    # numpy: small arrays, no thread pool to wake (torch's is slow to start on a loaded machine)
    b = np.asarray(FACE_BASIS, dtype=np.float64)[face.numpy()]  # (N, 3 vectors, xyz)
    t = face_plane_coords(size).numpy()
    p = 0.5 * b[:, 0] + t[col.numpy()][:, None] * b[:, 1] + t[row.numpy()][:, None] * b[:, 2]
    p /= np.abs(p).max(axis=-1, keepdims=True)
    return torch.from_numpy(np.rint(p * (size - 1)).astype(np.int64))


@lru_cache(maxsize=16)
def cube_adjacency(size: int) -> CubeAdjacency:
    """Adjacency of a cube with faces of ``size`` pixels (``size >= 2``), cached."""
    if not isinstance(size, int) or size < 2:
        raise PanoInputError(f"faces: cube faces must be at least 2x2 pixels, got size {size!r}")
    s = size
    border = torch.from_numpy(ring_indices(s))  # (4S-4,) row-major
    border_index = torch.cat([f * s * s + border for f in range(6)])
    # keys of the border pixels only (O(S) work and memory, not O(S^2))
    bkeys = _pixel_keys(s, border_index // (s * s), (border_index % (s * s)) // s, border_index % s).numpy()
    code = ((bkeys[:, 0] + (s - 1)) * (2 * s - 1) + (bkeys[:, 1] + (s - 1))) * (2 * s - 1) + (bkeys[:, 2] + (s - 1))
    _, group, count = np.unique(code, return_inverse=True, return_counts=True)
    group, count = torch.from_numpy(group.reshape(-1)), torch.from_numpy(count)
    n_corner = int((count == 3).sum())
    if not bool(((count == 2) | (count == 3)).all()) or n_corner != 8:
        raise RuntimeError(f"cube adjacency: unexpected border structure for size {s} (corners {n_corner})")

    # edges: match face sides whose end-point keys coincide
    sides = []
    for f in range(6):
        for sd in SIDES:
            idx = side_index(s, sd)
            k = _pixel_keys(s, torch.full((s,), f), idx[:, 0], idx[:, 1])  # (S, 3)
            sides.append((f, sd, k))
    edges = []
    used = set()
    for a, (fa, sa, ka) in enumerate(sides):
        for b in range(a + 1, len(sides)):
            fb, sb, kb = sides[b]
            if fb == fa or b in used or a in used:
                continue
            if torch.equal(ka, kb):
                rev = False
            elif torch.equal(ka, kb.flip(0)):
                rev = True
            else:
                continue
            edges.append(Edge(fa, sa, fb, sb, rev))
            used.update((a, b))
    if len(edges) != 12:
        raise RuntimeError(f"cube adjacency: found {len(edges)} edges instead of 12 for size {s}")
    return CubeAdjacency(s, border_index, group, count, tuple(edges))


def side_band(x: torch.Tensor, side: str, width: int, reverse: bool = False) -> torch.Tensor:
    """Band of ``width`` rows along a face side of ``x`` (..., S, S) -> (..., width, S).

    Row ``k`` of the band is at distance ``k`` pixels from the side (row 0 is the side itself);
    column ``t`` follows the side's pixel order (:func:`side_index`), reversed if ``reverse``.
    """
    s = x.shape[-1]
    if side == "top":
        b = x[..., :width, :]
    elif side == "bottom":
        b = x[..., s - width :, :].flip(-2)
    elif side == "left":
        b = x[..., :, :width].transpose(-1, -2)
    elif side == "right":
        b = x[..., :, s - width :].flip(-1).transpose(-1, -2)
    else:
        raise ValueError(side)
    return b.flip(-1) if reverse else b
