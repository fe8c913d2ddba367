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

Spatial conditioning stays aligned column by column with the padded latent: ControlNet residuals
(``control``, computed by ComfyUI from the unpadded latent before the model call) are wrap-padded on
the model's token grid, so every padded token receives its source token's residual; Qwen-Image
DiffSynth ControlNet block patches get the hint tokens of the unpadded latent wrap-padded the same
way; the family's spatial inputs (Wan VACE context, camera rays, ``time_dim_concat``) are wrap-padded
like the latent.

Knowledge per family (patch width, latent ranks, spatial inputs) is the table :data:`FAMILIES`,
keyed by ComfyUI's ``model_base`` class name; the padding math is
:class:`pano_core.diffusion.tokens.TokenGrid`. Not spatial, left alone: reference latents
(Kontext / Qwen-Image-Edit / Wan 2.1 ``ref_conv`` ``reference_latent``: extra tokens of their own), HiDream-E1's
``image_cond`` (concatenated along the width by the model: only the generated part is padded). Wan HuMo's and
S2V's reference frames are frames of the video's size whose token count the model relies on (per-frame audio
groups, per-frame timestep chunks): padded like x, as are S2V's motion frames, which the model packs at 1x, 2x
and 4x coarser grids (hence :attr:`Family.coarse`: a padding of whole 4x tokens).
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import comfy.patcher_extension
import torch

from ..pano_core.diffusion.circular import pad_latent
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
    # apply_model kwargs aligned with x's (H, W), or with an integer multiple k of it (e.g. Wan camera
    # rays at pixel size): wrap-padded like x (by k times the latent columns)
    spatial: tuple[str, ...] = ()
    token_level: bool = False  # DiT360 wrapped ids available (FLUX: Pano360DiT360Patch; else _panorama_tokens)
    # (kwarg, n, why): a spatial input the model also embeds on n-times coarser token grids; when it is
    # given, the padding must be a whole number n of token columns so that every grid is wrap-padded
    # by whole tokens (e.g. Wan S2V's reference_motion, packed at 1x, 2x and 4x)
    coarse: tuple[tuple[str, int, str], ...] = ()


FAMILIES: dict[str, Family] = {
    "Flux": Family("FLUX.1 (dev/schnell/Fill/Kontext/Krea)", 2, (4,), token_level=True),
    "Flux2": Family("FLUX.2", 1, (4,), token_level=True),
    "Chroma": Family("Chroma", 2, (4,), token_level=True),
    # pixel space: the "latent" is the RGB image (B, 3, H, W), one token per 16 x 16 px patch (padded by whole
    # patches, so the per-patch NeRF head sees whole patches)
    "ChromaRadiance": Family("Chroma Radiance", 16, (4,), token_level=True),
    "QwenImage": Family("Qwen-Image (incl. Edit)", 2, (5,), token_level=True),
    "HunyuanImage21": Family("HunyuanImage 2.1", 1, (4,), token_level=True),
    # the refiner: a one-frame 5-D latent (B, 64, 1, H, W); the image it refines is c_concat (padded like x)
    "HunyuanImage21Refiner": Family("HunyuanImage 2.1 refiner", 1, (5,), token_level=True),
    "Lumina2": Family("Lumina 2 (incl. Z-Image)", 2, (4,)),
    "HiDream": Family("HiDream (incl. E1)", 2, (4,)),
    "WAN21": Family("Wan 2.1", 2, (5,), spatial=("time_dim_concat",), token_level=True),
    # VACE: the control video + its mask (B, n, 96, T, H, W), patch-embedded onto x's token grid
    "WAN21_Vace": Family("Wan 2.1 VACE", 2, (5,), spatial=("vace_context", "time_dim_concat")),
    # Fun Camera (2.1 and 2.2): Plucker rays at pixel size (B, 24, T, 8H, 8W), embedded onto x's tokens
    "WAN21_Camera": Family("Wan 2.1/2.2 Fun Camera", 2, (5,), spatial=("camera_conditions", "time_dim_concat"),
                           token_level=True),
    # HuMo: its reference frames (reference_latent, the video's size) are appended as frames after the video and
    # its audio cross-attention splits the tokens into equal per-frame groups: padded like x (audio_embed: not
    # spatial)
    "WAN21_HuMo": Family("Wan 2.1 HuMo", 2, (5,), spatial=("reference_latent", "time_dim_concat"), token_level=True),
    # Animate: pose_latents are patch-embedded and added onto x's tokens (frames 1..); face_pixel_values are 512 x
    # 512 face crops (not spatial)
    "WAN22_Animate": Family("Wan 2.2 Animate", 2, (5,), spatial=("pose_latents", "time_dim_concat"), token_level=True),
    # S2V: control_video is added onto x's tokens; the reference image (reference_latent) is one more frame of the
    # video's size whose tokens must match a video frame's count (the per-frame timestep embedding is spread over
    # equal token chunks); reference_motion (earlier frames of the same video) is packed at 1x, 2x and 4x
    "WAN22_S2V": Family("Wan 2.2 S2V", 2, (5,),
                        spatial=("control_video", "reference_latent", "reference_motion", "time_dim_concat"),
                        coarse=(("reference_motion", 4, "the model packs these motion frames into tokens of 1, 2 "
                                 "and 4 token columns"),)),
    "WAN22": Family("Wan 2.2", 2, (5,), spatial=("denoise_mask", "time_dim_concat"), token_level=True),
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


def _spatial_scale(v, x: torch.Tensor) -> int | None:
    """``k`` when ``v``'s last two dims are ``k`` times x's (H, W) (``k >= 1``), else None."""
    if not isinstance(v, torch.Tensor) or v.ndim < 2:
        return None
    (vh, vw), (h, w) = v.shape[-2:], x.shape[-2:]
    if vh < h or vh % h or vw != (vh // h) * w:
        return None
    return vh // h


def _token_grid(x: torch.Tensor, family: Family, p: int) -> TokenGrid:
    """The model's image-token grid of ``x`` (row-major ``frame, row, col``; the height padded up to
    whole patches as the models do), ``p`` token columns per side."""
    frames = int(x.shape[2]) if x.ndim == 5 else 1
    rows = -(-int(x.shape[-2]) // family.patch)
    return TokenGrid(h=frames * rows, w=int(x.shape[-1]) // family.patch, p=p, patch=family.patch)


def _pad_control(control: dict, tg: TokenGrid) -> dict:
    """ControlNet residuals computed by ComfyUI from the unpadded latent -> the same residuals on the
    padded token grid: each residual ``(B, tokens, C)`` is reshaped to its token rows, wrap-padded by
    whole token columns (the last ``p`` columns prepended, the first ``p`` appended) and flattened, so
    that the model adds to every padded token the residual of the token it was copied from. A new
    dict of new lists; residuals shared between blocks stay shared; the ControlNet is not touched."""
    memo: dict = {}
    out = {}
    for key, v in control.items():
        if not isinstance(v, (list, tuple)):
            out[key] = v
            continue
        lst = []
        for i, r in enumerate(v):
            if r is None:
                lst.append(None)
            elif id(r) in memo:
                lst.append(memo[id(r)])
            elif isinstance(r, torch.Tensor) and r.ndim == 3 and r.shape[1] == tg.tokens:
                memo[id(r)] = tg.pad(r)
                lst.append(memo[id(r)])
            else:
                raise PanoInputError(
                    f"control: ControlNet residual {key}[{i}] of shape {tuple(getattr(r, 'shape', ()))} is not one "
                    f"per image token of the latent ({tg.rows} x {tg.w} = {tg.tokens} tokens), so it cannot be aligned "
                    f"with the panorama padding; use padding 0 with this ControlNet"
                )
        out[key] = lst
    return out


def _diffsynth_patch_class():
    """ComfyUI's Qwen-Image DiffSynth ControlNet block patch class (``QwenImageDiffsynthControlnet``
    node), or None where this ComfyUI has none."""
    try:
        from comfy_extras.nodes_model_patch import DiffSynthCnetPatch
    except Exception:  # noqa: BLE001 (an older/newer ComfyUI without it)
        return None
    return DiffSynthCnetPatch


class ApplyModelWrapper:
    """``WrappersMP.APPLY_MODEL``: wrap-pad ``x`` (+ spatial inputs) by whole patches, crop after."""

    def __init__(self, family: Family, padding: int):
        self.family = family
        self.padding = int(padding)
        self._hint_cache: dict = {}  # DiffSynth ControlNet hint tokens, padded (never on the user's patch)

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
        tg = None
        if control is not None:
            tg = _token_grid(x, self.family, self.padding)
            control = _pad_control(control, tg)
        transformer_options = self._pad_block_patches(transformer_options, x, tg)
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
        for k, n, why in self.family.coarse:
            if kw.get(k) is not None and self.padding % n:
                raise PanoInputError(
                    f"padding: with {self.family.name}'s {k} the padding must be a multiple of {n} token columns "
                    f"({why}, each wrap-padded by whole tokens); got {self.padding}"
                )
        for k in self.family.spatial:
            if kw.get(k) is None:
                continue
            scale = _spatial_scale(kw[k], x)
            if scale is None:
                log.warning("Pano360 panorama patch: %s %s does not match the latent %s; not padded", k,
                            tuple(getattr(kw[k], "shape", ())), tuple(x.shape))
            else:
                kw[k] = pad_latent(kw[k], scale * grid.latent_cols)
        if shapes is not None:
            xs = list(shapes[0])
            xs[-1] = xs[-1] + 2 * grid.latent_cols
            kw["latent_shapes"] = [torch.Size(xs)]
        out = executor(grid.pad_latent(x), t, c_concat, c_crossattn, control, transformer_options, **kw)
        return grid.crop_latent(out)

    def _pad_block_patches(self, transformer_options: dict, x: torch.Tensor, tg: TokenGrid | None) -> dict:
        """Block patches that add a spatial hint by token index (Qwen-Image DiffSynth ControlNets, the
        ``QwenImageDiffsynthControlnet`` node) get, for this call, a copy whose hint tokens are those of
        the unpadded latent wrap-padded like the tokens of ``x``. ComfyUI's own patch would stretch its
        image over the padded width. New dicts and lists; the model's patch objects are not touched."""
        patches = transformer_options.get("patches") or {}
        cls = _diffsynth_patch_class()
        lists = {k: v for k, v in patches.items() if isinstance(v, (list, tuple))}
        if cls is None or not any(isinstance(p, cls) for lst in lists.values() for p in lst):
            return transformer_options
        tg = tg or _token_grid(x, self.family, self.padding)
        topts = dict(transformer_options)
        topts["patches"] = {**patches, **{k: [self._padded_diffsynth(p, x, tg) if isinstance(p, cls) else p for p in lst]
                                          for k, lst in lists.items()}}
        return topts

    def _padded_diffsynth(self, patch, x: torch.Tensor, tg: TokenGrid):
        import comfy.model_management
        import comfy.utils

        sc = int(patch.vae.spacial_compression_encode())
        size = (int(x.shape[-2]) * sc, int(x.shape[-1]) * sc)  # the unpadded latent's size in pixels
        key = (id(patch), size, x.device)
        hit = self._hint_cache.get(key)
        if hit is None or hit[0]() is not patch:
            if patch.encoded_image is not None and tuple(patch.encoded_image_size) == size:
                tokens = patch.encoded_image
            else:  # what the patch itself computes for an unpadded latent of this size
                img = comfy.utils.common_upscale(patch.image.movedim(-1, 1), size[1], size[0], "area", "center")
                loaded = comfy.model_management.loaded_models(only_currently_used=True)
                tokens = patch.model_patch.model.process_input_latent_image(patch.encode_latent_cond(img.movedim(1, -1)))
                comfy.model_management.load_models_gpu(loaded)
            if tokens.ndim != 3 or tokens.shape[1] != tg.tokens:
                raise PanoInputError(
                    f"model: the QwenImageDiffsynthControlnet hint has {tuple(tokens.shape)} tokens, expected one per "
                    f"image token of the latent ({tg.tokens}); it cannot be aligned with the panorama padding"
                )
            if len(self._hint_cache) >= 4:
                self._hint_cache.clear()
            hit = (weakref.ref(patch), tg.pad(tokens.to(x.device)))  # weak: ModelPatcher clones copy patches
            self._hint_cache[key] = hit
        c = copy.copy(patch)
        c.encoded_image = hit[1]
        c.encoded_image_size = (size[0], size[1] + 2 * tg.p * self.family.patch * sc)  # = padded x, so it is used
        return c


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
