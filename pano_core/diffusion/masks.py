"""Masks for editing and view placement, shared by every generator.

Mask convention everywhere: ``1`` = generate anew (edit), ``0`` = keep (reconstruct the source).

- :func:`image_mask_to_latent` image- (or latent-) resolution mask -> binary latent mask
- :func:`latent_mask_to_tokens` latent mask -> per-token edit mask on a ``patch x patch`` grid
- :func:`keep_mask_for_tokens` the kept-token mask for a (possibly circularly padded) token
  sequence length (padded exactly like the tokens; upstream DiT360 edge-repeated it instead)
- :func:`replace_kept_tokens` masked feature replacement (edit hidden states take the
  source's at kept tokens)
- :func:`place_view` a perspective photo on an ERP canvas + the mask of what to generate

Wrap-padding a latent-size mask is :func:`pano_core.diffusion.circular.pad_latent`; a token
mask ``(B, tokens)`` pads with :meth:`TokenGrid.pad <pano_core.diffusion.tokens.TokenGrid.pad>`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PanoInputError
from ..validate import check_bchw
from .tokens import TokenGrid

__all__ = [
    "image_mask_to_latent",
    "latent_mask_to_tokens",
    "keep_mask_for_tokens",
    "replace_kept_tokens",
    "place_view",
]


def image_mask_to_latent(
    mask: torch.Tensor,
    latent_hw: tuple[int, int],
    vae_factor: int = 8,
    threshold: float = 0.5,
    name: str = "mask",
) -> torch.Tensor:
    """Binary latent-resolution mask ``(B, 1, h, w)`` from a mask ``(B, 1, H, W)`` in 0..1.

    The mask must have the image size (``h*vae_factor x w*vae_factor``) or the latent size
    ``(h, w)``; anything else raises :class:`PanoInputError` naming both sizes. Pixels above
    ``threshold`` are "generate"; a latent cell is generated if *any* of its pixels is (max
    pooling), so the regenerated region always covers the user's mask.
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
        raise PanoInputError(f"{name}: expected a single-channel mask (B, 1, H, W), got {getattr(mask, 'shape', mask)}")
    h, w = int(latent_hw[0]), int(latent_hw[1])
    mh, mw = mask.shape[-2:]
    binary = (mask.float() > threshold).float()
    if (mh, mw) == (h, w):
        return binary
    if (mh, mw) == (h * vae_factor, w * vae_factor):
        return F.max_pool2d(binary, kernel_size=vae_factor, stride=vae_factor)
    raise PanoInputError(
        f"{name}: size {mw}x{mh} (W x H) does not match the image ({w * vae_factor}x{h * vae_factor}) "
        f"or its latent ({w}x{h})"
    )


def latent_mask_to_tokens(mask: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Per-token edit mask ``(B, h/patch * w/patch)`` (bool, row-major like packed tokens).

    A token is "edit" if any latent pixel of its ``patch x patch`` cell is.
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise PanoInputError(f"mask: expected (B, 1, h, w), got {tuple(mask.shape)}")
    h, w = mask.shape[-2:]
    if h % patch or w % patch:
        raise PanoInputError(f"mask: latent size {w}x{h} must be a multiple of the patch size {patch}")
    tok = F.max_pool2d(mask.float(), kernel_size=patch, stride=patch)
    return tok.flatten(1) > 0.5


def keep_mask_for_tokens(edit_tokens: torch.Tensor, h: int, w: int, n_tokens: int) -> torch.Tensor:
    """Kept-token mask ``(B, n_tokens)`` (bool) for an image token sequence of ``n_tokens``.

    ``edit_tokens``: unpadded per-token edit mask ``(B, h*w)``. If ``n_tokens`` is a circularly
    padded grid ``h*(w+2p)`` the mask is wrap-padded by ``p`` (as the tokens were); extra
    trailing tokens (e.g. Kontext reference tokens) are never kept/replaced.
    """
    if edit_tokens.shape[-1] != h * w:
        raise PanoInputError(f"mask: expected {h}*{w} tokens, got {edit_tokens.shape[-1]}")
    keep = ~edit_tokens.bool()
    if n_tokens == h * w:
        return keep
    p = None
    if n_tokens % h == 0 and (n_tokens // h - w) % 2 == 0 and n_tokens // h > w:
        p = (n_tokens // h - w) // 2
        if p > w // 4:
            p = None
    if p is not None:
        return TokenGrid(h=h, w=w, p=p, patch=1).pad(keep)
    if n_tokens > h * w:  # extra (reference) tokens after an unpadded grid
        pad = torch.zeros(keep.shape[0], n_tokens - h * w, dtype=torch.bool, device=keep.device)
        return torch.cat([keep, pad], dim=1)
    raise PanoInputError(f"mask: cannot match {h}x{w} token grid to a sequence of {n_tokens} image tokens")


def replace_kept_tokens(edit: torch.Tensor, source: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``edit`` hidden states ``(Be, T, D)`` with kept tokens taken from ``source`` ``(Bs, T, D)``.

    ``keep``: ``(Bk, T)`` bool. The source batch is repeated when ``Be`` is a multiple of ``Bs``
    (e.g. the edit branch runs cond and uncond together); same for the mask.
    """
    be, bs = edit.shape[0], source.shape[0]
    if be != bs:
        if be % bs:
            raise PanoInputError(f"feature replacement: edit batch {be} is not a multiple of source batch {bs}")
        source = source.repeat(be // bs, *([1] * (source.ndim - 1)))
    k = keep.to(edit.device)
    if k.shape[0] != be:
        k = k.repeat(be // k.shape[0] if be % k.shape[0] == 0 else 1, 1)[:be]
    return torch.where(k.unsqueeze(-1), source.to(edit.dtype), edit)


def place_view(
    view: torch.Tensor,
    fov_deg: float | tuple[float, float],
    yaw: float = 0.0,
    pitch: float = 0.0,
    *,
    height: int,
    width: int | None = None,
    fill: float = 0.5,
    coverage_threshold: float = 0.999,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place a perspective photo ``(B, C, h, w)`` on an ERP canvas (``height x 2*height``).

    Projects with :func:`pano_core.geometry.p2e` (horizontal ``fov_deg``, ``yaw``, ``pitch``),
    fills the uncovered part with grey ``fill``. Returns ``(canvas (B, C, H, W),
    generate_mask (B, 1, H, W))`` where the mask is 1 wherever the photo does not fully cover
    the pixel (the region outpainting must generate) and 0 on the photo.
    """
    from ..geometry import p2e

    check_bchw(view, "view", channels=(1, 3, 4))
    width = int(width) if width is not None else 2 * int(height)
    if width != 2 * int(height):
        raise PanoInputError(f"width/height: an ERP canvas must be 2:1, got {width}x{height}")
    if isinstance(fov_deg, (int, float)) and not 0 < float(fov_deg) < 180:
        raise PanoInputError(f"fov: expected a horizontal field of view in (0, 180) degrees, got {fov_deg}")
    erp, cov = p2e(view.float(), fov_deg, yaw=yaw, pitch=pitch, erp_hw=(int(height), width))
    keep = (cov >= coverage_threshold).to(erp.dtype)
    canvas = erp * keep + fill * (1.0 - keep)
    return canvas.clamp(0, 1), 1.0 - keep
