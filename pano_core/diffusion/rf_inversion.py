"""RF-inversion (controlled forward/reverse rectified-flow ODEs) and DiT360's masked editing loop.

Model-agnostic: everything here works on *velocity functions*, so the diffusers pipeline and
the ComfyUI ``MODEL`` share the same ODE steps, blending and mask logic; both loops run on the
shared :func:`pano_core.diffusion.sampling.sample` (Euler steps on the sigmas).

Conventions (Flux / rectified flow):

- ``sigma`` runs from 1 (pure noise) to 0 (clean latent); ``x_sigma = (1 - sigma) * x0 + sigma * noise``.
- A velocity function ``velocity(x, sigma) -> v`` returns ``dx/dsigma`` (Flux predicts
  ``noise - x0``); a sampling Euler step is ``x_next = x + (sigma_next - sigma) * v``.
- ``sigmas`` is a descending schedule ``[1 (or less), ..., 0]`` of ``steps + 1`` values, as
  samplers use it; inversion walks it backwards (0 -> 1).

Algorithm (RF-inversion, Rout et al. 2024; DiT360 editing):

- Inversion (controlled forward ODE): starting at the clean latent ``y0`` and walking sigma up,
  ``u = v + gamma * ((y1 - x) / (1 - sigma) - v)`` steers toward a *seeded* Gaussian target
  ``y1`` (``gamma = 0``: plain ODE inversion, ``gamma = 1``: straight line to ``y1``).
- Reverse (controlled reverse ODE): ``v_hat = v + eta * ((x - y0) / sigma - v)`` steers the
  *source* branch back toward ``y0`` for the steps in ``[eta_start, eta_stop)`` (fractions of
  the step count); with ``eta = 1`` on every step it lands exactly on ``y0``.
- Editing: a source and an edit branch start from the inverted latent. While ``sigma > tau``
  the model call of the edit branch gets the source branch's image hidden states at *kept*
  tokens (feature replacement, done by the velocity function the caller supplies) and, after
  every step while ``sigma > blend_until``, the edit latent takes the source latent in the
  kept region: ``x_edit = mask * x_edit + (1 - mask) * x_src`` (``mask`` = 1 where content is
  generated anew).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import PanoInputError
from ..validate import check_int
from .circular import pad_latent
from .sampling import sample

__all__ = [
    "VelocityFn",
    "PairVelocityFn",
    "StepCallback",
    "seeded_noise",
    "controlled_forward_velocity",
    "controlled_reverse_velocity",
    "check_sigmas",
    "eta_schedule",
    "InversionResult",
    "EditResult",
    "invert_latent",
    "edit_latent",
    "outpaint_init",
    "velocity_from_denoiser",
]

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
"""``velocity(x, sigma) -> dx/dsigma`` (same shape as ``x``)."""

PairVelocityFn = Callable[[torch.Tensor, torch.Tensor, float, bool], "tuple[torch.Tensor, torch.Tensor]"]
"""``velocity(x_src, x_edit, sigma, replace) -> (v_src, v_edit)``; ``replace`` says whether the
edit branch's kept tokens must take the source branch's hidden states in this call."""

StepCallback = Callable[[int, int, dict], None]
"""``callback(step_index, total_steps, state)`` after every step (state: tensors of that step)."""

_EPS = 1e-6


def seeded_noise(
    shape: tuple[int, ...] | torch.Size,
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn from a CPU generator seeded with ``seed``.

    Always drawn on the CPU in float32 and then moved, so the same seed gives the same noise on
    every device and dtype (DiT360 upstream drew unseeded noise, making inversion unrepeatable).
    """
    check_int(seed, "seed")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def controlled_forward_velocity(
    v: torch.Tensor, x: torch.Tensor, y1: torch.Tensor, sigma: float, gamma: float
) -> torch.Tensor:
    """Controlled forward (inversion) velocity: ``v + gamma * ((y1 - x) / (1 - sigma) - v)``."""
    v_cond = (y1 - x) / max(1.0 - float(sigma), _EPS)
    return v + gamma * (v_cond - v)


def controlled_reverse_velocity(
    v: torch.Tensor, x: torch.Tensor, y0: torch.Tensor, sigma: float, eta: float
) -> torch.Tensor:
    """Controlled reverse (sampling) velocity toward ``y0``: ``v + eta * ((x - y0) / sigma - v)``."""
    if eta == 0:
        return v
    v_cond = (x - y0) / max(float(sigma), _EPS)
    return v + eta * (v_cond - v)


def check_sigmas(sigmas: torch.Tensor | list[float], name: str = "sigmas") -> list[float]:
    """Validate a descending sigma schedule (at least 2 values, in [0, 1]); return it as floats."""
    s = [float(v) for v in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if len(s) < 2:
        raise PanoInputError(f"{name}: need at least 2 values (1 step), got {len(s)}")
    if any(not math.isfinite(v) or v < 0 or v > 1.0 + 1e-6 for v in s):
        raise PanoInputError(f"{name}: values must lie in [0, 1], got {s}")
    if any(b > a for a, b in zip(s, s[1:])):
        raise PanoInputError(f"{name}: must be descending (1 -> 0), got {s}")
    return s


def _check_fraction(v: float, name: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
        raise PanoInputError(f"{name}: expected a number in [0, 1], got {v!r}")
    return float(v)


def eta_schedule(steps: int, eta: float, eta_start: float = 0.0, eta_stop: float = 1.0) -> list[float]:
    """Per-step ``eta`` of the controlled reverse ODE: ``eta`` for step indices in
    ``[round(eta_start * steps), round(eta_stop * steps))``, 0 elsewhere."""
    eta = _check_fraction(eta, "eta")
    a = round(_check_fraction(eta_start, "eta_start") * steps)
    b = round(_check_fraction(eta_stop, "eta_stop") * steps)
    return [eta if a <= i < b else 0.0 for i in range(steps)]


@dataclass
class InversionResult:
    """Result of :func:`invert_latent`.

    ``latent``: the inverted latent at ``sigmas[0]`` (noise-like); ``source``: the clean latent
    ``y0``; ``target``: the seeded Gaussian target ``y1``; ``sigmas``: the descending schedule
    used (inversion walked it backwards); ``trajectory``: the latents at each inversion step
    (ascending sigma), when requested.
    """

    latent: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    sigmas: list[float]
    gamma: float
    seed: int
    trajectory: list[torch.Tensor] = field(default_factory=list)


@dataclass
class EditResult:
    """Result of :func:`edit_latent`: final ``edit`` and ``source`` branch latents, the mask used,
    and the index of the last step with feature replacement (-1 if none)."""

    edit: torch.Tensor
    source: torch.Tensor
    mask: torch.Tensor
    last_replace_step: int


@torch.no_grad()
def invert_latent(
    velocity: VelocityFn,
    y0: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    gamma: float = 0.5,
    seed: int = 0,
    *,
    target: torch.Tensor | None = None,
    keep_trajectory: bool = False,
    callback: StepCallback | None = None,
) -> InversionResult:
    """Invert a clean latent ``y0`` with the controlled forward ODE (RF-inversion).

    ``sigmas``: descending schedule (``steps + 1`` values ending at 0); the ODE is integrated
    from ``sigmas[-1]`` up to ``sigmas[0]``. ``gamma`` in [0, 1] is the controller strength
    toward the Gaussian target drawn from ``seed`` (or given as ``target``). Deterministic for a
    fixed seed and a deterministic velocity function.
    """
    s = check_sigmas(sigmas)
    gamma = _check_fraction(gamma, "gamma")
    if target is None:
        target = seeded_noise(y0.shape, seed, device=y0.device, dtype=torch.float32)
    elif target.shape != y0.shape:
        raise PanoInputError(f"target: expected shape {tuple(y0.shape)}, got {tuple(target.shape)}")
    x = y0.float()
    y1 = target.to(device=y0.device, dtype=torch.float32)
    up = s[::-1]
    n = len(up) - 1
    traj = [x.clone()] if keep_trajectory else []
    step = [0]

    def prepare(i, x):
        step[0] = i
        return x

    def controlled(x, t):
        s_cur = up[step[0]]
        return controlled_forward_velocity(velocity(x, s_cur).float(), x, y1, s_cur, gamma)

    def after(i, t, x):
        if keep_trajectory:
            traj.append(x.clone())
        if callback is not None:
            callback(i, n, {"x": x, "sigma": up[i + 1]})

    x = sample(controlled, x, up[:-1], up, prepare=prepare, callback=after)
    return InversionResult(latent=x, source=y0.float(), target=y1, sigmas=s, gamma=gamma, seed=int(seed),
                           trajectory=traj)


def _check_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
        raise PanoInputError(f"mask: expected a latent-resolution mask (B, 1, h, w), got {getattr(mask, 'shape', mask)}")
    if mask.shape[-2:] != like.shape[-2:]:
        raise PanoInputError(
            f"mask: expected the latent size {tuple(like.shape[-2:])} (h, w), got {tuple(mask.shape[-2:])}"
        )
    if mask.shape[0] not in (1, like.shape[0]):
        raise PanoInputError(f"mask: batch {mask.shape[0]} does not match the latent batch {like.shape[0]}")
    return mask.to(device=like.device, dtype=torch.float32)


@torch.no_grad()
def edit_latent(
    velocity: PairVelocityFn,
    inverted: torch.Tensor,
    y0: torch.Tensor,
    mask: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    *,
    eta: float = 0.9,
    eta_start: float = 0.0,
    eta_stop: float = 1.0,
    tau: float = 0.5,
    blend_until: float | None = None,
    init_edit: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> EditResult:
    """DiT360 editing: denoise a [source, edit] pair from the inverted latent.

    ``mask`` (B or 1, 1, h, w) at latent resolution: 1 = generate anew, 0 = keep. ``tau``:
    feature replacement runs while ``sigma > tau``; latent blending runs while
    ``sigma > blend_until`` (default: ``tau``; 0 = every step, so the kept region ends equal to
    the source branch). ``init_edit``: optional starting latent of the edit branch (outpainting
    passes fresh noise in the unknown region); defaults to ``inverted``.
    ``callback(i, n, state)`` gets ``x_src``, ``x_edit``, ``sigma`` (after the step) and
    ``replaced`` (whether this step used feature replacement) after every step.
    """
    s = check_sigmas(sigmas)
    n = len(s) - 1
    tau = _check_fraction(tau, "tau")
    blend_until = tau if blend_until is None or blend_until < 0 else _check_fraction(blend_until, "blend_until")
    etas = eta_schedule(n, eta, eta_start, eta_stop)
    if inverted.shape != y0.shape:
        raise PanoInputError(
            f"inversion: inverted latent {tuple(inverted.shape)} and source latent {tuple(y0.shape)} differ in shape"
        )
    m = _check_mask(mask, y0)
    y0 = y0.float()
    x_src = inverted.float().clone()
    x_edit = (init_edit if init_edit is not None else inverted).float().clone()
    if x_edit.shape != x_src.shape:
        raise PanoInputError(f"init_edit: expected shape {tuple(x_src.shape)}, got {tuple(x_edit.shape)}")
    b = x_src.shape[0]
    last_replace = [-1]
    step = [0]

    def prepare(i, x):
        step[0] = i
        return x

    def pair(x, t):
        i = step[0]
        s_cur = s[i]
        replace = s_cur > tau
        v_src, v_edit = velocity(x[:b], x[b:], s_cur, replace)
        v_src = controlled_reverse_velocity(v_src.float(), x[:b], y0, s_cur, etas[i])
        return torch.cat([v_src, v_edit.float()])

    def after(i, t, x):
        x_src, x_edit = x[:b], x[b:]
        if s[i] > blend_until:
            x_edit = m * x_edit + (1.0 - m) * x_src
        replace = s[i] > tau
        if replace:
            last_replace[0] = i
        if callback is not None:
            callback(i, n, {"x_src": x_src, "x_edit": x_edit, "sigma": s[i + 1], "replaced": replace})
        return torch.cat([x_src, x_edit])

    x = sample(pair, torch.cat([x_src, x_edit]), s[:-1], s, prepare=prepare, callback=after)
    x_src, x_edit = x[:b], x[b:]
    return EditResult(edit=x_edit, source=x_src, mask=m, last_replace_step=last_replace[0])


def outpaint_init(inverted: torch.Tensor, mask: torch.Tensor, seed: int, wrap_cols: int = 0) -> torch.Tensor:
    """Start of the edit branch for outpainting: fresh seeded noise where ``mask`` is 1 (the
    unknown region; inverting blank canvas would bias it toward flat content), the inverted
    latent where it is 0. ``wrap_cols``: the latents are wrap-padded by that many columns per side;
    the noise is drawn at the unpadded size and padded the same way, so a seed gives the same
    panorama with or without padding."""
    shape = (*inverted.shape[:-1], inverted.shape[-1] - 2 * int(wrap_cols))
    fresh = pad_latent(seeded_noise(shape, int(seed), device=inverted.device), int(wrap_cols))
    return mask * fresh + (1 - mask) * inverted.float()


def velocity_from_denoiser(
    denoise: Callable[[torch.Tensor, float], torch.Tensor], min_sigma: float = 1e-3
) -> VelocityFn:
    """Velocity function from an x0-predicting denoiser ``denoise(x, sigma) -> x0`` (ComfyUI's
    model call for Flux returns ``x - sigma * v``): ``v = (x - x0) / sigma``.

    The model is evaluated at ``max(sigma, min_sigma)``: at ``sigma = 0`` (the first inversion
    step) the denoised output carries no velocity information.
    """

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = max(float(sigma), float(min_sigma))
        return (x.float() - denoise(x, s).float()) / s

    return velocity
