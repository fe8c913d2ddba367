"""Circular VAE Decode / Encode (panorama) with the image VAEs of the other DiT families: HunyuanImage 2.1
(64 latent channels, 32x: ``comfy.ldm.hunyuan_video.vae`` in an ``AutoencodingEngine``), the HunyuanImage
2.1 refiner's (32 channels, 16x, 4x in time: ``comfy.ldm.hunyuan_video.vae_refiner``; an image is one frame
of a 5-D latent (B, 32, 1, H, W), only the width wrapped) and FLUX.2 (``AutoencoderKL`` with a batch-norm
latent patchified 2x2: 128 channels, 16x). Each is a real
``comfy.sd.VAE`` that ComfyUI detects from a state dict, narrowed while built
(tests/comfy_test_nodes/tiny_family_extras.py); the Wan / Qwen-Image video VAEs are in
tests/test_circular_video_vae.py, whose fixtures and edge measure are reused here."""

from __future__ import annotations

import pytest
import torch
from test_circular_video_vae import C, _edge_error, extras, pack  # noqa: F401 (fixtures)

FAMILIES = {
    # name: (builder, latent channels, pixels per latent column, latent dims (2: image, 3: B, C, T, H, W))
    "hunyuan_image_2_1": ("build_tiny_hunyuan_image_vae", 64, 32, 2),
    "hunyuan_image_2_1_refiner": ("build_tiny_hunyuan_refiner_vae", 32, 16, 3),
    "flux2": ("build_tiny_flux2_vae", 128, 16, 2),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_vae(request, extras):  # noqa: F811 (fixture value)
    """``(name, comfy.sd.VAE, latent channels, spatial factor, latent dims)`` for each family."""
    builder, channels, factor, dims = FAMILIES[request.param]
    kwargs = {"narrow": True} if request.param == "flux2" else {}
    vae = getattr(extras, builder)(**kwargs)
    assert vae.latent_dim == dims and vae.latent_channels == channels
    assert vae.spacial_compression_decode() == factor and vae.spacial_compression_encode() == factor
    return request.param, vae, channels, factor, dims


def _periodic_latent(channels, h=1, w=16, seed=0, dims=2):
    """A latent ``(1, channels, h, w)`` periodic along the width (no seam in the content itself);
    ``dims`` 3: one frame of a video-shaped latent, ``(1, channels, 1, h, w)``."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.linspace(0, 2 * torch.pi, w + 1)[:-1]
    base = torch.sin(ang) * torch.randn(1, channels, 1, 1, generator=g)
    lat = base.expand(1, channels, h, w) + 0.3 * torch.randn(1, channels, h, w, generator=g)
    return lat.unsqueeze(2) if dims == 3 else lat


@torch.no_grad()
def test_circular_decode_and_encode_nodes(pack, C, family_vae):  # noqa: F811 (fixture values)
    """Both nodes: the wrapped edges meet as in a periodic (tiled) reference, shapes are the plain
    ones, wrap 0 = ComfyUI's plain decode / encode; the default 8 latent columns also at 32x. The
    refiner's 5-D latent: only its width is wrapped, the one frame (and the height) left as they are."""
    name, vae, channels, f, dims = family_vae
    lat = _periodic_latent(channels, dims=dims)  # (1, C, [1,] 1, 16): a 1 x 16 latent -> f x 16 f px
    H, W = f, 16 * f
    dec = pack.Pano360CircularVAEDecode()
    img = dec.decode({"samples": lat}, vae)[0]  # default 8 latent columns (8 f px) per side
    # ComfyUI's decode of a 5-D latent is (B, frames, H, W, 3); the node gives an IMAGE batch of B * frames
    plain = vae.decode(lat).reshape(-1, H, W, 3)
    assert img.shape == plain.shape == (1, H, W, 3)
    ref = C.periodic_reference(lambda z: vae.decode(z).reshape(-1, H, 3 * W, 3) if dims == 3 else vae.decode(z),
                               lat, scale=f, out_channels_last=True)
    e_plain, e_circ = _edge_error(plain, ref, f, dim=2), _edge_error(img, ref, f, dim=2)
    whole = float((img - ref).abs().mean())
    print(f"{name} decode edge error vs tiled reference (plain / circular / circular, whole image):",
          e_plain, e_circ, whole)
    # global mid-block attention in these VAEs: no finite wrap equals the tiled reference exactly, the
    # wrapped edges fall to the level of the whole image (as with Wan's VAE)
    assert e_circ < 0.3 * e_plain and e_circ < 1.2 * whole
    assert torch.equal(dec.decode({"samples": lat}, vae, 0)[0], plain)
    with pytest.raises(Exception, match="wrap_columns"):
        dec.decode({"samples": lat}, vae, 17)  # more than the latent width
    # tiled (ComfyUI's 2-D tiler, the 3-D one for the refiner's 5-D latent; 512 px tiles = 16 or 32 latent
    # columns): the tiles differ from the
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
