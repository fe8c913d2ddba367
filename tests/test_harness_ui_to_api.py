"""ui_to_api: UI-format workflow -> API prompt conversion (checked against the real server's
object_info) and substitutions."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import comfy_harness as ch
import pytest

pytestmark = [pytest.mark.comfy, pytest.mark.timeout(300)]

SMOKE = Path(__file__).parent / "data" / "ui_smoke.json"


@pytest.fixture(scope="module")
def ui():
    return json.loads(SMOKE.read_text())


def test_plain_conversion(comfy, ui):
    api = ch.ui_to_api(ui, comfy.object_info())
    # virtual, bypassed and muted nodes are gone
    assert sorted(api, key=int) == ["1", "2", "3", "5", "6", "7", "8", "9", "10", "12", "16", "17", "18"]
    # bypassed LoRA (4) forwards its MODEL input; Reroute (11) is followed
    assert api["5"]["inputs"] == {"model": ["1", 0], "lora_name": "dit360_panorama_lora.safetensors",
                                  "strength_model": 1.0}
    ks = api["9"]["inputs"]
    assert ks["model"] == ["5", 0]
    # PrimitiveNode value inlined into the converted widget; control_after_generate skipped
    assert ks["seed"] == 42
    assert (ks["steps"], ks["cfg"], ks["sampler_name"], ks["scheduler"], ks["denoise"]) == (28, 1.0, "euler", "simple", 1.0)
    assert ks["positive"] == ["7", 0] and ks["negative"] == ["6", 0] and ks["latent_image"] == ["8", 0]
    assert api["2"]["inputs"] == {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors",
                                  "type": "flux", "device": "default"}
    # the image-upload button value after LoadImage's combo is skipped
    assert api["16"]["inputs"] == {"image": "snow_village_erp.png"}
    assert api["17"]["inputs"] == {"image": ["16", 0], "upscale_method": "bilinear", "scale_by": 0.5}
    assert api["12"]["inputs"] == {"images": ["10", 0], "filename_prefix": "pano360_ui_smoke"}
    assert api["8"]["inputs"] == {"width": 2048, "height": 1024, "batch_size": 1}


def test_link_objects_format(comfy, ui):
    """Schema-1 workflows store links as objects; same result."""
    ui2 = copy.deepcopy(ui)
    ui2["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), lk))
                    for lk in ui["links"]]
    assert ch.ui_to_api(ui2, comfy.object_info()) == ch.ui_to_api(ui, comfy.object_info())


def test_seed_widget_without_primitive(comfy, ui):
    ui2 = copy.deepcopy(ui)
    ui2["nodes"] = [n for n in ui2["nodes"] if n["id"] != 15]
    for n in ui2["nodes"]:
        if n["id"] == 9:
            n["inputs"][4]["link"] = None
    ui2["links"] = [lk for lk in ui2["links"] if lk[0] != 14]
    api = ch.ui_to_api(ui2, comfy.object_info())
    assert api["9"]["inputs"]["seed"] == 123456789
    assert api["9"]["inputs"]["steps"] == 28


def test_muted_source_drops_link(comfy, ui):
    ui2 = copy.deepcopy(ui)
    for n in ui2["nodes"]:
        if n["id"] == 17:
            n["mode"] = 2  # mute ImageScaleBy: PreviewImage 18 loses its input
    api = ch.ui_to_api(ui2, comfy.object_info())
    assert "17" not in api and "images" not in api["18"]["inputs"]


def test_unknown_node_type_is_reported(comfy, ui):
    ui2 = copy.deepcopy(ui)
    ui2["nodes"][0]["type"] = "NoSuchLoader"
    with pytest.raises(ch.WorkflowConversionError, match="NoSuchLoader"):
        ch.ui_to_api(ui2, comfy.object_info())


def test_default_substitutions(comfy, ui):
    api = ch.ui_to_api(ui, comfy.object_info(), ch.DEFAULT_SUBSTITUTIONS, context={"server": comfy})
    assert api["1"]["class_type"] == "Pano360TestTinyFlux" and api["1"]["inputs"]["variant"] == "dev"
    assert api["2"] == {"class_type": "Pano360TestTinyCLIP", "inputs": {"seed": 0},
                        "_meta": api["2"]["_meta"]}
    assert api["3"]["class_type"] == "Pano360TestTinyVAE"
    assert api["9"]["inputs"]["steps"] == 2
    assert (api["8"]["inputs"]["width"], api["8"]["inputs"]["height"]) == (128, 64)
    # wiring kept
    assert api["6"]["inputs"]["clip"] == ["2", 0] and api["10"]["inputs"]["vae"] == ["3", 0]
    # files placed for the server: tiny LoRA under the requested name, down-scaled input image
    assert (comfy.models_dir / "loras" / "dit360_panorama_lora.safetensors").is_file()
    assert (comfy.input_dir / api["16"]["inputs"]["image"]).is_file()


def test_checked_lora_loader_gets_a_tiny_lora(comfy, ui):
    """Pano360DiT360LoraLoader in a workflow: the harness writes the tiny LoRA under its name."""
    ui2 = copy.deepcopy(ui)
    for n in ui2["nodes"]:
        if n["id"] == 5:
            n["type"] = "Pano360DiT360LoraLoader"
            n["outputs"] = n["outputs"] + [{"name": "summary", "type": "STRING", "links": None}]
            n["widgets_values"] = ["pano360_checked_ui.safetensors", 0.5, "error"]
    api = ch.ui_to_api(ui2, comfy.object_info(), ch.DEFAULT_SUBSTITUTIONS, context={"server": comfy})
    assert api["5"]["class_type"] == "Pano360DiT360LoraLoader"
    assert api["5"]["inputs"] == {"model": ["1", 0], "lora_name": "pano360_checked_ui.safetensors",
                                  "strength_model": 0.5, "on_mismatch": "error"}
    assert (comfy.models_dir / "loras" / "pano360_checked_ui.safetensors").is_file()


def test_substitution_output_remap(comfy, ui):
    """A CheckpointLoaderSimple substituted by the tiny checkpoint keeps MODEL/CLIP/VAE wiring."""
    ui2 = copy.deepcopy(ui)
    ck = {"id": 30, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [],
          "outputs": [{"name": "MODEL", "type": "MODEL", "links": [31]}, {"name": "CLIP", "type": "CLIP", "links": [32]},
                      {"name": "VAE", "type": "VAE", "links": [33]}],
          "widgets_values": ["flux1-fill-dev.safetensors"]}
    ui2["nodes"].append(ck)
    for n in ui2["nodes"]:
        if n["id"] == 4:
            n["inputs"][0]["link"] = 31
        if n["id"] == 6:
            n["inputs"][0]["link"] = 32
        if n["id"] == 10:
            n["inputs"][1]["link"] = 33
    ui2["links"] = [lk for lk in ui2["links"] if lk[0] not in (1, 2, 10)] + [
        [31, 30, 0, 4, 0, "MODEL"], [32, 30, 1, 6, 0, "CLIP"], [33, 30, 2, 10, 1, "VAE"]]
    ui2["nodes"] = [n for n in ui2["nodes"] if n["id"] not in (1, 2, 3)]
    subs = {"CheckpointLoaderSimple": lambda node, ui_node, ctx: {
        "class_type": "Pano360TestTinyCheckpoint", "inputs": {"variant": "fill"}, "outputs": {0: 0, 1: 1, 2: 2}}}
    api = ch.ui_to_api(ui2, comfy.object_info(), subs)
    assert api["30"]["class_type"] == "Pano360TestTinyCheckpoint"
    assert api["30"]["inputs"] == {"seed": 0, "variant": "fill"}
    assert api["5"]["inputs"]["model"] == ["30", 0]
    assert api["6"]["inputs"]["clip"] == ["30", 1]
    assert api["10"]["inputs"]["vae"] == ["30", 2]


def _single_node_workflow(node_type: str, widgets_values: list) -> dict:
    return {"last_node_id": 1, "last_link_id": 0, "links": [], "version": 0.4,
            "nodes": [{"id": 1, "type": node_type, "mode": 0, "inputs": [], "outputs": [],
                       "properties": {"Node name for S&R": node_type}, "widgets_values": widgets_values}]}


def test_upload_button_value_is_last_like_the_frontend(comfy):
    """The frontend adds the upload button as an extra required input after all others
    (Comfy.UploadImage; not in input_order), so LoadImageMask saves [image, channel, "image"]."""
    info = comfy.object_info()
    api = ch.ui_to_api(_single_node_workflow("LoadImageMask", ["m.png", "green", "image"]), info)
    assert api["1"]["inputs"] == {"image": "m.png", "channel": "green"}
    api = ch.ui_to_api(_single_node_workflow("LoadImage", ["p.png", "image"]), info)
    assert api["1"]["inputs"] == {"image": "p.png"}
    # workflows saved without the button value still map in order
    api = ch.ui_to_api(_single_node_workflow("LoadImageMask", ["m.png", "blue"]), info)
    assert api["1"]["inputs"] == {"image": "m.png", "channel": "blue"}
    assert ch._widget_names(info["LoadImageMask"]) == [("image", None), ("channel", None), ("image", "upload")]
