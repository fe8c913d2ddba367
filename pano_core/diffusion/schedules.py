"""Flow-matching schedules: the resolution-dependent shift, sigma schedules, training timesteps.

Rectified flow / flow matching (Flux, Sana, SD3): ``x_sigma = (1 - sigma) * x0 + sigma * noise``,
``sigma`` from 1 (noise) to 0 (clean). Two ways to bend the schedule toward high noise:

- resolution-dependent shift ``mu`` (Flux): :func:`shift_mu` is linear in the token count
  (diffusers' ``calculate_shift``, ComfyUI's ``ModelSamplingFlux``); a generator with circular
  padding passes the **padded** count (:attr:`TokenGrid.padded_tokens`, DiT360);
  :func:`time_shift` applies it: ``exp(mu) / (exp(mu) + (1/sigma - 1))``;
- constant shift ``s`` (Sana, SD3): :func:`constant_shift` ``s*sigma / (1 + (s-1)*sigma)``.

Schedules for sampling:

- :func:`default_sigmas` (steps): Flux's ``linspace(1, 1/steps, steps)`` before shifting;
- :func:`schedule_mu` (scheduler config, seq_len): ``mu`` with the scheduler's base/max values;
- :func:`set_timesteps` (scheduler, steps, seq_len, device): set a diffusers flow-matching
  scheduler up (default sigmas, ``mu``), reset its step index, return ``(timesteps, sigmas)``;
- :func:`sigma_schedule` (scheduler, steps, seq_len): the same ``steps + 1`` sigmas as floats on
  the CPU from a copy of the scheduler (for loops that integrate sigmas themselves, RF-inversion).

For training: :func:`sample_sigmas` draws per-element training sigmas (uniform or logit-normal,
then shifted) and :func:`add_noise` / :func:`velocity_target` give the noised input and target.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import PanoInputError
from ..validate import check_int

__all__ = [
    "shift_mu",
    "time_shift",
    "constant_shift",
    "default_sigmas",
    "schedule_mu",
    "set_timesteps",
    "scheduler_timesteps",
    "sigma_schedule",
    "sample_sigmas",
    "add_noise",
    "velocity_target",
]


def _check_steps(steps) -> int:
    return check_int(steps, "steps", 1)


def shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Resolution-dependent time shift ``mu`` of FLUX.1-dev for ``image_seq_len`` tokens.

    Linear through (base_seq_len, base_shift) and (max_seq_len, max_shift), extrapolated
    beyond (as diffusers' ``calculate_shift`` and ComfyUI's ``ModelSamplingFlux``). DiT360
    calls it with the padded token count (:attr:`TokenGrid.padded_tokens`). Sigmas are then shifted as
    ``exp(mu) / (exp(mu) + (1/t - 1))``.
    """
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return float(image_seq_len) * m + b




def time_shift(sigma: torch.Tensor | float, mu: float, exponent: float = 1.0):
    """Flux's exponential time shift of ``sigma`` in (0, 1]: ``e^mu / (e^mu + (1/sigma - 1)^exponent)``
    (0 stays 0)."""
    s = torch.as_tensor(sigma, dtype=torch.float64) if not isinstance(sigma, torch.Tensor) else sigma
    em = math.exp(mu)
    out = torch.where(s > 0, em / (em + (1 / s.clamp_min(1e-12) - 1) ** exponent), torch.zeros_like(s))
    return out if isinstance(sigma, torch.Tensor) else float(out)


def constant_shift(sigma: torch.Tensor | float, shift: float):
    """Constant flow shift (SD3, Sana ``flow_shift``): ``shift*sigma / (1 + (shift-1)*sigma)``."""
    if not shift > 0:
        raise PanoInputError(f"shift: expected a positive number, got {shift!r}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def default_sigmas(steps: int) -> np.ndarray:
    """Flux's unshifted sigmas ``linspace(1, 1/steps, steps)`` (the scheduler appends the final 0)."""
    steps = _check_steps(steps)
    return np.linspace(1.0, 1 / steps, steps)


def _config_get(config, key, default):
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def schedule_mu(scheduler_config, image_seq_len: int) -> float:
    """:func:`shift_mu` for ``image_seq_len`` tokens with a scheduler config's base/max sequence
    lengths and shifts (FLUX.1-dev: 256/4096, 0.5/1.15). Generators with circular padding pass
    the **padded** token count."""
    get = lambda k, d: _config_get(scheduler_config, k, d)  # noqa: E731
    return shift_mu(
        image_seq_len,
        base_seq_len=get("base_image_seq_len", 256),
        max_seq_len=get("max_image_seq_len", 4096),
        base_shift=get("base_shift", 0.5),
        max_shift=get("max_shift", 1.15),
    )


def set_timesteps(
    scheduler,
    steps: int,
    image_seq_len: int,
    device: torch.device | str | None = None,
    sigmas: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set a diffusers flow-matching scheduler up for ``steps`` steps, ``mu`` from
    ``image_seq_len`` (the padded count for padded grids), sigmas :func:`default_sigmas` unless
    given (or the scheduler's own when its config has ``use_flow_sigmas``). Resets the step index
    (``set_begin_index(0)``). Returns ``(timesteps, sigmas)``; ``sigmas`` has ``steps + 1``
    entries, the last 0 -- exactly what diffusers' ``FluxPipeline`` sets."""
    from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

    steps = _check_steps(steps)
    if sigmas is None:
        sigmas = default_sigmas(steps)
    if getattr(scheduler.config, "use_flow_sigmas", False):
        sigmas = None
    mu = schedule_mu(scheduler.config, image_seq_len)
    ts, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
    scheduler.set_begin_index(0)
    return ts, scheduler.sigmas


def scheduler_timesteps(scheduler, steps: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Set any diffusers scheduler up with its **own** spacing for ``steps`` steps (no custom
    sigmas, no resolution shift), as pipelines without a dynamic shift do (``SanaPipeline``:
    Sana 1.5's flow-matching Euler with a constant shift, Sana 1.0's DPM-Solver with flow sigmas).
    Resets the step index. Returns ``(timesteps, sigmas)`` (``sigmas``: ``steps + 1`` noise levels
    when the scheduler has them, else None)."""
    steps = _check_steps(steps)
    scheduler.set_timesteps(steps, device=device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    return scheduler.timesteps, getattr(scheduler, "sigmas", None)


def sigma_schedule(scheduler, steps: int, image_seq_len: int) -> torch.Tensor:
    """The ``steps + 1`` shifted sigmas (1 -> 0) :func:`set_timesteps` would set, as float32 on
    the CPU, computed on a copy (``scheduler`` is left untouched)."""
    steps = _check_steps(steps)
    sched = copy.deepcopy(scheduler)
    mu = schedule_mu(sched.config, image_seq_len)
    sched.set_timesteps(sigmas=default_sigmas(steps), mu=mu, device="cpu")
    return sched.sigmas.detach().float().cpu()


def sample_sigmas(
    batch: int,
    *,
    mode: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    shift: float | None = None,
    mu: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-element training sigmas ``(batch,)`` in (0, 1): ``"uniform"`` or ``"logit_normal"``
    (``sigmoid(N(mean, std))``, SD3/Flux training), then shifted by a constant ``shift`` (Sana)
    or a resolution ``mu`` (Flux, :func:`time_shift`; e.g. ``shift_mu(grid.padded_tokens)``).
    Drawn on the CPU from ``generator`` (repeatable on every device), then moved to ``device``."""
    check_int(batch, "batch", 1)
    if shift is not None and mu is not None:
        raise PanoInputError("sample_sigmas: give shift (constant) or mu (resolution shift), not both")
    if mode == "uniform":
        s = torch.rand(batch, generator=generator)
    elif mode == "logit_normal":
        s = torch.sigmoid(mean + std * torch.randn(batch, generator=generator))
    else:
        raise PanoInputError(f"mode: expected 'uniform' or 'logit_normal', got {mode!r}")
    s = s.clamp(1e-5, 1 - 1e-5)
    if shift is not None:
        s = constant_shift(s, float(shift))
    elif mu is not None:
        s = time_shift(s, float(mu)).float()
    return s.to(device) if device is not None else s


def _per_element(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, device=like.device, dtype=torch.float32)
    return s.reshape(-1, *([1] * (like.ndim - 1))) if s.ndim else s


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``(1 - sigma) * x0 + sigma * noise`` with per-element ``sigma`` ``(B,)`` (or a scalar)."""
    s = _per_element(sigma, x0)
    return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target ``noise - x0`` (what Flux and Sana predict)."""
    return noise - x0
