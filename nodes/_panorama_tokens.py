"""Token-level wrapped position ids (DiT360's form) for Chroma (and Chroma Radiance), Qwen-Image, HunyuanImage
2.1 (and its refiner) and Wan 2.x, through ``patches_replace["dit"]`` only.

These families build their rotary embedding inside ``forward`` and hand it to every block
replacement as ``args["pe"]``; nothing else of theirs can be hooked without touching shared
modules. So the token level is the latent level (:class:`nodes._panorama_patch.ApplyModelWrapper`
wrap-pads the latent at every model call and crops after) plus an inner ``APPLY_MODEL`` wrapper
that, for a padded call, puts a replacement on every double/single block key of this call's
``transformer_options`` (copied, never mutated). Each replacement swaps ``args["pe"]`` for the
embedding of *wrapped* ids, where the padded token columns carry the ids of the columns they are
copied from, and calls the block (or the replacement that was there already, from another pack,
with the swapped embedding).

The wrapped embedding is the model's own, gathered: a RoPE embedding is a per-token function of
that token's ids, and a padded token differs from its source only in the width id, so gathering
the embedding with :meth:`pano_core.diffusion.tokens.TokenGrid.source_index` over the image grid
gives exactly ``embedder(wrapped ids)`` (tested against each family's embedder) without
rebuilding any family's id layout. It is computed once per model call (the model passes the same
tensor to every block) and tokens outside the image grid (text, Qwen-Image-Edit / Hunyuan
reference latents) are left alone.

Per family (:data:`ADAPTERS`, keyed like :data:`nodes._panorama_patch.FAMILIES`): which block
lists get replacements, which axis of the embedding is the token axis, and where the image grid
starts in it (txt-then-image for Chroma and Qwen-Image, image-then-txt for Hunyuan, image-only
for Wan).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import comfy.patcher_extension
import torch

from ..pano_core.diffusion.tokens import TokenGrid
from ..pano_core.errors import PanoInputError
from . import _panorama_patch as latent

KEY = "pano360_panorama_tokens"


def _after_txt(args: dict, pe_tokens: int, n: int) -> int:
    """Text first, then the image grid, then reference latents (Qwen-Image-Edit): in a double block."""
    if "txt" in args:
        return int(args["txt"].shape[1])
    return pe_tokens - n  # a single block (Chroma: no reference latents, the image grid ends the sequence)


def _image_last(args: dict, pe_tokens: int, n: int) -> int:
    """Reference latents, the image grid, then text (Hunyuan): in a double block ``img`` = refs + grid."""
    if "txt" not in args:
        raise PanoInputError("model: HunyuanImage's first block is expected to be a double block")
    return int(args["img"].shape[1]) - n


@dataclass(frozen=True)
class PeAdapter:
    """Where a family's rotary embedding keeps the image grid's tokens."""

    blocks: tuple[tuple[str, str], ...]  # (diffusion-model attribute holding blocks, patches_replace block kind)
    token_dim: int  # the token axis of args["pe"]
    start: Callable[[dict, int, int], int] | None  # (block args, pe tokens, grid tokens) -> first grid token
    # None: the embedding holds only image-grid tokens, every frame on the padded grid (Wan)


_FLUX_DIT = (("double_blocks", "double_block"), ("single_blocks", "single_block"))
ADAPTERS: dict[str, PeAdapter] = {
    "Chroma": PeAdapter(_FLUX_DIT, 2, _after_txt),
    "ChromaRadiance": PeAdapter(_FLUX_DIT, 2, _after_txt),  # Chroma's forward_orig on 16-px pixel patches
    "QwenImage": PeAdapter((("transformer_blocks", "double_block"),), 2, _after_txt),
    "HunyuanImage21": PeAdapter(_FLUX_DIT, 2, _image_last),
    "HunyuanImage21Refiner": PeAdapter(_FLUX_DIT, 2, _image_last),  # 3-axis ids (t, h, w), one frame
    "WAN21": PeAdapter((("blocks", "double_block"),), 1, None),
    "WAN22": PeAdapter((("blocks", "double_block"),), 1, None),
    # Fun Camera: WanModel's blocks and rotary embedding; the camera rays are embedded and added onto x's tokens
    "WAN21_Camera": PeAdapter((("blocks", "double_block"),), 1, None),
    # HuMo: the embedding of x's frames then of its reference frames (padded like x: frames of the padded grid)
    "WAN21_HuMo": PeAdapter((("blocks", "double_block"),), 1, None),
    "WAN22_Animate": PeAdapter((("blocks", "double_block"),), 1, None),  # the face fuser blocks use no positions
}
"""ComfyUI ``model_base`` class name -> :class:`PeAdapter` (families whose token level is this module)."""


def adapter_of(model) -> PeAdapter | None:
    base = getattr(model, "model", None)
    return ADAPTERS.get(type(base).__name__) if base is not None else None


class _WrappedPe:
    """The wrapped embedding of one model call, computed at the first block that asks for it."""

    def __init__(self, adapter: PeAdapter, grid: TokenGrid):
        self.adapter = adapter
        self.grid = grid
        self.src: torch.Tensor | None = None
        self.out: torch.Tensor | None = None

    def __call__(self, args: dict) -> torch.Tensor:
        pe = args["pe"]
        if pe is self.src:
            return self.out
        a, g = self.adapter, self.grid
        total = int(pe.shape[a.token_dim])
        if a.start is None:  # image-only embedding: every frame on the padded grid
            per_frame = g.h * g.wp
            if total % per_frame:
                raise PanoInputError(f"model: a {total}-token positional embedding is not whole frames of the "
                                     f"{g.h}x{g.wp} padded token grid; use level 'latent'")
            g = replace(g, frames=total // per_frame)
            start = 0
        else:
            start = a.start(args, total, g.padded_tokens)
        n = g.padded_tokens
        if start < 0 or start + n > total:
            raise PanoInputError(f"model: the {g.rows}x{g.wp} padded token grid does not fit the {total}-token "
                                 f"positional embedding at token {start}; use level 'latent'")
        idx = torch.arange(total, device=pe.device)
        idx[start:start + n] = g.source_index(pe.device) + start
        self.src, self.out = pe, pe.index_select(a.token_dim, idx)
        return self.out


class _BlockReplace:
    """A ``patches_replace["dit"]`` entry: the block (or the entry it replaces) with the wrapped embedding."""

    def __init__(self, pe: _WrappedPe, inner=None):
        self.pe = pe
        self.inner = inner

    def __call__(self, args: dict, extra: dict) -> dict:
        args = dict(args)
        args["pe"] = self.pe(args)
        if self.inner is not None:
            return self.inner(args, extra)
        return extra["original_block"](args)


class TokenIdsWrapper:
    """``WrappersMP.APPLY_MODEL``, inside the latent-level wrapper (it sees the padded latent): wrapped
    embeddings for this call's blocks."""

    def __init__(self, family: latent.Family, adapter: PeAdapter, padding: int, block_keys: tuple):
        self.family = family
        self.adapter = adapter
        self.padding = int(padding)
        self.block_keys = block_keys

    def grid(self, x: torch.Tensor, full) -> TokenGrid | None:
        """The padded call's token grid (``None``: an unpadded call, e.g. an area-conditioning crop)."""
        s, p = self.family.patch, self.padding
        cols = p * s
        if p == 0 or x.ndim not in self.family.ranks:
            return None
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if full is not None:
            if (h, w) == tuple(full):
                raise PanoInputError("model: the panorama token level must run inside its latent-level padding "
                                     "(another wrapper reordered them); apply Pano360PanoramaPatch last")
            if (h, w) != (full[0], full[1] + 2 * cols):
                return None
        frames = int(x.shape[2]) if x.ndim == 5 else 1
        return TokenGrid(h=-(-h // s), w=(w - 2 * cols) // s, p=p, id_mode="wrapped", patch=s, frames=frames)

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        topts = {} if transformer_options is None else transformer_options
        grid = self.grid(x, topts.get(latent.KEY))
        if grid is not None:
            pe = _WrappedPe(self.adapter, grid)
            topts = dict(topts)
            pr = dict(topts.get("patches_replace", {}))
            dit = dict(pr.get("dit", {}))
            for k in self.block_keys:
                dit[k] = _BlockReplace(pe, dit.get(k))
            pr["dit"] = dit
            topts["patches_replace"] = pr
        return executor(x, t, c_concat, c_crossattn, control, topts, **kwargs)


def apply_token_patch(model, padding: int = 1):
    """Clone a ComfyUI MODEL of a family in :data:`ADAPTERS` with latent-level padding plus wrapped
    ids (replacing earlier panorama patches)."""
    fam = latent.family_of(model)
    adapter = adapter_of(model)
    if adapter is None:
        raise PanoInputError(f"model: {fam.name} has no positional-embedding hook for token-level wrapped ids")
    dm = model.model.diffusion_model
    keys = tuple((kind, i) for attr, kind in adapter.blocks for i in range(len(getattr(dm, attr, ()))))
    m = apply_latent_only(model, padding)  # the latent wrapper is (re-)added last, so ours runs inside it
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY,
                           TokenIdsWrapper(fam, adapter, padding, keys))
    return m


def apply_latent_only(model, padding: int = 1):
    """:func:`nodes._panorama_patch.apply_latent_patch`, dropping an earlier token-level wrapper."""
    m = latent.apply_latent_patch(model, padding)
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY)
    return m
