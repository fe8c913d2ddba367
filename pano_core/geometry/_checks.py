"""Input checks of the geometry functions (the shared rules of :mod:`pano_core.validate`).

The geometry functions accept any channel count, hence ``channels=None`` by default here.
"""

from __future__ import annotations

import torch

from .. import validate
from ..validate import check_finite as fast_finite  # noqa: F401  (cheap: one reduction first)


def check_bchw(x: object, name: str, channels: tuple[int, ...] | None = None) -> torch.Tensor:
    return validate.check_bchw(x, name, channels)


def check_erp(x: object, name: str = "panorama", channels: tuple[int, ...] | None = None) -> torch.Tensor:
    return validate.check_erp(x, name, channels)


def check_faces(x: object, name: str = "faces", channels: tuple[int, ...] | None = None) -> torch.Tensor:
    return validate.check_faces(x, name, channels)
