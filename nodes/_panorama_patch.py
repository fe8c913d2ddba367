"""Latent-level circular padding for every supported DiT family (an ``APPLY_MODEL`` wrapper).

Model-agnostic: ``BaseModel.apply_model`` has the same signature for every family, so one
wrapper serves them all. At every model call it wrap-pads the latent ``x`` (``(B, C, H, W)``, or
``(B, C, T, H, W)`` for video / Qwen-Image latents: only the width of every frame) by ``padding``
whole patches per side, pads the spatial inputs that the family's adapter names
(``c_concat`` always; e.g. Wan 2.2's ``denoise_mask``), lets the model see the wider latent with
its own *linear* positions, and crops the result. Because the padding is rebuilt from the current
latent at every call, the padded columns equal their source at every model call (re-sync every
step) whatever the sampler does, and the sampler never sees them. An ``OUTER_SAMPLE`` wrapper records
the sampled latent's size for the run, so model calls on an area-conditioning crop of the latent
(whose edges are not the panorama's) are left unpadded.

Knowledge per family (patch width, latent ranks, spatial inputs) is the table :data:`FAMILIES`,
keyed by ComfyUI's ``model_base`` class name; the padding math is
:class:`pano_core.diffusion.tokens.TokenGrid`. Not spatial, left alone: reference latents
(Kontext / Qwen-Image-Edit / Wan ``reference_latent``: extra tokens of their own), HiDream-E1's
``image_cond`` (concatenated along the width by the model: only the generated part is padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.patcher_extension
import torch

from ..pano_core.diffusion.tokens import TokenGrid, check_padding
from ..pano_core.errors import PanoInputError
from ..pano_core.validate import check_int
from ._common import log

KEY = "pano360_panorama_latent"


@dataclass(frozen=True)
class Family:
    """What the latent-level patch needs to know about one DiT family."""

    name: str  # shown to users
    patch: int  # latent columns per token (the model's patch width)
    ranks: tuple[int, ...]  # accepted latent ranks: 4 (B, C, H, W) and/or 5 (B, C, T, H, W)
    spatial: tuple[str, ...] = ()  # apply_model kwargs aligned with x's (H, W): padded like x
    token_level: bool = False  # DiT360 wrapped ids available (FLUX: Pano360DiT360Patch; else _panorama_tokens)


FAMILIES: dict[str, Family] = {
    "Flux": Family("FLUX.1 (dev/schnell/Fill/Kontext/Krea)", 2, (4,), token_level=True),
    "Flux2": Family("FLUX.2", 1, (4,), token_level=True),
    "Chroma": Family("Chroma", 2, (4,), token_level=True),
    "QwenImage": Family("Qwen-Image (incl. Edit)", 2, (5,), token_level=True),
    "HunyuanImage21": Family("HunyuanImage 2.1", 1, (4,), token_level=True),
    "Lumina2": Family("Lumina 2 (incl. Z-Image)", 2, (4,)),
    "HiDream": Family("HiDream (incl. E1)", 2, (4,)),
    "WAN21": Family("Wan 2.1", 2, (5,), token_level=True),
    "WAN22": Family("Wan 2.2", 2, (5,), spatial=("denoise_mask",), token_level=True),
}
"""ComfyUI ``model_base`` class name (exact type, not subclasses) -> :class:`Family`."""


def supported_families() -> str:
    return ", ".join(f.name for f in FAMILIES.values())


def family_of(model) -> Family:
    """The :class:`Family` of a ComfyUI MODEL, or a PanoInputError listing the supported families."""
    base = getattr(model, "model", None)
    kind = type(base).__name__ if base is not None else type(model).__name__
    fam = FAMILIES.get(kind)
    if fam is None:
        raise PanoInputError(
            f"model: the panorama patch supports {supported_families()}; got a {kind} model"
        )
    return fam


def _spatial_like(v, x: torch.Tensor) -> bool:
    return isinstance(v, torch.Tensor) and v.ndim >= 2 and tuple(v.shape[-2:]) == tuple(x.shape[-2:])


class ApplyModelWrapper:
    """``WrappersMP.APPLY_MODEL``: wrap-pad ``x`` (+ spatial inputs) by whole patches, crop after."""

    def __init__(self, family: Family, padding: int):
        self.family = family
        self.padding = int(padding)

    def grid(self, x: torch.Tensor) -> TokenGrid:
        fam = self.family
        if x.ndim not in fam.ranks:
            raise PanoInputError(
                f"latent: {fam.name} expects a latent of rank {' or '.join(map(str, fam.ranks))}, got {tuple(x.shape)}"
            )
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if w % fam.patch:
            raise PanoInputError(
                f"latent: the panorama width ({w} latent columns) must be a multiple of {fam.name}'s patch "
                f"width {fam.patch} for circular padding"
            )
        check_padding(w // fam.patch, self.padding, name=f"padding (panorama {w // fam.patch} tokens wide)")
        frames = int(x.shape[2]) if x.ndim == 5 else 1
        # height is not padded: a grid one token row per latent row is enough for the width math
        return TokenGrid(h=h, w=w // fam.patch, p=self.padding, id_mode="linear", patch=fam.patch, frames=frames)

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        full = transformer_options.get(KEY)
        if self.padding == 0 or (full is not None and tuple(x.shape[-2:]) != full):
            # padding 0, or an area-conditioning crop of the latent: its edges are not the panorama's
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        grid = self.grid(x)
        if control is not None:
            raise PanoInputError(
                "control: ControlNet residuals cannot be aligned with the latent-level panorama padding; use "
                "padding 0, or Pano360DiT360Patch (token level) on FLUX.1"
            )
        shapes = kwargs.get("latent_shapes")
        if shapes is not None and len(shapes) > 1:
            raise PanoInputError("latent: the panorama patch expects a single latent, got several packed latents")
        if c_concat is not None:
            if _spatial_like(c_concat, x):
                c_concat = grid.pad_latent(c_concat)
            else:
                log.warning("Pano360 panorama patch: c_concat %s does not match the latent %s; not padded",
                            tuple(c_concat.shape), tuple(x.shape))
        kw = dict(kwargs)
        for k in self.family.spatial:
            if _spatial_like(kw.get(k), x):
                kw[k] = grid.pad_latent(kw[k])
        if shapes is not None:
            xs = list(shapes[0])
            xs[-1] = xs[-1] + 2 * grid.latent_cols
            kw["latent_shapes"] = [torch.Size(xs)]
        out = executor(grid.pad_latent(x), t, c_concat, c_crossattn, control, transformer_options, **kw)
        return grid.crop_latent(out)


class OuterSampleWrapper:
    """``WrappersMP.OUTER_SAMPLE``: tell the model wrapper the sampled latent's (H, W) for this run, so
    that calls on a cropped part of it (area conditioning) are left unpadded."""

    def __call__(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                 disable_pbar=False, seed=None, latent_shapes=None):
        topts = executor.class_obj.model_options.setdefault("transformer_options", {})
        had, old = KEY in topts, topts.get(KEY)
        topts[KEY] = tuple(noise.shape[-2:])
        try:
            return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                            latent_shapes=latent_shapes)
        finally:
            if had:
                topts[KEY] = old
            else:
                topts.pop(KEY, None)


def apply_latent_patch(model, padding: int = 1):
    """Clone a ComfyUI MODEL of a supported family and add the latent-level padding wrapper
    (replacing an earlier one)."""
    fam = family_of(model)
    check_int(padding, "padding", 0, what="a number of token columns per side")
    m = model.clone()
    WMP = comfy.patcher_extension.WrappersMP
    m.remove_wrappers_with_key(WMP.APPLY_MODEL, KEY)
    m.remove_wrappers_with_key(WMP.OUTER_SAMPLE, KEY)
    m.add_wrapper_with_key(WMP.OUTER_SAMPLE, KEY, OuterSampleWrapper())
    m.add_wrapper_with_key(WMP.APPLY_MODEL, KEY, ApplyModelWrapper(fam, padding))
    return m
