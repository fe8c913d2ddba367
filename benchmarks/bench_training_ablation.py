"""Toy-scale DiT360 ablation on the CPU: does circular padding / cube loss / yaw loss move the seams?

A small Flux-architecture transformer (diffusers ``FluxTransformer2DModel``: hidden 96, 2 double +
2 single blocks, random init, **all of its weights trained**: a LoRA on a random base would learn
nothing) is trained with the real trainer's loss (``pano360_training.dit360.compute_loss``: flow
matching on circularly padded tokens, cropped before the loss, the yaw/cube terms of
``training/losses.py``) on a synthetic panorama set that is truly 360°-periodic (procedural sky
gradients, a horizon whose height is a sum of whole-period sinusoids, towers and a sun at random
longitudes drawn with wrap-around). There is no learned autoencoder at this scale: the "latent"
is the panorama average-pooled 4x (3 colour channels + 13 zero channels = Flux's 16), and the
metrics are taken on the generated colour channels at latent resolution (32x16), so they measure
what the transformer produced.

Configurations (each trained from the same init, same data stream, same steps):

* ``no padding``            -- plain Flux on the ERP (pad 0);
* ``circular padding``      -- DiT360's token padding (1 column per side, wrapped ids);
* ``+ cube loss``           -- padding + cube loss (0.5);
* ``+ yaw loss (published)``  -- padding + DiT360's published yaw loss (0.5, angles 60/180/300);
* ``+ yaw loss (equivariance)`` -- padding + the equivariance form (0.5).

Samples (fixed seeds, Euler, mu from the padded token count) are scored with
``pano_core.seams.metrics.seam_metrics``: ``wrap_seam`` (about 1 = seamless; the step across the
0/360 seam relative to neighbouring columns) and the cube seam metrics; the training cost is
the wall time per step. Results go to stdout and, with ``--write``, to benchmarks/RESULTS.md.

Run from the repository root:  python benchmarks/bench_training_ablation.py [--steps 300] [--write]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
try:  # installed with the pack as pano360_training; from a bare checkout, use training/ directly
    import pano360_training  # noqa: F401
except ImportError:
    import importlib.util

    _spec = importlib.util.spec_from_file_location("pano360_training", ROOT / "training" / "__init__.py",
                                                   submodule_search_locations=[str(ROOT / "training")])
    sys.modules["pano360_training"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["pano360_training"])

POOL = 4  # pixels per latent pixel of the toy "autoencoder"
H = 64  # ERP height in pixels (latent 16 x 32, tokens 8 x 16)

CONFIGS = {
    "no padding": dict(pad=0),
    "circular padding": dict(pad=1),
    "+ cube loss": dict(pad=1, cube=0.5),
    "+ yaw loss (published)": dict(pad=1, yaw=0.5, form="published"),
    "+ yaw loss (equivariance)": dict(pad=1, yaw=0.5, form="equivariance"),
}


# ----------------------------------------------------------------------------------- data


def synthetic_panorama(seed: int, h: int = H) -> torch.Tensor:
    """A 360°-periodic panorama (1, 3, h, 2h) in 0..1: sky, wavy horizon, towers, a sun."""
    g = torch.Generator().manual_seed(seed)
    w = 2 * h
    lon = (torch.arange(w) + 0.5) / w * 2 * math.pi  # 0..2pi, periodic
    lat = 0.5 - (torch.arange(h) + 0.5) / h  # +0.5 top .. -0.5 bottom
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    sky_top, sky_low = r(3) * 0.4 + torch.tensor([0.1, 0.2, 0.5]), r(3) * 0.3 + torch.tensor([0.5, 0.6, 0.7])
    ground = r(3) * 0.4 + torch.tensor([0.15, 0.25, 0.05])
    horizon = torch.zeros(w)
    for k in (1, 2, 3, 5):  # whole periods: the horizon wraps
        horizon += (r(1) - 0.5) * 0.12 / k * torch.cos(k * lon + r(1) * 2 * math.pi)
    t = ((lat[:, None] - horizon[None]) / 0.5).clamp(0, 1)
    sky = sky_low[:, None, None] * (1 - t) + sky_top[:, None, None] * t
    is_sky = (lat[:, None] > horizon[None]).float()
    img = sky * is_sky + ground[:, None, None] * (1 - is_sky) * (0.8 + 0.2 * torch.cos(3 * lon))[None, None]
    for _ in range(int(r(1) * 3) + 2):  # towers at random longitudes (distance taken around the circle)
        c, width, top = r(1) * 2 * math.pi, 0.05 + r(1) * 0.1, 0.05 + r(1) * 0.25
        d = torch.remainder(lon - c + math.pi, 2 * math.pi) - math.pi
        mask = (d.abs() < width)[None].float() * ((lat[:, None] < horizon[None] + top) & (lat[:, None] > horizon[None] - 0.05)).float()
        img = img * (1 - mask) + (r(3) * 0.5)[:, None, None] * mask
    c = r(1) * 2 * math.pi
    d = torch.remainder(lon - c + math.pi, 2 * math.pi) - math.pi
    sun = ((d[None] ** 2 + ((lat[:, None] - 0.3) * 2 * math.pi) ** 2) < 0.06).float()
    img = img * (1 - sun) + torch.tensor([1.0, 0.95, 0.7])[:, None, None] * sun
    return img.clamp(0, 1)[None]


def encode(img: torch.Tensor) -> torch.Tensor:
    """Toy autoencoder: 4x average pool, scaled to about unit variance, padded to 16 channels."""
    z = F.avg_pool2d(img * 2 - 1, POOL) * 1.5
    return torch.cat([z, torch.zeros(z.shape[0], 13, *z.shape[-2:])], 1)


def decode(z: torch.Tensor) -> torch.Tensor:
    """The colour channels as an image at latent resolution (no upsampling, which would either
    add block edges or blend across the wrap seam and hide it)."""
    return ((z[:, :3] / 1.5 + 1) / 2).clamp(0, 1)


# ----------------------------------------------------------------------------------- model


def build_pipeline(seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from pano_core.dit360.pipeline import DiT360Pipeline

    torch.manual_seed(seed)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=48,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                guidance_embeds=False, axes_dims_rope=(8, 20, 20))
    sched = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                                            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
    flux = FluxPipeline(scheduler=sched, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=tr)
    return DiT360Pipeline(flux)


def config_for(spec: dict) -> dict:
    from pano360_training.config import load_config, set_value

    cfg = load_config("dit360_lora")
    for k, v in {"padding.pad": spec["pad"], "losses.cube.weight": spec.get("cube", 0.0),
                 "losses.yaw.weight": spec.get("yaw", 0.0), "losses.yaw.form": spec.get("form", "published"),
                 "losses.yaw.from_step": 0, "losses.cube.from_step": 0, "train.seed": 0}.items():
        set_value(cfg, k, v)
    return cfg


def train_and_sample(name: str, spec: dict, data: torch.Tensor, steps: int, batch: int, seeds: list[int],
                     sample_steps: int) -> dict:
    from pano360_training import losses as L
    from pano360_training.dit360 import _Batch, compute_loss
    from pano360_training.randomness import draw_sample, sample_generator
    from pano_core.dit360.pipeline import PromptEmbeds
    from pano_core.seams.metrics import seam_metrics

    cfg = config_for(spec)
    pipe = build_pipeline(0)
    lh, lw = data.shape[-2:]
    f = pipe.vae_scale_factor
    grid = pipe.grid(lw * f, lh * f, pad=spec["pad"])
    model = pipe.transformer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    img_ids = pipe.image_ids(grid, dtype=torch.float32)
    pe = torch.zeros(batch, 4, 32)
    pooled = torch.zeros(batch, 32)
    n = 0
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        xs, ns, sig, yaws = [], [], [], []
        for _ in range(batch):
            d = draw_sample(0, n, token_cols=grid.w, flip_p=0.5, yaw_roll=True, caption_dropout=0.0,
                            yaw_angles=(60.0, 180.0, 300.0))
            x0 = data[n % data.shape[0]]
            x0 = torch.flip(x0, dims=[-1]) if d.flip else x0  # the toy encoder is exactly flip-equivariant
            xs.append(L.roll_latent(x0, 2 * d.roll))
            ns.append(torch.randn(x0.shape, generator=sample_generator(0, n, "noise")))
            sig.append(d.u)
            yaws.append(d.yaw_angle)
            n += 1
        b = _Batch(x0=torch.stack(xs), noise=torch.stack(ns), sigma=torch.tensor(sig), prompt_embeds=pe, pooled=pooled,
                   mask=None, is_persp=torch.zeros(batch, dtype=torch.bool), epochs=[0] * batch, yaw_angles=yaws,
                   indices=list(range(n - batch, n)))
        loss, _ = compute_loss(cfg, model, pipe, grid, b, step, img_ids, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    train_s = time.perf_counter() - t0
    model.eval()
    embeds = PromptEmbeds(torch.zeros(1, 4, 32), torch.zeros(1, 32), torch.zeros(4, 3))
    metrics = []
    with torch.no_grad():
        for s in seeds:
            noise = pipe.prepare_latents(1, grid, torch.Generator().manual_seed(s), dtype=torch.float32)
            tokens = pipe.pad_tokens(noise, grid)
            ts, _ = pipe.timesteps(sample_steps, grid)
            tokens = pipe.denoise(tokens, grid, embeds, ts, None, img_ids=img_ids, progress=False)
            lat = pipe.unpack(pipe.crop_tokens(tokens, grid), grid)
            img = decode(lat)
            m = seam_metrics(img, layout="erp", band=2)
            metrics.append({k: m[k] for k in ("wrap_seam", "wrap_jump", "seam_ssim", "seam_sobel", "seam_jump",
                                               "pole_seam_jump")})
    out = {k: statistics.mean(x[k] for x in metrics) for k in metrics[0]}
    out.update(train_s=train_s, s_per_step=train_s / steps, final_loss=statistics.mean(losses[-20:]))
    print(f"{name:28s} " + " ".join(f"{k} {v:.4g}" for k, v in out.items()), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = torch.cat([encode(synthetic_panorama(i)) for i in range(args.images)])
    ref = [seam_ref(synthetic_panorama(1000 + i)) for i in range(args.samples)]
    real = {k: statistics.mean(r[k] for r in ref) for k in ref[0]}
    print(f"{'training images (reference)':28s} " + " ".join(f"{k} {v:.4g}" for k, v in real.items()), flush=True)
    results = {}
    for name, spec in CONFIGS.items():
        results[name] = train_and_sample(name, spec, data, args.steps, args.batch, list(range(args.samples)),
                                         args.sample_steps)
    table = render(results, real, args)
    print(table)
    if args.write:
        p = ROOT / "benchmarks" / "RESULTS.md"
        p.write_text(p.read_text().rstrip() + "\n\n" + table + "\n")
    return 0


def seam_ref(img: torch.Tensor) -> dict:
    """Metrics of a data panorama through the toy autoencoder (what a perfect model would give)."""
    from pano_core.seams.metrics import seam_metrics

    m = seam_metrics(decode(encode(img)), layout="erp", band=2)
    return {k: m[k] for k in ("wrap_seam", "wrap_jump", "seam_ssim", "seam_sobel", "seam_jump", "pole_seam_jump")}


def render(results: dict, real: dict, args) -> str:
    lines = [
        "## training ablation (toy DiT360, CPU)",
        "",
        f"`python benchmarks/bench_training_ablation.py --steps {args.steps} --batch {args.batch} --images "
        f"{args.images} --samples {args.samples}`: a {2 * H}x{H} synthetic 360° set, a small Flux "
        "(hidden 96, 2+2 blocks, random init, all weights trained) with the trainer's loss; "
        f"{args.samples} samples per configuration ({args.sample_steps} Euler steps, fixed seeds). "
        "wrap_seam: about 1 = seamless (lower is better); seam_jump / pole_seam_jump: mean step across "
        "the 12 / 8 polar cube edges (0..255, lower is better); seam_ssim: higher is better.",
        "",
        "| configuration | wrap_seam | wrap_jump | seam_ssim | seam_jump | pole_seam_jump | s/step | final loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| training images (reference) | {real['wrap_seam']:.3f} | {real['wrap_jump']:.2f} | {real['seam_ssim']:.3f} | "
        f"{real['seam_jump']:.2f} | {real['pole_seam_jump']:.2f} | | |",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['wrap_seam']:.3f} | {r['wrap_jump']:.2f} | {r['seam_ssim']:.3f} | {r['seam_jump']:.2f} | "
                     f"{r['pole_seam_jump']:.2f} | {r['s_per_step']:.3f} | {r['final_loss']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
