"""DiT360 patch with spatial conditioning (in-process, real ComfyUI sampling, tiny models).

ControlNet hints, area conditioning (absolute and percentage) and cond masks must line up with
the wrap-padded latent the patch samples on, the same way they line up with the plain latent
without the patch; and the user's conds and ControlNet objects must not change.
"""

from __future__ import annotations

import importlib

import comfy_harness
import pytest
import torch

PACK_NAME = "pano360_pack_dit360_conds_under_test"
LAT_H, LAT_W = 8, 32  # 64 x 256 px -> 4 x 16 tokens
P_TOK = 1
COLS = 2 * P_TOK  # latent columns per side


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.dit360")


@pytest.fixture(scope="module")
def P(pack):
    return importlib.import_module(f"{PACK_NAME}.nodes._dit360_patch")


@pytest.fixture(scope="module")
def circular(pack):
    return importlib.import_module(f"{PACK_NAME}.pano_core.seams.circular")


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models.build_tiny_flux(0, "dev")


@pytest.fixture(scope="module")
def vae(tiny_models):
    return tiny_models.build_tiny_vae(0)


@pytest.fixture(scope="module")
def cond(tiny_models):
    clip = tiny_models.build_tiny_clip(0)
    return clip.encode_from_tokens_scheduled(clip.tokenize("This is a panorama. a harbour at dusk"))


def _noise(seed=0):
    return torch.randn(1, 16, LAT_H, LAT_W, generator=torch.Generator().manual_seed(seed))


def _sample(model, pos, neg, steps=2, cfg=1.0, noise=None):
    import comfy.sample

    noise = _noise() if noise is None else noise
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", pos, neg, torch.zeros_like(noise),
                               seed=0, disable_pbar=True)


def _patched(pack, model):
    return pack.Pano360DiT360Patch().patch(model, P_TOK, "wrapped", "none")[0]


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

    patched, rec = _with_recorder(_patched(pack, model))
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
    out = _sample(_patched(pack, model), cond + masked, cond, steps=2, cfg=2.0)
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

    out = _sample(_patched(pack, model), pos, neg, steps=2, cfg=1.0)
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
    patched = _patched(pack, model)
    with_cn = _sample(patched, pos, neg, steps=2)
    without = _sample(patched, cond, cond, steps=2)
    assert not torch.allclose(with_cn, without)
    px = COLS * 8
    for s, h in zip(spies, (hint, hint.flip(2))):
        assert s.hints and s.hints[0].shape[-1] == 256 + 2 * px
        assert torch.allclose(s.hints[0][..., px:-px], h.movedim(-1, 1), atol=1e-6)
    # positive and negative shared one ControlNet object per link: the padded copies are shared too
    assert pos[0][1]["control"] is neg[0][1]["control"]
