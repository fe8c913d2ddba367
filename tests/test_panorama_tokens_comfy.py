"""Token-level wrapped ids of Pano360PanoramaPatch for Chroma, Qwen-Image, HunyuanImage 2.1 and Wan 2.x
(nodes/_panorama_tokens.py: the rotary embedding handed to patches_replace["dit"]), in-process with
ComfyUI's real sampling code on the tiny random DiTs of tests/comfy_test_nodes/tiny_dits.py."""

from __future__ import annotations

import importlib

import pytest
import test_panorama_patch_comfy as base
import torch

# the latent-level tests' fixtures and helpers (module-scoped fixtures: re-exported, not copied)
pack, errors, dits, _free_models = base.pack, base.errors, base.dits, base._free_models
PACK_NAME, _model, _sample, _spied = base.PACK_NAME, base._model, base._sample, base._spied

FAMILIES = ("Chroma", "QwenImage", "HunyuanImage21", "WAN21", "WAN22")
H, W = 8, 32  # tiny_dits.latent_shape: latent rows and columns
BLOCKS = {"Chroma": (("double_blocks", "double_block"), ("single_blocks", "single_block")),
          "HunyuanImage21": (("double_blocks", "double_block"), ("single_blocks", "single_block")),
          "QwenImage": (("transformer_blocks", "double_block"),),
          "WAN21": (("blocks", "double_block"),), "WAN22": (("blocks", "double_block"),)}


@pytest.fixture(scope="module")
def T(pack):
    return importlib.import_module(f"{PACK_NAME}.nodes._panorama_tokens")


def _patch(pack, model, p, level):
    return pack.Pano360PanoramaPatch().patch(model, p, level)[0]


def _patch_size(fam):
    return 1 if fam == "HunyuanImage21" else 2


def _block_spy():
    """A user's ``patches_replace["dit"]`` entry (another pack) recording the rotary embedding it gets.
    A function (ModelPatcher.clone deep-copies model_options: functions survive that by reference)."""
    calls = []

    def spy(args, extra):
        calls.append({"pe": args["pe"].detach().clone(), "txt": args["txt"].shape[1] if "txt" in args else None})
        return extra["original_block"](args)

    spy.calls = calls
    return spy


def _with_block_spy(model, fam):
    spy = _block_spy()
    m = model.clone()
    dm = model.model.diffusion_model
    for attr, kind in BLOCKS[fam]:
        for i in range(len(getattr(dm, attr))):
            m.set_model_patch_replace(spy, "dit", kind, i)
    return m, spy


def _wrapped_cols(w, p):
    """Width id (padded-grid coordinates) of every padded-grid column with wrapped ids: its source's."""
    j = torch.arange(w + 2 * p)
    return p + (j - p) % w


def _expected_pe(fam, dm, p, txt, wrapped=True):
    """The family's own embedder applied to the ids it builds for the padded latent, with the padded
    columns' width ids replaced by their sources' (built here from ComfyUI's id layouts, independently
    of the patch)."""
    s = _patch_size(fam)
    h, w = H // s, W // s
    wp = w + 2 * p
    cols = (_wrapped_cols(w, p) if wrapped else torch.arange(wp)).float()
    rows = torch.arange(h).float()
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    if fam == "Chroma":
        img = torch.stack([torch.zeros_like(rr), rr, cc], -1).reshape(1, -1, 3)
        return dm.pe_embedder(torch.cat([torch.zeros(1, txt, 3), img], 1))
    if fam == "QwenImage":
        img = torch.stack([torch.zeros_like(rr), rr - h // 2, cc - wp // 2], -1).reshape(1, -1, 3)
        start = round(max(wp // 2, h // 2))
        t = torch.arange(start, start + txt).float().reshape(1, -1, 1).repeat(1, 1, 3)
        return dm.pe_embedder(torch.cat([t, img], 1))
    if fam == "HunyuanImage21":
        img = torch.stack([rr, cc], -1).reshape(1, -1, 2)
        return dm.pe_embedder(torch.cat([img, torch.zeros(1, txt, 2)], 1))
    ids = torch.stack([torch.stack([torch.full_like(rr, f), rr, cc], -1) for f in range(2)])  # 2 frames
    return dm.rope_embedder(ids.reshape(1, -1, 3)).movedim(1, 2)


def _token_cols(fam, pe, txt, p):
    """The image grid of a recorded embedding, its token columns first: (wp, ..., h, ...)."""
    s = _patch_size(fam)
    h, w = H // s, W // s
    wp = w + 2 * p
    if fam in ("WAN21", "WAN22"):
        return pe.unflatten(1, (-1, h, wp)).movedim(3, 0)  # (1, frames, h, wp, ...)
    start = txt if fam in ("Chroma", "QwenImage") else 0
    return pe.narrow(2, start, h * wp).unflatten(2, (h, wp)).movedim(3, 0)  # (B, 1, h, wp, ...)


def test_source_index_gathers_wrapped_ids(pack):
    tokens = importlib.import_module(f"{PACK_NAME}.pano_core.diffusion.tokens")
    for frames, p in ((1, 1), (2, 3)):
        lin = tokens.TokenGrid(h=3, w=12, p=p, id_mode="linear", frames=frames)
        wrap = tokens.TokenGrid(h=3, w=12, p=p, id_mode="wrapped", frames=frames)
        rows = torch.arange(frames * 3).repeat_interleave(12)
        base = torch.stack([torch.zeros(36 * frames), rows, torch.arange(12).repeat(3 * frames) + 5.0], -1)[None]
        ids = lin.pad_ids(base)
        idx = lin.source_index()
        assert idx.shape == (lin.padded_tokens,) and idx.dtype == torch.long
        assert torch.equal(ids.index_select(-2, idx), wrap.pad_ids(base))
        assert not torch.equal(ids, wrap.pad_ids(base))


@pytest.mark.parametrize("fam", FAMILIES)
def test_token_level_padding_zero_and_unpatched_model_unchanged(pack, T, dits, fam):
    import comfy.patcher_extension

    model = _model(dits, fam)
    topts_before = repr(model.model_options.get("transformer_options", {}).get("patches_replace"))
    ref = _sample(dits, model, fam)
    p0 = _patch(pack, model, 0, "token")
    assert p0.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, T.KEY)
    assert torch.equal(_sample(dits, p0, fam), ref)
    tok = _sample(dits, _patch(pack, model, 1, "token"), fam)
    lat = _sample(dits, _patch(pack, model, 1, "latent"), fam)
    assert tok.shape == ref.shape and torch.isfinite(tok).all()
    assert not torch.allclose(tok, ref, atol=1e-6) and not torch.allclose(tok, lat, atol=1e-6)
    # the patched and the unpatched model side by side: the unpatched one is unchanged
    assert torch.equal(_sample(dits, model, fam), ref)
    assert repr(model.model_options.get("transformer_options", {}).get("patches_replace")) == topts_before
    # auto stays latent on these families; re-patching at the latent level drops the token wrapper
    auto = _patch(pack, _patch(pack, model, 1, "token"), 1, "auto")
    assert not auto.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, T.KEY)
    assert torch.equal(_sample(dits, auto, fam), lat)


@pytest.mark.parametrize("fam", FAMILIES)
def test_blocks_get_wrapped_pe_and_user_replacement_runs(pack, dits, fam):
    """Every block (through the user's pre-existing replacement, which still runs) gets the family's own
    embedding of wrapped ids: the padded columns' embedding equals their sources'; the latent level
    hands it linear ids (different embedding at the padded columns)."""
    model = _model(dits, fam)
    dm = model.model.diffusion_model
    nblocks = sum(len(getattr(dm, a)) for a, _ in BLOCKS[fam])
    p, w = 2, W // _patch_size(fam)
    for level in ("token", "latent"):
        user, spy = _with_block_spy(model, fam)
        out = _sample(dits, _patch(pack, user, p, level), fam, batch=2, steps=2, cfg=2.0, neg=dits.cond(fam, 1))
        assert torch.isfinite(out).all()
        assert len(spy.calls) == 2 * nblocks  # two steps, cond + uncond batched, every block
        txt = spy.calls[0]["txt"]
        expected = _expected_pe(fam, dm, p, txt, wrapped=level == "token")
        for c in spy.calls:
            pe = c["pe"]
            assert pe.shape[1:] == expected.shape[1:]
            assert torch.allclose(pe, expected.expand_as(pe), atol=1e-6), level
            g = _token_cols(fam, pe, txt, p)
            same = torch.equal(g[:p], g[w:w + p]) and torch.equal(g[w + p:], g[p:2 * p])
            assert same == (level == "token")
        if level == "token":
            for a, b in zip(spy.calls[:nblocks], spy.calls[1:nblocks]):
                assert torch.equal(a["pe"], b["pe"])


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_padded_columns_equal_source_at_every_call(pack, dits, fam, sampler):
    """Model input: the padded columns equal their source at every call (batch 2 + CFG). Model output:
    with wrapped ids a padded token is its source token for attention (same input, same position), so
    the model's output there equals its source's; with linear ids (latent level) it does not."""

    model = _model(dits, fam)
    pad, cols = 2, 2 * _patch_size(fam)
    outs = {}
    for level in ("token", "latent"):
        m, spy = _spied(_patch(pack, model, pad, level))
        ys = base._output_spied(m)
        out = _sample(dits, m, fam, batch=2, steps=3, cfg=2.0, sampler=sampler, neg=dits.cond(fam, 1))
        assert out.shape == dits.latent_shape(fam, 2) and torch.isfinite(out).all()
        assert len(spy.xs) == len(ys) == 3
        for x in spy.xs + ys:
            assert x.shape[0] == 4 and x.shape[-1] == W + 2 * cols
        for x in spy.xs:
            assert torch.equal(x[..., :cols], x[..., -2 * cols:-cols]) and torch.equal(x[..., -cols:], x[..., cols:2 * cols])
        dev = max(max((y[..., :cols] - y[..., -2 * cols:-cols]).abs().max().item(),
                      (y[..., -cols:] - y[..., cols:2 * cols]).abs().max().item()) for y in ys)
        outs[level] = dev
    assert outs["token"] < 1e-4, outs
    assert outs["latent"] > 1e-3, outs


def test_replacement_added_after_the_patch_is_wrapped_too(pack, dits):
    """Our block entries are installed per call, so a replacement another pack adds downstream of the
    patch does not silently drop the wrapped ids: it runs, with the wrapped embedding."""
    fam, p = "Chroma", 1
    model = _model(dits, fam)
    m, spy = _with_block_spy(_patch(pack, model, p, "token"), fam)
    _sample(dits, m, fam)
    assert len(spy.calls) == 2 * 2  # two steps, two blocks
    expected = _expected_pe(fam, model.model.diffusion_model, p, spy.calls[0]["txt"])
    assert all(torch.allclose(c["pe"], expected.expand_as(c["pe"]), atol=1e-6) for c in spy.calls)


def test_qwen_image_edit_reference_latents_keep_their_pe(pack, dits):
    """Qwen-Image-Edit appends reference-latent tokens (and ids) after the image grid: only the grid's
    padded columns get wrapped ids; text and reference tokens keep the model's own embedding."""
    import comfy.sample

    fam, p = "QwenImage", 2
    model = _model(dits, fam)
    ref = torch.randn(1, 16, 1, 8, 16, generator=torch.Generator().manual_seed(4))
    pos = [[c, {**d, "reference_latents": [ref]}] for c, d in dits.cond(fam, 0)]
    noise = torch.randn(dits.latent_shape(fam), generator=torch.Generator().manual_seed(0))
    pes = {}
    for level in ("token", "latent"):
        m, spy = _with_block_spy(_patch(pack, model, p, level), fam)
        out = comfy.sample.sample(m, noise, 1, 1.0, "euler", "simple", pos, pos, torch.zeros_like(noise), seed=0,
                                  disable_pbar=True)
        assert torch.isfinite(out).all() and len(spy.calls) == 1
        pes[level], txt = spy.calls[0]["pe"], spy.calls[0]["txt"]
    n = (H // 2) * (W // 2 + 2 * p)
    assert pes["token"].shape[2] == txt + n + 4 * 8  # text, padded image grid, reference tokens
    assert torch.equal(pes["token"][:, :, :txt], pes["latent"][:, :, :txt])
    assert torch.equal(pes["token"][:, :, txt + n:], pes["latent"][:, :, txt + n:])
    assert torch.allclose(pes["token"][:, :, txt:txt + n], _expected_pe(fam, model.model.diffusion_model, p, txt)[:, :, txt:],
                          atol=1e-6)
    assert not torch.equal(pes["token"][:, :, txt:txt + n], pes["latent"][:, :, txt:txt + n])


def test_area_crop_calls_keep_their_own_pe(pack, dits):
    """Area conditioning: the crop calls are not padded, so their blocks keep the model's embedding."""
    import comfy.sample
    import node_helpers

    fam = "Chroma"
    model = _model(dits, fam)
    m, spy = _with_block_spy(_patch(pack, model, 1, "token"), fam)
    pos = dits.cond(fam, 0)
    area = node_helpers.conditioning_set_values(dits.cond(fam, 1), {"area": (8, 16, 0, 8), "strength": 1.0,
                                                                    "set_area_to_bounds": False})
    noise = torch.randn(dits.latent_shape(fam), generator=torch.Generator().manual_seed(0))
    out = comfy.sample.sample(m, noise, 2, 1.0, "euler", "simple", pos + area, pos, torch.zeros_like(noise), seed=0,
                              disable_pbar=True)
    assert torch.isfinite(out).all()
    lens = {c["pe"].shape[2] - c["txt"] for c in spy.calls if c["txt"] is not None}
    assert lens == {4 * 8, 4 * 18}, lens  # crop: 4 x 8 tokens; full: 4 x (16 + 2)


def test_token_level_errors_list_the_offering_families(pack, dits, errors):
    with pytest.raises(errors.PanoInputError, match="offered for FLUX.1.*Chroma, .*Qwen-Image.*Wan 2.2; Lumina 2"):
        pack.Pano360PanoramaPatch().patch(_model(dits, "Lumina2"), 1, "token")


def _inprocess_ksampler(dits, model, fam, latent, seed, steps, sampler):
    """What KSampler does with an empty latent (cfg 1, the same conditioning both sides), in this process."""
    import comfy.sample

    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed)
    pos = dits.cond(fam, 0)
    return comfy.sample.sample(model, noise, steps, 1.0, sampler, "simple", pos, pos, latent, seed=seed,
                               disable_pbar=True)


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_server_token_and_latent_level_wan_in_one_graph(comfy, pack, dits):
    """The real server, tiny Wan 2.1 (a 2-frame video latent): the token level, the latent level, the token
    level at padding 0 and the unpatched model in one graph. Padding 0 equals the unpatched model; token
    and latent differ from it and from each other; each equals the same sampling run in this process
    (so the server ran the token level, not a fallback). A bad request first (level=token on Lumina 2:
    a clear error naming the level and the families that offer it; an unknown level: rejected by
    validation), and the server keeps serving."""
    import comfy_harness as ch
    import safetensors.torch

    bad = {
        "1": {"class_type": "Pano360TestTinyDiT", "inputs": {"seed": 0, "family": "Lumina2"}},
        "2": {"class_type": "Pano360PanoramaPatch", "inputs": {"model": ["1", 0], "padding": 1, "level": "token"}},
        "3": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 256, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
                                                   "positive": ["1", 1], "negative": ["1", 1],
                                                   "latent_image": ["3", 0]}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "pano_tok_bad"}},
    }
    with pytest.raises(ch.ComfyExecutionError) as ei:
        comfy.run(bad, timeout=120)
    assert ei.value.node_type == "Pano360PanoramaPatch"
    assert "level: token-level wrapped ids are offered for" in ei.value.exception_message
    assert "Lumina 2 (incl. Z-Image) supports level 'latent'" in ei.value.exception_message
    with pytest.raises(ch.ComfyValidationError):
        comfy.run({**bad, "2": {**bad["2"], "inputs": {**bad["2"]["inputs"], "level": "tokens"}}}, timeout=60)

    fam, seed, steps, sampler = "WAN21", 3, 2, "euler_ancestral"
    ks = {"seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": sampler, "scheduler": "simple", "denoise": 1.0,
          "positive": ["1", 1], "negative": ["1", 1], "latent_image": ["2", 0]}
    api = {
        "1": {"class_type": "Pano360TestTinyDiT", "inputs": {"seed": 0, "family": fam}},
        # (1, 16, 2, 8, 32): two latent frames of 8 x 32 (16 tokens wide), as tiny_dits.latent_shape
        "2": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 256, "height": 64, "length": 5,
                                                                 "batch_size": 1}},
    }
    runs = {"token": ("token", 2), "latent": ("latent", 2), "token0": ("token", 0), "plain": None}
    for i, (name, how) in enumerate(runs.items()):
        model = ["1", 0]
        if how is not None:
            api[f"p{i}"] = {"class_type": "Pano360PanoramaPatch",
                            "inputs": {"model": ["1", 0], "padding": how[1], "level": how[0]}}
            model = [f"p{i}", 0]
        api[f"k{i}"] = {"class_type": "KSampler", "inputs": {**ks, "model": model}}
        api[f"s{i}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"k{i}", 0],
                                                              "filename_prefix": f"pano_tok_{name}"}}
    out = comfy.run(api, timeout=240)
    got = {}
    for i, name in enumerate(runs):
        (loc,) = out[f"s{i}"]["latents"]
        raw = comfy.view(loc["filename"], loc.get("subfolder", ""), loc.get("type", "output"))
        got[name] = safetensors.torch.load(raw)["latent_tensor"]
    assert all(v.shape == (1, 16, 2, 8, 32) and torch.isfinite(v).all() for v in got.values())
    assert torch.equal(got["token0"], got["plain"])
    assert (got["token"] - got["plain"]).abs().max() > 1e-3
    assert (got["latent"] - got["plain"]).abs().max() > 1e-3
    assert (got["token"] - got["latent"]).abs().max() > 1e-3
    model = _model(dits, fam)
    empty = torch.zeros(1, 16, 2, 8, 32)
    for name in ("token", "latent", "plain"):
        m = model if runs[name] is None else _patch(pack, model, runs[name][1], runs[name][0])
        ref = _inprocess_ksampler(dits, m, fam, empty, seed, steps, sampler)
        assert torch.allclose(got[name], ref, atol=1e-4, rtol=1e-4), (name, (got[name] - ref).abs().max())
