"""ComfyUI side of the DiT360 circular-padding patch (wrappers on a cloned ModelPatcher).

How it works (all tensor math is in :class:`pano_core.diffusion.tokens.TokenGrid` and
:mod:`pano_core.diffusion.circular`):

1. ``OUTER_SAMPLE`` wrapper (around ``CFGGuider.outer_sample``): the whole sampling runs on a
   latent that is wider by ``2p`` latent columns (``p`` token columns) per side. The initial
   noise, the latent image, the noise/denoise mask and the inpainting conditioning
   (``concat_latent_image``, ``concat_mask``) are wrap-padded the same way (last columns
   prepended, first appended) so they stay aligned; so are cond masks and ControlNet hints
   (on copies of the ControlNet chain, resized first as ComfyUI would resize them for the
   unpadded latent), and cond areas are shifted by the padding; the result and the preview/x0 callbacks
   are cropped back. The padded columns are part of the sampler state and evolve with it;
   a sampler that adds noise (ancestral, SDE) puts different noise into a padded column and its
   source, so by default ("re-sync per step") the model wrapper rebuilds them before every call
   ("re-sync none" is DiT360's free-running columns). The wrapper also puts the :class:`TokenGrid` into
   ``transformer_options["pano360_dit360"]["grid"]`` of this sampling run only (the model
   wrapper and the editing nodes read the padding from there: :func:`active_grid`).
2. ``DIFFUSION_MODEL`` wrapper (around ``Flux._forward``): for a padded input it (optionally,
   "re-sync per step") rebuilds the padded columns from the current opposite edge of the input
   (all channels, so inpainting ``c_concat`` channels too), and adds a per-call ``post_input``
   patch that rewrites the position ids of the image grid only: padded columns get the ids of
   the opposite edge ("wrapped", DiT360) or extended ids ("linear"). Tokens after the image
   grid (Kontext ``ref_latents``) and their ids are left alone.

Nothing is mutated in place: the ModelPatcher is cloned, the shared ``nn.Module`` is never
touched, and ``transformer_options`` dicts are copied before they are changed.
"""

from __future__ import annotations

import comfy.patcher_extension
import comfy.sampler_helpers
import torch

from ..pano_core.diffusion.circular import pad_latent, pad_span
from ..pano_core.diffusion.schedules import shift_mu
from ..pano_core.diffusion.tokens import ID_MODES, TokenGrid, check_padding
from ..pano_core.errors import PanoInputError
from ..pano_core.validate import check_choice, check_int
from ._common import log

KEY = "pano360_dit360"
OPT_KEY = "pano360_dit360"
RESYNC_MODES = ("none", "per step")


def flux_model_or_error(model, user: str = "the DiT360 panorama patch", patch_sizes: tuple[int, ...] = (2,)
                        ) -> torch.nn.Module:
    """Return the Flux diffusion model of a ComfyUI MODEL or raise a PanoInputError naming its type
    (``user``: what needs the Flux model, for the message; ``patch_sizes``: accepted patch sizes,
    2 = FLUX.1, 1 = FLUX.2, whose ``comfy.ldm.flux`` model has the same ``post_input`` path)."""
    import comfy.ldm.flux.model

    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    if not isinstance(dm, comfy.ldm.flux.model.Flux):
        kind = type(base).__name__ if base is not None else type(model).__name__
        inner = type(dm).__name__ if dm is not None else "none"
        raise PanoInputError(
            f"model: {user} needs a Flux model (FLUX.1-dev/schnell/Fill/Kontext); "
            f"got a {kind} model (diffusion model {inner})"
        )
    if getattr(dm, "patch_size", 2) not in patch_sizes:
        raise PanoInputError(
            f"model: {user} expects a Flux model with patch size {' or '.join(map(str, patch_sizes))}, got patch "
            f"size {dm.patch_size}"
        )
    return dm


def _grid(h_lat: int, w_lat: int, p: int, id_mode: str = "wrapped", patch: int = 2) -> TokenGrid:
    """The token grid of a Flux latent ``h_lat x w_lat`` with ``p`` padded token columns per side
    (``patch``: 2 for FLUX.1, 1 for FLUX.2)."""
    if patch != 2:
        w_tok = w_lat // patch
        check_padding(w_tok, p, name=f"padding (panorama {w_tok} tokens wide)")
        return TokenGrid.from_latent((h_lat, w_lat), p, id_mode, patch=patch)
    if w_lat % 2 or h_lat % 2:
        raise PanoInputError(
            f"latent: the panorama width and height must be multiples of 16 px for Flux (2x2 patches of "
            f"8x downscaled latents); got a latent of {w_lat}x{h_lat} (= {w_lat * 8}x{h_lat * 8} px)"
        )
    w_tok = w_lat // 2
    check_padding(w_tok, p, name=f"padding (panorama {w_tok} tokens wide)")
    return TokenGrid(h=h_lat // 2, w=w_tok, p=p, id_mode=id_mode)


def active_grid(model_options: dict | None) -> TokenGrid | None:
    """The :class:`TokenGrid` the DiT360 patch set for the sampling run these ``model_options``
    belong to (None when the model is not patched or its padding is 0)."""
    info = ((model_options or {}).get("transformer_options") or {}).get(OPT_KEY)
    return info["grid"] if info else None


def _pad_concat(c: dict, w_lat: int, cols: int) -> None:
    img = c.get("concat_latent_image")
    if isinstance(img, torch.Tensor) and img.ndim == 4:
        if img.shape[-1] == w_lat:
            c["concat_latent_image"] = pad_latent(img, cols)
        else:
            log.warning("Pano360 DiT360 patch: concat_latent_image width %d != latent width %d; not padded",
                        img.shape[-1], w_lat)
    m = c.get("concat_mask")
    if isinstance(m, torch.Tensor) and m.ndim >= 2:
        if m.shape[-1] % w_lat == 0:
            c["concat_mask"] = pad_latent(m, cols * (m.shape[-1] // w_lat))
        else:
            log.warning("Pano360 DiT360 patch: concat_mask width %d is not a multiple of the latent width %d; "
                        "not padded", m.shape[-1], w_lat)


def _pad_area(area, dims: tuple[int, int], cols: int):
    """A ComfyUI cond ``area`` (absolute latent units ``(h, w, y, x)`` or ``("percentage", h, w, y,
    x)``) of the unpadded latent -> the absolute area on the padded latent."""
    h_lat, w_lat = dims
    a = list(area)
    if a and a[0] == "percentage":
        v = a[1:]
        if len(v) != 4:
            return None
        a = [max(1, round(v[0] * h_lat)), max(1, round(v[1] * w_lat)), round(v[2] * h_lat), round(v[3] * w_lat)]
    if len(a) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in a):
        return None
    x, w = pad_span(a[3], a[1], w_lat, cols)
    return (a[0], w, a[2], x)


def _pad_mask(mask: torch.Tensor, dims: tuple[int, int], cols: int) -> torch.Tensor:
    """A cond ``mask`` (any resolution, covering the unpadded image) -> latent size, wrap-padded;
    resized the way ComfyUI resizes it for an unpadded latent, so the padded sampler uses it as is."""
    import comfy.utils

    h_lat, w_lat = dims
    m = mask.unsqueeze(0) if mask.ndim == 2 else mask
    if tuple(m.shape[-2:]) != (h_lat, w_lat):
        if m.ndim < 4:
            m = comfy.utils.common_upscale(m.unsqueeze(1), w_lat, h_lat, "bilinear", "none").squeeze(1)
        else:
            m = comfy.utils.common_upscale(m, w_lat, h_lat, "bilinear", "none")
    return pad_latent(m, cols)


def _pad_hint(t: torch.Tensor, h: int, w: int, cols: int, algo: str) -> torch.Tensor:
    """Resize a hint the way ComfyUI does for an ``h x w`` target, then wrap-pad its width."""
    import comfy.utils

    if t.ndim < 4 or (t.shape[-1] == 1 and t.shape[-2] == 1):
        return t  # a constant (e.g. the all-ones mask of inpainting ControlNets): nothing to align
    return pad_latent(comfy.utils.common_upscale(t, w, h, algo, "center"), cols)


def _padded_control(control, dims: tuple[int, int], cols: int, memo: dict):
    """A copy of a ControlNet chain whose hints are resized to the unpadded latent and wrap-padded,
    so that ComfyUI's resize to the padded latent is the identity and hint columns stay aligned
    with latent columns. The user's ControlNet objects are never changed; one copy per object (a
    ControlNet shared by the positive and negative conds stays shared)."""
    import comfy.controlnet

    if control is None:
        return None
    if id(control) in memo:
        return memo[id(control)]
    if not isinstance(control, comfy.controlnet.ControlNet) or getattr(control, "cond_hint_original", None) is None:
        log.warning("Pano360 DiT360 patch: %s hints are not wrap-padded; they are stretched over the padded "
                    "latent", type(control).__name__)
        memo[id(control)] = control
        return control
    h_lat, w_lat = dims
    c = control.copy()
    r = control.compression_ratio
    vr = control.vae.spacial_compression_encode() if control.vae is not None else 1
    c.cond_hint_original = _pad_hint(control.cond_hint_original, h_lat * r * vr, w_lat * r * vr, cols * r * vr,
                                     control.upscale_algorithm)
    c.extra_concat_orig = [_pad_hint(t, h_lat * r, w_lat * r, cols * r, control.upscale_algorithm)
                           for t in control.extra_concat_orig]
    memo[id(control)] = c
    if control.previous_controlnet is not None:
        c.set_previous_controlnet(_padded_control(control.previous_controlnet, dims, cols, memo))
    return c


def _pad_conds(conds: dict, dims: tuple[int, int], cols: int) -> None:
    """Align the spatial parts of every cond with the wrap-padded latent (these dicts are per-run
    copies made by the guider): inpainting concat, area, mask, ControlNet hints."""
    h_lat, w_lat = dims
    memo: dict = {}
    for lst in conds.values():
        for c in lst:
            _pad_concat(c, w_lat, cols)
            if "area" in c:
                a = _pad_area(c["area"], dims, cols)
                if a is None:
                    log.warning("Pano360 DiT360 patch: area %r not understood; left as is", c["area"])
                else:
                    c["area"] = a
            if isinstance(c.get("mask"), torch.Tensor) and c["mask"].ndim >= 2:
                c["mask"] = _pad_mask(c["mask"], dims, cols)
            if c.get("control") is not None:
                c["control"] = _padded_control(c["control"], dims, cols, memo)


class OuterSampleWrapper:
    """``WrappersMP.OUTER_SAMPLE``: run the sampler on a wrap-padded latent, crop the result."""

    def __init__(self, padding: int, id_mode: str, resync: str, patch: int = 2):
        self.padding = int(padding)
        self.id_mode = id_mode
        self.resync = resync
        self.patch = int(patch)

    def __call__(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                 disable_pbar=False, seed=None, latent_shapes=None):
        guider = executor.class_obj
        p = self.padding
        if noise.ndim != 4 or getattr(latent_image, "is_nested", False) or (latent_shapes and len(latent_shapes) > 1):
            raise PanoInputError("latent: the DiT360 panorama patch expects a single image latent (B, C, H, W)")
        b, ch, h_lat, w_lat = noise.shape
        grid = _grid(h_lat, w_lat, p, self.id_mode, self.patch)
        if p == 0:
            return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                            latent_shapes=latent_shapes)
        cols = grid.latent_cols
        noise_p = grid.pad_latent(noise)
        latent_p = grid.pad_latent(latent_image)
        mask_p = None
        if denoise_mask is not None:
            mask = comfy.sampler_helpers.prepare_mask(denoise_mask, noise.shape, noise.device)
            mask_p = grid.pad_latent(mask)
        _pad_conds(guider.conds, (h_lat, w_lat), cols)

        cb = None
        if callback is not None:
            def cb(step, x0, x, total_steps):
                return callback(step, grid.crop_latent(x0), grid.crop_latent(x), total_steps)

        topts = guider.model_options.setdefault("transformer_options", {})
        had = OPT_KEY in topts
        old = topts.get(OPT_KEY)
        topts[OPT_KEY] = {"grid": grid, "resync": self.resync}
        try:
            out = executor(noise_p, latent_p, sampler, sigmas, mask_p, cb, disable_pbar, seed,
                           latent_shapes=[noise_p.shape])
        finally:
            if had:
                topts[OPT_KEY] = old
            else:
                topts.pop(OPT_KEY, None)
        return grid.crop_latent(out)


class _IdsPatch:
    """Per-call ``post_input`` patch: rewrite the image grid's position ids.

    The rewritten ids depend only on the incoming ids (the same every step of a run), so they are
    kept in ``cache`` (owned by the wrapper) and reused while the incoming ids are equal: one
    ``torch.equal`` per step instead of rebuilding the grid."""

    def __init__(self, grid: TokenGrid, cache: dict | None = None):
        self.grid = grid
        self.cache = {} if cache is None else cache
        self.called = False

    def __call__(self, args: dict) -> dict:
        img_ids = args["img_ids"]
        g = self.grid
        h, w, p = g.h, g.w, g.p
        n = g.padded_tokens
        if img_ids is None or img_ids.shape[1] < n or args["img"].shape[1] < n:
            raise PanoInputError(
                f"model: expected at least {n} image tokens for a {h}x{w + 2 * p} padded token grid, "
                f"got ids {None if img_ids is None else tuple(img_ids.shape)}"
            )
        key = (g, tuple(img_ids.shape), img_ids.dtype, img_ids.device)
        hit = self.cache.get(key)
        if hit is not None and torch.equal(hit[0], img_ids):
            new_ids = hit[1]
        else:
            grid = img_ids[:, :n].reshape(img_ids.shape[0], h, w + 2 * p, img_ids.shape[-1])
            base = grid[:, :, :w].reshape(img_ids.shape[0], h * w, img_ids.shape[-1])
            new = g.pad_ids(base)
            new_ids = torch.cat([new, img_ids[:, n:]], dim=1) if img_ids.shape[1] > n else new
            if len(self.cache) >= 4:
                self.cache.clear()
            self.cache[key] = (img_ids.clone(), new_ids)
        out = dict(args)
        out["img_ids"] = new_ids
        self.called = True
        return out


class DiffusionModelWrapper:
    """``WrappersMP.DIFFUSION_MODEL``: wrapped ids (+ per-step re-sync) on a padded input."""

    def __init__(self, padding: int, id_mode: str, resync: str):
        self.padding = int(padding)
        self.id_mode = id_mode
        self.resync = resync
        self._ids_cache: dict = {}

    def __call__(self, executor, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                 transformer_options=None, **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        info = transformer_options.get(OPT_KEY)
        if not info or info["grid"].p == 0:
            return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)
        grid = info["grid"]
        if x.ndim != 4 or x.shape[-1] != grid.patch * grid.wp or x.shape[-2] != grid.patch * grid.h:
            # e.g. area conditioning crops the input: not the full padded grid, leave it alone
            return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)
        if info["resync"] == "per step":
            x = grid.resync_latent(x)
        ids_patch = _IdsPatch(grid, self._ids_cache)
        topts = dict(transformer_options)
        patches = dict(topts.get("patches", {}))
        patches["post_input"] = [ids_patch] + list(patches.get("post_input", []))
        topts["patches"] = patches
        out = executor(x, timestep, context, y, guidance, ref_latents, control, topts, **kwargs)
        if not ids_patch.called:
            raise PanoInputError(
                "model: this Flux variant's forward does not apply post_input patches, so the panorama "
                "position ids cannot be set; use padding 0 or a standard Flux model"
            )
        return out


def apply_dit360_patch(model, padding: int = 1, id_mode: str = "wrapped", resync: str = "per step"):
    """Clone a ComfyUI FLUX.1 or FLUX.2 MODEL and add the circular-padding wrappers (replacing earlier ones)."""
    dm = flux_model_or_error(model, patch_sizes=(2, 1))
    check_choice(id_mode, "id_mode", ID_MODES)
    check_choice(resync, "resync", RESYNC_MODES)
    check_int(padding, "padding", 0, what="a number of token columns per side")
    m = model.clone()
    WMP = comfy.patcher_extension.WrappersMP
    m.remove_wrappers_with_key(WMP.OUTER_SAMPLE, KEY)
    m.remove_wrappers_with_key(WMP.DIFFUSION_MODEL, KEY)
    m.add_wrapper_with_key(WMP.OUTER_SAMPLE, KEY, OuterSampleWrapper(padding, id_mode, resync, dm.patch_size))
    m.add_wrapper_with_key(WMP.DIFFUSION_MODEL, KEY, DiffusionModelWrapper(padding, id_mode, resync))
    return m


def apply_panorama_shift(model, width: int, height: int, padding: int, base_shift: float = 0.5,
                         max_shift: float = 1.15):
    """Clone MODEL with FLUX's resolution-dependent shift computed from the padded token count.

    Same sampling class as ComfyUI's ``ModelSamplingFlux`` node; ``mu`` from
    :func:`pano_core.diffusion.schedules.shift_mu` of the padded token count (DiT360's choice).
    """
    import comfy.model_sampling

    flux_model_or_error(model)
    if width % 16 or height % 16:
        raise PanoInputError(f"width/height: must be multiples of 16 px, got {width}x{height}")
    check_padding(width // 16, padding)
    grid = TokenGrid(h=height // 16, w=width // 16, p=padding)
    mu = shift_mu(grid.padded_tokens, base_shift=base_shift, max_shift=max_shift)

    class ModelSamplingPanorama(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):
        pass

    ms = ModelSamplingPanorama(model.model.model_config)
    ms.set_parameters(shift=mu)
    m = model.clone()
    m.add_object_patch("model_sampling", ms)
    return m, mu
