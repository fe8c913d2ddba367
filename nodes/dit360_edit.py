"""DiT360 editing nodes: RF-inversion, masked inpaint/outpaint, view placement (thin adapters).

The ODE steps, blending, mask handling and feature replacement live in
:mod:`pano_core.diffusion.rf_inversion`, :mod:`pano_core.diffusion.masks` and
:mod:`pano_core.dit360.attention`; here the ComfyUI
Flux ``MODEL`` (patched by "DiT360 Panorama Patch" or not) is called through
``comfy.samplers.CFGGuider`` (model loading, conditioning, wrappers, the patch's padding) and
the feature replacement is installed as ``patches_replace["dit"]`` block patches (``replace =
block``) or an ``optimized_attention_override`` that swaps Q/K/V at kept image tokens
(``replace = attention``, the official DiT360 behaviour: only the attention input).

Presets (``preset``): ``custom`` uses the widgets; ``pano360`` and ``official`` set steps,
guidance, gamma, eta, eta range, tau and replace from :data:`pano_core.dit360.editing.PRESETS`
(the official DiT360 editing settings, or ours) and ignore those widgets.
"""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.samplers
import comfy.utils
import node_helpers
import torch

from ..pano_core.diffusion import rf_inversion as rf
from ..pano_core.diffusion.circular import pad_latent
from ..pano_core.diffusion.masks import image_mask_to_latent, latent_mask_to_tokens, place_view
from ..pano_core.dit360.attention import REPLACE_MODES, TokenSwap
from ..pano_core.dit360.editing import PRESET_NAMES, edit_settings
from ..pano_core.errors import PanoInputError
from ..pano_core.validate import check_choice
from ._common import CAT_DIT360 as CATEGORY
from ._common import bchw_to_image, bchw_to_mask, image_to_bchw, mask_to_bchw
from ._dit360_patch import active_grid, flux_model_or_error

INV_KEY = "pano360_inversion"
_F = "FLOAT"
NODE_PRESETS = ("custom",) + PRESET_NAMES
_PRESET_TIP = ("custom: use the widgets. pano360: our settings. official: exactly the official DiT360 editing "
               "settings (50 steps, inversion gamma 1.0 with guidance 0 and an empty prompt, eta 1.0 on steps "
               "[0, 49), guidance 3.5, fresh noise in the edited region also when inpainting, attention "
               "replacement). A preset overrides the widgets it sets; see README, DiT360 editing.")


def _preset(preset: str, **widgets):
    """The editing settings for a node: the widgets (``custom``) or a preset's values."""
    check_choice(preset, "preset", NODE_PRESETS)
    return edit_settings("pano360", **widgets) if preset == "custom" else edit_settings(preset)


def _flux(model):
    return flux_model_or_error(model, "DiT360 editing")


def _guided(cond, guidance: float):
    if cond is None or guidance < 0:
        return cond
    return node_helpers.conditioning_set_values(cond, {"guidance": float(guidance)})


class _DoublePatch:
    def __init__(self, swap: TokenSwap, i: int, prev):
        self.swap, self.i, self.prev = swap, i, prev

    def __call__(self, args, extra):
        args = dict(args)
        self.swap.set_txt_len(args["txt"].shape[1])
        args["img"] = self.swap.image(("double", self.i), args["img"])
        return self.prev(args, extra) if self.prev is not None else extra["original_block"](args)


class _SinglePatch:
    def __init__(self, swap: TokenSwap, i: int, prev):
        self.swap, self.i, self.prev = swap, i, prev

    def __call__(self, args, extra):
        args = dict(args)
        args["img"] = self.swap.joint(("single", self.i), args["img"])
        return self.prev(args, extra) if self.prev is not None else extra["original_block"](args)


class _AttentionOverride:
    """``optimized_attention_override``: Q/K/V of the current block go through the swap (attention
    mode); chained with an override that was already set (e.g. another attention backend)."""

    def __init__(self, swap: TokenSwap, prev):
        self.swap, self.prev = swap, prev

    def __call__(self, func, *args, **kwargs):
        topts = kwargs.get("transformer_options") or {}
        if len(args) >= 3 and kwargs.get("skip_reshape") and args[0].ndim == 4 and "block_type" in topts:
            key = (topts["block_type"], topts.get("block_index", 0))
            q, k, v = self.swap.qkv(key, *args[:3])
            args = (q, k, v) + tuple(args[3:])
        return self.prev(func, *args, **kwargs) if self.prev is not None else func(*args, **kwargs)


def _with_swap(model_options: dict, swap: TokenSwap, n_double: int, n_single: int) -> dict:
    """A copy of ``model_options`` with record/replace patches on every Flux block (chained
    with any existing block patch) and, in attention mode, the Q/K/V override."""
    opts = comfy.model_patcher.create_model_options_clone(model_options)
    to = opts.setdefault("transformer_options", {})
    if swap.replace == "attention":
        to["optimized_attention_override"] = _AttentionOverride(swap, to.get("optimized_attention_override"))
    pr = to.setdefault("patches_replace", {})
    dit = dict(pr.get("dit", {}))
    for i in range(n_double):
        dit[("double_block", i)] = _DoublePatch(swap, i, dit.get(("double_block", i)))
    for i in range(n_single):
        dit[("single_block", i)] = _SinglePatch(swap, i, dit.get(("single_block", i)))
    pr["dit"] = dit
    return opts


def _denoiser(guider, pos_key, neg_key, cfg, model_options, seed):
    def denoise(x, sigma):
        t = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
        return comfy.samplers.sampling_function(
            guider.inner_model, x, t, guider.conds.get(neg_key), guider.conds.get(pos_key), cfg,
            model_options=model_options, seed=seed,
        )

    return denoise


def _progress(total):
    pbar = comfy.utils.ProgressBar(total)

    def cb(i, n, state):
        comfy.model_management.throw_exception_if_processing_interrupted()
        pbar.update_absolute(i + 1, n)

    return cb


class _InvertSampler(comfy.samplers.Sampler):
    """Runs :func:`rf.invert_latent` inside ``CFGGuider.sample`` (``noise`` = seeded target)."""

    def __init__(self, gamma: float):
        self.gamma = gamma

    def sample(self, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar=False):
        den = _denoiser(guider, "positive", "negative", 1.0, extra_args["model_options"], extra_args.get("seed"))
        res = rf.invert_latent(rf.velocity_from_denoiser(den), latent_image, sigmas.cpu(), self.gamma,
                               target=noise, callback=_progress(len(sigmas) - 1))
        return res.latent


class _EditSampler(comfy.samplers.Sampler):
    """Runs :func:`rf.edit_latent` inside ``CFGGuider.sample``: ``noise`` = inverted latent,
    ``latent_image`` = source latent (both padded by the DiT360 patch when the model has it)."""

    def __init__(self, mask, cfg, settings, fresh_seed, n_double, n_single, replace="attention"):
        self.mask, self.cfg, self.settings = mask, cfg, settings
        self.fresh_seed, self.n_double, self.n_single = fresh_seed, n_double, n_single
        self.replace = replace
        self.swap = None

    def sample(self, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar=False):
        y0, z1 = latent_image, noise
        grid = active_grid(extra_args["model_options"])  # set by the DiT360 patch for this run
        cols = grid.latent_cols if grid is not None else 0
        if y0.shape[-1] != self.mask.shape[-1] + 2 * cols:
            raise PanoInputError(
                f"mask: latent width {self.mask.shape[-1]} (+ {cols} padded columns per side) does not fit the model "
                f"latent {y0.shape[-1]}"
            )
        m = pad_latent(self.mask, cols).to(device=y0.device, dtype=torch.float32)  # padded like the latents
        swap = TokenSwap(latent_mask_to_tokens(m), y0.shape[-2] // 2, y0.shape[-1] // 2, self.replace)
        self.swap = swap
        opts = _with_swap(extra_args["model_options"], swap, self.n_double, self.n_single)
        seed = extra_args.get("seed")
        v_src = rf.velocity_from_denoiser(_denoiser(guider, "src_positive", "src_negative", 1.0, opts, seed))
        v_edit = rf.velocity_from_denoiser(_denoiser(guider, "positive", "negative", self.cfg, opts, seed))

        def pair(xs, xe, sigma, replace):
            swap.mode = "record" if replace else "off"
            a = v_src(xs, sigma)
            swap.mode = "replace" if replace else "off"
            b = v_edit(xe, sigma)
            swap.mode = "off"
            return a, b

        init = None
        if self.fresh_seed is not None:
            init = rf.outpaint_init(z1, m, self.fresh_seed, wrap_cols=cols)
        res = rf.edit_latent(pair, z1, y0, m, sigmas.cpu(), init_edit=init, callback=_progress(len(sigmas) - 1),
                             **self.settings)
        return res.edit


def _sigmas(model, scheduler: str, steps: int) -> torch.Tensor:
    check_choice(scheduler, "scheduler", comfy.samplers.SCHEDULER_NAMES)
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


class Pano360DiT360Invert:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING", {"tooltip": "Describes the source panorama (an empty prompt works)."}),
                "latent": ("LATENT", {"tooltip": "VAE-encoded source panorama."}),
                "steps": ("INT", {"default": 28, "min": 1, "max": 200}),
                "gamma": (_F, {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                               "tooltip": "Controller strength toward the seeded noise (RF-inversion)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Seed of the inversion target noise (inversion is repeatable)."}),
                "guidance": (_F, {"default": 2.8, "min": -1.0, "max": 100.0, "step": 0.1,
                                  "tooltip": "Flux guidance passed to the model (-1: keep the conditioning's)."}),
                "scheduler": (comfy.samplers.SCHEDULER_NAMES, {"default": "simple"}),
                "preset": (list(NODE_PRESETS), {"default": "custom", "tooltip": _PRESET_TIP +
                           " Here: steps, gamma, guidance (official: 50, 1.0, 0; connect an empty prompt)."}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("inversion",)
    FUNCTION = "invert"
    CATEGORY = CATEGORY
    DESCRIPTION = ("RF-inversion of a panorama latent (controlled forward ODE, seeded). Feed the result to "
                   "'DiT360 Edit (inpaint/outpaint)'.")

    def invert(self, model, positive, latent, steps, gamma, seed, guidance, scheduler="simple", preset="custom"):
        _flux(model)
        st = _preset(preset, steps=int(steps), gamma=float(gamma), inversion_guidance=float(guidance))
        steps, gamma = st.steps, st.gamma
        guidance = st.guidance if st.inversion_guidance is None else st.inversion_guidance
        src = latent["samples"]
        if src.ndim != 4:
            raise PanoInputError(f"latent: expected an image latent (B, C, H, W), got {tuple(src.shape)}")
        guider = comfy.samplers.CFGGuider(model)
        pos = _guided(positive, guidance)
        guider.set_conds(pos, pos)
        guider.set_cfg(1.0)
        target = rf.seeded_noise(src.shape, int(seed))
        out = guider.sample(target, src, _InvertSampler(float(gamma)), _sigmas(model, scheduler, steps),
                            disable_pbar=True, seed=int(seed))
        res = {"samples": out.cpu(), INV_KEY: {"source": src.cpu(), "seed": int(seed), "gamma": float(gamma),
                                               "steps": int(steps), "preset": preset}}
        return (res,)


class Pano360DiT360Edit:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "source_positive": ("CONDITIONING", {"tooltip": "Source branch prompt (as used for the inversion)."}),
                "edit_positive": ("CONDITIONING", {"tooltip": "What the white mask region should become."}),
                "inversion": ("LATENT", {"tooltip": "Output of 'DiT360 Invert'."}),
                "mask": ("MASK", {"tooltip": "White = generate anew, black = keep. Image or latent size."}),
                "mode": (["inpaint", "outpaint"], {
                    "tooltip": "inpaint: the white region starts from the inverted latent (keeps its layout); "
                               "outpaint: it is unknown and starts from fresh seeded noise."}),
                "steps": ("INT", {"default": 28, "min": 1, "max": 200}),
                "guidance": (_F, {"default": 2.8, "min": -1.0, "max": 100.0, "step": 0.1,
                                  "tooltip": "Flux guidance passed to both branches (-1: keep the conditioning's)."}),
                "eta": (_F, {"default": 0.9, "min": 0.0, "max": 1.0, "step": 0.05,
                             "tooltip": "Controller strength pulling the source branch to the original."}),
                "eta_start": (_F, {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05}),
                "eta_stop": (_F, {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05}),
                "tau": (_F, {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                             "tooltip": "Feature replacement and latent blending while sigma > tau."}),
                "blend_until": (_F, {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.05,
                                     "tooltip": "Blend latents while sigma > this (-1: same as tau; 0: every step, "
                                                "the kept region then equals the reconstruction)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Seed of the fresh noise in outpaint mode."}),
                "scheduler": (comfy.samplers.SCHEDULER_NAMES, {"default": "simple"}),
                "cfg": (_F, {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1,
                             "tooltip": "Classic CFG of the edit branch (1 = off, as for FLUX.1-dev)."}),
                "replace": (list(REPLACE_MODES), {"default": "attention", "tooltip":
                    "attention (official DiT360): only the edit branch's attention input (its Q/K/V) takes the "
                    "source's at kept tokens, its residual stream and MLP stay its own. block: the whole block "
                    "input is replaced (residual stream too): the kept region follows the source more tightly. "
                    "Memory: attention stores the source's Q/K/V of every block (3x block)."}),
                "preset": (list(NODE_PRESETS), {"default": "custom", "tooltip": _PRESET_TIP +
                           " Here: steps, guidance, eta, eta_start, eta_stop, tau, replace (official inpaint "
                           "also starts the white region from fresh noise)."}),
            },
            "optional": {
                "edit_negative": ("CONDITIONING",),
            },
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "edit"
    CATEGORY = CATEGORY
    DESCRIPTION = ("DiT360 inpainting/outpainting: denoises a [source, edit] pair from the inversion with masked "
                   "feature replacement; unmasked regions are reconstructed, masked ones generated anew.")

    def edit(self, model, source_positive, edit_positive, inversion, mask, mode, steps, guidance, eta, eta_start,
             eta_stop, tau, blend_until, seed, scheduler="simple", cfg=1.0, replace="attention", preset="custom",
             edit_negative=None):
        dm = _flux(model)
        st = _preset(preset, steps=int(steps), guidance=float(guidance), eta=float(eta), eta_start=float(eta_start),
                     eta_stop=float(eta_stop), tau=float(tau), replace=replace)
        info = inversion.get(INV_KEY) if isinstance(inversion, dict) else None
        if info is None:
            raise PanoInputError("inversion: expected the LATENT output of 'DiT360 Invert' (it carries the source latent)")
        if mode not in ("inpaint", "outpaint"):
            raise PanoInputError(f"mode: expected 'inpaint' or 'outpaint', got {mode!r}")
        src = info["source"]
        z1 = model.model.process_latent_in(inversion["samples"].float())
        m = image_mask_to_latent(mask_to_bchw(mask), tuple(src.shape[-2:]))
        if edit_negative is None and abs(cfg - 1.0) > 1e-6:
            raise PanoInputError("edit_negative: required when cfg is not 1")
        guider = comfy.samplers.CFGGuider(model)
        sp = _guided(source_positive, st.guidance)
        ep = _guided(edit_positive, st.guidance)
        en = _guided(edit_negative, st.guidance) if edit_negative is not None else ep
        guider.inner_set_conds({"positive": ep, "negative": en, "src_positive": sp, "src_negative": sp})
        guider.set_cfg(float(cfg))
        settings = {"eta": st.eta, "eta_start": st.eta_start, "eta_stop": st.eta_stop, "tau": st.tau,
                    "blend_until": float(blend_until)}
        fresh = mode == "outpaint" or st.inpaint_start == "noise"
        sampler = _EditSampler(m, float(cfg), settings, int(seed) + 1 if fresh else None,
                               len(dm.double_blocks), len(dm.single_blocks), st.replace)
        out = guider.sample(z1, src, sampler, _sigmas(model, scheduler, st.steps), disable_pbar=True, seed=int(seed))
        return ({"samples": out.cpu()},)


class Pano360PlaceViewOnPanorama:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Perspective photo."}),
                "fov": (_F, {"default": 90.0, "min": 1.0, "max": 179.0, "step": 1.0,
                             "tooltip": "Horizontal field of view of the photo in degrees."}),
                "yaw": (_F, {"default": 0.0, "min": -180.0, "max": 180.0, "step": 1.0}),
                "pitch": (_F, {"default": 0.0, "min": -90.0, "max": 90.0, "step": 1.0}),
                "width": ("INT", {"default": 2048, "min": 64, "max": 16384, "step": 16}),
                "height": ("INT", {"default": 1024, "min": 32, "max": 8192, "step": 16}),
                "fill": (_F, {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05}),
            }
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("panorama", "outpaint_mask")
    FUNCTION = "place"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Projects a perspective photo onto an empty ERP canvas (fov, yaw, pitch). The mask is white where "
                   "the photo does not cover the panorama: feed it to 'DiT360 Edit' in outpaint mode.")

    def place(self, image, fov, yaw, pitch, width, height, fill=0.5):
        if width != 2 * height:
            raise PanoInputError(f"width/height: an ERP canvas must be 2:1, got {width}x{height}")
        canvas, gen = place_view(image_to_bchw(image)[:, :3], float(fov), float(yaw), float(pitch),
                                 height=int(height), width=int(width), fill=float(fill))
        return (bchw_to_image(canvas), bchw_to_mask(gen))


NODE_CLASS_MAPPINGS = {
    "Pano360DiT360Invert": Pano360DiT360Invert,
    "Pano360DiT360Edit": Pano360DiT360Edit,
    "Pano360PlaceViewOnPanorama": Pano360PlaceViewOnPanorama,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "Pano360DiT360Invert": "DiT360 Invert (RF-inversion)",
    "Pano360DiT360Edit": "DiT360 Edit (inpaint/outpaint)",
    "Pano360PlaceViewOnPanorama": "Place View on Panorama Canvas",
}
