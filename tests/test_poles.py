"""Pole refinement (pano_core.poles) and the ``pano360 refine-poles`` command."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pano_core import poles
from pano_core.cli import main as cli_main
from pano_core.errors import PanoInputError
from pano_core.geometry import e2c
from pano_core.io import read_image, write_image

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="module")
def snow() -> torch.Tensor:
    # 512x256 keeps the tests fast; faces are 128 px.
    erp = read_image(ASSETS / "snow_village_erp.png")
    return F.interpolate(erp, size=(256, 512), mode="area")


def _row_lat(h: int) -> torch.Tensor:
    return 90.0 - (torch.arange(h, dtype=torch.float64) + 0.5) * 180.0 / h


# ---------------------------------------------------------------- masks


def test_pole_mask_central_half_of_1024_face():
    m = poles.pole_mask(1024)
    assert m.shape == (1, 1, 1024, 1024)
    rows = m[0, 0].any(dim=1).nonzero().flatten()
    cols = m[0, 0].any(dim=0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item()) == (256, 767)
    assert (cols.min().item(), cols.max().item()) == (256, 767)
    assert m.sum().item() == 512 * 512
    assert poles.pole_mask(100, 1.0).sum().item() == 100 * 100
    assert poles.pole_mask(1024, 0.25).sum().item() == 256 * 256


def test_feather_mask_linear_ramp_and_zero_beyond():
    m = poles.pole_mask(64, 0.5)  # 16..47
    w = poles.feather_mask(m, 4)
    row = w[0, 0, 32]
    assert torch.equal(row[16:48], torch.ones(32))
    for k in range(1, 5):
        assert row[16 - k].item() == pytest.approx(1 - k / 5)
        assert row[47 + k].item() == pytest.approx(1 - k / 5)
    assert row[: 16 - 4].abs().sum() == 0 and row[48 + 4 :].abs().sum() == 0
    assert torch.equal(poles.feather_mask(m, 0), m)


def test_pole_face_size():
    assert poles.pole_face_size(2048) == 512
    assert poles.pole_face_size(2000, multiple=16) == 496
    assert poles.pole_face_size(2048, face_size=300) == 300
    with pytest.raises(PanoInputError, match="face_size"):
        poles.pole_face_size(8)


# ---------------------------------------------------------------- extract / merge


def test_extract_returns_u_and_d_faces_in_order(snow):
    batch = torch.cat([snow, snow.flip(-1)])
    faces, masks = poles.extract_pole_faces(batch, face_size=96)
    assert faces.shape == (4, 3, 96, 96) and masks.shape == (4, 1, 96, 96)
    cube = e2c(batch, face_size=96, layout="stack")
    for b in range(2):
        assert torch.equal(faces[2 * b], cube[6 * b + 4])  # U
        assert torch.equal(faces[2 * b + 1], cube[6 * b + 5])  # D
    assert torch.equal(masks[0], poles.pole_mask(96)[0])


def test_merge_unchanged_faces_is_close_and_outside_is_bit_identical(snow):
    faces, masks = poles.extract_pole_faces(snow)
    out = poles.merge_pole_faces(snow, faces, masks, feather=0)
    weight = poles.pole_weight_erp(snow.shape[-2:], masks, feather=0)
    outside = (weight == 0).expand_as(snow)
    assert torch.equal(out[outside], snow[outside])
    assert outside.float().mean() < 0.9  # there is a pole region at all
    # inside: a resampling round trip only
    assert (out - snow).abs().mean().item() < 0.02


@pytest.mark.parametrize("h,s,fraction,feather", [(64, 32, 0.5, 2), (128, 40, 1.0, 0), (256, 100, 0.3, 16)])
def test_merge_matches_a_c2e_reference(h, s, fraction, feather):
    """The polar-band projection equals c2e of a cube holding the faces (other faces unused)."""
    from pano_core.geometry import c2e

    torch.manual_seed(h)
    erp = torch.rand(2, 3, h, 2 * h)
    _, masks = poles.extract_pole_faces(erp, fraction=fraction, face_size=s)
    faces = torch.rand(4, 3, s, s)
    out = poles.merge_pole_faces(erp, faces, masks, feather=feather)
    cube = torch.zeros(2, 6, 4, s, s)
    cube[:, 4:6, :3] = faces.reshape(2, 2, 3, s, s)
    cube[:, 4:6, 3:] = poles.feather_mask(masks, feather).reshape(2, 2, 1, s, s)
    proj = c2e(cube.reshape(12, 4, s, s), height=h, width=2 * h)
    wt = proj[:, 3:].clamp(0, 1)
    ref = torch.where(wt > 0, erp * (1 - wt) + proj[:, :3] * wt, erp)
    assert (out - ref).abs().max() < 1e-3
    weight = poles.pole_weight_erp((h, 2 * h), masks, feather)
    assert torch.equal(weight > 0, wt > 0)
    assert (weight - wt).abs().max() < 1e-4
    smooth = F.interpolate(torch.rand(4, 3, 4, 4), size=(s, s), mode="bilinear", align_corners=False)
    bilinear = poles.merge_pole_faces(erp, smooth, masks, feather=feather)
    bicubic = poles.merge_pole_faces(erp, smooth, masks, feather=feather, mode="bicubic")
    keep = (poles.pole_weight_erp((h, 2 * h), masks, feather, mode="bicubic") == 0).expand_as(erp)
    assert (bicubic - bilinear).abs().mean() < 0.01 and torch.equal(bicubic[keep], erp[keep])


def test_refine_only_changes_pole_region_and_fixes_a_pole_artifact(snow):
    damaged = snow.clone()
    h = snow.shape[2]
    n = h // 16  # the top/bottom 11 degrees
    damaged[:, :, :n] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # a red blot on the zenith
    damaged[:, :, -n:] = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)  # a blue one on the nadir
    out = poles.refine_poles(damaged, "opencv", fraction=0.5, feather=4)
    _, masks = poles.extract_pole_faces(damaged)
    weight = poles.pole_weight_erp(damaged.shape[-2:], masks, feather=4)
    outside = (weight == 0).expand_as(damaged)
    assert torch.equal(out[outside], damaged[outside])
    # nothing changes below 50 degrees of latitude (mask corner at 54.7 degrees, minus feather)
    lat = _row_lat(h)
    changed_rows = (out != damaged).any(1).any(-1)[0]
    assert not bool(changed_rows[lat.abs() < 50].any())
    assert bool(changed_rows[lat.abs() > 80].all())
    # the blots are gone: the caps now look like their surroundings (sky/snow), not red/blue
    top, bottom = out[0, :, :n].mean(dim=(1, 2)), out[0, :, -n:].mean(dim=(1, 2))
    ring_top = snow[0, :, n : 2 * n].mean(dim=(1, 2))
    ring_bottom = snow[0, :, -2 * n : -n].mean(dim=(1, 2))
    assert (top - ring_top).abs().max() < 0.15, (top, ring_top)
    assert (bottom - ring_bottom).abs().max() < 0.15, (bottom, ring_bottom)
    assert top[0] - top[1] < 0.2 and bottom[2] - bottom[1] < 0.2


def test_fraction_controls_the_region(snow):
    lat = _row_lat(snow.shape[2])
    small = poles.refine_poles(snow, "opencv", fraction=0.25, feather=0)
    big = poles.refine_poles(snow, "opencv", fraction=0.9, feather=0)
    lowest = {}
    for name, out in (("small", small), ("big", big)):
        rows = (out != snow).any(1).any(-1)[0]
        lowest[name] = lat[rows].abs().min().item()
    # the mask corner (f, f) on a face of half-side 1 lies at latitude atan(1 / (f sqrt 2)):
    # 0.25 -> 70.5 degrees, 0.9 -> 38.2 degrees (one ERP row is 0.7 degrees here)
    assert 68.5 < lowest["small"] < 71.5
    assert 36.0 < lowest["big"] < 39.5
    assert lowest["big"] < lowest["small"]


def test_batch_is_per_panorama(snow):
    other = snow.roll(100, dims=-1)
    both = poles.refine_poles(torch.cat([snow, other]), "opencv", feather=2)
    assert torch.equal(both[0:1], poles.refine_poles(snow, "opencv", feather=2))
    assert torch.equal(both[1:2], poles.refine_poles(other, "opencv", feather=2))


def test_merge_accepts_custom_masks_and_shared_masks(snow):
    faces, _ = poles.extract_pole_faces(snow)
    s = faces.shape[-1]
    mask = torch.zeros(2, 1, s, s)
    mask[0, :, :10, :10] = 1  # a corner of U only
    out = poles.merge_pole_faces(snow, torch.zeros_like(faces), mask, feather=0)
    changed = (out != snow).any(1)[0]
    lat = _row_lat(snow.shape[2])
    rows = changed.any(-1)
    assert rows.any() and not rows[lat < 0].any()  # only the top cap
    shared = poles.merge_pole_faces(snow, faces, poles.pole_mask(s)[0], feather=1)
    assert shared.shape == snow.shape


# ---------------------------------------------------------------- inpainters


@pytest.mark.parametrize("method", ["telea", "ns"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_opencv_inpainter_fills_holes_from_context(method, channels):
    img = torch.full((2, channels, 48, 48), 0.3)
    img[:, :, :, 24:] = 0.7  # a vertical edge through the hole
    masks = poles.pole_mask(48, 0.5).expand(2, 1, 48, 48)
    garbage = img.clone()
    garbage[masks.expand_as(img) > 0] = 1.0
    out = poles.OpenCVInpainter(method)(garbage, masks)
    assert out.shape == img.shape
    outside = masks.expand_as(img) == 0
    assert torch.equal(out[outside], garbage[outside])
    hole = masks.expand_as(img) > 0
    assert (out[hole] - img[hole]).abs().mean() < 0.08
    assert (out[hole] < 0.95).all()


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_inpainter_matches_whole_image_inpainting(method):
    import cv2

    torch.manual_seed(1)
    img = torch.rand(1, 3, 80, 96)
    m = torch.zeros(1, 1, 80, 96)
    m[..., 20:50, 30:70] = 1
    out = poles.OpenCVInpainter(method, radius=5)(img, m)
    arr = np.ascontiguousarray((img[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    ref = cv2.inpaint(arr, (m[0, 0].numpy() * 255).astype(np.uint8), 5, flag)
    ref = torch.from_numpy(ref.astype(np.float32) / 255).permute(2, 0, 1)[None]
    hole = m.expand_as(img) > 0
    assert torch.equal(out[hole], ref[hole])
    assert torch.equal(out[~hole], img[~hole])


def test_opencv_methods_differ():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 40, 40)
    m = poles.pole_mask(40, 0.5)
    a = poles.OpenCVInpainter("telea")(img, m)
    b = poles.OpenCVInpainter("ns")(img, m)
    assert not torch.equal(a, b)


def test_make_inpainter_specs():
    assert isinstance(poles.make_inpainter("opencv"), poles.OpenCVInpainter)
    assert poles.make_inpainter("opencv").method == "telea"
    assert poles.make_inpainter("opencv-ns").method == "ns"
    assert poles.make_inpainter("OpenCV-NS", radius=5).radius == 5
    fn = lambda x, m: x  # noqa: E731
    assert poles.make_inpainter(fn) is fn
    assert isinstance(poles.make_inpainter("opencv"), poles.Inpainter)
    with pytest.raises(PanoInputError, match="inpainter"):
        poles.make_inpainter("magic")
    with pytest.raises(PanoInputError, match="inpainter"):
        poles.make_inpainter("diffusers:")
    with pytest.raises(PanoInputError, match="model: folder not found"):
        poles.make_inpainter("diffusers:/no/such/folder")
    with pytest.raises(PanoInputError, match="method"):
        poles.OpenCVInpainter("fast")


# ---------------------------------------------------------------- bad input


def test_bad_inputs_name_the_input(snow):
    faces, masks = poles.extract_pole_faces(snow)
    with pytest.raises(PanoInputError, match="panorama.*2:1"):
        poles.refine_poles(snow[..., :300])
    nan = snow.clone()
    nan[0, 0, 5, 5] = float("nan")
    with pytest.raises(PanoInputError, match="panorama.*NaN"):
        poles.refine_poles(nan)
    with pytest.raises(PanoInputError, match="fraction"):
        poles.extract_pole_faces(snow, fraction=0)
    with pytest.raises(PanoInputError, match="fraction"):
        poles.extract_pole_faces(snow, fraction=1.5)
    with pytest.raises(PanoInputError, match="feather"):
        poles.refine_poles(snow, feather=-1)
    with pytest.raises(PanoInputError, match="feather"):
        poles.merge_pole_faces(snow, faces, masks, feather=2.5)
    with pytest.raises(PanoInputError, match="pole_masks.*size"):
        poles.merge_pole_faces(snow, faces, masks[..., :-1, :-1])
    with pytest.raises(PanoInputError, match="pole_faces.*2 faces"):
        poles.merge_pole_faces(snow, faces[:1])
    with pytest.raises(PanoInputError, match="pole_faces.*square"):
        poles.merge_pole_faces(snow, faces[..., :-1])
    with pytest.raises(PanoInputError, match="pole_faces.*channels"):
        poles.merge_pole_faces(snow, faces[:, :1])
    with pytest.raises(PanoInputError, match="inpainter.*shape"):
        poles.refine_poles(snow, lambda x, m: x[:, :, :-1])


# ---------------------------------------------------------------- CLI


def _write_small(tmp_path: Path, snow: torch.Tensor) -> Path:
    p = tmp_path / "in.png"
    write_image(p, snow)
    return p


def test_cli_refine_poles_writes_and_keeps_the_rest(tmp_path, snow, capsys):
    src = _write_small(tmp_path, snow)
    out = tmp_path / "out.png"
    rc = cli_main(["refine-poles", str(src), "-o", str(out), "--feather", "4"])
    assert rc == 0 and out.is_file()
    a = read_image(src)
    b = read_image(out)
    assert a.shape == b.shape
    lat = _row_lat(a.shape[2])
    mid = lat.abs() < 50
    assert torch.equal(a[:, :, mid], b[:, :, mid])
    assert not torch.equal(a, b)
    # same result as the library call, to 8-bit rounding
    ref = poles.refine_poles(a, "opencv", feather=4, fraction=poles.OPENCV_DEFAULT_FRACTION)  # the CLI default
    assert (ref - b).abs().max().item() <= 1 / 255 + 1e-6


def test_cli_refuses_to_overwrite_and_reports_errors(tmp_path, snow, capsys):
    src = _write_small(tmp_path, snow)
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    assert cli_main(["refine-poles", str(src), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert cli_main(["refine-poles", str(src), "-o", str(out), "--force", "--inpainter", "opencv-ns"]) == 0
    assert read_image(out).shape == (1, 3, 256, 512)
    assert cli_main(["refine-poles", str(src), "-o", str(tmp_path / "x.png"), "--inpainter", "bogus"]) == 2
    assert "inpainter" in capsys.readouterr().err
    assert cli_main(["refine-poles", str(src), "-o", str(tmp_path / "y.png"), "--fraction", "2"]) == 2
    assert "fraction" in capsys.readouterr().err
    bad = tmp_path / "square.png"
    write_image(bad, torch.rand(1, 3, 64, 64))
    assert cli_main(["refine-poles", str(bad), "-o", str(tmp_path / "z.png")]) == 2
    assert "2:1" in capsys.readouterr().err
    assert cli_main(["refine-poles", str(tmp_path / "missing.png"), "-o", str(tmp_path / "w.png")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "z.png").exists()


def test_cli_keeps_16_bit_and_alpha(tmp_path):
    rgba = torch.rand(1, 4, 64, 128)
    src = tmp_path / "in16.png"
    write_image(src, rgba, bits=16)
    out = tmp_path / "out16.png"
    assert cli_main(["refine-poles", str(src), "-o", str(out), "--feather", "2"]) == 0
    raw = np.asarray(__import__("cv2").imread(str(out), -1))
    assert raw.dtype == np.uint16 and raw.shape == (64, 128, 4)
    a, b = read_image(src), read_image(out)
    lat = _row_lat(64)
    mid = lat.abs() < 40  # 32 px faces: the 2 px feather reaches down to 48.5 degrees
    assert torch.equal(a[:, :, mid], b[:, :, mid])
    assert not torch.equal(a, b)
    assert math.isfinite(float(b.sum()))


def test_split_and_join_rgb_alpha_round_trip():
    from pano_core.poles import join_rgb_alpha, split_rgb_alpha

    g = torch.rand(1, 1, 8, 16)
    a = torch.rand(1, 1, 8, 16)
    for erp, channels in ((g, 1), (torch.cat([g, a], 1), 2), (torch.rand(1, 3, 8, 16), 3), (torch.rand(1, 4, 8, 16), 4)):
        rgb, alpha = split_rgb_alpha(erp)
        assert rgb.shape[1] == 3
        assert (alpha is None) == (channels in (1, 3))
        out = rgb.clone()
        out[:, :, 0, 0] = torch.tensor([0.1, 0.2, 0.6])  # a "refined" pixel
        back = join_rgb_alpha(out, rgb, erp)
        assert back.shape == erp.shape
        if channels in (2, 4):
            assert torch.equal(back[:, -1:], erp[:, -1:])  # alpha untouched
        if channels in (1, 2):
            assert torch.isclose(back[0, 0, 0, 0], torch.tensor(0.3))  # changed grey pixel = channel mean
        unchanged = torch.ones(8, 16, dtype=torch.bool)
        unchanged[0, 0] = False
        assert torch.equal(back[..., unchanged], erp[..., unchanged])  # everything else bit-identical


@pytest.mark.parametrize("h,s,b,c,mode", [(4, 2, 1, 3, "bilinear"), (6, 3, 2, 1, "nearest"), (8, 5, 1, 4, "bicubic"),
                                          (64, 32, 2, 3, "bilinear"), (128, 40, 1, 3, "nearest"),
                                          (256, 64, 1, 3, "bicubic")])
def test_e2c_pole_faces_are_e2c_faces_u_d(h, s, b, c, mode):
    """Pole extraction makes only U and D (issue 14, point 16: no side faces), bit-identical to e2c's."""
    from pano_core.geometry import e2c
    from pano_core.geometry.cube import e2c_pole_faces

    erp = torch.rand(b, c, h, 2 * h, generator=torch.Generator().manual_seed(h))
    want = e2c(erp, face_size=s, mode=mode).reshape(b, 6, c, s, s)[:, 4:6].reshape(2 * b, c, s, s)
    assert torch.equal(e2c_pole_faces(erp, s, mode), want)
    # the differentiable path (no cv2 fast path): e2c's differentiable faces, and a gradient
    g = erp.clone().requires_grad_(True)
    faces = e2c_pole_faces(g, s, mode)
    want = e2c(g, face_size=s, mode=mode).reshape(b, 6, c, s, s)[:, 4:6].reshape(2 * b, c, s, s)
    assert torch.equal(faces.detach(), want.detach())
    faces.sum().backward()
    assert g.grad is not None and float(g.grad.abs().sum()) > 0
