"""Unit tests of the token grid and circular padding (pano_core.diffusion.tokens / .circular)."""

from __future__ import annotations

import pytest
import torch

from pano_core.diffusion import circular as C
from pano_core.diffusion.schedules import shift_mu
from pano_core.diffusion.tokens import TokenGrid
from pano_core.errors import PanoInputError
from pano_core.seams.metrics import wrap_seam_ratio


def G(h, w, p, mode="wrapped", **kw):  # noqa: N802 - reads like the grid it builds
    return TokenGrid(h=h, w=w, p=p, id_mode=mode, **kw)


def _flux_ids(h: int, w: int, batch: int | None = 2) -> torch.Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    ids = ids.reshape(h * w, 3)
    return ids if batch is None else ids.unsqueeze(0).repeat(batch, 1, 1)


def _pack(lat: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2*W/2, C*4) like Flux."""
    b, c, hh, ww = lat.shape
    x = lat.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (hh // 2) * (ww // 2), c * 4)


@pytest.mark.parametrize("p", [0, 1, 2, 4])
def test_pad_tokens_token_by_token(p):
    h, w, ch = 3, 16, 5
    tok = torch.randn(2, h * w, ch)
    out = G(h, w, p).pad(tok)
    assert out.shape == (2, h * (w + 2 * p), ch)
    g = tok.reshape(2, h, w, ch)
    wp = w + 2 * p
    for r in range(h):
        for c in range(wp):
            src = (c - p) % w  # padded column c comes from this original column
            assert torch.equal(out[:, r * wp + c], g[:, r, src]), (r, c)
    assert torch.equal(G(h, w, p).crop(out), tok)


def test_pad_tokens_zero_is_identity_object():
    tok = torch.randn(1, 8 * 4, 3)
    assert G(4, 8, 0).pad(tok) is tok


@pytest.mark.parametrize("batched", [True, False])
def test_wrapped_ids_token_by_token(batched):
    h, w, p = 4, 12, 3
    ids = _flux_ids(h, w, 2 if batched else None)
    out = G(h, w, p, "wrapped").pad_ids(ids)
    wp = w + 2 * p
    assert out.shape[-2] == h * wp and out.dtype == ids.dtype
    flat = out if not batched else out[1]
    for r in range(h):
        for c in range(wp):
            t = flat[r * wp + c]
            assert t[0] == 0 and t[1] == r
            assert t[2] == (c - p) % w, (r, c, t)
    assert torch.equal(G(h, w, p).crop_ids(out), ids)


def test_linear_ids_extend_column():
    h, w, p = 2, 8, 2
    ids = _flux_ids(h, w)
    out = G(h, w, p, "linear").pad_ids(ids)
    wp = w + 2 * p
    for r in range(h):
        cols = out[0, r * wp : (r + 1) * wp, 2].tolist()
        assert cols == list(range(-p, w + p))
        assert out[0, r * wp : (r + 1) * wp, 1].tolist() == [r] * wp
    assert torch.equal(G(h, w, p).crop_ids(out), ids)


def test_linear_ids_respect_offset_and_step():
    # ids with an index offset and spacing 2 (e.g. scaled reference grids)
    h, w, p = 1, 6, 1
    ids = _flux_ids(h, w, None)
    ids[:, 2] = ids[:, 2] * 2 + 10
    out = G(h, w, p, "linear").pad_ids(ids)
    assert out[:, 2].tolist() == [8, 10, 12, 14, 16, 18, 20, 22]


def test_tokens_and_ids_match_packing_of_wrapped_latent():
    """Padding latent columns by 2p then packing == packing then padding tokens by p."""
    lat = torch.randn(2, 16, 8, 24)
    p = 2
    a = _pack(G(4, 12, p).pad_latent(lat))
    b = G(4, 12, p).pad(_pack(lat))
    assert torch.equal(a, b)


def test_resync_tokens_rebuilds_from_current_edges():
    h, w, p = 2, 8, 2
    tok = G(h, w, p).pad(torch.randn(1, h * w, 4))
    g = tok.reshape(1, h, w + 2 * p, 4).clone()
    g[:, :, :p] += 5.0  # padded columns drift away
    g[:, :, -p:] -= 3.0
    g[:, :, p] += 1.0  # interior first column changes
    drifted = g.reshape(1, -1, 4)
    out = G(h, w, p).resync(drifted).reshape(1, h, w + 2 * p, 4)
    assert torch.equal(out[:, :, p : p + w], g[:, :, p : p + w])
    assert torch.equal(out[:, :, :p], g[:, :, w : w + p])  # last interior columns
    assert torch.equal(out[:, :, -p:], g[:, :, p : 2 * p])  # first interior columns (changed)


def test_latent_pad_crop_resync():
    x = torch.arange(2 * 3 * 4 * 10, dtype=torch.float32).reshape(2, 3, 4, 10)
    y = C.pad_latent(x, 3)
    assert y.shape == (2, 3, 4, 16)
    assert torch.equal(y[..., :3], x[..., -3:]) and torch.equal(y[..., -3:], x[..., :3])
    assert torch.equal(C.crop_latent(y, 3), x)
    y2 = y.clone()
    y2[..., 0] = -1
    assert torch.equal(C.resync_latent(y2, 3), y)
    # masks (B, H, W) too
    m = torch.rand(1, 4, 10)
    assert torch.equal(C.pad_latent(m, 2)[..., :2], m[..., -2:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_dtype_agnostic(dtype):
    tok = torch.randn(1, 2 * 8, 4).to(dtype)
    out = G(2, 8, 1).pad(tok)
    assert out.dtype == dtype
    assert torch.equal(G(2, 8, 1).crop(out).float(), tok.float())


def test_shift_helpers():
    g = TokenGrid.from_pixels(1024, 2048, 1)
    assert g.padded_tokens == 64 * 130
    assert g.padded_pixel_size() == (2080, 1024)
    w, h = g.padded_pixel_size()
    assert g.padded_tokens == (w // 16) * (h // 16)
    assert shift_mu(256) == pytest.approx(0.5)
    assert shift_mu(4096) == pytest.approx(1.15)
    assert shift_mu(64 * 130) > shift_mu(64 * 128)


def test_errors_name_the_input():
    tok = torch.randn(1, 2 * 8, 4)
    with pytest.raises(PanoInputError, match="padding"):
        G(2, 8, 3).pad(tok)  # > w // 4
    with pytest.raises(PanoInputError, match="padding"):
        G(2, 8, -1).pad(tok)
    with pytest.raises(PanoInputError, match="tokens"):
        G(3, 8, 1).pad(tok)
    with pytest.raises(PanoInputError, match="id_mode"):
        G(2, 8, 1, "mirror").pad_ids(_flux_ids(2, 8))
    with pytest.raises(PanoInputError, match="latent"):
        C.pad_latent(torch.randn(1, 1, 2, 3), 4)


def test_differentiable():
    tok = torch.randn(1, 2 * 8, 3, requires_grad=True)
    G(2, 8, 2).pad(tok).sum().backward()
    g = tok.grad.reshape(2, 8, 3)
    # the first two and last two columns are used twice
    assert torch.all(g[:, :2] == 2) and torch.all(g[:, -2:] == 2) and torch.all(g[:, 2:-2] == 1)


def test_decode_circular_crops_and_sees_the_wrap():
    lat = torch.randn(1, 2, 4, 10)

    def decode(z):  # a "VAE" with a 3-wide horizontal receptive field, zero padding, x4 upscale
        k = torch.ones(2, 1, 1, 3) / 3.0
        y = torch.nn.functional.conv2d(z, k, padding=(0, 1), groups=2)
        return y.repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2)

    plain = decode(lat)
    circ = C.decode_circular(decode, lat, 2, scale=4)
    assert circ.shape == plain.shape
    # interior (away from the border by more than the receptive field) is identical
    assert torch.allclose(circ[..., 8:-8], plain[..., 8:-8])
    # the border columns equal a decode of the rolled latent (true circular convolution)
    rolled = decode(torch.roll(lat, 5, dims=-1))
    assert torch.allclose(torch.roll(circ, 20, dims=-1)[..., 8:-8], rolled[..., 8:-8], atol=1e-6)
    # channels_last (ComfyUI IMAGE) variant
    circ2 = C.decode_circular(lambda z: decode(z).movedim(1, -1), lat, 2, scale=4, channels_last=True)
    assert torch.allclose(circ2.movedim(-1, 1), circ)
    with pytest.raises(PanoInputError, match="decode"):
        C.decode_circular(decode, lat, 2, scale=8)


def test_wrap_seam_ratio():
    x = torch.linspace(0, 1, 64).repeat(3, 1)  # ramp: big jump at the wrap
    assert wrap_seam_ratio(x) > 10
    t = torch.linspace(0, 2 * torch.pi, 65)[:-1]
    assert wrap_seam_ratio(torch.sin(t).repeat(3, 1)) < 2  # periodic: no worse than |cos| peaks


# --------------------------------------------------------------------------- TokenGrid generality


def test_pack_matches_diffusers_flux_packing():
    from diffusers import FluxPipeline

    lat = torch.randn(2, 16, 8, 24)
    g = TokenGrid.from_latent((8, 24))
    ref = FluxPipeline._pack_latents(lat, 2, 16, 8, 24)
    assert torch.equal(g.pack(lat), ref) and torch.equal(_pack(lat), ref)
    assert torch.equal(g.unpack(ref), FluxPipeline._unpack_latents(ref, 64, 192, 8))


def test_patch_one_grid_pads_latent_and_tokens_alike():
    """Patch size 1 (Sana-style: the model takes latents): padding latent columns by p and
    flattening == flattening and padding tokens by p; ids too."""
    lat = torch.randn(1, 4, 6, 16)
    g = TokenGrid.from_latent((6, 16), 3, patch=1, vae_factor=32)
    assert (g.h, g.w, g.latent_cols, g.width, g.height) == (6, 16, 3, 512, 192)
    tok = g.pack(lat)
    assert tok.shape == (1, 96, 4) and torch.equal(tok, lat.flatten(2).transpose(1, 2))
    padded_lat = g.pad_latent(lat)
    assert torch.equal(g.pad(tok), padded_lat.flatten(2).transpose(1, 2))
    assert torch.equal(g.crop_latent(padded_lat), lat)
    assert torch.equal(g.unpack(tok), lat)


def test_video_grid_pads_every_frame_row():
    """(B, C, T, H, W) latents: every (frame, row) is padded like an image row; round trips."""
    t, lh, lw, p = 3, 4, 16, 2
    lat = torch.randn(2, 5, t, lh, lw)
    g = TokenGrid.from_latent((lh, lw), p, frames=t)
    tok = g.pack(lat)
    assert tok.shape == (2, t * 2 * 8, 20) and g.tokens == t * 2 * 8
    assert g.padded_tokens == t * 2 * (8 + 2 * p)
    # per frame, the video grid does what the image grid does
    img = TokenGrid.from_latent((lh, lw), p)
    per_frame = torch.cat([img.pad(img.pack(lat[:, :, k])) for k in range(t)], dim=1)
    assert torch.equal(g.pad(tok), per_frame)
    assert torch.equal(g.crop(g.pad(tok)), tok)
    assert torch.equal(g.unpack(tok), lat)
    ids = torch.zeros(t, 2, 8, 3)
    ids[..., 0] = torch.arange(t)[:, None, None]
    ids[..., 1] = torch.arange(2)[None, :, None]
    ids[..., 2] = torch.arange(8)[None, None, :]
    padded = g.pad_ids(ids.reshape(-1, 3)).reshape(t, 2, 8 + 2 * p, 3)
    assert padded[..., 2].tolist() == [[[6, 7, *range(8), 0, 1]] * 2] * t  # wrapped columns
    assert torch.equal(padded[..., 0], ids[..., :1, 0].expand(t, 2, 8 + 2 * p))  # frame kept


def test_grid_is_checked_once_at_construction():
    with pytest.raises(PanoInputError, match="padding"):
        TokenGrid(h=2, w=8, p=3)
    with pytest.raises(PanoInputError, match="patch"):
        TokenGrid.from_latent((6, 15), 1)
    with pytest.raises(PanoInputError, match="width"):
        TokenGrid.from_pixels(64, 120, 1)
    with pytest.raises(PanoInputError, match="latents"):
        TokenGrid.from_latent((8, 16)).pack(torch.randn(1, 16, 8, 18))
