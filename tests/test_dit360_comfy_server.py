"""DiT360 ComfyUI-native path in the real ComfyUI server (tests/comfy_harness.py), tiny models:
KSampler / KSamplerAdvanced / SamplerCustomAdvanced with the patch, the unpatched model in the
same graph, the text-to-panorama workflow, and bad input that must not take the server down."""

from __future__ import annotations

import json
from pathlib import Path

import comfy_harness as ch
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

W, H = 128, 64  # px -> latent 16 x 8 -> 8 x 4 tokens


def _base(width=W, height=H):
    return {
        "1": {"class_type": "Pano360TestTinyFlux", "inputs": {"seed": 0, "variant": "dev", "depth": 1,
                                                             "depth_single_blocks": 1}},
        "2": {"class_type": "Pano360TestTinyCLIP", "inputs": {"seed": 0}},
        "3": {"class_type": "Pano360TestTinyVAE", "inputs": {"seed": 0}},
        "4": {"class_type": "Pano360PanoramaPrompt", "inputs": {"text": "a snowy village", "add_prefix": True,
                                                               "prefix": "This is a panorama."}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": ["4", 0]}},
        "6": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["5", 0], "guidance": 2.8}},
        "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "8": {"class_type": "Pano360EmptyPanoramaLatent", "inputs": {"size": "custom", "width": width,
                                                                    "height": height, "batch_size": 1}},
        "9": {"class_type": "Pano360DiT360Patch", "inputs": {"model": ["1", 0], "padding": 1, "id_mode": "wrapped",
                                                            "resync": "per step"}},
    }


def _decode_save(api, latent_ref, nid, prefix):
    api[f"{nid}d"] = {"class_type": "Pano360CircularVAEDecode",
                      "inputs": {"samples": latent_ref, "vae": ["3", 0], "wrap_columns": 2, "tiled": False,
                                 "tile_size": 512, "overlap": 64}}
    api[f"{nid}s"] = {"class_type": "SaveImage", "inputs": {"images": [f"{nid}d", 0], "filename_prefix": prefix}}
    return f"{nid}s"


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_ksampler_patched_and_unpatched_in_one_graph(comfy):
    api = _base()
    ks = {"seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
          "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["8", 0]}
    api["10"] = {"class_type": "KSampler", "inputs": {**ks, "model": ["9", 0]}}
    api["11"] = {"class_type": "KSampler", "inputs": {**ks, "model": ["1", 0]}}
    s1 = _decode_save(api, ["10", 0], "12", "dit360_patched")
    s2 = _decode_save(api, ["11", 0], "13", "dit360_plain")
    out = comfy.run(api, timeout=240)
    (a,) = comfy.images(out, s1)
    (b,) = comfy.images(out, s2)
    assert a.shape == b.shape == (H, W, 3)
    assert np.isfinite(a).all() and a.std() > 0
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0  # the patch changes the result


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_ksampler_advanced_and_custom_advanced(comfy):
    api = _base()
    api["9"]["inputs"].update({"padding": 2, "id_mode": "linear", "resync": "none"})
    api["10"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["9", 0], "add_noise": "enable", "noise_seed": 3, "steps": 3, "cfg": 2.0,
        "sampler_name": "dpmpp_2m", "scheduler": "karras", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["8", 0], "start_at_step": 0, "end_at_step": 2, "return_with_leftover_noise": "enable"}}
    # SamplerCustomAdvanced: BasicGuider + RandomNoise + KSamplerSelect + BasicScheduler
    api["20"] = {"class_type": "BasicGuider", "inputs": {"model": ["9", 0], "conditioning": ["6", 0]}}
    api["21"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 4}}
    api["22"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}}
    api["23"] = {"class_type": "BasicScheduler", "inputs": {"model": ["9", 0], "scheduler": "beta", "steps": 2,
                                                           "denoise": 1.0}}
    api["24"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["21", 0], "guider": ["20", 0], "sampler": ["22", 0], "sigmas": ["23", 0],
        "latent_image": ["8", 0]}}
    s1 = _decode_save(api, ["10", 0], "11", "dit360_ksa")
    s2 = _decode_save(api, ["24", 0], "25", "dit360_sca")
    s3 = _decode_save(api, ["24", 1], "26", "dit360_sca_x0")  # denoised output is cropped too
    out = comfy.run(api, timeout=240)
    for sid in (s1, s2, s3):
        (img,) = comfy.images(out, sid)
        assert img.shape == (H, W, 3) and np.isfinite(img).all()


@pytest.mark.comfy
@pytest.mark.timeout(400)
def test_text_to_panorama_workflow(comfy):
    import substitutions_dit360

    ui = json.loads((ROOT / "workflows" / "dit360_text_to_panorama.json").read_text())
    subs = {**ch.DEFAULT_SUBSTITUTIONS, **substitutions_dit360.SUBSTITUTIONS}
    api = ch.ui_to_api(ui, comfy.object_info(), subs, context={"server": comfy})
    types = {n["class_type"] for n in api.values()}
    assert {"LoraLoaderModelOnly", "Pano360DiT360Patch", "Pano360CircularVAEDecode", "KSampler",
            "Pano360RefinePoles", "SaveImage", "Pano360PanoramaPrompt"} <= types
    assert (comfy.models_dir / "loras" / "dit360_lora.safetensors").is_file()
    out = comfy.run(api, timeout=300)
    save = next(k for k, v in api.items() if v["class_type"] == "SaveImage")
    (img,) = comfy.images(out, save)
    assert img.shape == (64, 128, 3) and np.isfinite(img).all() and img.std() > 0


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_bad_width_is_a_clear_error_and_server_keeps_serving(comfy):
    api = _base()
    # EmptySD3LatentImage allows multiples of 16 only in the UI; 120 px -> 15 latent columns (odd)
    api["8"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 120, "height": 64, "batch_size": 1}}
    api["10"] = {"class_type": "KSampler", "inputs": {
        "model": ["9", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "denoise": 1.0, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["8", 0]}}
    _decode_save(api, ["10", 0], "11", "dit360_bad")
    with pytest.raises(ch.ComfyExecutionError) as ei:
        comfy.run(api, timeout=120)
    assert "multiples of 16" in (ei.value.exception_message or "")
    # a too wide padding is reported too
    api = _base()
    api["9"]["inputs"]["padding"] = 5  # 8 tokens wide -> at most 2
    api["10"] = {"class_type": "KSampler", "inputs": {
        "model": ["9", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "denoise": 1.0, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["8", 0]}}
    _decode_save(api, ["10", 0], "11", "dit360_bad2")
    with pytest.raises(ch.ComfyExecutionError) as ei:
        comfy.run(api, timeout=120)
    assert "quarter" in (ei.value.exception_message or "")
    # the server still serves a good prompt
    api["9"]["inputs"]["padding"] = 1
    out = comfy.run(api, timeout=120)
    (img,) = comfy.images(out, "11s")
    assert img.shape == (H, W, 3)
