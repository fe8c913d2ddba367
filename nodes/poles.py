"""Pole refinement nodes (DiT360's panoramic refinement).

- ``Pano360ExtractPoleFaces`` -> your own inpaint graph -> ``Pano360MergePoleFaces``;
- ``Pano360RefinePoles``: one node that inpaints the poles with the connected MODEL/VAE through
  ComfyUI's own sampler (noise mask on the latent; also inpaint-model conditioning, so Flux Fill
  works), with the sampler's progress bar;
- ``Pano360RefinePolesOpenCV``: no model (OpenCV Telea / Navier-Stokes).

Thin adapters: the projection, masks, blending and channel handling live in :mod:`pano_core.poles`.
"""

from __future__ import annotations

import torch

from ..pano_core import poles
from ..pano_core.errors import PanoInputError
from ._common import CAT_POLES as CATEGORY
from ._common import bchw_to_image, bchw_to_mask, image_to_bchw, mask_to_bchw

_FRACTION = (
    "FLOAT",
    {
        "default": poles.DEFAULT_FRACTION,
        "min": 0.05,
        "max": 1.0,
        "step": 0.01,
        "tooltip": "Share of the top/bottom face side to inpaint (0.5 = the central half, 256..768 of a 1024 face).",
    },
)
_FEATHER = (
    "INT",
    {
        "default": poles.DEFAULT_FEATHER,
        "min": 0,
        "max": 512,
        "tooltip": "Blend band in face pixels around the mask. Outside mask + feather the panorama stays bit-identical.",
    },
)
_FACE_SIZE = (
    "INT",
    {
        "default": 0,
        "min": 0,
        "max": 8192,
        "step": 16,
        "tooltip": "Pole face size in pixels; 0 = panorama width / 4 (rounded down to a multiple of 16).",
    },
)


def _erp(image) -> torch.Tensor:
    erp = image_to_bchw(image, "panorama")
    if erp.shape[1] not in (1, 3, 4):
        raise PanoInputError(f"panorama: expected an RGB, RGBA or grey IMAGE, got {erp.shape[1]} channels")
    return erp


class Pano360ExtractPoleFaces:
    """ERP -> top/bottom cube faces + masks of their centre, to inpaint with any graph."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "panorama": ("IMAGE", {"tooltip": "Equirectangular panorama (2:1)."}),
                "fraction": _FRACTION,
                "face_size": _FACE_SIZE,
            }
        }

    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("pole_faces", "pole_masks", "panorama")
    FUNCTION = "extract"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Projects the poles onto the top (U) and bottom (D) cube faces (a batch U, D per panorama) and "
        "returns masks of their centre. Inpaint them with any graph (e.g. VAE Encode (for Inpainting) + "
        "KSampler, or InpaintModelConditioning with Flux Fill), then use Merge Pole Faces with the "
        "panorama output."
    )

    def extract(self, panorama, fraction=poles.DEFAULT_FRACTION, face_size=0):
        erp = _erp(panorama)
        s = poles.pole_face_size(erp.shape[-1], face_size or None, multiple=16 if not face_size else 1)
        faces, masks = poles.extract_pole_faces(erp, fraction=fraction, face_size=s)
        return (bchw_to_image(faces), bchw_to_mask(masks), panorama)


class Pano360MergePoleFaces:
    """Inpainted top/bottom faces -> back into the ERP (only the pole regions change)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "panorama": ("IMAGE", {"tooltip": "The panorama the faces were extracted from."}),
                "pole_faces": ("IMAGE", {"tooltip": "Inpainted faces: U, D for each panorama (as extracted)."}),
                "feather": _FEATHER,
            },
            "optional": {
                "pole_masks": ("MASK", {"tooltip": "Masks of the inpainted region (default: the central square of 'fraction')."}),
                "fraction": _FRACTION,
                "face_size": (_FACE_SIZE[0], {**_FACE_SIZE[1], "tooltip": "The face size the faces were extracted "
                              "with (checked); 0 = Extract Pole Faces' default (panorama width / 4, multiple of 16). "
                              "With pole_masks connected their size is used."}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("panorama",)
    FUNCTION = "merge"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Projects inpainted pole faces back and blends them into the panorama with a feathered mask. "
        "Pixels outside mask + feather are returned bit-identical."
    )

    def merge(self, panorama, pole_faces, feather=poles.DEFAULT_FEATHER, pole_masks=None, fraction=poles.DEFAULT_FRACTION,
              face_size=0):
        erp = _erp(panorama)
        faces = image_to_bchw(pole_faces, "pole_faces")
        masks = mask_to_bchw(pole_masks, "pole_masks") if pole_masks is not None else None
        if masks is None:  # the faces must have the size they were extracted with
            s = poles.pole_face_size(erp.shape[-1], face_size or None, multiple=16 if not face_size else 1)
            if faces.shape[-1] == faces.shape[-2] != s:  # (non-square faces: pano_core says so)
                raise PanoInputError(
                    f"pole_faces: expected {s}x{s} faces (extracted from this {erp.shape[-1]}-wide panorama with "
                    f"face_size {face_size}); got {faces.shape[-1]}x{faces.shape[-2]}. Set face_size to the size "
                    "you extracted with, or connect pole_masks"
                )
        return (bchw_to_image(poles.merge_pole_faces_rgb(erp, faces, masks, feather=feather, fraction=fraction)),)


class Pano360RefinePolesOpenCV:
    """Pole refinement without a model (OpenCV inpainting)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "panorama": ("IMAGE",),
                "method": (list(poles.opencv_methods()), {"default": "telea", "tooltip":
                           "telea: fast marching (Telea 2004); ns: Navier-Stokes; fsr (with opencv-contrib "
                           "installed): frequency-selective reconstruction, texture instead of a smeared X."}),
                "radius": ("FLOAT", {"default": 3.0, "min": 0.5, "max": 64.0, "step": 0.5, "tooltip": "Inpainting radius in pixels."}),
                "fraction": (_FRACTION[0], {**_FRACTION[1], "default": poles.OPENCV_DEFAULT_FRACTION, "tooltip":
                             "Share of the top/bottom face side to inpaint. OpenCV is for small defects: large "
                             "holes get a smeared X (default 0.2; use Refine Poles (model) for more)."}),
                "feather": _FEATHER,
                "face_size": _FACE_SIZE,
            }
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("panorama",)
    FUNCTION = "refine"
    CATEGORY = CATEGORY
    DESCRIPTION = "Fills the centre of the top/bottom cube faces with OpenCV inpainting and blends it back."

    def refine(self, panorama, method="telea", radius=3.0, fraction=poles.OPENCV_DEFAULT_FRACTION,
               feather=poles.DEFAULT_FEATHER, face_size=0):
        erp = _erp(panorama)
        inp = poles.OpenCVInpainter(method, radius)
        out = poles.refine_poles(erp, inp, fraction=fraction, feather=feather, face_size=face_size or None)
        return (bchw_to_image(out),)


class Pano360RefinePoles:
    """One-node pole refiner with the connected diffusion model (ComfyUI sampling)."""

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL",),
                "vae": ("VAE",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "panorama": ("IMAGE",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler"}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "simple"}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "fraction": _FRACTION,
                "feather": _FEATHER,
                "face_size": _FACE_SIZE,
            }
        }

    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("panorama", "pole_faces")
    FUNCTION = "refine"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Inpaints the centre of the top/bottom cube faces with the connected model (VAE-encode, noise "
        "mask, ComfyUI sampler, decode) and blends them back into the panorama. Works with ordinary "
        "models (latent noise-mask inpainting) and inpainting models such as Flux Fill (the inpaint "
        "conditioning is set as InpaintModelConditioning does). For Flux, set cfg 1 and use FluxGuidance "
        "on the positive conditioning."
    )

    def refine(self, model, vae, positive, negative, panorama, seed=0, steps=20, cfg=1.0, sampler_name="euler",
               scheduler="simple", denoise=1.0, fraction=poles.DEFAULT_FRACTION, feather=poles.DEFAULT_FEATHER,
               face_size=0):
        import comfy.sample
        import comfy.utils
        import latent_preview
        import node_helpers

        erp = _erp(panorama)
        poles.check_feather(feather)
        poles.check_fraction(fraction)
        rgb, _ = poles.split_rgb_alpha(erp)
        s = poles.pole_face_size(rgb.shape[-1], face_size or None, multiple=16)
        faces, masks = poles.extract_pole_faces(rgb, fraction=fraction, face_size=s)

        pixels = bchw_to_image(faces)  # (2B, S, S, 3)
        mask = masks.float().cpu()  # (2B, 1, S, S)
        keep = (1.0 - mask.round()).movedim(1, -1)
        neutral = (pixels - 0.5) * keep + 0.5  # masked area grey, as InpaintModelConditioning
        concat_latent = vae.encode(neutral)
        latent = vae.encode(pixels)
        pos = node_helpers.conditioning_set_values(positive, {"concat_latent_image": concat_latent, "concat_mask": mask})
        neg = node_helpers.conditioning_set_values(negative, {"concat_latent_image": concat_latent, "concat_mask": mask})

        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed, None)
        callback = latent_preview.prepare_callback(model, steps)  # drives the node's progress bar
        samples = comfy.sample.sample(
            model, noise, steps, cfg, sampler_name, scheduler, pos, neg, latent,
            denoise=denoise, noise_mask=mask, callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
        )
        decoded = vae.decode(samples)
        if decoded.ndim == 5:  # video VAEs return (B, T, H, W, C)
            decoded = decoded.reshape(-1, *decoded.shape[-3:])
        new_faces = image_to_bchw(decoded[..., :3].float().cpu(), "decoded faces")
        if tuple(new_faces.shape[-2:]) != (s, s) or new_faces.shape[0] != faces.shape[0]:
            raise PanoInputError(
                f"vae: decoded faces have shape {tuple(new_faces.shape)}, expected ({faces.shape[0]}, 3, {s}, {s}); "
                "is the VAE the model's own?"
            )
        out = poles.merge_pole_faces(rgb, new_faces.to(rgb.dtype), masks, feather=feather)
        return (bchw_to_image(poles.join_rgb_alpha(out, rgb, erp)), bchw_to_image(new_faces))


NODE_CLASS_MAPPINGS = {
    "Pano360ExtractPoleFaces": Pano360ExtractPoleFaces,
    "Pano360MergePoleFaces": Pano360MergePoleFaces,
    "Pano360RefinePoles": Pano360RefinePoles,
    "Pano360RefinePolesOpenCV": Pano360RefinePolesOpenCV,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "Pano360ExtractPoleFaces": "Extract Pole Faces (Pano360)",
    "Pano360MergePoleFaces": "Merge Pole Faces (Pano360)",
    "Pano360RefinePoles": "Refine Poles (model, Pano360)",
    "Pano360RefinePolesOpenCV": "Refine Poles (OpenCV, Pano360)",
}
