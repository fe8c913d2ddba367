"""Spatial conditioning under the latent-level panorama padding (Pano360PanoramaPatch, level
``latent``), in-process with ComfyUI's real sampling code and tiny random models built from ComfyUI's
own classes: classic ControlNets (``control`` residuals: FLUX.1 XLabs and InstantX, Qwen-Image
InstantX, a FLUX.1 ControlNet on Chroma), Qwen-Image's DiffSynth "model patch" ControlNet, and Wan's spatial inputs (VACE context,
Fun Camera rays at pixel size, Phantom's ``time_dim_concat``).

For each: what reaches the model is aligned column by column with the padded latent (the padded
columns / tokens equal their source, the interior equals what the unpatched model gets), padding 0
equals the unpatched model, and the user's conds / ControlNet / patch objects are unchanged."""

from __future__ import annotations

import pytest
import torch
from test_circular_video_vae import extras, wan_vae  # noqa: F401 (fixtures: a tiny real Wan 2.1 VAE, Qwen-Image's VAE)
from test_panorama_patch_comfy import P, _free_models, _model, _output_spied, dits, errors, pack  # noqa: F401 (fixtures)

PAD = 2  # token columns per side


class _Seen:
    """An APPLY_MODEL wrapper added after the panorama patch (so inside it): records what the model gets
    (``x``, ``control``, and the kwargs named in ``keys``; ``"c_concat"`` there: that argument too)."""

    def __init__(self, keys=()):
        self.keys = keys
        self.calls = []

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kw):
        rec = {"x": x.detach().clone(), "control": None}
        if control is not None:
            rec["control"] = {k: [None if r is None else r.detach().clone() for r in v] for k, v in control.items()}
        rec.update({k: kw[k].detach().clone() for k in self.keys if isinstance(kw.get(k), torch.Tensor)})
        if "c_concat" in self.keys and c_concat is not None:
            rec["c_concat"] = c_concat.detach().clone()
        self.calls.append(rec)
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)


def _seen(model, keys=()):
    import comfy.patcher_extension

    seen = _Seen(keys)
    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_seen", seen)
    return m, seen


def _run(model, shape, pos, neg=None, steps=2, cfg=1.0):
    import comfy.sample

    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", pos, pos if neg is None else neg,
                               torch.zeros_like(noise), seed=0, disable_pbar=True)


def _latent(pack, model, padding):  # noqa: F811 (the fixture value)
    return pack.Pano360PanoramaPatch().patch(model, padding, "latent")[0]


def _assert_wrapped(t, cols, dim=-1):
    """The ``cols`` padded entries per side along ``dim`` equal their source (opposite edge of the interior)."""
    t = t.movedim(dim, -1)
    assert torch.equal(t[..., :cols], t[..., -2 * cols:-cols]), "left padding != last interior columns"
    assert torch.equal(t[..., -cols:], t[..., cols:2 * cols]), "right padding != first interior columns"


def _crop(t, cols, dim=-1):
    return t.movedim(dim, -1)[..., cols:-cols].movedim(-1, dim)


# ------------------------------------------------------------------------- classic ControlNets (control)


@pytest.fixture(scope="module")
def flux(tiny_models):
    model = tiny_models.build_tiny_flux(0, "dev")
    clip = tiny_models.build_tiny_clip(0)
    return model, clip.encode_from_tokens_scheduled(clip.tokenize("a panorama")), tiny_models.build_tiny_vae(0)


def _controlnet_case(case, tiny_models, dits, flux, wan_vae):  # noqa: F811 (fixture value)
    """(model, latent shape, token rows, token width, plain cond, cond with the ControlNet(s), ControlNet(s))."""
    import nodes

    apply = nodes.ControlNetApplyAdvanced().apply_controlnet
    hint = torch.rand(1, 64, 256, 3, generator=torch.Generator().manual_seed(3))  # IMAGE of the 32 x 8 latent
    if case == "qwen-instantx":
        model, cond = _model(dits, "QwenImage"), dits.cond("QwenImage", 0)
        cn = dits.build_qwen_image_controlnet(0)
        pos, _ = apply(cond, cond, cn, hint, 1.0, 0.0, 1.0, vae=wan_vae)
        return model, dits.latent_shape("QwenImage"), 4, 16, cond, pos, [cn]
    if case == "chroma-flux-xlabs":  # Chroma adds residuals with img += add: they must match the padded tokens
        model, cond = _model(dits, "Chroma"), dits.cond("Chroma", 0)
        cn = dits.build_chroma_flux_controlnet(0)
        pos, _ = apply(cond, cond, cn, hint, 1.0, 0.0, 1.0)
        return model, dits.latent_shape("Chroma"), 4, 16, cond, pos, [cn]
    model, cond, vae = flux
    if case == "flux-instantx":
        cn = tiny_models.build_tiny_flux_controlnet(0, latent_input=True)
        pos, _ = apply(cond, cond, cn, hint, 1.0, 0.0, 1.0, vae=vae)
        return model, (1, 16, 8, 32), 4, 16, cond, pos, [cn]
    # two XLabs ControlNets (pixel hints) chained: their residuals are summed before the model call
    c1 = tiny_models.build_tiny_flux_controlnet(0, latent_input=False)
    c2 = tiny_models.build_tiny_flux_controlnet(1, latent_input=False)
    pos, _ = apply(cond, cond, c1, hint, 1.0, 0.0, 1.0)
    pos, _ = apply(pos, pos, c2, hint.flip(2), 0.7, 0.0, 1.0)
    return model, (1, 16, 8, 32), 4, 16, cond, pos, [c1, c2]


def _residuals(rec):
    return [(k, i, r) for k, v in rec["control"].items() for i, r in enumerate(v) if r is not None]


@pytest.mark.parametrize("case", ["flux-xlabs-chain", "flux-instantx", "qwen-instantx", "chroma-flux-xlabs"])
def test_controlnet_residuals_are_wrap_padded_on_the_token_grid(pack, dits, tiny_models, flux, wan_vae, case):  # noqa: F811
    model, shape, rows, w, cond, pos, cns = _controlnet_case(case, tiny_models, dits, flux, wan_vae)
    hints = [(c, c.cond_hint_original, c.previous_controlnet) for c in cns]
    applied = pos[0][1]["control"]

    ref_m, ref_seen = _seen(model)
    ref = _run(ref_m, shape, pos)
    assert ref_seen.calls[0]["control"] is not None and _residuals(ref_seen.calls[0]), "the ControlNet was not run"
    assert torch.equal(_run(_latent(pack, model, 0), shape, pos), ref)  # padding 0 == unpatched

    m, seen = _seen(_latent(pack, model, PAD))
    out = _run(m, shape, pos)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, _run(_latent(pack, model, PAD), shape, cond), atol=1e-6), "no ControlNet effect"
    assert len(seen.calls) == 2
    for n, rec in enumerate(seen.calls):
        assert rec["x"].shape[-1] == shape[-1] + 2 * PAD * 2
        res = _residuals(rec)
        assert len(res) == len(_residuals(ref_seen.calls[n]))
        for (k, i, r), (_, _, r_ref) in zip(res, _residuals(ref_seen.calls[n])):
            assert r.shape[1] == rows * (w + 2 * PAD), (k, i, r.shape)
            g = r.reshape(r.shape[0], rows, w + 2 * PAD, r.shape[-1])
            _assert_wrapped(g, PAD, dim=2)  # every padded token gets its source token's residual
            if n == 0:  # same input x at the first call: the interior is exactly the unpadded residual
                assert torch.equal(_crop(g, PAD, dim=2), r_ref.reshape(r.shape[0], rows, w, r.shape[-1]))
    # the user's cond and ControlNet objects are untouched
    assert pos[0][1]["control"] is applied
    for c, h, prev in hints:
        assert c.cond_hint_original is h and c.previous_controlnet is prev and c.cond_hint is None


@pytest.mark.parametrize("case", ["qwen-instantx", "chroma-flux-xlabs"])
def test_controlnet_at_the_token_level(pack, dits, tiny_models, flux, wan_vae, case):  # noqa: F811
    """The token level (wrapped rotary ids) keeps the latent level's ControlNet handling: the same
    wrap-padded residuals reach the model, and the wrapped ids still change the result."""
    model, shape, rows, w, cond, pos, cns = _controlnet_case(case, tiny_models, dits, flux, wan_vae)
    m_lat, seen_lat = _seen(_latent(pack, model, PAD))
    lat = _run(m_lat, shape, pos)
    m_tok, seen_tok = _seen(pack.Pano360PanoramaPatch().patch(model, PAD, "token")[0])
    tok = _run(m_tok, shape, pos)
    assert torch.isfinite(tok).all() and not torch.allclose(tok, lat, atol=1e-6), "wrapped ids had no effect"
    assert len(seen_tok.calls) == len(seen_lat.calls) == 2
    for n, rec in enumerate(seen_tok.calls):
        res = _residuals(rec)
        assert res, "the ControlNet residuals did not reach the model"
        for _k, _i, r in res:
            _assert_wrapped(r.reshape(r.shape[0], rows, w + 2 * PAD, r.shape[-1]), PAD, dim=2)
        if n == 0:  # same x at the first call: the same residuals as at the latent level
            for (_, _, a), (_, _, b) in zip(res, _residuals(seen_lat.calls[0])):
                assert torch.equal(a, b)


def test_pad_control_unit(P, errors):  # noqa: F811
    tg = P.TokenGrid(h=2, w=4, p=1)
    shared = torch.arange(8.0).reshape(1, 8, 1)
    ctrl = {"input": [shared, None, shared], "output": [], "middle": []}
    out = P._pad_control(ctrl, tg)
    assert ctrl["input"][0] is shared and len(ctrl["input"]) == 3  # the input dict is not changed
    assert out["input"][1] is None and out["input"][0] is out["input"][2]  # shared stays shared (padded once)
    assert out["input"][0].flatten().tolist() == [3, 0, 1, 2, 3, 0, 7, 4, 5, 6, 7, 4]
    with pytest.raises(errors.PanoInputError, match=r"control: ControlNet residual input\[0\].*2 x 4 = 8 tokens"):
        P._pad_control({"input": [torch.zeros(1, 9, 1)]}, tg)


# ----------------------------------------------------------- Qwen-Image DiffSynth ControlNet (model patch)


class _BlockSpy:
    """Wraps the tiny DiffSynth model's ``control_block``: records the hint tokens each block gets."""

    def __init__(self, fn):
        self.fn = fn
        self.hints = []

    def __call__(self, img, cond, block_id):
        self.hints.append(cond.detach().clone())
        return self.fn(img, cond, block_id)

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options (patches and their models)
        return self


@pytest.mark.parametrize("image_w", [256, 128], ids=["hint-at-latent-size", "hint-resized"])
def test_qwen_diffsynth_controlnet_hint_is_wrap_padded(pack, dits, wan_vae, image_w):  # noqa: F811
    from comfy_extras.nodes_model_patch import DiffSynthCnetPatch, QwenImageDiffsynthControlnet

    fam = "QwenImage"
    shape = dits.latent_shape(fam)
    cond = dits.cond(fam, 0)
    mp = dits.build_qwen_image_diffsynth_patch(0)
    spy = _BlockSpy(mp.model.control_block)
    mp.model.control_block = spy
    image = torch.rand(1, image_w // 4, image_w, 3, generator=torch.Generator().manual_seed(4))

    def node():
        with torch.no_grad():  # as ComfyUI runs nodes (the patch encodes the image when it is made)
            return QwenImageDiffsynthControlnet().diffsynth_controlnet(_model(dits, fam), mp, wan_vae, image, 1.0)[0]

    # the reference run re-encodes a resized hint into its own patch (ComfyUI caches it there): a separate node
    ref = _run(node(), shape, cond)
    ref_hint = spy.hints[-1]
    assert ref_hint.shape[1] == 4 * 16
    model = node()
    (patch,) = [p for p in model.model_options["transformer_options"]["patches"]["double_block"]
                if isinstance(p, DiffSynthCnetPatch)]
    assert patch.encoded_image_size == (image_w // 4, image_w)  # "hint-resized": the panorama patch encodes
    state = (patch.encoded_image, patch.encoded_image.clone(), patch.encoded_image_size)
    spy.hints.clear()
    assert torch.equal(_run(_latent(pack, model, 0), shape, cond), ref)  # padding 0 == unpatched
    spy.hints.clear()

    out = _run(_latent(pack, model, PAD), shape, cond)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, _run(_latent(pack, _model(dits, fam), PAD), shape, cond), atol=1e-6)
    assert spy.hints
    for h in spy.hints:
        g = h.reshape(h.shape[0], 4, 16 + 2 * PAD, h.shape[-1])
        _assert_wrapped(g, PAD, dim=2)
        assert torch.equal(_crop(g, PAD, dim=2), ref_hint.reshape(h.shape[0], 4, 16, h.shape[-1]))
    # the user's patch keeps its own (unpadded) encoding
    assert patch.encoded_image is state[0] and torch.equal(patch.encoded_image, state[1])
    assert patch.encoded_image_size == state[2]


# ------------------------------------------------------------------------------- Wan spatial inputs


def _wan_case(fam):
    g = torch.Generator().manual_seed(6)
    if fam == "WAN21_Vace":
        extra = {"vace_frames": [torch.randn(1, 32, 2, 8, 32, generator=g)],
                 "vace_mask": [torch.rand(1, 64, 2, 8, 32, generator=g)], "vace_strength": [1.0]}
        return extra, "vace_context", 1
    if fam == "WAN21_Camera":  # Plucker rays at pixel size, 4 frames packed per latent frame (24 channels)
        return {"camera_conditions": torch.randn(1, 24, 2, 64, 256, generator=g)}, "camera_conditions", 8
    return {"time_dim_concat": torch.randn(1, 16, 1, 8, 32, generator=g)}, "time_dim_concat", 1  # Phantom refs


@pytest.mark.parametrize("fam", ["WAN21_Vace", "WAN21_Camera", "WAN21"])
def test_wan_spatial_inputs_are_wrap_padded(pack, P, dits, fam):  # noqa: F811
    import node_helpers

    extra, key, scale = _wan_case(fam)
    model = _model(dits, fam)
    shape = dits.latent_shape(fam)
    pos = node_helpers.conditioning_set_values(dits.cond(fam, 0), extra)
    ref_m, ref_seen = _seen(model, (key,))
    ref = _run(ref_m, shape, pos)
    assert key in ref_seen.calls[0], f"{key} did not reach the model"
    assert torch.equal(_run(_latent(pack, model, 0), shape, pos), ref)  # padding 0 == unpatched

    m, seen = _seen(_latent(pack, model, PAD), (key,))
    out = _run(m, shape, pos)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, _run(_latent(pack, model, PAD), shape, dits.cond(fam, 0)), atol=1e-6)
    cols = PAD * P.FAMILIES[fam].patch
    for rec, rec_ref in zip(seen.calls, ref_seen.calls):
        v = rec[key]
        assert rec["x"].shape[-1] == shape[-1] + 2 * cols
        _assert_wrapped(rec["x"], cols)
        assert v.shape[-1] == scale * rec["x"].shape[-1] and v.shape[-2] == scale * shape[-2]
        _assert_wrapped(v, scale * cols)
        assert torch.equal(_crop(v, scale * cols), rec_ref[key])
    assert all(pos[0][1][k] is v for k, v in extra.items())  # the user's cond keeps its own tensors


def test_wan_fun_camera_at_the_token_level(pack, P, dits):  # noqa: F811
    """Fun Camera (``CameraWanModel``: WanModel's blocks, its rotary embedding handed to them through
    ``patches_replace["dit"]``) at the token level, with the camera rays and a start image's ``c_concat``
    (``concat_latent_image``, as WanCameraImageToVideo sets it): every block gets the wrapped embedding (the one
    tests/test_panorama_tokens_comfy.py checks for Wan 2.1), the rays are still padded by 8x the latent columns
    and ``c_concat`` like x, the padded columns of x equal their source at every call, padding 0 equals the
    unpatched model. The model's output at the padded columns equals its source's without the rays (ids and
    ``c_concat`` wrap alike) but not with them: the camera adapter's 3x3 residual convs zero-pad the padded ray
    embedding's outer edge, so a padded token's ray embedding differs from its source's."""
    import node_helpers
    from test_panorama_tokens_comfy import W, _expected_pe, _token_cols, _with_block_spy

    fam, wan = "WAN21_Camera", "WAN21"  # the camera model's blocks and embedding layout are Wan 2.1's
    extra, key, scale = _wan_case(fam)
    start = torch.randn(1, 16, 2, 8, 32, generator=torch.Generator().manual_seed(8))
    extra = {**extra, "concat_latent_image": start}
    model = _model(dits, fam)
    dm = model.model.diffusion_model
    shape = dits.latent_shape(fam)
    pos = node_helpers.conditioning_set_values(dits.cond(fam, 0), extra)
    keys = (key, "c_concat")

    def token(m, p):
        return pack.Pano360PanoramaPatch().patch(m, p, "token")[0]

    ref_m, ref_seen = _seen(model, keys)
    ref = _run(ref_m, shape, pos)
    # in_dim 36 = 16 latent + 4 mask + 16 start-image channels
    assert ref_seen.calls[0]["c_concat"].shape == (1, 20, *shape[2:]) and ref_seen.calls[0]["c_concat"].std() > 0
    assert torch.equal(_run(token(model, 0), shape, pos), ref)  # padding 0 == unpatched
    lat = _run(_latent(pack, model, PAD), shape, pos)

    user, spy = _with_block_spy(model, wan)  # a user's block replacement: it runs, with the wrapped embedding
    m, seen = _seen(token(user, PAD), keys)
    ys = _output_spied(m)
    out = _run(m, shape, pos)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, lat, atol=1e-6) and not torch.allclose(out, ref, atol=1e-6)
    assert not torch.allclose(out, _run(token(model, PAD), shape, dits.cond(fam, 0)), atol=1e-6), "no camera effect"

    assert len(spy.calls) == 2 * len(dm.blocks)  # two steps, every block
    expected = _expected_pe(wan, dm, PAD, None)  # Wan's own embedder on the wrapped ids of 2 frames
    w = W // P.FAMILIES[fam].patch
    for c in spy.calls:
        assert c["pe"].shape[1:] == expected.shape[1:]
        assert torch.allclose(c["pe"], expected.expand_as(c["pe"]), atol=1e-6)
        g = _token_cols(wan, c["pe"], None, PAD)
        assert torch.equal(g[:PAD], g[w:w + PAD]) and torch.equal(g[w + PAD:], g[PAD:2 * PAD])

    cols = PAD * P.FAMILIES[fam].patch

    def out_dev(ys):
        return max(max((y[..., :cols] - y[..., -2 * cols:-cols]).abs().max().item(),
                       (y[..., -cols:] - y[..., cols:2 * cols]).abs().max().item()) for y in ys)

    assert len(seen.calls) == len(ys) == 2
    for rec, rec_ref in zip(seen.calls, ref_seen.calls):
        x, v, cc = rec["x"], rec[key], rec["c_concat"]
        assert x.shape[-1] == shape[-1] + 2 * cols
        _assert_wrapped(x, cols)
        assert v.shape[-1] == scale * x.shape[-1] and v.shape[-2] == scale * shape[-2]
        _assert_wrapped(v, scale * cols)
        assert torch.equal(_crop(v, scale * cols), rec_ref[key])
        assert cc.shape[-1] == x.shape[-1]
        _assert_wrapped(cc, cols)
        assert torch.equal(_crop(cc, cols), rec_ref["c_concat"])
    m = token(model, PAD)
    ys_no_rays = _output_spied(m)
    _run(m, shape, node_helpers.conditioning_set_values(dits.cond(fam, 0), {"concat_latent_image": start}))
    dev = {"rays": out_dev(ys), "no rays": out_dev(ys_no_rays)}
    print("Fun Camera token level, output at the padded columns - their source's:", dev)
    assert dev["no rays"] < 1e-4 and dev["rays"] > 1e-3, dev
    assert all(pos[0][1][k] is v for k, v in extra.items())  # the user's cond keeps its own tensors
