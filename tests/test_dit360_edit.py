"""DiT360 editing (pano_core.dit360.editing / attention, pano_core.diffusion.rf_inversion / masks) on the tiny
diffusers Flux."""

from __future__ import annotations

import pytest
import torch

from pano_core.diffusion.circular import pad_latent
from pano_core.diffusion.masks import image_mask_to_latent, keep_mask_for_tokens, latent_mask_to_tokens
from pano_core.diffusion.rf_inversion import edit_latent, eta_schedule, invert_latent, seeded_noise
from pano_core.diffusion.tokens import TokenGrid
from pano_core.dit360 import editing
from pano_core.dit360.attention import FeatureReplacer
from pano_core.errors import PanoInputError

H, W = 64, 128  # latent 8 x 16, tokens 4 x 8


@pytest.fixture(scope="module")
def pipe():
    from tiny_diffusers import build_tiny_flux_pipeline

    p = build_tiny_flux_pipeline(0)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, H, W, generator=g)


@pytest.fixture(scope="module")
def mask():
    m = torch.zeros(1, 1, H, W)
    m[..., 16:48, 40:88] = 1.0  # region to regenerate
    return m


# --------------------------------------------------------------------------- pure parts


def test_mask_is_wrap_padded_not_edge_repeated():
    m = torch.zeros(1, 1, 4, 8)
    m[..., :, 7] = 1.0  # only the right edge column is "edit"
    p = pad_latent(m, 2)
    assert p.shape[-1] == 12
    # left padding = last two columns (wrap), right padding = first two columns
    assert torch.equal(p[..., 0:2], m[..., 6:8])
    assert torch.equal(p[..., 10:12], m[..., 0:2])
    assert p[..., 1].sum() == 4 and p[..., 0].sum() == 0  # edge repeat would give column 0's zeros in both
    # token masks: the padded columns carry the opposite edge
    tok = latent_mask_to_tokens(m)  # (1, 2*4)
    assert tok.shape == (1, 8)
    padded = TokenGrid(h=2, w=4, p=1).pad(tok).view(1, 2, 6)
    assert padded[0, :, 0].all() and not padded[0, :, 5].any()
    keep = keep_mask_for_tokens(tok, 2, 4, 2 * 6)
    assert torch.equal(keep.view(1, 2, 6), ~padded)


def test_image_mask_to_latent_sizes():
    m = torch.zeros(1, 1, 64, 128)
    m[..., 3, 9] = 1.0  # a single pixel marks its whole latent cell
    lat = image_mask_to_latent(m, (8, 16))
    assert lat.shape == (1, 1, 8, 16) and lat.sum() == 1 and lat[0, 0, 0, 1] == 1
    assert image_mask_to_latent(lat, (8, 16)).equal(lat)  # latent-size masks are accepted
    with pytest.raises(PanoInputError, match="mask"):
        image_mask_to_latent(torch.zeros(1, 1, 32, 128), (8, 16))


def _toy_velocity(a: float):
    # a linear "model": v = a * x + 1 (deterministic)
    return lambda x, s: a * x + 1.0


def test_inversion_seeded_and_gamma_one_reaches_target():
    y0 = torch.randn(1, 4, 4, 8)
    sig = torch.linspace(1, 0, 6)
    a = invert_latent(_toy_velocity(0.3), y0, sig, gamma=0.5, seed=7)
    b = invert_latent(_toy_velocity(0.3), y0, sig, gamma=0.5, seed=7)
    c = invert_latent(_toy_velocity(0.3), y0, sig, gamma=0.5, seed=8)
    assert torch.equal(a.latent, b.latent)
    assert not torch.allclose(a.latent, c.latent)
    assert torch.equal(a.target, seeded_noise(y0.shape, 7))
    # gamma = 1 follows the straight line to the seeded target exactly
    d = invert_latent(_toy_velocity(0.3), y0, sig, gamma=1.0, seed=7)
    assert torch.allclose(d.latent, d.target, atol=1e-5)


def test_reverse_eta_one_reconstructs_and_blend_keeps():
    y0 = torch.randn(1, 4, 4, 8)
    z1 = torch.randn(1, 4, 4, 8)
    m = torch.zeros(1, 1, 4, 8)
    m[..., :, 2:5] = 1

    def pair(xs, xe, s, replace):
        return 0.5 * xs - 1.0, 0.5 * xe + 2.0

    res = edit_latent(pair, z1, y0, m, torch.linspace(1, 0, 5), eta=1.0, tau=0.5, blend_until=0.0)
    assert torch.allclose(res.source, y0, atol=1e-5)
    assert torch.allclose(res.edit * (1 - m), y0 * (1 - m), atol=1e-5)
    assert (res.edit - y0)[..., 2:5].abs().mean() > 0.1
    assert eta_schedule(4, 0.9, 0.25, 0.75) == [0.0, 0.9, 0.9, 0.0]
    with pytest.raises(PanoInputError, match="mask"):
        edit_latent(pair, z1, y0, torch.zeros(1, 1, 2, 8), torch.linspace(1, 0, 5))


# --------------------------------------------------------------------------- tiny Flux (diffusers)


def test_seeded_inversion_is_repeatable(pipe, image):
    a = editing.invert(pipe, image, steps=3, seed=5, progress=False)
    b = editing.invert(pipe, image, steps=3, seed=5, progress=False)
    c = editing.invert(pipe, image, steps=3, seed=6, progress=False)
    assert torch.equal(a.latent, b.latent)
    assert not torch.allclose(a.latent, c.latent)
    assert a.latent.shape == (1, 16, H // 8, W // 8)


def test_guidance_reaches_the_model(pipe, image, mask):
    seen = []

    def spy(module, args, kwargs):
        seen.append(kwargs.get("guidance"))

    h = pipe.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        inv = editing.invert(pipe, image, steps=2, guidance=4.25, seed=0, progress=False)
        editing.edit(pipe, inv, mask, prompt="snow", steps=2, guidance=4.25, progress=False, output="latent")
    finally:
        h.remove()
    assert len(seen) == 4
    for g in seen:
        assert g is not None and torch.allclose(g.float(), torch.full_like(g.float(), 4.25))
    # and it changes the result
    inv2 = editing.invert(pipe, image, steps=2, guidance=1.0, seed=0, progress=False)
    assert not torch.allclose(inv.latent, inv2.latent)


def test_edit_keeps_unmasked_and_changes_masked(pipe, image, mask):
    inv = editing.invert(pipe, image, steps=4, seed=0, progress=False)
    states = []
    res = editing.edit(
        pipe, inv, mask, prompt="a red wooden house", source_prompt="", steps=4, eta=1.0, tau=0.5,
        blend_until=0.0, progress=False, output="latent",
        callback=lambda i, n, st: states.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}),
    )
    m = res.mask
    keep = 1 - m
    assert 0 < m.mean() < 1
    last = res.last_replace_step
    assert last >= 0 and states[last]["replaced"] and not states[-1]["replaced"]
    st = states[last]
    # after the last replacement step the kept region of the edit branch is the source branch's
    assert torch.allclose(st["x_edit"] * keep, st["x_src"] * keep, atol=1e-5)
    # at the end: the kept region equals the inversion target y0 (eta = 1 reconstructs exactly)
    assert torch.allclose(res.source, inv.source, atol=1e-4)
    assert torch.allclose(res.edit * keep, inv.source * keep, atol=1e-4)
    # the masked region is generated anew
    changed = ((res.edit - inv.source).abs() * m).sum() / m.sum() / inv.source.shape[1]
    assert changed > 0.05
    # DiT360 default (blending only while sigma > tau) still keeps the unmasked region close
    res2 = editing.edit(pipe, inv, mask, prompt="a red wooden house", steps=4, progress=False, output="latent")
    kept_err = ((res2.edit - inv.source).abs() * keep).sum() / keep.sum()
    masked_err = ((res2.edit - inv.source).abs() * m).sum() / m.sum()
    assert kept_err < masked_err


def test_feature_replacement_pulls_edit_branch_to_source(pipe):
    lat = torch.randn(1, 16, 8, 16, generator=torch.Generator().manual_seed(0))
    vel = editing._FluxVelocity(pipe, lat.shape, padding=1, guidance=2.8)
    pe_s, pool_s, txt = vel.encode("")
    pe_e, pool_e, _ = vel.encode("a completely different prompt")
    pe, pooled = torch.cat([pe_s, pe_e]), torch.cat([pool_s, pool_e])
    m = torch.zeros(1, 1, 8, 16)
    m[..., :, 8:] = 1  # right half is edited, left half kept
    keep = keep_mask_for_tokens(latent_mask_to_tokens(m), 4, 8, 4 * 10)
    x = torch.cat([lat, lat + 0.5 * torch.randn_like(lat)])
    rep = FeatureReplacer(vel.tr, keep)
    with rep:
        rep.enabled = False
        v_off = vel(x, 0.8, pe, pooled, txt)
        rep.enabled = True
        v_on = vel(x, 0.8, pe, pooled, txt)
    assert rep.calls == 2  # one double + one single block
    kept = (1 - m).bool().expand_as(lat)
    d_off = (v_off[1] - v_off[0])[kept[0]].abs().mean()
    d_on = (v_on[1] - v_on[0])[kept[0]].abs().mean()
    assert d_on < 0.5 * d_off
    assert torch.equal(v_on[0], v_off[0])  # the source branch is untouched


def test_velocity_is_one_padded_transformer_call(pipe):
    """The editing velocity (built on DiT360Pipeline's pieces) is exactly one transformer call on
    the packed, circularly padded tokens with wrapped ids, timestep sigma and the guidance,
    cropped and unpacked: checked against a direct diffusers call assembled here by hand."""
    lat = torch.randn(2, 16, 8, 16, generator=torch.Generator().manual_seed(4))
    vel = editing._FluxVelocity(pipe, lat.shape, padding=2, guidance=3.25)
    pe, pooled, txt = vel.encode("a snowy street")
    got = vel(lat, 0.6180339, pe, pooled, txt)

    h, w, p = 4, 8, 2
    tok = lat.view(2, 16, h, 2, w, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, h * w, 64)
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    ids = ids.reshape(h * w, 3)
    grid = TokenGrid(h=h, w=w, p=p, id_mode="wrapped")
    padded_ids = grid.pad_ids(ids)
    assert torch.equal(padded_ids.view(h, w + 2 * p, 3)[:, :p], ids.view(h, w, 3)[:, w - p:])
    with torch.no_grad():
        out = pipe.transformer(
            hidden_states=grid.pad(tok),
            timestep=torch.full((2,), 0.6180339),
            guidance=torch.full((2,), 3.25),
            pooled_projections=pooled.expand(2, -1),
            encoder_hidden_states=pe.expand(2, -1, -1),
            txt_ids=txt,
            img_ids=padded_ids,
            return_dict=False,
        )[0]
    out = grid.crop(out)
    ref = out.view(2, h, w, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(2, 16, 8, 16)
    assert torch.equal(got, ref)
    # a plain FluxPipeline is wrapped in a DiT360Pipeline; a DiT360Pipeline is used as it is
    from pano_core.dit360.pipeline import DiT360Pipeline

    d = DiT360Pipeline(pipe)
    assert isinstance(editing.dit360_pipeline(pipe), DiT360Pipeline)
    assert editing.dit360_pipeline(pipe).flux is pipe
    assert editing.dit360_pipeline(d) is d
    with pytest.raises(PanoInputError, match="padding"):
        editing._FluxVelocity(pipe, lat.shape, padding=3, guidance=1.0)


def test_mask_of_wrong_size_is_a_clear_error(pipe, image):
    with pytest.raises(PanoInputError, match="mask: size 128x32"):
        editing.inpaint(pipe, image, torch.zeros(1, 1, 32, 128), prompt="x", steps=1, progress=False)


def test_place_view_where_p2e_says():
    from pano_core.geometry import p2e

    photo = torch.zeros(1, 3, 32, 32)
    photo[:, 0] = 1.0  # red photo
    canvas, gen = editing.place_view(photo, 60.0, yaw=90.0, pitch=0.0, height=64)
    erp, cov = p2e(photo, 60.0, yaw=90.0, pitch=0.0, erp_hw=(64, 128))
    keep = 1 - gen
    assert torch.equal(keep, (cov >= 0.999).float())
    assert torch.allclose(canvas * keep, erp * keep)
    assert torch.allclose(canvas * gen, 0.5 * gen)
    cols = keep[0, 0].sum(0).nonzero().flatten().float()
    centre_lon = ((cols.mean() + 0.5) / 128 - 0.5) * 360
    assert abs(centre_lon - 90) < 3
    # on the equator the photo spans its horizontal field of view (60 of 360 degrees)
    assert abs(float(keep[0, 0, 32].sum()) - 128 * 60 / 360) <= 2


def test_view_to_panorama_keeps_the_photo(pipe):
    photo = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    res = editing.generate_from_view(
        pipe, photo, 90.0, yaw=-30.0, pitch=10.0, prompt="a beach", height=H, width=W, steps=3, seed=2,
        eta=1.0, blend_until=0.0, progress=False, output="latent",
    )
    canvas, gen = editing.place_view(photo, 90.0, -30.0, 10.0, height=H)
    y0 = editing.encode_image(pipe, canvas)
    lat_gen = image_mask_to_latent(gen, (H // 8, W // 8))
    assert torch.equal(res.mask, lat_gen)
    keep = 1 - lat_gen
    assert keep.sum() > 0 and lat_gen.sum() > 0
    assert torch.allclose(res.edit * keep, y0 * keep, atol=1e-4)
    assert ((res.edit - y0).abs() * lat_gen).sum() / lat_gen.sum() > 0.1
    img = editing.generate_from_view(pipe, photo, 90.0, prompt="a beach", height=H, width=W, steps=2, progress=False)
    assert img.shape == (1, 3, H, W) and torch.isfinite(img).all()
