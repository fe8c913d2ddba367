"""Seamless 360° panoramas on every supported DiT (FLUX.1, FLUX.2, Chroma and Chroma Radiance, Qwen-Image,
HunyuanImage 2.1 and its refiner, Lumina 2, HiDream, Wan 2.x): one MODEL patch node.

Thin adapter: the latent-level wrapper and the family table are in :mod:`nodes._panorama_patch`,
the token-level (DiT360 wrapped ids) patch in :mod:`nodes._dit360_patch` (FLUX.1, FLUX.2: ``post_input``)
and :mod:`nodes._panorama_tokens` (Chroma, Chroma Radiance, Qwen-Image, HunyuanImage 2.1 and its refiner,
Wan 2.x: the rotary
embedding handed to ``patches_replace["dit"]``), the padding math in :mod:`pano_core.diffusion.tokens`.
"""

from __future__ import annotations

from ..pano_core.errors import PanoInputError
from ..pano_core.validate import check_choice
from . import _dit360_patch as dit360
from . import _panorama_patch as patch
from . import _panorama_tokens as tokens
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
                    "latent: the latent is wrap-padded at every model call and cropped after (linear positions: "
                    "the edge tokens get positional neighbours across the seam; every family). token: DiT360's "
                    "wrapped position ids, the padded columns carry the ids of their source columns (FLUX.1, "
                    "FLUX.2: same as Pano360DiT360Patch with resync 'per step'; Chroma (incl. Radiance), Qwen-Image, "
                    "HunyuanImage 2.1 (incl. refiner), Wan 2.x: the latent level plus wrapped rotary embeddings in every "
                    "block; for LoRAs trained with wrapped ids). auto: token on FLUX.1/FLUX.2 (DiT360's LoRA), latent elsewhere."}),
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
        pe_hook = tokens.adapter_of(model) is not None
        if level == "token" and not fam.token_level:
            offered = ", ".join(f.name for f in patch.FAMILIES.values() if f.token_level)
            raise PanoInputError(
                f"level: token-level wrapped ids are offered for {offered}; {fam.name} supports level 'latent'"
            )
        if level == "token" and pe_hook:
            return (tokens.apply_token_patch(model, padding),)
        if level == "token" or (level == "auto" and fam.token_level and not pe_hook):
            return (dit360.apply_dit360_patch(model, padding, "wrapped", "per step"),)
        # auto elsewhere: latent (linear positions give the edge tokens neighbours across the seam; wrapped
        # ids only duplicate the opposite edge's tokens, which helps a LoRA trained with them, as DiT360's)
        return (tokens.apply_latent_only(model, padding),)


NODE_CLASS_MAPPINGS = {"Pano360PanoramaPatch": Pano360PanoramaPatch}
NODE_DISPLAY_NAME_MAPPINGS = {"Pano360PanoramaPatch": "Panorama Patch (any DiT)"}
