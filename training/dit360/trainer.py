"""The DiT360 trainer: models, caches, LoRA, resume and export around the shared step loop (training/loop.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from pano_core.errors import PanoInputError

from ..checkpoints import load_checkpoint, resolve_resume, save_checkpoint
from ..config import get, save_config
from ..loop import (
    LoopState,
    check_run_folder,
    flat_config,
    make_accelerator,
    make_lr_schedule,
    make_optimizer,
    run_steps,
)
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
    check_run_folder(run, resume)
    ck_path = resolve_resume(resume, run)
    manifest = read_manifest(get(cfg, "data.dir"))
    res = _check_resolution(cfg, manifest, str(get(cfg, "data.dir")))
    acc = make_accelerator(cfg, run)
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
    optimizer = make_optimizer(cfg, params)

    B = int(get(cfg, "train.batch_size"))
    ga = int(get(cfg, "train.gradient_accumulation"))
    world = acc.num_processes
    per_step = B * ga * world
    max_steps = get(cfg, "train.max_steps")
    if max_steps is None:
        max_steps = max(1, plan.samples_in(int(get(cfg, "train.epochs"))) // per_step)
    max_steps = int(max_steps)
    scheduler = make_lr_schedule(cfg, optimizer, max_steps)
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
        acc.init_trackers("dit360", config={k: v for k, v in flat_config(cfg).items() if isinstance(v, (int, float, str, bool))})

    img_ids = pipe.image_ids(grid, dtype=torch.float32).to(dev)
    guidance = (torch.full([B], float(get(cfg, "flow.guidance")), device=dev)
                if pipe.transformer.config.guidance_embeds else None)
    keep = int(get(cfg, "checkpoint.keep"))
    grad_dump = get(cfg, "debug.grad_dump")
    state = LoopState(step, samples_seen)

    def save(step_):
        acc.wait_for_everyone()
        if main:
            unwrapped = acc.unwrap_model(model)
            saved = {"samples_seen": state.samples_seen, "seed": seed, "scheduler": scheduler.state_dict(),
                     "world_size": world, "trainer": TRAINER}
            ck = save_checkpoint(run, step_, {k: v.detach() for k, v in lora_parameters(unwrapped).items()},
                                 optimizer.state_dict(), saved, keep=keep)
            export_lora(lora_state_dict(unwrapped), ck, int(get(cfg, "lora.rank")), float(get(cfg, "lora.alpha")),
                        get(cfg, "lora.targets"), base_model=str(get(cfg, "model.path")))
        acc.wait_for_everyone()

    def samples(step_):
        _write_samples(run, step_, pipe, cfg, sample_embeds, prompts)
        plot_losses(loss_log.read(), run / "logs" / "loss.png")

    t0 = time.time()
    stopped = run_steps(
        acc, model, optimizer, scheduler, params, cfg, state, max_steps,
        make_batch=lambda idx: _make_batch(cfg, src, plan, idx, pipe, grid, dev, cdt),
        loss=lambda batch, step_: compute_loss(cfg, model, pipe, grid, batch, step_, img_ids, guidance),
        loss_log=loss_log, save=save, samples=samples if sample_embeds else None,
        on_first_grads=(lambda: _dump_grads(grad_dump, acc.unwrap_model(model))) if grad_dump else None,
        progress=progress, desc="dit360",
    )
    step = state.step
    if stopped:
        acc.end_training()
        return {"lora": None, "step": step, "run": str(run), "stopped": True}
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
