"""DiT360 text-to-panorama on diffusers' FLUX.1 components, with token-level circular padding.

:class:`DiT360Pipeline` wraps a diffusers ``FluxPipeline`` (FLUX.1-dev from a local folder or a
hub id) and samples seamless equirectangular (2:1) panoramas the way DiT360 does:

1. the packed image tokens (one per 2x2 latent patch) are circularly padded **once** before
   denoising: ``pad`` token columns per side (DiT360: 1), the last columns prepended and the
   first appended; the position ids of the padded columns are **wrapped** (copied from the
   columns they came from) or ``linear`` (extended);
2. the schedule shift ``mu`` is computed from the **padded** token count;
3. every step is one transformer call on the padded tokens; with ``resync=True`` the padded
   columns are rebuilt from the current opposite edge before every call (better seams than
   DiT360's free-running columns);
4. the padded columns are cropped after the loop; the latent is decoded plainly or with a
   circular VAE decode (wrapped latent columns, decode, crop).

The model-agnostic pieces come from :mod:`pano_core.diffusion`: the token grid
(:class:`~pano_core.diffusion.tokens.TokenGrid`, shared with the ComfyUI patch), the schedule
(:mod:`~pano_core.diffusion.schedules`), the sampling loop (:func:`~pano_core.diffusion.sampling.sample`),
the VAE helpers (:mod:`~pano_core.diffusion.vae`) and loading (:mod:`~pano_core.diffusion.loading`).
Here: the Flux specifics (text encoders, packing, the transformer call, guidance embedding).

The building blocks are public so the editing code (inversion, inpainting, view-to-panorama)
reuses them: :meth:`DiT360Pipeline.grid`, :meth:`~DiT360Pipeline.encode_prompt`,
:meth:`~DiT360Pipeline.prepare_latents`, :meth:`~DiT360Pipeline.image_ids`,
:meth:`~DiT360Pipeline.timesteps` (mu from the padded count), :meth:`~DiT360Pipeline.guidance_tensor`, :meth:`~DiT360Pipeline.transformer_call` (one
call on padded tokens), :meth:`~DiT360Pipeline.denoise`, :meth:`~DiT360Pipeline.pack` /
:meth:`~DiT360Pipeline.unpack`, :meth:`~DiT360Pipeline.encode_image` and
:meth:`~DiT360Pipeline.decode`.

Example::

    pipe = DiT360Pipeline.from_pretrained("black-forest-labs/FLUX.1-dev", lora=DEFAULT_LORA,
                                          device="cuda", offload="model")
    out = pipe("a snowy village at dusk", width=2048, height=1024, seed=0)
    out.images  # (1, 3, 1024, 2048) float32 in 0..1 on the CPU
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion import loading as dl
from ..diffusion.generator import DiffusersGenerator
from ..diffusion.lora import LoraReport
from ..diffusion.prompts import PANORAMA_PREFIX, add_prompt_prefix
from ..diffusion.sampling import sample, scheduler_step
from ..diffusion.schedules import schedule_mu, set_timesteps
from ..diffusion.tokens import TokenGrid
from ..diffusion.vae import vae_decode, vae_encode
from ..errors import PanoInputError
from ..validate import check_choice, check_int
from .loading import DEFAULT_LORA, DEFAULT_MODEL, load_flux_pipeline

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_LORA",
    "DEFAULTS",
    "PromptEmbeds",
    "PanoramaOutput",
    "DiT360Pipeline",
    "check_pano_size",
]

# DiT360's inference settings.
DEFAULTS = dict(width=2048, height=1024, steps=28, guidance=2.8, pad=1, id_mode="wrapped", resync=False)


def check_pano_size(width: int, height: int, multiple: int = 16, require_2to1: bool = True) -> None:
    """Raise :class:`PanoInputError` unless width/height are positive multiples of ``multiple``
    (16 for Flux: VAE /8 and 2x2 packing) and, when ``require_2to1``, ``width == 2 * height``."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise PanoInputError(f"{name}: expected a positive integer number of pixels, got {v!r}")
        if v % multiple:
            lo, hi = (v // multiple) * multiple, (v // multiple + 1) * multiple
            raise PanoInputError(
                f"{name}: must be a multiple of {multiple} for Flux (VAE /8 and 2x2 token packing); got {v}, "
                f"use {lo or hi} or {hi}"
            )
    if require_2to1 and width != 2 * height:
        raise PanoInputError(
            f"size: an equirectangular panorama must be 2:1 (width = 2 x height); got {width}x{height}, "
            f"e.g. use {2 * height}x{height}"
        )


@dataclass
class PromptEmbeds:
    """Text conditioning of a batch: T5 ``prompt_embeds`` (B, S, D), CLIP ``pooled`` (B, D'),
    ``text_ids`` (S, 3)."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor

    @property
    def batch(self) -> int:
        return int(self.prompt_embeds.shape[0])

    def __iter__(self):
        """Unpacks like ``FluxPipeline.encode_prompt``: ``pe, pooled, text_ids = embeds``."""
        return iter((self.prompt_embeds, self.pooled, self.text_ids))


@dataclass
class PanoramaOutput:
    """``images``: (B, 3, H, W) float32 in 0..1 on the CPU (None for ``output_type="latent"``);
    ``latents``: the denoised, cropped latents (B, 16, H/8, W/8) in the transformer's space
    (before the VAE scaling/shift), on the CPU; ``seed``: the seed used (None with an explicit
    generator)."""

    images: torch.Tensor | None
    latents: torch.Tensor
    seed: int | None = None


class DiT360Pipeline(DiffusersGenerator):
    """Panorama sampling with DiT360's circular token padding on a diffusers ``FluxPipeline``.

    Build with :meth:`from_pretrained` (a model folder or hub id) or wrap an existing
    ``FluxPipeline`` (``DiT360Pipeline(flux)``). The wrapped pipeline stays usable as
    ``self.flux`` (= ``self.pipe``); components, memory placement and LoRA loading come from
    :class:`~pano_core.diffusion.generator.DiffusersGenerator`.
    """

    default_adapter = "dit360"

    def __init__(self, flux):
        from diffusers import FluxTransformer2DModel

        if not isinstance(getattr(flux, "transformer", None), FluxTransformer2DModel):
            raise PanoInputError(
                f"pipeline: expected a diffusers FluxPipeline with a FluxTransformer2DModel, got {type(flux).__name__}"
            )
        super().__init__(flux)

    @property
    def flux(self):
        """The wrapped diffusers ``FluxPipeline``."""
        return self.pipe

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
        offload: str = "none",
        vae_tiling: bool = False,
        lora: str | os.PathLike | None = None,
        lora_weight_name: str | None = None,
        lora_scale: float = 1.0,
        revision: str | None = None,
        local_files_only: bool | None = None,
        **kwargs,
    ) -> DiT360Pipeline:
        """Load FLUX.1 (``model``: a diffusers folder or hub id, safetensors only), optionally a
        LoRA (``lora``: file, folder or hub id; DiT360's is :data:`DEFAULT_LORA`), and set the
        device / memory options (:meth:`set_memory`; FLUX.1-dev's transformer alone is ~24 GB
        in bf16, so ``offload="model"`` on smaller GPUs).

        ``dtype`` ``None`` means bfloat16 on CUDA and float32 on the CPU.
        """
        dev = dl.resolve_device(device)
        torch_dtype = dl.resolve_dtype(dtype, dev)
        check_choice(offload, "offload", dl.OFFLOAD_MODES)
        flux = load_flux_pipeline(model, torch_dtype=torch_dtype, revision=revision, local_files_only=local_files_only, **kwargs)
        pipe = cls(flux)
        if lora is not None:
            pipe.load_lora(lora, weight_name=lora_weight_name, scale=lora_scale, local_files_only=local_files_only)
        pipe.set_memory(dev, offload=offload, vae_tiling=vae_tiling)
        return pipe

    def load_lora(self, lora=DEFAULT_LORA, weight_name=None, scale=1.0, adapter_name=None, strict=True,
                  local_files_only=None) -> LoraReport:
        """:meth:`DiffusersGenerator.load_lora` with DiT360's LoRA as the default."""
        return super().load_lora(lora, weight_name, scale, adapter_name, strict, local_files_only)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels) // 4

    # ------------------------------------------------------------------ geometry
    def grid(
        self,
        width: int,
        height: int,
        pad: int = 1,
        id_mode: str = "wrapped",
        require_2to1: bool = True,
    ) -> TokenGrid:
        """Check the size and return the :class:`TokenGrid` for ``width`` x ``height`` pixels
        with ``pad`` token columns of circular padding per side (``0 <= pad <= w // 4``)."""
        f = self.vae_scale_factor
        check_pano_size(width, height, multiple=2 * f, require_2to1=require_2to1)
        return TokenGrid.from_pixels(height, width, pad, id_mode, patch=2, vae_factor=f)

    # ------------------------------------------------------------------ text
    def encode_prompt(
        self,
        prompt: str | Sequence[str],
        num_images_per_prompt: int = 1,
        prompt_prefix: str | None = PANORAMA_PREFIX,
        max_sequence_length: int = 512,
        **flux_kwargs,
    ) -> PromptEmbeds:
        """Encode prompts with CLIP (pooled) and T5 (sequence), after adding ``prompt_prefix``.

        The batch is ``len(prompts) * num_images_per_prompt`` (each prompt's images contiguous).
        The result unpacks like diffusers' ``(prompt_embeds, pooled, text_ids)``.

        Called ``FluxPipeline``-style (with ``prompt_2=``/``device=``/... keywords, as code written
        for a plain ``FluxPipeline`` does), it delegates unchanged to
        ``FluxPipeline.encode_prompt`` (no prefix added) so this object can stand in for one.
        """
        if flux_kwargs:
            return self.flux.encode_prompt(
                prompt=prompt, num_images_per_prompt=num_images_per_prompt,
                max_sequence_length=max_sequence_length, **flux_kwargs,
            )
        prompts = add_prompt_prefix(prompt, prompt_prefix)
        if num_images_per_prompt < 1:
            raise PanoInputError(f"num_images_per_prompt: expected >= 1, got {num_images_per_prompt}")
        pe, pooled, ids = self.flux.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
        )
        return PromptEmbeds(prompt_embeds=pe, pooled=pooled, text_ids=ids)

    # ------------------------------------------------------------------ latents and tokens
    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 16, H/8, W/8) latents -> packed tokens (B, H/16 * W/16, 64)."""
        b, c, lh, lw = latents.shape
        return TokenGrid.from_latent((lh, lw), vae_factor=self.vae_scale_factor).pack(latents)

    def unpack(self, tokens: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
        """Packed unpadded tokens (B, h*w, 64) -> latents (B, 16, H/8, W/8)."""
        return grid.unpack(tokens)

    def prepare_latents(
        self,
        batch: int,
        grid: TokenGrid,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Initial noise as packed, **unpadded** tokens (B, h*w, 64) on :attr:`device`.

        Drawn exactly like diffusers' ``FluxPipeline`` (same generator -> same noise).
        ``latents`` may be given packed (B, h*w, 64) or unpacked (B, 16, H/8, W/8).
        """
        dtype = dtype or self.dtype
        if latents is not None:
            if latents.ndim == 4:
                latents = self.pack(latents)
            if latents.shape[0] != batch or latents.shape[1] != grid.tokens or latents.shape[2] != 4 * self.latent_channels:
                raise PanoInputError(
                    f"latents: expected ({batch}, {grid.tokens}, {4 * self.latent_channels}) packed tokens, "
                    f"got {tuple(latents.shape)}"
                )
            return latents.to(device=self.device, dtype=dtype)
        lat, _ = self.flux.prepare_latents(
            batch, self.latent_channels, grid.height, grid.width, dtype, self.device, generator
        )
        return lat

    def image_ids(self, grid: TokenGrid, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Position ids (h*(w+2p), 3) of the padded grid: ``[0, row, col]``, padded columns
        wrapped (DiT360) or linear (:meth:`TokenGrid.pad_ids`)."""
        ids = self.flux._prepare_latent_image_ids(1, grid.h, grid.w, self.device, dtype or self.dtype)
        return grid.pad_ids(ids)

    # ------------------------------------------------------------------ schedule
    def mu(self, grid: TokenGrid) -> float:
        """Schedule shift from the **padded** token count (DiT360)."""
        return schedule_mu(self.scheduler.config, grid.padded_tokens)

    def timesteps(
        self, steps: int, grid: TokenGrid, sigmas: Sequence[float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the scheduler up for ``steps`` steps with ``mu`` from the padded token count
        (:func:`pano_core.diffusion.schedules.set_timesteps`). Returns ``(timesteps, sigmas)``."""
        return set_timesteps(self.scheduler, steps, grid.padded_tokens, self.device, sigmas=sigmas)

    def guidance_tensor(self, guidance: float, batch: int) -> torch.Tensor | None:
        """FLUX.1-dev's distilled guidance as a (B,) tensor, or None for models without it."""
        if not self.transformer.config.guidance_embeds:
            return None
        return torch.full([batch], float(guidance), device=self.device, dtype=torch.float32)

    # ------------------------------------------------------------------ one model call
    def transformer_call(
        self,
        tokens: torch.Tensor,
        t: torch.Tensor | float,
        embeds: PromptEmbeds,
        guidance: torch.Tensor | None,
        img_ids: torch.Tensor,
        joint_attention_kwargs: dict | None = None,
        cache_name: str = "cond",
        time_scale: float = 1000.0,
    ) -> torch.Tensor:
        """One transformer call on (padded) tokens at scheduler time ``t`` (0..1000).

        ``tokens`` (B, L, 64) with ``img_ids`` (L, 3) of the same (padded) grid; returns the
        velocity prediction (B, L, 64). Nothing is cropped here. The transformer gets
        ``t / time_scale``; ``time_scale=1`` passes a sigma (0..1) through unchanged.
        """
        b = tokens.shape[0]
        t = torch.as_tensor(t, device=tokens.device)
        timestep = t.expand(b).to(tokens.dtype)
        if time_scale != 1.0:
            timestep = timestep / time_scale
        ctx = self.transformer.cache_context(cache_name) if hasattr(self.transformer, "cache_context") else contextlib.nullcontext()
        with ctx:
            return self.transformer(
                hidden_states=tokens,
                timestep=timestep,
                guidance=guidance,
                pooled_projections=embeds.pooled,
                encoder_hidden_states=embeds.prompt_embeds,
                txt_ids=embeds.text_ids,
                img_ids=img_ids,
                joint_attention_kwargs=joint_attention_kwargs,
                return_dict=False,
            )[0]

    # ------------------------------------------------------------------ the loop
    def denoise(
        self,
        tokens: torch.Tensor,
        grid: TokenGrid,
        embeds: PromptEmbeds,
        timesteps: torch.Tensor,
        guidance: torch.Tensor | None,
        img_ids: torch.Tensor | None = None,
        resync: bool = False,
        negative: PromptEmbeds | None = None,
        true_cfg_scale: float = 1.0,
        joint_attention_kwargs: dict | None = None,
        callback: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
        progress: bool = True,
        interrupt: Callable[[], bool | None] | None = None,
    ) -> torch.Tensor:
        """Run the scheduler over ``timesteps`` on **padded** tokens (B, h*(w+2p), 64) with the
        shared loop :func:`pano_core.diffusion.sampling.sample`.

        With ``resync`` the padded columns are rebuilt from the current opposite edge before
        every call. ``negative`` + ``true_cfg_scale > 1`` adds true classifier-free guidance
        (a second call). ``callback(i, t, tokens)`` may return replacement tokens; ``interrupt()``
        runs before every step (raise to cancel). Returns the padded tokens after the last step
        (crop with ``grid.crop``).
        """
        if img_ids is None:
            img_ids = self.image_ids(grid, dtype=embeds.text_ids.dtype)
        if tokens.shape[1] != grid.padded_tokens:
            raise PanoInputError(
                f"tokens: expected {grid.padded_tokens} padded tokens for a {grid.h}x{grid.w} grid with pad "
                f"{grid.p}, got {tokens.shape[1]}"
            )

        def velocity(x, t):
            return self.transformer_call(x, t, embeds, guidance, img_ids, joint_attention_kwargs, "cond")

        uncond = None
        if negative is not None:
            def uncond(x, t):
                return self.transformer_call(x, t, negative, guidance, img_ids, joint_attention_kwargs, "uncond")

        return sample(
            velocity, tokens, timesteps, uncond=uncond, cfg_scale=true_cfg_scale, step=scheduler_step(self.scheduler),
            prepare=(lambda i, x: grid.resync(x)) if resync and grid.p > 0 else None,
            callback=callback, interrupt=interrupt, progress=self.progress_bar(len(timesteps), enabled=progress),
        )

    # ------------------------------------------------------------------ VAE
    def decode(
        self,
        tokens: torch.Tensor,
        grid: TokenGrid,
        circular_decode: bool = False,
        decode_pad: int | None = None,
    ) -> torch.Tensor:
        """Decode packed **unpadded** tokens (B, h*w, 64) to images (B, 3, H, W) float32 0..1
        on :attr:`device`.

        ``circular_decode`` wraps ``decode_pad`` latent columns (default 8, at most half the
        latent width) around both sides before the VAE and crops the matching pixels after it,
        so the decoder sees across the 0/360 seam.
        """
        lat = self.unpack(tokens, grid)
        return self.decode_latents(lat, circular_decode=circular_decode, decode_pad=decode_pad)

    def decode_latents(self, latents: torch.Tensor, circular_decode: bool = False,
                       decode_pad: int | None = None) -> torch.Tensor:
        """Like :meth:`decode` for unpacked latents (B, 16, H/8, W/8) in transformer space
        (:func:`pano_core.diffusion.vae.vae_decode`)."""
        if circular_decode and decode_pad is not None:
            check_int(decode_pad, "decode_pad", 1, what="a number of latent columns")
        return vae_decode(self.vae, latents, wrap_cols=decode_pad if circular_decode else 0, device=self.device)

    def encode_image(
        self,
        image: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = False,
        circular_encode: bool = False,
        encode_pad: int | None = None,
    ) -> torch.Tensor:
        """Encode images (B, 3, H, W) in 0..1 to packed tokens (B, h*w, 64) in transformer
        space (``(z - shift) * scale``); the latent mode unless ``sample``. With
        ``circular_encode`` the image is wrapped by ``encode_pad`` latent columns per side first
        (default 8, at most half the latent width) and the latent cropped (no seam baked into the
        latent at the panorama's edges)."""
        from ..validate import check_bchw

        check_bchw(image, "image", channels=(3,))
        f = self.vae_scale_factor
        check_pano_size(image.shape[-1], image.shape[-2], multiple=2 * f, require_2to1=False)
        z = vae_encode(self.vae, image, sample=sample, generator=generator, vae_factor=f, device=self.device,
                       wrap_cols=encode_pad if circular_encode else 0)
        return self.pack(z.to(self.device, self.dtype))

    # ------------------------------------------------------------------ text-to-panorama
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        width: int = 2048,
        height: int = 1024,
        steps: int = 28,
        guidance: float = 2.8,
        seed: int | None = 0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_prompt: int = 1,
        pad: int = 1,
        id_mode: str = "wrapped",
        resync: bool = False,
        circular_decode: bool = False,
        decode_pad: int | None = None,
        prompt_prefix: str | None = PANORAMA_PREFIX,
        negative_prompt: str | Sequence[str] | None = None,
        true_cfg_scale: float = 1.0,
        latents: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        output_type: str = "pt",
        callback: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
        progress: bool = True,
        interrupt: Callable[[], bool | None] | None = None,
    ) -> PanoramaOutput:
        """Generate panoramas (DiT360 defaults: 2048x1024, 28 steps, guidance 2.8, pad 1,
        wrapped ids, no re-sync, prompt prefixed with "This is a panorama.").

        ``seed`` seeds a CPU ``torch.Generator`` (same seed -> same panorama on any device);
        pass ``generator`` instead for full control. ``pad=0`` is exactly diffusers'
        ``FluxPipeline``. ``output_type="latent"`` skips the VAE. ``callback(i, t, tokens)`` after
        every step (progress, previews; padded tokens), ``interrupt()`` before every step.
        """
        if output_type not in ("pt", "latent"):
            raise PanoInputError(f"output_type: expected 'pt' or 'latent', got {output_type!r}")
        grid = self.grid(width, height, pad=pad, id_mode=id_mode)
        used_seed = None
        if generator is None:
            used_seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
            generator = torch.Generator("cpu").manual_seed(used_seed)
        embeds = self.encode_prompt(prompt, num_images_per_prompt, prompt_prefix, max_sequence_length)
        negative = None
        if negative_prompt is not None and true_cfg_scale > 1.0:
            neg = [negative_prompt] * (embeds.batch // num_images_per_prompt) if isinstance(negative_prompt, str) else negative_prompt
            negative = self.encode_prompt(neg, num_images_per_prompt, None, max_sequence_length)
            if negative.batch != embeds.batch:
                raise PanoInputError(f"negative_prompt: expected {embeds.batch // num_images_per_prompt} prompts, got {len(neg)}")
        b = embeds.batch
        noise = self.prepare_latents(b, grid, generator, latents, dtype=embeds.prompt_embeds.dtype)
        tokens = grid.pad(noise)
        img_ids = self.image_ids(grid, dtype=embeds.text_ids.dtype)
        ts, _ = self.timesteps(steps, grid)
        g = self.guidance_tensor(guidance, b)
        tokens = self.denoise(
            tokens, grid, embeds, ts, g, img_ids=img_ids, resync=resync, negative=negative,
            true_cfg_scale=true_cfg_scale, callback=callback, progress=progress, interrupt=interrupt,
        )
        tokens = grid.crop(tokens)
        lat = self.unpack(tokens, grid)
        images = None
        if output_type == "pt":
            images = self.decode_latents(lat, circular_decode=circular_decode, decode_pad=decode_pad).cpu()
        self.maybe_free_model_hooks()
        return PanoramaOutput(images=images, latents=lat.float().cpu(), seed=used_seed)

    generate = __call__
