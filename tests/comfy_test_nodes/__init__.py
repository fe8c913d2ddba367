"""Test-only ComfyUI node pack of Pano360 (never shipped).

Loaded by the test harness (tests/comfy_harness.py) next to the real pack. Provides tiny random
models that stand in for real weights when workflows run in tests:

- ``Pano360TestTinyFlux``   -> MODEL (tiny Flux dev/schnell/fill/control; replaces UNETLoader)
- ``Pano360TestTinyCLIP``   -> CLIP  (Flux tokenizer + tiny encoder; replaces DualCLIPLoader)
- ``Pano360TestTinyVAE``    -> VAE   (TAESD architecture, 16 latent channels; replaces VAELoader)
- ``Pano360TestTinyCheckpoint`` -> MODEL, CLIP, VAE (replaces CheckpointLoaderSimple)
- ``Pano360TestTinyDiT``    -> MODEL, CONDITIONING (tiny FLUX.2/Chroma/Qwen-Image/Lumina 2/Wan/HunyuanImage)
- ``Pano360TestTinyDiTLatent`` -> LATENT (random or empty, the shape the tiny DiTs / tiny FLUX.1 take)
- ``Pano360TestTinyDiTCLIP`` -> CLIP (features of the tiny DiTs' width; replaces CLIPLoader for Qwen-Image/FLUX.2)
- ``Pano360TestTinyFamilyVAE`` -> VAE (the Wan 2.1 / Qwen-Image, Wan 2.2 or FLUX.2 VAE, tiny; replaces VAELoader)
- ``Pano360TestRaise``      raises an exception with a given message (harness error tests)
- ``Pano360TestSaveTinyLoRA`` writes a tiny DiT360-format LoRA into the ``loras`` folder
"""

from __future__ import annotations

from . import tiny_dits, tiny_family_extras, tiny_models

_SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF})
_CATEGORY = "Pano360/testing"


class Pano360TestTinyFlux:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": _SEED,
                "variant": (list(tiny_models.VARIANTS), {"default": "dev"}),
                "depth": ("INT", {"default": 1, "min": 1, "max": 4}),
                "depth_single_blocks": ("INT", {"default": 1, "min": 0, "max": 4}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = _CATEGORY
    DESCRIPTION = ("Tiny random Flux MODEL for tests (dev: guidance embed; schnell; fill: inpaint, 96 in-channels; "
                   "control: canny/depth style, 32 in-channels).")

    def build(self, seed, variant="dev", depth=1, depth_single_blocks=1):
        return (tiny_models.build_tiny_flux(seed, variant, depth, depth_single_blocks),)


class Pano360TestTinyCLIP:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": _SEED}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"
    CATEGORY = _CATEGORY

    def build(self, seed):
        return (tiny_models.build_tiny_clip(seed),)


class Pano360TestTinyVAE:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": _SEED}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "build"
    CATEGORY = _CATEGORY

    def build(self, seed):
        return (tiny_models.build_tiny_vae(seed),)


class Pano360TestTinyCheckpoint:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": _SEED, "variant": (list(tiny_models.VARIANTS), {"default": "dev"})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "build"
    CATEGORY = _CATEGORY

    def build(self, seed, variant="dev"):
        return (
            tiny_models.build_tiny_flux(seed, variant),
            tiny_models.build_tiny_clip(seed),
            tiny_models.build_tiny_vae(seed),
        )


class Pano360TestRaise:
    """Raises ``RuntimeError(message)`` when executed (to test execution_error reporting)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"message": ("STRING", {"default": "Pano360TestRaise: deliberate failure"})},
            "optional": {"image": ("IMAGE",)},
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = _CATEGORY

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never cached: always executes

    def run(self, message, image=None):
        raise RuntimeError(message)


class Pano360TestSaveTinyLoRA:
    """Writes a tiny DiT360-format (PEFT) LoRA for the tiny Flux into the ``loras`` folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "filename": ("STRING", {"default": "tiny_dit360_lora.safetensors"}),
                "seed": _SEED,
                "rank": ("INT", {"default": 4, "min": 1, "max": 64}),
            }
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = _CATEGORY

    def save(self, filename, seed, rank):
        import os

        import folder_paths

        path = os.path.join(folder_paths.get_folder_paths("loras")[0], filename)
        return (tiny_models.save_tiny_dit360_lora(path, seed=seed, rank=rank),)


class Pano360TestTinyDiT:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": _SEED, "family": (list(tiny_dits.CONFIGS), {"default": "Lumina2"})}}

    RETURN_TYPES = ("MODEL", "CONDITIONING")
    FUNCTION = "build"
    CATEGORY = _CATEGORY
    DESCRIPTION = "Tiny random DiT of a non-FLUX.1 family and a matching random conditioning (panorama patch tests)."

    def build(self, seed, family="Lumina2"):
        return (tiny_dits.build(family, seed), tiny_dits.cond(family, seed))


class Pano360TestTinyDiTCLIP:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": _SEED}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"
    CATEGORY = _CATEGORY
    DESCRIPTION = "Tiny text encoder whose conditioning fits the tiny DiTs (Pano360TestTinyDiT)."

    def build(self, seed):
        return (tiny_family_extras.build_tiny_dit_clip(seed),)


_FAMILY_VAES = {
    "wan21 (qwen_image)": tiny_family_extras.build_tiny_wan21_vae,
    "wan22": tiny_family_extras.build_tiny_wan22_vae,
    "flux2": lambda seed: tiny_family_extras.build_tiny_flux2_vae(seed, narrow=True),  # ~4 M parameters, not 84 M
}


class Pano360TestTinyFamilyVAE:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": _SEED, "family": (list(_FAMILY_VAES), {"default": "wan21 (qwen_image)"})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "build"
    CATEGORY = _CATEGORY
    DESCRIPTION = "Tiny random VAE of a DiT family, detected by ComfyUI's own comfy.sd.VAE from its state dict."

    def build(self, seed, family="wan21 (qwen_image)"):
        return (_FAMILY_VAES[family](seed),)


class Pano360TestTinyDiTLatent:
    """A LATENT of the shape a tiny DiT's KSampler takes (``tiny_dits.comfy_latent_shape``; FLUX.1: 16 channels,
    4-D): batch x channels (x frames) x 8 x 32 (Chroma Radiance: 32 x 128 px), standard-normal from ``seed`` or
    zeros ("empty")."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (["Flux", *tiny_dits.CONFIGS], {"default": "Lumina2"}),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 8}), "seed": _SEED,
                             "fill": (["random", "empty"], {"default": "random"})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"
    CATEGORY = _CATEGORY

    def build(self, family, batch_size=1, seed=0, fill="random"):
        import torch

        shape = (batch_size, 16, 8, 32) if family == "Flux" else tiny_dits.comfy_latent_shape(family, batch_size)
        if fill == "empty":
            return ({"samples": torch.zeros(shape)},)
        return ({"samples": torch.randn(shape, generator=torch.Generator().manual_seed(seed))},)


NODE_CLASS_MAPPINGS = {
    "Pano360TestTinyDiTLatent": Pano360TestTinyDiTLatent,
    "Pano360TestTinyDiTCLIP": Pano360TestTinyDiTCLIP,
    "Pano360TestTinyFamilyVAE": Pano360TestTinyFamilyVAE,
    "Pano360TestTinyDiT": Pano360TestTinyDiT,
    "Pano360TestTinyFlux": Pano360TestTinyFlux,
    "Pano360TestTinyCLIP": Pano360TestTinyCLIP,
    "Pano360TestTinyVAE": Pano360TestTinyVAE,
    "Pano360TestTinyCheckpoint": Pano360TestTinyCheckpoint,
    "Pano360TestRaise": Pano360TestRaise,
    "Pano360TestSaveTinyLoRA": Pano360TestSaveTinyLoRA,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: k.replace("Pano360Test", "Pano360 Test ") for k in NODE_CLASS_MAPPINGS}
