"""Pole refinement in one call: extract the pole faces, inpaint them, merge them back."""

from __future__ import annotations

import torch

from ..errors import PanoInputError
from ..validate import check_erp, check_finite
from .faces import (
    DEFAULT_FEATHER,
    DEFAULT_FRACTION,
    _extract,
    _merge,
    check_feather,
    check_fraction,
    pole_face_size,
)
from .inpainters import Inpainter, make_inpainter

__all__ = ["refine_poles"]


def refine_poles(
    erp: torch.Tensor,
    inpainter: Inpainter | str | None = None,
    fraction: float = DEFAULT_FRACTION,
    feather: int = DEFAULT_FEATHER,
    face_size: int | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Refine the poles of ERP panoramas (B, C, H, 2H): extract the ``U``/``D`` faces, inpaint the
    central ``fraction`` of each with ``inpainter`` (an :class:`Inpainter` or a spec for
    :func:`make_inpainter`; default OpenCV Telea), project back and blend (``feather`` face
    pixels). Only the pole regions change; the rest of the panorama is bit-identical.
    """
    erp = check_erp(erp, "panorama")
    feather = check_feather(feather)
    fraction = check_fraction(fraction)
    if mode not in ("nearest", "bilinear", "bicubic"):
        raise PanoInputError(f"mode: expected nearest, bilinear or bicubic, got {mode!r}")
    inp = make_inpainter(inpainter)
    faces, masks = _extract(erp, fraction, pole_face_size(erp.shape[-1], face_size), mode)
    filled = inp(faces, masks)
    if not isinstance(filled, torch.Tensor) or tuple(filled.shape) != tuple(faces.shape):
        got = tuple(filled.shape) if isinstance(filled, torch.Tensor) else type(filled).__name__
        raise PanoInputError(f"inpainter: expected output of shape {tuple(faces.shape)}, got {got}")
    check_finite(filled, "inpainter output")
    return _merge(erp, filled, masks, feather, mode)
