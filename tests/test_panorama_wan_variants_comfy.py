"""Pano360PanoramaPatch on the other Wan variants ComfyUI 0.3.75 ships (model_base WAN21_HuMo, WAN22_Animate,
WAN22_S2V), in-process with ComfyUI's real sampling code and tiny random models built from ComfyUI's own classes
(tests/comfy_test_nodes/tiny_dits.py), each with the inputs its ComfyUI node hands the model:

* HuMo: reference frames (``reference_latent``, appended after the video as frames of the video's size: its
  audio cross-attention groups the tokens per frame) wrap-padded like x; ``audio_embed`` left alone;
* Animate: ``pose_latents`` (added onto x's tokens) and the concat image + mask (``c_concat``) wrap-padded; the
  512 x 512 face crops (``face_pixel_values``) and CLIP features left alone;
* S2V: ``control_video`` (added onto x's tokens), the reference frame (``reference_latent``: its tokens must
  match a video frame's) and ``reference_motion`` (earlier frames of the same video, packed by the model at
  1x, 2x and 4x coarser token grids: every grid wrap-padded by whole tokens, so the padding must be a multiple
  of 4 token columns) wrap-padded; ``audio_embed`` left alone.

Per variant: padding 0 equals the unpatched model; every spatial input that reaches the model is wrap-padded
with its interior equal to the unpatched model's; non-spatial inputs reach it unchanged; the padded columns of
x equal their source at every call (euler, euler_ancestral); the user's conds are unchanged; and for HuMo and
Animate the token level (wrapped rotary ids in every block, HuMo's reference frames included)."""

from __future__ import annotations

import types

import pytest
import test_panorama_tokens_comfy as tok
import torch
from test_panorama_control_comfy import _assert_wrapped, _crop, _latent, _run, _Seen
from test_panorama_patch_comfy import (  # noqa: F401 (fixtures)
    P,
    _free_models,
    _model,
    _Outer,
    _output_spied,
    _spied,
    dits,
    errors,
    pack,
)

VARIANTS = ("WAN21_HuMo", "WAN22_Animate", "WAN22_S2V")
PAD = 4  # token columns per side: a multiple of 4 (S2V's reference_motion)
T, H, W = 2, 8, 32  # tiny_dits.latent_shape: frames, rows, columns


def _case(fam, seed=6):
    """(extra cond values as the family's ComfyUI node sets them, spatial apply_model kwargs (with scale),
    non-spatial apply_model kwargs)."""
    g = torch.Generator().manual_seed(seed)
    if fam == "WAN21_HuMo":  # WanHuMoImageToVideo: one reference frame of the video's size, audio per latent frame
        extra = {"reference_latents": [torch.randn(1, 16, 1, H, W, generator=g)],
                 "audio_embed": torch.randn(1, T, 8, 5, 1280, generator=g)}
        return extra, ("reference_latent", "c_concat"), ("audio_embed",)
    if fam == "WAN22_Animate":  # WanAnimateToVideo: reference frame + motion image in the concat latent, pose video
        extra = {"concat_latent_image": torch.randn(1, 16, T, H, W, generator=g),
                 "concat_mask": torch.rand(1, 4, T, H, W, generator=g),
                 "pose_video_latent": torch.randn(1, 16, T - 1, H, W, generator=g),
                 "face_video_pixels": torch.rand(1, 3, 1, 512, 512, generator=g) * 2 - 1,
                 "clip_vision_output": types.SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, 1280, generator=g))}
        return extra, ("pose_latents", "c_concat"), ("face_pixel_values", "clip_fea")
    # WanSoundImageToVideo(Extend): control video, reference image, the last latent frames of the previous chunk
    extra = {"control_video": torch.randn(1, 16, T, H, W, generator=g),
             "reference_latents": [torch.randn(1, 16, 1, H, W, generator=g)],
             "reference_motion": torch.randn(1, 16, 5, H, W, generator=g),
             "audio_embed": torch.randn(1, 25, 1024, 4 * T, generator=g)}
    return extra, ("control_video", "reference_latent", "reference_motion"), ("audio_embed",)


@pytest.fixture(autouse=True)
def _fast_face_encoder(dits, monkeypatch):  # noqa: F811 (fixture value)
    """Animate's face motion encoder (ComfyUI's LIA encoder: 20 M parameters on 512 x 512 crops, ~3 s a crop
    on the test machine) replaced by a cheap stand-in with its output shape, (crops, 512): it sees only the
    face crops, never the latent. test_animate_real_face_encoder runs the real one (monkeypatch.undo)."""
    g = torch.Generator().manual_seed(11)
    proj = torch.randn(3, 512, generator=g)
    enc = _model(dits, "WAN22_Animate").model.diffusion_model.motion_encoder
    monkeypatch.setattr(enc, "get_motion", lambda img: img.mean(dim=(2, 3)).to(proj.dtype) @ proj)


def _cond(dits, fam, extra, seed=0):  # noqa: F811 (fixture value)
    import node_helpers

    return node_helpers.conditioning_set_values(dits.cond(fam, seed), extra)


class _SeenAll(_Seen):
    """The control tests' recorder, also recording ``c_concat`` (a positional argument)."""

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kw):
        out = super().__call__(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kw)
        if isinstance(c_concat, torch.Tensor):
            self.calls[-1]["c_concat"] = c_concat.detach().clone()
        return out


def _seen_all(model, keys):
    import comfy.patcher_extension

    seen = _SeenAll(keys)
    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_seen", seen)
    return m, seen


def _snapshot(extra):
    return {k: (v, [t.clone() for t in v] if isinstance(v, list) else v.clone() if isinstance(v, torch.Tensor) else v)
            for k, v in extra.items()}


def _unchanged(cond, snap):
    for k, (obj, val) in snap.items():
        assert cond[0][1][k] is obj, k
        if isinstance(obj, list):
            assert all(torch.equal(a, b) for a, b in zip(obj, val)), k
        elif isinstance(obj, torch.Tensor):
            assert torch.equal(obj, val), k


@pytest.mark.parametrize("fam", VARIANTS)
def test_spatial_inputs_wrap_padded_others_untouched(pack, P, dits, fam):  # noqa: F811
    extra, spatial, other = _case(fam)
    model = _model(dits, fam)
    assert tuple(P.FAMILIES[fam].spatial) and all(k in P.FAMILIES[fam].spatial for k in spatial if k != "c_concat")
    shape = dits.latent_shape(fam)
    pos = _cond(dits, fam, extra)
    snap = _snapshot(extra)
    keys = spatial + other
    ref_m, ref_seen = _seen_all(model, keys)
    ref = _run(ref_m, shape, pos)
    for k in keys:
        assert k in ref_seen.calls[0], f"{k} did not reach the model"
    assert torch.equal(_run(_latent(pack, model, 0), shape, pos), ref)  # padding 0 == unpatched
    plain = _run(_latent(pack, model, PAD), shape, dits.cond(fam, 0))

    m, seen = _seen_all(_latent(pack, model, PAD), keys)
    out = _run(m, shape, pos)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, ref, atol=1e-6) and not torch.allclose(out, plain, atol=1e-6)
    cols = PAD * P.FAMILIES[fam].patch
    assert len(seen.calls) == len(ref_seen.calls) == 2
    for rec, rec_ref in zip(seen.calls, ref_seen.calls):
        assert rec["x"].shape[-1] == W + 2 * cols
        _assert_wrapped(rec["x"], cols)
        for k in spatial:  # the video's size, padded like x; interior = what the unpatched model gets
            v = rec[k]
            assert v.shape[-2:] == (H, W + 2 * cols), (k, v.shape)
            _assert_wrapped(v, cols)
            assert torch.equal(_crop(v, cols), rec_ref[k]), k
        for k in other:
            assert torch.equal(rec[k], rec_ref[k]), k
    _unchanged(pos, snap)


@pytest.mark.parametrize("fam", VARIANTS)
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_padded_columns_equal_source_at_every_call(pack, P, dits, fam, sampler):  # noqa: F811
    """Batch 2, CFG 2, the family's inputs present: every model call sees x padded, its padded columns equal
    to their source; the sampler (outside) only the unpadded latent."""
    import comfy.patcher_extension
    import comfy.sample

    extra, _, _ = _case(fam)
    outer = _Outer()
    base = _model(dits, fam).clone()
    base.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_outer", outer)
    m, spy = _spied(_latent(pack, base, PAD))
    shape = dits.latent_shape(fam, 2)
    pos, neg = _cond(dits, fam, extra), _cond(dits, fam, extra, seed=1)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = comfy.sample.sample(m, noise, 3, 2.0, sampler, "simple", pos, neg, torch.zeros_like(noise), seed=0,
                              disable_pbar=True)
    assert out.shape == shape and torch.isfinite(out).all()
    cols = PAD * P.FAMILIES[fam].patch
    assert len(spy.xs) == len(outer.shapes) == 3
    for x, outer_shape in zip(spy.xs, outer.shapes):
        assert outer_shape == (4, *shape[1:])
        assert x.shape == (*outer_shape[:-1], W + 2 * cols)
        _assert_wrapped(x, cols)


class _PackerSpy:
    """Wraps S2V's FramePackMotioner.forward: records the motion tokens it packs."""

    def __init__(self, fn):
        self.fn = fn
        self.tokens = []

    def __call__(self, *a, **kw):
        out = self.fn(*a, **kw)
        self.tokens.append(out[0].detach().clone())
        return out


def _motion_grids(tokens, p):
    """S2V motion tokens -> (1x grid (4 x w), 2x grid (2 x w/2), 4x grid (4 frames x 1 x w/4)), w = 16 + 2p."""
    w = W // 2 + 2 * p
    n1, n2 = (H // 2) * w, (H // 4) * (w // 2)
    g1 = tokens[:, :n1].unflatten(1, (H // 2, w))
    g2 = tokens[:, n1:n1 + n2].unflatten(1, (H // 4, w // 2))
    g4 = tokens[:, n1 + n2:].unflatten(1, (4, H // 8, w // 4))
    return g1, g2, g4


def test_s2v_motion_frames_wrap_padded_at_every_compression(pack, dits, monkeypatch):  # noqa: F811
    """reference_motion, padded by the latent's columns, is packed by the model into 1x, 2x and 4x tokens: each
    grid is wrap-padded by whole tokens (PAD, PAD/2, PAD/4 per side) with the unpatched model's tokens inside."""
    fam = "WAN22_S2V"
    extra, _, _ = _case(fam)
    model = _model(dits, fam)
    packer = model.model.diffusion_model.frame_packer
    spy = _PackerSpy(packer.forward)
    monkeypatch.setattr(packer, "forward", spy)
    pos, shape = _cond(dits, fam, extra), dits.latent_shape(fam)
    _run(model, shape, pos, steps=1)
    ref = _motion_grids(spy.tokens[-1], 0)
    _run(_latent(pack, model, PAD), shape, pos, steps=1)
    got = _motion_grids(spy.tokens[-1], PAD)
    assert spy.tokens[-1].shape[1] == 1.5 * (H // 2) * (W // 2 + 2 * PAD)  # = 1.5 padded frames, as unpadded
    for g, r, c in zip(got, ref, (PAD, PAD // 2, PAD // 4)):
        _assert_wrapped(g.movedim(-2, -1), c)  # token columns last
        assert torch.allclose(_crop(g.movedim(-2, -1), c), r.movedim(-2, -1), atol=1e-5)


def test_animate_real_face_encoder(pack, dits, monkeypatch):  # noqa: F811
    """With ComfyUI's real face motion encoder: the padded Animate model runs with the face crops, which reach
    it unchanged (not padded), and they change the result."""
    monkeypatch.undo()
    fam = "WAN22_Animate"
    extra, _, _ = _case(fam)
    shape = dits.latent_shape(fam)
    m, seen = _seen_all(_latent(pack, _model(dits, fam), PAD), ("face_pixel_values",))
    pos = _cond(dits, fam, extra)
    out = _run(m, shape, pos, steps=1)
    assert torch.isfinite(out).all() and len(seen.calls) == 1
    assert torch.equal(seen.calls[0]["face_pixel_values"], extra["face_video_pixels"])
    no_face = _run(_latent(pack, _model(dits, fam), PAD), shape,
                   _cond(dits, fam, {k: v for k, v in extra.items() if k != "face_video_pixels"}), steps=1)
    assert not torch.allclose(out, no_face, atol=1e-6)


def test_s2v_motion_needs_padding_multiple_of_4(pack, dits, errors):  # noqa: F811
    fam = "WAN22_S2V"
    extra, _, _ = _case(fam)
    shape = dits.latent_shape(fam)
    with pytest.raises(errors.PanoInputError, match=r"padding: with Wan 2.2 S2V's reference_motion the padding must "
                                                    r"be a multiple of 4 token columns.*got 2"):
        _run(_latent(pack, _model(dits, fam), 2), shape, _cond(dits, fam, extra))
    # without motion frames any padding works (here 1, with the reference frame and control video)
    extra.pop("reference_motion")
    out = _run(_latent(pack, _model(dits, fam), 1), shape, _cond(dits, fam, extra))
    assert out.shape == shape and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------- token level


def _block_spied(model):
    spy = tok._block_spy()
    m = model.clone()
    for i in range(len(model.model.diffusion_model.blocks)):
        m.set_model_patch_replace(spy, "dit", "double_block", i)
    return m, spy


def _expected_wan_pe(dm, frames, p, wrapped=True):
    """The model's rope embedder on the padded grid's ids for ``frames`` consecutive frames (width ids of the
    padded columns: their sources' when wrapped), built independently of the patch."""
    h, w = H // 2, W // 2
    cols = (tok._wrapped_cols(w, p) if wrapped else torch.arange(w + 2 * p)).float()
    rr, cc = torch.meshgrid(torch.arange(h).float(), cols, indexing="ij")
    ids = torch.stack([torch.stack([torch.full_like(rr, f), rr, cc], -1) for f in range(frames)])
    return dm.rope_embedder(ids.reshape(1, -1, 3)).movedim(1, 2)


@pytest.mark.parametrize("fam", ["WAN21_HuMo", "WAN22_Animate"])
def test_token_level(pack, P, dits, fam):  # noqa: F811
    """Padding 0 equals the unpatched model; every block gets the model's embedding of wrapped ids (HuMo: its
    reference frame, appended as frame T, too); padded tokens are then their sources for attention, so the
    model's output at the padded columns equals its source's (not so at the latent level)."""

    extra, _, _ = _case(fam)
    model = _model(dits, fam)
    dm = model.model.diffusion_model
    shape = dits.latent_shape(fam)
    pos = _cond(dits, fam, extra)
    assert P.FAMILIES[fam].token_level
    ref = _run(model, shape, pos)
    assert torch.equal(_run(pack.Pano360PanoramaPatch().patch(model, 0, "token")[0], shape, pos), ref)
    frames = T + (1 if fam == "WAN21_HuMo" else 0)
    cols = PAD * 2
    dev = {}
    for level in ("token", "latent"):
        user, blocks = _block_spied(model)
        m, spy = _spied(pack.Pano360PanoramaPatch().patch(user, PAD, level)[0])
        ys = _output_spied(m)
        out = _run(m, shape, pos)
        assert torch.isfinite(out).all() and len(ys) == 2
        assert len(blocks.calls) == 2 * len(dm.blocks)
        expected = _expected_wan_pe(dm, frames, PAD, wrapped=level == "token")
        for c in blocks.calls:
            assert c["pe"].shape[1:] == expected.shape[1:]
            assert torch.allclose(c["pe"], expected.expand_as(c["pe"]), atol=1e-6), level
        dev[level] = max(max((y[..., :cols] - y[..., -2 * cols:-cols]).abs().max().item(),
                              (y[..., -cols:] - y[..., cols:2 * cols]).abs().max().item()) for y in ys)
        if level == "token":
            tok_out = out
        else:
            assert not torch.allclose(out, tok_out, atol=1e-6)
    assert dev["token"] < 1e-4 and dev["latent"] > 1e-3, dev


def test_s2v_offers_no_token_level(pack, dits, errors):  # noqa: F811
    with pytest.raises(errors.PanoInputError, match="token-level wrapped ids are offered for"):
        pack.Pano360PanoramaPatch().patch(_model(dits, "WAN22_S2V"), 1, "token")
