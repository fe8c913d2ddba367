"""Masked feature replacement in Flux transformers (DiT360 editing).

Mask convention: ``1`` = generate anew (edit), ``0`` = keep. The mask helpers themselves
(latent / token masks, kept-token masks, the replacement) are model-agnostic and live in
:mod:`pano_core.diffusion.masks`; here only what hooks into Flux blocks:

- :class:`FeatureReplacer` installs the replacement on a diffusers ``FluxTransformer2DModel``
  (forward pre-hooks on every double and single block; the batch is ``[source..., edit...]``)
"""

from __future__ import annotations

import torch

from ..diffusion.masks import keep_mask_for_tokens, replace_kept_tokens
from ..errors import PanoInputError

__all__ = ["FeatureReplacer", "TokenSwap"]


class FeatureReplacer:
    """Masked feature replacement on a diffusers Flux transformer (context manager).

    While installed and ``enabled`` is true, every double and single transformer block sees, as
    its image ``hidden_states`` input, a batch ``[source, edit]`` (first half source, second
    half edit) in which the edit half's *kept* tokens are replaced by the source half's. The
    blocks then compute Q/K/V from the replaced states, so the kept region of the edit branch
    is reconstructed and the edited region attends to consistent context.

    ``keep``: ``(B, T)`` bool mask over the image tokens the transformer receives (already
    padded like the tokens).
    """

    def __init__(self, transformer: torch.nn.Module, keep: torch.Tensor):
        self.transformer = transformer
        self.keep = keep
        self.enabled = False
        self.calls = 0
        self._handles: list = []

    def _hook(self, module, args, kwargs):
        if not self.enabled:
            return None
        hs = kwargs.get("hidden_states")
        if hs is None and args:
            hs = args[0]
        if hs is None or hs.shape[0] % 2:
            return None
        n = hs.shape[0] // 2
        if self.keep.shape[-1] != hs.shape[1]:
            raise PanoInputError(
                f"feature replacement: mask has {self.keep.shape[-1]} tokens, the model sees {hs.shape[1]}"
            )
        new = torch.cat([hs[:n], replace_kept_tokens(hs[n:], hs[:n], self.keep)], dim=0)
        self.calls += 1
        if "hidden_states" in kwargs:
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = new
            return args, kwargs
        return (new,) + tuple(args[1:]), kwargs

    def __enter__(self) -> FeatureReplacer:
        blocks = list(getattr(self.transformer, "transformer_blocks", [])) + list(
            getattr(self.transformer, "single_transformer_blocks", [])
        )
        if not blocks:
            raise PanoInputError("transformer: no Flux transformer blocks found for feature replacement")
        for b in blocks:
            self._handles.append(b.register_forward_pre_hook(self._hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class TokenSwap:
    """Record/replace image hidden states per block for two *sequential* model calls.

    For models whose blocks can be wrapped but whose source and edit branches run as separate
    calls (ComfyUI's ``patches_replace["dit"]``): in ``mode = "record"`` every block input is
    stored under its key (the source call); in ``mode = "replace"`` the edit call's kept tokens
    take the stored source states (:func:`replace_kept_tokens`); ``"off"`` passes through.

    ``edit_tokens``: per-token edit mask ``(B, h*w)`` of the token grid the model sees
    (already padded like the latent when the latent is padded); tokens beyond ``h*w`` (e.g.
    reference tokens) are never replaced.
    """

    def __init__(self, edit_tokens: torch.Tensor, h: int, w: int):
        self.edit_tokens = edit_tokens.bool()
        self.h, self.w = int(h), int(w)
        self.mode = "off"
        self.store: dict = {}
        self.txt_len: int | None = None
        self.replaced = 0
        self._keep_cache: dict = {}

    def _keep(self, n: int, device) -> torch.Tensor:
        k = self._keep_cache.get((n, str(device)))
        if k is None:
            k = keep_mask_for_tokens(self.edit_tokens, self.h, self.w, n).to(device)
            self._keep_cache[(n, str(device))] = k
        return k

    def image(self, key, img: torch.Tensor) -> torch.Tensor:
        """Process the image hidden states ``(B, T, D)`` of block ``key``."""
        if self.mode == "record":
            self.store[key] = img.detach()
            return img
        if self.mode == "replace" and key in self.store:
            src = self.store[key]
            if src.shape[1:] != img.shape[1:]:
                raise PanoInputError(
                    f"feature replacement: source states {tuple(src.shape)} and edit states {tuple(img.shape)} differ"
                )
            self.replaced += 1
            return replace_kept_tokens(img, src, self._keep(img.shape[1], img.device))
        return img

    def joint(self, key, x: torch.Tensor) -> torch.Tensor:
        """Process ``[text, image]`` hidden states of a single-stream block (text length taken from
        the last double block, see :meth:`set_txt_len`)."""
        if self.mode == "off" or self.txt_len is None:
            return x
        t = self.txt_len
        return torch.cat([x[:, :t], self.image(key, x[:, t:])], dim=1)

    def set_txt_len(self, n: int) -> None:
        self.txt_len = int(n)
