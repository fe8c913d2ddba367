"""The DiT360 training loop (accelerate): optimizer, schedule, checkpoints, logs, export."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

from pano_core.errors import PanoInputError

from ..checkpoints import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from ..config import get, save_config
from ..lora_export import add_lora, export_lora, lora_parameters, lora_state_dict
from ..prepare import read_manifest
from ..randomness import derive_seed
from ..samples import LossLog, plot_losses
from .data import (
    TRAINER,
    DataPlan,
    _check_resolution,
    _device_dtype,
    _make_batch,
    _park_text_encoders,
    _Source,
    build_caches,
    load_pipeline,
)
from .sampling import _sample_embeds, _write_samples
from .step import compute_loss

log = logging.getLogger("pano360")


# ----------------------------------------------------------------------------------- training


def _schedule(cfg: dict, optimizer, total_steps: int):
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


def _optimizer(cfg: dict, params):
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


def _accelerator(cfg: dict, run: Path):
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


def _check_run_folder(run: Path, resume) -> None:
    if resume is None and run.exists() and (run / "checkpoints").is_dir() and list_checkpoints(run):
        raise PanoInputError(
            f"--output: {run} already holds a training run; pass --resume to continue it or choose a new folder "
            "(nothing there is overwritten)"
        )


def train(cfg: dict, resume: str | None = None, progress: bool = True) -> dict:
    """Train a DiT360 LoRA with the resolved config ``cfg`` (see ``configs/dit360_lora.yaml``).

    ``resume``: ``None``, ``"latest"`` or a checkpoint folder. Returns a summary with the
    final LoRA path and the last step. Raises :class:`PanoInputError` for bad data/config.
    """
    run = Path(cfg.get("output") or "")
    if not cfg.get("output"):
        raise PanoInputError("--output: a run folder is required")
    if not get(cfg, "data.dir"):
        raise PanoInputError("--data: the prepared folder is required")
    _check_run_folder(run, resume)
    ck_path = resolve_resume(resume, run)
    manifest = read_manifest(get(cfg, "data.dir"))
    res = _check_resolution(cfg, manifest, str(get(cfg, "data.dir")))
    acc = _accelerator(cfg, run)
    main = acc.is_main_process
    if main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
    seed = int(get(cfg, "train.seed"))
    dev = acc.device
    cdt = _device_dtype(cfg, dev)[0]

    # models, caches, LoRA
    pipe = load_pipeline(cfg, dev)
    grid = pipe.grid(2 * res, res, pad=int(get(cfg, "padding.pad")), id_mode=get(cfg, "padding.id_mode"))
    prompts = [str(p) for p in (get(cfg, "sample.prompts") or [])]
    cache_root = None
    if get(cfg, "data.cache"):
        with acc.main_process_first():
            info = build_caches(cfg, progress=progress and main, pipe=pipe, device=dev)
        cache_root = Path(info["folder"])
        if main:
            log.info("caches: %s", info)
    sample_embeds = _sample_embeds(pipe, cfg, prompts, dev) if prompts and main else []
    if cache_root is not None:
        _park_text_encoders(pipe)
    src = _Source(cfg, pipe, pipe.grid(2 * res, res, pad=0), dev, cache_root)
    persp_on = bool(get(cfg, "data.perspective"))
    plan = DataPlan(len(src.pano), len(src.persp) if persp_on else 0, seed,
                    int(get(cfg, "data.perspective_from_epoch")), float(get(cfg, "data.perspective_fraction")))

    transformer = pipe.transformer
    torch.manual_seed(derive_seed(seed, "lora-init"))
    add_lora(transformer, int(get(cfg, "lora.rank")), float(get(cfg, "lora.alpha")), float(get(cfg, "lora.dropout")),
             get(cfg, "lora.targets"), init=get(cfg, "lora.init"))
    q = get(cfg, "model.quantize_base")
    if q == "fp8":
        from ..memory import quantize_linear_fp8_

        log.info("fp8 base: %d linear layers stored in float8", quantize_linear_fp8_(transformer))
    elif q not in ("none", None):
        raise PanoInputError(f"model.quantize_base: expected none or fp8, got {q!r}")
    if get(cfg, "model.gradient_checkpointing"):
        transformer.enable_gradient_checkpointing()
    transformer.train()
    params = list(lora_parameters(transformer).values())
    optimizer = _optimizer(cfg, params)

    B = int(get(cfg, "train.batch_size"))
    ga = int(get(cfg, "train.gradient_accumulation"))
    world = acc.num_processes
    per_step = B * ga * world
    max_steps = get(cfg, "train.max_steps")
    if max_steps is None:
        max_steps = max(1, plan.samples_in(int(get(cfg, "train.epochs"))) // per_step)
    max_steps = int(max_steps)
    scheduler = _schedule(cfg, optimizer, max_steps)
    model, optimizer = acc.prepare(transformer, optimizer)

    step, samples_seen = 0, 0
    loss_log = LossLog(run / "logs" / "losses.jsonl")
    if ck_path is not None:
        trainable, opt_state, state, _ = load_checkpoint(ck_path)
        named = lora_parameters(acc.unwrap_model(model))
        missing = set(named) ^ set(trainable)
        if missing:
            raise PanoInputError(f"--resume: {ck_path} does not match this LoRA configuration ({len(missing)} keys differ)")
        with torch.no_grad():
            for k, p in named.items():
                p.copy_(trainable[k].to(p.dtype))
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(state["scheduler"])
        step, samples_seen = int(state["step"]), int(state["samples_seen"])
        if main:
            loss_log.truncate(step)
            log.info("resumed from %s at step %d", ck_path, step)
    if get(cfg, "log.logger") == "tensorboard":
        acc.init_trackers("dit360", config={k: v for k, v in _flat(cfg).items() if isinstance(v, (int, float, str, bool))})

    img_ids = pipe.image_ids(grid, dtype=torch.float32).to(dev)
    guidance = (torch.full([B], float(get(cfg, "flow.guidance")), device=dev)
                if pipe.transformer.config.guidance_embeds else None)
    every_ck, keep = int(get(cfg, "checkpoint.every")), int(get(cfg, "checkpoint.keep"))
    every_sample, every_log = int(get(cfg, "sample.every")), max(1, int(get(cfg, "log.every")))
    grad_dump = get(cfg, "debug.grad_dump")
    stop_at = get(cfg, "debug.stop_at_step", None)
    overfit = int(get(cfg, "debug.overfit_batches", 0) or 0)
    max_norm = get(cfg, "train.max_grad_norm")

    def save(step_):
        acc.wait_for_everyone()
        if main:
            unwrapped = acc.unwrap_model(model)
            state = {"samples_seen": samples_seen, "seed": seed, "scheduler": scheduler.state_dict(),
                     "world_size": world, "trainer": TRAINER}
            ck = save_checkpoint(run, step_, {k: v.detach() for k, v in lora_parameters(unwrapped).items()},
                                 optimizer.state_dict(), state, keep=keep)
            export_lora(lora_state_dict(unwrapped), ck, int(get(cfg, "lora.rank")), float(get(cfg, "lora.alpha")),
                        get(cfg, "lora.targets"), base_model=str(get(cfg, "model.path")))
        acc.wait_for_everyone()

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=step, desc="dit360", unit="step", dynamic_ncols=True)
    t0 = time.time()
    acc_terms: dict[str, list[float]] = {}
    while step < max_steps:
        micro = step * ga
        sums: dict[str, torch.Tensor] = {}
        for k in range(ga):
            # dropout draws: from (seed, micro-step, rank), so a resumed run draws the same
            torch.manual_seed(derive_seed(seed, micro + k, acc.process_index, "dropout"))
            stream = samples_seen % (overfit * world * B) if overfit else samples_seen
            base_n = stream + acc.process_index * B
            idx = list(range(base_n, base_n + B))
            batch = _make_batch(cfg, src, plan, idx, pipe, grid, dev, cdt)
            with acc.accumulate(model):
                with acc.autocast():
                    loss, terms = compute_loss(cfg, model, pipe, grid, batch, step, img_ids, guidance)
                acc.backward(loss)
                if acc.sync_gradients:
                    if grad_dump and step == 0 and main:
                        _dump_grads(grad_dump, acc.unwrap_model(model))
                    if max_norm:
                        acc.clip_grad_norm_(params, float(max_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            samples_seen += world * B
            sums["loss"] = sums.get("loss", 0) + loss.detach() / ga
            for t, v in terms.items():
                sums[f"loss/{t}"] = sums.get(f"loss/{t}", 0) + v / ga
        scheduler.step()
        step += 1
        keys = sorted(sums)
        vals = acc.reduce(torch.stack([torch.as_tensor(sums[k], device=dev, dtype=torch.float32) for k in keys]),
                          reduction="mean")
        rec = {"step": step, **{k: float(v) for k, v in zip(keys, vals)}, "lr": scheduler.get_last_lr()[0]}
        if main:
            loss_log.append(rec)
            for k2, v in rec.items():
                if k2 != "step":
                    acc_terms.setdefault(k2, []).append(v)
            if step % every_log == 0 or step == max_steps:
                acc.log({k2: sum(v) / len(v) for k2, v in acc_terms.items()}, step=step)
                acc_terms = {}
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                bar.update(1)
        if every_ck > 0 and step % every_ck == 0 and step < max_steps:
            save(step)
        if main and sample_embeds and every_sample > 0 and step % every_sample == 0 and step < max_steps:
            _write_samples(run, step, pipe, cfg, sample_embeds, prompts)
            plot_losses(loss_log.read(), run / "logs" / "loss.png")
        if stop_at is not None and step >= int(stop_at) and step < max_steps:
            if bar is not None:
                bar.close()
            acc.end_training()
            return {"lora": None, "step": step, "run": str(run), "stopped": True}
    if bar is not None:
        bar.close()
    save(step)
    out = None
    if main:
        out = export_lora(lora_state_dict(acc.unwrap_model(model)), run, int(get(cfg, "lora.rank")),
                          float(get(cfg, "lora.alpha")), get(cfg, "lora.targets"), base_model=str(get(cfg, "model.path")))
        if sample_embeds:
            _write_samples(run, step, pipe, cfg, sample_embeds, prompts)
        plot_losses(loss_log.read(), run / "logs" / "loss.png")
        log.info("trained %d steps in %.1f s; LoRA: %s", step, time.time() - t0, out)
    acc.end_training()
    return {"lora": str(out) if out else None, "step": step, "run": str(run)}


def _dump_grads(path: str, module: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    grads = {k: p.grad.detach().float().cpu().contiguous() for k, p in lora_parameters(module).items() if p.grad is not None}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(grads, str(path))


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
