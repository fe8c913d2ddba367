"""DiT360 ComfyUI-native path in-process: the Flux MODEL patch and the panorama nodes
(real ComfyUI sampling code, tiny random Flux / CLIP / VAE from tests/comfy_test_nodes)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import comfy_harness
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "pano360_pack_dit360_under_test"
LAT_H, LAT_W = 8, 32  # 64 x 256 px -> 4 x 16 tokens


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.dit360")


@pytest.fixture(scope="module")
def P(pack):
    return importlib.import_module(f"{PACK_NAME}.nodes._dit360_patch")


@pytest.fixture(scope="module")
def errors(pack):
    return importlib.import_module(f"{PACK_NAME}.pano_core.errors")


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models.build_tiny_flux(0, "dev")


@pytest.fixture(scope="module")
def clip(tiny_models):
    return tiny_models.build_tiny_clip(0)


@pytest.fixture(scope="module")
def cond(clip):
    return clip.encode_from_tokens_scheduled(clip.tokenize("This is a panorama. a snowy village"))


@pytest.fixture(scope="module")
def neg(clip):
    return clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))


def _noise(b=1, h=LAT_H, w=LAT_W, seed=0):
    return torch.randn(b, 16, h, w, generator=torch.Generator().manual_seed(seed))


def _sample(model, cond, neg=None, noise=None, steps=3, cfg=1.0, sampler="euler", scheduler="simple",
            latent=None, noise_mask=None, denoise=1.0, seed=0):
    import comfy.sample

    noise = _noise() if noise is None else noise
    latent = torch.zeros_like(noise) if latent is None else latent
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, cond, neg if neg is not None else cond,
                               latent, denoise=denoise, noise_mask=noise_mask, seed=seed, disable_pbar=True)


def _patch(pack, model, padding=1, id_mode="wrapped", resync="none"):
    return pack.Pano360DiT360Patch().patch(model, padding, id_mode, resync)[0]


class _IdsSpy:
    """A user post_input patch: records what the model sees after our ids patch."""

    def __init__(self):
        self.calls = []

    def __call__(self, args):
        self.calls.append({k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()})
        return args


# --------------------------------------------------------------------------- exactness / shape


def test_padding_zero_reproduces_unpatched_exactly(pack, model, cond, neg):
    ref = _sample(model, cond, neg, cfg=2.0, sampler="dpmpp_2m", scheduler="karras")
    for id_mode in ("wrapped", "linear"):
        for resync in ("none", "per step"):
            out = _sample(_patch(pack, model, 0, id_mode, resync), cond, neg, cfg=2.0, sampler="dpmpp_2m",
                          scheduler="karras")
            assert torch.equal(out, ref), (id_mode, resync)


@pytest.mark.parametrize("sampler,scheduler", [("euler", "simple"), ("euler_ancestral", "normal"),
                                               ("dpmpp_2m", "karras"), ("uni_pc", "beta"),
                                               ("heun", "sgm_uniform")])
def test_padded_sampling_keeps_shape_and_changes_output(pack, model, cond, sampler, scheduler):
    ref = _sample(model, cond, sampler=sampler, scheduler=scheduler, steps=2)
    out = _sample(_patch(pack, model, 2), cond, sampler=sampler, scheduler=scheduler, steps=2)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert not torch.equal(out, ref)


def test_batch_and_cfg(pack, model, cond, neg):
    m = _patch(pack, model, 1, "wrapped", "per step")
    noise = _noise(b=2)
    out = _sample(m, cond, neg, noise=noise, cfg=3.5)
    assert out.shape == (2, 16, LAT_H, LAT_W)
    # each batch item equals the same item sampled alone (no cross-talk through padding)
    single = _sample(m, cond, neg, noise=noise[1:2], cfg=3.5)
    assert torch.allclose(out[1:2], single, atol=1e-4)
    # CFG matters
    out1 = _sample(m, cond, neg, noise=noise, cfg=1.0)
    assert not torch.allclose(out, out1)


def test_seed_repeatability(pack, model, cond):
    m = _patch(pack, model, 2, "linear", "per step")
    a = _sample(m, cond, noise=_noise(seed=3), sampler="euler_ancestral", seed=7)
    b = _sample(m, cond, noise=_noise(seed=3), sampler="euler_ancestral", seed=7)
    c = _sample(m, cond, noise=_noise(seed=4), sampler="euler_ancestral", seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("id_mode", ["wrapped", "linear"])
def test_position_ids_token_by_token(pack, model, cond, id_mode):
    p = 3
    spy = _IdsSpy()
    m = _patch(pack, model, p, id_mode)
    m2 = m.clone()  # the patch survives clone
    m2.set_model_post_input_patch(spy)
    _sample(m2, cond, steps=1)
    assert spy.calls, "post_input patches never ran"
    h, w = LAT_H // 2, LAT_W // 2
    wp = w + 2 * p
    ids = spy.calls[0]["img_ids"][0]
    assert ids.shape[0] == h * wp
    assert spy.calls[0]["img"].shape[1] == h * wp
    for r in range(h):
        for c in range(wp):
            t = ids[r * wp + c]
            assert t[0] == 0 and t[1] == r, (r, c, t)
            expected = (c - p) % w if id_mode == "wrapped" else c - p
            assert t[2] == expected, (r, c, t)


def _padded_column_gap(calls, h, w, p):
    """Largest |padded token - its source token| over every recorded model call (tokens after the
    image embedding, which is per token: equal latent patches give equal embedded tokens)."""
    gap = 0.0
    for c in calls:
        img = c["img"][:, : h * (w + 2 * p)]
        g = img.reshape(img.shape[0], h, w + 2 * p, img.shape[-1])
        left = (g[:, :, :p] - g[:, :, w : w + p]).abs().max().item()  # left pad <- last p interior columns
        right = (g[:, :, w + p :] - g[:, :, p : 2 * p]).abs().max().item()  # right pad <- first p columns
        gap = max(gap, left, right)
    return gap


# one sampler per family of ComfyUI's k-diffusion samplers: first order, CFG++, second order,
# ancestral, SDE (single/multistep), multistep ODE, DDPM/LCM/DDIM, predictor-corrector, SEEDS, SA
SAMPLER_FAMILIES = ("euler", "euler_cfg_pp", "euler_ancestral", "heun", "dpm_2_ancestral", "lms",
                    "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm",
                    "lcm", "ipndm", "deis", "res_multistep_ancestral", "gradient_estimation", "er_sde",
                    "seeds_2", "sa_solver", "ddim", "uni_pc")


def test_padded_columns_equal_their_source_at_every_model_call_for_every_sampler(pack, model, cond):
    """Default ``resync = per step``: with a sampler of every family (deterministic, ancestral,
    SDE, multistep, CFG++ ...) each padded token column equals the column it was copied from at
    every model call, so two tokens never share a position (wrapped ids) with different content.
    With ``resync = none`` (DiT360's free-running columns) samplers that add noise break this,
    deterministic ones do not."""
    import comfy.samplers

    p = 1
    h, w = LAT_H // 2, LAT_W // 2
    assert pack.Pano360DiT360Patch.INPUT_TYPES()["required"]["resync"][1]["default"] == "per step"
    assert set(SAMPLER_FAMILIES) <= set(comfy.samplers.KSampler.SAMPLERS)

    def gap(sampler, resync):
        spy = _IdsSpy()
        m = _patch(pack, model, p, "wrapped", resync).clone()
        m.set_model_post_input_patch(spy)
        out = _sample(m, cond, sampler=sampler, steps=2)
        assert spy.calls and torch.isfinite(out).all(), sampler
        return _padded_column_gap(spy.calls, h, w, p)

    for sampler in SAMPLER_FAMILIES:
        assert gap(sampler, "per step") < 1e-6, sampler
    # the failure the default prevents: noise-adding samplers desynchronise free-running columns
    for sampler in ("euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde"):
        assert gap(sampler, "none") > 1e-2, sampler
    # deterministic samplers keep the copies equal even without re-sync (wrapped ids)
    for sampler in ("euler", "dpmpp_2m"):
        assert gap(sampler, "none") < 1e-4, sampler


def test_reference_latents_are_left_alone(pack, model, cond):
    """Kontext-style ref latents: only the image grid is padded; ref tokens keep their ids."""
    import node_helpers

    ref = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(5))
    kcond = node_helpers.conditioning_set_values(cond, {"reference_latents": [ref]}, append=True)
    spy_plain, spy = _IdsSpy(), _IdsSpy()
    plain = model.clone()
    plain.set_model_post_input_patch(spy_plain)
    _sample(plain, kcond, steps=1)
    p = 2
    m = _patch(pack, model, p).clone()
    m.set_model_post_input_patch(spy)
    out = _sample(m, kcond, steps=2)
    assert out.shape == (1, 16, LAT_H, LAT_W) and torch.isfinite(out).all()
    n_ref = (4 // 2) * (6 // 2)
    h, w = LAT_H // 2, LAT_W // 2
    n_img = h * (w + 2 * p)
    ids, ids0 = spy.calls[0]["img_ids"][0], spy_plain.calls[0]["img_ids"][0]
    assert ids.shape[0] == n_img + n_ref and ids0.shape[0] == h * w + n_ref
    assert torch.equal(ids[n_img:], ids0[h * w:])  # ref ids unchanged ("offset" method)
    assert torch.equal(spy.calls[0]["img"][0, n_img:], spy_plain.calls[0]["img"][0, h * w:])  # ref tokens unchanged


# --------------------------------------------------------------------------- non-destructive


def test_patch_does_not_leak_and_survives_clone(pack, P, model, cond):
    import comfy.patcher_extension as pe

    before = _sample(model, cond)
    m = _patch(pack, model, 2)
    assert model.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, P.KEY) == []
    assert model.get_wrappers(pe.WrappersMP.OUTER_SAMPLE, P.KEY) == []
    assert m.model is model.model  # shared weights, patched clone
    c = m.clone()
    assert len(c.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, P.KEY)) == 1
    a = _sample(m, cond)
    b = _sample(c, cond)
    assert torch.equal(a, b)
    after = _sample(model, cond)  # the unpatched model in the same "graph" still works the same
    assert torch.equal(before, after)
    assert not torch.equal(a, before)
    # patching again replaces (does not stack) the wrappers
    mm = _patch(pack, m, 1)
    assert len(mm.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, P.KEY)) == 1
    assert torch.equal(_sample(mm, cond), _sample(_patch(pack, model, 1), cond))


# --------------------------------------------------------------------------- masks, inpainting, fp8


def test_noise_mask_is_padded_consistently(pack, model, cond):
    """KSampler noise mask: unmasked latent columns (incl. the edges) are kept exactly."""
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 16, LAT_H, LAT_W, generator=g)
    mask = torch.zeros(1, 1, LAT_H * 8, LAT_W * 8)
    mask[..., :, 64:192] = 1.0  # inpaint the middle; both panorama edges are kept
    m = _patch(pack, model, 2, "wrapped", "per step")
    out = _sample(m, cond, latent=latent, noise_mask=mask, steps=3)
    assert out.shape == latent.shape
    keep = torch.ones(LAT_W, dtype=torch.bool)
    keep[8:24] = False
    assert torch.allclose(out[..., keep], latent[..., keep], atol=1e-5)  # latent in/out scaling round trip
    assert not torch.allclose(out[..., ~keep], latent[..., ~keep])


def test_inpaint_model_concat_is_wrap_padded(pack, P, tiny_models, cond):
    """Flux Fill (c_concat = masked image latent + mask channels): padded like the latent."""
    import comfy.patcher_extension as pe
    import node_helpers

    fill = tiny_models.build_tiny_flux(0, "fill")
    g = torch.Generator().manual_seed(2)
    image_lat = torch.randn(1, 16, LAT_H, LAT_W, generator=g)
    mask = torch.zeros(1, 1, LAT_H * 8, LAT_W * 8)  # as InpaintModelConditioning stores it
    mask[..., :40] = 1.0  # touches the left edge only
    c = node_helpers.conditioning_set_values(cond, {"concat_latent_image": image_lat, "concat_mask": mask})
    seen = []

    def spy(executor, x, *args, **kwargs):
        seen.append(x.detach().clone())
        return executor(x, *args, **kwargs)

    p = 2
    m = _patch(pack, fill, p, "wrapped", "none")
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    out = _sample(m, c, steps=2)
    assert out.shape == (1, 16, LAT_H, LAT_W) and torch.isfinite(out).all()
    x = seen[0]
    cols = 2 * p
    assert x.shape == (1, 96, LAT_H, LAT_W + 2 * cols)
    cc = x[:, 16:]  # image latent + 64 mask channels
    assert torch.equal(cc[..., :cols], cc[..., -2 * cols:-cols])  # left pad = right interior edge
    assert torch.equal(cc[..., -cols:], cc[..., cols:2 * cols])  # right pad = left interior edge
    # mask channels: the masked left edge appears in the right padding, not stretched
    assert cc[:, 16:, :, -cols:].mean() > 0.99 and cc[:, 16:, :, :cols].abs().max() == 0


def test_fp8_weights(pack, tiny_models, cond):
    """fp8 storage (manual cast): padding happens on the activations, any dtype."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher

    cfg = comfy.model_detection.model_config_from_unet_config(tiny_models.tiny_flux_unet_config("dev"))
    cfg.set_inference_dtype(torch.float8_e4m3fn, torch.float32)
    base = cfg.get_model({}, "", device=comfy.model_management.unet_offload_device())
    tiny_models.init_module_(base.diffusion_model, 0)
    assert any(p.dtype == torch.float8_e4m3fn for p in base.diffusion_model.parameters())
    m8 = comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                          offload_device=comfy.model_management.unet_offload_device())
    ref = _sample(m8, cond, steps=2)
    assert torch.equal(_sample(_patch(pack, m8, 0), cond, steps=2), ref)
    out = _sample(_patch(pack, m8, 2, "wrapped", "per step"), cond, steps=2)
    assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.equal(out, ref)


# --------------------------------------------------------------------------- LoRA


def test_dit360_peft_lora_loads_with_patch(pack, model, tiny_models, cond, tmp_path):
    import comfy.lora
    import comfy.sd
    import comfy.utils

    path = tiny_models.save_tiny_dit360_lora(tmp_path / "dit360_panorama_lora.safetensors", seed=0, rank=4)
    lora = comfy.utils.load_torch_file(path, safe_load=True)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    loaded = comfy.lora.load_lora(lora, key_map, log_missing=False)
    # every PEFT module (lora_A/lora_B pair) of the file maps onto a diffusion_model weight
    n_modules = len([k for k in lora if k.endswith(".lora_A.weight")])
    assert n_modules == 4 + 3 and len(loaded) == n_modules
    # q/k/v of a double block are slices of the fused qkv weight
    assert any(k[0] == "diffusion_model.double_blocks.0.img_attn.qkv.weight" for k in loaded if isinstance(k, tuple))

    patched = _patch(pack, model, 1)
    with_lora, _ = comfy.sd.load_lora_for_models(patched, None, lora, 1.0, 0.0)
    # q/k/v/out of the double block, q/k/v of the single block (fused weights: slices of 3 keys)
    assert sum(len(v) for v in with_lora.patches.values()) == 7
    a = _sample(patched, cond)
    b = _sample(with_lora, cond)
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    # the patch is still there after the LoRA loader's clone: padding 0 of the same LoRA model differs
    c = _sample(_patch(pack, with_lora, 0), cond)
    assert not torch.equal(b, c)
    assert torch.equal(_sample(patched, cond), a)  # LoRA did not leak into the patched model


# --------------------------------------------------------------------------- the seam test


def _position_local_flux(tiny_models, seed):
    """A tiny Flux whose image attention is position-local (as trained image DiTs are).

    Random weights give attention that ignores position, so a seam cannot be measured. Here the
    image-stream query/key are dominated by a constant bias on the low-frequency RoPE pairs of
    the row and column axes, so attention decays with RoPE distance; the attention branch
    dominates the residual (MLPs off). Neighbouring tokens then agree and the wrap (column 0
    vs. w-1, far apart in RoPE) is a real seam."""
    m = tiny_models.build_tiny_flux(seed, "dev")
    hid = tiny_models.HIDDEN_SIZE
    head = hid // tiny_models.NUM_HEADS
    b = torch.zeros(head)
    ax = tiny_models.AXES_DIM
    for base in (ax[0], ax[0] + ax[1]):  # first dim of the row and of the column axis
        for k in (1, 2):
            b[base + 2 * k] = 50.0
    b = b.repeat(tiny_models.NUM_HEADS)
    with torch.no_grad():
        for name, prm in m.model.diffusion_model.named_parameters():
            single = name.startswith("single_blocks")
            if name.endswith("img_attn.qkv.bias") or (single and name.endswith("linear1.bias")):
                prm[:hid] = b
                prm[hid:2 * hid] = b
            if name.endswith("img_attn.qkv.weight") or (single and name.endswith("linear1.weight")):
                prm[:2 * hid] *= 0.01
            if "img_attn.norm" in name or (single and ".norm." in name):
                prm.fill_(3.0)
            if name.endswith("img_attn.proj.weight"):
                prm *= 20.0
            if single and name.endswith("linear2.weight"):
                prm[:, :hid] *= 20.0
                prm[:, hid:] = 0.0
            if ".img_mlp." in name:
                prm.zero_()
    return m


def test_seam_per_step_resync_beats_no_padding(pack, tiny_models, cond):
    """With per-step re-sync the left and right edge tokens of the denoised latent agree more
    closely than without padding. Measured on the model-generated part of the latent (denoised
    latent minus the initial noise, averaged per 2x2 token) with ``wrap_seam_ratio``: the
    mean |column 0 - column w-1| over the mean |neighbouring columns| (1 = seamless)."""
    metrics = importlib.import_module(f"{PACK_NAME}.pano_core.seams.metrics")
    scores = {"none": [], "padded": []}
    for seed in range(3):
        m = _position_local_flux(tiny_models, seed)
        noise = _noise(h=16, w=64, seed=seed)
        for key, mm in (("none", m), ("padded", _patch(pack, m, 4, "linear", "per step"))):
            out = _sample(mm, cond, noise=noise, steps=8)
            tok = torch.nn.functional.avg_pool2d(out - noise, 2)
            scores[key].append(metrics.wrap_seam_ratio(tok))
    none = sum(scores["none"]) / 3
    padded = sum(scores["padded"]) / 3
    print(f"seam score (1 = seamless): no padding {none:.3f}, padding 4 linear ids + per-step re-sync {padded:.3f}")
    assert none > 1.05, f"the test model should show a seam without padding ({scores})"
    assert padded < 0.95 * none, scores


class _OutRecorder:
    """A DIFFUSION_MODEL wrapper that records every model output (padded, before cropping)."""

    def __init__(self):
        self.outs = []

    def __call__(self, executor, x, *args, **kwargs):
        out = executor(x, *args, **kwargs)
        self.outs.append(out.detach().clone())
        return out


def test_seam_with_the_default_wrapped_ids(pack, tiny_models, cond):
    """What the default (DiT360: padding 1, ``wrapped`` ids, re-sync per step) does and does not do.

    1. Every padded column's model output equals the output of the column it copies, at every
       call: with wrapped ids a padded token has its source's content *and* position, so the
       model treats it exactly like its source (linear ids give it a new position: outputs differ).
    2. Hence, on a model that has not learnt the wrap, wrapped padding does not couple the two
       edges: the padded token is no closer in RoPE to the opposite edge than its source, so the
       seam (``wrap_seam_ratio``, position-local tiny Flux, 3 seeds) stays that of no padding
       (within 15 %), while linear ids + per-step re-sync (the other seam test) lower it. Closing
       the seam with wrapped ids is what DiT360's LoRA learns from panoramas; it cannot be shown
       with random weights."""
    import comfy.patcher_extension

    metrics = importlib.import_module(f"{PACK_NAME}.pano_core.seams.metrics")
    p = 1
    outs = {}
    for id_mode in ("wrapped", "linear"):
        m = _patch(pack, _position_local_flux(tiny_models, 0), p, id_mode, "per step").clone()
        rec = _OutRecorder()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_out", rec)
        _sample(m, cond, noise=_noise(h=16, w=64, seed=0), steps=3)
        gaps = []
        for o in rec.outs:
            assert o.shape[-1] == 64 + 4 * p
            c = 2 * p  # latent columns per side
            gaps.append(max(float((o[..., :c] - o[..., -2 * c:-c]).abs().max()),
                            float((o[..., -c:] - o[..., c:2 * c]).abs().max())))
        outs[id_mode] = max(gaps)
    assert outs["wrapped"] < 1e-4 < outs["linear"], outs
    scores = {"none": [], "wrapped": [], "linear": []}
    for seed in range(3):
        m = _position_local_flux(tiny_models, seed)
        noise = _noise(h=16, w=64, seed=seed)
        for key, mm in (("none", m), ("wrapped", _patch(pack, m)), ("linear", _patch(pack, m, 4, "linear"))):
            out = _sample(mm, cond, noise=noise, steps=8)
            scores[key].append(metrics.wrap_seam_ratio(torch.nn.functional.avg_pool2d(out - noise, 2)))
    mean = {k: sum(v) / 3 for k, v in scores.items()}
    print(f"seam score (1 = seamless): none {mean['none']:.3f}, default wrapped {mean['wrapped']:.3f}, "
          f"linear 4 + per step {mean['linear']:.3f}")
    assert abs(mean["wrapped"] - mean["none"]) < 0.15 * mean["none"], scores
    assert mean["linear"] < mean["wrapped"], scores


# --------------------------------------------------------------------------- bad input


def test_non_flux_model_is_rejected(pack, errors):
    import comfy.model_patcher

    class SD15Like(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)

    fake = comfy.model_patcher.ModelPatcher(SD15Like(), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))
    with pytest.raises(errors.PanoInputError, match="Flux.*SD15Like.*Linear"):
        _patch(pack, fake, 1)


def test_bad_sizes_and_padding(pack, model, cond, errors):
    with pytest.raises(errors.PanoInputError, match="multiples of 16"):
        _sample(_patch(pack, model, 1), cond, noise=_noise(w=LAT_W - 1), steps=1)
    with pytest.raises(errors.PanoInputError, match="quarter"):
        _sample(_patch(pack, model, LAT_W // 2 // 4 + 1), cond, steps=1)
    with pytest.raises(errors.PanoInputError, match="id_mode"):
        pack.Pano360DiT360Patch().patch(model, 1, "mirror", "none")


# --------------------------------------------------------------------------- other nodes


def test_empty_panorama_latent(pack, errors):
    node = pack.Pano360EmptyPanoramaLatent()
    lat = node.generate("2048x1024 (DiT360)", batch_size=2)[0]["samples"]
    assert lat.shape == (2, 16, 128, 256) and lat.abs().sum() == 0
    assert node.generate("custom", 512, 256, 1)[0]["samples"].shape == (1, 16, 32, 64)
    assert node.generate("4096x2048", batch_size=1)[0]["samples"].shape == (1, 16, 256, 512)
    with pytest.raises(errors.PanoInputError, match="16"):
        node.generate("custom", 1000, 500, 1)
    with pytest.raises(errors.PanoInputError, match="2:1"):
        node.generate("custom", 1024, 1024, 1)


def test_panorama_prompt(pack):
    node = pack.Pano360PanoramaPrompt()
    assert node.build("a beach", True)[0] == "This is a panorama. a beach"
    assert node.build("a beach", False)[0] == "a beach"
    assert node.build("This is a panorama. a beach", True)[0] == "This is a panorama. a beach"


def test_panorama_shift_uses_padded_token_count(pack, model):
    m, mu = pack.Pano360FluxPanoramaShift().patch(model, 2048, 1024, 1)
    schedules = importlib.import_module(f"{PACK_NAME}.pano_core.diffusion.schedules")
    assert mu == pytest.approx(schedules.shift_mu(64 * 130))
    # same as ComfyUI's ModelSamplingFlux at the padded pixel size
    import comfy_extras.nodes_model_advanced as adv

    ref = adv.ModelSamplingFlux().patch(model, 1.15, 0.5, 2080, 1024)[0]
    s1 = m.get_model_object("model_sampling").sigmas
    s2 = ref.get_model_object("model_sampling").sigmas
    assert torch.allclose(s1, s2)
    s0 = model.get_model_object("model_sampling").sigmas
    assert not torch.allclose(s1, s0)


def test_circular_vae_decode(pack, tiny_models):
    vae = tiny_models.build_tiny_vae(0)
    metrics = importlib.import_module(f"{PACK_NAME}.pano_core.seams.metrics")
    g = torch.Generator().manual_seed(0)
    # a smooth periodic latent (no seam in the content itself)
    t = torch.linspace(0, 2 * torch.pi, 33)[:-1]
    lat = (torch.sin(t)[None, None, None, :] * torch.randn(1, 16, 1, 1, generator=g)).repeat(1, 1, 8, 1)
    lat = lat + 0.1 * torch.randn(1, 16, 8, 32, generator=g)
    samples = {"samples": lat}
    node = pack.Pano360CircularVAEDecode()
    plain = vae.decode(lat)
    circ = node.decode(samples, vae, 4)[0]
    assert circ.shape == plain.shape == (1, 64, 256, 3)
    seam_plain = metrics.wrap_seam_ratio(plain.movedim(-1, 1))
    seam_circ = metrics.wrap_seam_ratio(circ.movedim(-1, 1))
    assert seam_circ <= seam_plain + 1e-6
    # interior columns far from the border (beyond TAESD's receptive field) equal the plain decode
    assert torch.allclose(circ[:, :, 96:160], plain[:, :, 96:160], atol=1e-4)
    # tiled variant: same size, finite, close to the untiled circular decode
    tiled = node.decode(samples, vae, 4, True, 128, 32)[0]
    assert tiled.shape == circ.shape and torch.isfinite(tiled).all()
    assert (tiled - circ).abs().mean() < 0.05
    # wrap 0 = plain decode
    assert torch.equal(node.decode(samples, vae, 0)[0], plain)


def _edge_error(x, ref, cols, dim=-1):
    """Mean |x - ref| over the ``cols`` columns at each edge of dimension ``dim``."""
    d = (x - ref).abs()
    n = d.shape[dim]
    return float(torch.cat([d.narrow(dim, 0, cols), d.narrow(dim, n - cols, cols)], dim).mean())


def test_circular_vae_encode_and_decode_against_the_tiled_reference(pack, tiny_models):
    """VAE Encode / Decode (circular, panorama) against a perfectly circular reference (the input
    tiled three times side by side, middle third): the error at the panorama's edges falls with
    the wrapped columns, and the default (8) is far below a plain encode/decode and the former 4.
    A plain encode bakes a seam into the latent (``wrap_seam_ratio`` of the latent well above the
    reference's), the circular encode does not. Numbers for Flux's VAE: benchmarks/RESULTS.md."""
    from pano_core.io import read_image

    C = importlib.import_module(f"{PACK_NAME}.pano_core.diffusion.circular")
    metrics = importlib.import_module(f"{PACK_NAME}.pano_core.seams.metrics")
    vae = tiny_models.build_tiny_vae(0)
    img = read_image(ROOT / "tests" / "assets" / "snow_village_erp.png")[:, :3]
    img = torch.nn.functional.interpolate(img, size=(128, 256), mode="area").movedim(1, -1)
    enc, dec = pack.Pano360CircularVAEEncode(), pack.Pano360CircularVAEDecode()
    assert enc.INPUT_TYPES()["required"]["wrap_columns"][1]["default"] == 8
    assert dec.INPUT_TYPES()["required"]["wrap_columns"][1]["default"] == 8
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["Pano360CircularVAEEncode"] == "VAE Encode (circular, panorama)"

    z_ref = C.periodic_reference(vae.encode, img, scale=1 / 8, channels_last=True, out_channels_last=False)
    z = {c: enc.encode(img, vae, c)[0]["samples"] for c in (0, 4, 8)}
    assert torch.equal(z[0], vae.encode(img))  # 0 = plain VAE Encode
    assert torch.equal(enc.encode(img, vae)[0]["samples"], z[8])  # default
    e = {c: _edge_error(z[c], z_ref, 2) for c in z}
    print("encode edge error vs tiled reference (0 / 4 / 8 columns):", e)
    assert e[8] < 0.1 * e[4] < 0.1 * e[0]
    seam = {k: metrics.wrap_seam_ratio(v) for k, v in (("plain", z[0]), ("circular", z[8]), ("reference", z_ref))}
    print("latent wrap_seam_ratio:", seam)
    assert seam["plain"] > 2 * seam["reference"] and abs(seam["circular"] - seam["reference"]) < 0.1 * seam["reference"]

    x_ref = C.periodic_reference(vae.decode, z_ref, scale=8, out_channels_last=True)
    x = {c: dec.decode({"samples": z_ref}, vae, c)[0] for c in (0, 4, 8)}
    d = {c: _edge_error(x[c], x_ref, 16, dim=2) for c in x}
    print("decode edge error vs tiled reference (0 / 4 / 8 columns):", d)
    assert d[8] < 0.1 * d[4] < 0.1 * d[0]
    with pytest.raises(Exception, match="wrap_columns"):
        enc.encode(img, vae, 64)


# ------------------------------------------------------------ spatial conditioning and the padding
# ControlNet hints, area conditioning (absolute and percentage) and cond masks must line up with
# the wrap-padded latent the patch samples on, as they line up with the plain latent without the
# patch; and the user's conds and ControlNet objects must not change.

COLS = 2  # latent columns per side for padding 1 (token columns) with Flux's 2x2 patches


@pytest.fixture(scope="module")
def circular(pack):
    return importlib.import_module(f"{PACK_NAME}.pano_core.diffusion.circular")


@pytest.fixture(scope="module")
def vae(tiny_models):
    return tiny_models.build_tiny_vae(0)


class _Recorder:
    """A DIFFUSION_MODEL wrapper (outermost) that records every model input ``x``."""

    def __init__(self):
        self.xs = []

    def __call__(self, executor, x, *args, **kwargs):
        self.xs.append(x.detach().clone())
        return executor(x, *args, **kwargs)


def _with_recorder(model):
    import comfy.patcher_extension

    m = model.clone()
    rec = _Recorder()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_recorder", rec)
    return m, rec


# ------------------------------------------------------------------------------------- pure parts


def test_pad_span(circular):
    assert circular.pad_span(8, 8, 32, 2) == (10, 8)  # shifted
    assert circular.pad_span(0, 32, 32, 2) == (0, 36)  # whole width -> whole padded width
    assert circular.pad_span(24, 100, 32, 2) == (26, 8)  # clipped to the latent, then shifted
    assert circular.pad_span(0, 8, 32, 0) == (0, 8)
    with pytest.raises(Exception, match="span"):
        circular.pad_span(0.5, 8, 32, 2)


def test_pad_conds_area_mask_concat(P):
    mask = torch.zeros(1, 64, 256)
    mask[..., 192:] = 1.0  # right quarter (latent columns 24..31)
    conds = {"positive": [
        {"area": (8, 8, 0, 8)},
        {"area": ("percentage", 1.0, 0.25, 0.0, 0.5)},
        {"area": ("percentage", 0.5, 1.0, 0.0, 0.0)},
        {"mask": mask},
        {"concat_latent_image": torch.arange(LAT_W, dtype=torch.float32).expand(1, 16, LAT_H, LAT_W)},
    ]}
    P._pad_conds(conds, (LAT_H, LAT_W), COLS)
    c = conds["positive"]
    assert c[0]["area"] == (8, 8, 0, 8 + COLS)
    assert c[1]["area"] == (8, 8, 0, 16 + COLS)
    assert c[2]["area"] == (4, LAT_W + 2 * COLS, 0, 0)  # a full-width band covers the padding too
    m = c[3]["mask"]
    assert m.shape == (1, LAT_H, LAT_W + 2 * COLS)
    interior = m[..., COLS:-COLS]
    assert torch.all(interior[..., 24:] == 1) and torch.all(interior[..., :24] == 0)
    assert torch.equal(m[..., :COLS], interior[..., -COLS:])  # wrapped: last columns prepended
    assert torch.equal(m[..., -COLS:], interior[..., :COLS])
    row = c[4]["concat_latent_image"][0, 0, 0]
    assert row[:COLS].tolist() == [30.0, 31.0] and row[-COLS:].tolist() == [0.0, 1.0]


# ------------------------------------------------------------------------------ sampling: areas


def test_area_conditioning_crops_the_same_columns(pack, model, cond):
    import nodes

    patched, rec = _with_recorder(_patch(pack, model))
    area_abs = nodes.ConditioningSetArea().append(cond, 64, 64, 64, 0, 1.0)[0]  # px: latent x 8..15
    area_pct = nodes.ConditioningSetAreaPercentage().append(cond, 0.25, 1.0, 0.5, 0.0, 1.0)[0]  # latent x 16..23
    pos = cond + area_abs + area_pct
    out = _sample(patched, pos, cond, steps=1, cfg=2.0)
    assert out.shape == (1, 16, LAT_H, LAT_W) and torch.isfinite(out).all()

    full = [x for x in rec.xs if x.shape[-1] == LAT_W + 2 * COLS]
    crops = [x for x in rec.xs if x.shape[-1] == 8]
    assert full and len(crops) >= 1
    ref = full[0][:1]
    # every 8-wide model input is one of the two areas, taken at its place in the padded latent
    places = {8 + COLS: False, 16 + COLS: False}
    for x in crops:  # conds of equal area size may be batched together
        for item in x:
            for x0 in places:
                if torch.equal(item, ref[0, ..., x0 : x0 + 8]):
                    places[x0] = True
    assert all(places.values()), places
    # the user's conds are unchanged
    assert area_abs[0][1]["area"] == (8, 8, 0, 8)
    assert area_pct[0][1]["area"] == ("percentage", 1.0, 0.25, 0.0, 0.5)


def test_cond_mask_is_used_at_padded_resolution(pack, model, cond):
    import nodes

    mask = torch.zeros(1, 64, 256)
    mask[..., 192:] = 1.0
    masked = nodes.ConditioningSetMask().append(cond, mask, "default", 1.0)[0]
    out = _sample(_patch(pack, model), cond + masked, cond, steps=2, cfg=2.0)
    assert out.shape == (1, 16, LAT_H, LAT_W) and torch.isfinite(out).all()
    assert masked[0][1]["mask"] is mask  # the user's cond keeps its own mask


# -------------------------------------------------------------------------------- ControlNet


class _HintSpy:
    """ControlNet ``preprocess_image`` hook: records the pixel hint after ComfyUI resized it to
    the latent it samples."""

    def __init__(self):
        self.hints = []

    def __call__(self, img):
        self.hints.append(img.detach().clone())
        return img


@pytest.mark.parametrize("latent_input", [True, False], ids=["instantx-vae", "xlabs-pixels"])
def test_controlnet_hint_is_wrap_padded_not_cropped(pack, model, cond, vae, tiny_models, latent_input):
    import nodes

    control = tiny_models.build_tiny_flux_controlnet(0, latent_input=latent_input)
    spy = _HintSpy()
    control.preprocess_image = spy
    hint = torch.rand(1, 64, 256, 3, generator=torch.Generator().manual_seed(3))  # ComfyUI IMAGE
    pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(cond, cond, control, hint, 1.0, 0.0, 1.0,
                                                               vae=vae if latent_input else None)
    applied = pos[0][1]["control"]
    original_hint = applied.cond_hint_original

    out = _sample(_patch(pack, model), pos, neg, steps=2, cfg=1.0)
    assert out.shape == (1, 16, LAT_H, LAT_W) and torch.isfinite(out).all()

    assert spy.hints, "the ControlNet was not run"
    seen = spy.hints[0]
    px = COLS * 8
    assert seen.shape == (1, 3, 64, 256 + 2 * px)  # the padded latent's size in pixels
    h = hint.movedim(-1, 1)
    assert torch.allclose(seen[..., px:-px], h, atol=1e-6)  # interior: the hint itself, not a crop
    assert torch.allclose(seen[..., :px], h[..., -px:], atol=1e-6)  # wrapped edges
    assert torch.allclose(seen[..., -px:], h[..., :px], atol=1e-6)
    # the user's ControlNet objects and conds are untouched
    assert pos[0][1]["control"] is applied and applied.cond_hint_original is original_hint
    assert original_hint.shape[-1] == 256
    assert applied.cond_hint is None  # cleaned up / never run on the user's object


def test_controlnet_changes_the_result_and_chains_are_padded(pack, model, cond, vae, tiny_models):
    import nodes

    c1 = tiny_models.build_tiny_flux_controlnet(0, latent_input=False)
    c2 = tiny_models.build_tiny_flux_controlnet(1, latent_input=False)
    spies = [_HintSpy(), _HintSpy()]
    c1.preprocess_image, c2.preprocess_image = spies
    hint = torch.rand(1, 64, 256, 3, generator=torch.Generator().manual_seed(4))
    apply = nodes.ControlNetApplyAdvanced().apply_controlnet
    pos, neg = apply(cond, cond, c1, hint, 1.0, 0.0, 1.0)
    pos, neg = apply(pos, neg, c2, hint.flip(2), 1.0, 0.0, 1.0)  # chained: c2 -> c1
    patched = _patch(pack, model)
    with_cn = _sample(patched, pos, neg, steps=2)
    without = _sample(patched, cond, cond, steps=2)
    assert not torch.allclose(with_cn, without)
    px = COLS * 8
    for s, h in zip(spies, (hint, hint.flip(2))):
        assert s.hints and s.hints[0].shape[-1] == 256 + 2 * px
        assert torch.allclose(s.hints[0][..., px:-px], h.movedim(-1, 1), atol=1e-6)
    # positive and negative shared one ControlNet object per link: the padded copies are shared too
    assert pos[0][1]["control"] is neg[0][1]["control"]
