"""Samples of a DiT360 LoRA: fixed-seed renders during training and ``pano360-train sample``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pano_core.errors import PanoInputError

from ..caches import progress_bar
from ..checkpoints import list_checkpoints
from ..config import get, load_config
from ..samples import append_metrics, sample_metrics, write_sample_grid
from .data import _caption_text, _encode_text, load_pipeline

# ----------------------------------------------------------------------------------- sampling


def render_samples(pipe, grid_h: int, embeds: list, seeds: list[int], steps: int, guidance: float, pad: int,
                   id_mode: str, circular_decode: bool) -> torch.Tensor:
    """Sample one panorama per (prompt embedding, seed) with the pipeline's current weights
    (DiT360 token padding, mu from the padded count); returns (N, 3, H, 2H) on the CPU."""
    grid = pipe.grid(2 * grid_h, grid_h, pad=pad, id_mode=id_mode)
    dev = pipe.device
    out = []
    for e in embeds:
        for s in seeds:
            noise = pipe.prepare_latents(1, grid, torch.Generator("cpu").manual_seed(int(s)), dtype=e.prompt_embeds.dtype)
            tokens = grid.pad(noise)
            ts, _ = pipe.timesteps(int(steps), grid)
            g = torch.full([1], float(guidance), device=dev) if pipe.transformer.config.guidance_embeds else None
            tokens = pipe.denoise(tokens, grid, e, ts, g, img_ids=pipe.image_ids(grid, dtype=e.text_ids.dtype),
                                  progress=False)
            lat = grid.unpack(grid.crop(tokens))
            out.append(pipe.decode_latents(lat, circular_decode=circular_decode).float().cpu())
    return torch.cat(out)


def _sample_embeds(pipe, cfg: dict, prompts: list[str], device):
    from pano_core.dit360.pipeline import PromptEmbeds

    out = []
    for p in prompts:
        e = _encode_text(pipe, _caption_text(cfg, p), int(get(cfg, "data.max_sequence_length")))
        out.append(PromptEmbeds(e.prompt_embeds.to(device), e.pooled.to(device), e.text_ids.to(device)))
    return out


def _write_samples(run: Path, step: int, pipe, cfg: dict, embeds: list, prompts: list[str]) -> Path:
    seeds = [int(s) for s in get(cfg, "sample.seeds")]
    h = int(get(cfg, "sample.height") or get(cfg, "data.resolution"))
    was_training = pipe.transformer.training
    pipe.transformer.eval()
    try:
        with torch.no_grad():
            imgs = render_samples(pipe, h, embeds, seeds, int(get(cfg, "sample.steps")), float(get(cfg, "sample.guidance")),
                                  int(get(cfg, "padding.pad")), get(cfg, "padding.id_mode"),
                                  bool(get(cfg, "sample.circular_decode")))
    finally:
        pipe.transformer.train(was_training)
    path = write_sample_grid(run / "samples" / f"step-{step:06d}.png", imgs, cols=len(seeds))
    recs = []
    i = 0
    for p in prompts:
        for s in seeds:
            recs.append({"step": step, "prompt": p, "seed": s, **sample_metrics(imgs[i : i + 1])})
            i += 1
    append_metrics(run / "samples" / "metrics.jsonl", recs)
    return path


# ----------------------------------------------------------------------------------- sample command


def sample_from_run(run: str | os.PathLike, prompts: str | os.PathLike, step: int | None = None,
                    output: str | os.PathLike | None = None, seed: int = 0, model: str | None = None,
                    progress: bool = True) -> list[Path]:
    """Render every prompt of a text file (one per line) with a run's checkpoint LoRA."""
    from pano_core.io import write_image

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise PanoInputError(f"--run: {run} is not a training run (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    cks = list_checkpoints(run)
    if not cks:
        raise PanoInputError(f"--run: {run} has no checkpoints")
    if step is None:
        step, ck = cks[-1]
    else:
        found = [c for s, c in cks if s == step]
        if not found:
            raise PanoInputError(f"--step: {run} has no checkpoint at step {step} (has {', '.join(str(s) for s, _ in cks)})")
        ck = found[0]
    p = Path(prompts)
    if not p.is_file():
        raise PanoInputError(f"--prompts: {p} is not a file")
    lines = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not lines:
        raise PanoInputError(f"--prompts: {p} holds no prompts")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(cfg, dev, model=model)
    pipe.load_lora(str(ck / "adapter_model.safetensors"))
    out = Path(output) if output else run / "samples" / f"manual-step-{step:06d}"
    out.mkdir(parents=True, exist_ok=True)
    h = int(get(cfg, "sample.height") or get(cfg, "data.resolution"))
    written = []
    bar = progress_bar(len(lines), "sample", progress)
    for i, line in enumerate(lines):
        embeds = _sample_embeds(pipe, cfg, [line], dev)
        img = render_samples(pipe, h, embeds, [seed + i], int(get(cfg, "sample.steps")), float(get(cfg, "sample.guidance")),
                             int(get(cfg, "padding.pad")), get(cfg, "padding.id_mode"), bool(get(cfg, "sample.circular_decode")))
        path = out / f"{i:04d}-seed{seed + i}.png"
        write_image(path, img, force=True)
        append_metrics(out / "metrics.jsonl", [{"step": step, "prompt": line, "seed": seed + i, **sample_metrics(img)}])
        written.append(path)
        bar.update()
    bar.close()
    return written
