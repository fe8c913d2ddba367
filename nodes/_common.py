"""Conversions between ComfyUI types and pano_core tensors (no panorama math here).

ComfyUI IMAGE: (B, H, W, C) float 0..1.  MASK: (B, H, W) or (H, W) float 0..1.
pano_core: (B, C, H, W).
"""

from __future__ import annotations

import logging

import torch

from ..pano_core.errors import PanoInputError

log = logging.getLogger("pano360")
"""The one logger of the pack (``pano360``)."""

CATEGORY = "Pano360"
CAT_GEOMETRY = f"{CATEGORY}/geometry"
CAT_SEAMS = f"{CATEGORY}/seams"
CAT_POLES = f"{CATEGORY}/poles"
CAT_DIT360 = f"{CATEGORY}/dit360"
CAT_JOPANO = f"{CATEGORY}/jopano"
CAT_IO = f"{CATEGORY}/io"
CAT_VIEW = f"{CATEGORY}/view"


def image_to_bchw(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> (B, C, H, W)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise PanoInputError(f"{name}: expected a ComfyUI IMAGE (batch, height, width, channels), got {shape}")
    return image.movedim(-1, 1)


def bchw_to_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> ComfyUI IMAGE (B, H, W, C), float32 on CPU, contiguous."""
    return x.movedim(1, -1).float().cpu().contiguous()


def mask_to_bchw(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """ComfyUI MASK (B, H, W) or (H, W) -> (B, 1, H, W)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise PanoInputError(f"{name}: expected a ComfyUI MASK (batch, height, width), got {shape}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    return mask.unsqueeze(1)


def bchw_to_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> ComfyUI MASK (B, H, W)."""
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    return x[:, 0].float().cpu().contiguous()
