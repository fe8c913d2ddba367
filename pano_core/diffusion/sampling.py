"""The sampling loop every generator shares: a velocity function in, latents out.

:func:`sample` integrates a flow-matching ODE over a timestep schedule. The generator supplies
the model as a *velocity function* ``velocity(x, t) -> v`` (``t``: the model's timesteps as a
``(B,)`` tensor, one per batch element) and keeps everything model-specific (packing, padding,
text conditioning, attention hooks) inside it. The loop adds what every generator needs:

- classifier-free guidance: ``uncond`` velocity + ``cfg_scale`` (:func:`cfg_combine`);
- ``prepare(i, x)`` before each model call (e.g. re-sync circular padding);
- per-element timesteps: ``timestep_hook(i, t, x) -> (B,)`` and ``clean=(mask, x0)`` to keep
  some batch elements clean: they get ``t = 0`` and are reset to ``x0`` after every step
  (conditioning images / faces in a joint batch);
- ``callback(i, t, x)`` after every step (progress, previews; may return replacement latents);
- ``interrupt()`` before every step: raise to cancel (ComfyUI:
  ``comfy.model_management.throw_exception_if_processing_interrupted``) or return True to
  raise :class:`SamplingInterrupted`;
- the step itself: Euler on ``sigmas`` by default (:func:`euler_step`), or any
  ``step(v, t, x) -> x`` (e.g. a diffusers scheduler's ``step``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from ..errors import PanoInputError

__all__ = [
    "Velocity",
    "SamplingInterrupted",
    "cfg_combine",
    "euler_step",
    "scheduler_step",
    "sample",
]

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity(x, t) -> v``: ``t`` is a ``(B,)`` tensor of model timesteps, ``v`` has ``x``'s shape."""


class SamplingInterrupted(RuntimeError):
    """Raised by :func:`sample` when its ``interrupt`` hook returns True."""


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def euler_step(v: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of the flow ODE in float32: ``x + (sigma_next - sigma) * v``, cast back to
    ``v``'s dtype (what diffusers' ``FlowMatchEulerDiscreteScheduler`` does)."""
    return (x.float() + (float(sigma_next) - float(sigma)) * v.float()).to(v.dtype)


def scheduler_step(scheduler) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``step(v, t, x)`` of a diffusers scheduler (``scheduler.step(v, t, x)[0]``) for :func:`sample`."""
    return lambda v, t, x: scheduler.step(v, t, x, return_dict=False)[0]


def _batch_t(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def sample(
    velocity: Velocity,
    x: torch.Tensor,
    timesteps: Sequence[float] | torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    *,
    uncond: Velocity | None = None,
    cfg_scale: float = 1.0,
    step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    prepare: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    timestep_hook: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    clean: tuple[torch.Tensor, torch.Tensor] | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
    interrupt: Callable[[], bool | None] | None = None,
    progress=None,
) -> torch.Tensor:
    """Integrate from ``x`` (noise at ``timesteps[0]``) over ``timesteps``; return the final latents.

    ``timesteps``: the model times of the steps (what ``velocity`` gets; Flux: sigma * 1000).
    ``sigmas``: ``len(timesteps) + 1`` noise levels for the default Euler step; not needed with
    a custom ``step(v, t, x) -> x_next`` (:func:`scheduler_step`). ``uncond`` + ``cfg_scale > 1``:
    classifier-free guidance, ``velocity`` is the conditional branch. ``prepare(i, x) -> x`` runs
    before each model call. ``timestep_hook(i, t, x) -> (B,)`` overrides the per-element model
    times; ``clean=(mask (B,) bool, x0)`` keeps the masked elements at ``x0`` with ``t = 0``.
    ``callback(i, t, x)`` after each step may return replacement latents. ``interrupt()`` runs
    before each step (raise, or return True for :class:`SamplingInterrupted`). ``progress``: an
    object with ``update()`` (tqdm, ComfyUI's ProgressBar) or a context manager yielding one.
    """
    n = len(timesteps)
    if sigmas is not None and len(sigmas) != n + 1:
        raise PanoInputError(f"sigmas: expected {n + 1} values for {n} timesteps, got {len(sigmas)}")
    if step is None and sigmas is None:
        raise PanoInputError("sample: give sigmas (Euler steps) or a step function")
    do_cfg = uncond is not None and cfg_scale > 1.0
    keep = None
    if clean is not None:
        mask, x0 = clean
        keep = torch.as_tensor(mask, dtype=torch.bool, device=x.device).reshape(-1)
        if keep.shape[0] != x.shape[0] or x0.shape != x.shape:
            raise PanoInputError(
                f"clean: expected a ({x.shape[0]},) mask and latents of shape {tuple(x.shape)}, got "
                f"{tuple(keep.shape)} and {tuple(x0.shape)}"
            )
        kx = keep.reshape(-1, *([1] * (x.ndim - 1)))
        x0 = x0.to(device=x.device, dtype=x.dtype)
        x = torch.where(kx, x0, x)
    ctx = progress if hasattr(progress, "__enter__") else nullcontext(progress)
    with ctx as bar:
        for i in range(n):
            if interrupt is not None and interrupt():
                raise SamplingInterrupted(f"sampling interrupted before step {i + 1} of {n}")
            t = timesteps[i]
            if prepare is not None:
                x = prepare(i, x)
            tb = _batch_t(t, x)
            if timestep_hook is not None:
                tb = timestep_hook(i, tb, x)
            if keep is not None:
                tb = torch.where(keep, torch.zeros_like(tb), tb)
            v = velocity(x, tb)
            if do_cfg:
                v = cfg_combine(v, uncond(x, tb), cfg_scale)
            x = step(v, t, x) if step is not None else euler_step(v, x, sigmas[i], sigmas[i + 1])
            if keep is not None:
                x = torch.where(kx, x0, x)
            if callback is not None:
                new = callback(i, t, x)
                if new is not None:
                    x = new
            if bar is not None:
                bar.update(1)
    return x
