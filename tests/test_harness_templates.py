"""ui_to_api on real frontend-saved workflows: official ComfyUI Flux templates (from the
``comfyui_workflow_templates_media_image`` package ComfyUI installs) converted with the default
tiny-model substitutions and run in the server."""

from __future__ import annotations

import json
from pathlib import Path

import comfy_harness as ch
import pytest

TEMPLATES = [
    "flux_dev_full_text_to_image",  # UNETLoader, DualCLIPLoader, CLIPTextEncodeFlux, ConditioningZeroOut
    "flux_canny_model_example",  # control variant, LoadImage, Canny, InstructPixToPixConditioning
    "flux_fill_outpaint_example",  # fill variant, ImagePadForOutpaint, InpaintModelConditioning
    "flux_kontext_dev_basic",  # ReferenceLatent, ImageStitch, FluxKontextImageScale
    "image_flux.1_fill_dev_OneReward",  # a subgraph, LoRA, ImageCompositeMasked
]


def _template_dir() -> Path:
    try:
        import comfyui_workflow_templates_media_image as pkg
    except ImportError:
        pytest.fail("comfyui_workflow_templates_media_image is missing: run `python scripts/workspace.py setup`",
                    pytrace=False)
    return Path(pkg.__file__).parent / "templates"


@pytest.mark.comfy
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", TEMPLATES)
def test_official_flux_template_runs(comfy, name):
    path = _template_dir() / f"{name}.json"
    ui = json.loads(path.read_text())
    api, outputs = comfy.run_ui_workflow(ui, timeout=240)
    images = ch.check_outputs(comfy, api, outputs)
    assert images and all(imgs for imgs in images.values())
    for imgs in images.values():
        for im in imgs:
            assert max(im.shape[:2]) <= 256  # the tiny substitutions kept it small


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_all_image_templates_convert(comfy):
    """Every official image template converts; every link points at an emitted node and every
    required input of every node is present (as a value or a link)."""
    info = comfy.object_info()
    files = sorted(_template_dir().glob("*.json"))
    assert len(files) > 10
    n_sub = 0
    for f in files:
        ui = json.loads(f.read_text())
        n_sub += bool((ui.get("definitions") or {}).get("subgraphs"))
        api = ch.ui_to_api(ui, info)
        assert api, f.name
        for nid, node in api.items():
            req = info[node["class_type"]]["input"].get("required", {})
            for k, v in node["inputs"].items():
                if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                    assert v[0] in api, f"{f.name}: node {nid} input {k} -> missing node {v[0]}"
            missing = [k for k in req if k not in node["inputs"]]
            assert not missing, f"{f.name}: node {nid} ({node['class_type']}) lacks {missing}"
    assert n_sub >= 1  # subgraph workflows are among them


@pytest.mark.comfy
def test_subgraph_flattening(comfy):
    ui = json.loads((_template_dir() / "flux_depth_lora_example.json").read_text())
    api = ch.ui_to_api(ui, comfy.object_info())
    # inner nodes of subgraph instance 41 get "41:<id>" ids; boundary links are resolved
    assert api["41:97"]["class_type"] == "VAEEncode" and api["41:97"]["inputs"]["pixels"] == ["17", 0]
    assert api["35"]["inputs"]["pixels"] == ["41:99", 0] and api["43"]["inputs"]["images"] == ["41:99", 0]
    # promoted widget values of the instance reach the inner nodes
    assert api["41:87"]["inputs"]["unet_name"] == "lotus-depth-d-v1-1.safetensors"
    assert api["41:101"]["inputs"]["sigma"] == 10000
    assert "41" not in api
