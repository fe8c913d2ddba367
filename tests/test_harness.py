"""Tests of the real-ComfyUI test harness (tests/comfy_harness.py) and the test node pack."""

from __future__ import annotations

import comfy_harness as ch
import numpy as np
import pytest
from comfy_harness import ComfyExecutionError, ComfyValidationError

pytestmark = pytest.mark.timeout(600)


def tiny_flux_prompt(prefix: str = "harness", seed: int = 1, width: int = 64, height: int = 32,
                     text: str = "a panorama") -> dict:
    """TinyFlux + TinyCLIP + EmptySD3LatentImage + KSampler + VAEDecode + SaveImage."""
    return {
        "1": {"class_type": "Pano360TestTinyFlux",
              "inputs": {"seed": 0, "variant": "dev", "depth": 1, "depth_single_blocks": 1}},
        "2": {"class_type": "Pano360TestTinyCLIP", "inputs": {"seed": 0}},
        "3": {"class_type": "Pano360TestTinyVAE", "inputs": {"seed": 0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 0]}},
        "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 3.5}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "7": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "positive": ["5", 0], "negative": ["4", 0], "latent_image": ["6", 0],
                         "seed": seed, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                         "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


# --------------------------------------------------------------------------- no server needed


SAMPLE_LOG_OK = """\
Import times for custom nodes:
   0.0 seconds: /tmp/x/custom_nodes/websocket_image_save.py
   0.1 seconds: /tmp/x/custom_nodes/pano360_test_nodes
   0.3 seconds: /tmp/x/custom_nodes/comfyui-pano360

Starting server
"""

SAMPLE_LOG_FAILED = """\
Traceback (most recent call last):
  File "/c/nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
ModuleNotFoundError: No module named 'not_a_module'

Cannot import /tmp/x/custom_nodes/comfyui-pano360 module for custom nodes: No module named 'not_a_module'

Import times for custom nodes:
   0.1 seconds: /tmp/x/custom_nodes/pano360_test_nodes
   0.3 seconds (IMPORT FAILED): /tmp/x/custom_nodes/comfyui-pano360

Starting server
"""


def test_import_status_parsing():
    assert ch.custom_node_import_status(SAMPLE_LOG_OK) == {
        "websocket_image_save.py": True, "pano360_test_nodes": True, "comfyui-pano360": True}
    st = ch.custom_node_import_status(SAMPLE_LOG_FAILED)
    assert st == {"pano360_test_nodes": True, "comfyui-pano360": False}


def test_import_failure_detection():
    packs = ["comfyui-pano360", "pano360_test_nodes"]
    assert ch.find_import_failures(SAMPLE_LOG_OK, packs) == {}
    f = ch.find_import_failures(SAMPLE_LOG_FAILED, packs)
    assert list(f) == ["comfyui-pano360"]
    assert "No module named 'not_a_module'" in f["comfyui-pano360"]
    # a pack missing from the summary was not loaded at all
    f2 = ch.find_import_failures(SAMPLE_LOG_OK, ["some_other_pack"])
    assert "not loaded" in f2["some_other_pack"]


def test_missing_comfyui_message(tmp_path):
    with pytest.raises(ch.ComfyHarnessError, match="scripts/workspace.py setup"):
        ch.check_comfyui(tmp_path)


# --------------------------------------------------------------------------- real server


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_broken_pack_fails_startup(tmp_path):
    """End to end: a pack that raises on import makes ComfyServer.start() fail with its error,
    and the server process is gone afterwards."""
    broken = tmp_path / "pack"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('deliberately broken pack for the harness test')\n")
    server = ch.ComfyServer(base_dir=tmp_path / "base",
                            packs={"broken_pack": broken, ch.TEST_PACK_LINK_NAME: ch.TEST_NODES_DIR})
    try:
        with pytest.raises(ch.ComfyHarnessError) as ei:
            server.start()
        msg = str(ei.value)
        assert "broken_pack" in msg and "deliberately broken pack" in msg
        assert ch.TEST_PACK_LINK_NAME + "]" not in msg  # the good pack is not blamed
        assert server.proc is None
    finally:
        server.stop()


@pytest.mark.comfy
def test_server_has_packs_loaded(comfy):
    info = comfy.object_info()
    for node in ("Pano360TestTinyFlux", "Pano360TestTinyCLIP", "Pano360TestTinyVAE", "Pano360TestRaise"):
        assert node in info
    pano = [k for k in info if k.startswith("Pano360") and not k.startswith("Pano360Test")]
    assert pano, "no node of the Pano360 pack is registered"
    assert ch.custom_node_import_status(comfy.log_text()).get(ch.PACK_LINK_NAME) is True
    assert comfy.object_info("Pano360TestTinyFlux")["output"] == ["MODEL"]
    with pytest.raises(KeyError):
        comfy.object_info("Pano360NoSuchNode")
    # own folders, not the workspace's
    assert str(comfy.output_dir).startswith(str(comfy.base_dir))


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_tiny_flux_ksampler_smoke(comfy):
    outputs = comfy.run(tiny_flux_prompt("smoke"), timeout=240)
    imgs = comfy.images(outputs, "9")
    assert len(imgs) == 1
    im = imgs[0]
    assert im.shape == (32, 64, 3) and im.dtype == np.uint8
    assert im.std() > 1.0, "decoded image is flat"
    assert (comfy.output_dir / outputs["9"]["images"][0]["filename"]).is_file()


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_validation_error_then_server_still_serves(comfy):
    bad = tiny_flux_prompt("bad")
    bad["7"]["inputs"]["sampler_name"] = "no_such_sampler"
    del bad["8"]["inputs"]["vae"]
    with pytest.raises(ComfyValidationError) as ei:
        comfy.queue(bad)
    err = ei.value
    assert err.status_code == 400
    assert set(err.node_errors) >= {"7", "8"}
    assert "sampler_name" in str(err) and "no_such_sampler" in str(err)
    # the next valid prompt still runs
    outputs = comfy.run(tiny_flux_prompt("after_validation_error", seed=2), timeout=240)
    assert comfy.images(outputs, "9")[0].shape == (32, 64, 3)


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_execution_error_then_server_still_serves(comfy):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "Pano360TestRaise", "inputs": {"message": "boom: deliberate test failure",
                                                             "image": ["1", 0]}},
    }
    with pytest.raises(ComfyExecutionError) as ei:
        comfy.run(prompt, timeout=120)
    err = ei.value
    assert err.node_id == "2"
    assert err.node_type == "Pano360TestRaise"
    assert err.exception_type.endswith("RuntimeError")
    assert err.exception_message.strip() == "boom: deliberate test failure"
    assert "boom: deliberate test failure" in str(err)
    outputs = comfy.run(tiny_flux_prompt("after_execution_error", seed=3), timeout=240)
    assert comfy.images(outputs, "9")[0].shape == (32, 64, 3)


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_pack_node_bad_input_then_server_still_serves(comfy):
    """A Pano360 node given a non-2:1 panorama size fails with a clear PanoInputError."""
    prompt = tiny_flux_prompt("after_pack_error", seed=4)
    prompt["6"] = {"class_type": "Pano360EmptyPanoramaLatent",
                   "inputs": {"size": "custom", "width": 96, "height": 64, "batch_size": 1}}
    with pytest.raises(ComfyExecutionError) as ei:
        comfy.run(prompt, timeout=240)
    err = ei.value
    assert err.node_id == "6" and err.node_type == "Pano360EmptyPanoramaLatent"
    assert err.exception_type.endswith("PanoInputError")
    assert "2:1" in err.exception_message and "96x64" in err.exception_message
    prompt["6"]["inputs"].update(width=64, height=32)
    outputs = comfy.run(prompt, timeout=240)
    assert comfy.images(outputs, "9")[0].shape == (32, 64, 3)


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_tiny_flux_fill_and_kontext_in_server(comfy):
    """The fill variant runs through InpaintModelConditioning (96 input channels) and the dev
    variant accepts Kontext-style reference latents (ReferenceLatent)."""
    name = comfy.add_input_file(ch.ASSETS_DIR / "snow_village_erp.png")
    p = tiny_flux_prompt("fill", seed=5)
    p["1"]["inputs"]["variant"] = "fill"
    p.update({
        "20": {"class_type": "LoadImage", "inputs": {"image": name}},
        "21": {"class_type": "ImageScale", "inputs": {"image": ["20", 0], "upscale_method": "bilinear",
                                                      "width": 64, "height": 32, "crop": "disabled"}},
        "22": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 32}},
        "23": {"class_type": "InpaintModelConditioning",
               "inputs": {"positive": ["5", 0], "negative": ["4", 0], "vae": ["3", 0], "pixels": ["21", 0],
                          "mask": ["22", 0], "noise_mask": True}},
    })
    p["7"]["inputs"].update(positive=["23", 0], negative=["23", 1], latent_image=["23", 2])
    out = comfy.run(p, timeout=240)
    assert comfy.images(out, "9")[0].shape == (32, 64, 3)

    k = tiny_flux_prompt("kontext", seed=6)
    k.update({
        "20": {"class_type": "LoadImage", "inputs": {"image": name}},
        "21": {"class_type": "ImageScale", "inputs": {"image": ["20", 0], "upscale_method": "bilinear",
                                                      "width": 32, "height": 32, "crop": "center"}},
        "24": {"class_type": "VAEEncode", "inputs": {"pixels": ["21", 0], "vae": ["3", 0]}},
        "25": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["5", 0], "latent": ["24", 0]}},
    })
    k["7"]["inputs"]["positive"] = ["25", 0]
    out = comfy.run(k, timeout=240)
    assert comfy.images(out, "9")[0].shape == (32, 64, 3)


# --------------------------------------------------------------------------- ui_to_api without a server

FAKE_INFO = {
    "FakePanoLatent": {
        "input": {"required": {
            "size": [["1024x512", "2048x1024 (DiT360)", "custom"], {"default": "2048x1024 (DiT360)"}],
            "width": ["INT", {"default": 2048}], "height": ["INT", {"default": 1024}],
            "seed": ["INT", {"default": 0, "control_after_generate": True}],
            "steps": ["INT", {"default": 28}],
            "latent": ["LATENT", {}],
        }},
        "input_order": {"required": ["size", "width", "height", "seed", "steps", "latent"]},
        "output": ["LATENT"], "output_node": False,
    },
    "FakeSink": {"input": {"required": {"x": ["LATENT", {}], "note": ["STRING", {"forceInput": True}]},
                           "optional": {"mode": [["a", "b"], {}]}},
                 "input_order": {"required": ["x", "note"], "optional": ["mode"]},
                 "output": [], "output_node": True},
}


def _fake_ui():
    return {
        "nodes": [
            {"id": 1, "type": "FakePanoLatent", "mode": 0, "inputs": [{"name": "latent", "type": "LATENT", "link": None}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [1]}],
             "widgets_values": ["2048x1024 (DiT360)", 4096, 2048, 7, "increment", 28]},
            {"id": 2, "type": "FakeSink", "mode": 0,
             "inputs": [{"name": "x", "type": "LATENT", "link": 1}, {"name": "note", "type": "STRING", "link": None}],
             "outputs": [], "widgets_values": ["b"]},
        ],
        "links": [[1, 1, 0, 2, 0, "LATENT"]],
    }


def test_ui_to_api_widgets_and_force_input():
    api = ch.ui_to_api(_fake_ui(), FAKE_INFO)
    assert api["1"]["inputs"] == {"size": "2048x1024 (DiT360)", "width": 4096, "height": 2048, "seed": 7, "steps": 28}
    # forceInput STRING is not a widget: the only widget value goes to the optional combo
    assert api["2"]["inputs"] == {"x": ["1", 0], "mode": "b"}
    assert api["2"]["class_type"] == "FakeSink" and api["1"]["_meta"]["title"] == "FakePanoLatent"


def test_generic_tiny_substitution():
    api = ch.ui_to_api(_fake_ui(), FAKE_INFO, {"*": ch.sub_tiny_generic})
    inp = api["1"]["inputs"]
    # preset switched to custom with its size, scaled to at most 128 px; steps clamped
    assert (inp["size"], inp["width"], inp["height"], inp["steps"]) == ("custom", 128, 64, 2)
    api = ch.ui_to_api(_fake_ui(), FAKE_INFO, {"*": ch.sub_tiny_generic}, context={"max_side": 256, "max_steps": 5})
    assert (api["1"]["inputs"]["width"], api["1"]["inputs"]["height"], api["1"]["inputs"]["steps"]) == (256, 128, 5)


def test_api_format_passes_through():
    api = {"1": {"class_type": "FakeSink", "inputs": {}}}
    assert ch.ui_to_api(api, FAKE_INFO) == api
