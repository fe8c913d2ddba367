"""The cv2.remap CPU fast path of pano_core.geometry agrees with the torch.grid_sample path.

CPU tensors that need no gradient are sampled by cv2.remap (``pano_core.geometry.remap``); a
tensor that requires grad takes the torch path, which is how both are compared here.

Tolerances: OpenCV 5 samples float32 images (bilinear and bicubic) at the exact float map
coordinates, so the two paths differ only by float32 rounding of the coordinates (~1e-5 on
random [0, 1] data). Where the installed OpenCV rounds coordinates to 1/32 pixel instead
(``remap.quantized``: float64 bilinear on OpenCV 5, everything on OpenCV 4), a position moves by
at most 1/64 pixel per axis, so the value by at most (1/64 + 1/64) x the largest difference of
neighbouring source pixels (x ~1.2 for the bicubic overshoot): ``0.05`` on random data.
Nearest differs only on exact half-pixel ties (e.g. longitude exactly 180° on the U/D centre
column lies between the last and the first ERP column).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import py360convert
import pytest
import torch

from pano_core.geometry import (
    FACE_NAMES,
    c2e,
    clear_cache,
    dirs_to_lonlat,
    e2c,
    e2p,
    erp_directions,
    p2e,
    rotate_erp,
)
from pano_core.geometry import remap as rm
from pano_core.geometry.directions import face_points
from pano_core.io import read_image

ASSETS = Path(__file__).resolve().parent / "assets"
MODES = ("nearest", "bilinear", "bicubic")


def _torch_path(fn, x):
    """Run ``fn`` through the torch path (an input that requires grad)."""
    out = fn(x.detach().clone().requires_grad_(True))
    return (out[0] if isinstance(out, tuple) else out).detach()


def _fast_path(fn, x, calls):
    out = fn(x)
    assert calls["n"] > 0, "the cv2 fast path was not taken"
    calls["n"] = 0
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture
def calls(monkeypatch):
    """Counts RemapPlan calls (proves that the fast path is the one being compared)."""
    c = {"n": 0}
    orig = rm.RemapPlan.__call__

    def counting(self, src):
        c["n"] += 1
        return orig(self, src)

    monkeypatch.setattr(rm.RemapPlan, "__call__", counting)
    clear_cache()
    yield c
    clear_cache()


def _tol(mode: str, dtype=torch.float32) -> float:
    return 0.05 if rm.quantized(mode, dtype) else 1e-4


def _smooth(h: int, b: int = 1, c: int = 3) -> torch.Tensor:
    d = erp_directions(h, 2 * h, dtype=torch.float64)
    f = 0.5 + 0.2 * d[..., 0] + 0.15 * d[..., 1] * d[..., 2] - 0.1 * d[..., 2]
    return f.float()[None, None].repeat(b, c, 1, 1)


OPS = {
    "e2c": lambda mode: (lambda t: e2c(t, 17, mode)),
    "c2e": lambda mode: (lambda t: c2e(t, 48, 96, mode)),
    "e2p": lambda mode: (lambda t: e2p(t, 70, 170, 60, 10, (33, 40), mode)),
    "e2p_pole": lambda mode: (lambda t: e2p(t, 60, 0, 90, 0, (41, 41), mode)),
    "rotate": lambda mode: (lambda t: rotate_erp(t, 30, 80, 20, mode)),
    "p2e": lambda mode: (lambda t: p2e(t, 80, 170, 60, 10, (48, 96), mode)),
}


def _input(op: str, x: torch.Tensor) -> torch.Tensor:
    if op == "c2e":
        return e2c(x, 17, "bilinear")
    if op == "p2e":
        return x[:, :, :30, :40].contiguous()
    return x


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", list(OPS))
def test_fast_path_agrees_with_torch_path(op, mode, calls):
    torch.manual_seed(0)
    for x in (torch.rand(2, 3, 48, 96), _smooth(48, 2)):
        inp = _input(op, x)
        fn = OPS[op](mode)
        a = _torch_path(fn, inp)
        b = _fast_path(fn, inp, calls)
        assert a.shape == b.shape and a.dtype == b.dtype
        d = (a - b).abs()
        if mode == "nearest":
            assert float((d > 1e-6).float().mean()) < 0.02, float((d > 1e-6).float().mean())
        else:
            assert float(d.max()) < _tol(mode), (op, mode, float(d.max()))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_float64_and_half_precision(mode, calls):
    """float64 runs on cv2 where its border handling was probed correct (OpenCV 5.0.0 gets
    bicubic float64 wrong at borders: that combination takes the torch path); half precision is
    sampled in float32 and returned in its own dtype."""
    torch.manual_seed(1)
    x = torch.rand(1, 2, 32, 64, dtype=torch.float64)
    fast64 = rm.fast_path_ok(x, mode)
    assert fast64 == rm.borders_ok(mode, torch.float64)
    run = (lambda fn, t: _fast_path(fn, t, calls)) if fast64 else (lambda fn, t: fn(t))
    a = _torch_path(lambda t: e2c(t, 16, mode), x)
    b = run(lambda t: e2c(t, 16, mode), x)
    assert b.dtype == torch.float64 and float((a - b).abs().max()) < _tol(mode, torch.float64)
    f = e2c(x, 16, mode)
    a = _torch_path(lambda t: c2e(t, mode=mode), f)
    b = run(lambda t: c2e(t, mode=mode), f)
    assert float((a - b).abs().max()) < _tol(mode, torch.float64)
    ref = e2c(x.float(), 16, mode).double()
    calls["n"] = 0
    for dt in (torch.float16, torch.bfloat16):
        y = _fast_path(lambda t: e2c(t, 16, mode), x.to(dt), calls)
        assert y.dtype == dt and float((y.double() - ref).abs().max()) < 3e-2


def test_broken_border_modes_are_detected():
    """The probe behind borders_ok compares cv2's wrap/replicate with explicit padding; a remap
    that ignored the border would be caught."""
    assert rm.borders_ok("bilinear", torch.float32)
    assert rm.borders_ok("nearest", torch.float64)
    x = torch.rand(1, 1, 16, 32, dtype=torch.float64)
    if not rm.borders_ok("bicubic", torch.float64):
        assert not rm.fast_path_ok(x, "bicubic") and rm.fast_path_ok(x, "bilinear")


def test_fast_path_dispatch():
    x = torch.rand(1, 3, 16, 32)
    assert rm.fast_path_ok(x, "bilinear")
    assert not rm.fast_path_ok(x.clone().requires_grad_(True), "bilinear")
    with torch.no_grad():
        assert rm.fast_path_ok(x.clone().requires_grad_(True), "bilinear")
    assert not rm.fast_path_ok(x.to(torch.int32), "bilinear")
    # gradients still flow (torch path) and the values equal the fast path's
    y = x.clone().requires_grad_(True)
    out = e2c(y, 8)
    out.sum().backward()
    assert y.grad is not None and torch.allclose(out.detach(), e2c(x, 8), atol=1e-4)


def test_pole_pixels_match_py360convert_odd_faces():
    """Odd face sizes put the U/D centre pixel exactly on the pole (ERP row -0.5 / H - 0.5), where
    the footprint crosses the first/last row: the patch reads the row reflected over the pole
    half a turn away, like py360convert's padding."""
    x = read_image(ASSETS / "world_map_erp.png")[:, :3]
    x = torch.nn.functional.interpolate(x, size=(128, 256), mode="area")
    hwc = np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())
    for s in (33, 65):
        ours = e2c(x, s, "bilinear", "dict")
        ref = py360convert.e2c(hwc, s, "bilinear", "dict")
        for k in ("U", "D"):
            d = np.abs(ours[k][0].permute(1, 2, 0).numpy() - ref[k])
            c = s // 2
            # py360convert rounds positions to 1/32 pixel: allow that much of the local contrast
            assert d[c - 1 : c + 2, c - 1 : c + 2].max() < 0.03, (s, k)
            assert d.max() < 0.05 and d.mean() < 1e-3, (s, k, d.max(), d.mean())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("h,s", [(40, 13), (64, 32)])
def test_e2c_maps_equal_reference_coordinates(mode, h, s):
    """The analytic float32 maps equal the ERP coordinates of face_points (float64)."""
    w = 2 * h
    plan = rm.build_e2c_remap(h, w, s, mode, torch.float32)
    lon, lat = dirs_to_lonlat(face_points(s, dtype=torch.float64))
    x, y = rm.erp_xy(lon.numpy(), lat.numpy(), h, w)
    xm, ym = np.stack(plan.xmaps), np.stack(plan.ymaps)
    dx = np.abs((xm - x + w / 2) % w - w / 2)  # the same column modulo the wrap
    dy = np.abs(ym - y)
    if mode == "nearest":  # maps hold rounded positions (ties may round either way)
        assert dx.max() <= 0.5 + 1e-3 and dy.max() <= 0.5 + 1e-3
    else:
        assert dx.max() < 2e-3 and dy.max() < 2e-3, (dx.max(), dy.max())


def test_c2e_without_in_place_stacking_and_batches(calls):
    """c2e samples the stacked faces in place when (5 C + 1) S fits cv2's 32767 rows, and
    otherwise copies each channel into a (6 S, S) atlas; both give the same ERP."""
    assert rm.cube_stride_for(512, 3) == 3 and rm.cube_stride_for(2048, 3) == 1
    assert rm.cube_stride_for(6000, 1) is None
    torch.manual_seed(2)
    faces = e2c(torch.rand(2, 3, 32, 64), 16)
    for mode in MODES:
        ref = _torch_path(lambda t, m=mode: c2e(t, mode=m), faces)
        in_place = rm.build_c2e_remap(16, 32, 64, mode, torch.float32, 3, 3)
        copied = rm.build_c2e_remap(16, 32, 64, mode, torch.float32, 1, 3)
        hwc = faces.movedim(1, -1).contiguous().movedim(-1, 1)
        a, b = in_place(faces), copied(faces)
        assert a.shape == (2, 3, 32, 64) and float((a - b).abs().max()) == 0.0  # same coordinates
        assert float((copied(hwc) - a).abs().max()) < 1e-6  # 3-channel HWC remap
        if mode != "nearest":
            assert float((a - ref).abs().max()) < _tol(mode)


def test_uint8_sources():
    x = (torch.rand(1, 3, 32, 64) * 255).round()
    plan = rm.build_e2c_remap(32, 64, 15, "bilinear", torch.uint8)
    a = plan(x.to(torch.uint8))
    b = rm.build_e2c_remap(32, 64, 15, "bilinear", torch.float32)(x)
    assert a.dtype == torch.uint8 and float((a.float() - b).abs().max()) <= 1.0


def test_layouts_and_channels_on_fast_path(calls):
    torch.manual_seed(3)
    for c in (1, 4):
        x = torch.rand(2, c, 24, 48)
        faces = _fast_path(lambda t: e2c(t, 12), x, calls)
        ref = _torch_path(lambda t: e2c(t, 12), x)
        assert faces.shape == (12, c, 12, 12) and float((faces - ref).abs().max()) < 1e-4
        d = e2c(x, 12, layout="dict")
        assert torch.equal(d["U"], faces.view(2, 6, c, 12, 12)[:, FACE_NAMES.index("U")])
        back = _fast_path(lambda t: c2e(t, layout="dice"), e2c(x, 12, layout="dice"), calls)
        assert back.shape == (2, c, 24, 48)


def test_tiny_sizes_agree(calls):
    """Degenerate sizes: every face pixel's footprint may reach past the first/last ERP row
    (h < 8), faces of 1-5 pixels; both paths must still agree (and not fail)."""
    torch.manual_seed(4)
    for h in (1, 2, 3, 5, 7):
        x = torch.rand(1, 2, h, 2 * h)
        for s in (1, 2, 3, 5):
            f = e2c(x, s, "bilinear")
            for mode in MODES:
                pairs = (
                    (lambda t, m=mode, s=s: e2c(t, s, m), x),
                    (lambda t, m=mode, h=h: c2e(t, h, 2 * h, m), f),
                )
                for fn, inp in pairs:
                    a = _torch_path(fn, inp)
                    b = _fast_path(fn, inp, calls)
                    d = (a - b).abs()
                    if mode == "nearest":  # exact half-pixel ties are everywhere at these sizes:
                        assert bool(torch.isin(b, inp).all()), (h, s)  # each output is a source pixel
                    else:
                        assert float(d.max()) < _tol(mode), (h, s, mode, float(d.max()))


@pytest.mark.parametrize("mode", MODES)
def test_channels_last_inputs(mode, calls):
    """A ComfyUI IMAGE moved to BCHW is channels-last: it is remapped as HWC images (no layout
    copy) and the result is channels-last too; values equal the torch path's and the
    contiguous input's."""
    torch.manual_seed(5)
    for c in (2, 3, 4):
        img = torch.rand(2, 48, 96, c)  # (B, H, W, C) as ComfyUI stores it
        x = img.movedim(-1, 1)
        assert rm.is_channels_last(x) and not x.is_contiguous()
        faces_img = e2c(x.contiguous(), 17, "bilinear").movedim(1, -1).contiguous().movedim(-1, 1)
        for op in OPS:
            inp = faces_img if op == "c2e" else (_input(op, x.contiguous()).movedim(1, -1).contiguous().movedim(-1, 1))
            fn = OPS[op](mode)
            a = _torch_path(fn, inp)
            b = _fast_path(fn, inp, calls)
            # HWC sampling where OpenCV treats C channels like one plane (OpenCV 5.0.0: not 2-channel
            # float32 bilinear, which it rounds to 1/32 pixel); otherwise planes, contiguous result
            assert b.shape == a.shape and rm.is_channels_last(b) == rm.hwc_faces(inp, mode), (op, c)
            contiguous = _fast_path(fn, inp.contiguous(), calls)
            d = (a - b).abs()
            if mode == "nearest":
                assert float((d > 1e-6).float().mean()) < 0.02, (op, c)
                assert float((b - contiguous).abs().max()) == 0.0, (op, c)
            else:
                assert float(d.max()) < _tol(mode), (op, c, float(d.max()))
                assert float((b - contiguous).abs().max()) < _tol(mode), (op, c)  # c2e: other map rounding
    # layouts of a channels-last e2c result
    x = torch.rand(1, 16, 32, 3).movedim(-1, 1)
    ref = e2c(x.contiguous(), 8)
    for layout in ("list", "dict", "horizon", "dice"):
        a, b = e2c(x, 8, layout=layout), e2c(x.contiguous(), 8, layout=layout)
        if layout == "list":
            assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a, b))
        elif layout == "dict":
            assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in FACE_NAMES)
        else:
            assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(e2c(x, 8), ref, atol=1e-6)
