"""Tests of pano_core.dit360.pipeline (DiT360 on diffusers Flux) on a tiny random FLUX pipeline.

The model is built and saved with ``save_pretrained`` by the test (tests/tiny_diffusers.py) and
loaded through the real loading code (``DiT360Pipeline.from_pretrained(folder)``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pano_core.diffusion.prompts import PANORAMA_PREFIX, add_prompt_prefix
from pano_core.diffusion.schedules import schedule_mu
from pano_core.diffusion.tokens import TokenGrid
from pano_core.errors import PanoInputError

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import tiny_diffusers as td  # noqa: E402

from pano_core.dit360 import pipeline as P  # noqa: E402

W, H = 64, 32  # 4 x 2 tokens -> pad 1 is the maximum (w // 4)
KW = dict(width=W, height=H, steps=2, progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return td.save_tiny_flux_pipeline(tmp_path_factory.mktemp("dit360") / "tiny-flux", seed=0)


@pytest.fixture(scope="module")
def pipe(model_dir):
    p = P.DiT360Pipeline.from_pretrained(model_dir, device="cpu", dtype="fp32")
    p.flux.set_progress_bar_config(disable=True)
    return p


@pytest.fixture()
def fresh_pipe(model_dir):
    """A pipeline of its own (LoRA tests change the transformer)."""
    p = P.DiT360Pipeline.from_pretrained(model_dir, device="cpu", dtype="fp32")
    p.flux.set_progress_bar_config(disable=True)
    return p


class _Spy:
    """Records the inputs of every transformer forward call."""

    def __init__(self, transformer):
        self.calls = []
        self.handle = transformer.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()})

    def remove(self):
        self.handle.remove()


# --------------------------------------------------------------------------- basics
def test_generate_shape_range_and_latents(pipe):
    out = pipe("a snowy village", **KW, seed=0)
    assert out.images.shape == (1, 3, H, W)
    assert out.images.dtype == torch.float32 and out.images.device.type == "cpu"
    assert torch.isfinite(out.images).all()
    assert 0.0 <= float(out.images.min()) and float(out.images.max()) <= 1.0
    assert float(out.images.std()) > 1e-3  # not a constant image
    assert out.latents.shape == (1, 16, H // 8, W // 8)
    assert out.seed == 0


def test_pad0_reproduces_diffusers_flux_pipeline(pipe):
    """pad=0 must be exactly diffusers' own FluxPipeline for the same seed (and a batch)."""
    prompts = ["a cat on a roof", "a forest"]
    ref = pipe.flux(
        prompts, height=H, width=W, num_inference_steps=3, guidance_scale=2.8,
        generator=torch.Generator("cpu").manual_seed(7), output_type="pt",
    ).images
    out = pipe(prompts, width=W, height=H, steps=3, guidance=2.8, seed=7, pad=0, prompt_prefix=None, progress=False)
    assert out.images.shape == ref.shape == (2, 3, H, W)
    torch.testing.assert_close(out.images, ref.cpu().float(), atol=1e-6, rtol=0)


def test_padded_run_differs_and_keeps_shape(pipe):
    base = pipe("a canyon", **KW, seed=3, pad=0)
    padded = pipe("a canyon", **KW, seed=3, pad=1)
    assert padded.images.shape == base.images.shape == (1, 3, H, W)
    assert padded.latents.shape == base.latents.shape
    assert float((padded.latents - base.latents).abs().max()) > 1e-4
    wide = pipe("a canyon", width=128, height=64, steps=2, seed=3, pad=2, id_mode="linear", progress=False)
    assert wide.images.shape == (1, 3, 64, 128)


def test_transformer_sees_padded_tokens_with_wrapped_ids(pipe):
    spy = _Spy(pipe.transformer)
    try:
        pipe("a beach", width=128, height=64, steps=2, seed=1, pad=2, progress=False)
    finally:
        spy.remove()
    h, w, p = 4, 8, 2
    assert len(spy.calls) == 2
    for call in spy.calls:
        assert call["hidden_states"].shape == (1, h * (w + 2 * p), 64)
        ids = call["img_ids"]
        assert ids.shape == (h * (w + 2 * p), 3)
        for r in range(h):
            for c in range(w + 2 * p):
                assert ids[r * (w + 2 * p) + c].tolist() == [0.0, float(r), float((c - p) % w)], (r, c)
    # the initial noise is padded by copying the opposite edge (DiT360 pads once, before the loop)
    x0 = spy.calls[0]["hidden_states"].reshape(1, h, w + 2 * p, 64)
    assert torch.equal(x0[:, :, :p], x0[:, :, w : w + p])
    assert torch.equal(x0[:, :, w + p :], x0[:, :, p : 2 * p])
    # the noise itself is FluxPipeline's noise for this seed
    g = pipe.grid(128, 64, pad=2)
    noise = pipe.prepare_latents(1, g, torch.Generator("cpu").manual_seed(1))
    assert torch.equal(TokenGrid(h=h, w=w, p=p).crop(spy.calls[0]["hidden_states"]), noise)


def test_linear_id_mode_extends_columns(pipe):
    g = pipe.grid(128, 64, pad=2, id_mode="linear")
    ids = pipe.image_ids(g)
    cols = ids.reshape(4, 12, 3)[0, :, 2].tolist()
    assert cols == [-2.0, -1.0] + [float(c) for c in range(8)] + [8.0, 9.0]


def _edge_gaps(calls, h, w, p):
    gaps = []
    for call in calls:
        x = call["hidden_states"].reshape(1, h, w + 2 * p, 64)
        gaps.append(
            max(
                float((x[:, :, :p] - x[:, :, w : w + p]).abs().max()),
                float((x[:, :, w + p :] - x[:, :, p : 2 * p]).abs().max()),
            )
        )
    return gaps


@pytest.mark.parametrize("resync", [True, False])
def test_padded_columns_per_id_mode_and_resync(pipe, resync):
    """With re-sync the padded columns equal the opposite edge at every call. Without it they
    evolve freely: with linear ids they drift away from the edge they were copied from; with
    DiT360's wrapped ids a padded token and its source have equal content and equal ids, so the
    transformer treats them identically and they stay copies (up to float rounding)."""
    h, w, p = 4, 8, 1
    gaps = {}
    for mode in ("linear", "wrapped"):
        spy = _Spy(pipe.transformer)
        try:
            pipe("a desert", width=128, height=64, steps=3, seed=2, pad=p, id_mode=mode, resync=resync, progress=False)
        finally:
            spy.remove()
        gaps[mode] = _edge_gaps(spy.calls, h, w, p)
        assert len(gaps[mode]) == 3 and gaps[mode][0] == 0.0  # padded once from the noise
    if resync:
        assert max(gaps["linear"]) == 0.0 and max(gaps["wrapped"]) == 0.0
    else:
        assert min(gaps["linear"][1:]) > 1e-3
        assert max(gaps["wrapped"]) < 1e-4


# --------------------------------------------------------------------------- schedule
def test_mu_from_padded_token_count(pipe):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = pipe.scheduler.config
    for (h, w, p) in [(64, 128, 1), (2, 4, 1), (8, 16, 4)]:
        n = TokenGrid(h=h, w=w, p=p).padded_tokens
        assert n == h * (w + 2 * p)
        assert schedule_mu(cfg, n) == pytest.approx(calculate_shift(n, 256, 4096, 0.5, 1.15), abs=1e-12)
    g1, g0 = pipe.grid(W, H, pad=1), pipe.grid(W, H, pad=0)
    assert pipe.mu(g1) == pytest.approx(calculate_shift(2 * (4 + 2), 256, 4096, 0.5, 1.15), abs=1e-12)
    assert pipe.mu(g1) > pipe.mu(g0)
    # the sampler really runs with the padded mu: its sigmas after a padded run are those of mu(g1)
    pipe("a lake", **KW, seed=0, pad=1)
    used = pipe.scheduler.sigmas.clone()
    _, s1 = pipe.timesteps(2, g1)
    _, s0 = pipe.timesteps(2, g0)
    torch.testing.assert_close(used, s1.clone())
    assert not torch.allclose(used, s0)
    # FLUX.1-dev at 2048x1024 with DiT360's 1-column padding: 64 x (128 + 2) tokens
    assert schedule_mu(cfg, TokenGrid(h=64, w=128, p=1).padded_tokens) == pytest.approx(
        calculate_shift(64 * 130, 256, 4096, 0.5, 1.15)
    )


# --------------------------------------------------------------------------- seeds and batches
def test_seed_repeatable_and_different_seeds_differ(pipe):
    a = pipe("a harbour", **KW, seed=11)
    b = pipe("a harbour", **KW, seed=11)
    c = pipe("a harbour", **KW, seed=12)
    assert torch.equal(a.images, b.images)
    assert float((a.latents - c.latents).abs().max()) > 1e-3


def test_batch_matches_single_runs(pipe):
    """num_images_per_prompt=2: two different panoramas; the first equals a single run (the
    batch draws its noise like FluxPipeline, padding is per sample)."""
    single = pipe("a glacier", **KW, seed=5, pad=1, resync=True)
    batch = pipe("a glacier", **KW, seed=5, pad=1, resync=True, num_images_per_prompt=2)
    assert batch.images.shape == (2, 3, H, W)
    assert float((batch.latents[0] - batch.latents[1]).abs().max()) > 1e-3
    torch.testing.assert_close(batch.latents[:1], single.latents, atol=1e-4, rtol=1e-4)
    two = pipe(["a glacier", "a volcano"], **KW, seed=5)
    assert two.images.shape == (2, 3, H, W)


def test_true_cfg_negative_prompt_changes_output(pipe):
    a = pipe("a meadow", **KW, seed=4)
    b = pipe("a meadow", **KW, seed=4, negative_prompt="fog", true_cfg_scale=2.0)
    assert b.images.shape == a.images.shape
    assert float((a.latents - b.latents).abs().max()) > 1e-4


# --------------------------------------------------------------------------- prompt prefix
def test_prompt_prefix_option():
    assert add_prompt_prefix("a cave") == ["This is a panorama. a cave"]
    assert add_prompt_prefix("This is a panorama. a cave") == ["This is a panorama. a cave"]
    assert add_prompt_prefix(["x", "y"], None) == ["x", "y"]
    with pytest.raises(PanoInputError, match="prompt"):
        add_prompt_prefix([])


def test_prefix_changes_conditioning(pipe):
    a = pipe.encode_prompt("a cave", prompt_prefix=PANORAMA_PREFIX)
    b = pipe.encode_prompt("a cave", prompt_prefix=None)
    c = pipe.encode_prompt("This is a panorama. a cave", prompt_prefix=None)
    assert not torch.allclose(a.prompt_embeds, b.prompt_embeds)
    assert torch.equal(a.prompt_embeds, c.prompt_embeds)


# --------------------------------------------------------------------------- VAE
def test_circular_decode_wraps_the_seam(pipe):
    """Circular decode sees across the 0/360 seam: rolling the latent by whole columns rolls the
    image much more faithfully than with the plain decode (which sees two unrelated edges)."""
    torch.manual_seed(0)
    lat = torch.randn(1, 16, 8, 16)
    k = 4  # latent columns
    errs = {}
    with torch.no_grad():
        for cd in (False, True):
            a = pipe.decode_latents(lat, circular_decode=cd, decode_pad=4)
            b = pipe.decode_latents(torch.roll(lat, k, -1), circular_decode=cd, decode_pad=4)
            assert a.shape == (1, 3, 64, 128)
            errs[cd] = float((torch.roll(a, 8 * k, -1) - b).abs().mean())
    assert errs[True] < 0.6 * errs[False], errs
    out = pipe("a ridge", **KW, seed=0, circular_decode=True, decode_pad=2)
    assert out.images.shape == (1, 3, H, W)
    with pytest.raises(PanoInputError, match="decode_pad"):
        pipe.decode_latents(lat, circular_decode=True, decode_pad=9)


def test_encode_decode_roundtrip_shapes(pipe):
    img = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        tok = pipe.encode_image(img)
        tok_c = pipe.encode_image(img, circular_encode=True, encode_pad=2)
        g = pipe.grid(128, 64, pad=0)
        back = pipe.decode(tok, g)
    assert tok.shape == tok_c.shape == (2, 4 * 8, 64)
    assert back.shape == img.shape


def test_vae_tiling_option(pipe):
    pipe.set_memory("cpu", offload="none", vae_tiling=True)
    try:
        assert pipe.vae.use_tiling
    finally:
        pipe.set_memory("cpu", offload="none", vae_tiling=False)
    assert not pipe.vae.use_tiling


# --------------------------------------------------------------------------- progress
def test_progress_bar(pipe, capsys):
    pipe.flux.set_progress_bar_config(disable=False)
    try:
        pipe("a road", width=W, height=H, steps=2, seed=0, progress=True)
        err = capsys.readouterr().err
        assert "2/2" in err
        pipe("a road", width=W, height=H, steps=2, seed=0, progress=False)
        assert "2/2" not in capsys.readouterr().err
    finally:
        pipe.flux.set_progress_bar_config(disable=True)


# --------------------------------------------------------------------------- LoRA
def test_peft_lora_with_dit360_keys_loads_and_changes_output(fresh_pipe, tmp_path):
    pipe = fresh_pipe
    base = pipe("a temple", **KW, seed=0)
    f = td.make_peft_lora_file(tmp_path / "dit360" / "adapter_model.safetensors", pipe.transformer, rank=4)
    from safetensors.torch import load_file

    sd = load_file(str(f))
    assert all(k.startswith("transformer.") for k in sd)  # what DiT360's official conversion writes
    assert "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight" in sd
    report = pipe.load_lora(tmp_path / "dit360", scale=1.0)  # folder -> adapter_model.safetensors
    assert report.matched_keys == report.total_keys == len(sd)
    assert "transformer_blocks.0.attn.to_q" in report.matched_modules and report.rank == 4
    # the layer computes W x + B A x exactly (alpha == rank, scale 1)
    layer = pipe.transformer.transformer_blocks[0].attn.to_q
    x = torch.randn(3, layer.in_features)
    a = sd["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"]
    b = sd["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ a.T @ b.T, atol=1e-5, rtol=1e-5)
    lora = pipe("a temple", **KW, seed=0)
    assert float((lora.latents - base.latents).abs().max()) > 1e-3
    pipe.set_lora_scale(0.0)
    off = pipe("a temple", **KW, seed=0)
    torch.testing.assert_close(off.latents, base.latents, atol=1e-6, rtol=0)


def test_lora_alpha_from_adapter_config_is_applied(fresh_pipe, tmp_path):
    pipe = fresh_pipe
    f = td.make_peft_lora_file(tmp_path / "a" / "adapter_model.safetensors", pipe.transformer, rank=2, alpha=6)
    pipe.load_lora(f)
    from safetensors.torch import load_file

    sd = load_file(str(f))
    layer = pipe.transformer.transformer_blocks[0].attn.to_k
    a = sd["transformer.transformer_blocks.0.attn.to_k.lora_A.weight"]
    b = sd["transformer.transformer_blocks.0.attn.to_k.lora_B.weight"]
    x = torch.randn(2, layer.in_features)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.base_layer(x) + 3.0 * (x @ a.T @ b.T), atol=1e-5, rtol=1e-5)


def test_peft_prefixed_lora_keys_load(fresh_pipe, tmp_path):
    f = td.make_peft_lora_file(tmp_path / "d.safetensors", fresh_pipe.transformer, rank=2, prefix="base_model.model.")
    rep = fresh_pipe.load_lora(f)
    assert rep.matched_keys == rep.total_keys > 0


def test_mismatching_lora_says_how_many_keys_matched(fresh_pipe, tmp_path):
    from safetensors.torch import save_file

    pipe = fresh_pipe
    # a LoRA for a bigger Flux: same names, wrong sizes (3072-wide), plus BFL-named keys
    sd = {
        "base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 3072),
        "base_model.model.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(3072, 4),
        "base_model.model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.randn(4, 32),
        "base_model.model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.randn(96, 4),
    }
    save_file(sd, str(tmp_path / "big.safetensors"))
    with pytest.raises(PanoInputError, match=r"0 of 4 keys"):
        pipe.load_lora(tmp_path / "big.safetensors")
    # partly matching: 2 good keys, 2 foreign ones -> strict error names the count
    good = td.make_peft_lora_file(tmp_path / "g.safetensors", pipe.transformer, rank=2, targets=("transformer_blocks.0.attn.to_q",))
    from safetensors.torch import load_file

    mixed = dict(load_file(str(good)))
    mixed.update({k: v for k, v in sd.items() if "double_blocks" in k})
    save_file(mixed, str(tmp_path / "mixed.safetensors"))
    n_good = len(mixed) - 2  # to_q of the double and the single block: 4 keys
    assert n_good == 4
    with pytest.raises(PanoInputError, match=rf"{n_good} of {n_good + 2} keys"):
        pipe.load_lora(tmp_path / "mixed.safetensors")
    assert not any("lora" in n for n, _ in pipe.transformer.named_parameters())  # nothing was injected
    rep = pipe.load_lora(tmp_path / "mixed.safetensors", strict=False)
    assert (rep.matched_keys, rep.total_keys) == (n_good, n_good + 2)


def test_lora_file_errors(fresh_pipe, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"0")
    with pytest.raises(PanoInputError, match="safetensors"):
        fresh_pipe.load_lora(tmp_path / "x.bin")
    with pytest.raises(PanoInputError, match="adapter_model.safetensors"):
        fresh_pipe.load_lora(tmp_path)  # a folder without the file
    with pytest.raises(PanoInputError, match="neither"):
        fresh_pipe.load_lora(str(tmp_path / "missing" / "file.safetensors"))


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(width=72, height=36), "multiple of 16"),
        (dict(width=96, height=32), "2:1"),
        (dict(width=64, height=32, pad=2), "pad"),
        (dict(width=64, height=32, id_mode="spiral"), "id_mode"),
        (dict(width=64, height=32, steps=0), "steps"),
    ],
)
def test_bad_sizes_and_options(pipe, kw, match):
    args = dict(steps=2, progress=False)
    args.update(kw)
    with pytest.raises(PanoInputError, match=match):
        pipe("x", **args)


def test_loading_errors(tmp_path):
    with pytest.raises(PanoInputError, match="neither an existing folder nor a hub id"):
        P.DiT360Pipeline.from_pretrained(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(PanoInputError, match="model_index.json"):
        P.DiT360Pipeline.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(PanoInputError, match="dtype"):
        P.DiT360Pipeline.from_pretrained(tmp_path, device="cpu", dtype="int8")


def test_offload_needs_gpu(pipe):
    with pytest.raises(PanoInputError, match="offload"):
        pipe.set_memory("cpu", offload="model")
    with pytest.raises(PanoInputError, match="offload"):
        pipe.set_memory("cpu", offload="everything")


def test_size_check_function():
    P.check_pano_size(2048, 1024)
    with pytest.raises(PanoInputError, match="width: must be a multiple of 16.*2032 or 2048"):
        P.check_pano_size(2040, 1020)
    with pytest.raises(PanoInputError, match="height"):
        P.check_pano_size(64, 0)
    P.check_pano_size(96, 32, require_2to1=False)
    assert np.isclose(P.DEFAULTS["guidance"], 2.8) and P.DEFAULTS["steps"] == 28


# --------------------------------------------------------------------------- editing interop
def test_pipeline_stands_in_for_flux_pipeline_in_editing(pipe):
    """The editing module (written against a plain FluxPipeline) gives identical results when
    handed the DiT360 pipeline: FluxPipeline-style encode_prompt calls are delegated unchanged
    and the embeddings unpack like diffusers' tuple."""
    editing = pytest.importorskip("pano_core.dit360.editing")
    pe, pooled, ids = pipe.encode_prompt("a cat", prompt_2=None, device=pipe.device, num_images_per_prompt=1)
    ref = pipe.flux.encode_prompt(prompt="a cat", prompt_2=None, device=pipe.device, num_images_per_prompt=1)
    assert torch.equal(pe, ref[0]) and torch.equal(pooled, ref[1])
    e = pipe.encode_prompt("a cat", prompt_prefix=None)
    pe2, pooled2, _ = e
    assert torch.equal(pe2, ref[0]) and torch.equal(pooled2, ref[1])
    if not hasattr(editing, "inpaint"):
        pytest.skip("editing.inpaint not available")
    torch.manual_seed(0)
    img = torch.rand(1, 3, H, W)
    mask = torch.zeros(1, 1, H, W)
    mask[..., 8:24, 16:48] = 1
    a = editing.inpaint(pipe, img, mask, prompt="a cat", steps=2, seed=0, progress=False)
    b = editing.inpaint(pipe.flux, img, mask, prompt="a cat", steps=2, seed=0, progress=False)
    assert a.shape == (1, 3, H, W)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
