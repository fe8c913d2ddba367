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


@pytest.mark.parametrize("replace", ["attention", "block"])
def test_feature_replacement_modes(pipe, replace):
    """``attention`` (official DiT360): exactly the attention input of every block (the states Q/K/V
    come from; in single blocks the image part of the joined [text, image] sequence) takes the
    source's at kept tokens, while the block inputs (residual stream) stay the edit branch's own.
    ``block``: the block inputs themselves are replaced (residual stream too), which pulls the kept
    region of the edit branch much closer to the source."""
    lat = torch.randn(1, 16, 8, 16, generator=torch.Generator().manual_seed(0))
    vel = editing._FluxVelocity(pipe, lat.shape, padding=1, guidance=2.8)
    pe_s, pool_s, txt = vel.encode("")
    pe_e, pool_e, _ = vel.encode("a completely different prompt")
    pe, pooled = torch.cat([pe_s, pe_e]), torch.cat([pool_s, pool_e])
    m = torch.zeros(1, 1, 8, 16)
    m[..., :, 8:] = 1  # right half is edited, left half kept
    n_img = 4 * 10
    keep = keep_mask_for_tokens(latent_mask_to_tokens(m), 4, 8, n_img)
    x = torch.cat([lat, lat + 0.5 * torch.randn_like(lat)])
    blocks = list(vel.tr.transformer_blocks) + list(vel.tr.single_transformer_blocks)
    seen = {"block": [], "attention": []}

    def spy(kind):
        def hook(module, args, kwargs):
            hs = kwargs.get("hidden_states", args[0] if args else None)
            seen[kind].append(hs[:, -n_img:].detach().clone())  # image tokens are at the end
        return hook

    rep = FeatureReplacer(vel.tr, keep, replace=replace)
    with rep:
        rep.enabled = False
        v_off = vel(x, 0.8, pe, pooled, txt)
        handles = [b.register_forward_pre_hook(spy("block"), with_kwargs=True) for b in blocks]
        handles += [b.attn.register_forward_pre_hook(spy("attention"), with_kwargs=True) for b in blocks]
        rep.enabled = True
        try:
            v_on = vel(x, 0.8, pe, pooled, txt)
        finally:
            for h in handles:
                h.remove()
    assert rep.calls == 2  # one double + one single block
    k = keep[0]
    for kind, states in seen.items():
        assert len(states) == 2
        for i, hs in enumerate(states):
            src, ed = hs[0], hs[1]
            if kind == replace:
                assert torch.equal(ed[k], src[k]), (kind, i)  # kept tokens: the source's
                assert not torch.allclose(ed[~k], src[~k]), (kind, i)  # edited tokens: its own
            elif kind == "block" and i > 0:  # attention mode: the residual stream stays its own
                assert not torch.allclose(ed[k], src[k], atol=1e-4), (kind, i)
    assert torch.equal(v_on[0], v_off[0])  # the source branch is untouched
    assert not torch.allclose(v_on[1], v_off[1])
    kept = (1 - m).bool().expand_as(lat)[0]
    d_off = (v_off[1] - v_off[0])[kept].abs().mean()
    d_on = (v_on[1] - v_on[0])[kept].abs().mean()
    if replace == "block":
        assert d_on < 0.5 * d_off
    with pytest.raises(PanoInputError, match="replace"):
        FeatureReplacer(vel.tr, keep, replace="qkv")


def test_feature_replacement_on_the_joined_text_image_layout(pipe):
    """diffusers 0.32-0.34 feed single blocks the joined [text, image] sequence: only the image
    tokens at the end are replaced; a sequence that is neither layout is a clear error."""
    from pano_core.dit360.attention import image_part

    assert image_part(40, 40, 512) == 0
    assert image_part(552, 40, 512) == 512
    with pytest.raises(PanoInputError, match="mask has 40 tokens, the model sees 60"):
        image_part(60, 40, 512)
    keep = torch.zeros(1, 4, dtype=torch.bool)
    keep[0, :2] = True
    rep = FeatureReplacer(pipe.transformer, keep, replace="block")
    rep.enabled, rep.txt_len = True, 3
    hs = torch.arange(2 * 7, dtype=torch.float32).view(2, 7, 1).repeat(1, 1, 2)
    _, kw = rep._hook(None, (), {"hidden_states": hs})
    out = kw["hidden_states"]
    assert torch.equal(out[0], hs[0])  # source untouched
    assert torch.equal(out[1, :3], hs[1, :3])  # text tokens untouched
    assert torch.equal(out[1, 3:5], hs[0, 3:5])  # kept image tokens from the source
    assert torch.equal(out[1, 5:], hs[1, 5:])  # edited image tokens stay


def test_presets_official_and_pano360():
    """``official`` is exactly the official DiT360 editing settings (DESIGN.md section 5); ``pano360``
    ours; single options override a preset."""
    off = editing.edit_settings("official")
    assert (off.steps, off.guidance, off.inversion_guidance, off.inversion_prompt, off.gamma) == (50, 3.5, 0.0, "empty", 1.0)
    assert eta_schedule(off.steps, off.eta, off.eta_start, off.eta_stop) == [1.0] * 49 + [0.0]  # eta 1 on [0, 49)
    assert (off.tau, off.inpaint_start, off.mu_tokens, off.replace, off.circular_encode, off.padding) == (
        0.5, "noise", "unpadded", "attention", False, 1)
    ours = editing.edit_settings()
    assert ours == editing.PRESETS["pano360"] == editing.EditSettings()
    assert (ours.steps, ours.guidance, ours.inversion_guidance, ours.gamma, ours.eta) == (28, 2.8, None, 0.5, 0.9)
    assert (ours.inpaint_start, ours.mu_tokens, ours.replace, ours.circular_encode) == ("inverted", "padded", "attention", True)
    assert editing.edit_settings("official", steps=3, guidance=None).steps == 3
    with pytest.raises(PanoInputError, match="preset"):
        editing.edit_settings("dit360")
    with pytest.raises(PanoInputError, match="replace"):
        editing.edit_settings(replace="qkv")
    with pytest.raises(PanoInputError, match="stepz"):
        editing.edit_settings(stepz=3)


def test_official_preset_runs_the_official_settings(pipe, image, mask, monkeypatch):
    """The official preset inverts with an empty prompt at guidance 0 and a plain VAE encode, edits
    at guidance 3.5 from fresh noise (inpaint too) with mu from the unpadded token count."""
    calls = []

    def spy(module, args, kwargs):
        calls.append((float(kwargs["guidance"][0]), kwargs["encoder_hidden_states"].detach().clone(),
                      float(kwargs["timestep"][0])))

    encoded = []
    orig_encode = editing.encode_image
    monkeypatch.setattr(editing, "encode_image", lambda p, im, circular_encode=True, encode_pad=None: (
        encoded.append(circular_encode), orig_encode(p, im, circular_encode, encode_pad))[1])
    h = pipe.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        res = editing.inpaint(pipe, image, mask, prompt="a lake", source_prompt="a village", preset="official",
                              steps=3, seed=2, progress=False, output="latent")
    finally:
        h.remove()
    assert encoded == [False]
    assert [c[0] for c in calls] == [0.0] * 3 + [3.5] * 3
    vel = editing._FluxVelocity(pipe, (1, 16, H // 8, W // 8), 1, 0.0)
    empty = vel.encode("").prompt_embeds
    source = vel.encode("a village").prompt_embeds
    for c in calls[:3]:  # inversion: the empty prompt, not the source prompt
        assert torch.allclose(c[1], empty, atol=1e-4) and not torch.allclose(c[1], source, atol=1e-2)
    # mu from the unpadded token count: the edit calls run at its sigmas
    un = editing.flux_sigmas(pipe, 3, (H // 8, W // 8), 1, "unpadded")
    pad = editing.flux_sigmas(pipe, 3, (H // 8, W // 8), 1, "padded")
    assert not torch.allclose(un, pad)
    assert [c[2] for c in calls[3:]] == pytest.approx(un[:-1].tolist(), abs=1e-6)
    # fresh noise in the white region, as outpaint: same result
    res2 = editing.outpaint(pipe, image, mask, prompt="a lake", source_prompt="a village", preset="official",
                            steps=3, seed=2, progress=False, output="latent")
    assert torch.equal(res.edit, res2.edit)


def test_circular_vae_against_the_tiled_reference(pipe):
    """diffusers path: the editing encode is circular by default (8 wrapped latent columns); against
    the perfectly circular reference (input tiled three times, middle third) the edge error of the
    encode falls from a plain one over 4 columns to 8 and the decode's is far below a plain decode
    (Flux VAE numbers: benchmarks/RESULTS.md); the plain encode's latent has a seam the circular
    one has not."""
    from pano_core.diffusion.circular import periodic_reference
    from pano_core.diffusion.vae import vae_decode, vae_encode
    from pano_core.io import read_image
    from pano_core.seams.metrics import wrap_seam_ratio

    img = read_image("tests/assets/snow_village_erp.png")[:, :3]
    img = torch.nn.functional.interpolate(img, size=(64, 256), mode="area")
    vae = pipe.vae
    z = {c: vae_encode(vae, img, wrap_cols=c).float() for c in (0, 4, 8)}
    assert torch.equal(editing.encode_image(pipe, img), z[8])  # editing's default
    assert torch.equal(editing.encode_image(pipe, img, circular_encode=False), z[0])
    z_ref = periodic_reference(lambda x: vae_encode(vae, x).float(), img, scale=1 / 8)

    def edge(x, ref, k):
        d = (x - ref).abs()
        return float(torch.cat([d[..., :k], d[..., -k:]], -1).mean().detach())

    e = {c: edge(z[c], z_ref, 2) for c in z}
    assert e[8] < e[4] < e[0], e
    assert wrap_seam_ratio(z[0]) > 1.15 * wrap_seam_ratio(z_ref)
    assert abs(wrap_seam_ratio(z[8]) - wrap_seam_ratio(z_ref)) < 0.05 * wrap_seam_ratio(z_ref)
    x_ref = periodic_reference(lambda t: vae_decode(vae, t), z_ref, scale=8)
    d = {c: edge(vae_decode(vae, z_ref, wrap_cols=c), x_ref, 16) for c in (0, 4, 8)}
    # this VAE's decoder has a global attention mid-block: wrapped copies shift its softmax, so the
    # decode gain is not monotone here (it is on convolutional decoders, test_dit360_comfy.py)
    assert max(d[4], d[8]) < 0.5 * d[0], d
    assert torch.equal(vae_decode(vae, z_ref, wrap_cols=None), vae_decode(vae, z_ref, wrap_cols=8))


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
