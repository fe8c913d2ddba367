"""The token grid of a DiT: packing, circular (ERP wrap) padding, position ids, re-sync.

A DiT sees a latent ``(B, C, H, W)`` (image) or ``(B, C, T, H, W)`` (video) as a sequence of
tokens, one per ``patch x patch`` latent patch, row-major (``frame, row, col``), plus position
ids (Flux: ``[0, row, col]``). An equirectangular panorama wraps around horizontally, so a
generator makes the model see the wrap by padding the grid with ``p`` token columns per side:
the last ``p`` columns are prepended and the first ``p`` appended (DiT360). Padded columns get
the position ids of the columns they were copied from (``id_mode="wrapped"``, DiT360) or
extended ones (``"linear"``, as HunyuanWorld). After the model call the padding is cropped.

:class:`TokenGrid` is the one owner of that bookkeeping: built once (sizes checked once), it
pads / crops / re-syncs packed tokens, position ids and latents of its grid, packs and unpacks
latents, and gives the token counts the schedule shift needs. Patch size 1 (Sana, models
that take latents) and 2 (Flux), images and video latents alike. Pure tensor code: any device,
any dtype (fp32/bf16/fp16/fp8 activations), autograd-safe.

- :class:`TokenGrid` -- ``from_pixels`` / ``from_latent`` constructors; ``pad`` / ``crop`` /
  ``resync`` (packed tokens or per-token masks), ``pad_ids`` / ``crop_ids`` / ``source_index``, ``pad_latent`` /
  ``crop_latent`` / ``resync_latent`` (latents, masks, ``c_concat``), ``pack`` / ``unpack``,
  ``tokens`` / ``padded_tokens``, ``padded_pixel_size``.
- :func:`check_padding` -- validate a padding width (``0 <= p <= w // 4``).

Errors are :class:`pano_core.errors.PanoInputError` naming the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import PanoInputError
from .circular import _wrap_cols, crop_latent, pad_latent

__all__ = ["IdMode", "ID_MODES", "TokenGrid", "check_padding"]

IdMode = Literal["wrapped", "linear"]
ID_MODES = ("wrapped", "linear")


def check_padding(w: int, p: int, name: str = "padding") -> int:
    """Validate a circular padding width ``p`` (tokens per side) for a grid ``w`` tokens wide.

    ``p`` must be an integer with ``0 <= p <= w // 4`` (wider padding would copy more than a
    quarter of the panorama to each side, which is pointless and doubles the cost).
    """
    if isinstance(p, bool) or not isinstance(p, int):
        raise PanoInputError(f"{name}: expected an integer number of token columns, got {p!r}")
    if p < 0:
        raise PanoInputError(f"{name}: must be >= 0, got {p}")
    if p > w // 4:
        raise PanoInputError(
            f"{name}: at most a quarter of the token width ({w} tokens -> max {w // 4}); got {p}"
        )
    return p


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise PanoInputError(f"{name}: expected a positive integer, got {v!r}")
    return v


@dataclass(frozen=True)
class TokenGrid:
    """A ``frames x h x w`` token grid (``w`` unpadded) with ``p`` circular token columns per side.

    ``patch``: latent pixels per token side (Flux 2, Sana 1); ``vae_factor``: image pixels per
    latent pixel (8 for Flux's VAE, 32 for Sana's DC-AE); ``frames``: token frames of a video
    latent (1 for images). Token order is row-major ``(frame, row, col)``; packed tokens are
    ``(B, frames*h*w, C*patch*patch)`` with the channel order of diffusers' Flux packing
    (``c, dy, dx``). Validated once at construction (``0 <= p <= w // 4``, ``id_mode``).
    """

    h: int
    w: int
    p: int = 0
    id_mode: IdMode = "wrapped"
    patch: int = 2
    vae_factor: int = 8
    frames: int = 1

    def __post_init__(self):
        for name in ("h", "w", "patch", "vae_factor", "frames"):
            _positive_int(getattr(self, name), f"token grid {name}")
        check_padding(self.w, self.p, name="padding")
        if self.id_mode not in ID_MODES:
            raise PanoInputError(f"id_mode: expected 'wrapped' (DiT360) or 'linear', got {self.id_mode!r}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_latent(
        cls, latent_hw: tuple[int, int], p: int = 0, id_mode: IdMode = "wrapped", *, patch: int = 2,
        vae_factor: int = 8, frames: int = 1,
    ) -> TokenGrid:
        """The grid of a latent ``latent_hw`` = (H, W) in latent pixels (multiples of ``patch``)."""
        lh, lw = int(latent_hw[0]), int(latent_hw[1])
        if lh % patch or lw % patch or lh < patch or lw < patch:
            raise PanoInputError(f"latent: size {lw}x{lh} (W x H) must be a positive multiple of the patch size {patch}")
        return cls(h=lh // patch, w=lw // patch, p=p, id_mode=id_mode, patch=patch, vae_factor=vae_factor, frames=frames)

    @classmethod
    def from_pixels(
        cls, height: int, width: int, p: int = 0, id_mode: IdMode = "wrapped", *, patch: int = 2,
        vae_factor: int = 8, frames: int = 1,
    ) -> TokenGrid:
        """The grid of an image ``height x width`` pixels (multiples of ``vae_factor * patch``)."""
        m = vae_factor * patch
        for name, v in (("width", width), ("height", height)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % m:
                raise PanoInputError(f"{name}: expected a positive multiple of {m} pixels, got {v!r}")
        return cls.from_latent((height // vae_factor, width // vae_factor), p, id_mode, patch=patch,
                               vae_factor=vae_factor, frames=frames)

    # ------------------------------------------------------------------ sizes
    @property
    def rows(self) -> int:
        """Token rows of the whole sequence (``frames * h``; padding is per row)."""
        return self.frames * self.h

    @property
    def wp(self) -> int:
        """Padded token width ``w + 2p``."""
        return self.w + 2 * self.p

    @property
    def tokens(self) -> int:
        """Unpadded token count ``frames * h * w``."""
        return self.rows * self.w

    @property
    def padded_tokens(self) -> int:
        """Padded token count ``frames * h * (w + 2p)`` (what the schedule shift sees, DiT360)."""
        return self.rows * self.wp

    @property
    def latent_h(self) -> int:
        return self.h * self.patch

    @property
    def latent_w(self) -> int:
        return self.w * self.patch

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return self.latent_h * self.vae_factor

    @property
    def width(self) -> int:
        """Image width in pixels (unpadded)."""
        return self.latent_w * self.vae_factor

    @property
    def latent_cols(self) -> int:
        """Latent columns per side that correspond to the ``p`` padded token columns."""
        return self.p * self.patch

    def padded_pixel_size(self) -> tuple[int, int]:
        """(width, height) in pixels of an image with as many tokens as the padded grid (feed
        to ComfyUI's ``ModelSamplingFlux``, which derives the shift from the pixel size)."""
        return self.width + 2 * self.latent_cols * self.vae_factor, self.height

    # ------------------------------------------------------------------ packed tokens
    def pad(self, tokens: torch.Tensor) -> torch.Tensor:
        """Circularly pad packed tokens (or a per-token mask) ``(B, tokens, ...)`` -> ``(B, padded_tokens, ...)``.
        ``p == 0`` returns the input (same object)."""
        return _pad_tokens(tokens, self.rows, self.w, self.p)

    def crop(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pad`: ``(B, padded_tokens, ...)`` -> ``(B, tokens, ...)``."""
        return _crop_tokens(tokens, self.rows, self.w, self.p)

    def resync(self, tokens: torch.Tensor) -> torch.Tensor:
        """Rebuild the padded columns of padded tokens from the current opposite edge of the
        interior (``pad(crop(x))``); a new tensor."""
        return _resync_tokens(tokens, self.rows, self.w, self.p)

    # ------------------------------------------------------------------ position ids
    def pad_ids(self, ids: torch.Tensor, col_axis: int = 2) -> torch.Tensor:
        """Pad position ids ``(..., tokens, D)`` (ComfyUI ``(B, L, 3)``, diffusers ``(L, 3)``) in
        this grid's ``id_mode``; ``col_axis`` is the column coordinate (Flux: 2)."""
        return _pad_ids(ids, self.rows, self.w, self.p, mode=self.id_mode, col_axis=col_axis)

    def crop_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pad_ids` (either mode)."""
        return _crop_ids(ids, self.rows, self.w, self.p)

    def source_index(self, device: torch.device | str | None = None) -> torch.Tensor:
        """For every token of the padded grid (row-major), the index of the token it mirrors: its
        own index for an interior token, its source's (the opposite edge, same row) for a padded
        one; a ``(padded_tokens,)`` long tensor.

        Gathering a padded grid's ``linear`` ids (or any per-token function of them, such as a
        RoPE embedding) with it gives the ``wrapped`` ones: ``ids.index_select(-2, g.source_index())``.
        """
        n = self.padded_tokens
        return self.resync(torch.arange(n, device=device).view(1, n, 1))[0, :, 0]

    # ------------------------------------------------------------------ latents
    def pad_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Wrap-pad a latent-resolution tensor ``(..., H, W)`` (latent, ``c_concat``, noise
        mask) by :attr:`latent_cols` per side, aligned with the padded tokens."""
        return pad_latent(x, self.latent_cols)

    def crop_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pad_latent`."""
        return crop_latent(x, self.latent_cols)

    def resync_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Rebuild the padded latent columns from the current opposite edge."""
        return pad_latent(crop_latent(x, self.latent_cols), self.latent_cols)

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, C, H, W)`` or ``(B, C, T, H, W)`` -> packed tokens ``(B, tokens, C*patch^2)``
        (Flux's packing for ``patch=2``; a plain flatten for ``patch=1``). Unpadded."""
        x = latents if latents.ndim == 5 else latents.unsqueeze(2)
        if x.ndim != 5 or tuple(x.shape[2:]) != (self.frames, self.latent_h, self.latent_w):
            raise PanoInputError(
                f"latents: expected (B, C, {self.latent_h}, {self.latent_w}) or (B, C, {self.frames}, {self.latent_h}, "
                f"{self.latent_w}), got {tuple(latents.shape)}"
            )
        b, c, t, s = x.shape[0], x.shape[1], self.frames, self.patch
        x = x.reshape(b, c, t, self.h, s, self.w, s).permute(0, 2, 3, 5, 1, 4, 6)
        return x.reshape(b, self.tokens, c * s * s)

    def unpack(self, tokens: torch.Tensor, video: bool | None = None) -> torch.Tensor:
        """Inverse of :meth:`pack` (unpadded tokens): ``(B, C, H, W)``, or ``(B, C, T, H, W)`` when
        ``video`` (default: ``frames > 1``)."""
        if tokens.ndim != 3 or tokens.shape[1] != self.tokens or tokens.shape[2] % (self.patch**2):
            raise PanoInputError(
                f"tokens: expected (B, {self.tokens}, C*{self.patch ** 2}) unpadded packed tokens, got {tuple(tokens.shape)}"
            )
        b, s = tokens.shape[0], self.patch
        c = tokens.shape[2] // (s * s)
        x = tokens.reshape(b, self.frames, self.h, self.w, c, s, s).permute(0, 4, 1, 2, 5, 3, 6)
        x = x.reshape(b, c, self.frames, self.latent_h, self.latent_w)
        return x if (video if video is not None else self.frames > 1) else x[:, :, 0]


def _check_grid(x: torch.Tensor, h: int, w: int, name: str, dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise PanoInputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if h <= 0 or w <= 0:
        raise PanoInputError(f"{name}: token grid must be non-empty, got h={h}, w={w}")
    if x.ndim < 2 or x.shape[dim] != h * w:
        raise PanoInputError(
            f"{name}: expected {h}*{w}={h * w} tokens along dimension {dim}, got shape {tuple(x.shape)}"
        )


def _grid_view(x: torch.Tensor, h: int, w: int, dim: int) -> torch.Tensor:
    """(..., h*w, ...) at ``dim`` -> (..., h, w, ...)."""
    shape = list(x.shape)
    d = dim % x.ndim
    return x.reshape(shape[:d] + [h, w] + shape[d + 1 :])


def _pad_tokens(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Circularly pad packed tokens ``(B, h*w, C)`` by ``p`` columns per side.

    The last ``p`` token columns are prepended and the first ``p`` appended to every row, so
    the result is ``(B, h*(w+2p), C)`` in the same row-major order. ``p == 0`` returns the
    input unchanged (same object).
    """
    _check_grid(tokens, h, w, "tokens", dim=1)
    if p == 0:
        return tokens
    g = _grid_view(tokens, h, w, dim=1)  # (B, h, w, C)
    g = _wrap_cols(g, p, col_dim=2)
    return g.reshape(tokens.shape[0], h * (w + 2 * p), *tokens.shape[2:])


def _crop_tokens(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of :func:`_pad_tokens`: ``(B, h*(w+2p), C)`` -> ``(B, h*w, C)``.

    ``w`` is the unpadded width in tokens.
    """
    _check_grid(tokens, h, w + 2 * p, "tokens", dim=1)
    if p == 0:
        return tokens
    g = _grid_view(tokens, h, w + 2 * p, dim=1)
    return g[:, :, p : p + w].reshape(tokens.shape[0], h * w, *tokens.shape[2:])


def _resync_tokens(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Rebuild the padded columns of padded tokens ``(B, h*(w+2p), C)`` from the interior.

    The left ``p`` padded columns become a copy of the current last ``p`` interior columns
    and the right ``p`` a copy of the current first ``p`` (``w`` is the unpadded width). Equal to
    ``pad_tokens(crop_tokens(tokens, h, w, p), h, w, p)``. Returns a new tensor.
    """
    return _pad_tokens(_crop_tokens(tokens, h, w, p), h, w, p)


def _pad_ids(
    ids: torch.Tensor,
    h: int,
    w: int,
    p: int,
    mode: IdMode = "wrapped",
    col_axis: int = 2,
) -> torch.Tensor:
    """Pad position ids ``(..., h*w, D)`` of a token grid by ``p`` columns per side.

    - ``mode="wrapped"`` (DiT360): the padded columns carry the ids of the columns they were
      copied from, i.e. the left padding has the ids of the last ``p`` columns and the right
      padding those of the first ``p``. RoPE then treats a padded token exactly like its
      source token.
    - ``mode="linear"``: the column coordinate (``ids[..., col_axis]``) is extended: the left
      padded columns get ``first - k*step`` and the right ``last + k*step`` (``k = 1..p``),
      where ``step`` is the column spacing of the ids (1 for Flux); other coordinates are
      copied from the nearest edge column.

    Works on ComfyUI's ``(B, L, 3)`` and diffusers' ``(L, 3)`` ids and keeps the dtype.
    """
    if not isinstance(ids, torch.Tensor) or ids.ndim < 2:
        raise PanoInputError(f"ids: expected a tensor (..., tokens, D), got {getattr(ids, 'shape', type(ids))}")
    tok_dim = ids.ndim - 2
    _check_grid(ids, h, w, "ids", dim=tok_dim)
    if not -ids.shape[-1] <= col_axis < ids.shape[-1]:
        raise PanoInputError(f"col_axis: {col_axis} is out of range for ids with {ids.shape[-1]} coordinates")
    if p == 0:
        return ids
    g = _grid_view(ids, h, w, dim=tok_dim)  # (..., h, w, D)
    col_dim = tok_dim + 1
    if mode == "wrapped":
        out = _wrap_cols(g, p, col_dim=col_dim)
    else:
        first = g.narrow(col_dim, 0, 1)
        last = g.narrow(col_dim, w - 1, 1)
        if w > 1:
            step = g.narrow(col_dim, 1, 1)[..., col_axis] - first[..., col_axis]
        else:
            step = torch.ones_like(first[..., col_axis])
        k = torch.arange(1, p + 1, device=ids.device).to(ids.dtype)
        kshape = [1] * g.ndim
        kshape[col_dim] = p
        k = k.reshape(kshape[:-1])  # broadcast over (..., h, p)
        left = first.expand(*first.shape[:col_dim], p, first.shape[-1]).clone()
        right = last.expand(*last.shape[:col_dim], p, last.shape[-1]).clone()
        # left column j (0..p-1) is at distance p-j from the first column
        left[..., col_axis] = first[..., col_axis] - torch.flip(k, dims=[col_dim]) * step
        right[..., col_axis] = last[..., col_axis] + k * step
        out = torch.cat([left, g, right], dim=col_dim)
    shape = list(ids.shape)
    shape[tok_dim] = h * (w + 2 * p)
    return out.reshape(shape)


def _crop_ids(ids: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of :func:`_pad_ids` (either mode): ``(..., h*(w+2p), D)`` -> ``(..., h*w, D)``."""
    tok_dim = ids.ndim - 2
    _check_grid(ids, h, w + 2 * p, "ids", dim=tok_dim)
    if p == 0:
        return ids
    g = _grid_view(ids, h, w + 2 * p, dim=tok_dim)
    g = g.narrow(tok_dim + 1, p, w)
    shape = list(ids.shape)
    shape[tok_dim] = h * w
    return g.reshape(shape)
