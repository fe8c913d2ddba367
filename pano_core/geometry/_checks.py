"""Input checks of the geometry functions (the shared rules of :mod:`pano_core.validate`).

The geometry functions accept any channel count, hence ``channels=None`` by default here.

One difference in *how* (not what) is checked: for well-formed CPU float32/float64 tensors the
finiteness test sums with OpenCV (``cv2.sumElems``: multi-threaded, double accumulator, NaN/inf
propagate) instead of ``torch.sum``. A torch parallel op leaves its OpenMP workers spinning for a
few milliseconds, and they then compete with OpenCV's threads in the ``cv2.remap`` that follows
(measured: +40% on a cached 2048 e2c with 2 threads). Every error is still raised by
:mod:`pano_core.validate` with its messages.
"""

from __future__ import annotations

import math

import torch

from .. import validate
from ..validate import check_finite as fast_finite  # noqa: F401  (cheap: one reduction first)
from .remap import cv2


def _cv_finite(x: object, channels) -> bool:
    """True when ``x`` is a well-formed CPU float32/float64 BCHW tensor whose cv2 sum is finite
    (then nothing is left to check); False means: let :mod:`pano_core.validate` decide."""
    if (
        cv2 is None
        or not isinstance(x, torch.Tensor)
        or x.ndim != 4
        or x.numel() == 0
        or x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or (channels is not None and x.shape[1] not in channels)
    ):
        return False
    if x.is_contiguous():
        a = x.detach().numpy().reshape(-1, x.shape[-1])
    elif x.permute(0, 2, 3, 1).is_contiguous():  # channels-last (a ComfyUI IMAGE moved to BCHW)
        a = x.detach().permute(0, 2, 3, 1).numpy().reshape(-1, x.shape[-1] * x.shape[1])
    else:
        return False
    return a.shape[0] < 2**31 - 1 and math.isfinite(cv2.sumElems(a)[0])


def check_bchw(x: object, name: str, channels: tuple[int, ...] | None = None) -> torch.Tensor:
    if _cv_finite(x, channels):
        return x
    return validate.check_bchw(x, name, channels)


def check_erp(x: object, name: str = "panorama", channels: tuple[int, ...] | None = None) -> torch.Tensor:
    if _cv_finite(x, channels) and x.shape[-1] == 2 * x.shape[-2]:
        return x
    return validate.check_erp(x, name, channels)


def check_faces(x: object, name: str = "faces", channels: tuple[int, ...] | None = None) -> torch.Tensor:
    if _cv_finite(x, channels) and x.shape[0] % 6 == 0 and x.shape[-1] == x.shape[-2]:
        return x
    return validate.check_faces(x, name, channels)
