"""Geometry nodes: in-process (real ComfyUI modules) and through a real ComfyUI server."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from pathlib import Path

import comfy_harness
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pano_core import geometry as core
from pano_core.io import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "pano360_pack_geometry_under_test"
NODES = ("Pano360ERPToCubemap", "Pano360CubemapToERP", "Pano360ERPToPerspective", "Pano360PerspectiveToERP",
         "Pano360RotatePanorama", "Pano360RollYaw", "Pano360SeamPoleMask")


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    """The ComfyUI pack imported as a package (as ComfyUI does); its nodes.geometry module."""
    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.geometry")


@pytest.fixture(scope="module")
def erp_bchw() -> torch.Tensor:
    return F.interpolate(read_image(ROOT / "tests" / "assets" / "snow_village_erp.png")[:, :3], size=(64, 128), mode="area")


@pytest.fixture(scope="module")
def erp(erp_bchw) -> torch.Tensor:
    return erp_bchw.movedim(1, -1).contiguous()  # ComfyUI IMAGE


@contextlib.contextmanager
def raises_pano(match: str):
    with pytest.raises(ValueError, match=match) as info:
        yield info
    assert type(info.value).__name__ == "PanoInputError", type(info.value)


def node(pack, name):
    return pack.NODE_CLASS_MAPPINGS[name]()


def test_registered(pack):
    for name in NODES:
        cls = pack.NODE_CLASS_MAPPINGS[name]
        assert name in pack.NODE_DISPLAY_NAME_MAPPINGS and cls.CATEGORY == "Pano360/geometry"
        spec = cls.INPUT_TYPES()
        assert "required" in spec and len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        assert callable(getattr(cls, cls.FUNCTION))


def test_cubemap_nodes(pack, erp, erp_bchw):
    mask = torch.zeros(1, 64, 128)
    mask[:, :, 60:70] = 1
    faces, lay, fmask = node(pack, "Pano360ERPToCubemap").run(erp, 0, "dice", "bilinear", mask)
    assert faces.shape == (6, 32, 32, 3) and lay.shape == (1, 96, 128, 3) and fmask.shape == (6, 32, 32)
    ref = core.e2c(erp_bchw, 32)
    assert torch.allclose(faces, ref.movedim(1, -1), atol=1e-6)
    assert torch.allclose(fmask, core.e2c(mask[:, None], 32)[:, 0], atol=1e-6)
    c2e_node = node(pack, "Pano360CubemapToERP")
    back, bmask = c2e_node.run(faces, "auto", 0, "bilinear", fmask)
    assert back.shape == (1, 64, 128, 3) and bmask.shape == (1, 64, 128)
    back2, _ = c2e_node.run(lay, "dice", 0, "bilinear")
    assert torch.allclose(back, back2, atol=1e-6)
    back3, _ = c2e_node.run(node(pack, "Pano360ERPToCubemap").run(erp, 0, "horizon", "bilinear")[1], "auto", 256, "bicubic")
    assert back3.shape == (1, 128, 256, 3)
    assert torch.allclose(back.movedim(-1, 1), core.c2e(ref), atol=1e-6)
    with raises_pano("2:1"):
        node(pack, "Pano360ERPToCubemap").run(erp[:, :, :100], 0, "dice", "bilinear")
    with raises_pano("mask"):
        node(pack, "Pano360ERPToCubemap").run(erp, 0, "dice", "bilinear", torch.zeros(1, 64, 64))
    with raises_pano("channels"):
        node(pack, "Pano360ERPToCubemap").run(erp[..., :2], 0, "dice", "bilinear")
    with raises_pano("layout"):
        c2e_node.run(erp[:, :, :100], "auto", 0, "bilinear")
    with raises_pano("6 faces"):
        c2e_node.run(faces[:5], "stack (6-image batch)", 0, "bilinear")
    with raises_pano("NaN"):
        c2e_node.run(faces * float("nan"), "auto", 0, "bilinear")


def test_perspective_nodes(pack, erp, erp_bchw):
    e2p_node = node(pack, "Pano360ERPToPerspective")
    view, vmask = e2p_node.run(erp, 90.0, 30.0, 10.0, 0.0, 48, 32, "bilinear")
    assert view.shape == (1, 32, 48, 3) and vmask.shape == (1, 32, 48) and float(vmask.min()) == 1
    assert torch.allclose(view.movedim(-1, 1), core.e2p(erp_bchw, 90.0, 30.0, 10.0, 0.0, (32, 48)), atol=1e-6)
    # optional inputs (e.g. from the viewer) override the widgets
    v2, _ = e2p_node.run(erp, 50.0, 0.0, 0.0, 0.0, 48, 32, "bilinear", yaw_in=30.0, pitch_in=10.0, fov_in=90.0)
    assert torch.equal(view, v2)
    p2e_node = node(pack, "Pano360PerspectiveToERP")
    pe, cov = p2e_node.run(view, 90.0, 30.0, 10.0, 0.0, 128, "bilinear")
    assert pe.shape == (1, 64, 128, 3) and cov.shape == (1, 64, 128)
    assert 0 < float(cov.mean()) < 0.5 and float(pe[cov == 0].abs().max()) == 0
    half = torch.ones(1, 32, 48)
    half[:, :, :24] = 0
    _, cov2 = p2e_node.run(view, 90.0, 30.0, 10.0, 0.0, 128, "bilinear", mask=half)
    assert 0 < float(cov2.sum()) < float(cov.sum())
    with raises_pano("even"):
        p2e_node.run(view, 90.0, 30.0, 10.0, 0.0, 127, "bilinear")


def test_rotate_roll_and_mask_nodes(pack, erp, erp_bchw):
    r, m, shift = node(pack, "Pano360RollYaw").run(erp, 90.0)
    assert shift == 32 and torch.equal(r, torch.roll(erp, -32, dims=2)) and float(m.min()) == 1
    rot, _ = node(pack, "Pano360RotatePanorama").run(erp, 90.0, 0.0, 0.0, "bilinear")
    assert torch.allclose(rot, r, atol=1e-4)
    rot2, _ = node(pack, "Pano360RotatePanorama").run(erp, 10.0, 20.0, 30.0, "bicubic")
    assert torch.allclose(rot2.movedim(-1, 1), core.rotate_erp(erp_bchw, 10, 20, 30, "bicubic"), atol=1e-6)
    mk = node(pack, "Pano360SeamPoleMask")
    (wrap,) = mk.run("wrap seam", 256, 8.0, 0.0, 60.0, 5.0, 0)
    assert wrap.shape == (1, 128, 256) and float(wrap[0, 0, 0]) == 1 and float(wrap[0, 0, 128]) == 0
    (poles,) = mk.run("poles", 256, 8.0, 0.0, 60.0, 0.0, 0, image=erp.expand(2, -1, -1, -1))
    assert poles.shape == (2, 64, 128)
    assert torch.equal(poles[0], core.pole_mask(64, 128, 60, 0)[0, 0])
    (cube,) = mk.run("cube seams", 256, 4.0, 2.0, 60.0, 5.0, 0)
    assert torch.equal(cube[0], core.seam_mask(128, 256, "cube", 4.0, 2.0)[0, 0])
    with raises_pano("even"):
        mk.run("wrap seam", 255, 8.0, 0.0, 60.0, 5.0, 0)


# --------------------------------------------------------------------------- real server


def _load_image_graph(name: str) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": name}}}


@pytest.mark.comfy
def test_geometry_nodes_in_server(comfy, tmp_path):
    x = F.interpolate(read_image(ROOT / "tests" / "assets" / "world_map_erp.png")[:, :3], size=(64, 128), mode="area")
    write_image(Path(comfy.input_dir) / "geom_erp.png", x, force=True)
    write_image(Path(comfy.input_dir) / "geom_bad.png", torch.rand(1, 3, 50, 120), force=True)
    x = read_image(Path(comfy.input_dir) / "geom_erp.png")  # what LoadImage sees (8-bit)
    g = _load_image_graph("geom_erp.png")
    g.update({
        "2": {"class_type": "Pano360ERPToCubemap", "inputs": {"image": ["1", 0], "face_size": 0, "layout": "dice",
                                                               "mode": "bilinear", "mask": ["8", 0]}},
        "3": {"class_type": "Pano360CubemapToERP", "inputs": {"image": ["2", 0], "input_layout": "auto", "width": 0,
                                                               "mode": "bilinear", "mask": ["2", 2]}},
        "4": {"class_type": "Pano360ERPToPerspective", "inputs": {"image": ["3", 0], "fov": 90.0, "yaw": 30.0,
                                                                   "pitch": 10.0, "roll": 0.0, "width": 48, "height": 32,
                                                                   "mode": "bilinear"}},
        "5": {"class_type": "Pano360PerspectiveToERP", "inputs": {"image": ["4", 0], "fov": 90.0, "yaw": 30.0,
                                                                   "pitch": 10.0, "roll": 0.0, "erp_width": 128,
                                                                   "mode": "bilinear"}},
        "6": {"class_type": "Pano360RotatePanorama", "inputs": {"image": ["1", 0], "yaw": 20.0, "pitch": 10.0,
                                                                 "roll": 0.0, "mode": "bicubic"}},
        "7": {"class_type": "Pano360RollYaw", "inputs": {"image": ["6", 0], "yaw": 90.0}},
        "8": {"class_type": "Pano360SeamPoleMask", "inputs": {"kind": "wrap + cube seams", "width": 128, "band_px": 4.0,
                                                               "feather_px": 2.0, "pole_lat": 60.0,
                                                               "pole_feather_deg": 5.0, "face_size": 0,
                                                               "image": ["1", 0]}},
        "9": {"class_type": "MaskToImage", "inputs": {"mask": ["8", 0]}},
        "10": {"class_type": "MaskToImage", "inputs": {"mask": ["5", 1]}},
    })
    saves = {"20": ["2", 0], "21": ["2", 1], "22": ["3", 0], "23": ["4", 0], "24": ["5", 0], "25": ["7", 0],
             "26": ["9", 0], "27": ["10", 0]}
    for sid, src in saves.items():
        g[sid] = {"class_type": "SaveImage", "inputs": {"images": src, "filename_prefix": f"geom_{sid}"}}
    out = comfy.run(g, timeout=300)
    img = {sid: comfy.images(out, sid) for sid in saves}
    assert len(img["20"]) == 6 and img["20"][0].shape == (32, 32, 3)
    faces = core.e2c(x, 32)
    for k in range(6):  # F R B L U D, through 8-bit PNG rounding
        assert np.abs(img["20"][k] / 255.0 - faces[k].permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6
    assert img["21"][0].shape == (96, 128, 3)
    assert img["22"][0].shape == (64, 128, 3) and img["23"][0].shape == (32, 48, 3)
    assert img["24"][0].shape == (64, 128, 3) and img["25"][0].shape == (64, 128, 3)
    expect = core.roll_erp(core.rotate_erp(x, 20, 10, 0, "bicubic"), 90).clamp(0, 1)
    assert np.abs(img["25"][0] / 255.0 - expect[0].permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6
    seam = img["26"][0][..., 0] / 255.0
    assert seam[32, 0] == 1 and seam[32, 64] == 0
    cov = img["27"][0][..., 0] > 127
    assert 0.02 < cov.mean() < 0.5

    # bad input is a node error naming the problem, and the server keeps serving
    from comfy_harness import ComfyExecutionError

    bad = _load_image_graph("geom_bad.png")
    bad["2"] = dict(g["2"], inputs={k: v for k, v in g["2"]["inputs"].items() if k != "mask"})
    bad["3"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "geom_bad"}}
    with pytest.raises(ComfyExecutionError) as e:
        comfy.run(bad, timeout=120)
    assert e.value.node_type == "Pano360ERPToCubemap" and "2:1" in (e.value.exception_message or "")
    small = {k: g[k] for k in ("1", "8", "9")}
    small["26"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "geom_after_error"}}
    assert comfy.images(comfy.run(small, timeout=120), "26")[0].shape == (64, 128, 3)
