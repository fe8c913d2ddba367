"""DiT360's training losses as pure functions on unpacked latents (B, C, H, W), W = 2 H.

Flow matching (as DiT360's official code and diffusers' Flux trainers): with data latent ``x0``,
noise ``n`` and ``sigma`` in 0..1, the model sees ``x_t = (1 - sigma) x0 + sigma n`` and is
trained to predict the velocity ``target = n - x0`` (``pano_core.diffusion.schedules.add_noise``
and ``velocity_target``); these losses compare that prediction with the target.

* :func:`base_loss` -- the flow-matching MSE (optionally only where a supervision mask is 1).
* :func:`yaw_loss_published` -- DiT360's yaw loss as published: rotate prediction *and* target
  by a yaw angle (bilinear, around the 0/360 seam) and take the MSE. For a rotation by whole
  latent columns this is a permutation of both, so it equals :func:`base_loss` up to float
  summation order (DESIGN.md section 5); for other angles it differs only by interpolation blur.
* :func:`yaw_loss_equivariance` -- the form that asks for rotation consistency: the model is
  evaluated on the yaw-rolled noisy latent and compared with the rolled target,
  ``|| v(R x_t) - R target ||^2`` (a second model call).
* :func:`cube_loss` -- MSE between the cube faces (``pano_core.geometry.e2c``, differentiable,
  faces of H/2 latent pixels) of prediction and target: the base error re-weighted by the cube
  sampling density (about per solid angle instead of per ERP pixel: less weight on the poles).
* :func:`perspective_loss` -- MSE only on the coverage of a perspective photo placed on an ERP
  canvas (perspective guidance); :func:`latent_mask` brings a pixel mask to the latent grid.

Every loss returns a scalar (``reduction="mean"``) or one value per batch item
(``reduction="none"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pano_core.errors import PanoInputError
from pano_core.geometry import e2c, rotate_erp

__all__ = [
    "base_loss",
    "roll_latent",
    "yaw_rotate",
    "yaw_loss_published",
    "yaw_loss_equivariance",
    "cube_loss",
    "latent_mask",
    "perspective_loss",
]


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise PanoInputError(
            f"loss: expected prediction and target of the same shape (B, C, H, W), got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )


def _reduce(per_item: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_item.mean()
    if reduction == "none":
        return per_item
    raise PanoInputError(f"reduction: expected 'mean' or 'none', got {reduction!r}")


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-item mean squared error; with a (B, 1, H, W) mask, the mean over masked elements."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.flatten(1).mean(1)
    if mask.ndim != 4 or mask.shape[0] != pred.shape[0] or mask.shape[1] != 1 or mask.shape[-2:] != pred.shape[-2:]:
        raise PanoInputError(
            f"mask: expected (B, 1, H, W) = ({pred.shape[0]}, 1, {pred.shape[-2]}, {pred.shape[-1]}), got {tuple(mask.shape)}"
        )
    m = mask.float()
    num = (err * m).flatten(1).sum(1)
    den = (m.flatten(1).sum(1) * pred.shape[1]).clamp_min(1e-8)
    return num / den


def base_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """Flow-matching MSE ``|| pred - target ||^2``; with ``mask`` (B, 1, H, W) only where it is
    non-zero (DiT360's jsonl masks: white where supervised)."""
    _check_pair(pred, target)
    return _reduce(_masked_mse(pred, target, mask), reduction)


def roll_latent(x: torch.Tensor, cols: int) -> torch.Tensor:
    """Exact yaw rotation of ERP latents by whole columns: the content at column ``cols`` moves
    to column 0 (positive = turn right, like ``pano_core.geometry.roll_erp``)."""
    return torch.roll(x, -int(cols), dims=-1)


def yaw_rotate(x: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Bilinear yaw rotation of ERP latents by ``angle_deg`` (wraps around the seam;
    differentiable). A whole number of columns is an exact roll."""
    w = x.shape[-1]
    cols = float(angle_deg) * w / 360.0
    if abs(cols - round(cols)) < 1e-9:
        return roll_latent(x, round(cols) % w)
    return rotate_erp(x, yaw=float(angle_deg), mode="bilinear")


def yaw_loss_published(
    pred: torch.Tensor,
    target: torch.Tensor,
    angle_deg: float | torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """DiT360's yaw loss as published: ``|| Rotate(pred, a) - Rotate(target, a) ||^2``.

    ``angle_deg`` is one angle or one per batch item (DiT360 draws from {60, 180, 300}). An
    optional supervision ``mask`` is rotated with them.
    """
    _check_pair(pred, target)
    angles = torch.as_tensor(angle_deg, dtype=torch.float64).reshape(-1).tolist()
    if len(angles) == 1:
        angles = angles * pred.shape[0]
    if len(angles) != pred.shape[0]:
        raise PanoInputError(f"angle_deg: expected one angle or {pred.shape[0]}, got {len(angles)}")
    out = []
    for i, a in enumerate(angles):
        m = None if mask is None else yaw_rotate(mask[i : i + 1].float(), a)
        out.append(_masked_mse(yaw_rotate(pred[i : i + 1], a), yaw_rotate(target[i : i + 1], a), m))
    return _reduce(torch.cat(out), reduction)


def yaw_loss_equivariance(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    target: torch.Tensor,
    cols: int | torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Yaw equivariance: ``|| model(R x_t) - R target ||^2`` with ``R`` a roll by ``cols``
    whole latent columns (one number or one per batch item; a multiple of the model's patch
    size so the rolled latent is a valid token grid). ``model`` maps noisy latents (B, C, H, W)
    to predicted velocities of the same shape (the timestep and text are bound inside it).
    """
    _check_pair(x_t, target)
    shifts = torch.as_tensor(cols).reshape(-1).tolist()
    if len(shifts) == 1:
        shifts = shifts * x_t.shape[0]
    if len(shifts) != x_t.shape[0]:
        raise PanoInputError(f"cols: expected one roll or {x_t.shape[0]}, got {len(shifts)}")
    rolled = torch.cat([roll_latent(x_t[i : i + 1], int(s)) for i, s in enumerate(shifts)])
    rolled_target = torch.cat([roll_latent(target[i : i + 1], int(s)) for i, s in enumerate(shifts)])
    rolled_mask = None
    if mask is not None:
        rolled_mask = torch.cat([roll_latent(mask[i : i + 1], int(s)) for i, s in enumerate(shifts)])
    pred = model(rolled)
    _check_pair(pred, rolled_target)
    return _reduce(_masked_mse(pred, rolled_target, rolled_mask), reduction)


def cube_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    face_size: int | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """MSE between the six cube faces (F R B L U D) of prediction and target.

    Faces are ``face_size`` latent pixels (default H/2, DiT360's 64 for a 128x256 latent),
    sampled bilinearly by ``pano_core.geometry.e2c`` (differentiable, wraps at the seam). An
    optional supervision ``mask`` is projected with them.
    """
    _check_pair(pred, target)
    b, _, h, w = pred.shape
    if w != 2 * h:
        raise PanoInputError(f"cube_loss: expected ERP latents with width = 2 x height, got {h}x{w}")
    s = h // 2 if face_size is None else int(face_size)
    fp = e2c(pred.float(), face_size=s, mode="bilinear")  # (B*6, C, S, S)
    ft = e2c(target.float(), face_size=s, mode="bilinear")
    err = ((fp - ft) ** 2).reshape(b, 6, -1, s, s)
    if mask is None:
        return _reduce(err.flatten(1).mean(1), reduction)
    fm = e2c(mask.float(), face_size=s, mode="bilinear").reshape(b, 6, 1, s, s)
    num = (err * fm).flatten(1).sum(1)
    den = (fm.flatten(1).sum(1) * pred.shape[1]).clamp_min(1e-8)
    return _reduce(num / den, reduction)


def latent_mask(mask: torch.Tensor, size: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """A pixel mask (B, 1, H, W) in 0..1 -> a binary latent mask (B, 1, h, w): a latent pixel
    counts when more than ``threshold`` of its pixels are covered (area average)."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise PanoInputError(f"mask: expected (B, 1, H, W), got {tuple(mask.shape)}")
    area = F.adaptive_avg_pool2d(mask.float(), size)
    return (area > threshold).to(mask.dtype if mask.is_floating_point() else torch.float32)


def perspective_loss(
    pred: torch.Tensor, target: torch.Tensor, coverage: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Perspective guidance: MSE only where the photo covers the ERP canvas (``coverage``
    (B, 1, H, W) on the latent grid, see :func:`latent_mask`). Items without any coverage give 0."""
    _check_pair(pred, target)
    return _reduce(_masked_mse(pred, target, coverage), reduction)
