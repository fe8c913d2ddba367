"""Pano360PanoramaPatch on two variants of supported families, in-process with ComfyUI's real sampling code:
Chroma Radiance (Chroma in pixel space: the "latent" is the RGB image, one token per 16 x 16 px patch, a
per-patch NeRF head with a 3 x 3 conv at the end) and the HunyuanImage 2.1 refiner (a one-frame 5-D latent,
patch 1, 3-axis RoPE, the image it refines concatenated to x as ``c_concat``). Both at the latent level and
at the token level (wrapped rotary embedding in every block); the circular VAE decode / encode with the
pixel-space pass-through "VAE" that ComfyUI uses for Chroma Radiance (``VAELoader`` "pixel_space")."""

from __future__ import annotations

import importlib

import pytest
import test_panorama_patch_comfy as base
import test_panorama_tokens_comfy as tok
import torch

# fixtures and helpers of the latent- and token-level tests (module-scoped fixtures: re-exported, not copied)
pack, errors, dits, _free_models = base.pack, base.errors, base.dits, base._free_models
PACK_NAME, _model, _sample, _Outer = base.PACK_NAME, base._model, base._sample, base._Outer
T = tok.T

FAMILIES = ("ChromaRadiance", "HunyuanImage21Refiner")
FLUX_BLOCKS = (("double_blocks", "double_block"), ("single_blocks", "single_block"))
PATCH = {"ChromaRadiance": 16, "HunyuanImage21Refiner": 1}


def _patch(pack, model, p, level):
    return pack.Pano360PanoramaPatch().patch(model, p, level)[0]


def _with_block_spy(model):
    """The user's model with a ``patches_replace["dit"]`` entry (another pack's) on every block, recording the
    rotary embedding it gets (both families use FLUX-style double + single blocks)."""
    spy = tok._block_spy()
    m = model.clone()
    dm = model.model.diffusion_model
    for attr, kind in FLUX_BLOCKS:
        for i in range(len(getattr(dm, attr))):
            m.set_model_patch_replace(spy, "dit", kind, i)
    return m, spy


def _expected_pe(dits, fam, dm, p, txt, wrapped):
    """The family's own embedder applied to the ids ComfyUI builds for the padded input (built here from its
    id layouts, independently of the patch), the padded columns' width ids replaced by their sources' when
    ``wrapped``: Chroma Radiance (text, then image; ids (0, row, col)), the refiner (image, then text; ids
    (frame, row, col), one frame)."""
    shape = dits.latent_shape(fam)
    s = PATCH[fam]
    h, w = shape[-2] // s, shape[-1] // s
    wp = w + 2 * p
    cols = (tok._wrapped_cols(w, p) if wrapped else torch.arange(wp)).float()
    rr, cc = torch.meshgrid(torch.arange(h).float(), cols, indexing="ij")
    img = torch.stack([torch.zeros_like(rr), rr, cc], -1).reshape(1, -1, 3)
    text = torch.zeros(1, txt, 3)
    return dm.pe_embedder(torch.cat([text, img] if fam == "ChromaRadiance" else [img, text], 1))


class _InSpy:
    """An APPLY_MODEL wrapper added after the patch (so inside it): records ``x``, ``c_concat`` and the output."""

    def __init__(self):
        self.xs, self.concats, self.ys = [], [], []

    def __call__(self, executor, x, t, c_concat=None, *args, **kw):
        self.xs.append(x.detach().clone())
        self.concats.append(None if c_concat is None else c_concat.detach().clone())
        y = executor(x, t, c_concat, *args, **kw)
        self.ys.append(y.detach().clone())
        return y


def _padded_equal(x, cols, inner=0):
    """The padded columns of ``x`` equal their source columns (the ``inner`` outermost ones of each side left out)."""
    w = x.shape[-1] - 2 * cols
    left = torch.equal(x[..., inner:cols], x[..., w + inner:w + cols])
    right = torch.equal(x[..., w + cols:w + 2 * cols - inner], x[..., cols:2 * cols - inner])
    return left and right


def _padded_dev(y, cols, inner=0):
    w = y.shape[-1] - 2 * cols
    return max((y[..., inner:cols] - y[..., w + inner:w + cols]).abs().max().item(),
               (y[..., w + cols:w + 2 * cols - inner] - y[..., cols:2 * cols - inner]).abs().max().item())


@pytest.mark.parametrize("fam", FAMILIES)
def test_variants_are_recognised_with_their_patch_and_rank(pack, T, dits, fam):
    P = importlib.import_module(f"{PACK_NAME}.nodes._panorama_patch")
    model = _model(dits, fam)
    assert type(model.model).__name__ == fam
    f = P.family_of(model)
    assert (f.patch, f.ranks, f.token_level) == (PATCH[fam], (4,) if fam == "ChromaRadiance" else (5,), True)
    assert T.adapter_of(model) is not None


@pytest.mark.parametrize("fam", FAMILIES)
def test_padding_zero_equals_unpatched_and_user_model_unchanged(pack, dits, fam):
    model = _model(dits, fam)
    before = repr(model.model_options.get("transformer_options", {}).get("patches_replace"))
    ref = _sample(dits, model, fam)
    for level in ("latent", "token", "auto"):
        assert torch.equal(_sample(dits, _patch(pack, model, 0, level), fam), ref), level
    lat = _sample(dits, _patch(pack, model, 1, "latent"), fam)
    tokl = _sample(dits, _patch(pack, model, 1, "token"), fam)
    assert torch.equal(_sample(dits, _patch(pack, model, 1, "auto"), fam), lat)  # auto: latent on these families
    for out in (lat, tokl):
        assert out.shape == ref.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, ref, atol=1e-6), "padding had no effect"
    assert not torch.allclose(tokl, lat, atol=1e-6)  # wrapped ids differ from linear positions
    # the patched and the unpatched model side by side: the user's model is unchanged
    assert torch.equal(_sample(dits, model, fam), ref)
    assert repr(model.model_options.get("transformer_options", {}).get("patches_replace")) == before


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_padded_columns_equal_source_at_every_call(pack, dits, fam, sampler):
    """Batch 2 + CFG, both levels: at every model call the padded columns of ``x`` (and of the refiner's
    ``c_concat``, the image it refines) equal their source, by whole patches; the sampler outside only sees
    the unpadded input. With wrapped ids a padded token is its source for attention, so the model's output
    there equals its source's (Chroma Radiance: but for the outermost pixel column of each side, where the
    NeRF head's 3 x 3 conv meets its zero padding; cropped anyway); with linear ids it does not."""
    import comfy.patcher_extension

    model = _model(dits, fam)
    pad = 2
    cols, inner = pad * PATCH[fam], 1 if fam == "ChromaRadiance" else 0
    shape = dits.latent_shape(fam, 2)
    devs = {}
    for level in ("token", "latent"):
        outer = _Outer()
        m = model.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_outer", outer)
        m = _patch(pack, m, pad, level).clone()
        spy = _InSpy()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_spy", spy)
        out = _sample(dits, m, fam, batch=2, steps=3, cfg=2.0, sampler=sampler, neg=dits.cond(fam, 1))
        assert out.shape[0] == 2 and torch.isfinite(out).all()
        assert len(spy.xs) == len(outer.shapes) == 3
        for x, c, outer_shape in zip(spy.xs, spy.concats, outer.shapes):
            assert outer_shape == (4, *shape[1:])  # cond + uncond, unpadded
            assert x.shape == (4, *shape[1:-1], shape[-1] + 2 * cols)
            assert _padded_equal(x, cols)
            if fam == "HunyuanImage21Refiner":
                assert c is not None and c.shape == x.shape and c.abs().max() > 0  # the image to refine
                assert _padded_equal(c, cols)
            else:
                assert c is None
        devs[level] = max(_padded_dev(y, cols, inner) for y in spy.ys)
    assert devs["token"] < 1e-4, devs
    assert devs["latent"] > 1e-3, devs


@pytest.mark.parametrize("fam", FAMILIES)
def test_blocks_get_wrapped_pe_and_user_replacement_runs(pack, dits, fam):
    """Every block (through the user's pre-existing replacement, which still runs) gets the family's own
    embedding of wrapped ids at the token level and of linear ids at the latent level; the embedding is
    computed once per call (the same tensor for every block)."""
    model = _model(dits, fam)
    dm = model.model.diffusion_model
    nblocks = sum(len(getattr(dm, a)) for a, _ in FLUX_BLOCKS)
    p = 2
    for level in ("token", "latent"):
        user, spy = _with_block_spy(model)
        out = _sample(dits, _patch(pack, user, p, level), fam, batch=2, steps=2, cfg=2.0, neg=dits.cond(fam, 1))
        assert torch.isfinite(out).all()
        assert len(spy.calls) == 2 * nblocks  # two steps, cond + uncond batched, every block
        expected = _expected_pe(dits, fam, dm, p, spy.calls[0]["txt"], wrapped=level == "token")
        for c in spy.calls:
            assert c["pe"].shape[1:] == expected.shape[1:]
            assert torch.allclose(c["pe"], expected.expand_as(c["pe"]), atol=1e-6), level
        for a, b in zip(spy.calls[:nblocks], spy.calls[1:nblocks]):
            assert torch.equal(a["pe"], b["pe"])


def test_chroma_radiance_width_must_be_whole_patches(pack, dits, errors):
    """The pixel width must be whole 16-px patches (the padding copies whole patches); a clear error names it."""
    model = _patch(pack, _model(dits, "ChromaRadiance"), 1, "latent")
    import comfy.sample

    noise = torch.randn(1, 3, 32, 120, generator=torch.Generator().manual_seed(0))
    pos = dits.cond("ChromaRadiance", 0)
    with pytest.raises(errors.PanoInputError, match="multiple of Chroma Radiance's patch width 16"):
        comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", pos, pos, torch.zeros_like(noise), seed=0,
                            disable_pbar=True)


# ------------------------------------------------------------------- circular VAE decode, pixel-space "VAE"


@pytest.fixture(scope="module")
def pixel_vae(comfy_inprocess):
    """What ComfyUI's VAELoader returns for "pixel_space" (Chroma Radiance's pass-through VAE)."""
    import comfy.sd

    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    assert vae.spacial_compression_decode() == 1 and vae.latent_channels == 3
    return vae


def test_circular_vae_decode_and_encode_accept_the_pixel_space_vae(pack, errors, pixel_vae):
    """Pixel space: the circular decode wraps and crops pixel columns around a pass-through, so it equals
    ComfyUI's VAE Decode exactly; the circular encode equals VAE Encode; too many columns: a clear error."""
    import nodes

    d = importlib.import_module(f"{PACK_NAME}.nodes.dit360")
    lat = torch.rand(2, 3, 32, 128, generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2
    (plain,) = nodes.VAEDecode().decode(pixel_vae, {"samples": lat})
    for cols in (0, 8, 64):
        (img,) = d.Pano360CircularVAEDecode().decode({"samples": lat}, pixel_vae, cols)
        assert img.shape == (2, 32, 128, 3) and torch.equal(img, plain)
        (tiled,) = d.Pano360CircularVAEDecode().decode({"samples": lat}, pixel_vae, cols, True, 64, 16)
        assert torch.allclose(tiled, plain, atol=1e-6)  # tiles blended: float rounding only
    (enc_plain,) = nodes.VAEEncode().encode(pixel_vae, plain)
    (enc,) = d.Pano360CircularVAEEncode().encode(plain, pixel_vae, 8)
    assert torch.equal(enc["samples"], enc_plain["samples"])
    with pytest.raises(errors.PanoInputError, match="wrap_columns: at most the latent width"):
        d.Pano360CircularVAEDecode().decode({"samples": lat[..., :32]}, pixel_vae, 33)


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_server_chroma_radiance_pixel_space_graph(comfy, pack, dits):
    """The real server: Chroma Radiance's own empty "latent" (EmptyChromaRadianceLatentImage) and the
    pixel-space VAE (VAELoader "pixel_space") with the token-level patch: the circular decode gives the same
    image as VAE Decode, the patched run differs from the unpatched one, and it equals the same run here."""
    import numpy as np

    fam, seed = "ChromaRadiance", 5
    ks = {"seed": seed, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
          "positive": ["m", 1], "negative": ["m", 1], "latent_image": ["lat", 0]}
    api = {
        "m": {"class_type": "Pano360TestTinyDiT", "inputs": {"seed": 0, "family": fam}},
        "lat": {"class_type": "EmptyChromaRadianceLatentImage", "inputs": {"width": 128, "height": 32,
                                                                           "batch_size": 1}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "patch": {"class_type": "Pano360PanoramaPatch", "inputs": {"model": ["m", 0], "padding": 2, "level": "token"}},
        "ks": {"class_type": "KSampler", "inputs": {**ks, "model": ["patch", 0]}},
        "ku": {"class_type": "KSampler", "inputs": {**ks, "model": ["m", 0]}},
        "dc": {"class_type": "Pano360CircularVAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0],
                                                                    "wrap_columns": 8, "tiled": False,
                                                                    "tile_size": 512, "overlap": 64}},
        "dp": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "du": {"class_type": "VAEDecode", "inputs": {"samples": ["ku", 0], "vae": ["vae", 0]}},
    }
    for n in ("dc", "dp", "du"):
        api[f"s{n}"] = {"class_type": "SaveImage", "inputs": {"images": [n, 0], "filename_prefix": f"pano15h_{n}"}}
    out = comfy.run(api, timeout=240)
    (circ,) = comfy.images(out, "sdc")
    (plain,) = comfy.images(out, "sdp")
    (unpatched,) = comfy.images(out, "sdu")
    assert circ.shape == plain.shape == unpatched.shape == (32, 128, 3)
    assert np.array_equal(circ, plain) and circ.std() > 0
    assert np.abs(circ.astype(int) - unpatched.astype(int)).mean() > 0.5
    model = _patch(pack, _model(dits, fam), 2, "token")
    ref = tok._inprocess_ksampler(dits, model, fam, torch.zeros(1, 3, 32, 128), seed, 2, "euler")
    expected = torch.clamp((ref + 1.0) / 2.0, 0.0, 1.0)[0].movedim(0, -1) * 255.0  # SaveImage truncates
    assert np.abs(circ.astype(float) - expected.numpy()).max() <= 1.0
