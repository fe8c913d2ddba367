"""In-process checks of the tiny test models (tests/comfy_test_nodes/tiny_models.py)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.timeout(300)


def _flux_forward(patcher, x, seed=0, ref_latents=None):
    """One diffusion-model call through ComfyUI's Flux (apply_model with a Flux cond)."""
    import tiny_models

    model = patcher.model
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(x.shape[0], 8, tiny_models.CONTEXT_DIM, generator=g)
    y = torch.randn(x.shape[0], tiny_models.VEC_DIM, generator=g)
    t = torch.full((x.shape[0],), 0.5)
    kwargs = {}
    if ref_latents is not None:
        kwargs["ref_latents"] = ref_latents
    with torch.no_grad():
        return model.diffusion_model(x, t, ctx, y=y, guidance=torch.full((x.shape[0],), 3.5), **kwargs)


def test_tiny_flux_is_a_comfy_flux(tiny_models):
    import comfy.model_base
    import comfy.model_patcher

    m = tiny_models.build_tiny_flux(seed=3)
    assert isinstance(m, comfy.model_patcher.ModelPatcher)
    assert isinstance(m.model, comfy.model_base.Flux)
    assert m.model.model_config.unet_config["hidden_size"] == tiny_models.HIDDEN_SIZE
    x = torch.randn(1, 16, 8, 16, generator=torch.Generator().manual_seed(0))
    out = _flux_forward(m, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert 0.01 < out.std().item() < 100
    # deterministic per seed, different across seeds
    assert torch.equal(out, _flux_forward(tiny_models.build_tiny_flux(seed=3), x))
    assert not torch.allclose(out, _flux_forward(tiny_models.build_tiny_flux(seed=4), x))


def test_tiny_flux_variants(tiny_models):
    fill = tiny_models.build_tiny_flux(seed=0, variant="fill")
    assert type(fill.model.model_config).__name__ == "FluxInpaint"
    x = torch.randn(1, 96, 8, 16)
    out = _flux_forward(fill, x)
    assert out.shape == (1, 16, 8, 16) and torch.isfinite(out).all()
    control = tiny_models.build_tiny_flux(seed=0, variant="control")
    assert control.model.model_config.unet_config["in_channels"] == 32
    assert _flux_forward(control, torch.randn(1, 32, 8, 16)).shape == (1, 16, 8, 16)
    schnell = tiny_models.build_tiny_flux(seed=0, variant="schnell")
    assert schnell.model.model_config.unet_config["guidance_embed"] is False
    with pytest.raises(ValueError):
        tiny_models.tiny_flux_unet_config("nope")


def test_tiny_flux_kontext_ref_latents(tiny_models):
    m = tiny_models.build_tiny_flux(seed=0)
    x = torch.randn(1, 16, 8, 16, generator=torch.Generator().manual_seed(1))
    ref = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    a = _flux_forward(m, x)
    b = _flux_forward(m, x, ref_latents=[ref])
    assert b.shape == x.shape and torch.isfinite(b).all()
    assert not torch.allclose(a, b)  # reference tokens take part in attention


def test_tiny_clip(tiny_models):
    import comfy.sd

    clip = tiny_models.build_tiny_clip(seed=0)
    assert isinstance(clip, comfy.sd.CLIP)
    tokens = clip.tokenize("This is a panorama. A beach.")
    assert set(tokens) == {"l", "t5xxl"}
    (cond, extra), = clip.encode_from_tokens_scheduled(tokens)
    assert cond.shape[0] == 1 and cond.shape[2] == tiny_models.CONTEXT_DIM
    assert extra["pooled_output"].shape == (1, tiny_models.VEC_DIM)
    cond2, pooled2 = tiny_models.build_tiny_clip(seed=0).encode_from_tokens(tokens, return_pooled=True)
    assert torch.equal(cond, cond2) and torch.equal(extra["pooled_output"], pooled2)
    cond3 = clip.encode_from_tokens(clip.tokenize("A forest."))
    assert not torch.allclose(cond, cond3)


def test_tiny_vae(tiny_models):
    import comfy.sd

    vae = tiny_models.build_tiny_vae(seed=0)
    assert isinstance(vae, comfy.sd.VAE)
    lat = torch.randn(1, 16, 4, 8, generator=torch.Generator().manual_seed(0))
    img = vae.decode(lat)
    assert img.shape == (1, 32, 64, 3) and torch.isfinite(img).all()
    assert 0.05 < img.mean().item() < 0.95 and img.std().item() > 0.005
    enc = vae.encode(img)
    assert enc.shape == (1, 16, 4, 8) and torch.isfinite(enc).all()


def test_tiny_lora_maps_onto_tiny_flux(tiny_models, tmp_path):
    import comfy.lora
    import comfy.sd
    import comfy.utils

    path = tiny_models.save_tiny_dit360_lora(tmp_path / "l.safetensors", seed=0, rank=4)
    sd = comfy.utils.load_torch_file(path)
    assert all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in sd)
    m = tiny_models.build_tiny_flux(seed=0)
    key_map = comfy.lora.model_lora_keys_unet(m.model, {})
    patches = comfy.lora.load_lora(sd, key_map, log_missing=True)
    n_modules = len(sd) // 2
    assert len(patches) == n_modules  # every A/B pair found its Flux weight
    m2, _ = comfy.sd.load_lora_for_models(m, None, sd, 1.0, 0)
    x = torch.randn(1, 16, 8, 16, generator=torch.Generator().manual_seed(0))
    base = _flux_forward(m, x)
    m2.patch_model()
    try:
        lora_out = _flux_forward(m2, x)
    finally:
        m2.unpatch_model()
    assert not torch.allclose(base, lora_out)
