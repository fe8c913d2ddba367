"""Masks for DiT360 editing and masked feature replacement in Flux transformers.

Mask convention everywhere: ``1`` = generate anew (edit), ``0`` = keep (reconstruct the source).

- :func:`image_mask_to_latent` image-resolution (or latent-resolution) mask -> binary latent mask
- :func:`latent_mask_to_tokens` latent mask -> per-token edit mask on the 2x2-packed token grid
- :func:`pad_mask_latent` / :func:`pad_token_mask` wrap-pad masks exactly like latents/tokens
  (via :mod:`pano_core.seams.circular`; upstream DiT360 edge-repeated the mask instead)
- :func:`keep_mask_for_tokens` the kept-token mask for a (possibly padded) token sequence length
- :func:`replace_kept_tokens` the replacement itself (edit hidden states take the source's at kept tokens)
- :class:`FeatureReplacer` installs the replacement on a diffusers ``FluxTransformer2DModel``
  (forward pre-hooks on every double and single block; the batch is ``[source..., edit...]``)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PanoInputError
from ..seams import circular

__all__ = [
    "image_mask_to_latent",
    "latent_mask_to_tokens",
    "pad_mask_latent",
    "pad_token_mask",
    "keep_mask_for_tokens",
    "replace_kept_tokens",
    "FeatureReplacer",
    "TokenSwap",
]


def image_mask_to_latent(
    mask: torch.Tensor,
    latent_hw: tuple[int, int],
    vae_factor: int = 8,
    threshold: float = 0.5,
    name: str = "mask",
) -> torch.Tensor:
    """Binary latent-resolution mask ``(B, 1, h, w)`` from a mask ``(B, 1, H, W)`` in 0..1.

    The mask must have the image size (``h*vae_factor x w*vae_factor``) or the latent size
    ``(h, w)``; anything else raises :class:`PanoInputError` naming both sizes. Pixels above
    ``threshold`` are "generate"; a latent cell is generated if *any* of its pixels is (max
    pooling), so the regenerated region always covers the user's mask.
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
        raise PanoInputError(f"{name}: expected a single-channel mask (B, 1, H, W), got {getattr(mask, 'shape', mask)}")
    h, w = int(latent_hw[0]), int(latent_hw[1])
    mh, mw = mask.shape[-2:]
    binary = (mask.float() > threshold).float()
    if (mh, mw) == (h, w):
        return binary
    if (mh, mw) == (h * vae_factor, w * vae_factor):
        return F.max_pool2d(binary, kernel_size=vae_factor, stride=vae_factor)
    raise PanoInputError(
        f"{name}: size {mw}x{mh} (W x H) does not match the image ({w * vae_factor}x{h * vae_factor}) "
        f"or its latent ({w}x{h})"
    )


def latent_mask_to_tokens(mask: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Per-token edit mask ``(B, h/patch * w/patch)`` (bool, row-major like packed tokens).

    A token is "edit" if any latent pixel of its ``patch x patch`` cell is.
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise PanoInputError(f"mask: expected (B, 1, h, w), got {tuple(mask.shape)}")
    h, w = mask.shape[-2:]
    if h % patch or w % patch:
        raise PanoInputError(f"mask: latent size {w}x{h} must be a multiple of the patch size {patch}")
    tok = F.max_pool2d(mask.float(), kernel_size=patch, stride=patch)
    return tok.flatten(1) > 0.5


def pad_mask_latent(mask: torch.Tensor, cols: int) -> torch.Tensor:
    """Wrap-pad a latent mask by ``cols`` columns per side, exactly like the latent."""
    return circular.pad_latent(mask, cols)


def pad_token_mask(tok_mask: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Wrap-pad a token mask ``(B, h*w)`` by ``p`` token columns per side, exactly like tokens."""
    return circular.pad_tokens(tok_mask.unsqueeze(-1), h, w, p).squeeze(-1)


def keep_mask_for_tokens(edit_tokens: torch.Tensor, h: int, w: int, n_tokens: int) -> torch.Tensor:
    """Kept-token mask ``(B, n_tokens)`` (bool) for an image token sequence of ``n_tokens``.

    ``edit_tokens``: unpadded per-token edit mask ``(B, h*w)``. If ``n_tokens`` is a circularly
    padded grid ``h*(w+2p)`` the mask is wrap-padded by ``p`` (as the tokens were); extra
    trailing tokens (e.g. Kontext reference tokens) are never kept/replaced.
    """
    if edit_tokens.shape[-1] != h * w:
        raise PanoInputError(f"mask: expected {h}*{w} tokens, got {edit_tokens.shape[-1]}")
    keep = ~edit_tokens.bool()
    if n_tokens == h * w:
        return keep
    p = None
    if n_tokens % h == 0 and (n_tokens // h - w) % 2 == 0 and n_tokens // h > w:
        p = (n_tokens // h - w) // 2
        if p > w // 4:
            p = None
    if p is not None:
        return pad_token_mask(keep, h, w, p)
    if n_tokens > h * w:  # extra (reference) tokens after an unpadded grid
        pad = torch.zeros(keep.shape[0], n_tokens - h * w, dtype=torch.bool, device=keep.device)
        return torch.cat([keep, pad], dim=1)
    raise PanoInputError(f"mask: cannot match {h}x{w} token grid to a sequence of {n_tokens} image tokens")


def replace_kept_tokens(edit: torch.Tensor, source: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``edit`` hidden states ``(Be, T, D)`` with kept tokens taken from ``source`` ``(Bs, T, D)``.

    ``keep``: ``(Bk, T)`` bool. The source batch is repeated when ``Be`` is a multiple of ``Bs``
    (e.g. the edit branch runs cond and uncond together); same for the mask.
    """
    be, bs = edit.shape[0], source.shape[0]
    if be != bs:
        if be % bs:
            raise PanoInputError(f"feature replacement: edit batch {be} is not a multiple of source batch {bs}")
        source = source.repeat(be // bs, *([1] * (source.ndim - 1)))
    k = keep.to(edit.device)
    if k.shape[0] != be:
        k = k.repeat(be // k.shape[0] if be % k.shape[0] == 0 else 1, 1)[:be]
    return torch.where(k.unsqueeze(-1), source.to(edit.dtype), edit)


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
