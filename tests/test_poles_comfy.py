"""Pole refinement nodes in the real ComfyUI server (tests/comfy_harness.py)."""

from __future__ import annotations

import json
from pathlib import Path

import comfy_harness as ch
import numpy as np
import pytest
import torch

from pano_core import poles

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "tests" / "assets"
WORKFLOW = ROOT / "workflows" / "pole_refine.json"


def _small_input(comfy, max_side: int = 128) -> tuple[str, np.ndarray]:
    """A down-scaled copy of the snow village in the server's input folder; (name, HWC uint8)."""
    from PIL import Image

    name = ch._small_copy(ASSETS / "snow_village_erp.png", comfy.input_dir, max_side)
    with Image.open(comfy.input_dir / name) as im:
        return name, np.asarray(im.convert("RGB"))


def _outside(h: int, w: int, fraction: float, feather: int, face_size: int) -> np.ndarray:
    masks = poles.pole_mask(face_size, fraction).expand(2, 1, face_size, face_size)
    return (poles.pole_weight_erp((h, w), masks, feather) == 0)[0, 0].numpy()


@pytest.mark.comfy
@pytest.mark.timeout(400)
def test_nodes_registered(comfy):
    for name in ("Pano360ExtractPoleFaces", "Pano360MergePoleFaces", "Pano360RefinePoles", "Pano360RefinePolesOpenCV"):
        info = comfy.object_info(name)
        assert info["category"].startswith("Pano360/")
    info = comfy.object_info("Pano360RefinePoles")
    req = info["input"]["required"]
    for k in ("model", "vae", "positive", "negative", "seed", "steps", "cfg", "sampler_name", "scheduler",
              "denoise", "fraction", "feather"):
        assert k in req


@pytest.mark.comfy
@pytest.mark.timeout(400)
def test_pole_refine_workflow_keeps_the_rest(comfy):
    ui = json.loads(WORKFLOW.read_text())
    api, outputs = comfy.run_ui_workflow(ui, timeout=300)
    refiner = next(k for k, v in api.items() if v["class_type"] == "Pano360RefinePoles")
    save = next(k for k, v in api.items() if v["class_type"] == "SaveImage")
    load = next(k for k, v in api.items() if v["class_type"] == "LoadImage")
    assert api[refiner]["inputs"]["model"][0] != "2" or api["2"]["class_type"] == "Pano360TestTinyFlux"
    (out,) = comfy.images(outputs, save)
    from PIL import Image

    with Image.open(comfy.input_dir / api[load]["inputs"]["image"]) as im:
        src = np.asarray(im.convert("RGB"))
    assert out.shape == src.shape
    h, w = src.shape[:2]
    inp = api[refiner]["inputs"]
    s = poles.pole_face_size(w, inp["face_size"] or None, multiple=16)
    outside = _outside(h, w, inp["fraction"], inp["feather"], s)
    assert np.array_equal(out[outside], src[outside])
    assert not np.array_equal(out[~outside], src[~outside])
    faces = comfy.images(outputs, next(k for k, v in api.items() if v["class_type"] == "PreviewImage"))
    assert len(faces) == 2 and faces[0].shape == (s, s, 3)


@pytest.mark.comfy
@pytest.mark.timeout(400)
def test_extract_merge_pair_and_opencv_node(comfy):
    name, src = _small_input(comfy)
    h, w = src.shape[:2]
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "Pano360ExtractPoleFaces", "inputs": {"panorama": ["1", 0], "fraction": 0.5, "face_size": 0}},
        # the "user's own inpaint graph": invert the faces (a visible, checkable change)
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "Pano360MergePoleFaces",
              "inputs": {"panorama": ["2", 2], "pole_faces": ["3", 0], "pole_masks": ["2", 1], "feather": 2}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "poles_pair"}},
        "6": {"class_type": "Pano360RefinePolesOpenCV",
              "inputs": {"panorama": ["1", 0], "method": "telea", "radius": 3.0, "fraction": 0.5, "feather": 2,
                         "face_size": 0}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "poles_cv"}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    outputs = comfy.run(prompt, timeout=300)
    (pair,) = comfy.images(outputs, "5")
    (cv,) = comfy.images(outputs, "7")
    faces = comfy.images(outputs, "8")
    s = w // 4 // 16 * 16
    assert len(faces) == 2 and faces[0].shape == (s, s, 3)
    outside = _outside(h, w, 0.5, 2, s)
    for out in (pair, cv):
        assert out.shape == src.shape
        assert np.array_equal(out[outside], src[outside])
    # the inverted sky at the zenith is dark now; the OpenCV fill stays close to the sky
    assert pair[0].mean() < src[0].mean() - 40
    assert abs(float(cv[0].mean()) - float(src[0].mean())) < 40


@pytest.mark.comfy
@pytest.mark.timeout(400)
def test_bad_inputs_give_clear_errors_and_the_server_keeps_serving(comfy):
    name, _ = _small_input(comfy)
    wrong_mask = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "Pano360ExtractPoleFaces", "inputs": {"panorama": ["1", 0], "fraction": 0.5, "face_size": 0}},
        "3": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 20, "height": 20}},
        "4": {"class_type": "Pano360MergePoleFaces",
              "inputs": {"panorama": ["2", 2], "pole_faces": ["2", 0], "pole_masks": ["3", 0], "feather": 2}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    with pytest.raises(ch.ComfyExecutionError) as ei:
        comfy.run(wrong_mask, timeout=120)
    assert ei.value.node_type == "Pano360MergePoleFaces"
    assert "pole_masks" in ei.value.exception_message and "32x32" in ei.value.exception_message

    not_erp = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "Pano360RefinePolesOpenCV",
              "inputs": {"panorama": ["1", 0], "method": "ns", "radius": 3.0, "fraction": 0.5, "feather": 2,
                         "face_size": 0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(ch.ComfyExecutionError) as ei:
        comfy.run(not_erp, timeout=120)
    assert "panorama" in ei.value.exception_message and "2:1" in ei.value.exception_message

    wrong_faces = dict(wrong_mask)
    wrong_faces["3"] = {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 2, "color": 0}}
    wrong_faces["4"] = {"class_type": "Pano360MergePoleFaces",
                        "inputs": {"panorama": ["2", 2], "pole_faces": ["3", 0], "feather": 2}}
    with pytest.raises(ch.ComfyExecutionError) as ei:
        comfy.run(wrong_faces, timeout=120)
    assert "pole_faces" in ei.value.exception_message and "square" in ei.value.exception_message

    # still serving: a good prompt runs
    good = {k: v for k, v in wrong_mask.items() if k != "3"}
    good["4"] = {"class_type": "Pano360MergePoleFaces",
                 "inputs": {"panorama": ["2", 2], "pole_faces": ["2", 0], "pole_masks": ["2", 1], "feather": 2}}
    outputs = comfy.run(good, timeout=120)
    (img,) = comfy.images(outputs, "5")
    assert img.shape[0] * 2 == img.shape[1] and torch.isfinite(torch.from_numpy(img.astype(np.float32))).all()
