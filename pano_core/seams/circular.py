"""Token-level circular padding for Flux-style DiTs on equirectangular panoramas (DiT360).

An ERP panorama wraps around horizontally: column ``w-1`` is the left neighbour of column 0.
A Flux transformer sees the latent as a grid of packed tokens (one token per 2x2 latent
patch, row-major, sequence index ``row * w + col``) plus 3-axis position ids
``[0, row, col]``. DiT360 makes the model see the wrap by padding the token grid with ``p``
columns per side -- the last ``p`` columns are prepended, the first ``p`` appended -- and by
giving the padded columns the position ids of the columns they were copied from ("wrapped"
ids; "linear" ids extend the column coordinate instead, as HunyuanWorld does). After the
model call the padded columns are cropped.

Everything here is pure, device- and dtype-agnostic tensor code (works on fp32/bf16/fp16/fp8
activations alike, and on autograd tensors); both the ComfyUI ``MODEL`` patch and the
diffusers pipeline call it.

Public functions
----------------
Packed tokens ``(B, h*w, C)`` (grid ``h`` rows x ``w`` columns of tokens):

- :func:`pad_tokens` (tokens, h, w, p) -> ``(B, h*(w+2p), C)``
- :func:`crop_tokens` (tokens, h, w, p) -> ``(B, h*w, C)`` (``w`` = unpadded width)
- :func:`resync_tokens` (tokens, h, w, p) -> padded tokens whose padded columns are rebuilt
  from the current opposite edge of the interior (per-step re-sync)

Position ids ``(..., h*w, D)`` (ComfyUI ``(B, L, 3)``, diffusers ``(L, 3)``):

- :func:`pad_ids` (ids, h, w, p, mode="wrapped"|"linear", col_axis=2)
- :func:`crop_ids` (ids, h, w, p)

Latents / masks ``(B, C, H, W)`` (pixels of the latent, not tokens):

- :func:`pad_latent` (x, cols) wrap-pad ``cols`` columns per side
- :func:`crop_latent` (x, cols)
- :func:`resync_latent` (x, cols) rebuild the padded columns from the current opposite edge
- :func:`latent_cols_for_tokens` (p, patch=2) -> latent columns per side for ``p`` tokens

Schedule shift:

- :func:`padded_token_count` (h, w, p) -> ``h*(w+2p)``
- :func:`padded_pixel_size` (width, height, p, vae_factor=8, patch=2) -> (width, height) of
  the image whose token count equals the padded count (feed to ComfyUI's ModelSamplingFlux)
- :func:`flux_mu` (image_seq_len, ...) -> the resolution-dependent shift ``mu`` of
  FLUX.1-dev (linear in the token count, as diffusers' ``calculate_shift`` and ComfyUI's
  ``ModelSamplingFlux`` compute it)
- :func:`check_padding` (w, p) validates a padding width (``0 <= p <= w // 4``)

Decoding:

- :func:`decode_circular` (decode, latent, cols, scale=8) wrap ``cols`` latent columns on
  both sides, decode with any callable, crop ``cols*scale`` pixels per side
- :func:`wrap_discontinuity` (x) mean absolute jump across the 0/360 seam relative to the
  mean jump between neighbouring interior columns (1 = no worse than the interior)

Errors are :class:`pano_core.errors.PanoInputError` naming the input.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import PanoInputError

__all__ = [
    "check_padding",
    "pad_tokens",
    "crop_tokens",
    "resync_tokens",
    "pad_ids",
    "crop_ids",
    "pad_latent",
    "crop_latent",
    "resync_latent",
    "pad_span",
    "latent_cols_for_tokens",
    "padded_token_count",
    "padded_pixel_size",
    "flux_mu",
    "decode_circular",
    "wrap_discontinuity",
]

IdMode = Literal["wrapped", "linear"]


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


def _wrap_cols(g: torch.Tensor, p: int, col_dim: int) -> torch.Tensor:
    """Concatenate [last p cols, g, first p cols] along ``col_dim``."""
    w = g.shape[col_dim]
    left = g.narrow(col_dim, w - p, p)
    right = g.narrow(col_dim, 0, p)
    return torch.cat([left, g, right], dim=col_dim)


def pad_tokens(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Circularly pad packed tokens ``(B, h*w, C)`` by ``p`` columns per side.

    The last ``p`` token columns are prepended and the first ``p`` appended to every row, so
    the result is ``(B, h*(w+2p), C)`` in the same row-major order. ``p == 0`` returns the
    input unchanged (same object).
    """
    _check_grid(tokens, h, w, "tokens", dim=1)
    check_padding(w, p)
    if p == 0:
        return tokens
    g = _grid_view(tokens, h, w, dim=1)  # (B, h, w, C)
    g = _wrap_cols(g, p, col_dim=2)
    return g.reshape(tokens.shape[0], h * (w + 2 * p), *tokens.shape[2:])


def crop_tokens(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of :func:`pad_tokens`: ``(B, h*(w+2p), C)`` -> ``(B, h*w, C)``.

    ``w`` is the unpadded width in tokens.
    """
    check_padding(w, p)
    _check_grid(tokens, h, w + 2 * p, "tokens", dim=1)
    if p == 0:
        return tokens
    g = _grid_view(tokens, h, w + 2 * p, dim=1)
    return g[:, :, p : p + w].reshape(tokens.shape[0], h * w, *tokens.shape[2:])


def resync_tokens(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Rebuild the padded columns of padded tokens ``(B, h*(w+2p), C)`` from the interior.

    The left ``p`` padded columns become a copy of the current last ``p`` interior columns
    and the right ``p`` a copy of the current first ``p`` (``w`` is the unpadded width). Equal to
    ``pad_tokens(crop_tokens(tokens, h, w, p), h, w, p)``. Returns a new tensor.
    """
    return pad_tokens(crop_tokens(tokens, h, w, p), h, w, p)


def pad_ids(
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
    check_padding(w, p)
    if mode not in ("wrapped", "linear"):
        raise PanoInputError(f"id mode: expected 'wrapped' or 'linear', got {mode!r}")
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


def crop_ids(ids: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of :func:`pad_ids` (either mode): ``(..., h*(w+2p), D)`` -> ``(..., h*w, D)``."""
    check_padding(w, p)
    tok_dim = ids.ndim - 2
    _check_grid(ids, h, w + 2 * p, "ids", dim=tok_dim)
    if p == 0:
        return ids
    g = _grid_view(ids, h, w + 2 * p, dim=tok_dim)
    g = g.narrow(tok_dim + 1, p, w)
    shape = list(ids.shape)
    shape[tok_dim] = h * w
    return g.reshape(shape)


def _check_latent(x: torch.Tensor, cols: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise PanoInputError(f"{name}: expected a tensor (..., H, W), got {getattr(x, 'shape', type(x))}")
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 0:
        raise PanoInputError(f"{name}: padding columns must be an integer >= 0, got {cols!r}")


def pad_latent(x: torch.Tensor, cols: int) -> torch.Tensor:
    """Wrap-pad the last dimension (width) of ``x`` (``(B, C, H, W)``, or any ``(..., W)``).

    The last ``cols`` columns are prepended and the first ``cols`` appended. Use for image
    latents, inpainting ``c_concat`` channels and noise/denoise masks alike so that they stay
    aligned with the padded token grid. ``cols`` may not exceed ``W``.
    """
    _check_latent(x, cols, "latent")
    if cols == 0:
        return x
    if cols > x.shape[-1]:
        raise PanoInputError(f"latent: cannot wrap {cols} columns of a tensor {x.shape[-1]} wide")
    return _wrap_cols(x, cols, col_dim=x.ndim - 1)


def crop_latent(x: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of :func:`pad_latent`: drop ``cols`` columns on both sides of the width."""
    _check_latent(x, cols, "latent")
    if cols == 0:
        return x
    if 2 * cols >= x.shape[-1]:
        raise PanoInputError(f"latent: cannot crop {cols} columns per side from a tensor {x.shape[-1]} wide")
    return x[..., cols : x.shape[-1] - cols]


def resync_latent(x: torch.Tensor, cols: int) -> torch.Tensor:
    """Rebuild the ``cols`` padded columns per side of a padded latent from its interior."""
    return pad_latent(crop_latent(x, cols), cols)


def pad_span(x: int, size: int, width: int, cols: int) -> tuple[int, int]:
    """Where a horizontal span ``[x, x + size)`` of a ``width``-wide latent lies after
    :func:`pad_latent` by ``cols``: ``(x', size')``.

    A span is shifted by ``cols``; a span that covers the whole width is widened to the whole
    padded width (the padded columns are copies of its own edges). Spans are clipped to the
    latent first.
    """
    for name, v in (("x", x), ("size", size), ("width", width), ("cols", cols)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise PanoInputError(f"span {name}: expected an integer, got {v!r}")
    if width < 1 or cols < 0:
        raise PanoInputError(f"span: expected width >= 1 and cols >= 0, got width {width}, cols {cols}")
    x0 = min(max(x, 0), width)
    x1 = min(max(x + size, x0), width)
    if x0 == 0 and x1 == width:
        return 0, width + 2 * cols
    return x0 + cols, x1 - x0


def latent_cols_for_tokens(p: int, patch: int = 2) -> int:
    """Latent columns per side that correspond to ``p`` token columns (Flux packs 2x2)."""
    return int(p) * int(patch)


def padded_token_count(h: int, w: int, p: int) -> int:
    """Number of image tokens after padding a ``h x w`` token grid by ``p`` columns per side."""
    return int(h) * (int(w) + 2 * int(p))


def padded_pixel_size(width: int, height: int, p: int, vae_factor: int = 8, patch: int = 2) -> tuple[int, int]:
    """(width, height) in pixels of an image with as many tokens as the padded grid.

    Feed this to ComfyUI's ``ModelSamplingFlux`` (which derives the shift from
    ``width*height/(8*8*2*2)``) to get the shift DiT360 computes from the padded token count.
    """
    return int(width) + 2 * int(p) * vae_factor * patch, int(height)


def flux_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Resolution-dependent time shift ``mu`` of FLUX.1-dev for ``image_seq_len`` tokens.

    Linear through (base_seq_len, base_shift) and (max_seq_len, max_shift), extrapolated
    beyond (as diffusers' ``calculate_shift`` and ComfyUI's ``ModelSamplingFlux``). DiT360
    calls it with :func:`padded_token_count`. Sigmas are then shifted as
    ``exp(mu) / (exp(mu) + (1/t - 1))``.
    """
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return float(image_seq_len) * m + b


def decode_circular(decode, latent: torch.Tensor, cols: int, scale: int = 8, channels_last: bool = False) -> torch.Tensor:
    """Decode a panorama latent with ``cols`` wrapped latent columns on both sides, then crop.

    ``decode`` maps a latent ``(B, C, h, w)`` to an image ``(B, 3, h*scale, w*scale)`` (or
    ``(B, H, W, 3)`` with ``channels_last=True``, as ComfyUI's ``VAE.decode`` returns). The
    decoder sees the panorama's opposite edge next to each border instead of zero padding,
    so the 0/360 seam is decoded like any interior column boundary. ``cols=0`` is a plain
    decode.
    """
    _check_latent(latent, cols, "latent")
    if cols == 0:
        return decode(latent)
    img = decode(pad_latent(latent, cols))
    px = cols * int(scale)
    if channels_last:
        expected = (latent.shape[-1] + 2 * cols) * int(scale)
        if img.shape[-2] != expected:
            raise PanoInputError(f"decode: expected a decoded width of {expected} px, got shape {tuple(img.shape)}")
        return img[..., px : img.shape[-2] - px, :]
    expected = (latent.shape[-1] + 2 * cols) * int(scale)
    if img.shape[-1] != expected:
        raise PanoInputError(f"decode: expected a decoded width of {expected} px, got shape {tuple(img.shape)}")
    return crop_latent(img, px)


def wrap_discontinuity(x: torch.Tensor) -> float:
    """Seam score of a panorama-like tensor ``(..., H, W)`` (image, latent or token grid).

    Mean absolute difference between the last and the first column (the 0/360 seam) divided
    by the mean absolute difference between neighbouring interior columns. About 1 means the
    seam is no more visible than any other column boundary; larger is a visible seam.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[-1] < 3:
        raise PanoInputError(f"x: expected a tensor (..., H, W) with W >= 3, got {getattr(x, 'shape', type(x))}")
    x = x.detach().float()
    seam = (x[..., -1] - x[..., 0]).abs().mean()
    interior = (x[..., 1:] - x[..., :-1]).abs().mean()
    return float(seam / interior.clamp_min(1e-12))
