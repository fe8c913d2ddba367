"""Seamless 360° panoramas on every supported DiT (FLUX.1, FLUX.2, Chroma, Qwen-Image, HunyuanImage 2.1,
Lumina 2, HiDream, Wan 2.x): one MODEL patch node.

Thin adapter: the latent-level wrapper and the family table are in :mod:`nodes._panorama_patch`,
the token-level (DiT360) patch in :mod:`nodes._dit360_patch`, the padding math in
:mod:`pano_core.diffusion.tokens`.
"""

from __future__ import annotations

from ..pano_core.errors import PanoInputError
from ..pano_core.validate import check_choice
from . import _dit360_patch as dit360
from . import _panorama_patch as patch
from ._common import CAT_DIT360 as CATEGORY

LEVELS = ("auto", "latent", "token")


class Pano360PanoramaPatch:
    """Circular (ERP wrap) padding for any supported DiT family."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "padding": ("INT", {"default": 1, "min": 0, "max": 256, "tooltip":
                    "Token columns (whole patches) copied from the opposite edge to each side, at most a quarter "
                    "of the panorama's token width. 0 = no effect."}),
                "level": (list(LEVELS), {"default": "auto", "tooltip":
                    "latent: the latent is wrap-padded at every model call and cropped after (linear positions; "
                    "every family). token: DiT360's wrapped position ids (FLUX.1 and FLUX.2; same as "
                    "Pano360DiT360Patch with resync 'per step'). auto: token where offered, else latent."}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Makes a DiT generate seamless 360° equirectangular panoramas (no seam at 0°/360°). Supported: "
        + patch.supported_families() + ". Non-destructive: returns a patched clone. Use a 2:1 latent, "
        "a panorama LoRA for the family, and a circular VAE decode."
    )

    def patch(self, model, padding=1, level="auto"):
        check_choice(level, "level", LEVELS)
        fam = patch.family_of(model)
        if level == "token" and not fam.token_level:
            raise PanoInputError(
                f"level: token-level wrapped ids are offered for FLUX.1 and FLUX.2 only; {fam.name} supports level 'latent'"
            )
        if level == "token" or (level == "auto" and fam.token_level):
            return (dit360.apply_dit360_patch(model, padding, "wrapped", "per step"),)
        return (patch.apply_latent_patch(model, padding),)


NODE_CLASS_MAPPINGS = {"Pano360PanoramaPatch": Pano360PanoramaPatch}
NODE_DISPLAY_NAME_MAPPINGS = {"Pano360PanoramaPatch": "Panorama Patch (any DiT)"}
