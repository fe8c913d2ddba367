"""Fast CPU sampling with ``cv2.remap`` (the path taken when no gradient is needed).

:class:`RemapPlan` samples CPU tensors plane by plane: every (batch, channel) plane of the BCHW
source is a contiguous 2D array that ``cv2.remap`` reads in place, and every output plane is
written in place into the BCHW result, so no layout conversion or padded copy is ever made.

* **ERP sources** (e2c, e2p, rotate_erp) use ``BORDER_WRAP``: horizontally that is exactly the
  0°/360° wrap-around. Output pixels whose interpolation footprint crosses the top or bottom
  row (over a pole) are few; they are recomputed exactly (the "patch": explicit taps, the row
  reflected over the pole and the column moved by half a turn, like py360convert's padding).
* **Cube-face sources** (c2e): the six faces of one panorama, (6, C, S, S) contiguous, are one
  (6 C S, S) image; the plane of channel ``c`` starts ``c S`` rows into it, so with face ``f``
  at ``y = f C S + i`` a single remap per channel samples all six faces without building an
  atlas. Bilinear and nearest footprints never leave a face (face coordinates lie in
  [0, S - 1], edge pixel centres on the cube edges); bicubic footprints that do are patched
  with taps resolved through 3D onto the neighbouring face.
* **Flat sources** (p2e) clamp (``BORDER_REPLICATE``, as grid_sample's border padding).

Interpolation (checked against torch.grid_sample, see ``tests/test_geometry_fastpath.py``):
OpenCV 5 samples float32 images bilinearly at the exact float coordinates; bicubic, float64 and
uint8 images are sampled at coordinates rounded to 1/32 pixel (``INTER_TAB_SIZE``). Maps that
must agree across different views (the seam tests: a view across the 0°/360° seam equals the
same view of the rolled panorama) are rounded to that 1/32 grid in float64 first, so the
rounding is deterministic; the patches replicate it. Nearest rounds half to even like torch.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

try:  # opencv is a dependency, but keep the torch path usable without it
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None

MAX_SIDE = 32766  # cv2.remap: source and destination sides must be < SHRT_MAX
_FAST_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8)
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.uint8: np.uint8}


def fast_path_ok(x: torch.Tensor, mode: str = "bilinear") -> bool:
    """True when ``x`` can be sampled by cv2: a CPU tensor of a supported dtype that needs no
    gradient, and an OpenCV whose border handling is right for this mode and dtype."""
    return (
        cv2 is not None
        and x.device.type == "cpu"
        and x.dtype in _FAST_DTYPES
        and not (x.requires_grad and torch.is_grad_enabled())
        and borders_ok(mode, work_dtype(x.dtype))
    )


@functools.cache
def borders_ok(mode: str, dtype: torch.dtype, channels: int = 1) -> bool:
    """Whether cv2.remap wraps/replicates correctly for this mode and dtype (probed once).

    OpenCV 5.0.0 gets bicubic float64 footprints that cross the image border wrong for every
    border mode; such inputs take the torch path.
    """
    if cv2 is None:
        return False
    rng = np.random.default_rng(0)
    npdt = _NP_DTYPES[dtype]
    src = rng.random((12, 16, channels))[..., : max(channels, 1)]
    if channels == 1:
        src = src[..., 0]
    src = (src * 255).astype(npdt) if npdt == np.uint8 else src.astype(npdt)
    # positions on a 1/32 grid plus a little: no rounding ties, footprints across every border
    xs = (np.rint(rng.uniform(-1.5, 16.5, (6, 40)) * 32) / 32 + 1 / 256).astype(np.float32)
    ys = (np.rint(rng.uniform(-1.5, 12.5, (6, 40)) * 32) / 32 + 1 / 256).astype(np.float32)
    interp = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}[mode]
    for border, pad in ((cv2.BORDER_WRAP, "wrap"), (cv2.BORDER_REPLICATE, "edge")):
        got = cv2.remap(src, xs, ys, interp, borderMode=border).astype(np.float64)
        big = np.pad(src, ((4, 4), (4, 4)) + ((0, 0),) * (src.ndim - 2), mode=pad)
        ref = cv2.remap(big, xs + 4, ys + 4, interp, borderMode=cv2.BORDER_REPLICATE).astype(np.float64)
        if not np.allclose(got, ref, atol=1e-6 if npdt != np.uint8 else 0.5):
            return False
    return True


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype the remap runs in (half precision is sampled in float32)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@functools.cache
def quantized(mode: str, dtype: torch.dtype, channels: int = 1) -> bool:
    """Whether cv2.remap rounds sampling coordinates to 1/32 pixel for this mode and dtype.

    Probed once on the installed OpenCV (OpenCV 5 samples float32 bilinear/bicubic at the exact
    coordinates and float64 bilinear at 1/32 pixel; OpenCV 4 rounds everything to 1/32).
    """
    if mode == "nearest" or cv2 is None:
        return False
    npdt = _NP_DTYPES[work_dtype(dtype)]
    src = np.tile(np.array([0, 0, 100, 200, 200, 200, 200, 200], dtype=np.float64), (4, 1))
    src_c = np.repeat(src[..., None], channels, axis=-1) if channels > 1 else src
    x0 = 2.014  # 2 + 0.448 / 32: exact and 1/32-rounded coordinates give clearly different values
    interp = cv2.INTER_LINEAR if mode == "bilinear" else cv2.INTER_CUBIC
    mx = np.full((1, 1), x0, np.float32)
    my = np.full((1, 1), 1.0, np.float32)
    got = float(np.asarray(cv2.remap(src_c.astype(npdt), mx, my, interp)).reshape(-1)[0])

    def ref(x):
        xs, ys, ws = taps_np(np.array([x]), np.array([1.0]), mode)
        return sum(float(wt[0]) * src[int(yi[0]), int(xi[0])] for xi, yi, wt in zip(xs, ys, ws))

    return abs(got - ref(round(x0 * 32) / 32)) < abs(got - ref(float(np.float32(x0))))


def snap(v: np.ndarray, mode: str, dtype: torch.dtype) -> np.ndarray:
    """Coordinates (float64) -> float32 map values cv2 uses as they are (deterministic rounding)."""
    # through float32 first: float64 noise (1e-13) on exact ties (x.5, symmetric views) vanishes,
    # so views that differ by an even whole-pixel shift round alike (half to even)
    v = np.asarray(v, dtype=np.float64).astype(np.float32)
    if mode == "nearest":
        return np.rint(v)
    if quantized(mode, dtype):
        return np.rint(v * np.float32(32.0)) / np.float32(32.0)
    return v


def effective(v: np.ndarray, mode: str, dtype: torch.dtype) -> np.ndarray:
    """float32 map values -> the float64 coordinates cv2 actually samples at."""
    v = v.astype(np.float64)
    if mode == "nearest":
        return np.rint(v)
    if quantized(mode, dtype):
        return np.rint(v * 32.0) / 32.0
    return v


def _cubic(t: np.ndarray, a: float = -0.75) -> list[np.ndarray]:
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def taps_np(x: np.ndarray, y: np.ndarray, mode: str):
    """Integer taps (lists of K int64 arrays) and weights for effective coordinates x, y (P,)."""
    if mode == "nearest":
        return [np.rint(x).astype(np.int64)], [np.rint(y).astype(np.int64)], [np.ones_like(x)]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    if mode == "bilinear":
        offs, wx, wy = (0, 1), [1 - fx, fx], [1 - fy, fy]
    else:
        offs, wx, wy = (-1, 0, 1, 2), _cubic(fx), _cubic(fy)
    xs, ys, ws = [], [], []
    for a, wya in zip(offs, wy):
        for b, wxb in zip(offs, wx):
            xs.append(x0 + b)
            ys.append(y0 + a)
            ws.append(wya * wxb)
    return xs, ys, ws


def rows_outside(y: np.ndarray, mode: str, h: int) -> np.ndarray:
    """True where the vertical footprint at effective row ``y`` leaves rows 0..h-1 (zero-weight
    taps excepted)."""
    if mode == "nearest":
        return (y < 0) | (y > h - 1)  # y already rounded
    if mode == "bilinear":
        return (y < 0) | (y > h - 1)
    return (y < 1) | (y > h - 2)


def erp_patch(xmap: np.ndarray, ymap: np.ndarray, h: int, w: int, mode: str, dtype: torch.dtype):
    """Patch for ERP sources: pixels whose footprint crosses a pole row, with exact taps.

    ``xmap``/``ymap``: (N, ho, wo) float32 maps. Returns None or (n_idx, flat_pixel,
    tidx (K, P) flat source indices, tw (K, P) float64 weights).
    """
    lo, hi = (-0.5, h - 1.5) if mode == "nearest" else ((0.0, h - 1.0) if mode == "bilinear" else (1.0, h - 2.0))
    idx = np.nonzero((ymap < lo + 0.05) | (ymap > hi - 0.05))  # cheap float32 prefilter (a superset)
    if idx[0].size == 0:
        return None
    x = effective(xmap[idx], mode, dtype)
    y = effective(ymap[idx], mode, dtype)
    keep = rows_outside(y, mode, h)
    if not keep.any():
        return None
    idx = tuple(a[keep] for a in idx)
    x, y = x[keep], y[keep]
    xs, ys, ws = taps_np(x, y, mode)
    tidx = []
    for xi, yi in zip(xs, ys):
        top, bottom = yi < 0, yi > h - 1
        yi = np.clip(np.where(top, -1 - yi, np.where(bottom, 2 * h - 1 - yi, yi)), 0, h - 1)
        xi = np.where(top | bottom, xi + w // 2, xi) % w
        tidx.append(yi * w + xi)
    wo = xmap.shape[-1]
    return idx[0], idx[1] * wo + idx[2], np.stack(tidx), np.stack(ws)


class RemapPlan:
    """cv2.remap sampling of a (B, C, Hs, Ws) CPU source into (B * N, C, h, w).

    ``xmaps``/``ymaps``: sequences of N float32 (h, w) maps (source pixel coordinates, pixel
    centres at integers). ``source``: ``"planes"`` (each (b, c) plane is the source, border
    ``border``) or ``"cube"`` (the faces of one panorama as one (6 C S, S) image, channel ``c``
    starting ``c S`` rows in; ``cube_stride`` is the C the maps were built for: 1 means that each
    channel is first copied into a contiguous (6 S, S) atlas). ``patch``: None or (n_idx,
    flat_pixel, tidx, tw) with tidx indexing the flattened source plane of one channel.

    Channels-last sources (2-4 channels stored as (B, H, W, C), e.g. a ComfyUI IMAGE moved to
    BCHW) are sampled as multi-channel HWC images instead, and the result is channels-last too
    (:meth:`hwc_ok`); a c2e plan for them is built with ``cube_stride = 1`` (an HWC (6 S, S)
    atlas is then the faces themselves).
    """

    def __init__(self, xmaps, ymaps, src_hw, mode: str, border: str, patch=None, source: str = "planes",
                 cube_stride: int = 1, mask: torch.Tensor | None = None):
        self.xmaps = list(xmaps)
        self.ymaps = list(ymaps)
        self.n = len(self.xmaps)
        self.h, self.w = self.xmaps[0].shape
        self.src_hw = src_hw
        self.mode = mode
        self.interp = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}[mode]
        self.border = {"wrap": cv2.BORDER_WRAP, "replicate": cv2.BORDER_REPLICATE}[border]
        self.patch = patch
        self.source = source
        self.cube_stride = cube_stride
        self.mask = mask

    @property
    def nbytes(self) -> int:
        seen, b = set(), 0
        for m in self.xmaps + self.ymaps:  # maps may be shared between outputs
            if id(m) not in seen:
                seen.add(id(m))
                b += m.nbytes
        if self.patch is not None:
            b += sum(np.asarray(t).nbytes for t in self.patch)
        if isinstance(self.mask, torch.Tensor):
            b += self.mask.numel() * self.mask.element_size()
        return b

    def _planes(self, a: np.ndarray):
        """Yield (b, c, 2D source array) for a (B, C, Hs, Ws) numpy source."""
        bsz, c = a.shape[:2]
        if self.source == "planes":
            for i in range(bsz):
                for k in range(c):
                    yield i, k, a[i, k]
            return
        s = a.shape[-1]
        if self.cube_stride == c:  # (B*6, C, S, S) -> per panorama a (6 C S, S) image
            big = a.reshape(bsz // 6, 6 * c * s, s)
            for i in range(bsz // 6):
                for k in range(c):
                    yield i, k, big[i, k * s : (5 * c + k + 1) * s]
            return
        v = a.reshape(bsz // 6, 6, c, s, s)
        for i in range(bsz // 6):
            for k in range(c):
                yield i, k, np.ascontiguousarray(v[i, :, k]).reshape(6 * s, s)

    def hwc_ok(self, src: torch.Tensor) -> bool:
        """Whether ``src`` is sampled as HWC images: a channels-last tensor (e.g. a ComfyUI IMAGE
        moved to BCHW) of 2 to 4 channels, for a plane source or a stride-1 cube plan, where
        OpenCV samples C-channel images like single planes (probed: OpenCV 5.0.0 rounds 2-channel
        float32 bilinear coordinates to 1/32 pixel but not 1-, 3- or 4-channel ones)."""
        if not ((self.source == "planes" or self.cube_stride == 1) and is_channels_last(src)):
            return False
        c, dt = src.shape[1], src.dtype
        return quantized(self.mode, dt, c) == quantized(self.mode, dt) and borders_ok(self.mode, dt, c)

    def _call_hwc(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last source -> channels-last result: one multi-channel remap per image, no
        layout conversion on the way in or out."""
        a = x.permute(0, 2, 3, 1).numpy()  # (B, Hs, Ws, C), contiguous
        bsz, _, _, c = a.shape
        if self.source == "cube":
            s = a.shape[2]
            a = a.reshape(bsz // 6, 6 * s, s, c)  # per panorama a (6 S, S) atlas of C channels
        nb = a.shape[0]
        out = np.empty((nb * self.n, self.h, self.w, c), dtype=a.dtype)
        patch = self.patch
        for i in range(nb):
            for n in range(self.n):
                cv2.remap(a[i], self.xmaps[n], self.ymaps[n], self.interp, dst=out[i * self.n + n],
                          borderMode=self.border)
            if patch is not None:
                pn, pp, tidx, tw = patch
                vals = (a[i].reshape(-1, c)[tidx] * tw[..., None]).sum(0)  # (P, C)
                if out.dtype == np.uint8:
                    vals = np.clip(np.rint(vals), 0, 255)
                out.reshape(nb, self.n, self.h * self.w, c)[i, pn, pp] = vals
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def __call__(self, src: torch.Tensor) -> torch.Tensor:
        in_dtype = src.dtype
        wd = work_dtype(in_dtype)
        x = src.detach()
        if x.dtype != wd:
            x = x.to(wd)
        if self.hwc_ok(x):
            res = self._call_hwc(x)
            return res if res.dtype == in_dtype else res.to(in_dtype)
        a = x.contiguous().numpy()
        bsz, c = a.shape[:2]
        nb = bsz // 6 if self.source == "cube" else bsz
        out = np.empty((nb * self.n, c, self.h, self.w), dtype=a.dtype)
        patch = self.patch
        if patch is not None:
            pn, pp, tidx, tw = patch
            o5 = out.reshape(nb, self.n, c, self.h * self.w)
        for i, k, plane in self._planes(a):
            for n in range(self.n):
                cv2.remap(plane, self.xmaps[n], self.ymaps[n], self.interp, dst=out[i * self.n + n, k],
                          borderMode=self.border)
            if patch is not None:
                vals = (plane.reshape(-1)[tidx] * tw).sum(0)
                if out.dtype == np.uint8:
                    vals = np.clip(np.rint(vals), 0, 255)
                o5[i, pn, k, pp] = vals
        res = torch.from_numpy(out)
        return res if res.dtype == in_dtype else res.to(in_dtype)


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4D tensor of 2-4 channels stored as (B, H, W, C) (``movedim(-1, 1)`` of an HWC batch)."""
    return x.ndim == 4 and 1 < x.shape[1] <= 4 and not x.is_contiguous() and x.permute(0, 2, 3, 1).is_contiguous()


def hwc_faces(faces: torch.Tensor, mode: str) -> bool:
    """Whether c2e samples these faces as HWC images (then its plan uses ``cube_stride = 1``)."""
    if not is_channels_last(faces):
        return False
    c, dt = faces.shape[1], work_dtype(faces.dtype)
    return quantized(mode, dt, c) == quantized(mode, dt) and borders_ok(mode, dt, c)


def fits(*sides: int) -> bool:
    return cv2 is not None and all(0 < s <= MAX_SIDE for s in sides)


# ---------------------------------------------------------------------------------------------
# Map builders
# ---------------------------------------------------------------------------------------------


def erp_xy(lon_deg: torch.Tensor | np.ndarray, lat_deg, h: int, w: int):
    """ERP pixel coordinates (float64 numpy) of lon/lat in degrees; x wrapped into [-0.5, w - 0.5)."""
    lon = np.asarray(lon_deg, dtype=np.float64)
    lat = np.asarray(lat_deg, dtype=np.float64)
    x = (lon / 360.0 + 0.5) * w - 0.5
    x = np.mod(x + 0.5, w) - 0.5
    y = (0.5 - lat / 180.0) * h - 0.5
    return x, y


def build_e2c_remap(h: int, w: int, s: int, mode: str, dtype: torch.dtype, poles_only: bool = False) -> RemapPlan:
    """Plan for e2c: ERP (h, w) -> faces F R B L U D (6, s, s), analytic float32 maps
    (``poles_only``: the U and D faces only (2, s, s), the same maps as in the full plan).

    Side faces: the ERP column depends on the face column only (1D, float64, snapped) and the
    ERP row pattern is shared by the four faces (one 2D ``arctan``). U: one ``arctan2`` and one
    ``arctan`` of the plane radius; D is U mirrored (rows flipped, ERP rows reflected). Built with
    single-threaded vectorised numpy (float32 ``arctan``/``arctan2`` are SIMD there), which also
    keeps torch's OpenMP workers from spinning against OpenCV's threads in the remap that follows.
    """
    f32 = np.float32
    t = (np.arange(s, dtype=np.float64) / (s - 1) - 0.5) if s > 1 else np.zeros(1)
    t32 = t.astype(f32)
    # side faces, per column: lon = atan2(t_j, 0.5) + 90 k degrees
    lon_loc = np.degrees(np.arctan2(t, 0.5))
    inv_r = (1.0 / np.hypot(t, 0.5)).astype(f32)
    # shared ERP row: y = (0.5 + atan(t_i / r_j) / pi) h - 0.5 (lat = atan(-t_i / r_j))
    y_side = np.multiply.outer(t32, inv_r)
    np.arctan(y_side, out=y_side)
    y_side *= f32(h / math.pi)
    y_side += f32(0.5 * h - 0.5)
    if mode == "nearest":
        np.rint(y_side, out=y_side)
    xmaps, ymaps = [], []
    for k in range(0 if poles_only else 4):
        x, _ = erp_xy(lon_loc + 90.0 * k, np.zeros(1), h, w)
        xm = snap(x, mode, dtype)
        xmaps.append(np.repeat(xm[None, :], s, axis=0))
        ymaps.append(y_side)
    # U: point (t_j, 0.5, t_i): lon = atan2(t_j, t_i), y = atan(2 rho) h / pi - 0.5
    xu = np.arctan2(t32[None, :], t32[:, None])
    xu *= f32(w / (2 * math.pi))
    xu += f32(0.5 * w - 0.5)
    t2 = t32 * t32
    yu = np.add.outer(t2, t2)
    np.sqrt(yu, out=yu)
    yu *= f32(2.0)
    np.arctan(yu, out=yu)
    yu *= f32(h / math.pi)
    yu -= f32(0.5)
    if mode == "nearest":
        np.rint(xu, out=xu)
        np.rint(yu, out=yu)
    # D: point (t_j, -0.5, -t_i) = U's row S-1-i with the latitude negated
    xd = np.ascontiguousarray(xu[::-1])
    yd = np.subtract(f32(h - 1.0), yu[::-1])
    xmaps += [xu, xd]
    ymaps += [yu, yd]
    # pole patch: only U/D pixels within ~2 ERP rows of the pole, i.e. a few pixels around the
    # face centre, can reach past the first/last row; test that window only
    ang = 1.6 * math.pi / h
    if ang < math.pi / 4:
        near = np.nonzero(np.abs(t) <= math.tan(ang) / 2 + 1e-9)[0]
        lo_, hi_ = (int(near[0]), int(near[-1]) + 1) if near.size else (0, 0)
    else:
        lo_, hi_ = 0, s
    patch = None
    if float(y_side.min()) < 1.05 or float(y_side.max()) > h - 2.05:
        # tiny ERPs (h < 8): side-face footprints reach the first/last row too: test everything
        p = erp_patch(np.stack(xmaps), np.stack(ymaps), h, w, mode, dtype)
        if p is not None:
            n, flat, tidx, tw = p
            patch = (n, flat, tidx, tw)
    elif hi_ > lo_:
        win = (slice(lo_, hi_), slice(lo_, hi_))
        winD = (slice(s - hi_, s - lo_), slice(lo_, hi_))
        p = erp_patch(np.stack([xu[win], xd[winD]]), np.stack([yu[win], yd[winD]]), h, w, mode, dtype)
        if p is not None:
            n, flat, tidx, tw = p
            ww = hi_ - lo_
            r, c = flat // ww, flat % ww
            r = np.where(n == 0, r + lo_, r + s - hi_)
            patch = (n + len(xmaps) - 2, r * s + c + lo_, tidx, tw)
    return RemapPlan(xmaps, ymaps, (h, w), mode, "wrap", patch)


def cube_stride_for(s: int, c: int, channels_last: bool = False) -> int | None:
    """C the c2e maps are built for (the faces used in place), 1 (channels-last faces, used in
    place as an HWC atlas, or a per-channel atlas copy) or None (too large for cv2)."""
    if channels_last:
        return 1 if 6 * s <= MAX_SIDE else None
    if (5 * c + 1) * s <= MAX_SIDE:
        return c
    if 6 * s <= MAX_SIDE:
        return 1
    return None


def build_c2e_remap(s: int, h: int, w: int, mode: str, dtype: torch.dtype, stride: int,
                    channels: int | None = None) -> RemapPlan:
    """Plan for c2e: faces (6, C, S, S) -> ERP (h, w); face ``f`` pixel (i, j) is read at
    map (x = j, y = f stride S + i).

    Side faces: j depends on the column only; i is a rank-1 product tan(lat) sec(phi). Rows with
    |lat| <= 35.26° (|tan lat| <= cos 45°) are side pixels only; the polar bands mix a side face
    and U/D (rank-1 products cot|lat| sin(lon), cot|lat| cos(lon)), selected per pixel. The
    bottom band is the top band mirrored (D is U mirrored). Face-local coordinates are clamped
    to [0, S - 1] so that a footprint never reaches a neighbouring face in the stacked source, and
    face-local rows are rounded to the float32 grid of the largest stacked row any layout of
    these ``channels`` can use (:func:`_snap_local`), so that every layout samples alike.
    Built with single-threaded numpy (see :func:`build_e2c_remap`).
    """
    f64, f32 = np.float64, np.float32
    c = channels if channels is not None else stride
    ymax = 6 * s * (c if cube_stride_for(s, c) == c else 1)
    step = 2.0 ** (math.ceil(math.log2(max(ymax, 2))) - 24)
    a = 0.5 * (s - 1)
    lon = ((np.arange(w, dtype=f64) + 0.5) / w - 0.5) * (2 * math.pi)
    lat = (0.5 - (np.arange(h, dtype=f64) + 0.5) / h) * math.pi
    k = np.mod(np.rint(lon / (math.pi / 2)), 4)  # side face per column: 0 F 1 R 2 B 3 L
    phi = np.mod(lon - k * (math.pi / 2) + math.pi, 2 * math.pi) - math.pi
    j_side = np.clip(a * np.tan(phi) + a, 0, s - 1)
    if mode == "nearest":
        j_side = np.rint(j_side)
    cos_phi = np.cos(phi)
    tanlat = np.tan(lat)
    fs = float(stride * s)
    koff = (k * fs).astype(f32)  # side-face row offset per column
    jside32 = j_side.astype(f32)
    coef = (-a / cos_phi).astype(f32)
    xmap = np.empty((h, w), f32)
    ymap = np.empty((h, w), f32)
    # polar band rows (|tan lat| > cos 45°); the middle rows hold side faces only
    band = int(np.count_nonzero(np.abs(tanlat[: h // 2]) > math.cos(math.pi / 4) - 1e-9))
    mid = slice(band, h - band)
    xmap[mid] = jside32[None, :]
    ym = ymap[mid]
    np.multiply.outer(tanlat[mid].astype(f32), coef, out=ym)
    ym += f32(a)
    _snap_local(ym, mode, step)
    ym += koff[None, :]
    if band:
        tl = tanlat[:band]
        cot = (1.0 / tl).astype(f32)  # top band: lat > 0
        side = np.abs(tl).astype(f32)[:, None] <= cos_phi.astype(f32)[None, :]
        # face-local j, i of the top band (side face or U)
        jj = np.multiply.outer(cot, (a * np.sin(lon)).astype(f32))
        jj += f32(a)
        np.copyto(jj, jside32[None, :], where=side)
        ii = np.multiply.outer(cot, (a * np.cos(lon)).astype(f32))
        ii += f32(a)
        i_side = np.multiply.outer(tl.astype(f32), coef)
        i_side += f32(a)
        np.copyto(ii, i_side, where=side)
        del i_side
        np.clip(jj, 0, s - 1, out=jj)
        np.clip(ii, 0, s - 1, out=ii)
        if mode == "nearest":
            np.rint(jj, out=jj)
        _snap_local(ii, mode, step)
        top, bot = slice(0, band), slice(h - band, h)
        xmap[top] = jj
        xmap[bot] = jj[::-1]
        # top: side rows + k fs, U rows + 4 fs; bottom (mirrored): S-1-i, D rows + 5 fs
        cap_u = np.where(side, koff[None, :], f32(4 * fs))
        np.add(ii, cap_u, out=ymap[top])
        cap_u[~side] = f32(5 * fs)
        np.subtract(cap_u[::-1], ii[::-1], out=ymap[bot])
        ymap[bot] += f32(s - 1)
    patch = None
    if mode == "bicubic":
        patch = _c2e_bicubic_patch(xmap, ymap, s, stride, dtype)
    return RemapPlan([xmap], [ymap], (6 * s, s), mode, "replicate", patch, source="cube", cube_stride=stride)


def _snap_local(i: np.ndarray, mode: str, step: float) -> None:
    """Round face-local rows in place: to whole pixels (nearest) or to multiples of ``step`` (a
    power of two), so that adding a face offset is exact in float32 and the map does not depend on
    how the faces are stacked (channels in place, an HWC atlas or a per-channel copy)."""
    if mode == "nearest":
        np.rint(i, out=i)
    else:
        i *= np.float32(1.0 / step)
        np.rint(i, out=i)
        i *= np.float32(step)


def _c2e_bicubic_patch(xm: np.ndarray, ym: np.ndarray, s: int, stride: int, dtype: torch.dtype):
    """Bicubic c2e pixels whose 4x4 footprint leaves their face: taps resolved through 3D."""
    from .directions import _basis, dirs_to_cube

    fs = stride * s
    # prefilter in float32: face-local coordinates near an edge
    face_all = np.floor(ym / fs)
    il = ym - face_all * fs
    cand = (xm < 1.05) | (xm > s - 2.05) | (il < 1.05) | (il > s - 2.05)
    r, c = np.nonzero(cand)
    if r.size == 0:
        return None
    j = effective(xm[r, c], "bicubic", dtype)
    y = effective(ym[r, c], "bicubic", dtype)
    face = np.floor(y / fs)
    i = y - face * fs
    keep = (j < 1) | (j > s - 2) | (i < 1) | (i > s - 2)
    r, c, j, i, face = r[keep], c[keep], j[keep], i[keep], face[keep].astype(np.int64)
    if r.size == 0:
        return None
    xs, ys, ws = taps_np(j, i, "bicubic")
    b = _basis(None, torch.float64)[torch.from_numpy(face)]  # (P, 3, 3)
    scale = 1.0 / (s - 1) if s > 1 else 0.0
    idx = []
    for xi, yi in zip(xs, ys):
        u = torch.from_numpy(xi.astype(np.float64) * scale - 0.5)
        v = torch.from_numpy(yi.astype(np.float64) * scale - 0.5)
        pt = 0.5 * b[:, 0] + u[:, None] * b[:, 1] + v[:, None] * b[:, 2]
        f2, j2, i2 = dirs_to_cube(pt, s)
        j2 = torch.round(j2).long().clamp(0, s - 1).numpy()
        i2 = torch.round(i2).long().clamp(0, s - 1).numpy()
        idx.append((f2.numpy() * fs + i2) * s + j2)
    w = xm.shape[1]
    return np.zeros_like(r), r * w + c, np.stack(idx), np.stack(ws)


# ---------------------------------------------------------------------------------------------
# Views and rotations: rank-structured float64 numpy (no (H, W, 3) direction tensors)
# ---------------------------------------------------------------------------------------------


def _erp_trig(h: int, w: int):
    lon = ((np.arange(w, dtype=np.float64) + 0.5) / w - 0.5) * (2 * math.pi)
    lat = (0.5 - (np.arange(h, dtype=np.float64) + 0.5) / h) * math.pi
    return np.sin(lon), np.cos(lon), np.sin(lat), np.cos(lat)


def _rank2(cl: np.ndarray, col: np.ndarray, sl: np.ndarray, k: float) -> np.ndarray:
    """(h, w) array cl_r * col_c + k * sl_r (one outer product, one broadcast add)."""
    out = np.multiply.outer(cl, col)
    out += (k * sl)[:, None]
    return out


def _lonlat_xy(dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, h: int, w: int):
    """ERP pixel coordinates of (not necessarily unit) directions, like dirs_to_lonlat + erp_xy
    (x in [-0.5, w - 0.5)). Overwrites dx and dz."""
    x = np.arctan2(dx, dz)
    x *= w / (2 * math.pi)
    x += 0.5 * w - 0.5
    x[x >= w - 0.5] -= w  # atan2 = +pi exactly: the same column as -pi
    np.multiply(dx, dx, out=dx)
    np.multiply(dz, dz, out=dz)
    dx += dz
    np.sqrt(dx, out=dx)
    y = np.arctan2(dy, dx)
    y *= -h / math.pi
    y += 0.5 * h - 0.5
    return x, y


def _blocks(h: int, w: int, target: int = 1 << 16):
    """Row blocks of about ``target`` pixels: float64 temporaries stay in the cache (and are
    not page-faulted in afresh for every full-size intermediate)."""
    step = max(1, target // max(w, 1))
    for r0 in range(0, h, step):
        yield r0, min(h, r0 + step)


def _erp_maps_by_rows(ho: int, wo: int, rows_fn, mode: str, dtype: torch.dtype):
    """float32 maps (1, ho, wo) filled block by block from ``rows_fn(r0, r1) -> (x, y)`` float64."""
    xm = np.empty((1, ho, wo), np.float32)
    ym = np.empty((1, ho, wo), np.float32)
    for r0, r1 in _blocks(ho, wo):
        x, y = rows_fn(r0, r1)
        xm[0, r0:r1] = snap(x, mode, dtype)
        ym[0, r0:r1] = snap(y, mode, dtype)
    return xm, ym


def _erp_plan_from_maps(xm, ym, h: int, w: int, mode: str, dtype: torch.dtype) -> RemapPlan:
    return RemapPlan(list(xm), list(ym), (h, w), mode, "wrap", erp_patch(xm, ym, h, w, mode, dtype))


def build_rotate_remap(h: int, w: int, r: np.ndarray, mode: str, dtype: torch.dtype) -> RemapPlan:
    """Plan for rotate_erp: ``out(d) = in(R d)`` (float64 math in row blocks, float32 maps)."""
    slon, clon, slat, clat = _erp_trig(h, w)
    cols = [r[i, 0] * slon + r[i, 2] * clon for i in range(3)]

    def rows(r0, r1):
        d = [_rank2(clat[r0:r1], cols[i], slat[r0:r1], r[i, 1]) for i in range(3)]
        return _lonlat_xy(d[0], d[1], d[2], h, w)

    xm, ym = _erp_maps_by_rows(h, w, rows, mode, dtype)
    return _erp_plan_from_maps(xm, ym, h, w, mode, dtype)


def build_e2p_remap(xm_: float, ym_: float, h: int, w: int, eh: int, ew: int, r: np.ndarray, mode: str,
                    dtype: torch.dtype) -> RemapPlan:
    """Plan for e2p: pinhole view pixels (x_j, y_i, 1) (``perspective_points``), world ``R p``."""
    # torch.linspace, exactly as perspective_points (symmetric: the centre is exactly 0, which
    # fixes the longitude of a view pixel that looks straight at a pole like the torch path)
    xs = torch.linspace(-xm_, xm_, w, dtype=torch.float64).numpy() if w > 1 else np.zeros(1)
    ys = torch.linspace(ym_, -ym_, h, dtype=torch.float64).numpy() if h > 1 else np.zeros(1)

    def rows(r0, r1):
        d = []
        for i in range(3):
            v = np.add.outer(r[i, 1] * ys[r0:r1], r[i, 0] * xs)
            v += r[i, 2]
            d.append(v)
        return _lonlat_xy(d[0], d[1], d[2], eh, ew)

    xm, ym = _erp_maps_by_rows(h, w, rows, mode, dtype)
    return _erp_plan_from_maps(xm, ym, eh, ew, mode, dtype)


def build_p2e_remap(xm_: float, ym_: float, h: int, w: int, eh: int, ew: int, r: np.ndarray, mode: str,
                    dtype: torch.dtype) -> RemapPlan:
    """Plan for p2e: (col, row) of every ERP pixel in the view (camera frame ``p = R^T d``) and
    the coverage mask; the same rule as the torch path (outside: 0, mask 0)."""
    slon, clon, slat, clat = _erp_trig(eh, ew)
    cols = [r[0, i] * slon + r[2, i] * clon for i in range(3)]  # p_i = sum_k R[k, i] d_k
    xmap = np.empty((1, eh, ew), np.float32)
    ymap = np.empty((1, eh, ew), np.float32)
    mask = np.empty((eh, ew), np.bool_)
    for r0, r1 in _blocks(eh, ew):
        px, py, pz = (_rank2(clat[r0:r1], cols[i], slat[r0:r1], r[1, i]) for i in range(3))
        front = pz > 1e-9
        pz[~front] = 1.0
        np.divide(1.0, pz, out=pz)
        col = px
        col *= pz
        col += xm_
        col *= (w - 1) / (2 * xm_)
        row = py
        row *= pz
        np.subtract(ym_, row, out=row)
        row *= (h - 1) / (2 * ym_)
        inside = front & (col >= -0.5) & (col <= w - 0.5) & (row >= -0.5) & (row <= h - 0.5)
        out = ~inside
        col[out] = 0.0
        row[out] = 0.0
        np.clip(col, 0, w - 1, out=col)
        np.clip(row, 0, h - 1, out=row)
        xmap[0, r0:r1] = snap(col, mode, dtype)
        ymap[0, r0:r1] = snap(row, mode, dtype)
        mask[r0:r1] = inside
    m = torch.from_numpy(mask).to(work_dtype(dtype))[None, None]
    return RemapPlan(list(xmap), list(ymap), (h, w), mode, "replicate", None, mask=m)
