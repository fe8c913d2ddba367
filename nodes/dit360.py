"""DiT360 panorama nodes (ComfyUI-native path): Flux MODEL patch, empty panorama latent,
circular VAE decode and encode, panorama prompt helper, panorama schedule shift.

Thin adapters: the token grid and circular padding live in :mod:`pano_core.diffusion`
(``tokens``, ``circular``), the ComfyUI wrappers in :mod:`nodes._dit360_patch`.
"""

from __future__ import annotations

import comfy.model_management
import torch

from ..pano_core.diffusion.circular import DEFAULT_WRAP_COLS, decode_circular, encode_circular
from ..pano_core.diffusion.prompts import PANORAMA_PREFIX, add_prompt_prefix
from ..pano_core.diffusion.tokens import ID_MODES
from ..pano_core.errors import PanoInputError
from ..pano_core.validate import check_choice
from . import _dit360_patch as patch
from ._common import CAT_DIT360 as CATEGORY

SIZE_PRESETS = {
    "1024x512": (1024, 512),
    "1536x768": (1536, 768),
    "2048x1024 (DiT360)": (2048, 1024),
    "3072x1536": (3072, 1536),
    "4096x2048": (4096, 2048),
    "custom": None,
}


class Pano360DiT360Patch:
    """Makes a Flux MODEL generate seamless 360° ERP panoramas (DiT360 circular padding)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "padding": ("INT", {"default": 1, "min": 0, "max": 256, "tooltip":
                    "Token columns copied from the opposite edge to each side (1 token = 16 px). "
                    "1 = DiT360. At most a quarter of the panorama's token width. 0 = no effect."}),
                "id_mode": (list(ID_MODES), {"default": "wrapped", "tooltip":
                    "wrapped (DiT360): padded columns carry the position ids of the opposite edge; "
                    "linear: ids continue past the edge."}),
                "resync": (list(patch.RESYNC_MODES), {"default": "per step", "tooltip":
                    "per step (default): the padded columns are rebuilt from the current opposite edge before "
                    "every model call, so a padded token always equals its source token, also with samplers "
                    "that add noise (euler_ancestral, dpmpp_sde, ...); with wrapped ids and a deterministic "
                    "sampler it gives the same result as none. none (the official DiT360 behaviour): the "
                    "padded columns evolve freely with the sampler."}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Circular token padding with wrapped RoPE ids for any ComfyUI Flux model, FLUX.1 or FLUX.2 (use with the DiT360 LoRA "
        "through LoraLoaderModelOnly). Non-destructive: returns a patched clone. Works with KSampler, "
        "KSamplerAdvanced, SamplerCustomAdvanced, noise masks, Flux Fill and Kontext reference latents."
    )

    def patch(self, model, padding=1, id_mode="wrapped", resync="per step"):
        return (patch.apply_dit360_patch(model, padding, id_mode, resync),)


class Pano360FluxPanoramaShift:
    """FLUX's resolution-dependent schedule shift from the padded token count (as DiT360)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "width": ("INT", {"default": 2048, "min": 64, "max": 16384, "step": 16}),
                "height": ("INT", {"default": 1024, "min": 32, "max": 8192, "step": 16}),
                "padding": ("INT", {"default": 1, "min": 0, "max": 256}),
                "max_shift": ("FLOAT", {"default": 1.15, "min": 0.0, "max": 100.0, "step": 0.01}),
                "base_shift": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 100.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("MODEL", "FLOAT")
    RETURN_NAMES = ("model", "mu")
    FUNCTION = "patch"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Like ModelSamplingFlux, but the shift mu is computed from the padded token count "
        "(height/16 x (width/16 + 2*padding)), which is what DiT360's pipeline does."
    )

    def patch(self, model, width, height, padding, max_shift=1.15, base_shift=0.5):
        m, mu = patch.apply_panorama_shift(model, width, height, padding, base_shift, max_shift)
        return (m, mu)


class Pano360EmptyPanoramaLatent:
    """An empty 2:1 Flux latent (16 channels, /8) for an equirectangular panorama."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "size": (list(SIZE_PRESETS), {"default": "2048x1024 (DiT360)"}),
                "width": ("INT", {"default": 2048, "min": 64, "max": 16384, "step": 16,
                                  "tooltip": "Used when size is 'custom'. Multiple of 16, = 2 x height."}),
                "height": ("INT", {"default": 1024, "min": 32, "max": 8192, "step": 16,
                                   "tooltip": "Used when size is 'custom'. Multiple of 16."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = CATEGORY

    def generate(self, size, width=2048, height=1024, batch_size=1):
        check_choice(size, "size", list(SIZE_PRESETS))
        if SIZE_PRESETS[size] is not None:
            width, height = SIZE_PRESETS[size]
        if width % 16 or height % 16:
            raise PanoInputError(f"width/height: must be multiples of 16 px for Flux, got {width}x{height}")
        if width != 2 * height:
            raise PanoInputError(f"width/height: an equirectangular panorama is 2:1, got {width}x{height}")
        latent = torch.zeros([batch_size, 16, height // 8, width // 8],
                             device=comfy.model_management.intermediate_device())
        return ({"samples": latent},)


class Pano360CircularVAEDecode:
    """VAE decode with wrapped latent columns on both sides (no seam at 0°/360° from zero padding)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT",),
                "vae": ("VAE",),
                "wrap_columns": ("INT", {"default": DEFAULT_WRAP_COLS, "min": 0, "max": 64, "tooltip":
                    "Latent columns copied from the opposite edge to each side before decoding (cropped after). "
                    "8 (default) is close to a perfectly circular decode (Flux VAE); at most the latent width."}),
                "tiled": ("BOOLEAN", {"default": False, "tooltip": "Tiled decode for large panoramas (less memory)."}),
                "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 32}),
                "overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 32}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY

    def decode(self, samples, vae, wrap_columns=DEFAULT_WRAP_COLS, tiled=False, tile_size=512, overlap=64):
        lat = samples["samples"]
        if lat.ndim not in (4, 5):
            raise PanoInputError(f"samples: expected an image latent (B, C, H, W) or a video latent (B, C, T, H, W), "
                                 f"got shape {tuple(lat.shape)}")
        if wrap_columns > lat.shape[-1]:
            raise PanoInputError(f"wrap_columns: at most the latent width ({lat.shape[-1]}), got {wrap_columns}")
        scale = int(vae.spacial_compression_decode())
        if tiled:
            overlap = min(overlap, tile_size // 4)

            def fn(z):
                return vae.decode_tiled(z, tile_x=tile_size // scale, tile_y=tile_size // scale,
                                        overlap=overlap // scale)
        else:
            fn = vae.decode
        img = decode_circular(fn, lat, int(wrap_columns), scale=scale, channels_last=True)
        if img.ndim == 5:  # video VAE: (B, T, H, W, C) -> IMAGE batch of B * T frames, as VAE Decode does
            img = img.reshape(-1, *img.shape[-3:])
        return (img.contiguous(),)


class Pano360CircularVAEEncode:
    """VAE encode with wrapped pixel columns on both sides (no seam baked into the latent at 0°/360°)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pixels": ("IMAGE",),
                "vae": ("VAE",),
                "wrap_columns": ("INT", {"default": DEFAULT_WRAP_COLS, "min": 0, "max": 64, "tooltip":
                    "Latent columns (x 8 px for Flux) copied from the opposite edge to each side before encoding, "
                    "cropped from the latent after. 0 = plain VAE Encode."}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "VAE Encode for 360° panoramas: the encoder sees the opposite edge next to each border instead of zero "
        "padding, so the latent has no seam at 0°/360° (use it before DiT360 Invert; a plain encode bakes a seam "
        "into the latent that editing keeps)."
    )

    def encode(self, pixels, vae, wrap_columns=DEFAULT_WRAP_COLS):
        if pixels.ndim != 4:
            raise PanoInputError(f"pixels: expected an IMAGE batch (B, H, W, C), got shape {tuple(pixels.shape)}")
        scale = int(vae.spacial_compression_encode())
        w_lat = pixels.shape[2] // scale
        if wrap_columns > w_lat:
            raise PanoInputError(f"wrap_columns: at most the latent width ({w_lat}), got {wrap_columns}")
        lat = encode_circular(lambda x: vae.encode(x[..., :3]), pixels, int(wrap_columns), scale=scale,
                              channels_last=True)
        return ({"samples": lat},)


class Pano360PanoramaPrompt:
    """Optionally prefixes a prompt with DiT360's "This is a panorama." (not forced)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": ""}),
                "add_prefix": ("BOOLEAN", {"default": True}),
                "prefix": ("STRING", {"default": PANORAMA_PREFIX}),
            }
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    def build(self, text, add_prefix=True, prefix=PANORAMA_PREFIX):
        return (add_prompt_prefix(text.strip(), prefix.strip() if add_prefix else None)[0],)


NODE_CLASS_MAPPINGS = {
    "Pano360DiT360Patch": Pano360DiT360Patch,
    "Pano360FluxPanoramaShift": Pano360FluxPanoramaShift,
    "Pano360EmptyPanoramaLatent": Pano360EmptyPanoramaLatent,
    "Pano360CircularVAEDecode": Pano360CircularVAEDecode,
    "Pano360CircularVAEEncode": Pano360CircularVAEEncode,
    "Pano360PanoramaPrompt": Pano360PanoramaPrompt,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "Pano360DiT360Patch": "DiT360 Panorama Patch (Flux)",
    "Pano360FluxPanoramaShift": "Flux Panorama Shift (padded)",
    "Pano360EmptyPanoramaLatent": "Empty Panorama Latent (2:1)",
    "Pano360CircularVAEDecode": "VAE Decode (circular, panorama)",
    "Pano360CircularVAEEncode": "VAE Encode (circular, panorama)",
    "Pano360PanoramaPrompt": "Panorama Prompt",
}
