"""Input checks of the geometry functions: the same rules and messages as :mod:`pano_core.validate`,
with a fast finiteness test (one reduction instead of ``isfinite(x).all()``, which costs more than
a whole e2c on large panoramas). The precise check in :func:`pano_core.validate.check_finite`
runs only when the fast test fails, and produces the error message."""

from __future__ import annotations

import torch

from ..errors import PanoInputError
from ..validate import check_finite


def fast_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise (via :func:`check_finite`) if ``x`` holds NaN or infinity; cheap when it does not."""
    if x.numel() == 0:
        return x
    if not bool(torch.isfinite(x.sum())):  # NaN/inf propagate into the sum (an overflow is re-checked)
        check_finite(x, name)  # NaN/inf present: raises with counts (or passes on a mere overflow)
    return x


def check_bchw(x: object, name: str, channels: tuple[int, ...] | None = None) -> torch.Tensor:
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
    return fast_finite(x, name)


def check_erp(x: object, name: str = "panorama", channels: tuple[int, ...] | None = None) -> torch.Tensor:
    x = check_bchw(x, name, channels)
    h, w = x.shape[-2:]
    if w != 2 * h:
        raise PanoInputError(
            f"{name}: an equirectangular panorama must be 2:1 (width = 2 x height); got {w}x{h} (W x H)"
        )
    return x


def check_faces(x: object, name: str = "faces", channels: tuple[int, ...] | None = None) -> torch.Tensor:
    x = check_bchw(x, name, channels)
    if x.shape[0] % 6 != 0:
        raise PanoInputError(
            f"{name}: a cubemap stack needs 6 faces per panorama (F R B L U D); got a batch of {x.shape[0]}"
        )
    if x.shape[-1] != x.shape[-2]:
        raise PanoInputError(f"{name}: cube faces must be square; got {x.shape[-1]}x{x.shape[-2]} (W x H)")
    return x
