"""Loading FLUX.1 pipelines and DiT360's LoRA (the Flux-specific layer over
:mod:`pano_core.diffusion.loading` and :mod:`pano_core.diffusion.lora`).

- :data:`DEFAULT_MODEL` / :data:`DEFAULT_LORA`: FLUX.1-dev and DiT360's published LoRA (hub ids).
- :func:`load_flux_pipeline`: a diffusers ``FluxPipeline`` from a local folder or a hub id,
  safetensors only, checked to hold a Flux transformer.

LoRAs load through :meth:`DiT360Pipeline.load_lora <pano_core.dit360.pipeline.DiT360Pipeline.load_lora>`
(:mod:`pano_core.diffusion.lora`, checked key matching) with :data:`DEFAULT_LORA` as the default.
"""

from __future__ import annotations

import os

import torch

from ..diffusion.loading import load_pipeline
from ..diffusion.lora import DEFAULT_LORA_WEIGHT_NAME
from ..errors import PanoInputError

__all__ = ["DEFAULT_MODEL", "DEFAULT_LORA", "DEFAULT_LORA_WEIGHT_NAME", "load_flux_pipeline"]

DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"
DEFAULT_LORA = "Insta360-Research/DiT360-Panorama-Image-Generation"

_FLUX_LAYOUT = (
    "diffusers layout: model_index.json, transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, "
    "tokenizer_2/, scheduler/"
)


def load_flux_pipeline(
    model: str | os.PathLike = DEFAULT_MODEL,
    torch_dtype: torch.dtype = torch.bfloat16,
    revision: str | None = None,
    local_files_only: bool | None = None,
    **kwargs,
):
    """Load a diffusers ``FluxPipeline`` (FLUX.1-dev layout) from a local folder or a hub id.

    Weights are read from safetensors only. Raises :class:`PanoInputError` for a missing
    folder, a folder that is not a diffusers Flux pipeline, or a hub id that cannot be fetched.
    """
    from diffusers import FluxPipeline, FluxTransformer2DModel

    pipe = load_pipeline(
        FluxPipeline, model, dtype=torch_dtype, what="FLUX.1 pipeline", example=DEFAULT_MODEL,
        layout_hint=_FLUX_LAYOUT, revision=revision, local_files_only=local_files_only, **kwargs,
    )
    if not isinstance(pipe.transformer, FluxTransformer2DModel):
        raise PanoInputError(
            f"model: {model} holds a {type(pipe.transformer).__name__}; a Flux transformer (FLUX.1) is required"
        )
    return pipe
