"""DiT360 panorama editing with diffusers: inversion, inpainting, outpainting, view-to-panorama.

Works on a diffusers ``FluxPipeline`` (FLUX.1-dev + the DiT360 LoRA) or the DiT360 pipeline of
:mod:`pano_core.dit360.pipeline` (an object wrapping either in ``.pipe`` works too). The model
calls reuse :class:`~pano_core.dit360.pipeline.DiT360Pipeline`'s pieces (packing, circular
padding, wrapped ids, guidance, one transformer call); a plain ``FluxPipeline`` is wrapped in one
(:func:`dit360_pipeline`, no copy).

Mask convention: ``1`` (white) = generate anew, ``0`` (black) = keep.

- :func:`inpaint` (image, mask): regenerate the white region of a panorama from the prompt;
  the edit starts from the *inverted* latent everywhere, so the regenerated region inherits
  the layout of what was there.
- :func:`outpaint` (image, mask): the white region is *unknown* (e.g. outside a placed photo):
  the edit branch starts from fresh seeded noise there (inverting blank canvas would bias the
  result toward flat content), the black region is kept.
- :func:`generate_from_view`: place a perspective photo on the ERP canvas
  (:func:`pano_core.diffusion.masks.place_view`) and outpaint the rest.
- :func:`invert` / :func:`edit`: the two stages separately (see
  :mod:`pano_core.diffusion.rf_inversion` for the algorithm).

The model sees the latent circularly padded by ``padding`` token columns per side on every call
(wrapped position ids, :class:`pano_core.diffusion.tokens.TokenGrid`); the kept-token mask is
padded exactly like the tokens (wrap), the schedule shift ``mu`` comes from the padded token
count (:func:`pano_core.diffusion.schedules.sigma_schedule`), the guidance value reaches the
transformer's guidance embedding, and inversion noise is seeded. VAE encode/decode are
:func:`pano_core.diffusion.vae.vae_encode` / :func:`~pano_core.diffusion.vae.vae_decode`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..diffusion.masks import image_mask_to_latent, keep_mask_for_tokens, latent_mask_to_tokens, place_view
from ..diffusion.rf_inversion import InversionResult, edit_latent, invert_latent, outpaint_init
from ..diffusion.schedules import sigma_schedule
from ..diffusion.tokens import TokenGrid
from ..diffusion.vae import vae_decode, vae_encode
from ..errors import PanoInputError
from ..validate import check_bchw, check_erp, check_int
from .attention import FeatureReplacer

__all__ = [
    "EditSettings",
    "flux_components",
    "dit360_pipeline",
    "encode_image",
    "decode_latent",
    "flux_sigmas",
    "invert",
    "edit",
    "inpaint",
    "outpaint",
    "place_view",
    "generate_from_view",
]


@dataclass
class EditSettings:
    """Defaults of the editing algorithm (DiT360 / RF-inversion)."""

    steps: int = 28
    guidance: float = 2.8
    gamma: float = 0.5
    eta: float = 0.9
    eta_start: float = 0.0
    eta_stop: float = 1.0
    tau: float = 0.5
    padding: int = 1


def flux_components(pipe):
    """The diffusers Flux pipeline inside ``pipe`` (itself, or ``pipe.pipe`` / ``pipe.pipeline``)."""
    for obj in (pipe, getattr(pipe, "pipe", None), getattr(pipe, "pipeline", None)):
        if obj is not None and all(hasattr(obj, a) for a in ("transformer", "vae", "scheduler", "encode_prompt")):
            return obj
    raise PanoInputError(
        f"pipe: expected a diffusers Flux pipeline (transformer, vae, scheduler, encode_prompt), got {type(pipe).__name__}"
    )


def dit360_pipeline(pipe):
    """``pipe`` as a :class:`~pano_core.dit360.pipeline.DiT360Pipeline`: itself (or the one
    inside ``pipe.pipe`` / ``pipe.pipeline``), or a new one wrapping the diffusers
    ``FluxPipeline`` inside it (no copy: same components)."""
    from .pipeline import DiT360Pipeline

    fp = flux_components(pipe)
    return fp if isinstance(fp, DiT360Pipeline) else DiT360Pipeline(fp)


def _latent_grid(d360, latent_hw: tuple[int, int], padding: int) -> TokenGrid:
    """The wrapped-id :class:`~pano_core.diffusion.tokens.TokenGrid` of a latent ``latent_hw``."""
    return TokenGrid.from_latent(latent_hw, int(padding), "wrapped", vae_factor=d360.vae_scale_factor)


def _device(fp) -> torch.device:
    dev = getattr(fp, "_execution_device", None)
    if dev is None:
        dev = next(fp.transformer.parameters()).device
    return torch.device(dev)


def _check_image(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    check_erp(image, name, channels=(3, 4))
    h, w = image.shape[-2:]
    if h % 16 or w % 16:
        raise PanoInputError(f"{name}: width and height must be multiples of 16 for Flux; got {w}x{h} (W x H)")
    return image[:, :3]


@torch.no_grad()
def encode_image(pipe, image: torch.Tensor) -> torch.Tensor:
    """VAE-encode an image ``(B, 3, H, W)`` in 0..1 to a scaled Flux latent ``(B, 16, H/8, W/8)``
    (posterior mode, FLUX's shift and scaling; :func:`pano_core.diffusion.vae.vae_encode`), float32."""
    fp = flux_components(pipe)
    return vae_encode(fp.vae, image, device=_device(fp)).float()


@torch.no_grad()
def decode_latent(pipe, latent: torch.Tensor, circular_decode: bool = False, decode_pad: int = 4) -> torch.Tensor:
    """Inverse of :func:`encode_image`: scaled latent -> image ``(B, 3, H, W)`` in 0..1 (float32).

    ``circular_decode`` wraps ``decode_pad`` latent columns around both sides before the VAE and
    crops the matching pixels after it (no seam from the decoder at 0/360 degrees).
    """
    fp = flux_components(pipe)
    return vae_decode(fp.vae, latent, wrap_cols=int(decode_pad) if circular_decode else 0, device=_device(fp))


def flux_sigmas(pipe, steps: int, latent_hw: tuple[int, int], padding: int = 1) -> torch.Tensor:
    """FLUX.1-dev sigma schedule (``steps + 1`` values, 1 -> 0) for a latent of ``latent_hw``,
    with ``mu`` computed from the *padded* token count (as DiT360 does)."""
    check_int(steps, "steps", 1)
    fp = flux_components(pipe)
    grid = TokenGrid.from_latent(latent_hw, int(padding))
    return sigma_schedule(fp.scheduler, steps, grid.padded_tokens)


class _FluxVelocity:
    """Velocity function of the Flux transformer on unpadded latents (B, C, h, w) at a sigma.

    Built from :class:`~pano_core.dit360.pipeline.DiT360Pipeline`'s pieces (a plain diffusers
    ``FluxPipeline`` is wrapped in one): each call packs the latent into tokens
    (:meth:`~DiT360Pipeline.pack`), pads them circularly (``padding`` token columns per side,
    wrapped ids: :meth:`TokenGrid.pad`, :meth:`~DiT360Pipeline.image_ids`), runs
    :meth:`~DiT360Pipeline.transformer_call` with the text embeddings and the guidance
    (:meth:`~DiT360Pipeline.guidance_tensor`), crops and unpacks the output.
    """

    def __init__(self, pipe, latent_shape, padding: int, guidance: float, max_sequence_length: int = 512):
        self.pipe = dit360_pipeline(pipe)
        self.tr = self.pipe.transformer
        self.device = self.pipe.device
        self.dtype = self.tr.dtype
        self.grid = _latent_grid(self.pipe, latent_shape[-2:], padding)
        self.h_tok, self.w_tok, self.p = self.grid.h, self.grid.w, self.grid.p
        self.img_ids = self.pipe.image_ids(self.grid, dtype=torch.float32)
        self.guidance = float(guidance)
        self.max_sequence_length = max_sequence_length

    def encode(self, prompt: str):
        """``(prompt_embeds, pooled, text_ids)`` of one prompt (no panorama prefix added here)."""
        return self.pipe.encode_prompt(prompt, 1, prompt_prefix=None, max_sequence_length=self.max_sequence_length)

    def __call__(self, x: torch.Tensor, sigma: float, pe, pooled, txt_ids) -> torch.Tensor:
        from .pipeline import PromptEmbeds

        b = x.shape[0]
        d = self.pipe
        tok = self.grid.pad(d.pack(x.to(self.device))).to(self.dtype)
        embeds = PromptEmbeds(
            prompt_embeds=pe.expand(b, -1, -1) if pe.shape[0] == 1 else pe,
            pooled=pooled.expand(b, -1) if pooled.shape[0] == 1 else pooled,
            text_ids=txt_ids,
        )
        t = torch.tensor(float(sigma), device=self.device)
        out = d.transformer_call(tok, t, embeds, d.guidance_tensor(self.guidance, b), self.img_ids, time_scale=1.0)
        return d.unpack(self.grid.crop(out).float(), self.grid)


def _progress(pipe, total: int, enabled: bool, desc: str):
    fp = flux_components(pipe)
    if enabled and hasattr(fp, "progress_bar"):
        return fp.progress_bar(total=total)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled)


@torch.no_grad()
def invert(
    pipe,
    image: torch.Tensor,
    *,
    prompt: str = "",
    steps: int = 28,
    guidance: float = 2.8,
    gamma: float = 0.5,
    seed: int = 0,
    padding: int = 1,
    keep_trajectory: bool = False,
    progress: bool = True,
    callback: Callable | None = None,
) -> InversionResult:
    """RF-invert a panorama ``(1, 3, H, W)`` (0..1): controlled forward ODE with strength
    ``gamma`` toward seeded noise (``seed``), conditioned on ``prompt`` (describe the source;
    empty is fine) and ``guidance``. Returns :class:`InversionResult` (latents in scaled VAE space)."""
    image = _check_image(image)
    y0 = encode_image(pipe, image)
    vel = _FluxVelocity(pipe, y0.shape, padding, guidance)
    pe, pooled, txt = vel.encode(prompt)
    sigmas = flux_sigmas(pipe, steps, y0.shape[-2:], vel.p)
    bar = _progress(pipe, steps, progress, "DiT360 inversion")

    def cb(i, n, st):
        bar.update(1)
        if callback is not None:
            callback(i, n, st)

    try:
        return invert_latent(lambda x, s: vel(x, s, pe, pooled, txt), y0, sigmas, gamma, seed,
                             keep_trajectory=keep_trajectory, callback=cb)
    finally:
        bar.close()


@torch.no_grad()
def edit(
    pipe,
    inversion: InversionResult,
    mask: torch.Tensor,
    *,
    prompt: str,
    source_prompt: str = "",
    steps: int | None = None,
    guidance: float = 2.8,
    eta: float = 0.9,
    eta_start: float = 0.0,
    eta_stop: float = 1.0,
    tau: float = 0.5,
    blend_until: float | None = None,
    padding: int = 1,
    fresh_noise_seed: int | None = None,
    replace_features: bool = True,
    progress: bool = True,
    callback: Callable | None = None,
    output: str = "image",
    circular_decode: bool = False,
):
    """Edit from an inversion: denoise [source, edit] with masked feature replacement.

    ``mask``: image-size (or latent-size) mask ``(1, 1, H, W)``, 1 = generate anew. ``prompt``
    describes the result, ``source_prompt`` the original (the source branch's prompt).
    ``steps``: sampling steps (default: the inversion's). ``fresh_noise_seed``: when given, the
    edit branch starts from seeded fresh noise in the masked region (outpainting).
    ``output``: ``"image"`` -> (1, 3, H, W) in 0..1; ``"latent"`` -> :class:`EditResult`.
    ``circular_decode``: decode with wrapped latent columns (see :func:`decode_latent`).
    """
    y0, z1 = inversion.source, inversion.latent
    m = image_mask_to_latent(mask, tuple(y0.shape[-2:])).to(y0.device)
    vel = _FluxVelocity(pipe, y0.shape, padding, guidance)
    pe_s, pool_s, txt = vel.encode(source_prompt)
    pe_e, pool_e, _ = vel.encode(prompt)
    if pe_s.shape != pe_e.shape:
        raise PanoInputError("prompt: source and edit prompt embeddings differ in length; use the same max_sequence_length")
    pe = torch.cat([pe_s, pe_e]).repeat_interleave(y0.shape[0], dim=0)
    pooled = torch.cat([pool_s, pool_e]).repeat_interleave(y0.shape[0], dim=0)
    n_steps = steps if steps is not None else len(inversion.sigmas) - 1
    sigmas = flux_sigmas(pipe, n_steps, y0.shape[-2:], vel.p)
    edit_tok = latent_mask_to_tokens(m).expand(y0.shape[0], -1)
    keep = keep_mask_for_tokens(edit_tok, vel.h_tok, vel.w_tok, vel.grid.padded_tokens)
    init = None
    if fresh_noise_seed is not None:
        init = outpaint_init(z1, m, int(fresh_noise_seed))
    bar = _progress(pipe, n_steps, progress, "DiT360 edit")
    replacer = FeatureReplacer(vel.tr, keep.to(vel.device))

    def pair(x_src, x_edit, sigma, replace):
        replacer.enabled = bool(replace and replace_features)
        v = vel(torch.cat([x_src, x_edit]), sigma, pe, pooled, txt)
        replacer.enabled = False
        return v[: x_src.shape[0]], v[x_src.shape[0]:]

    def cb(i, n, st):
        bar.update(1)
        if callback is not None:
            callback(i, n, st)

    try:
        with replacer:
            res = edit_latent(pair, z1, y0, m, sigmas, eta=eta, eta_start=eta_start, eta_stop=eta_stop,
                              tau=tau, blend_until=blend_until, init_edit=init, callback=cb)
    finally:
        bar.close()
    if output == "latent":
        return res
    return decode_latent(pipe, res.edit, circular_decode=circular_decode)


def _run(pipe, image, mask, mode, *, prompt, source_prompt="", steps=28, guidance=2.8, seed=0, gamma=0.5,
         eta=0.9, eta_start=0.0, eta_stop=1.0, tau=0.5, blend_until=None, padding=1, inversion_steps=None,
         progress=True, output="image", circular_decode=False):
    image = _check_image(image)
    check_bchw(mask, "mask", channels=(1,))
    if mask.shape[-2:] != image.shape[-2:]:
        raise PanoInputError(
            f"mask: size {mask.shape[-1]}x{mask.shape[-2]} (W x H) does not match the image "
            f"{image.shape[-1]}x{image.shape[-2]}"
        )
    inv = invert(pipe, image, prompt=source_prompt, steps=inversion_steps or steps, guidance=guidance,
                 gamma=gamma, seed=seed, padding=padding, progress=progress)
    return edit(pipe, inv, mask, prompt=prompt, source_prompt=source_prompt, steps=steps, guidance=guidance,
                eta=eta, eta_start=eta_start, eta_stop=eta_stop, tau=tau, blend_until=blend_until,
                padding=padding, fresh_noise_seed=(seed + 1 if mode == "outpaint" else None),
                progress=progress, output=output, circular_decode=circular_decode)


def inpaint(pipe, image: torch.Tensor, mask: torch.Tensor, *, prompt: str, **opts):
    """Regenerate the white (1) region of ``mask`` in the panorama ``image`` (1, 3, H, W) from
    ``prompt``; the black region is kept. Options: ``source_prompt, steps, guidance, seed, gamma,
    eta, eta_start, eta_stop, tau, blend_until, padding, inversion_steps, progress, output,
    circular_decode``.
    Returns the edited panorama (1, 3, H, W) in 0..1."""
    return _run(pipe, image, mask, "inpaint", prompt=prompt, **opts)


def outpaint(pipe, image: torch.Tensor, mask: torch.Tensor, *, prompt: str, **opts):
    """Generate the white (1) region of ``mask`` (the unknown part, e.g. outside a placed photo)
    around the kept black region, starting from fresh seeded noise there. Same options as
    :func:`inpaint`."""
    return _run(pipe, image, mask, "outpaint", prompt=prompt, **opts)


def generate_from_view(
    pipe,
    view_image_bchw: torch.Tensor,
    fov_deg: float,
    yaw: float = 0.0,
    pitch: float = 0.0,
    *,
    prompt: str,
    height: int = 1024,
    width: int = 2048,
    steps: int = 28,
    guidance: float = 2.8,
    seed: int = 0,
    **opts,
) -> torch.Tensor:
    """View-to-panorama: place the photo (fov, yaw, pitch) on the ERP canvas and outpaint the rest.

    Returns the panorama (1, 3, height, width) in 0..1; the photo's region is kept.
    Extra options as :func:`outpaint` (``source_prompt, gamma, eta, tau, padding, ...``).
    """
    if width != 2 * height:
        raise PanoInputError(f"width/height: a panorama must be 2:1, got {width}x{height}")
    canvas, gen = place_view(view_image_bchw[:1, :3], fov_deg, yaw, pitch, height=height, width=width)
    return outpaint(pipe, canvas, gen, prompt=prompt, steps=steps, guidance=guidance, seed=seed, **opts)
