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

Presets (:data:`PRESETS`, ``preset=`` of :func:`inpaint` / :func:`outpaint` /
:func:`generate_from_view`; single options override them):

- ``"official"``: exactly the official DiT360 editing code's settings -- 50 steps; inversion with
  gamma 1.0, guidance 0 and an empty prompt; eta 1.0 on steps [0, 49); guidance 3.5 (the official
  ``guidance=2.8`` argument is never passed on); the edit branch starts from fresh noise in
  inpaint and outpaint alike; ``mu`` from the unpadded token count; attention-input replacement;
  plain VAE encode.
- ``"pano360"`` (default): ours -- 28 steps, guidance 2.8 (inversion too, with the source
  prompt), gamma 0.5, eta 0.9 on all steps, inpaint starts from the inverted latent (keeps the
  layout), ``mu`` from the padded token count, attention-input replacement, circular VAE encode
  (8 wrapped latent columns, no seam baked into the latent).

The model sees the latent circularly padded by ``padding`` token columns per side on every call
(wrapped position ids, :class:`pano_core.diffusion.tokens.TokenGrid`); the kept-token mask is
padded exactly like the tokens (wrap), the schedule shift ``mu`` comes from the padded (or, as
the official code does, unpadded) token count
(:func:`pano_core.diffusion.schedules.sigma_schedule`), the guidance value reaches the
transformer's guidance embedding, and inversion noise is seeded. VAE encode/decode are
:func:`pano_core.diffusion.vae.vae_encode` / :func:`~pano_core.diffusion.vae.vae_decode`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

from ..diffusion.masks import image_mask_to_latent, keep_mask_for_tokens, latent_mask_to_tokens, place_view
from ..diffusion.rf_inversion import InversionResult, edit_latent, invert_latent, outpaint_init
from ..diffusion.schedules import sigma_schedule
from ..diffusion.tokens import TokenGrid
from ..diffusion.vae import vae_decode, vae_encode
from ..errors import PanoInputError
from ..validate import check_bchw, check_choice, check_erp, check_int
from .attention import REPLACE_MODES, FeatureReplacer

__all__ = [
    "EditSettings",
    "PRESETS",
    "PRESET_NAMES",
    "MU_TOKENS",
    "edit_settings",
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


MU_TOKENS = ("padded", "unpadded")
_INPAINT_STARTS = ("inverted", "noise")
_INVERSION_PROMPTS = ("source", "empty")


@dataclass(frozen=True)
class EditSettings:
    """Settings of the editing algorithm (RF-inversion + masked feature replacement).

    ``guidance``: Flux guidance of the edit (both branches); ``inversion_guidance``: of the
    inversion (None: ``guidance``); ``inversion_prompt``: ``"source"`` (invert with the source
    prompt) or ``"empty"``; ``gamma``: inversion controller; ``eta`` on step fractions
    ``[eta_start, eta_stop)``: source-branch controller; ``tau``: feature replacement and latent
    blending while sigma > tau; ``inpaint_start``: the inpaint edit branch starts from the
    ``"inverted"`` latent or fresh ``"noise"`` in the masked region (outpaint always starts from
    noise); ``mu_tokens``: the schedule shift from the ``"padded"`` or ``"unpadded"`` token count;
    ``replace``: ``"attention"`` (official) or ``"block"``
    (:mod:`pano_core.dit360.attention`); ``circular_encode``: VAE-encode with 8 wrapped latent
    columns per side.
    """

    steps: int = 28
    guidance: float = 2.8
    inversion_guidance: float | None = None
    inversion_prompt: str = "source"
    gamma: float = 0.5
    eta: float = 0.9
    eta_start: float = 0.0
    eta_stop: float = 1.0
    tau: float = 0.5
    inpaint_start: str = "inverted"
    mu_tokens: str = "padded"
    replace: str = "attention"
    circular_encode: bool = True
    padding: int = 1


PRESETS: dict[str, EditSettings] = {
    # ours
    "pano360": EditSettings(),
    # exactly what the official DiT360 editing code runs (DESIGN.md section 5)
    "official": EditSettings(
        steps=50, guidance=3.5, inversion_guidance=0.0, inversion_prompt="empty", gamma=1.0, eta=1.0,
        eta_start=0.0, eta_stop=49 / 50, tau=0.5, inpaint_start="noise", mu_tokens="unpadded",
        replace="attention", circular_encode=False, padding=1,
    ),
}
PRESET_NAMES = tuple(PRESETS)


def edit_settings(preset: str = "pano360", **overrides) -> EditSettings:
    """The settings of ``preset`` (:data:`PRESETS`) with ``overrides`` (``None`` values ignored)."""
    check_choice(preset, "preset", PRESET_NAMES)
    names = {f.name for f in fields(EditSettings)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise PanoInputError(f"{bad[0]}: not an editing setting (known: {', '.join(sorted(names))})")
    st = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    check_choice(st.inversion_prompt, "inversion_prompt", _INVERSION_PROMPTS)
    check_choice(st.inpaint_start, "inpaint_start", _INPAINT_STARTS)
    check_choice(st.mu_tokens, "mu_tokens", MU_TOKENS)
    check_choice(st.replace, "replace", REPLACE_MODES)
    check_int(st.steps, "steps", 1)
    return st


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
def encode_image(pipe, image: torch.Tensor, circular_encode: bool = True, encode_pad: int | None = None) -> torch.Tensor:
    """VAE-encode an image ``(B, 3, H, W)`` in 0..1 to a scaled Flux latent ``(B, 16, H/8, W/8)``
    (posterior mode, FLUX's shift and scaling; :func:`pano_core.diffusion.vae.vae_encode`), float32.

    ``circular_encode`` (default) wraps ``encode_pad`` latent columns (default 8, at most half the
    latent width) of pixels around both sides first, so the encoder bakes no seam into the latent
    at 0/360 degrees; ``False`` is a plain encode (the official code's)."""
    fp = flux_components(pipe)
    return vae_encode(fp.vae, image, device=_device(fp), wrap_cols=encode_pad if circular_encode else 0).float()


@torch.no_grad()
def decode_latent(pipe, latent: torch.Tensor, circular_decode: bool = False, decode_pad: int | None = None) -> torch.Tensor:
    """Inverse of :func:`encode_image`: scaled latent -> image ``(B, 3, H, W)`` in 0..1 (float32).

    ``circular_decode`` wraps ``decode_pad`` latent columns (default 8, at most half the latent
    width) around both sides before the VAE and crops the matching pixels after it (no seam from
    the decoder at 0/360 degrees).
    """
    fp = flux_components(pipe)
    return vae_decode(fp.vae, latent, wrap_cols=decode_pad if circular_decode else 0, device=_device(fp))


def flux_sigmas(pipe, steps: int, latent_hw: tuple[int, int], padding: int = 1, mu_tokens: str = "padded") -> torch.Tensor:
    """FLUX.1-dev sigma schedule (``steps + 1`` values, 1 -> 0) for a latent of ``latent_hw``,
    with ``mu`` computed from the ``"padded"`` token count (as DiT360's text-to-panorama does) or
    the ``"unpadded"`` one (as the official editing code does)."""
    check_int(steps, "steps", 1)
    check_choice(mu_tokens, "mu_tokens", MU_TOKENS)
    fp = flux_components(pipe)
    grid = TokenGrid.from_latent(latent_hw, int(padding))
    return sigma_schedule(fp.scheduler, steps, grid.padded_tokens if mu_tokens == "padded" else grid.tokens)


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
    mu_tokens: str = "padded",
    circular_encode: bool = True,
    keep_trajectory: bool = False,
    progress: bool = True,
    callback: Callable | None = None,
) -> InversionResult:
    """RF-invert a panorama ``(1, 3, H, W)`` (0..1): controlled forward ODE with strength
    ``gamma`` toward seeded noise (``seed``), conditioned on ``prompt`` (describe the source;
    empty is fine) and ``guidance``. ``circular_encode``: see :func:`encode_image`.
    Returns :class:`InversionResult` (latents in scaled VAE space)."""
    image = _check_image(image)
    y0 = encode_image(pipe, image, circular_encode=circular_encode)
    vel = _FluxVelocity(pipe, y0.shape, padding, guidance)
    pe, pooled, txt = vel.encode(prompt)
    sigmas = flux_sigmas(pipe, steps, y0.shape[-2:], vel.p, mu_tokens)
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
    mu_tokens: str = "padded",
    fresh_noise_seed: int | None = None,
    replace_features: bool = True,
    replace: str = "attention",
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
    ``replace``: ``"attention"`` (official: the attention input at kept tokens) or ``"block"``
    (the block input, residual stream included); ``replace_features=False`` switches it off.
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
    sigmas = flux_sigmas(pipe, n_steps, y0.shape[-2:], vel.p, mu_tokens)
    edit_tok = latent_mask_to_tokens(m).expand(y0.shape[0], -1)
    keep = keep_mask_for_tokens(edit_tok, vel.h_tok, vel.w_tok, vel.grid.padded_tokens)
    init = None
    if fresh_noise_seed is not None:
        init = outpaint_init(z1, m, int(fresh_noise_seed))
    bar = _progress(pipe, n_steps, progress, "DiT360 edit")
    replacer = FeatureReplacer(vel.tr, keep.to(vel.device), replace=replace)

    def pair(x_src, x_edit, sigma, rep):
        replacer.enabled = bool(rep and replace_features)
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


_RUN_OPTS = ("progress", "output", "circular_decode", "blend_until", "inversion_steps")


def _run(pipe, image, mask, mode, *, prompt, source_prompt="", seed=0, preset="pano360", **opts):
    image = _check_image(image)
    check_bchw(mask, "mask", channels=(1,))
    if mask.shape[-2:] != image.shape[-2:]:
        raise PanoInputError(
            f"mask: size {mask.shape[-1]}x{mask.shape[-2]} (W x H) does not match the image "
            f"{image.shape[-1]}x{image.shape[-2]}"
        )
    run = {k: opts.pop(k) for k in _RUN_OPTS if k in opts}
    st = edit_settings(preset, **opts)
    inv = invert(pipe, image, prompt="" if st.inversion_prompt == "empty" else source_prompt,
                 steps=run.get("inversion_steps") or st.steps,
                 guidance=st.guidance if st.inversion_guidance is None else st.inversion_guidance,
                 gamma=st.gamma, seed=seed, padding=st.padding, mu_tokens=st.mu_tokens,
                 circular_encode=st.circular_encode, progress=run.get("progress", True))
    fresh = mode == "outpaint" or st.inpaint_start == "noise"
    return edit(pipe, inv, mask, prompt=prompt, source_prompt=source_prompt, steps=st.steps, guidance=st.guidance,
                eta=st.eta, eta_start=st.eta_start, eta_stop=st.eta_stop, tau=st.tau,
                blend_until=run.get("blend_until"), padding=st.padding, mu_tokens=st.mu_tokens,
                fresh_noise_seed=(seed + 1 if fresh else None), replace=st.replace,
                progress=run.get("progress", True), output=run.get("output", "image"),
                circular_decode=run.get("circular_decode", False))


def inpaint(pipe, image: torch.Tensor, mask: torch.Tensor, *, prompt: str, preset: str = "pano360", **opts):
    """Regenerate the white (1) region of ``mask`` in the panorama ``image`` (1, 3, H, W) from
    ``prompt``; the black region is kept.

    ``preset``: ``"pano360"`` (default, ours) or ``"official"`` (the official DiT360 code's
    settings), see :data:`PRESETS`; any :class:`EditSettings` field given here overrides it
    (``steps, guidance, inversion_guidance, inversion_prompt, gamma, eta, eta_start, eta_stop, tau,
    inpaint_start, mu_tokens, replace, circular_encode, padding``). Other options: ``source_prompt,
    seed, blend_until, inversion_steps, progress, output, circular_decode``.
    Returns the edited panorama (1, 3, H, W) in 0..1."""
    return _run(pipe, image, mask, "inpaint", prompt=prompt, preset=preset, **opts)


def outpaint(pipe, image: torch.Tensor, mask: torch.Tensor, *, prompt: str, preset: str = "pano360", **opts):
    """Generate the white (1) region of ``mask`` (the unknown part, e.g. outside a placed photo)
    around the kept black region, starting from fresh seeded noise there. Same options as
    :func:`inpaint`."""
    return _run(pipe, image, mask, "outpaint", prompt=prompt, preset=preset, **opts)


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
    seed: int = 0,
    preset: str = "pano360",
    **opts,
) -> torch.Tensor:
    """View-to-panorama: place the photo (fov, yaw, pitch) on the ERP canvas and outpaint the rest.

    Returns the panorama (1, 3, height, width) in 0..1; the photo's region is kept.
    ``preset`` and extra options as :func:`outpaint` (``steps, guidance, source_prompt, gamma, eta,
    tau, padding, replace, ...``).
    """
    if width != 2 * height:
        raise PanoInputError(f"width/height: a panorama must be 2:1, got {width}x{height}")
    canvas, gen = place_view(view_image_bchw[:1, :3], fov_deg, yaw, pitch, height=height, width=width)
    return outpaint(pipe, canvas, gen, prompt=prompt, seed=seed, preset=preset, **opts)
