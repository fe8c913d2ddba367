"""First contact and bad input in a real ComfyUI server (issue 14, points 1, 3, 4, 10): the
natural horizon chain, an over-budget face size refused with a clear message while the server
keeps serving, the template thumbnails served, the seam-blend template repairing real seams."""

from __future__ import annotations

import json
import re

import comfy_harness as ch
import pytest

pytestmark = [pytest.mark.comfy, pytest.mark.timeout(600)]


def _load(comfy, name: str = "snow_village_erp.png") -> str:
    return comfy.add_input_file(ch.ASSETS_DIR / name)


def _chain(name: str, face_size: int) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "area", "width": 256,
                                                     "height": 128, "crop": "disabled"}},
        "3": {"class_type": "Pano360ERPToCubemap",
              "inputs": {"image": ["2", 0], "face_size": face_size, "layout": "horizon", "mode": "bilinear"}},
        "4": {"class_type": "Pano360CubemapSeamBlend",
              "inputs": {"cubemap": ["3", 1], "method": "gauss-seidel", "iterations": 50, "layout": "horizon"}},
        "5": {"class_type": "Pano360CubemapToERP",
              "inputs": {"image": ["4", 0], "input_layout": "horizon", "width": 0, "mode": "bilinear"}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }


def test_horizon_chain_and_an_over_budget_face_size(comfy):
    name = _load(comfy)
    out = comfy.run(_chain(name, 16), timeout=300)
    (img,) = comfy.images(out, "6")
    assert img.shape[:2] == (32, 64)
    # 6 faces of 8192^2 = 403 Mpx from a 256x128 image: refused before allocating, naming the input
    with pytest.raises(ch.ComfyExecutionError) as info:
        comfy.run(_chain(name, 8192), timeout=300)
    msg = info.value.exception_message
    assert info.value.node_type == "Pano360ERPToCubemap"
    assert "face_size" in msg and "above the limit" in msg, msg
    # the server keeps serving
    out = comfy.run(_chain(name, 8), timeout=300)
    assert comfy.images(out, "6")[0].shape[:2] == (16, 32)


def test_template_thumbnails_are_served(comfy):
    listing = comfy.get_json("/api/workflow_templates")
    packs = [k for k, v in listing.items() if "cubemap_seam_blend" in v]
    assert packs, listing
    for wf in sorted((ch.REPO_ROOT / "workflows").glob("*.json")):
        status, body = comfy._request("GET", f"/api/workflow_templates/{packs[0]}/{wf.stem}.jpg")
        assert status == 200 and body[:3] == b"\xff\xd8\xff", wf.stem  # a JPEG


def test_seam_blend_template_shows_the_repair(comfy):
    ui = json.loads((ch.REPO_ROOT / "workflows" / "cubemap_seam_blend.json").read_text())
    _load(comfy, "seams_exposure_dice.png")  # as the workspace set-up copies it: full size, no model needed
    api, outputs = comfy.run_ui_workflow(ui, substitutions={}, timeout=300)
    text = {nid: "".join(outputs[nid]["text"]) for nid in ("7", "9")}  # after, before

    def jump(t: str) -> float:
        return float(re.search(r"Seam jump\s+([0-9.]+)", t).group(1))

    assert jump(text["9"]) > 2 * jump(text["7"]), text


SIZE_LIMIT_SETTING = "Pano360.SizeLimitMegapixels"


def test_size_limit_setting(comfy):
    """The Size limit setting (Settings → Pano360, stored by the frontend through /settings) is what
    the nodes obey: above it a clear error naming the input and the setting, the server keeps
    serving, and 0 gives the default limit back."""
    # the id the frontend extension registers (web/pano360_settings.js) and the nodes read (nodes/_common.py)
    assert f'SIZE_LIMIT_ID = "{SIZE_LIMIT_SETTING}"' in (ch.REPO_ROOT / "web" / "pano360_settings.js").read_text()
    assert f'SIZE_LIMIT_SETTING = "{SIZE_LIMIT_SETTING}"' in (ch.REPO_ROOT / "nodes" / "_common.py").read_text()
    name = _load(comfy)
    status, _ = comfy.post_json(f"/settings/{SIZE_LIMIT_SETTING}", 0.2)  # 0.2 Mpx
    assert status == 200
    try:
        assert comfy.get_json(f"/settings/{SIZE_LIMIT_SETTING}") == 0.2
        # 6 faces of 256^2 = 0.39 Mpx: above 0.2 Mpx
        with pytest.raises(ch.ComfyExecutionError) as info:
            comfy.run(_chain(name, 256), timeout=300)
        msg = info.value.exception_message
        assert info.value.node_type == "Pano360ERPToCubemap"
        assert "face_size" in msg and "above the limit of 0.2 Mpx" in msg and "Settings → Pano360 → Size limit" in msg, msg
        out = comfy.run(_chain(name, 128), timeout=300)  # 0.1 Mpx: below the limit
        assert comfy.images(out, "6")[0].shape[:2] == (256, 512)
    finally:
        comfy.post_json(f"/settings/{SIZE_LIMIT_SETTING}", 0)
    out = comfy.run(_chain(name, 256), timeout=300)  # 0: the default limit again
    assert comfy.images(out, "6")[0].shape[:2] == (512, 1024)
