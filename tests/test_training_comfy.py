"""A LoRA trained by pano360-train loads in ComfyUI (LoraLoaderModelOnly's path and our checked
Pano360DiT360LoraLoader, in-process and in the real server) with every module matched, and gives
the same model output there as in DiT360Pipeline (the ComfyUI and diffusers tiny Flux share one
architecture; the base weights are carried over with ComfyUI's own diffusers->Flux key map)."""

from __future__ import annotations

import importlib
import shutil

import comfy_harness
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import _train

pytestmark = pytest.mark.timeout(600)
PACK_NAME = "pano360_pack_training_under_test"


@pytest.fixture(scope="module")
def trained(tiny_flux, prepared, tmp_path_factory):
    """A short real training run with alpha != rank (alpha/rank = 2 folded into lora_B)."""
    run = _train(tiny_flux, prepared, tmp_path_factory.mktemp("comfy_lora") / "run", steps=3,
                 extra=["lora.alpha=8", "optimizer.lr=5e-2", "sample.prompts=[]"])
    return run / "adapter_model.safetensors"


@pytest.fixture(scope="module")
def node_mod(comfy_inprocess):
    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.dit360_lora")


def _inputs():
    g = torch.Generator().manual_seed(3)
    h, w = 4, 8  # latent 4x8 -> 2x4 tokens
    return dict(
        latent=torch.randn(1, 16, h, w, generator=g),
        sigma=torch.tensor([0.6]),
        guidance=torch.tensor([2.5]),
        context=torch.randn(1, 6, 32, generator=g),
        pooled=torch.randn(1, 32, generator=g),
    )


def _diffusers_out(pipe, x):
    grid = pipe.grid(64, 32, pad=0)
    with torch.no_grad():
        out = pipe.transformer(
            hidden_states=pipe.pack(x["latent"]), timestep=x["sigma"], guidance=x["guidance"],
            pooled_projections=x["pooled"], encoder_hidden_states=x["context"], txt_ids=torch.zeros(6, 3),
            img_ids=pipe.image_ids(grid, dtype=torch.float32), return_dict=False,
        )[0]
    return pipe.unpack(out, grid)


def _comfy_out(patcher, x):
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.diffusion_model(x["latent"], x["sigma"], x["context"], y=x["pooled"],
                                             guidance=x["guidance"])


def test_trained_lora_gives_the_same_output_in_comfyui_and_dit360pipeline(trained, tiny_flux, tiny_models, node_mod,
                                                                          tmp_path, monkeypatch):
    import comfy.model_detection
    import comfy.sd
    import comfy.utils
    import folder_paths

    from pano_core.dit360.pipeline import DiT360Pipeline

    sd = load_file(trained)
    assert all(k.startswith("transformer.") for k in sd) and not any(k.endswith(".alpha") for k in sd)
    # diffusers: the published-format file through DiT360Pipeline's checked loader
    pipe = DiT360Pipeline.from_pretrained(str(tiny_flux), device="cpu", dtype="fp32")
    base_sd = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    x = _inputs()
    ref_base = _diffusers_out(pipe, x)
    pipe.load_lora(str(trained))
    ref = _diffusers_out(pipe, x)
    assert not torch.allclose(ref, ref_base, atol=1e-5)  # the trained LoRA changes the output

    # ComfyUI: the same base weights in a ComfyUI Flux of the shared architecture
    model = tiny_models.build_tiny_flux(0, "dev")
    comfy_sd = comfy.model_detection.convert_diffusers_mmdit(dict(base_sd), "")
    missing, unexpected = model.model.diffusion_model.load_state_dict(comfy_sd, strict=True)
    assert not missing and not unexpected
    torch.testing.assert_close(_comfy_out(model, x), ref_base, rtol=1e-4, atol=1e-5)

    # LoraLoaderModelOnly's path (comfy.sd.load_lora_for_models) and our checked loader
    stock = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(trained), safe_load=True), 1.0, 0)[0]
    torch.testing.assert_close(_comfy_out(stock, x), ref, rtol=1e-4, atol=1e-5)
    loras = tmp_path / "loras"
    loras.mkdir()
    shutil.copy(trained, loras / "trained_dit360.safetensors")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras",
                        ([str(loras)], set(folder_paths.supported_pt_extensions)))
    ours, summary = node_mod.Pano360DiT360LoraLoader().load(model, "trained_dit360.safetensors", 1.0, on_mismatch="error")
    n = len({k.rsplit(".lora_", 1)[0] for k in sd})
    assert summary == f"{n} of {n} LoRA modules ({len(sd)} of {len(sd)} keys) in trained_dit360.safetensors match this model"
    torch.testing.assert_close(_comfy_out(ours, x), ref, rtol=1e-4, atol=1e-5)


def _graph(loader: dict, prefix: str) -> dict:
    return {
        "1": {"class_type": "Pano360TestTinyFlux", "inputs": {"seed": 0, "variant": "dev", "depth": 1,
                                                             "depth_single_blocks": 1}},
        "2": {"class_type": "Pano360TestTinyCLIP", "inputs": {"seed": 0}},
        "3": {"class_type": "Pano360TestTinyVAE", "inputs": {"seed": 0}},
        "4": loader,
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "This is a panorama. a village"}},
        "6": {"class_type": "Pano360EmptyPanoramaLatent", "inputs": {"size": "custom", "width": 128, "height": 64,
                                                                    "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 0, "steps": 2, "cfg": 1.0,
                                                  "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
                                                  "positive": ["5", 0], "negative": ["5", 0],
                                                  "latent_image": ["6", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


@pytest.mark.comfy
def test_trained_lora_loads_in_the_server_with_every_module_matched(comfy, trained):
    name = "pano360_trained_dit360.safetensors"
    shutil.copy(trained, comfy.models_dir / "loras" / name)
    ours = comfy.run(_graph({"class_type": "Pano360DiT360LoraLoader", "inputs": {
        "model": ["1", 0], "lora_name": name, "strength_model": 1.0, "on_mismatch": "error"}}, "pano360_trained_ours"))
    stock = comfy.run(_graph({"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["1", 0], "lora_name": name, "strength_model": 1.0}}, "pano360_trained_stock"))
    (a,), (b,) = comfy.images(ours, "9"), comfy.images(stock, "9")
    assert a.shape == (64, 128, 3)
    assert (a == b).all()  # the same patches as ComfyUI's own loader
    sd = load_file(trained)
    n = len({k.rsplit(".lora_", 1)[0] for k in sd})
    log = comfy.log_text()
    assert f"{n} of {n} LoRA modules ({len(sd)} of {len(sd)} keys) in {name} match this model" in log
