"""Dirichlet Poisson solvers on rectangles (5-point Laplacian), shared by the cube and wrap blenders.

The discrete problem on an ``H x W`` grid (``H, W >= 3``): for every interior pixel ``(i, j)``
(``1 <= i <= H-2``, ``1 <= j <= W-2``)::

    u[i-1, j] + u[i+1, j] + u[i, j-1] + u[i, j+1] - 4 u[i, j] = rhs[i, j]

and ``u = bnd`` on the 1-pixel outer ring. Two solvers:

* :func:`solve_exact` -- direct solve with the type-I discrete sine transform (DST-I), which
  diagonalises the 5-point Laplacian with Dirichlet boundaries:
  ``u_int = DST(DST(b) / lambda)`` with ``lambda_jk = 2 cos(pi j/(m+1)) + 2 cos(pi k/(n+1)) - 4``.
  On CPU tensors it uses :mod:`scipy.fft` (float64 inside); on other devices (CUDA) a torch path
  computes the DST-I as an FFT of the odd extension (same numbers, in the input's precision,
  at least float32). The DST-I of length m is an FFT of length 2(m + 1), slow when that has a
  large prime factor (power-of-two faces: 2(S - 1), 4094 = 2·23·89 at S = 2048); on CPU such
  sizes are solved on a grid one row and column bigger at a fast length, with the extra line
  pinned by a capacitance solve (:func:`fast_interior`; same solution to rounding). The
  Gauss-Seidel iterate below is defined in the face's own sine basis and keeps its length.
* :func:`solve_gauss_seidel` -- red-black Gauss-Seidel sweeps (JoPano's solver), vectorised in
  torch on the four parity sub-grids so it runs on any device. It starts from an initial guess
  (the source image) and does a fixed number of sweeps.

Both take the problem as a correction ``h = u - x0`` of an initial guess ``x0``: the caller gives
the interior residual ``r = rhs - lap(x0)`` (or ``None`` when it is zero, the cube case) and the
boundary change ``d = bnd - x0`` on the ring; the solvers return ``h`` (``u = x0 + h``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["laplacian5", "solve_exact", "solve_gauss_seidel", "solve_gauss_seidel_spectral", "residual"]


def laplacian5(x: torch.Tensor) -> torch.Tensor:
    """5-point Laplacian of the interior of ``x`` (..., H, W) -> (..., H-2, W-2)."""
    return (
        x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] + x[..., 1:-1, 2:] - 4.0 * x[..., 1:-1, 1:-1]
    )


def residual(u: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Max absolute residual ``|lap(u) - rhs|`` over the interior (rhs given full-size or interior-size)."""
    if rhs.shape[-2:] == u.shape[-2:]:
        rhs = rhs[..., 1:-1, 1:-1]
    return (laplacian5(u.double()) - rhs.double()).abs().amax()


# ---------------------------------------------------------------------------------------------
# exact solver (DST-I)
# ---------------------------------------------------------------------------------------------


def _eigenvalues(m: int, n: int, dtype, device=None, lib=torch):
    if lib is np:
        j = np.arange(1, m + 1, dtype=np.float64)
        k = np.arange(1, n + 1, dtype=np.float64)
        return (2 * np.cos(np.pi * j / (m + 1)))[:, None] + (2 * np.cos(np.pi * k / (n + 1)))[None, :] - 4.0
    j = torch.arange(1, m + 1, dtype=torch.float64, device=device)
    k = torch.arange(1, n + 1, dtype=torch.float64, device=device)
    lam = (2 * torch.cos(math.pi * j / (m + 1)))[:, None] + (2 * torch.cos(math.pi * k / (n + 1)))[None, :] - 4.0
    return lam.to(dtype)


@functools.lru_cache(maxsize=8)
def _inv_eigenvalues(m: int, n: int, dtype, sign: float) -> np.ndarray:
    """``sign / lambda`` (m, n) as a read-only numpy array of ``dtype`` (cached)."""
    a = (sign / _eigenvalues(m, n, None, lib=np)).astype(dtype)
    a.setflags(write=False)
    return a


def _ring_rhs(d: torch.Tensor):
    """Split the ring of ``d`` (..., H, W) into the four side vectors adjacent to the interior."""
    top = d[..., 0, 1:-1]
    bottom = d[..., -1, 1:-1]
    left = d[..., 1:-1, 0]
    right = d[..., 1:-1, -1]
    return top, bottom, left, right


def _sine_vec(n: int, idx: int, lib=np, dtype=None, device=None):
    """Column ``idx`` of the orthonormal DST-I matrix of size n."""
    if lib is np:
        k = np.arange(1, n + 1, dtype=np.float64)
        return math.sqrt(2.0 / (n + 1)) * np.sin(np.pi * k * (idx + 1) / (n + 1))
    k = torch.arange(1, n + 1, dtype=torch.float64, device=device)
    return (math.sqrt(2.0 / (n + 1)) * torch.sin(math.pi * k * (idx + 1) / (n + 1))).to(dtype)


def _gs_factor(m: int, n: int, iterations: int, lib=np, device=None):
    """Spectral factor of ``iterations`` red-black Gauss-Seidel sweeps (see :func:`_apply_gs`)."""
    if lib is np:
        mu = 0.5 * (np.cos(np.pi * np.arange(1, m + 1) / (m + 1))[:, None]
                    + np.cos(np.pi * np.arange(1, n + 1) / (n + 1))[None, :])
        return 0.5 * mu ** (2 * iterations - 1) * (1.0 + mu)
    j = torch.arange(1, m + 1, dtype=torch.float64, device=device)
    k = torch.arange(1, n + 1, dtype=torch.float64, device=device)
    mu = 0.5 * (torch.cos(math.pi * j / (m + 1))[:, None] + torch.cos(math.pi * k / (n + 1))[None, :])
    return 0.5 * mu ** (2 * iterations - 1) * (1.0 + mu)


@functools.lru_cache(maxsize=8)
def _gs_factor_cached(m: int, n: int, iterations: int, dtype) -> np.ndarray:
    """:func:`_gs_factor` (computed in float64) as a read-only array of ``dtype``, cached."""
    a = _gs_factor(m, n, iterations).astype(dtype)
    a.setflags(write=False)
    return a


def _apply_gs(hhat, iterations: int, lib=np):
    """Turn the exact solution's DST-I coefficients into those of ``iterations`` red-black sweeps.

    Fourier analysis of red-black Gauss-Seidel for the 5-point Laplacian with Dirichlet
    boundaries: multiplying by the checkerboard sign ``(-1)^(i+j)`` maps sine mode ``(j, k)`` to
    mode ``(m+1-j, n+1-k)`` and the Jacobi averaging operator has eigenvalue
    ``mu = (cos(pi j/(m+1)) + cos(pi k/(n+1))) / 2`` (``-mu`` on the partner). On each pair the
    sweep (red half-step, then black) is the rank-one 2x2 matrix ``M = mu/2 (1+mu, 1-mu)^T (1, -1)``,
    so ``M^K = mu^(2K-2) M``. Starting from ``h = 0`` (the source image), the error is ``-h*`` and
    ``h_K = h* + M^K (-h*)``: per coefficient
    ``h_K[j,k] = h*[j,k] - mu^(2K-1) (1+mu) / 2 * (h*[j,k] - h*[m+1-j, n+1-k])``.
    This is the same iterate as sweeping (verified against :func:`solve_gauss_seidel`), computed
    in O(N log N) instead of O(K N). The numpy path works in place in the array's precision with
    a cached factor.
    """
    m, n = hhat.shape[-2:]
    if lib is np:
        diff = np.subtract(hhat, hhat[..., ::-1, ::-1])
        diff *= _gs_factor_cached(m, n, iterations, hhat.dtype)
        hhat -= diff
        return hhat
    fac = _gs_factor(m, n, iterations, torch, hhat.device).to(hhat.dtype)
    return hhat - fac * (hhat - hhat.flip(-1, -2))


CHUNK_BYTES = 64 * 2**20  # spectrum bytes per chunk of planes in the scipy solver


def _sine_basis(m: int, n: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return tuple(v.astype(dtype) for v in (_sine_vec(m, 0), _sine_vec(m, m - 1), _sine_vec(n, 0), _sine_vec(n, n - 1)))


def _add_interior(out: torch.Tensor, p0: int, h: torch.Tensor) -> None:
    """``out``'s planes ``p0 .. p0 + len(h)``: interior += ``h`` (``out`` (P, H, W) or (N, C, H, W), any
    memory format; plane ``q`` of the latter is ``out[q // C, q % C]``)."""
    h = h.to(out.dtype)
    if out.ndim == 3:
        out[p0 : p0 + h.shape[0], 1:-1, 1:-1] += h
        return
    c = out.shape[1]
    for i in range(h.shape[0]):
        q = p0 + i
        out[q // c, q % c, 1:-1, 1:-1] += h[i]


def solve_ring_scipy(sides, out: torch.Tensor, iterations: int | None = None, r: torch.Tensor | None = None,
                     fast_length: bool = True) -> None:
    """Add the interior of the solution ``h`` to ``out`` in place (CPU, scipy).

    ``out``: (P, H, W) planes, or (N, C, H, W) of any memory format (plane ``q`` is
    ``out[q // C, q % C]``; e.g. channels-last faces).

    ``sides``: the boundary change on the ring next to the interior, ``(top, bottom, left, right)``
    of shapes (P, W-2), (P, W-2), (P, H-2), (P, H-2) (any float dtype); ``r``: optional interior
    right-hand side (P, H-2, W-2). Exact solve (``iterations`` None) or the spectral Gauss-Seidel
    iterate. Works in chunks of planes (:data:`CHUNK_BYTES`), so its temporaries stay small
    whatever the image size; the spectrum is the outer-product sum of the four side transforms
    (one rank-4 matrix product per plane, no full-size broadcasts). With ``fast_length`` (default)
    the exact solve of an interior whose DST-I length is slow (power-of-two faces) runs on a
    slightly bigger grid at a fast length (see :func:`fast_interior`, :func:`_solve_ring_embedded`).
    """
    import scipy.fft as sfft

    H, W = out.shape[-2:]
    npl = out.shape[0] if out.ndim == 3 else out.shape[0] * out.shape[1]
    m, n = H - 2, W - 2
    workers = max(1, min(4, torch.get_num_threads()))
    wdtype = np.float64 if out.dtype == torch.float64 else np.float32
    top, bottom, left, right = (v.detach().double().cpu().numpy() for v in sides)
    if iterations is None and fast_length:
        m2, n2 = fast_interior(m), fast_interior(n)
        if (m2, n2) != (m, n):  # an awkward DST length: solve on a slightly bigger grid
            _solve_ring_embedded(top, bottom, left, right, out, r, m2, n2, workers)
            return
    # DST2(e_0 (x) v) = s_0 (x) DST1(v): the ring part of the spectrum from four 1-D transforms
    ft, fb, fl, fr = (sfft.dst(v, type=1, norm="ortho", axis=-1, workers=workers).astype(wdtype)
                      for v in (top, bottom, left, right))
    s_m0, s_m1, s_n0, s_n1 = _sine_basis(m, n, wdtype)
    inv = _inv_eigenvalues(m, n, wdtype, 1.0 if r is not None else -1.0)
    step = max(1, CHUNK_BYTES // max(1, m * n * np.dtype(wdtype).itemsize))
    for p0 in range(0, npl, step):
        p1 = min(npl, p0 + step)
        k = p1 - p0
        u = np.empty((k, m, 4), dtype=wdtype)
        u[:, :, 0], u[:, :, 1], u[:, :, 2], u[:, :, 3] = s_m0, s_m1, fl[p0:p1], fr[p0:p1]
        v = np.empty((k, 4, n), dtype=wdtype)
        v[:, 0], v[:, 1], v[:, 2], v[:, 3] = ft[p0:p1], fb[p0:p1], s_n0, s_n1
        bhat = np.matmul(u, v)  # (k, m, n)
        if r is not None:
            rr = r[p0:p1].detach().double().cpu().numpy()
            rhat = sfft.dstn(rr, type=1, norm="ortho", axes=(-2, -1), workers=workers).astype(wdtype)
            np.subtract(rhat, bhat, out=bhat)
        bhat *= inv
        if iterations is not None:
            _apply_gs(bhat, iterations)
        _add_interior(out, p0, torch.from_numpy(sfft.idstn(bhat, type=1, norm="ortho", axes=(-2, -1),
                                                           workers=workers, overwrite_x=True)))


# ---------------------------------------------------------------------------------------------
# exact solver at a fast DST length: embedding + capacitance (issue 14, point 18)
# ---------------------------------------------------------------------------------------------
#
# The DST-I of length m is an FFT of length 2(m + 1). For power-of-two faces m = S - 2, so that
# length is 2(S - 1): 4094 = 2·23·89 at S = 2048, where the transform is several times slower
# than at m + 1 = 2047 (4096). The exact solve therefore runs on a grid one row (and/or column)
# larger, m' >= m + 1 interior rows with 2(m' + 1) a 2·3·5-smooth number, and pins the extra line
# that was the face's bottom ring row (and right ring column) to its ring values with a source
# sigma on that line (a capacitance-matrix method): on the bigger grid
#     h = h0 + G sigma,   h0 = A'^-1 (rhs without sigma),   G = A'^-1 restricted to the lines,
# and sigma = C^-1 (d_L - h0_L) with C = G on the lines x lines. Inside the lines the result is
# the original face's exact solution (its ring is pinned; what lies beyond does not reach it).
# Everything except C^-1 is a cheap rank-1 product or a 1-D transform; C (m + n square) is
# built from DSTs at the fast length and factored (Cholesky, float64) once per face size.

EMBED_MIN = 1000  # smaller interiors are solved directly (the saving would not pay for the set-up)
EMBED_PRIME = 31  # ... and so are interiors whose 2(m + 1) has no prime factor above this (pocketfft is fast there)


def _largest_prime(n: int) -> int:
    p, big = 2, 1
    while p * p <= n:
        while n % p == 0:
            n //= p
            big = p
        p += 1
    return max(big, n)


def fast_interior(m: int, min_size: int | None = None) -> int:
    """The interior length the exact solver transforms at for an interior of ``m``.

    ``m`` itself when ``m < min_size`` (default :data:`EMBED_MIN`) or the DST-I's FFT length
    ``2(m + 1)`` has no prime factor above :data:`EMBED_PRIME`; else the smallest ``m' > m`` with a
    2·3·5-smooth ``2(m' + 1)``: 2046 -> 2047 (S = 2048), 1534 -> 1535, 2998 -> 2999. (Measured with
    ``scipy.fft.idstn``, one plane: 2046 is 2.3-4.7x slower than 2047, 2998 4.5x slower than 2999,
    1278 5.6x slower than 1279, while 1022 / 1023 (factors 11, 31) is 1.5x and 4094 / 4095 (7, 13)
    1.4x, where the capacitance step would eat the gain.)"""
    if m < (EMBED_MIN if min_size is None else min_size) or _largest_prime(2 * (m + 1)) <= EMBED_PRIME:
        return m
    mp = m + 1
    while _largest_prime(2 * (mp + 1)) > 5:
        mp += 1
    return mp


def _neg_cholesky(c: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``-c`` (``-c = U^T U``), Fortran-ordered for LAPACK; ``c`` is
    overwritten. torch's factorisation is several times faster than scipy's here, and the transpose
    of its C-ordered lower factor is exactly that upper factor (no copy)."""
    np.negative(c, out=c)
    return torch.linalg.cholesky(torch.from_numpy(c)).numpy().T


@dataclass(frozen=True)
class _Capacitance:
    """What the embedded solve needs for one (m, n) -> (m2, n2) embedding (float64)."""

    m: int
    n: int
    m2: int
    n2: int
    row: bool  # the bottom ring row (interior row m of the bigger grid) is pinned
    col: bool  # the right ring column (interior column n) is pinned
    sy_row: np.ndarray | None  # S_{m2}[m, :] (m2,): mode values on the row line
    sx_col: np.ndarray | None  # S_{n2}[:, n] (n2,)
    factors: tuple[np.ndarray, ...]  # see _neg_cholesky: of C, or of A + B and A - B (square case)

    def solve(self, e: np.ndarray) -> np.ndarray:
        """``sigma`` with ``C sigma = e`` for (P, L) misfits ``e`` (row line first, then column line)."""
        import scipy.linalg

        def cs(u, rhs):  # C' x = rhs with -C' = U^T U
            return -scipy.linalg.cho_solve((u, False), rhs.T, check_finite=False).T

        if len(self.factors) == 1:
            return cs(self.factors[0], e)
        # square faces: C = [[A, B], [B, A]] (A, B symmetric) splits into A + B and A - B
        er, ec = e[:, : self.n], e[:, self.n :]
        p, q = cs(self.factors[0], er + ec), cs(self.factors[1], er - ec)
        return np.concatenate([(p + q) / 2, (p - q) / 2], axis=-1)


@functools.lru_cache(maxsize=2)
def _capacitance(m: int, n: int, m2: int, n2: int) -> _Capacitance:
    """The capacitance matrix ``C`` (the bigger grid's Green's function on the pinned lines x lines),
    factored. Blocks, with ``S`` the orthonormal DST-I matrices and ``1/lambda`` the inverse spectrum:
    row-row ``S_x diag(g) S_x`` with ``g_k = sum_j S_y[m, j]^2 / lambda_jk`` (column-column alike) and
    row-column ``(S_y W S_x)^T`` with ``W_jk = S_y[m, j] S_x[k, n] / lambda_jk``, each one DST at the
    fast length."""
    import scipy.fft as sfft

    row, col = m2 > m, n2 > n
    inv = 1.0 / _eigenvalues(m2, n2, None, lib=np)  # (m2, n2), negative
    sy_row = _sine_vec(m2, m) if row else None
    sx_col = _sine_vec(n2, n) if col else None

    def line_block(g, size, size2):
        """``S diag(g) S`` on the first ``size`` points, ``S`` the orthonormal DST-I of size ``size2``:
        with ``2 sin x sin y = cos(x - y) - cos(x + y)`` it is ``T(a - b) - T(a + b + 2)`` (0-based a, b),
        ``T(d) = sum_k g_k cos(pi d k / (size2 + 1)) / (size2 + 1)``: one FFT instead of a matrix."""
        ext = np.zeros(2 * (size2 + 1))
        ext[1 : size2 + 1] = g
        t = np.fft.rfft(ext).real / (size2 + 1)  # T(0 .. size2 + 1); T(d) = T(2(size2 + 1) - d)
        t = np.concatenate([t, t[-2:0:-1]])  # T(0 .. 2 size2 + 1)
        i = np.arange(size)
        return t[np.abs(i[:, None] - i[None, :])] - t[i[:, None] + i[None, :] + 2]

    rr = line_block((sy_row ** 2) @ inv, n, n2) if row else None
    if row and col and (m, m2) == (n, n2):
        rc = sfft.dstn(sy_row[:, None] * sx_col[None, :] * inv, type=1, norm="ortho")[:m, :n].T
        factors = (_neg_cholesky(rr + rc), _neg_cholesky(rr - rc))
    elif row and col:
        cc = line_block(inv @ (sx_col ** 2), m, m2)
        rc = sfft.dstn(sy_row[:, None] * sx_col[None, :] * inv, type=1, norm="ortho")[:m, :n].T
        factors = (_neg_cholesky(np.block([[rr, rc], [rc.T, cc]])),)
    else:
        factors = (_neg_cholesky(rr if row else line_block(inv @ (sx_col ** 2), m, m2)),)
    return _Capacitance(m, n, m2, n2, row, col, sy_row, sx_col, factors)


def _solve_ring_embedded(top, bottom, left, right, out: torch.Tensor, r, m2: int, n2: int, workers: int) -> None:
    """:func:`solve_ring_scipy`'s exact solve on the bigger (m2, n2) grid (see the section note).
    ``top``..``right``: float64 numpy side vectors (P, n) / (P, m); ``r``: (P, m, n) or None.

    The spectrum is ``(sum_i u_i (x) v_i [+ DST(r)]) / lambda``: the top and left rings (still the
    bigger grid's ring) and the sources on the pinned lines are rank-1 terms. The values of h0 on
    the lines come from the terms directly (small matrix products, no full-size spectrum), so the
    capacitance system is solved once for all planes when there is no ``r``."""
    import scipy.fft as sfft

    def dst(x, n_to):  # orthonormal DST-I of the last axis, zero-padded to n_to
        return sfft.dst(np.pad(x, ((0, 0), (0, n_to - x.shape[-1]))), type=1, norm="ortho", axis=-1, workers=workers)

    H, W = out.shape[-2:]
    npl = top.shape[0]
    m, n = H - 2, W - 2
    wdtype = np.float64 if out.dtype == torch.float64 else np.float32
    cap = _capacitance(m, n, m2, n2)
    inv64 = _inv_eigenvalues(m2, n2, np.float64, 1.0)
    # rank-1 terms (u, v): u (m2,) or per plane (P, m2), v (n2,) or (P, n2); the ring moves to the
    # right-hand side with a minus sign
    terms = [(_sine_vec(m2, 0), -dst(top, n2)), (-dst(left, m2), _sine_vec(n2, 0))]
    if not cap.row:  # the bottom ring stays the ring (m2 == m)
        terms.append((_sine_vec(m2, m2 - 1), -dst(bottom, n2)))
    if not cap.col:
        terms.append((-dst(right, m2), _sine_vec(n2, n2 - 1)))

    def line_values(terms, extra=None):
        """h0 on the pinned lines (P, n) / (P, m) from the rank-1 terms (+ a full spectrum ``extra``)."""
        vals = []
        if cap.row:  # S_y[m, :] @ spectrum, then the x transform
            acc = 0.0
            for u, v in terms:
                acc = acc + v * (((cap.sy_row * u) @ inv64) if u.ndim == 1 else ((u * cap.sy_row) @ inv64))
            if extra is not None:
                acc = acc + np.matmul(cap.sy_row, extra)
            vals.append(dst(np.broadcast_to(acc, (npl if extra is None else extra.shape[0], n2)), n2)[:, :n])
        if cap.col:
            acc = 0.0
            for u, v in terms:
                acc = acc + u * ((inv64 @ (v * cap.sx_col)) if v.ndim == 1 else ((v * cap.sx_col) @ inv64.T))
            if extra is not None:
                acc = acc + np.matmul(extra, cap.sx_col)
            vals.append(dst(np.broadcast_to(acc, (npl if extra is None else extra.shape[0], m2)), m2)[:, :m])
        return vals

    def sources(vals, p0, p1):
        """The rank-1 terms of the sources that pin the lines: C sigma = target - h0 on the lines."""
        targets = ([bottom[p0:p1]] if cap.row else []) + ([right[p0:p1]] if cap.col else [])
        sigma = cap.solve(np.concatenate([t - v for t, v in zip(targets, vals)], axis=-1))
        out_terms = []
        if cap.row:
            out_terms.append((cap.sy_row, dst(sigma[:, :n], n2)))
        if cap.col:
            out_terms.append((dst(sigma[:, n * cap.row:], m2), cap.sx_col))
        return out_terms

    sig_all = sources(line_values(terms), 0, npl) if r is None else None
    inv = _inv_eigenvalues(m2, n2, wdtype, 1.0)
    step = max(1, CHUNK_BYTES // max(1, m2 * n2 * np.dtype(wdtype).itemsize))
    for p0 in range(0, npl, step):
        p1 = min(npl, p0 + step)
        k = p1 - p0

        def part(x, p0=p0, p1=p1):
            return x[p0:p1] if x.ndim == 2 else x

        chunk_terms = [(part(u), part(v)) for u, v in terms]
        rhat = None
        if r is not None:
            rr = np.pad(r[p0:p1].detach().double().cpu().numpy(), ((0, 0), (0, m2 - m), (0, n2 - n)))
            rhat = sfft.dstn(rr, type=1, norm="ortho", axes=(-2, -1), workers=workers, overwrite_x=True)
            rhat *= inv64
            sig = [(u, v) for u, v in sources(
                [a + b for a, b in zip(line_values(chunk_terms), line_values([], rhat))], 0, k)]
            shift = 0
        else:
            sig, shift = sig_all, p0
        all_terms = chunk_terms + [(u if u.ndim == 1 else u[shift:shift + k], v if v.ndim == 1 else v[shift:shift + k])
                                   for u, v in sig]
        uu = np.empty((k, m2, len(all_terms)), dtype=wdtype)
        vv = np.empty((k, len(all_terms), n2), dtype=wdtype)
        for i, (u, v) in enumerate(all_terms):
            uu[:, :, i] = u
            vv[:, i] = v
        bhat = np.matmul(uu, vv)
        bhat *= inv
        if rhat is not None:
            bhat += rhat.astype(wdtype)
            del rhat
        _add_interior(out, p0, torch.from_numpy(sfft.idstn(bhat, type=1, norm="ortho", axes=(-2, -1),
                                                           workers=workers, overwrite_x=True)[:, :m, :n]))


def _solve_scipy(r, d, x0, iterations):
    shape = d.shape
    H, W = shape[-2:]
    d3 = d.detach().reshape(-1, H, W)
    out = _assemble(None, d3, x0, shape).reshape(-1, H, W)
    if x0 is None:
        out[:, 1:-1, 1:-1] = 0
    rr = None if r is None else r.reshape(-1, H - 2, W - 2)
    solve_ring_scipy(_ring_rhs(d3), out, iterations, rr)
    return out.reshape(shape)


def _assemble(h_int: torch.Tensor, d3: torch.Tensor, x0: torch.Tensor | None, shape) -> torch.Tensor:
    """``x0 + h`` with ``h`` = ``d`` on the ring and ``h_int`` inside (``x0 = 0`` if None)."""
    H, W = shape[-2:]
    if x0 is None:
        out = d3.clone()
        if h_int is not None:
            out[:, 1:-1, 1:-1] = h_int.to(device=d3.device, dtype=d3.dtype)
        return out.reshape(shape)
    out = x0.reshape(-1, H, W)
    out = out.clone() if out.data_ptr() == x0.data_ptr() else out  # reshape may have copied already
    out[:, 0, :] += d3[:, 0, :]
    out[:, -1, :] += d3[:, -1, :]
    out[:, 1:-1, 0] += d3[:, 1:-1, 0]
    out[:, 1:-1, -1] += d3[:, 1:-1, -1]
    if h_int is not None:
        out[:, 1:-1, 1:-1] += h_int.to(device=out.device, dtype=out.dtype)
    return out.reshape(shape)


def _dst1_torch(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Orthonormal DST-I along ``dim`` via the real FFT of the odd extension [0, x, 0, -flip(x)]."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    z = torch.zeros_like(x[..., :1])
    ext = torch.cat([z, x, z, -x.flip(-1)], dim=-1)  # length 2(n+1)
    spec = torch.fft.rfft(ext, dim=-1)
    out = -spec.imag[..., 1 : n + 1] * math.sqrt(1.0 / (2.0 * (n + 1)))
    return out.movedim(-1, dim)


def _solve_torch(r, d, x0, iterations):
    shape = d.shape
    H, W = shape[-2:]
    m, n = H - 2, W - 2
    wdtype = torch.float64 if d.dtype == torch.float64 else torch.float32
    d3 = d.reshape(-1, H, W)
    dev = d3.device
    top, bottom, left, right = (v.to(wdtype) for v in _ring_rhs(d3))
    s_m0, s_m1 = _sine_vec(m, 0, torch, wdtype, dev), _sine_vec(m, m - 1, torch, wdtype, dev)
    s_n0, s_n1 = _sine_vec(n, 0, torch, wdtype, dev), _sine_vec(n, n - 1, torch, wdtype, dev)
    ft, fb, fl, fr = (_dst1_torch(v, -1) for v in (top, bottom, left, right))
    bhat = -(
        s_m0[None, :, None] * ft[:, None, :]
        + s_m1[None, :, None] * fb[:, None, :]
        + fl[:, :, None] * s_n0[None, None, :]
        + fr[:, :, None] * s_n1[None, None, :]
    )
    if r is not None:
        rr = r.reshape(-1, m, n).to(wdtype)
        bhat = bhat + _dst1_torch(_dst1_torch(rr, -1), -2)
    bhat = bhat / _eigenvalues(m, n, wdtype, dev)[None]
    if iterations is not None:
        bhat = _apply_gs(bhat, iterations, lib=torch)
    h_int = _dst1_torch(_dst1_torch(bhat, -1), -2)
    return _assemble(h_int, d3, x0, shape)


def _check_backend(backend: str, d: torch.Tensor) -> str:
    if backend == "auto":
        return "scipy" if d.device.type == "cpu" else "torch"
    if backend not in ("scipy", "torch"):
        raise ValueError(f"backend: expected 'auto', 'scipy' or 'torch', got {backend!r}")
    return backend


def solve_exact(r: torch.Tensor | None, d: torch.Tensor, backend: str = "auto",
                x0: torch.Tensor | None = None) -> torch.Tensor:
    """Exact Dirichlet solve of ``lap(h) = r`` (interior) with ``h = d`` on the ring.

    Args:
        r: interior right-hand side (..., H-2, W-2), or ``None`` for zero (Laplace equation).
        d: (..., H, W) tensor whose 1-pixel outer ring holds the boundary values (the interior of
            ``d`` is ignored).
        backend: ``"scipy"`` (CPU; float64 forward, inverse transform in the output precision),
            ``"torch"`` (any device, FFT-based DST-I) or ``"auto"`` (scipy for CPU tensors,
            torch otherwise).
        x0: optional initial guess (..., H, W); if given, ``x0 + h`` is returned.
    Returns:
        ``h`` (or ``x0 + h``), shape and dtype of ``d``.
    """
    H, W = d.shape[-2:]
    if H < 3 or W < 3:
        return d.clone() if x0 is None else x0 + d
    if _check_backend(backend, d) == "scipy":
        return _solve_scipy(r, d, x0, None)
    return _solve_torch(r, d, x0, None)


def solve_gauss_seidel_spectral(r: torch.Tensor | None, d: torch.Tensor, iterations: int = 200,
                                backend: str = "auto", x0: torch.Tensor | None = None) -> torch.Tensor:
    """The iterate after ``iterations`` red-black Gauss-Seidel sweeps, in closed form.

    Same result as :func:`solve_gauss_seidel` (up to rounding) at the cost of one exact solve;
    see :func:`_apply_gs` for the derivation. Arguments as :func:`solve_exact`.
    """
    H, W = d.shape[-2:]
    if H < 3 or W < 3:
        return d.clone() if x0 is None else x0 + d
    iterations = int(iterations)
    if iterations <= 0:
        h = d.clone()
        h[..., 1:-1, 1:-1] = 0
        return h if x0 is None else x0 + h
    if _check_backend(backend, d) == "scipy":
        return _solve_scipy(r, d, x0, iterations)
    return _solve_torch(r, d, x0, iterations)


# ---------------------------------------------------------------------------------------------
# red-black Gauss-Seidel
# ---------------------------------------------------------------------------------------------


def solve_gauss_seidel(r: torch.Tensor | None, d: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """``iterations`` red-black Gauss-Seidel sweeps for ``lap(h) = r`` with ``h = d`` on the ring.

    Starts from ``h = 0`` in the interior (i.e. from the source image ``x0``). One sweep updates
    the red pixels (``i + j`` even) from their black neighbours, then the black ones from the new
    red values. The grid is split into its four parity sub-grids (contiguous tensors), so each
    half-sweep is a handful of dense tensor ops on any device.

    Args:
        r: interior right-hand side (..., H-2, W-2) or ``None`` (zero).
        d: (..., H, W) with the boundary values on the ring.
        iterations: number of full sweeps (>= 0).
    Returns:
        ``h`` (..., H, W).
    """
    shape = d.shape
    H, W = shape[-2:]
    if H < 3 or W < 3:
        return d.clone()
    if iterations <= 0:
        out = d.clone()
        out[..., 1:-1, 1:-1] = 0
        return out
    wdtype = d.dtype if d.dtype in (torch.float32, torch.float64) else torch.float32
    x = d.reshape(-1, H, W).to(wdtype)
    N = x.shape[0]
    He, We = H + (H % 2), W + (W % 2)
    full = torch.zeros((N, He, We), dtype=wdtype, device=d.device)
    full[:, 0, :W] = x[:, 0]
    full[:, H - 1, :W] = x[:, H - 1]
    full[:, :H, 0] = x[:, :, 0]
    full[:, :H, W - 1] = x[:, :, W - 1]
    # parity sub-grids: A=(even, even) B=(even, odd) C=(odd, even) D=(odd, odd); red = A, D
    A = full[:, 0::2, 0::2].contiguous()
    B = full[:, 0::2, 1::2].contiguous()
    C = full[:, 1::2, 0::2].contiguous()
    D = full[:, 1::2, 1::2].contiguous()
    # interior index ranges of each sub-grid (inclusive start, exclusive stop)
    a_ev = (1, (H - 2) // 2 + 1)  # rows 2a in [1, H-2]
    a_od = (0, (H - 3) // 2 + 1)  # rows 2a+1 in [1, H-2]
    b_ev = (1, (W - 2) // 2 + 1)
    b_od = (0, (W - 3) // 2 + 1)
    q = 0.25
    rq = None
    if r is not None:
        rf = torch.zeros((N, He, We), dtype=wdtype, device=d.device)
        rf[:, 1 : H - 1, 1 : W - 1] = r.reshape(-1, H - 2, W - 2).to(wdtype) * q
        rq = {
            "A": rf[:, 0::2, 0::2][:, a_ev[0] : a_ev[1], b_ev[0] : b_ev[1]].contiguous(),
            "D": rf[:, 1::2, 1::2][:, a_od[0] : a_od[1], b_od[0] : b_od[1]].contiguous(),
            "B": rf[:, 0::2, 1::2][:, a_ev[0] : a_ev[1], b_od[0] : b_od[1]].contiguous(),
            "C": rf[:, 1::2, 0::2][:, a_od[0] : a_od[1], b_ev[0] : b_ev[1]].contiguous(),
        }

    def upd(T, name, ar, br, up, down, left, right):
        # T[a, b] = (up + down + left + right) / 4 - r / 4, all arguments already sliced
        t = T[:, ar[0] : ar[1], br[0] : br[1]]  # never overlaps the neighbour sub-grids
        torch.add(up, down, out=t)
        t.add_(left).add_(right).mul_(q)
        if rq is not None:
            t.sub_(rq[name])

    (a0, a1), (c0, c1) = a_ev, a_od
    (b0, b1), (e0, e1) = b_ev, b_od
    for _ in range(int(iterations)):
        # red: A (2a, 2b): up C[a-1,b] down C[a,b] left B[a,b-1] right B[a,b]
        upd(A, "A", a_ev, b_ev, C[:, a0 - 1 : a1 - 1, b0:b1], C[:, a0:a1, b0:b1],
            B[:, a0:a1, b0 - 1 : b1 - 1], B[:, a0:a1, b0:b1])
        # red: D (2a+1, 2b+1): up B[a,b] down B[a+1,b] left C[a,b] right C[a,b+1]
        upd(D, "D", a_od, b_od, B[:, c0:c1, e0:e1], B[:, c0 + 1 : c1 + 1, e0:e1],
            C[:, c0:c1, e0:e1], C[:, c0:c1, e0 + 1 : e1 + 1])
        # black: B (2a, 2b+1): up D[a-1,b] down D[a,b] left A[a,b] right A[a,b+1]
        upd(B, "B", a_ev, b_od, D[:, a0 - 1 : a1 - 1, e0:e1], D[:, a0:a1, e0:e1],
            A[:, a0:a1, e0:e1], A[:, a0:a1, e0 + 1 : e1 + 1])
        # black: C (2a+1, 2b): up A[a,b] down A[a+1,b] left D[a,b-1] right D[a,b]
        upd(C, "C", a_od, b_ev, A[:, c0:c1, b0:b1], A[:, c0 + 1 : c1 + 1, b0:b1],
            D[:, c0:c1, b0 - 1 : b1 - 1], D[:, c0:c1, b0:b1])

    full[:, 0::2, 0::2] = A
    full[:, 0::2, 1::2] = B
    full[:, 1::2, 0::2] = C
    full[:, 1::2, 1::2] = D
    return full[:, :H, :W].to(d.dtype).reshape(shape)
