"""Pano360Viewer node logic: in-process (real ComfyUI modules) and through the real server."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import comfy_harness
import numpy as np
import pytest
import torch
from PIL import Image

from pano_core.geometry import e2c, faces_to_layout

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"
PACK_NAME = "pano360_pack_viewer_under_test"


@pytest.fixture(scope="module")
def viewer_mod(comfy_inprocess):
    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.viewer")


@pytest.fixture
def temp_dir(tmp_path, monkeypatch, comfy_inprocess):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def cube_erp() -> torch.Tensor:
    """labeled_cube_erp.png as BCHW (1, 3, 256, 512)."""
    im = Image.open(ASSETS / "labeled_cube_erp.png").convert("RGB").resize((512, 256), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def refs(cube_erp):
    faces = e2c(cube_erp, face_size=64, mode="nearest", layout="dict")
    return {k: v[0].reshape(3, -1).median(dim=1).values.numpy() for k, v in faces.items()}


def bhwc(x):
    return x.movedim(1, -1).contiguous()


def centre_face(img_bhwc, refs, b=0):
    h, w = img_bhwc.shape[1:3]
    names = []
    for fy in (0.42, 0.5, 0.58):
        for fx in (0.44, 0.5, 0.56):
            rgb = img_bhwc[b, int(h * fy), int(w * fx), :3].numpy()
            d = {k: float(np.linalg.norm(rgb - v)) for k, v in refs.items()}
            k = min(d, key=d.get)
            names.append(k if d[k] < 0.25 else "?")
    return max(set(names), key=names.count)


def test_registered(viewer_mod):
    cls = viewer_mod.NODE_CLASS_MAPPINGS["Pano360Viewer"]
    assert cls.OUTPUT_NODE and cls.CATEGORY.startswith("Pano360/")
    assert cls.RETURN_TYPES == ("IMAGE", "FLOAT", "FLOAT", "FLOAT")
    req = cls.INPUT_TYPES()["required"]
    for k in ("yaw", "pitch", "fov"):
        assert req[k][0] == "FLOAT"
    assert "Pano360Viewer" in viewer_mod.NODE_DISPLAY_NAME_MAPPINGS


@pytest.mark.parametrize(
    "yaw, pitch, face",
    [(0, 0, "F"), (90, 0, "R"), (180, 0, "B"), (-90, 0, "L"), (0, 90, "U"), (30, -90, "D")],
)
def test_view_output_follows_widgets(viewer_mod, temp_dir, cube_erp, refs, yaw, pitch, face):
    node = viewer_mod.Pano360Viewer()
    out = node.view(bhwc(cube_erp), "auto", yaw, pitch, 60.0, 96, 64, unique_id="7")
    view, y, p, f = out["result"]
    assert view.shape == (1, 64, 96, 3)
    assert (y, p, f) == (yaw, pitch, 60.0)
    assert centre_face(view, refs) == face
    assert out["ui"]["pano360_view"] == [{"yaw": float(yaw), "pitch": float(pitch), "fov": 60.0}]


def test_preview_files_in_temp(viewer_mod, temp_dir, cube_erp):
    node = viewer_mod.Pano360Viewer()
    batch = torch.cat([cube_erp, cube_erp.flip(-1)])
    ui = node.view(bhwc(batch), unique_id="12")["ui"]
    ui2 = node.view(bhwc(batch), unique_id="12")["ui"]
    items = ui2["pano360"]
    assert len(items) == 2 and ui["pano360_notes"] == []
    assert {i["filename"] for i in ui["pano360"]}.isdisjoint(
        {i["filename"] for i in items}
    )  # fresh names per run (the previous run's files of this node are deleted)
    for b, it in enumerate(items):
        assert (
            it["type"] == "temp"
            and it["subfolder"] == "pano360"
            and (it["width"], it["height"]) == (512, 256)
        )
        saved = np.asarray(Image.open(temp_dir / it["subfolder"] / it["filename"]), dtype=np.float32) / 255
        np.testing.assert_allclose(saved, bhwc(batch)[b].numpy(), atol=1 / 255 + 1e-6)


def test_big_preview_is_jpeg_and_batch_is_capped(viewer_mod, temp_dir, monkeypatch):
    monkeypatch.setattr(viewer_mod, "PNG_MAX_PIXELS", 64 * 32)
    monkeypatch.setattr(viewer_mod, "MAX_STRIP", 2)
    x = torch.rand(3, 3, 64, 128)
    ui = viewer_mod.Pano360Viewer().view(bhwc(x), view_width=32, view_height=32)["ui"]
    assert len(ui["pano360"]) == 2
    assert all(i["filename"].endswith(".jpg") for i in ui["pano360"])
    assert any("first 2" in n for n in ui["pano360_notes"])


@pytest.mark.parametrize("layout", ["stack", "horizon", "dice"])
def test_cubemap_inputs(viewer_mod, temp_dir, cube_erp, refs, layout):
    faces = e2c(cube_erp, face_size=64, layout="stack")
    x = faces if layout == "stack" else faces_to_layout(faces, layout)
    node = viewer_mod.Pano360Viewer()
    out = node.view(bhwc(x), "auto", 90, 0, 60.0, 64, 64)
    (item,) = out["ui"]["pano360"]
    assert item["source_layout"] == ("cubemap stack" if layout == "stack" else layout)
    assert (item["width"], item["height"]) == (256, 128)
    assert centre_face(out["result"][0], refs) == "R"
    # explicit layout gives the same result
    name = "cubemap stack" if layout == "stack" else layout
    out2 = node.view(bhwc(x), name, 90, 0, 60.0, 64, 64)
    torch.testing.assert_close(out2["result"][0], out["result"][0])


def test_non_2to1_warns_not_crashes(viewer_mod, temp_dir, cube_erp, refs):
    wide = cube_erp[:, :, 43:213, :]  # 512 x 170
    out = viewer_mod.Pano360Viewer().view(bhwc(wide), "auto", 0, 0, 60.0, 64, 64)
    assert any("not 2:1" in n for n in out["ui"]["pano360_notes"])
    assert out["ui"]["pano360"][0]["height"] == 170
    assert out["result"][0].shape == (1, 64, 64, 3)
    assert centre_face(out["result"][0], refs) == "F"


def test_bad_inputs(viewer_mod, temp_dir):
    node = viewer_mod.Pano360Viewer()
    with pytest.raises(ValueError, match="6 faces"):
        node.view(bhwc(torch.rand(5, 3, 16, 16)), "cubemap stack")
    with pytest.raises(ValueError, match="input_layout"):
        node.view(bhwc(torch.rand(1, 3, 16, 32)), "sphere")
    with pytest.raises(ValueError, match="IMAGE"):
        node.view(torch.rand(3, 16, 32))


def test_grey_and_rgba(viewer_mod, temp_dir):
    node = viewer_mod.Pano360Viewer()
    for c in (1, 4):
        out = node.view(bhwc(torch.rand(1, c, 32, 64)), view_width=16, view_height=16)
        assert out["result"][0].shape == (1, 16, 16, c)
        it = out["ui"]["pano360"][0]
        assert Image.open(temp_dir / it["subfolder"] / it["filename"]).mode in ("RGB", "RGBA")


@pytest.mark.comfy
def test_server_view_and_float_outputs(comfy, refs):
    """Through the real server: yaw/pitch/fov widget values -> 'view' IMAGE; FLOAT outputs wired on."""
    comfy.add_input_file(ASSETS / "labeled_cube_erp.png")
    info = comfy.object_info("Pano360Viewer")
    assert info["output_node"] is True and info["output"] == ["IMAGE", "FLOAT", "FLOAT", "FLOAT"]
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "labeled_cube_erp.png"}},
        "2": {
            "class_type": "Pano360Viewer",
            "inputs": {
                "images": ["1", 0],
                "input_layout": "auto",
                "yaw": -90.0,
                "pitch": 0.0,
                "fov": 70.0,
                "view_width": 128,
                "view_height": 96,
            },
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "viewer_test"}},
        # the FLOAT outputs drive another viewer's view (any FLOAT input would do)
        "4": {
            "class_type": "Pano360Viewer",
            "inputs": {
                "images": ["1", 0],
                "input_layout": "erp",
                "yaw": ["2", 1],
                "pitch": ["2", 2],
                "fov": ["2", 3],
                "view_width": 64,
                "view_height": 64,
            },
        },
    }
    outputs = comfy.run(prompt)
    (img,) = comfy.images(outputs, "3")
    assert img.shape == (96, 128, 3)
    assert centre_face(torch.from_numpy(img.astype(np.float32) / 255)[None], refs) == "L"
    assert outputs["4"]["pano360_view"] == [{"yaw": -90.0, "pitch": 0.0, "fov": 70.0}]
    item = outputs["2"]["pano360"][0]
    raw = comfy.view(item["filename"], item["subfolder"], "temp")
    assert Image.open(__import__("io").BytesIO(raw)).size == (1024, 512)
