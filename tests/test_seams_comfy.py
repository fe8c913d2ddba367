"""The seam nodes in a real ComfyUI server (harness in tests/comfy_harness.py)."""

from __future__ import annotations

import json

import comfy_harness as ch
import numpy as np
import pytest

pytestmark = [pytest.mark.comfy, pytest.mark.timeout(600)]


def _text(outputs: dict, nid: str) -> str:
    return "".join(outputs[nid]["text"])


def test_seam_nodes_blend_and_measure(comfy):
    name = comfy.add_input_file(ch.ASSETS_DIR / "snow_village_erp.png")
    chalet = comfy.add_input_file(ch.ASSETS_DIR / "chalet_erp.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "20": {"class_type": "LoadImage", "inputs": {"image": chalet}},
        "21": {"class_type": "Pano360SeamMetrics", "inputs": {"image": ["2", 0], "layout": "stack", "band": 4}},
        "22": {"class_type": "PreviewAny", "inputs": {"source": ["21", 2]}},
        "2": {"class_type": "Pano360ERPToCubemap",
              "inputs": {"image": ["1", 0], "face_size": 64, "layout": "dice", "mode": "bilinear"}},
        # make the faces disagree: brighten the whole stack of faces except for the F face
        "3": {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": 1}},
        "4": {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 1, "length": 5}},
        "5": {"class_type": "ImageBlend",
              "inputs": {"image1": ["4", 0], "image2": ["4", 0], "blend_factor": 1.0, "blend_mode": "screen"}},
        "6": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["5", 0]}},
        "7": {"class_type": "Pano360SeamMetrics", "inputs": {"image": ["6", 0], "layout": "stack", "band": 4}},
        "8": {"class_type": "Pano360CubemapSeamBlend",
              "inputs": {"cubemap": ["6", 0], "method": "exact", "iterations": 200, "layout": "stack"}},
        "9": {"class_type": "Pano360SeamMetrics", "inputs": {"image": ["8", 0], "layout": "stack", "band": 4}},
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["7", 2]}},
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["9", 2]}},
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["9", 5]}},
        "13": {"class_type": "Pano360ERPWrapBlend", "inputs": {"panorama": ["20", 0], "method": "poisson", "band": 16}},
        "14": {"class_type": "Pano360SeamMetrics", "inputs": {"image": ["13", 0], "layout": "erp", "band": 8}},
        "15": {"class_type": "Pano360SeamMetrics", "inputs": {"image": ["20", 0], "layout": "erp", "band": 8}},
        "16": {"class_type": "PreviewAny", "inputs": {"source": ["14", 6]}},
        "17": {"class_type": "PreviewAny", "inputs": {"source": ["15", 6]}},
        "18": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "seams/wrap"}},
        "19": {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": "seams/orig"}},
    }
    out = comfy.run(prompt, timeout=300)
    gt = json.loads(_text(out, "22"))
    before = json.loads(_text(out, "10"))
    after = json.loads(_text(out, "11"))
    assert len(after["edges"]) == 12
    # the brightened faces disagree with F along its 4 edges; blending restores the e2c level
    assert before["seam_jump"] > 1.5 * gt["seam_jump"]
    assert after["seam_jump"] < 1.2 * gt["seam_jump"]
    assert abs(float(_text(out, "12")) - after["seam_jump"]) < 1e-6  # the FLOAT output
    # the metrics node shows its text in the UI too
    assert "Seam-SSIM" in "".join(out["7"]["text"])
    wrap_after, wrap_before = float(_text(out, "16")), float(_text(out, "17"))
    assert wrap_before > 3.0 and wrap_after < 0.6 * wrap_before
    (blended,) = comfy.images(out, "18")
    (orig,) = comfy.images(out, "19")
    assert np.array_equal(blended[:, 16:-16], orig[:, 16:-16])  # outside the band: untouched
    assert not np.array_equal(blended[:, :16], orig[:, :16])


def test_seam_nodes_bad_input_then_server_keeps_serving(comfy):
    name = comfy.add_input_file(ch.ASSETS_DIR / "snow_village_erp.png")
    bad = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        # an ERP is not a stack of square faces
        "2": {"class_type": "Pano360CubemapSeamBlend",
              "inputs": {"cubemap": ["1", 0], "method": "gauss-seidel", "iterations": 200, "layout": "stack"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(ch.ComfyExecutionError) as ei:
        comfy.run(bad)
    assert ei.value.node_type == "Pano360CubemapSeamBlend"
    assert ei.value.exception_type.endswith("PanoInputError")
    assert "cubemap" in ei.value.exception_message and "6 faces" in ei.value.exception_message

    wrong_layout = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "Pano360CubemapSeamBlend",
              "inputs": {"cubemap": ["1", 0], "method": "gauss-seidel", "iterations": 200, "layout": "horizon"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(ch.ComfyExecutionError) as ei:
        comfy.run(wrong_layout)
    assert "6:1" in ei.value.exception_message

    with pytest.raises(ch.ComfyValidationError):
        comfy.queue({
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "Pano360SeamMetrics", "inputs": {"image": ["1", 0], "layout": "cross", "band": 8}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
        })

    wrap_band = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "Pano360ERPWrapBlend", "inputs": {"panorama": ["1", 0], "method": "feather", "band": 4000}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(ch.ComfyExecutionError) as ei:
        comfy.run(wrap_band)
    assert "band" in ei.value.exception_message

    # the server still answers
    good = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "Pano360SeamMetrics", "inputs": {"image": ["1", 0], "layout": "erp", "band": 8}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 3]}},
    }
    out = comfy.run(good)
    assert 0.0 < float(_text(out, "3")) <= 1.0
