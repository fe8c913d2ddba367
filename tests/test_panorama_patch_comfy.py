"""Pano360PanoramaPatch (latent-level circular padding) in-process with ComfyUI's real sampling code
on tiny random DiTs of six families (tests/comfy_test_nodes/tiny_dits.py) and the tiny FLUX.1."""

from __future__ import annotations

import importlib
import types

import comfy_harness
import pytest
import torch

PACK_NAME = "pano360_pack_panorama_under_test"
FAMILIES = ("Flux2", "Chroma", "QwenImage", "Lumina2", "WAN21", "WAN22", "HiDream", "HunyuanImage21")


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.panorama")


@pytest.fixture(scope="module")
def P(pack):
    return importlib.import_module(f"{PACK_NAME}.nodes._panorama_patch")


@pytest.fixture(scope="module")
def errors(pack):
    return importlib.import_module(f"{PACK_NAME}.pano_core.errors")


@pytest.fixture(scope="module")
def dits(tiny_models):
    import tiny_dits

    return tiny_dits


_MODELS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _MODELS.clear()  # release the ModelPatchers while ComfyUI is still importable


def _model(dits, fam):
    if fam not in _MODELS:
        _MODELS[fam] = dits.build(fam, 0)
    return _MODELS[fam]


def _sample(dits, model, fam, batch=1, steps=2, cfg=1.0, sampler="euler", seed=0, neg=None):
    import comfy.sample

    shape = dits.latent_shape(fam, batch)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    pos = dits.cond(fam, 0)
    neg = pos if neg is None else neg
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "simple", pos, neg, torch.zeros_like(noise),
                               seed=seed, disable_pbar=True)


class _Spy:
    """An APPLY_MODEL wrapper added after the panorama patch (so inside it): records what the model sees."""

    def __init__(self):
        self.xs = []

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kw):  # noqa: B006 (ComfyUI's signature)
        self.xs.append(x.detach().clone())
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)
        assert out.shape == x.shape
        return out


def _spied(model):
    import comfy.patcher_extension

    spy = _Spy()
    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_spy", spy)
    return m, spy


def _output_spied(model) -> list:
    """Add (in place) an ``APPLY_MODEL`` wrapper, innermost, that records every model output; returns
    the list it fills."""
    import comfy.patcher_extension

    ys: list = []

    def out_spy(executor, x, *a, **kw):
        y = executor(x, *a, **kw)
        ys.append(y.detach().clone())
        return y

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_out_spy", out_spy)
    return ys


@pytest.mark.parametrize("fam", FAMILIES)
def test_padding_zero_equals_unpatched_and_padding_changes_result(pack, dits, fam):
    model = _model(dits, fam)
    ref = _sample(dits, model, fam)
    p0 = pack.Pano360PanoramaPatch().patch(model, 0, "latent")[0]
    assert torch.equal(_sample(dits, p0, fam), ref)
    p1 = pack.Pano360PanoramaPatch().patch(model, 1, "auto")[0]
    out = _sample(dits, p1, fam)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, ref, atol=1e-6), "padding had no effect"
    # non-destructive: the original model is unchanged (patched and unpatched in one graph)
    assert torch.equal(_sample(dits, model, fam), ref)


# One representative of every ComfyUI sampler family: first-order ODE, second-order / several model
# calls per step, ancestral, SDE, multistep, LCM, RES, CFG++. All these DiTs are flow (CONST) models.
SAMPLERS = ("euler", "heun", "dpmpp_2m", "euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
            "dpmpp_3m_sde", "er_sde", "sa_solver", "deis", "uni_pc", "lcm", "res_multistep", "euler_cfg_pp")
MULTI_EVAL = {"heun", "dpmpp_2s_ancestral", "dpmpp_sde"}  # two model calls per step (not the last)
SAMPLER_FAMILIES = ("Lumina2", "WAN22")  # every sampler on one 4-D and one 5-D (video) family
_SAMPLER_CASES = ([(f, s) for f in FAMILIES for s in ("euler", "euler_ancestral")]
                  + [(f, s) for f in SAMPLER_FAMILIES for s in SAMPLERS if s not in ("euler", "euler_ancestral")])


class _Outer:
    """An APPLY_MODEL wrapper added before the panorama patch (so outside it): what the sampler hands in."""

    def __init__(self):
        self.shapes = []

    def __call__(self, executor, x, *args, **kw):
        self.shapes.append(tuple(x.shape))
        return executor(x, *args, **kw)


@pytest.mark.parametrize(("fam", "sampler"), _SAMPLER_CASES)
def test_padded_columns_equal_source_at_every_call(pack, P, dits, fam, sampler):
    """Every model call of every sampler family (also the extra calls of second-order / SDE steps)
    sees the padded latent, its padded columns equal to their source; the sampler (outside) only
    ever sees the unpadded latent. The samplers accept these flow models (finite results)."""
    import comfy.model_sampling
    import comfy.patcher_extension

    model = _model(dits, fam)
    assert isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.CONST)  # flow
    outer = _Outer()
    base = model.clone()
    base.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_outer", outer)
    pad, steps = 2, 3
    patched = pack.Pano360PanoramaPatch().patch(base, pad, "latent")[0]
    m, spy = _spied(patched)
    shape = dits.latent_shape(fam, 2)
    out = _sample(dits, m, fam, batch=2, steps=steps, cfg=2.0, sampler=sampler, neg=dits.cond(fam, 1))
    assert out.shape == shape and torch.isfinite(out).all()
    cols = pad * P.FAMILIES[fam].patch
    assert len(spy.xs) == len(outer.shapes) >= steps  # every call padded
    if sampler in MULTI_EVAL:
        assert len(spy.xs) > steps
    for x, outer_shape in zip(spy.xs, outer.shapes):
        assert outer_shape == (4, *shape[1:])  # batch 2 x (cond, uncond), unpadded
        assert x.shape == (*outer_shape[:-1], shape[-1] + 2 * cols)
        assert torch.equal(x[..., :cols], x[..., -2 * cols:-cols])  # left pad = last interior columns
        assert torch.equal(x[..., -cols:], x[..., cols:2 * cols])  # right pad = first interior columns


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s not in ("euler", "euler_ancestral")])
def test_token_level_padded_columns_equal_source_every_sampler(pack, P, dits, sampler):
    """The token level (wrapped ids) on Chroma under every sampler family (euler and euler_ancestral on
    every token family: tests/test_panorama_tokens_comfy.py): at every model call the padded columns of
    the input equal their source, every block gets the family's embedding of wrapped ids, and so the
    model's output at a padded token equals its source's."""
    import test_panorama_tokens_comfy as tok  # imported here: it imports this module

    fam, pad = "Chroma", 2
    cols = pad * P.FAMILIES[fam].patch
    model = _model(dits, fam)
    dm = model.model.diffusion_model
    nblocks = sum(len(getattr(dm, a)) for a, _ in tok.BLOCKS[fam])
    user, blocks = tok._with_block_spy(model, fam)
    m, spy = _spied(tok._patch(pack, user, pad, "token"))
    ys = _output_spied(m)
    out = _sample(dits, m, fam, batch=2, steps=3, cfg=2.0, sampler=sampler, neg=dits.cond(fam, 1))
    assert out.shape == dits.latent_shape(fam, 2) and torch.isfinite(out).all()
    assert len(spy.xs) == len(ys) >= 3 and len(blocks.calls) == nblocks * len(ys)
    for x in spy.xs:
        assert x.shape[0] == 4 and x.shape[-1] == tok.W + 2 * cols
        assert torch.equal(x[..., :cols], x[..., -2 * cols:-cols]) and torch.equal(x[..., -cols:], x[..., cols:2 * cols])
    expected = tok._expected_pe(fam, dm, pad, blocks.calls[0]["txt"])
    for c in blocks.calls:
        assert torch.allclose(c["pe"], expected.expand_as(c["pe"]), atol=1e-6)
    for y in ys:
        assert torch.allclose(y[..., :cols], y[..., -2 * cols:-cols], atol=1e-4)
        assert torch.allclose(y[..., -cols:], y[..., cols:2 * cols], atol=1e-4)


def test_flux1_levels(pack, tiny_models):
    import comfy.patcher_extension

    WMP = comfy.patcher_extension.WrappersMP
    flux = tiny_models.build_tiny_flux(0, "dev")
    auto = pack.Pano360PanoramaPatch().patch(flux, 1, "auto")[0]
    assert auto.get_wrappers(WMP.DIFFUSION_MODEL, "pano360_dit360")  # token level (DiT360 wrapped ids)
    assert not auto.get_wrappers(WMP.APPLY_MODEL, "pano360_panorama_latent")
    lat = pack.Pano360PanoramaPatch().patch(flux, 1, "latent")[0]
    assert lat.get_wrappers(WMP.APPLY_MODEL, "pano360_panorama_latent")
    m, spy = _spied(lat)
    import comfy.sample

    noise = torch.randn(1, 16, 8, 32, generator=torch.Generator().manual_seed(0))
    clip = tiny_models.build_tiny_clip(0)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a panorama"))
    out = comfy.sample.sample(m, noise, 2, 1.0, "euler", "simple", cond, cond, torch.zeros_like(noise), seed=0,
                              disable_pbar=True)
    assert out.shape == noise.shape and spy.xs[0].shape[-1] == 32 + 4


class _IdsSpy:
    """A user post_input patch (runs after the DiT360 ids patch): records image tokens and ids."""

    def __init__(self):
        self.calls = []

    def __call__(self, args):
        self.calls.append({k: args[k].detach().clone() for k in ("img", "img_ids")})
        return args


@pytest.mark.parametrize("id_mode", ["wrapped", "linear"])
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_flux2_token_level_wrapped_ids(pack, dits, id_mode, sampler):
    """FLUX.2 through Flux's post_input path: patch size 1, 4-axis ids; padded tokens equal their
    source at every call (re-sync per step) and carry the opposite edge's ids (wrapped) or extended ids."""
    import comfy.patcher_extension

    model = _model(dits, "Flux2")
    dit360 = importlib.import_module(f"{PACK_NAME}.nodes.dit360")
    p0 = dit360.Pano360DiT360Patch().patch(model, 0, id_mode, "per step")[0]
    ref = _sample(dits, model, "Flux2")
    assert torch.equal(_sample(dits, p0, "Flux2"), ref)

    p = 2
    patched = (pack.Pano360PanoramaPatch().patch(model, p, "auto")[0] if id_mode == "wrapped"
               else dit360.Pano360DiT360Patch().patch(model, p, id_mode, "per step")[0])
    assert patched.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "pano360_dit360")
    m = patched.clone()
    spy = _IdsSpy()
    m.set_model_post_input_patch(spy)
    out = _sample(dits, m, "Flux2", batch=2, steps=3, cfg=2.0, sampler=sampler, neg=dits.cond("Flux2", 1))
    assert out.shape == dits.latent_shape("Flux2", 2) and torch.isfinite(out).all()
    assert not torch.allclose(out[:1], _sample(dits, model, "Flux2", steps=3, sampler=sampler), atol=1e-6)
    h, w = 8, 32
    wp = w + 2 * p
    assert len(spy.calls) == 3
    for c in spy.calls:
        ids = c["img_ids"][0]
        assert ids.shape == (h * wp, 4)
        g = ids.reshape(h, wp, 4)
        cols = torch.arange(wp, dtype=ids.dtype) - p
        expected = cols % w if id_mode == "wrapped" else cols
        assert torch.equal(g[..., 2], expected.expand(h, wp))
        assert torch.equal(g[..., 1], torch.arange(h, dtype=ids.dtype)[:, None].expand(h, wp))
        img = c["img"].reshape(c["img"].shape[0], h, wp, -1)
        assert torch.allclose(img[:, :, :p], img[:, :, w:w + p], atol=1e-6)  # left pad = last columns
        assert torch.allclose(img[:, :, -p:], img[:, :, p:2 * p], atol=1e-6)  # right pad = first columns


def test_errors(pack, dits, errors):
    E = errors.PanoInputError
    fake = types.SimpleNamespace(model=torch.nn.Linear(1, 1))
    with pytest.raises(E, match="supports FLUX.1.*Wan 2.2; got a Linear model"):
        pack.Pano360PanoramaPatch().patch(fake, 1)
    with pytest.raises(E, match="token-level wrapped ids are offered for FLUX.1.*; Lumina 2"):
        pack.Pano360PanoramaPatch().patch(_model(dits, "Lumina2"), 1, "token")
    too_wide = pack.Pano360PanoramaPatch().patch(_model(dits, "Lumina2"), 5, "latent")[0]  # 16 tokens -> max 4
    with pytest.raises(E, match="padding"):
        _sample(dits, too_wide, "Lumina2")


@pytest.mark.parametrize("fam", ["Lumina2", "WAN22"])
def test_noise_mask(pack, dits, fam):
    """A noise mask (Wan 2.2 also hands it to the model as ``denoise_mask``, padded with the latent):
    the kept region stays the source latent, the masked region is generated."""
    import comfy.sample

    model = pack.Pano360PanoramaPatch().patch(_model(dits, fam), 1, "latent")[0]
    m, spy = _spied(model)
    shape = dits.latent_shape(fam)
    g = torch.Generator().manual_seed(3)
    noise, latent = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    mask = torch.zeros(1, shape[-2], shape[-1])
    mask[..., 8:20] = 1.0
    pos = dits.cond(fam, 0)
    out = comfy.sample.sample(m, noise, 2, 1.0, "euler", "simple", pos, pos, latent, noise_mask=mask, seed=0,
                              disable_pbar=True)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    assert torch.allclose(out[..., :8], latent[..., :8], atol=1e-5)
    assert not torch.allclose(out[..., 8:20], latent[..., 8:20], atol=1e-3)
    assert all(x.shape[-1] == shape[-1] + 4 for x in spy.xs)


def test_lora_style_weight_patch_and_padding_together(pack, dits):
    """Weight patches (what LoraLoaderModelOnly adds) and the padding wrapper coexist on a clone chain:
    patched weights change the padded result, and the patch order does not matter."""
    fam = "QwenImage"
    base = _model(dits, fam)
    key = next(k for k in base.model_state_dict() if k.endswith("img_in.weight"))
    w = base.model_state_dict()[key]
    delta = torch.randn(w.shape, generator=torch.Generator().manual_seed(9)) * 0.2
    lora = base.clone()
    lora.add_patches({key: ("diff", (delta,))}, 1.0)
    a = _sample(dits, pack.Pano360PanoramaPatch().patch(lora, 1, "latent")[0], fam)
    patched = pack.Pano360PanoramaPatch().patch(base, 1, "latent")[0].clone()
    patched.add_patches({key: ("diff", (delta,))}, 1.0)
    b = _sample(dits, patched, fam)
    plain = _sample(dits, pack.Pano360PanoramaPatch().patch(base, 1, "latent")[0], fam)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, plain, atol=1e-4)


def test_area_conditioning_crop_is_not_padded(pack, dits):
    """ConditioningSetArea crops the latent for its cond: that crop is not the panorama, so it is
    passed through unpadded while the full-latent calls are padded."""
    import node_helpers

    fam = "Lumina2"
    model = pack.Pano360PanoramaPatch().patch(_model(dits, fam), 1, "latent")[0]
    m, spy = _spied(model)
    pos = dits.cond(fam, 0)
    area = node_helpers.conditioning_set_values(dits.cond(fam, 1), {"area": (8, 16, 0, 8), "strength": 1.0,
                                                                    "set_area_to_bounds": False})
    import comfy.sample

    shape = dits.latent_shape(fam)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = comfy.sample.sample(m, noise, 2, 1.0, "euler", "simple", pos + area, pos, torch.zeros_like(noise), seed=0,
                              disable_pbar=True)
    assert out.shape == shape and torch.isfinite(out).all()
    widths = sorted({x.shape[-1] for x in spy.xs})
    assert widths == [16, 32 + 4], widths


def test_hidream_e1_image_cond_is_not_padded(pack, dits):
    """HiDream-E1 concatenates its image condition along the width: only the generated part is padded."""
    import comfy.patcher_extension
    import comfy.sample

    seen = []

    def spy(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kw):  # noqa: B006 (ComfyUI's signature)
        seen.append((x.shape, kw["image_cond"].shape))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)

    model = pack.Pano360PanoramaPatch().patch(_model(dits, "HiDream"), 1, "latent")[0].clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_spy", spy)
    shape = dits.latent_shape("HiDream")
    pos = dits.cond("HiDream", 0)
    pos = [[pos[0][0], {**pos[0][1], "concat_latent_image": torch.randn(shape, generator=torch.Generator().manual_seed(5))}]]
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = comfy.sample.sample(model, noise, 2, 1.0, "euler", "simple", pos, pos, torch.zeros_like(noise), seed=0,
                              disable_pbar=True)
    assert out.shape == shape and torch.isfinite(out).all()
    assert seen and all(xs[-1] == shape[-1] + 4 and ic[-1] == shape[-1] for xs, ic in seen)


def test_c_concat_and_denoise_mask_are_padded(P, dits):
    fam = P.FAMILIES["WAN22"]
    w = P.ApplyModelWrapper(fam, 1)
    seen = {}

    def executor(x, t, c_concat, c_crossattn, control, topts, **kw):
        seen.update(x=x, c_concat=c_concat, **kw)
        return x * 2

    x = torch.randn(1, 16, 2, 4, 8)
    cc = torch.randn(1, 20, 2, 4, 8)
    dm = torch.rand(1, 1, 2, 4, 8)
    ref = [torch.randn(1, 16, 4, 4)]
    out = w(executor, x, torch.ones(1), cc, None, None, {}, denoise_mask=dm, reference_latent=ref)
    assert torch.equal(out, x * 2)  # cropped back
    assert seen["x"].shape[-1] == 12 and torch.equal(seen["x"][..., :2], x[..., -2:])
    assert torch.equal(seen["c_concat"][..., 2:10], cc) and torch.equal(seen["c_concat"][..., :2], cc[..., -2:])
    assert torch.equal(seen["denoise_mask"][..., 10:], dm[..., :2])
    assert seen["reference_latent"] is ref  # not spatial with the latent: left alone


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_server_patched_and_unpatched_lumina2_in_one_graph(comfy):
    import numpy as np

    ks = {"seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler_ancestral", "scheduler": "simple",
          "denoise": 1.0, "positive": ["1", 1], "negative": ["1", 1], "latent_image": ["2", 0]}
    api = {
        "1": {"class_type": "Pano360TestTinyDiT", "inputs": {"seed": 0, "family": "Lumina2"}},
        "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 256, "height": 64, "batch_size": 1}},
        "3": {"class_type": "Pano360PanoramaPatch", "inputs": {"model": ["1", 0], "padding": 2, "level": "auto"}},
        "4": {"class_type": "KSampler", "inputs": {**ks, "model": ["3", 0]}},
        "5": {"class_type": "KSampler", "inputs": {**ks, "model": ["1", 0]}},
        "6": {"class_type": "Pano360TestTinyVAE", "inputs": {"seed": 0}},
    }
    saves = []
    for src, nid in (("4", "7"), ("5", "8")):
        api[f"{nid}d"] = {"class_type": "Pano360CircularVAEDecode",
                          "inputs": {"samples": [src, 0], "vae": ["6", 0], "wrap_columns": 2, "tiled": False,
                                     "tile_size": 512, "overlap": 64}}
        api[f"{nid}s"] = {"class_type": "SaveImage", "inputs": {"images": [f"{nid}d", 0],
                                                               "filename_prefix": f"pano_any_{nid}"}}
        saves.append(f"{nid}s")
    out = comfy.run(api, timeout=240)
    (a,) = comfy.images(out, saves[0])
    (b,) = comfy.images(out, saves[1])
    assert a.shape == b.shape == (64, 256, 3)
    assert np.isfinite(a).all() and a.std() > 0
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0  # the patch changes the result


# ------------------------------------------------------------------------------------ real server, every family

SERVER_FAMILIES = ("Flux", *FAMILIES, "WAN21_Vace", "WAN21_Camera",
                   "ChromaRadiance", "HunyuanImage21Refiner")  # = nodes/_panorama_patch.FAMILIES
SERVER_FAMILIES += ("WAN21_HuMo", "WAN22_S2V", "WAN22_Animate")  # tests/test_panorama_wan_variants_comfy.py
NOISE_MASK_FAMILIES = ("Lumina2", "WAN22")  # as test_noise_mask
MASK_COLS = (8, 20)  # latent columns the noise mask regenerates (of 32)


def test_server_families_cover_the_family_table(P):
    assert set(SERVER_FAMILIES) == set(P.FAMILIES)


def _server_graph(fam: str, token: bool, mask: bool, seed: int = 3) -> tuple[dict, dict]:
    """One API prompt: the tiny ``fam`` model unpatched (U), patched with padding 0 (P0) and 1 (P1) at
    the latent level and, where offered, padding 1 at the token level (T1), each sampled by its own
    KSampler (batch 2, CFG 2, zeroed negative) from one random latent (saved as ``src``); with ``mask``
    the same again through SetLatentNoiseMask (``*M``). Returns (prompt, {variant: SaveLatent node id})."""
    if fam == "Flux":
        api = {"m": {"class_type": "Pano360TestTinyFlux", "inputs": {"seed": 0, "variant": "dev", "depth": 1,
                                                                   "depth_single_blocks": 1}},
               "clip": {"class_type": "Pano360TestTinyCLIP", "inputs": {"seed": 0}},
               "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a 360 panorama", "clip": ["clip", 0]}}}
        pos = ["pos", 0]
    else:
        api = {"m": {"class_type": "Pano360TestTinyDiT", "inputs": {"seed": 0, "family": fam}}}
        pos = ["m", 1]
    api["neg"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": pos}}
    api["lat"] = {"class_type": "Pano360TestTinyDiTLatent",
                  "inputs": {"family": fam, "batch_size": 2, "seed": 7, "fill": "random"}}
    lat, neg = ["lat", 0], ["neg", 0]
    if fam == "HunyuanImage21Refiner":  # ComfyUI's refiner graph: the source latent is the image to refine
        api["refine"] = {"class_type": "HunyuanRefinerLatent", "inputs": {
            "positive": pos, "negative": neg, "latent": lat, "noise_augmentation": 0.1}}
        pos, neg, lat = ["refine", 0], ["refine", 1], ["refine", 2]
    models = {"U": ["m", 0]}
    for name, pad, level in (("P0", 0, "latent"), ("P1", 1, "latent")) + ((("T1", 1, "token"),) if token else ()):
        api[f"patch_{name}"] = {"class_type": "Pano360PanoramaPatch",
                                "inputs": {"model": ["m", 0], "padding": pad, "level": level}}
        models[name] = [f"patch_{name}", 0]
    latents = {"": lat}
    if mask:
        lo, hi = MASK_COLS
        api["mask0"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 32, "height": 8}}
        api["mask1"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": hi - lo, "height": 8}}
        api["mask"] = {"class_type": "MaskComposite", "inputs": {"destination": ["mask0", 0], "source": ["mask1", 0],
                                                                 "x": lo, "y": 0, "operation": "add"}}
        api["mlat"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["lat", 0], "mask": ["mask", 0]}}
        latents["M"] = ["mlat", 0]
    saves = {"src": "save_src"}
    api["save_src"] = {"class_type": "SaveLatent", "inputs": {"samples": ["lat", 0],
                                                              "filename_prefix": f"pano15/{fam}_src"}}
    for suffix, lat in latents.items():
        for name, model in models.items():
            if suffix and name == "T1":
                continue
            v = name + suffix
            api[f"ks_{v}"] = {"class_type": "KSampler", "inputs": {
                "model": model, "seed": seed, "steps": 2, "cfg": 2.0, "sampler_name": "euler_ancestral",
                "scheduler": "simple", "denoise": 1.0, "positive": pos, "negative": neg, "latent_image": lat}}
            api[f"save_{v}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"ks_{v}", 0],
                                                                      "filename_prefix": f"pano15/{fam}_{v}"}}
            saves[v] = f"save_{v}"
    return api, saves


def _server_latents(comfy, outputs: dict, saves: dict) -> dict:
    """The latents the SaveLatent nodes wrote, fetched through the server's /view."""
    import safetensors.torch

    got = {}
    for v, nid in saves.items():
        (f,) = outputs[nid]["latents"]
        got[v] = safetensors.torch.load(comfy.view(f["filename"], f.get("subfolder", ""), f.get("type", "output")))[
            "latent_tensor"]
    return got


@pytest.mark.comfy
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fam", SERVER_FAMILIES)
def test_server_every_family_patched_and_unpatched_in_one_graph(comfy, P, dits, fam):
    """Through the HTTP API, one graph per family (batch 2, CFG 2): padding 0 gives exactly the unpatched
    model's latent, padding 1 changes it, the token level (where offered) differs from the latent level;
    with a noise mask the kept columns stay the source latent and only the masked ones are generated."""
    token, mask = P.FAMILIES[fam].token_level, fam in NOISE_MASK_FAMILIES
    api, saves = _server_graph(fam, token, mask)
    got = _server_latents(comfy, comfy.run(api, timeout=240), saves)
    shape = (2, 16, 8, 32) if fam == "Flux" else dits.comfy_latent_shape(fam, 2)
    src = got.pop("src")
    assert src.shape == shape
    for v, x in got.items():
        assert x.shape == shape and torch.isfinite(x).all(), v
    u, p1 = got["U"], got["P1"]
    assert not torch.allclose(u[0], u[1], atol=1e-3)  # batch 2: two different samples
    assert torch.equal(got["P0"], u)  # padding 0 == unpatched (same graph, same seed)
    for b in range(2):
        assert not torch.allclose(p1[b], u[b], atol=1e-4), b  # padding changes every sample
    if token:
        assert not torch.allclose(got["T1"], p1, atol=1e-4)  # wrapped ids differ from linear positions
    if mask:
        lo, hi = MASK_COLS
        assert torch.equal(got["P0M"], got["UM"])
        for v in ("UM", "P1M"):
            x = got[v]
            assert torch.allclose(x[..., :lo], src[..., :lo], atol=1e-5), v  # kept: the source latent
            assert torch.allclose(x[..., hi:], src[..., hi:], atol=1e-5), v
            assert not torch.allclose(x[..., lo:hi], src[..., lo:hi], atol=1e-3), v  # masked: generated
        assert not torch.allclose(got["P1M"][..., lo:hi], got["UM"][..., lo:hi], atol=1e-4)


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_server_bad_panorama_patch_request_then_keeps_serving(comfy):
    """A bad request through the API (token level on Lumina 2, which offers none; a negative padding)
    gives a clear error naming the input; the server then runs the next prompt."""
    api, saves = _server_graph("Lumina2", False, False, seed=11)
    bad = {**api, "patch_P1": {**api["patch_P1"], "inputs": {**api["patch_P1"]["inputs"], "level": "token"}}}
    with pytest.raises(comfy_harness.ComfyExecutionError) as ei:
        comfy.run(bad, timeout=120)
    assert ei.value.node_type == "Pano360PanoramaPatch"
    assert "level: token-level wrapped ids are offered for" in ei.value.exception_message
    assert "Lumina 2 (incl. Z-Image) supports level 'latent'" in ei.value.exception_message
    neg = {**api, "patch_P1": {**api["patch_P1"], "inputs": {**api["patch_P1"]["inputs"], "padding": -1}}}
    with pytest.raises(comfy_harness.ComfyValidationError) as ev:
        comfy.queue(neg)
    assert "patch_P1" in ev.value.node_errors and "padding" in str(ev.value)
    got = _server_latents(comfy, comfy.run(api, timeout=120), saves)  # still serving
    assert torch.equal(got["P0"], got["U"]) and not torch.allclose(got["P1"], got["U"], atol=1e-4)
