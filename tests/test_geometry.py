"""pano_core.geometry: agreement with py360convert 1.0.4, round trips, directions, wrap-around,
gradients, plan cache and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import py360convert
import pytest
import torch
import torch.nn.functional as F

from pano_core.errors import PanoInputError
from pano_core.geometry import (
    FACE_NAMES,
    c2e,
    cache_info,
    clear_cache,
    dirs_to_cube,
    dirs_to_lonlat,
    e2c,
    e2p,
    erp_directions,
    erp_lonlat,
    face_directions,
    faces_to_layout,
    layout_to_faces,
    lonlat_to_dirs,
    p2e,
    perspective_directions,
    roll_erp,
    rotate_erp,
    rotation_matrix,
    set_cache_limits,
)
from pano_core.geometry.cube import _c2e_plan, _e2c_plan, reference_c2e_plan, reference_e2c_plan
from pano_core.geometry.sampling import faces_to_atlas
from pano_core.io import read_image

ASSETS = Path(__file__).resolve().parent / "assets"
PANORAMAS = ["chalet_erp.png", "labeled_cube_erp.png", "snow_village_erp.png", "world_map_erp.png"]

# py360convert samples with cv2.remap on CV_16SC2 maps: sub-pixel positions are quantised to 1/32
# pixel (INTER_TAB_SIZE) and weights to 15 bits, so its result can differ from an exact bilinear /
# bicubic interpolation by up to ~1/64 pixel times the local gradient (a few 1e-3 on sharp edges,
# ~1e-5 on average). Nearest differs only on exact half-pixel ties.
MAX_ERR = 0.03
MEAN_ERR = 1e-3


def _load(name: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    x = read_image(ASSETS / name)[:, :3]
    if size is not None:
        x = F.interpolate(x, size=size, mode="area")
    return x


def _hwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())


def _psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def world() -> torch.Tensor:
    return _load("world_map_erp.png")


# --------------------------------------------------------------------------- py360convert agreement


@pytest.mark.parametrize("name", PANORAMAS)
def test_e2c_matches_py360convert_face_by_face(name):
    x = _load(name)
    ours = e2c(x, 256, "bilinear", "dict")
    ref = py360convert.e2c(_hwc(x), 256, "bilinear", "dict")
    for k in FACE_NAMES:
        d = np.abs(ours[k][0].permute(1, 2, 0).numpy() - ref[k])
        assert d.max() < MAX_ERR, (k, d.max())
        assert d.mean() < MEAN_ERR, (k, d.mean())


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_e2c_modes_match_py360convert(world, mode):
    ours = e2c(world, 128, mode, "list")
    ref = py360convert.e2c(_hwc(world), 128, mode, "list")
    for k in range(6):
        d = np.abs(ours[k][0].permute(1, 2, 0).numpy() - ref[k])
        if mode == "nearest":
            assert (d.max(-1) > 1e-6).mean() < 0.01, FACE_NAMES[k]  # only half-pixel ties differ
        else:
            assert d.max() < 2 * MAX_ERR and d.mean() < MEAN_ERR, (FACE_NAMES[k], d.max(), d.mean())


@pytest.mark.parametrize("layout", ["horizon", "dice"])
def test_layouts_match_py360convert(world, layout):
    ours = e2c(world, 64, "bilinear", layout)[0].permute(1, 2, 0).numpy()
    ref = py360convert.e2c(_hwc(world), 64, "bilinear", layout)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < MAX_ERR


def test_layout_round_trips():
    faces = torch.rand(12, 2, 8, 8)
    for layout in ("stack", "list", "dict", "horizon", "dice"):
        lay = faces_to_layout(faces, layout)
        assert torch.equal(layout_to_faces(lay, layout), faces), layout
    assert faces_to_layout(faces, "horizon").shape == (2, 2, 8, 48)
    assert faces_to_layout(faces, "dice").shape == (2, 2, 24, 32)
    # the dice cross holds U above F and D below F
    dice = faces_to_layout(faces, "dice")
    assert torch.equal(dice[0, :, 0:8, 8:16], faces[4]) and torch.equal(dice[1, :, 16:24, 8:16], faces[11])


@pytest.mark.parametrize("name", ["chalet_erp.png", "world_map_erp.png"])
def test_c2e_agrees_with_py360convert_and_round_trips_better(name):
    x = _load(name)
    faces = e2c(x, 256)
    ref_faces = py360convert.e2c(_hwc(x), 256, "bilinear", "list")
    ours = c2e(faces, 512, 1024)
    ref = py360convert.c2e(ref_faces, 512, 1024, "bilinear", "list")
    # py360convert's c2e maps face coordinates with a scale of S instead of e2c's S-1 (up to half a
    # pixel off near face edges), so only a loose agreement is expected from it...
    assert np.abs(ours[0].permute(1, 2, 0).numpy() - ref).mean() < 0.03
    assert _psnr(ours[0].permute(1, 2, 0), ref) > 27
    # ...and our exact inverse must round-trip better than py360convert's own e2c -> c2e.
    p_ours = _psnr(ours, x)
    p_ref = _psnr(ref, _hwc(x))
    assert p_ours > p_ref + 1.0, (p_ours, p_ref)
    assert p_ours > 30


def test_face_directions_equal_py360convert_xyzcube():
    from py360convert.utils import xyzcube

    s = 9
    ref = torch.from_numpy(np.array(xyzcube(s))).double()  # (S, 6S, 3)
    ref = ref.view(s, 6, s, 3).permute(1, 0, 2, 3)
    ref = ref / ref.norm(dim=-1, keepdim=True)
    ours = face_directions(s, dtype=torch.float64)
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("yaw,pitch,roll,fov,hw", [(0, 0, 0, 90, (65, 65)), (35, -20, 0, 70, (48, 80)),
                                                    (-150, 40, 25, 60, (64, 64)), (178, 5, -30, 100, (50, 75))])
def test_e2p_matches_py360convert(world, yaw, pitch, roll, fov, hw):
    # py360convert uses a scalar fov for both directions, so pass (fov, fov) explicitly
    ours = e2p(world, (fov, fov), yaw, pitch, roll, hw)
    ref = py360convert.e2p(_hwc(world), fov, yaw, pitch, hw, in_rot_deg=roll)
    d = np.abs(ours[0].permute(1, 2, 0).numpy() - ref)
    assert d.max() < MAX_ERR and d.mean() < MEAN_ERR, (d.max(), d.mean())


def test_perspective_directions_match_py360convert():
    from py360convert.utils import xyzpers

    hf, vf, yaw, pitch, roll = 80.0, 60.0, 30.0, -25.0, 15.0
    ref = xyzpers(math.radians(hf), math.radians(vf), -math.radians(yaw), math.radians(pitch), (7, 9), math.radians(roll))
    ref = torch.from_numpy(np.array(ref)).double()
    ref = ref / ref.norm(dim=-1, keepdim=True)
    ours = perspective_directions((hf, vf), yaw, pitch, roll, 7, 9, dtype=torch.float64)
    assert torch.allclose(ours, ref, atol=1e-5)


# --------------------------------------------------------------------------- fast grids == reference


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("h,s", [(32, 16), (40, 13)])
def test_fast_plans_equal_reference_plans(mode, h, s):
    dev, dt = torch.device("cpu"), torch.float32
    x = torch.rand(2, 3, h, 2 * h)
    a = reference_e2c_plan(h, 2 * h, s, mode, dev, dt)(x)
    b = _e2c_plan(h, 2 * h, s, mode, dev, dt)(x)
    tol = 1e-4 if mode != "nearest" else 1.0
    diff = (a - b).abs()
    assert float(diff.max()) < tol or float((diff > 1e-4).float().mean()) < 0.005
    # consistent faces (from an ERP), so ties on cube edges do not matter
    f = e2c(torch.rand(1, 3, h, 2 * h), s, "bilinear")
    a = reference_c2e_plan(s, h, 2 * h, mode, dev, dt)(faces_to_atlas(f))
    b = _c2e_plan(s, h, 2 * h, mode, dev, dt)(faces_to_atlas(f))
    diff = (a - b).abs()
    assert float((diff > 1e-3).float().mean()) < 0.005, float(diff.max())


# --------------------------------------------------------------------------- round trips


def test_round_trip_constant_is_exact():
    x = torch.full((2, 3, 32, 64), 0.25)
    for mode in ("nearest", "bilinear", "bicubic"):
        assert torch.allclose(c2e(e2c(x, 16, mode), mode=mode), x, atol=1e-5), mode
        assert torch.allclose(rotate_erp(x, 33, 12, 7, mode), x, atol=1e-5), mode


def test_round_trip_smooth_function():
    h = 64
    d = erp_directions(h, 2 * h, dtype=torch.float64)
    f = (0.5 + 0.2 * d[..., 0] + 0.15 * d[..., 1] * d[..., 2] - 0.1 * d[..., 2]).float()[None, None]
    back = c2e(e2c(f, 32), h, 2 * h)
    assert float((back - f).abs().max()) < 5e-3
    back = rotate_erp(rotate_erp(f, 40, 0, 0), -40, 0, 0)
    assert float((back - f).abs().max()) < 5e-3


def test_e2c_samples_the_sphere_function(world):
    """Every face pixel equals a smooth function evaluated at its direction (wrap, poles included)."""
    h = 128
    fn = lambda d: 0.5 + 0.3 * d[..., 0] - 0.2 * d[..., 2] + 0.25 * d[..., 1] ** 3  # noqa: E731
    erp = fn(erp_directions(h, 2 * h, dtype=torch.float64)).float()[None, None]
    faces = e2c(erp, 48, "bicubic")
    expect = fn(face_directions(48, dtype=torch.float64)).float()[:, None]
    assert float((faces - expect).abs().max()) < 3e-3


def test_p2e_inverts_e2p(world):
    view = e2p(world, 90, 30, 20, 0, (256, 256))
    erp, mask = p2e(view, 90, 30, 20, 0, (512, 1024))
    assert mask.shape == (1, 1, 512, 1024) and set(mask.unique().tolist()) <= {0.0, 1.0}
    inside = mask.bool().expand_as(erp)
    assert _psnr(erp[inside], world[inside]) > 28
    assert float(erp[~inside].abs().max()) == 0.0
    # the mask covers the view direction and not the opposite one
    lon, lat = erp_lonlat(512, 1024)
    r = int(torch.argmin((lat - 20).abs()))
    c = int(torch.argmin((lon - 30).abs()))
    assert mask[0, 0, r, c] == 1 and mask[0, 0, 511 - r, (c + 512) % 1024] == 0
    # its solid angle: a 90x90 degree view covers 4 pi / 6 (one cube face)
    area = (mask[0, 0] * torch.cos(torch.deg2rad(lat))[:, None]).sum() * (math.pi / 512) * (2 * math.pi / 1024)
    assert abs(float(area) - 4 * math.pi / 6) < 0.05


def test_rotate_matches_roll_and_e2p(world):
    w = world.shape[-1]
    for px in (1, 37, -200):
        yaw = px * 360.0 / w
        assert torch.allclose(rotate_erp(world, yaw), roll_erp(world, yaw), atol=1e-4)
        assert torch.equal(roll_erp(roll_erp(world, yaw), -yaw), world)
    # the rotated panorama's F face is the perspective view with the same angles
    rot = rotate_erp(world, 30, 20, 10)
    assert _psnr(e2c(rot, 128, layout="list")[0], e2p(world, 90, 30, 20, 10, (128, 128))) > 35


def test_roll_sign_moves_yaw_to_centre():
    x = torch.zeros(1, 1, 8, 16)
    x[..., 12] = 1  # lon of column 12: ((12.5)/16 - 0.5) * 360 = 101.25
    y = roll_erp(x, 90)  # shift 4 px: content at lon ~ +90 comes to the centre
    assert int(y[0, 0, 0].argmax()) == 8


# --------------------------------------------------------------------------- directions


def test_directions_unit_norm_and_consistent():
    d = erp_directions(16, 32, dtype=torch.float64)
    assert torch.allclose(d.norm(dim=-1), torch.ones(16, 32, dtype=torch.float64))
    lon, lat = dirs_to_lonlat(d)
    elon, elat = erp_lonlat(16, 32, dtype=torch.float64)
    assert torch.allclose(lon, elon[None].expand(16, 32)) and torch.allclose(lat, elat[:, None].expand(16, 32))
    assert torch.allclose(lonlat_to_dirs(lon, lat), d)
    fd = face_directions(5, dtype=torch.float64)
    assert torch.allclose(fd.norm(dim=-1), torch.ones(6, 5, 5, dtype=torch.float64))
    pd = perspective_directions(70, 10, 20, 30, 9, 13, dtype=torch.float64)
    assert torch.allclose(pd.norm(dim=-1), torch.ones(9, 13, dtype=torch.float64))


def test_erp_centre_is_lon_zero_and_frame():
    lon, lat = erp_lonlat(4, 8, dtype=torch.float64)
    # centre between columns 3 and 4 is lon 0; top row is north
    assert float(lon[3] + lon[4]) == 0.0 and lon[4] > 0 and lat[0] > 0 > lat[-1]
    d = lonlat_to_dirs(torch.tensor([0.0, 90.0, 0.0]), torch.tensor([0.0, 0.0, 90.0]))
    assert torch.allclose(d, torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]), atol=1e-7)


def test_face_centres_and_dirs_to_cube():
    fd = face_directions(5, dtype=torch.float64)
    centres = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 0, -1], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=torch.float64)
    assert torch.allclose(fd[:, 2, 2], centres)
    lon, lat = dirs_to_lonlat(fd[:, 2, 2])
    assert torch.allclose(lon[:4].abs(), torch.tensor([0.0, 90, 180, 90], dtype=torch.float64))
    # dirs_to_cube inverts face_directions (away from the shared edges)
    f, j, i = dirs_to_cube(fd[:, 1:4, 1:4], 5)
    assert torch.equal(f, torch.arange(6)[:, None, None].expand(6, 3, 3))
    assert torch.allclose(j, torch.tensor([1.0, 2, 3], dtype=torch.float64).expand(6, 3, 3))
    assert torch.allclose(i, torch.tensor([1.0, 2, 3], dtype=torch.float64)[:, None].expand(6, 3, 3))


def test_perspective_centre_and_rotation():
    d = perspective_directions(60, 40, -30, 15, 5, 7, dtype=torch.float64)
    lon, lat = dirs_to_lonlat(d[2, 3])
    assert abs(float(lon) - 40) < 1e-9 and abs(float(lat) + 30) < 1e-9
    r = rotation_matrix(12, 34, 56, dtype=torch.float64)
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64)) and abs(float(torch.det(r)) - 1) < 1e-12
    # pitch up: the top row of a view looks higher than its bottom row
    d = perspective_directions(60, 0, 0, 0, 5, 5, dtype=torch.float64)
    assert d[0, 2, 1] > 0 > d[4, 2, 1] and d[2, 4, 0] > 0  # right column points to +x


# --------------------------------------------------------------------------- wrap-around


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_no_seam_at_0_360(mode):
    """A view straight at the 0/360 seam equals the same view of the rolled panorama."""
    x = torch.rand(1, 3, 64, 128)
    a = e2p(x, 60, 180, 10, 0, (40, 40), mode)
    b = e2p(roll_erp(x, 180), 60, 0, 10, 0, (40, 40), mode)
    assert float((a - b).abs().max()) < 1e-4
    # over the pole as well: looking straight up, rolled by half a turn, is the view rotated 180
    a = e2p(x, 60, 0, 90, 0, (41, 41), mode)
    b = e2p(roll_erp(x, 180), 60, 180, 90, 0, (41, 41), mode)
    assert float((a - b).abs().max()) < 1e-3


def test_back_face_continuous_across_seam():
    x = torch.rand(1, 1, 64, 128)
    b1 = e2c(x, 32, "bilinear", "dict")["B"]
    b2 = e2c(roll_erp(x, 180), 32, "bilinear", "dict")["F"]
    assert float((b1 - b2).abs().max()) < 1e-4


# --------------------------------------------------------------------------- gradients


def test_gradients_flow():
    x = torch.rand(1, 2, 8, 16, dtype=torch.float64, requires_grad=True)
    for fn in (
        lambda t: e2c(t, 4),
        lambda t: e2c(t, 4, "bicubic"),
        lambda t: e2p(t, 80, 170, 30, 10, (5, 6)),
        lambda t: rotate_erp(t, 20, 30, 40),
        lambda t: c2e(e2c(t, 4), 8, 16),
    ):
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)
    f = torch.rand(6, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: c2e(t, 8, 16, "bicubic"), (f,), eps=1e-6, atol=1e-5)
    v = torch.rand(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: p2e(t, 90, 10, 0, 0, (8, 16))[0], (v,), eps=1e-6, atol=1e-5)
    # interpolation weights sum to 1: the gradient of sum(faces) carries one unit per face pixel,
    # and every ERP pixel away from the poles (which faces of W/4 undersample) receives some
    y = torch.rand(1, 3, 32, 64, requires_grad=True)
    e2c(y, 16).sum().backward()
    assert abs(float(y.grad.sum()) - 6 * 16 * 16 * 3) < 1e-2
    assert bool((y.grad[:, :, 8:24] > 0).all())


def test_dtypes_and_batches():
    x = torch.rand(3, 4, 16, 32)
    f = e2c(x, 8)
    assert f.shape == (18, 4, 8, 8)
    assert torch.allclose(e2c(x[1:2], 8), f[6:12])
    for dt in (torch.float64, torch.float16, torch.bfloat16):
        y = e2c(x.to(dt), 8)
        assert y.dtype == dt and torch.allclose(y.float(), f, atol=2e-2)
        assert c2e(y).dtype == dt
    assert e2c(x, 8, layout="list")[0].shape == (3, 4, 8, 8)


# --------------------------------------------------------------------------- cache


def test_cache_hits_and_bounds():
    clear_cache()
    x = torch.rand(1, 3, 16, 32)
    e2c(x, 8)
    assert cache_info()["misses"] == 1 and cache_info()["hits"] == 0
    e2c(x * 2, 8)
    assert cache_info()["hits"] == 1 and cache_info()["size"] == 1
    e2c(x.double(), 8)  # other dtype -> other plan
    e2c(x, 8, "nearest")  # other mode -> other plan
    assert cache_info()["misses"] == 3 and cache_info()["size"] == 3
    try:
        set_cache_limits(maxsize=2)
        assert cache_info()["size"] == 2
        for s in (4, 5, 6):
            e2c(x, s)
        assert cache_info()["size"] == 2
        set_cache_limits(max_bytes=1)
        assert cache_info()["size"] == 0
        e2c(x, 8)
        assert cache_info()["size"] == 0  # too big to keep
    finally:
        set_cache_limits(maxsize=16, max_bytes=1 << 30)
        clear_cache()


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    good = torch.rand(1, 3, 16, 32)
    cases = [
        (lambda: e2c(torch.rand(1, 3, 16, 30)), "2:1"),
        (lambda: e2c(torch.rand(0, 3, 16, 32)), "empty"),
        (lambda: e2c(torch.full((1, 3, 16, 32), float("nan"))), "NaN"),
        (lambda: e2c(good.masked_fill(good > 0.9, float("inf"))), "infinite"),
        (lambda: e2c(good, 8, "lanczos"), "mode"),
        (lambda: e2c(good, 8, layout="cross"), "layout"),
        (lambda: e2c(good, 0), "face_size"),
        (lambda: e2c(good.long()), "floating"),
        (lambda: e2c(good[0]), "4 dimensions"),
        (lambda: c2e(torch.rand(5, 3, 8, 8)), "6 faces"),
        (lambda: c2e(torch.rand(6, 3, 8, 9)), "square"),
        (lambda: c2e([torch.rand(1, 3, 8, 8)] * 5 + [torch.rand(1, 3, 9, 9)], layout="list"), "same shape"),
        (lambda: c2e([torch.rand(1, 3, 8, 8)] * 5 + [torch.rand(1, 4, 8, 8)], layout="list"), "same shape"),
        (lambda: c2e({"F": torch.rand(1, 3, 8, 8)}, layout="dict"), "keys"),
        (lambda: c2e(torch.rand(1, 3, 8, 40), layout="horizon"), "6:1"),
        (lambda: c2e(torch.rand(1, 3, 24, 30), layout="dice"), "4:3"),
        (lambda: c2e(torch.rand(6, 3, 8, 8), 10, 30), "2:1"),
        (lambda: e2p(good, 0), "field of view"),
        (lambda: e2p(good, 190), "field of view"),
        (lambda: e2p(good, 90, float("nan")), "yaw"),
        (lambda: e2p(good, 90, out_hw=(0, 4)), "height"),
        (lambda: p2e(torch.rand(1, 3, 8, 8), 90, erp_hw=(10, 30)), "2:1"),
        (lambda: rotate_erp(torch.rand(1, 3, 10, 10)), "2:1"),
        (lambda: roll_erp(good, "left"), "yaw"),
    ]
    for fn, match in cases:
        with pytest.raises(PanoInputError, match=match):
            fn()
    # the fast finiteness test: one NaN pixel is found, huge finite values (sum overflows) are fine
    one_nan = good.clone()
    one_nan[0, 1, 5, 7] = float("nan")
    with pytest.raises(PanoInputError, match="1 NaN"):
        e2c(one_nan)
    huge = torch.full((1, 1, 16, 32), 3e38)
    assert torch.allclose(e2c(huge, 8), torch.full((6, 1, 8, 8), 3e38))
