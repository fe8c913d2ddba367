"""Masked feature replacement in Flux transformers (DiT360 editing).

Mask convention: ``1`` = generate anew (edit), ``0`` = keep. The mask helpers themselves
(latent / token masks, kept-token masks, the replacement) are model-agnostic and live in
:mod:`pano_core.diffusion.masks`; here only what hooks into Flux blocks.

Two places to replace (``replace``, :data:`REPLACE_MODES`):

- ``"attention"`` (the official DiT360 / Personalize-Anything behaviour, the default): only the
  edit branch's *attention input* at kept tokens takes the source branch's (so its Q/K/V there
  are the source's); its residual stream and MLP stay its own;
- ``"block"`` (stronger): the edit branch's whole *block input* at kept tokens is replaced, which
  also overwrites its residual stream (the kept region then follows the source more tightly).

Hooks:

- :class:`FeatureReplacer` installs the replacement on a diffusers ``FluxTransformer2DModel``
  (forward pre-hooks on every double and single block, or on their attention modules; the batch
  is ``[source..., edit...]``). Handles both sequence layouts of diffusers' single blocks: image
  tokens only (diffusers >= 0.35) and the joined ``[text, image]`` sequence (0.32-0.34; and every
  single block's attention input): only the image tokens at the end are replaced.
- :class:`TokenSwap` records / replaces per block for two sequential model calls (ComfyUI).
"""

from __future__ import annotations

import torch

from ..diffusion.masks import keep_mask_for_tokens, replace_kept_tokens
from ..errors import PanoInputError
from ..validate import check_choice

__all__ = ["REPLACE_MODES", "FeatureReplacer", "TokenSwap", "image_part"]

REPLACE_MODES = ("attention", "block")


def image_part(n_seq: int, n_img: int, n_txt: int | None, what: str = "feature replacement") -> int:
    """Where the ``n_img`` image tokens start in a sequence of ``n_seq`` tokens: 0 for an image-only
    sequence, ``n_txt`` for a joined ``[text, image]`` sequence (Flux puts text first)."""
    if n_seq == n_img:
        return 0
    if n_txt is not None and n_seq == n_txt + n_img:
        return n_txt
    raise PanoInputError(
        f"{what}: mask has {n_img} tokens, the model sees {n_seq}"
        + (f" (text {n_txt} + image {n_seq - n_txt})" if n_txt is not None else "")
    )


class FeatureReplacer:
    """Masked feature replacement on a diffusers Flux transformer (context manager).

    While installed and ``enabled`` is true, the edit half of every ``[source, edit]`` batch
    (first half source, second half edit) gets the source half's states at *kept* tokens:

    - ``replace="attention"`` (official DiT360): the input of each block's attention module
      (the normalised, modulated states from which Q/K/V are computed);
    - ``replace="block"``: the input of each double and single block.

    ``keep``: ``(B, T)`` bool mask over the image tokens the transformer receives (already
    padded like the tokens). ``calls`` counts replacements.
    """

    def __init__(self, transformer: torch.nn.Module, keep: torch.Tensor, replace: str = "attention"):
        check_choice(replace, "replace", REPLACE_MODES)
        self.transformer = transformer
        self.keep = keep
        self.replace = replace
        self.enabled = False
        self.calls = 0
        self.txt_len: int | None = None
        self._handles: list = []

    def _record_txt(self, module, args, kwargs):
        ehs = kwargs.get("encoder_hidden_states")
        if ehs is None and len(args) > 1:
            ehs = args[1]
        self.txt_len = int(ehs.shape[1]) if isinstance(ehs, torch.Tensor) else None
        return None

    def _hook(self, module, args, kwargs):
        if not self.enabled:
            return None
        hs = kwargs.get("hidden_states")
        if hs is None and args:
            hs = args[0]
        if hs is None or hs.shape[0] % 2:
            return None
        n = hs.shape[0] // 2
        t = self.keep.shape[-1]
        start = image_part(hs.shape[1], t, self.txt_len)
        edit_img = replace_kept_tokens(hs[n:, start:], hs[:n, start:], self.keep)
        edit = torch.cat([hs[n:, :start], edit_img], dim=1) if start else edit_img
        new = torch.cat([hs[:n], edit], dim=0)
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
        targets = blocks
        if self.replace == "attention":
            targets = [getattr(b, "attn", None) for b in blocks]
            if any(a is None for a in targets):
                raise PanoInputError("transformer: a Flux block without an attention module (attn); use replace='block'")
        self._handles.append(self.transformer.register_forward_pre_hook(self._record_txt, with_kwargs=True))
        for m in targets:
            self._handles.append(m.register_forward_pre_hook(self._hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class TokenSwap:
    """Record/replace image states per block for two *sequential* model calls.

    For models whose blocks can be wrapped but whose source and edit branches run as separate
    calls (ComfyUI's ``patches_replace["dit"]`` and ``optimized_attention_override``): in
    ``mode = "record"`` every block's states are stored under its key (the source call); in
    ``mode = "replace"`` the edit call's kept tokens take the stored source states
    (:func:`replace_kept_tokens`); ``"off"`` passes through.

    ``replace = "block"``: the block inputs (:meth:`image`, :meth:`joint`); ``"attention"`` (the
    official DiT360 behaviour): the attention's Q/K/V at image tokens (:meth:`qkv`) -- Q/K/V are a
    per-token function of the attention input (and RoPE of the token's position, equal in both
    branches), so this equals replacing the attention input. Memory: the source's states of every
    block are stored (attention: Q, K and V, three times the block input).

    ``edit_tokens``: per-token edit mask ``(B, h*w)`` of the token grid the model sees
    (already padded like the latent when the latent is padded); tokens beyond ``h*w`` (e.g.
    reference tokens) are never replaced.
    """

    def __init__(self, edit_tokens: torch.Tensor, h: int, w: int, replace: str = "attention"):
        check_choice(replace, "replace", REPLACE_MODES)
        self.edit_tokens = edit_tokens.bool()
        self.h, self.w = int(h), int(w)
        self.replace = replace
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

    def _swap(self, key, img: torch.Tensor, replace_fn) -> torch.Tensor:
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
            return replace_fn(img, src)
        return img

    def image(self, key, img: torch.Tensor) -> torch.Tensor:
        """Block mode: process the image hidden states ``(B, T, D)`` of block ``key``."""
        if self.replace != "block":
            return img
        return self._swap(key, img, lambda e, s: replace_kept_tokens(e, s, self._keep(e.shape[1], e.device)))

    def joint(self, key, x: torch.Tensor) -> torch.Tensor:
        """Block mode: process ``[text, image]`` hidden states of a single-stream block (text length
        taken from the last double block, see :meth:`set_txt_len`)."""
        if self.replace != "block" or self.mode == "off" or self.txt_len is None:
            return x
        t = self.txt_len
        return torch.cat([x[:, :t], self.image(key, x[:, t:])], dim=1)

    def qkv(self, key, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Attention mode: ``q, k, v`` ``(B, heads, L, d)`` of a ``[text, image]`` sequence (text
        length from :meth:`set_txt_len`); the image part is recorded / replaced."""
        if self.replace != "attention" or self.mode == "off" or self.txt_len is None:
            return q, k, v
        t = self.txt_len
        if q.shape[2] <= t:
            return q, k, v

        def rep(e, s):
            keep = self._keep(e.shape[2], e.device)  # (B, T)
            return _replace_heads(e, s, keep)

        img = torch.stack([q[:, :, t:], k[:, :, t:], v[:, :, t:]])  # (3, B, heads, T, d)
        out = self._swap(key, img, lambda e, s: torch.stack([rep(e[i], s[i]) for i in range(3)]))
        if out is img:
            return q, k, v
        return tuple(torch.cat([x[:, :, :t], o], dim=2) for x, o in zip((q, k, v), out))

    def set_txt_len(self, n: int) -> None:
        self.txt_len = int(n)


def _replace_heads(edit: torch.Tensor, source: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """:func:`replace_kept_tokens` for per-head states ``(B, heads, T, d)``."""
    b, nh, t, d = edit.shape

    def flat(x):
        return x.permute(0, 2, 1, 3).reshape(x.shape[0], t, nh * d)

    out = replace_kept_tokens(flat(edit), flat(source), keep)
    return out.reshape(b, t, nh, d).permute(0, 2, 1, 3)
