"""VAE encode / decode for every generator: model-space scaling, tiling, circular (ERP) variants.

Works with diffusers' KL autoencoders (Flux: ``AutoencoderKL`` with ``scaling_factor`` and
``shift_factor``) and deterministic ones (Sana's DC-AE ``AutoencoderDC``: ``scaling_factor``
only, ``encode(...).latent``). Images are ``(B, 3, H, W)`` in 0..1; latents are in the
*model's* space: ``(z - shift) * scale``.

- :func:`vae_encode` (vae, image, wrap_cols=...): image -> model-space latent; with
  ``wrap_cols`` (8 = :data:`~pano_core.diffusion.circular.DEFAULT_WRAP_COLS` recommended) the image is wrap-padded by that many latent columns first and the latent
  cropped, so the encoder sees across the 0/360 seam (ERP panoramas, training latent caches);
- :func:`vae_decode` (vae, latent, wrap_cols=...): model-space latent -> image in 0..1, with
  wrapped latent columns decoded and cropped (:func:`pano_core.diffusion.circular.decode_circular`);
- :func:`set_tiling`: switch the VAE's tiled encode/decode on or off;
- :func:`spatial_factor`: image pixels per latent pixel;
- :func:`scale_shift`: the VAE's ``(scaling_factor, shift_factor)``.
"""

from __future__ import annotations

import torch

from ..errors import PanoInputError
from .circular import crop_latent, pad_latent, wrap_cols_for
from .loading import module_device

__all__ = ["scale_shift", "spatial_factor", "vae_encode", "vae_decode", "set_tiling"]


def scale_shift(vae) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of a diffusers VAE (shift 0 when it has none)."""
    cfg = vae.config
    scale = getattr(cfg, "scaling_factor", None)
    if scale is None:
        raise PanoInputError(f"vae: {type(vae).__name__} has no scaling_factor in its config")
    return float(scale), float(getattr(cfg, "shift_factor", None) or 0.0)


def spatial_factor(vae) -> int:
    """Image pixels per latent pixel: ``2 ** (number of blocks - 1)`` (8 for Flux's VAE, 32 for
    Sana's DC-AE), as diffusers pipelines compute ``vae_scale_factor``."""
    cfg = vae.config
    blocks = getattr(cfg, "block_out_channels", None) or getattr(cfg, "encoder_block_out_channels", None)
    if not blocks:
        raise PanoInputError(f"vae: cannot tell the downscaling factor of {type(vae).__name__}; pass vae_factor")
    return 2 ** (len(blocks) - 1)


def _check_cols(cols, width: int, name: str) -> int:
    cols = wrap_cols_for(width, cols)
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 0 or cols > width // 2:
        raise PanoInputError(f"{name}: expected 0..{width // 2} latent columns for a latent {width} wide, got {cols!r}")
    return cols


def vae_encode(
    vae,
    image: torch.Tensor,
    *,
    sample: bool = False,
    generator: torch.Generator | None = None,
    wrap_cols: int | None = 0,
    vae_factor: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Encode images ``(B, 3, H, W)`` in 0..1 to model-space latents ``(B, C, H/f, W/f)`` in the
    VAE's dtype on its device: the posterior mode (``sample=False``) or a sample; DC-AE's latent.

    ``wrap_cols``: latent columns wrapped around both sides before encoding and cropped after
    (``vae_factor`` pixels per latent column; default from the VAE config); ``None``: the default
    :data:`~pano_core.diffusion.circular.DEFAULT_WRAP_COLS` (8, at most half the latent width). ``device``: where to
    run when the VAE reports none (offloaded models report their execution device).
    """
    dev = module_device(vae, device)
    x = image.to(device=dev, dtype=vae.dtype) * 2 - 1
    f = int(vae_factor or spatial_factor(vae)) if wrap_cols != 0 else 1
    cols = _check_cols(wrap_cols, x.shape[-1] // f, "wrap_cols")
    if cols:
        x = pad_latent(x, cols * f)
    out = vae.encode(x)
    dist = getattr(out, "latent_dist", None)
    if dist is not None:
        z = dist.sample(generator) if sample else (dist.mode() if hasattr(dist, "mode") else dist.mean)
    else:
        z = getattr(out, "latent", None)
        z = z if z is not None else out[0]
    if cols:
        z = crop_latent(z, cols)
    scale, shift = scale_shift(vae)
    return (z - shift) * scale


def vae_decode(vae, latents: torch.Tensor, *, wrap_cols: int | None = 0, device: torch.device | None = None) -> torch.Tensor:
    """Decode model-space latents ``(B, C, h, w)`` to images ``(B, 3, H, W)`` float32 in 0..1 on
    the VAE's device. ``wrap_cols`` latent columns are wrapped around both sides before the VAE
    and the matching pixels cropped after it (no decoder seam at 0/360 degrees); ``None``: the
    default :data:`~pano_core.diffusion.circular.DEFAULT_WRAP_COLS` (8, at most half the width)."""
    scale, shift = scale_shift(vae)
    z = latents / scale + shift
    cols = _check_cols(wrap_cols, z.shape[-1], "decode_pad")
    if cols:
        z = pad_latent(z, cols)
    z = z.to(device=module_device(vae, device), dtype=vae.dtype)
    img = vae.decode(z, return_dict=False)[0]
    if cols:
        img = crop_latent(img, cols * (img.shape[-1] // z.shape[-1]))
    return (img.float() / 2 + 0.5).clamp(0, 1)


def set_tiling(vae, enabled: bool) -> None:
    """Switch tiled VAE encode/decode (large panoramas in bounded memory) on or off."""
    if enabled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
