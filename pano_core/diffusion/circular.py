"""Circular (ERP wrap) padding of latent-resolution tensors along the width.

An equirectangular panorama wraps around horizontally. These helpers wrap-pad / crop /
re-sync the last dimension of any ``(..., H, W)`` tensor (latents, images, noise, masks,
``c_concat``), map spans into the padded frame, and decode a latent with wrapped columns so a
VAE decoder sees across the 0/360 seam. Used by every generator (token grids pad latents
through :class:`pano_core.diffusion.tokens.TokenGrid`), the VAE helpers and the ComfyUI patch.

- :func:`pad_latent` / :func:`crop_latent` / :func:`resync_latent` (x, cols)
- :func:`pad_span` (x, size, width, cols): a horizontal span after :func:`pad_latent`
- :func:`decode_circular` (decode, latent, cols, scale): decode with ``cols`` wrapped latent
  columns per side with any callable, crop ``cols * scale`` pixels per side; image latents
  ``(B, C, H, W)`` and video latents ``(B, C, T, H, W)`` of causal 3D VAEs (Wan, Qwen-Image)
  alike: only the width is wrapped, never time or height
- :func:`encode_circular` (encode, image, cols, scale): encode with ``cols * scale`` wrapped pixel
  columns per side with any callable, crop ``cols`` latent columns per side
- :func:`periodic_reference` (fn, x): ``fn`` of the input tiled three times side by side, middle
  third -- what a perfectly circular encode/decode gives (used to measure the two above)
- :data:`DEFAULT_WRAP_COLS`: 8 latent columns, the default of every circular encode/decode
  (against :func:`periodic_reference`, 4 columns left an edge error of 0.031 on the tests' tiny
  VAE and 0.29 on Flux's VAE architecture, 8 columns 0.0015 / 0.064; ``benchmarks/RESULTS.md``)
"""

from __future__ import annotations

import torch

from ..errors import PanoInputError

__all__ = [
    "DEFAULT_WRAP_COLS",
    "wrap_cols_for",
    "pad_latent",
    "crop_latent",
    "resync_latent",
    "pad_span",
    "decode_circular",
    "encode_circular",
    "periodic_reference",
]

DEFAULT_WRAP_COLS = 8
"""Latent columns wrapped per side by circular VAE encodes/decodes unless told otherwise."""


def wrap_cols_for(latent_width: int, cols: int | None = None) -> int:
    """``cols``, or for ``None`` the default :data:`DEFAULT_WRAP_COLS` capped at half the latent
    width (small panoramas cannot wrap more than that)."""
    return min(DEFAULT_WRAP_COLS, int(latent_width) // 2) if cols is None else cols


def _wrap_cols(g: torch.Tensor, p: int, col_dim: int) -> torch.Tensor:
    """Concatenate [last p cols, g, first p cols] along ``col_dim``."""
    w = g.shape[col_dim]
    return torch.cat([g.narrow(col_dim, w - p, p), g, g.narrow(col_dim, 0, p)], dim=col_dim)


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


def decode_circular(decode, latent: torch.Tensor, cols: int, scale: int = 8, channels_last: bool = False) -> torch.Tensor:
    """Decode a panorama latent with ``cols`` wrapped latent columns on both sides, then crop.

    ``decode`` maps a latent ``(B, C, h, w)`` to an image ``(B, 3, h*scale, w*scale)`` (or
    ``(B, H, W, 3)`` with ``channels_last=True``, as ComfyUI's ``VAE.decode`` returns); a video
    latent ``(B, C, T, h, w)`` to ``(B, 3, T', H, W)`` (or ``(B, T', H, W, 3)``): only the last
    (width) axis of the latent is padded and only the output's width is cropped. The
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


def encode_circular(encode, image: torch.Tensor, cols: int, scale: int = 8, channels_last: bool = False) -> torch.Tensor:
    """Encode a panorama with ``cols * scale`` wrapped pixel columns on both sides, then crop
    ``cols`` latent columns per side.

    ``encode`` maps an image ``(B, 3, H, W)`` (or ``(B, H, W, 3)`` with ``channels_last=True``, as
    ComfyUI's ``VAE.encode`` takes it) to a latent ``(B, C, H/scale, W/scale)``, or for a video
    VAE to ``(B, C, T, H/scale, W/scale)`` (ComfyUI takes the image batch as frames); only the
    image's width is padded and only the latent's last axis cropped. The encoder sees
    the opposite edge next to each border instead of zero padding, so no seam is baked into the
    latent at 0/360 degrees. ``cols=0`` is a plain encode.
    """
    _check_latent(image, cols, "image")
    if cols == 0:
        return encode(image)
    px = cols * int(scale)
    width = image.shape[-2] if channels_last else image.shape[-1]
    if px > width:
        raise PanoInputError(f"wrap_cols: {cols} latent columns ({px} px) exceed the image width {width} px")
    padded = pad_latent(image.movedim(-1, -3), px).movedim(-3, -1) if channels_last else pad_latent(image, px)
    z = encode(padded)
    expected = (width + 2 * px) // int(scale)
    if z.shape[-1] != expected:
        raise PanoInputError(f"encode: expected a latent {expected} wide, got shape {tuple(z.shape)}")
    return crop_latent(z, cols)


def periodic_reference(
    fn, x: torch.Tensor, scale: float = 1, channels_last: bool = False, out_channels_last: bool | None = None
) -> torch.Tensor:
    """``fn`` applied to ``x`` tiled three times side by side, middle third of the result.

    For a VAE decode (``scale`` = pixels per latent column) or encode (``scale`` = 1 / pixels per
    latent column) this is what a perfectly circular version gives: the panorama's own opposite
    edge is next to both borders at a full receptive field's distance. The reference that
    :func:`decode_circular` / :func:`encode_circular` are measured against. ``channels_last``:
    ``x`` is ``(..., H, W, C)``; ``out_channels_last``: the same for ``fn``'s output (default:
    ``channels_last``; ComfyUI's encode takes channels-last images and returns ``(B, C, h, w)``).
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise PanoInputError(f"x: expected a tensor (..., H, W), got {getattr(x, 'shape', type(x))}")
    dim = x.ndim - 2 if channels_last else x.ndim - 1
    w = x.shape[dim]
    y = fn(torch.cat([x, x, x], dim=dim))
    out_cl = channels_last if out_channels_last is None else out_channels_last
    ydim = y.ndim - 2 if out_cl else y.ndim - 1
    out_w = int(round(w * scale))
    if y.shape[ydim] != 3 * out_w:
        raise PanoInputError(f"fn: expected an output {3 * out_w} wide for a tiled input, got shape {tuple(y.shape)}")
    return y.narrow(ydim, out_w, out_w)
