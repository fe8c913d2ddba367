"""The optimizer-step loop every trainer shares (accelerate; exact resume; rank-0 outputs), and
what every trainer sets up around it: :func:`make_accelerator`, :func:`make_optimizer`,
:func:`make_lr_schedule`, :func:`check_run_folder`, :func:`flat_config`.

:func:`run_steps` runs optimizer steps from ``state.step`` to ``max_steps``: per step
``train.gradient_accumulation`` micro-batches, each of the global samples
``samples_seen + rank * B ... + B - 1`` (``debug.overfit_batches`` repeats the first N global
batches), the torch seed reset from ``(seed, micro-step, rank)`` before each (dropout draws
repeat after a resume), backward under ``accelerator.accumulate``, the grad-norm clip, the
all-reduced mean of the loss and of every term logged per step (``LossLog`` and the tracker),
the progress bar, checkpoints every ``checkpoint.every``, samples every ``sample.every`` and
``debug.stop_at_step``. What is trained and how its loss is computed come from the trainer:
``make_batch(indices)``, ``loss(batch, step) -> (loss, {term: value})``, ``save(step)``,
``samples(step)`` and ``micro_context()`` (a context manager around forward and backward, e.g.
the joint-face sync).

Example (see ``training/jopano.py`` and ``training/dit360/trainer.py``)::

    state = LoopState(step=0, samples_seen=0)
    stopped = run_steps(acc, model, optimizer, scheduler, params, cfg, state, max_steps,
                        make_batch=..., loss=..., loss_log=LossLog(...), save=..., samples=None)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pano_core.errors import PanoInputError

from .checkpoints import list_checkpoints
from .config import get
from .randomness import derive_seed

log = logging.getLogger("pano360")

__all__ = [
    "LoopState",
    "check_run_folder",
    "flat_config",
    "make_accelerator",
    "make_lr_schedule",
    "make_optimizer",
    "run_steps",
]


@dataclass
class LoopState:
    """Where a run is: optimizer steps done and global samples consumed (saved in checkpoints)."""

    step: int = 0
    samples_seen: int = 0


def run_steps(acc, model, optimizer, scheduler, params, cfg: dict, state: LoopState, max_steps: int, *,
              make_batch: Callable[[list[int]], object], loss: Callable[[object, int], tuple[torch.Tensor, dict]],
              loss_log, save: Callable[[int], None], samples: Callable[[int], None] | None = None,
              micro_context: Callable[[], contextlib.AbstractContextManager] | None = None,
              on_first_grads: Callable[[], None] | None = None, progress: bool = True, desc: str = "train") -> bool:
    """Run the steps (see the module docstring); ``True`` when ``debug.stop_at_step`` stopped the run
    early (the caller then skips its final export). ``state`` is updated in place."""
    main = acc.is_main_process
    seed, B = int(get(cfg, "train.seed")), int(get(cfg, "train.batch_size"))
    ga, world, rank = int(get(cfg, "train.gradient_accumulation")), acc.num_processes, acc.process_index
    overfit = int(get(cfg, "debug.overfit_batches") or 0)
    max_norm = get(cfg, "train.max_grad_norm")
    every_ck, every_sample = int(get(cfg, "checkpoint.every")), int(get(cfg, "sample.every"))
    every_log, stop_at = max(1, int(get(cfg, "log.every"))), get(cfg, "debug.stop_at_step")
    context = micro_context or contextlib.nullcontext
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=state.step, desc=desc, unit="step", dynamic_ncols=True)
    window: dict[str, list[float]] = {}
    try:
        while state.step < max_steps:
            totals: dict[str, torch.Tensor] = {}
            for k in range(ga):
                torch.manual_seed(derive_seed(seed, state.step * ga + k, rank, "dropout"))
                first = (state.samples_seen % (overfit * world * B) if overfit else state.samples_seen) + rank * B
                batch = make_batch(list(range(first, first + B)))
                with acc.accumulate(model), context():
                    with acc.autocast():
                        value, terms = loss(batch, state.step)
                    acc.backward(value)
                    if acc.sync_gradients:
                        if on_first_grads is not None and state.step == 0 and main:
                            on_first_grads()
                        if max_norm:
                            acc.clip_grad_norm_(params, float(max_norm))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state.samples_seen += world * B
                for name, v in (("loss", value.detach()), *((f"loss/{t}", v) for t, v in terms.items())):
                    totals[name] = totals.get(name, 0) + v / ga
            scheduler.step()
            state.step += 1
            names = sorted(totals)
            means = acc.reduce(torch.stack([torch.as_tensor(totals[n], device=acc.device, dtype=torch.float32)
                                            for n in names]), reduction="mean")
            record = {"step": state.step, **dict(zip(names, map(float, means))), "lr": scheduler.get_last_lr()[0]}
            if main:
                loss_log.append(record)
                for n, v in record.items():
                    if n != "step":
                        window.setdefault(n, []).append(v)
                if state.step % every_log == 0 or state.step == max_steps:
                    acc.log({n: sum(v) / len(v) for n, v in window.items()}, step=state.step)
                    window = {}
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    bar.update(1)
            last = state.step >= max_steps
            if every_ck > 0 and state.step % every_ck == 0 and not last:
                save(state.step)
            if samples is not None and main and every_sample > 0 and state.step % every_sample == 0 and not last:
                samples(state.step)
            if stop_at is not None and int(stop_at) <= state.step and not last:
                return True
        return False
    finally:
        if bar is not None:
            bar.close()


# ------------------------------------------------------------- what every trainer sets up


def make_lr_schedule(cfg: dict, optimizer, total_steps: int):
    name = get(cfg, "scheduler.name")
    w = float(get(cfg, "scheduler.warmup"))
    warm = int(round(w * total_steps)) if w < 1 else int(w)

    if name == "constant_with_warmup":
        def f(s):
            return min(1.0, (s + 1) / warm) if warm > 0 else 1.0
    elif name == "constant":
        def f(s):
            return 1.0
    elif name == "cosine":
        def f(s):
            if warm > 0 and s < warm:
                return (s + 1) / warm
            prog = (s - warm) / max(1, total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
    else:
        raise PanoInputError(f"scheduler.name: expected constant_with_warmup, constant or cosine, got {name!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def make_optimizer(cfg: dict, params):
    name = get(cfg, "optimizer.name")
    kw = dict(lr=float(get(cfg, "optimizer.lr")), weight_decay=float(get(cfg, "optimizer.weight_decay")),
              eps=float(get(cfg, "optimizer.eps")), betas=tuple(float(b) for b in get(cfg, "optimizer.betas")))
    if name == "adamw":
        return torch.optim.AdamW(params, **kw)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise PanoInputError("optimizer.name: adamw8bit needs bitsandbytes (pip install bitsandbytes); "
                                 "or use --set optimizer.name=adamw") from None
        return bnb.optim.AdamW8bit(params, **kw)
    raise PanoInputError(f"optimizer.name: expected adamw or adamw8bit, got {name!r}")


def make_accelerator(cfg: dict, run: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    mp = str(get(cfg, "train.mixed_precision"))
    if mp not in ("no", "fp16", "bf16"):
        raise PanoInputError(f"train.mixed_precision: expected no, fp16 or bf16, got {mp!r}")
    if not torch.cuda.is_available() and mp != "no":
        log.info("train.mixed_precision %s needs a GPU: training in fp32 on the CPU", mp)
        mp = "no"
    logger = get(cfg, "log.logger")
    kw = {}
    if logger == "tensorboard":
        kw["log_with"] = "tensorboard"
    elif logger not in ("none", None):
        raise PanoInputError(f"log.logger: expected tensorboard or none, got {logger!r}")
    # Several processes without CUDA (torchrun / `accelerate launch --multi_gpu` on a CPU machine):
    # DDP over gloo on the CPU. (accelerate's own `--cpu` launcher starts one process unless mpirun
    # is configured.)
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        cpu=cpu,
        mixed_precision=mp,
        gradient_accumulation_steps=int(get(cfg, "train.gradient_accumulation")),
        project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")),
        **kw,
    )


def check_run_folder(run: Path, resume) -> None:
    if resume is None and run.exists() and (run / "checkpoints").is_dir() and list_checkpoints(run):
        raise PanoInputError(
            f"--output: {run} already holds a training run; pass --resume to continue it or choose a new folder "
            "(nothing there is overwritten)"
        )


def flat_config(cfg: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the tracker's hyper-parameter table)."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
