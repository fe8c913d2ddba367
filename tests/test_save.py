"""Pano360SavePanorama: GPano XMP + ComfyUI prompt/workflow metadata, counters, never overwriting."""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import uuid
from pathlib import Path

import comfy_harness
import numpy as np
import pytest
import torch
from PIL import Image

from pano_core.xmp import png_text, read_gpano

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"
PACK_NAME = "pano360_pack_save_under_test"

PROMPT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
    "9": {"class_type": "Pano360SavePanorama"},
}
WORKFLOW = {"nodes": [{"id": 1, "type": "LoadImage"}], "links": [], "version": 0.4, "note": "ünïcödé"}


@pytest.fixture(scope="module")
def save_mod(comfy_inprocess):
    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.save")


@pytest.fixture
def out_dir(tmp_path, monkeypatch, comfy_inprocess):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    return tmp_path


def _images(b=1, h=32, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, 3, generator=g)


def test_png_metadata_roundtrip(save_mod, out_dir):
    imgs = _images(2)
    node = save_mod.Pano360SavePanorama()
    ui = node.save(
        imgs, "pano/test", "png", 95, True, -45.0, prompt=PROMPT, extra_pnginfo={"workflow": WORKFLOW}
    )["ui"]
    names = [r["filename"] for r in ui["images"]]
    assert names == ["test_00001_.png", "test_00002_.png"]
    assert all(r["subfolder"] == "pano" and r["type"] == "output" for r in ui["images"])
    for b, name in enumerate(names):
        data = (out_dir / "pano" / name).read_bytes()
        gp = read_gpano(data)
        assert gp == {
            "FullPanoWidthPixels": 64,
            "FullPanoHeightPixels": 32,
            "CroppedAreaImageWidthPixels": 64,
            "CroppedAreaImageHeightPixels": 32,
            "CroppedAreaLeftPixels": 0,
            "CroppedAreaTopPixels": 0,
            "ProjectionType": "equirectangular",
            "UsePanoramaViewer": True,
            "PoseHeadingDegrees": 315.0,
        }
        texts = png_text(data)
        assert json.loads(texts["prompt"]) == PROMPT
        assert json.loads(texts["workflow"]) == WORKFLOW
        im = Image.open(io.BytesIO(data))
        # Pillow (independent reader) sees the same chunks; pixels are lossless
        assert json.loads(im.info["workflow"]) == WORKFLOW
        assert 'GPano:ProjectionType="equirectangular"' in im.info["XML:com.adobe.xmp"]
        np.testing.assert_array_equal(
            np.asarray(im), np.floor(imgs[b].numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        )
    # next call continues the counter
    ui = node.save(imgs[:1], "pano/test", "png", prompt=PROMPT)["ui"]
    assert ui["images"][0]["filename"] == "test_00003_.png"
    assert "PoseHeadingDegrees" not in read_gpano((out_dir / "pano" / "test_00003_.png").read_bytes())


def test_jpeg_metadata_roundtrip(save_mod, out_dir):
    import defusedxml  # noqa: F401  (Pillow's getxmp returns {} without it)
    imgs = _images(1, 40, 80)
    ui = save_mod.Pano360SavePanorama().save(
        imgs, "j", "jpeg", 90, prompt=PROMPT, extra_pnginfo={"workflow": WORKFLOW}
    )["ui"]
    (r,) = ui["images"]
    assert r["filename"] == "j_00001_.jpg"
    data = (out_dir / r["filename"]).read_bytes()
    assert read_gpano(data)["FullPanoWidthPixels"] == 80
    im = Image.open(io.BytesIO(data))
    desc = im.getxmp()["xmpmeta"]["RDF"]["Description"]
    assert desc["ProjectionType"] == "equirectangular" and desc["CroppedAreaImageHeightPixels"] == "40"
    exif = im.getexif()
    assert exif[0x0110].startswith("prompt:") and json.loads(exif[0x0110][7:]) == PROMPT
    assert json.loads(exif[0x010F][len("workflow:") :]) == WORKFLOW
    err = np.abs(np.asarray(im, dtype=np.float32) - imgs[0].numpy() * 255).mean()
    assert err < 20  # JPEG of noise at q90: lossy but the same image


def test_jpeg_drops_oversized_workflow_with_note(save_mod, out_dir):
    big = {"nodes": [{"id": i, "type": "X" * 50} for i in range(3000)]}
    ui = save_mod.Pano360SavePanorama().save(
        _images(), "big", "jpeg", prompt=PROMPT, extra_pnginfo={"workflow": big}
    )["ui"]
    assert any("workflow metadata too large" in t for t in ui["text"])
    im = Image.open(out_dir / ui["images"][0]["filename"])
    exif = im.getexif()
    assert 0x010F not in exif and json.loads(exif[0x0110][7:]) == PROMPT
    assert (
        read_gpano((out_dir / ui["images"][0]["filename"]).read_bytes())["ProjectionType"]
        == "equirectangular"
    )


def test_non_2to1_is_tagged_as_partial(save_mod, out_dir):
    ui = save_mod.Pano360SavePanorama().save(_images(1, 20, 90), "wide", "png")["ui"]
    assert any("not 2:1" in t for t in ui["text"])
    gp = read_gpano((out_dir / ui["images"][0]["filename"]).read_bytes())
    assert (gp["FullPanoWidthPixels"], gp["FullPanoHeightPixels"]) == (90, 45)
    assert (gp["CroppedAreaTopPixels"], gp["CroppedAreaLeftPixels"]) == (12, 0)


def test_never_overwrites(save_mod, out_dir):
    folder = out_dir / "race"
    folder.mkdir()
    (folder / "p_00005_.png").write_bytes(b"keep")
    name, counter = save_mod.write_new_file(str(folder), "p", 5, "png", b"new")
    assert (name, counter) == ("p_00006_.png", 6)
    assert (folder / "p_00005_.png").read_bytes() == b"keep"
    # the node itself continues after the highest existing counter
    ui = save_mod.Pano360SavePanorama().save(_images(), "race/p", "png")["ui"]
    assert ui["images"][0]["filename"] == "p_00007_.png"
    assert (folder / "p_00005_.png").read_bytes() == b"keep"


@pytest.mark.comfy
def test_server_save_keeps_prompt_and_workflow(comfy):
    """Through the real server: the file holds the queued prompt, the workflow and GPano XMP."""
    comfy.add_input_file(ASSETS / "chalet_erp.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "chalet_erp.png"}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "area",
                "width": 256,
                "height": 128,
                "crop": "disabled",
            },
        },
        "3": {
            "class_type": "Pano360SavePanorama",
            "inputs": {
                "images": ["2", 0],
                "filename_prefix": "srv/pano",
                "format": "png",
                "jpeg_quality": 95,
                "write_heading": False,
                "heading_degrees": 0.0,
            },
        },
    }
    wf = {"nodes": [{"id": 1}, {"id": 2}, {"id": 3}], "marker": uuid.uuid4().hex}
    code, body = comfy.post_json(
        "/prompt",
        {"prompt": prompt, "client_id": comfy.client_id, "extra_data": {"extra_pnginfo": {"workflow": wf}}},
    )
    assert code == 200, body
    entry = comfy.wait(body["prompt_id"])
    (r,) = entry["outputs"]["3"]["images"]
    assert r["subfolder"] == "srv" and r["filename"].startswith("pano_") and r["filename"].endswith("_.png")
    data = comfy.view(r["filename"], r["subfolder"], "output")
    texts = png_text(data)
    saved = json.loads(texts["prompt"])  # ComfyUI adds "is_changed" hashes to the stored prompt
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in saved.items()} == prompt
    assert json.loads(texts["workflow"]) == wf
    gp = read_gpano(data)
    assert (gp["FullPanoWidthPixels"], gp["FullPanoHeightPixels"], gp["ProjectionType"]) == (
        256,
        128,
        "equirectangular",
    )
