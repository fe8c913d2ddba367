"""Circular VAE Decode / Encode (panorama) with the 2-D VAEs of the other DiT families: HunyuanImage 2.1
(64 latent channels, 32x: ``comfy.ldm.hunyuan_video.vae`` in an ``AutoencodingEngine``) and FLUX.2
(``AutoencoderKL`` with a batch-norm latent patchified 2x2: 128 channels, 16x). Each is a real
``comfy.sd.VAE`` that ComfyUI detects from a state dict, narrowed while built
(tests/comfy_test_nodes/tiny_family_extras.py); the Wan / Qwen-Image video VAEs are in
tests/test_circular_video_vae.py, whose fixtures and edge measure are reused here."""

from __future__ import annotations

import pytest
import torch
from test_circular_video_vae import C, _edge_error, extras, pack  # noqa: F401 (fixtures)

FAMILIES = {
    # name: (builder, latent channels, pixels per latent column)
    "hunyuan_image_2_1": ("build_tiny_hunyuan_image_vae", 64, 32),
    "flux2": ("build_tiny_flux2_vae", 128, 16),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_vae(request, extras):  # noqa: F811 (fixture value)
    """``(name, comfy.sd.VAE, latent channels, spatial factor)`` for each family."""
    builder, channels, factor = FAMILIES[request.param]
    kwargs = {"narrow": True} if request.param == "flux2" else {}
    vae = getattr(extras, builder)(**kwargs)
    assert vae.latent_dim == 2 and vae.latent_channels == channels
    assert vae.spacial_compression_decode() == factor and vae.spacial_compression_encode() == factor
    return request.param, vae, channels, factor


def _periodic_latent(channels, h=1, w=16, seed=0):
    """A latent ``(1, channels, h, w)`` periodic along the width (no seam in the content itself)."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.linspace(0, 2 * torch.pi, w + 1)[:-1]
    base = torch.sin(ang) * torch.randn(1, channels, 1, 1, generator=g)
    return base.expand(1, channels, h, w) + 0.3 * torch.randn(1, channels, h, w, generator=g)


@torch.no_grad()
def test_circular_decode_and_encode_nodes(pack, C, family_vae):  # noqa: F811 (fixture values)
    """Both nodes: the wrapped edges meet as in a periodic (tiled) reference, shapes are the plain
    ones, wrap 0 = ComfyUI's plain decode / encode; the default 8 latent columns also at 32x."""
    name, vae, channels, f = family_vae
    lat = _periodic_latent(channels)  # (1, C, 1, 16): a 1 x 16 latent -> f x 16 f px
    H, W = f, 16 * f
    dec = pack.Pano360CircularVAEDecode()
    img = dec.decode({"samples": lat}, vae)[0]  # default 8 latent columns (8 f px) per side
    plain = vae.decode(lat)
    assert img.shape == plain.shape == (1, H, W, 3)
    ref = C.periodic_reference(vae.decode, lat, scale=f, out_channels_last=True)
    e_plain, e_circ = _edge_error(plain, ref, f, dim=2), _edge_error(img, ref, f, dim=2)
    whole = float((img - ref).abs().mean())
    print(f"{name} decode edge error vs tiled reference (plain / circular / circular, whole image):",
          e_plain, e_circ, whole)
    # global mid-block attention in both VAEs: no finite wrap equals the tiled reference exactly, the
    # wrapped edges fall to the level of the whole image (as with Wan's VAE)
    assert e_circ < 0.3 * e_plain and e_circ < 1.2 * whole
    assert torch.equal(dec.decode({"samples": lat}, vae, 0)[0], plain)
    with pytest.raises(Exception, match="wrap_columns"):
        dec.decode({"samples": lat}, vae, 17)  # more than the latent width
    # tiled (ComfyUI's 2-D tiler, 512 px tiles = 16 or 32 latent columns): the tiles differ from the
    # reference everywhere a little, the wrapped edges no more than the interior (a plain tiled decode's
    # edges: 1.6x / 4.7x its whole-image error)
    tiled = dec.decode({"samples": lat}, vae, 8, True, 512, 64)[0]
    assert tiled.shape == img.shape and torch.isfinite(tiled).all()
    assert _edge_error(tiled, ref, f, dim=2) < 1.2 * float((tiled - ref).abs().mean())

    frames = img.clamp(0, 1).contiguous()  # a horizontally continuous panorama
    enc = pack.Pano360CircularVAEEncode()
    z = enc.encode(frames, vae)[0]["samples"]
    z_plain = vae.encode(frames)
    assert z.shape == z_plain.shape == lat.shape
    z_ref = C.periodic_reference(vae.encode, frames, scale=1 / f, channels_last=True, out_channels_last=False)
    e_plain, e_circ = _edge_error(z_plain, z_ref, 1, dim=-1), _edge_error(z, z_ref, 1, dim=-1)
    whole = float((z - z_ref).abs().mean())
    print(f"{name} encode edge error vs tiled reference (plain / circular / circular, whole latent):",
          e_plain, e_circ, whole)
    assert e_circ < 0.3 * e_plain and e_circ < 1.2 * whole
    assert torch.equal(enc.encode(frames, vae, 0)[0]["samples"], z_plain)
    with pytest.raises(Exception, match="wrap_columns"):
        enc.encode(frames, vae, 17)
