"""Circular VAE Decode / Encode (panorama) with ComfyUI's causal 3D video VAEs (Wan 2.1 layout, also
Qwen-Image's VAE; and Wan 2.2's): 5-D latents (B, C, T, H, W), only the width wrapped, time and height
untouched. Built in-process from ComfyUI's own ``comfy.ldm.wan`` VAE classes with explicit init and
loaded through ``comfy.sd.VAE`` (which detects them from the state dict), see
tests/comfy_test_nodes/tiny_family_extras.py."""

from __future__ import annotations

import importlib

import pytest
import torch

PACK_NAME = "pano360"


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    import comfy_harness

    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.dit360")


@pytest.fixture(scope="module")
def C(pack):
    return importlib.import_module(f"{PACK_NAME}.pano_core.diffusion.circular")


@pytest.fixture(scope="module")
def extras(tiny_models):
    import tiny_family_extras

    return tiny_family_extras


@pytest.fixture(scope="module")
def wan_vae(extras):
    """A real ``comfy.sd.VAE`` holding a tiny Wan 2.1 causal 3D VAE (dim 4, 16 latent channels)."""
    import comfy.ldm.wan.vae

    vae = extras.build_tiny_wan21_vae(seed=3)
    assert vae.latent_dim == 3 and vae.latent_channels == 16
    assert isinstance(vae.first_stage_model, comfy.ldm.wan.vae.WanVAE)
    assert vae.spacial_compression_decode() == 8 and vae.spacial_compression_encode() == 8
    return vae


@pytest.fixture(scope="module")
def wan22_vae(extras):
    """A real ``comfy.sd.VAE`` on ComfyUI's Wan 2.2 branch (48 channels, 16x, 4x in time), tiny width."""
    import comfy.ldm.wan.vae2_2

    vae = extras.build_tiny_wan22_vae(seed=5)
    assert vae.latent_dim == 3 and vae.latent_channels == 48
    assert isinstance(vae.first_stage_model, comfy.ldm.wan.vae2_2.WanVAE)
    assert vae.spacial_compression_decode() == 16 and vae.spacial_compression_encode() == 16
    return vae


def _edge_error(x, ref, cols, dim):
    """Mean |x - ref| over the ``cols`` columns at each edge of dimension ``dim``."""
    d = (x - ref).detach().abs()
    n = d.shape[dim]
    return float(torch.cat([d.narrow(dim, 0, cols), d.narrow(dim, n - cols, cols)], dim).mean())


def _periodic_latent(t=2, h=4, w=16, seed=0):
    """A smooth latent periodic along the width (no seam in the content itself), varying in time."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.linspace(0, 2 * torch.pi, w + 1)[:-1]
    base = torch.sin(ang)[None, None, None, None, :] * torch.randn(1, 16, t, 1, 1, generator=g)
    return base.repeat(1, 1, 1, h, 1) + 0.3 * torch.randn(1, 16, t, h, w, generator=g)


def test_circular_decode_of_a_5d_video_latent(pack, C, wan_vae):
    lat = _periodic_latent()  # (1, 16, 2, 4, 16): 2 latent frames -> 5 video frames
    node = pack.Pano360CircularVAEDecode()
    cols = 8  # the default
    img = node.decode({"samples": lat}, wan_vae)[0]
    # IMAGE batch = B * frames (as ComfyUI's VAE Decode combines them), height and width untouched
    assert img.shape == (5, 32, 128, 3)
    plain = wan_vae.decode(lat)  # (1, 5, 32, 128, 3)
    assert plain.shape == (1, 5, 32, 128, 3)
    # the time axis is not touched: frames come out in order, the same count as a plain decode
    ref = C.periodic_reference(wan_vae.decode, lat, scale=8, out_channels_last=True)
    circ = img.reshape(plain.shape)
    e_plain, e_circ = _edge_error(plain, ref, 16, dim=3), _edge_error(circ, ref, 16, dim=3)
    whole = float((circ - ref).detach().abs().mean())
    print("video decode edge error vs tiled reference (plain / circular / circular, whole image):",
          e_plain, e_circ, whole)
    # the Wan VAE's mid-block attention is global (no finite wrap matches the tiled reference exactly,
    # the interior differs a little too): the wrapped edges fall to the level of the whole image
    assert e_circ < 0.3 * e_plain
    assert e_circ < 1.2 * whole
    # wrap 0 = plain VAE Decode (frames flattened into the batch)
    assert torch.equal(node.decode({"samples": lat}, wan_vae, 0)[0], plain.reshape(-1, 32, 128, 3))
    # tiled variant (ComfyUI's 3-D tiler): same shape, finite
    tiled = node.decode({"samples": lat}, wan_vae, cols, True, 128, 32)[0]
    assert tiled.shape == img.shape and torch.isfinite(tiled).all()
    with pytest.raises(Exception, match="wrap_columns"):
        node.decode({"samples": lat}, wan_vae, 17)  # more than the latent width
    with pytest.raises(Exception, match="samples"):
        node.decode({"samples": lat[0, 0]}, wan_vae, 4)


def test_circular_encode_with_a_video_vae(pack, C, wan_vae):
    # a horizontally periodic 5-frame clip (ComfyUI IMAGE batch = frames for a video VAE)
    g = torch.Generator().manual_seed(1)
    x = torch.linspace(0, 2 * torch.pi, 129)[:-1]
    y = torch.linspace(0, 1, 32)
    waves = torch.stack([torch.sin(k * x + p) for k, p in ((1, 0.0), (2, 1.0), (3, 2.0))], -1)  # (128, 3)
    frames = 0.5 + 0.35 * waves[None, None] * (0.5 + y[None, :, None, None]) * torch.rand(5, 1, 1, 3, generator=g)
    frames = frames.expand(5, 32, 128, 3).contiguous()
    enc = pack.Pano360CircularVAEEncode()
    cols = 8
    z = enc.encode(frames, wan_vae)[0]["samples"]  # default 8 latent columns = 64 px per side
    plain = wan_vae.encode(frames)
    assert plain.shape == z.shape == (1, 16, 2, 4, 16)  # 5 frames -> 2 latent frames, /8 in space
    ref = C.periodic_reference(wan_vae.encode, frames, scale=1 / 8, channels_last=True, out_channels_last=False)
    e_plain, e_circ = _edge_error(plain, ref, 2, dim=-1), _edge_error(z, ref, 2, dim=-1)
    whole = float((z - ref).detach().abs().mean())
    print("video encode edge error vs tiled reference (plain / circular / circular, whole latent):",
          e_plain, e_circ, whole)
    assert e_circ < 0.3 * e_plain
    assert e_circ < 1.2 * whole
    assert torch.equal(enc.encode(frames, wan_vae, 0)[0]["samples"], plain)
    # round trip through both circular nodes keeps the shape of the clip
    back = pack.Pano360CircularVAEDecode().decode({"samples": z}, wan_vae, cols)[0]
    assert back.shape == frames.shape


def test_pano_core_circular_with_a_wan22_vae_at_16x(C, tiny_models):
    """The Wan 2.2 VAE (48 channels, 16x spatial with its 2x2 patchify): ``decode_circular`` /
    ``encode_circular`` on channels-first 5-D tensors (``comfy.sd.VAE`` fixes its width at 160, too
    big for a test, so ComfyUI's class is driven directly)."""
    import comfy.ldm.wan.vae2_2

    m = comfy.ldm.wan.vae2_2.WanVAE(dim=4, dec_dim=8, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                    attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    tiny_models.init_module_(m, seed=5, gain=1.0)
    m.eval()
    g = torch.Generator().manual_seed(2)
    ang = torch.linspace(0, 2 * torch.pi, 17)[:-1]
    lat = torch.sin(ang) * torch.randn(1, 48, 1, 1, 1, generator=g) + 0.3 * torch.randn(1, 48, 1, 2, 16, generator=g)
    with torch.no_grad():
        plain = m.decode(lat)
        assert plain.shape == (1, 3, 1, 32, 256)
        ref = C.periodic_reference(m.decode, lat, scale=16)
        circ = C.decode_circular(m.decode, lat, 8, scale=16)
        assert circ.shape == plain.shape
        e_plain, e_circ = _edge_error(plain, ref, 16, dim=-1), _edge_error(circ, ref, 16, dim=-1)
        whole = float((circ - ref).abs().mean())
        print("Wan 2.2 decode edge error (plain / circular / circular, whole image):", e_plain, e_circ, whole)
        assert e_circ < 0.3 * e_plain and e_circ < 1.2 * whole  # global mid-block attention: see above
        img = circ.clamp(-1, 1)
        z_plain, z = m.encode(img), C.encode_circular(m.encode, img, 8, scale=16)
        assert z.shape == z_plain.shape == lat.shape
        z_ref = C.periodic_reference(m.encode, img, scale=1 / 16)
        e_plain, e_circ = _edge_error(z_plain, z_ref, 1, dim=-1), _edge_error(z, z_ref, 1, dim=-1)
        whole = float((z - z_ref).abs().mean())
        print("Wan 2.2 encode edge error (plain / circular / circular, whole latent):", e_plain, e_circ, whole)
        assert e_circ < 0.3 * e_plain and e_circ < 1.2 * whole


def _periodic_latent_48(t=2, h=2, w=16, seed=0):
    """Like :func:`_periodic_latent` with the Wan 2.2 VAE's 48 channels."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.linspace(0, 2 * torch.pi, w + 1)[:-1]
    base = torch.sin(ang)[None, None, None, None, :] * torch.randn(1, 48, t, 1, 1, generator=g)
    return base.repeat(1, 1, 1, h, 1) + 0.3 * torch.randn(1, 48, t, h, w, generator=g)


def test_circular_decode_and_encode_nodes_with_a_wan22_vae(pack, C, wan22_vae):
    """Both nodes on ComfyUI's Wan 2.2 VAE (16x with its 2x2 patchify): the wrapped edges meet as in a
    periodic (tiled) reference, frames and height untouched, wrap 0 = the plain ComfyUI decode/encode."""
    vae = wan22_vae
    lat = _periodic_latent_48()  # (1, 48, 2, 2, 16): 2 latent frames -> 5 frames of 32 x 256 px
    dec = pack.Pano360CircularVAEDecode()
    img = dec.decode({"samples": lat}, vae)[0]  # default 8 latent columns = 128 px per side
    assert img.shape == (5, 32, 256, 3)
    plain = vae.decode(lat)
    assert plain.shape == (1, 5, 32, 256, 3)
    ref = C.periodic_reference(vae.decode, lat, scale=16, out_channels_last=True)
    circ = img.reshape(plain.shape)
    e_plain, e_circ = _edge_error(plain, ref, 16, dim=3), _edge_error(circ, ref, 16, dim=3)
    whole = float((circ - ref).detach().abs().mean())
    print("Wan 2.2 node decode edge error (plain / circular / circular, whole image):", e_plain, e_circ, whole)
    assert e_circ < 0.3 * e_plain and e_circ < 1.2 * whole  # global mid-block attention: see above
    assert torch.equal(dec.decode({"samples": lat}, vae, 0)[0], plain.reshape(-1, 32, 256, 3))
    with pytest.raises(Exception, match="wrap_columns"):
        dec.decode({"samples": lat}, vae, 17)

    frames = img.detach().clamp(0, 1).contiguous()  # a horizontally continuous 5-frame clip
    enc = pack.Pano360CircularVAEEncode()
    z = enc.encode(frames, vae)[0]["samples"]
    z_plain = vae.encode(frames)
    assert z.shape == z_plain.shape == lat.shape
    z_ref = C.periodic_reference(vae.encode, frames, scale=1 / 16, channels_last=True, out_channels_last=False)
    e_plain, e_circ = _edge_error(z_plain, z_ref, 1, dim=-1), _edge_error(z, z_ref, 1, dim=-1)
    whole = float((z - z_ref).detach().abs().mean())
    print("Wan 2.2 node encode edge error (plain / circular / circular, whole latent):", e_plain, e_circ, whole)
    assert e_circ < 0.3 * e_plain and e_circ < 1.2 * whole
    assert torch.equal(enc.encode(frames, vae, 0)[0]["samples"], z_plain)
