"""Input checks shared by every module: each raises :class:`PanoInputError` naming the input."""

from __future__ import annotations

import torch

from .errors import PanoInputError


def check_bchw(x: object, name: str, channels: tuple[int, ...] | None = (1, 2, 3, 4)) -> torch.Tensor:
    """Check that ``x`` is a non-empty, finite, floating BCHW tensor with an allowed channel count."""
    if not isinstance(x, torch.Tensor):
        raise PanoInputError(f"{name}: expected a torch.Tensor (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise PanoInputError(f"{name}: expected 4 dimensions (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise PanoInputError(f"{name}: the batch is empty (shape {tuple(x.shape)})")
    if x.shape[1] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise PanoInputError(f"{name}: the image is empty (shape {tuple(x.shape)})")
    if channels is not None and x.shape[1] not in channels:
        raise PanoInputError(
            f"{name}: expected {' or '.join(map(str, channels))} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
        )
    if not torch.is_floating_point(x):
        raise PanoInputError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    check_finite(x, name)
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise if ``x`` holds NaN or infinity.

    Fast path: NaN/inf propagate into a single sum, so ``isfinite(x).all()`` (which costs more
    than a whole e2c on a large panorama) runs only when the sum is not finite (then it finds
    out whether there really is a NaN/inf or the sum merely overflowed).
    """
    if x.numel() == 0 or not torch.is_floating_point(x) or bool(torch.isfinite(x.sum())):
        return x
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise PanoInputError(f"{name}: contains {n_nan} NaN and {n_inf} infinite values; expected finite numbers")
    return x


def check_erp(x: object, name: str = "panorama", channels: tuple[int, ...] | None = (1, 2, 3, 4)) -> torch.Tensor:
    """Check an equirectangular BCHW tensor: width must be exactly twice the height."""
    x = check_bchw(x, name, channels)
    h, w = x.shape[-2:]
    if w != 2 * h:
        raise PanoInputError(
            f"{name}: an equirectangular panorama must be 2:1 (width = 2 x height); got {w}x{h} (W x H)"
        )
    return x


def check_faces(x: object, name: str = "faces", channels: tuple[int, ...] | None = (1, 2, 3, 4)) -> torch.Tensor:
    """Check a cubemap stack (B*6, C, S, S): square faces, batch a multiple of 6."""
    x = check_bchw(x, name, channels)
    if x.shape[0] % 6 != 0:
        raise PanoInputError(
            f"{name}: a cubemap stack needs 6 faces per panorama (F R B L U D); got a batch of {x.shape[0]}"
        )
    if x.shape[-1] != x.shape[-2]:
        raise PanoInputError(f"{name}: cube faces must be square; got {x.shape[-1]}x{x.shape[-2]} (W x H)")
    return x


def check_same_size(faces: list[torch.Tensor], name: str = "faces") -> None:
    """Check that a list of face tensors all have one square size."""
    sizes = {tuple(f.shape[-2:]) for f in faces}
    if len(sizes) != 1:
        raise PanoInputError(f"{name}: all cube faces must have the same size; got sizes {sorted(sizes)}")
    (h, w), = sizes
    if h != w:
        raise PanoInputError(f"{name}: cube faces must be square; got {w}x{h} (W x H)")


def check_int(v: object, name: str, lo: int | None = None, hi: int | None = None, what: str = "an integer") -> int:
    """An integer (not a bool; numpy integers accepted) in ``[lo, hi]``, else :class:`PanoInputError`
    ``"<name>: expected <what> [>= lo] [<= hi], got <v>"``."""
    import numbers

    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if ok and (lo is None or v >= lo) and (hi is None or v <= hi):
        return int(v)
    bounds = " and".join(s for s in (f" >= {lo}" if lo is not None else "", f" <= {hi}" if hi is not None else "") if s)
    raise PanoInputError(f"{name}: expected {what}{bounds}, got {v!r}")


def check_choice(v: object, name: str, choices) -> str:
    """``v`` if it is one of ``choices``, else :class:`PanoInputError`
    ``"<name>: expected one of a, b, c, got <v>"``."""
    if v not in choices:
        raise PanoInputError(f"{name}: expected one of {', '.join(map(str, choices))}, got {v!r}")
    return v


def check_mask_like(mask: torch.Tensor, image: torch.Tensor, name: str = "mask", image_name: str = "image") -> torch.Tensor:
    """A (B', 1, H, W) mask that goes with a (B, C, H, W) image: the same height and width, and a
    batch of 1 (shared) or B. Returns the mask."""
    mh, mw = mask.shape[-2:]
    ih, iw = image.shape[-2:]
    if (mh, mw) != (ih, iw):
        raise PanoInputError(f"{name}: expected the size of {image_name} ({iw}x{ih}); got {mw}x{mh}")
    if mask.shape[0] not in (1, image.shape[0]):
        raise PanoInputError(
            f"{name}: expected 1 mask or one per image ({image.shape[0]}); got a batch of {mask.shape[0]}"
        )
    return mask
