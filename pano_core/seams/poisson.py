"""Cross-face blending of cubemaps (JoPano's CFB): a Poisson equation per face.

For every face ``f`` of a cubemap, solve on the face's pixel grid::

    lap(u) = lap(f)        (5-point Laplacian of the face itself as guidance, interior pixels)
    u      = g             (Dirichlet condition on the 1-pixel border band)

where ``g`` on a border pixel is the average of all faces that see that pixel's 3D point: two
faces along an edge, three at a cube corner. With py360convert's convention the border pixels of
neighbouring faces are the same 3D points, so after blending both faces carry identical values on
the shared edge and the correction ``u - f`` (a harmonic function) spreads the former mismatch
smoothly into the face. Adjacency comes from :mod:`.adjacency` (derived from
``pano_core.geometry.face_directions``, cached per face size).

Solvers (``method``):

* ``"gauss-seidel"`` -- JoPano's solver: ``iterations`` red-black Gauss-Seidel sweeps (default 200)
  starting from the source face. Far from converged for large faces (the correction fades within
  a few dozen pixels of the edges). ``gs_impl="spectral"`` (default) evaluates exactly that
  iterate in closed form through the DST-I (see :mod:`.solvers`); ``gs_impl="sweep"`` runs the
  sweeps as vectorised torch ops (same numbers up to rounding, O(iterations) time).
* ``"exact"`` -- the converged solution by a direct DST-I solve (scipy on CPU, torch FFT on GPU).
"""

from __future__ import annotations

import torch

from ..errors import PanoInputError
from ..geometry import FACE_NAMES
from ..validate import check_choice, check_faces, check_int
from .adjacency import cube_adjacency
from .solvers import solve_exact, solve_gauss_seidel, solve_gauss_seidel_spectral, solve_ring_scipy

__all__ = ["METHODS", "blend_cube_faces", "edge_targets"]

METHODS = ("gauss-seidel", "exact")
GS_IMPLS = ("spectral", "sweep")


def edge_targets(faces: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Border values and their cross-face averages.

    Args:
        faces: (B*6, C, S, S) cubemap stack, S >= 2.
        keep: optional (6,) bool: faces that stay fixed. Where a fixed face shares a border
            point, the target is the average over the fixed faces only.
    Returns:
        ``(current, target)``, both (B, C, K): the values of the K = 6 (4S - 4) border pixels
        (ordered like ``cube_adjacency(S).border_index``) and the average over the faces that
        share each pixel's 3D point.
    """
    n6, c, s, _ = faces.shape
    adj = cube_adjacency(s)
    dev = faces.device
    bidx = adj.border_index.to(dev)
    grp = adj.group.to(dev)
    cnt = adj.group_count.to(dev, faces.dtype)
    ring = bidx[: bidx.shape[0] // 6]  # border pixels of one face (flat indices)
    # (B, 6, C, 4S-4) -> (B, C, K) with K face-major, like border_index (only the ring is copied)
    cur = faces.reshape(n6 // 6, 6, c, s * s)[..., ring].transpose(1, 2).reshape(n6 // 6, c, -1)
    sums = torch.zeros(cur.shape[:-1] + (cnt.shape[0],), dtype=faces.dtype, device=dev)
    sums.index_add_(-1, grp, cur)
    target = sums / cnt
    if keep is not None and bool(keep.any()):
        fixed = keep.to(dev).repeat_interleave(bidx.shape[0] // 6).to(faces.dtype)  # (K,)
        fsum = torch.zeros_like(sums).index_add_(-1, grp, cur * fixed)
        fcnt = torch.zeros_like(cnt).index_add_(0, grp, fixed)
        target = torch.where(fcnt > 0, fsum / fcnt.clamp_min(1), target)
    return cur, target[..., grp]


def blend_cube_faces(
    faces: torch.Tensor,
    method: str = "gauss-seidel",
    iterations: int = 200,
    backend: str = "auto",
    gs_impl: str = "spectral",
    keep: str | list[str] | tuple[str, ...] | None = None,
) -> torch.Tensor:
    """Blend the six faces of each cubemap so that they agree along all 12 edges.

    Args:
        faces: (B*6, C, S, S) float cubemap stack (faces F R B L U D of each panorama contiguous),
            1-4 channels, any device.
        method: ``"gauss-seidel"`` (JoPano, ``iterations`` red-black sweeps from the source) or
            ``"exact"`` (converged direct DST-I solve).
        iterations: Gauss-Seidel sweeps (ignored by ``exact``), >= 0.
        backend: ``"auto"`` (scipy for CPU tensors, torch FFT otherwise), ``"scipy"`` or
            ``"torch"``; used by ``exact`` and by the spectral Gauss-Seidel.
        gs_impl: ``"spectral"`` (closed-form iterate, default) or ``"sweep"`` (literal sweeps).
        keep: faces to keep exactly as they are (letters of F R B L U D, e.g. ``"F"`` for a given
            front view): their edge values become the boundary of their neighbours.
    Returns:
        Blended faces, same shape, dtype and device. Values are not clamped.
    """
    faces = check_faces(faces, "faces")
    check_choice(method, "method", METHODS)
    check_choice(gs_impl, "gs_impl", GS_IMPLS)
    check_choice(backend, "backend", ("auto", "scipy", "torch"))
    check_int(iterations, "iterations", 0)
    keep_mask = _keep_mask(keep)
    n6, c, s, _ = faces.shape
    if s < 2:
        return faces.clone()
    orig_dtype = faces.dtype
    work = faces if orig_dtype in (torch.float32, torch.float64) else faces.float()
    adj = cube_adjacency(s)
    cur, target = edge_targets(work, keep_mask)
    ring = adj.border_index[: adj.border_index.shape[0] // 6].to(work.device)
    delta = (target - cur).reshape(n6 // 6, c, 6, -1).transpose(1, 2)  # (B, 6, C, 4S-4)
    use_ring = (method == "exact" or gs_impl == "spectral") and s >= 3 and (
        backend == "scipy" or (backend == "auto" and work.device.type == "cpu"))
    if use_ring and not (method == "gauss-seidel" and iterations <= 0):
        # CPU fast path: the ring values go straight to the solver (no full-size boundary image);
        # the output starts as a copy of the faces (same memory format) with the new ring
        cl = work.permute(0, 2, 3, 1).is_contiguous()  # channels-last faces stay channels-last
        out = work.clone(memory_format=torch.channels_last if cl else torch.contiguous_format)
        out.view(n6 // 6, 6, c, s * s)[..., ring] += delta.to(out.dtype)
        b = delta.reshape(n6 * c, -1)  # per plane: the ring in border order
        sides = _ring_sides(b, s)
        solve_ring_scipy(sides, out, None if method == "exact" else iterations)
    else:
        # boundary change d = g - f on the ring (zero inside), laid out like the faces; a fresh
        # contiguous buffer (zeros_like would keep the strides of a layout view)
        d = torch.zeros(work.shape, dtype=work.dtype, device=work.device)
        d.view(n6 // 6, 6, c, s * s)[..., ring] = delta
        if method == "exact":
            out = solve_exact(None, d, backend=backend, x0=work)
        elif gs_impl == "spectral":
            out = solve_gauss_seidel_spectral(None, d, iterations, backend=backend, x0=work)
        else:
            out = work + solve_gauss_seidel(None, d, iterations)
    if keep_mask is not None and bool(keep_mask.any()):
        sel = keep_mask.to(out.device).repeat(n6 // 6)
        out[sel] = work[sel]
    return out.to(orig_dtype)


def _ring_sides(b: torch.Tensor, s: int):
    """Ring values of each plane (P, 4S-4) in border order (row-major, see
    ``adjacency.ring_indices``) -> (top, bottom, left, right) without the corners: the four sides
    next to the interior, as the solvers take them."""
    inner = torch.arange(1, s - 1, device=b.device)
    left = s + 2 * (inner - 1)
    return b[:, inner], b[:, s + 2 * (s - 2) + inner], b[:, left], b[:, left + 1]


def _keep_mask(keep) -> torch.Tensor | None:
    """Face letters (``"F"``, ``"F,U"``, ``["F", "U"]``) -> (6,) bool, or None."""
    if keep is None:
        return None
    if isinstance(keep, str):
        letters = [ch for part in keep.replace(",", " ").upper().split() for ch in part]
    else:
        letters = [str(k).upper() for k in keep]
    bad = [k for k in letters if k not in FACE_NAMES]
    if bad:
        raise PanoInputError(f"keep: expected face letters among F R B L U D, got {bad}")
    mask = torch.zeros(6, dtype=torch.bool)
    for k in letters:
        mask[FACE_NAMES.index(k)] = True
    return mask
