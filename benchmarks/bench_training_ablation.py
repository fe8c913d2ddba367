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

A second table (``--table jopano``) does the same for JoPano (see :func:`jopano_table`): a tiny
Sana trained on the six cube faces of the same synthetic set, sampled ``independent``, ``sync``,
``adapter`` and ``adapter+sync``, seam metrics before and after cross-face blending, beside the
ordering of the paper's Table 3.

Run from the repository root:  python benchmarks/bench_training_ablation.py [--steps 300] [--write]
                               python benchmarks/bench_training_ablation.py --table jopano [--write]
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
    from pano360_training.dit360.data import Batch
    from pano360_training.dit360.step import compute_loss
    from pano360_training.randomness import draw_sample, sample_generator

    from pano_core.diffusion.schedules import sample_sigmas
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
            sig.append(float(sample_sigmas(1, mode="uniform", generator=sample_generator(0, n, "sigma"))[0]))
            yaws.append(d.yaw_angle)
            n += 1
        b = Batch(x0=torch.stack(xs), noise=torch.stack(ns), sigma=torch.tensor(sig), prompt_embeds=pe, pooled=pooled,
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
            tokens = grid.pad(noise)
            ts, _ = pipe.timesteps(sample_steps, grid)
            tokens = pipe.denoise(tokens, grid, embeds, ts, None, img_ids=img_ids, progress=False)
            lat = grid.unpack(grid.crop(tokens))
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
    ap.add_argument("--table", choices=("dit360", "jopano", "both"), default="dit360",
                    help="dit360: the DiT360 ablation (default); jopano: the JoPano modes (jopano_table); both")
    ap.add_argument("--jopano-base-steps", type=int, default=400, help="jopano: steps of the base (per-face) training")
    ap.add_argument("--jopano-adapter-steps", type=int, default=200, help="jopano: steps of each adapter training")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.table in ("jopano", "both"):
        table = jopano_table(args)
        print(table)
        if args.write:
            p = ROOT / "benchmarks" / "RESULTS.md"
            p.write_text(p.read_text().rstrip() + "\n\n" + table + "\n")
        if args.table == "jopano":
            return 0
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


# ----------------------------------------------------------------------------------- JoPano table

JOPANO_FACE = 64  # face pixels; the toy latent is 16 x 16 tokens per face (POOL 4)
JOPANO_MODES = ("independent", "sync", "adapter", "adapter+sync")
# JoPano's Table 3 (SUN360): Seam-SSIM / Seam-Sobel, w/o and w/ cross-face blending (CFB)
PAPER_TABLE3 = [("Noise", 0.004, 129.62), ("Ground Truth", 0.847, 11.16), ("DreamCube (training-free sync)", 0.725, 35.85),
                ("JoPano-T2P w/o CFB", 0.762, 39.69), ("JoPano-T2P w/ CFB", 0.831, 12.66),
                ("JoPano-V2P w/o CFB", 0.786, 41.16), ("JoPano-V2P w/ CFB", 0.861, 12.18)]


def face_latents(erp: torch.Tensor) -> torch.Tensor:
    """The toy autoencoder on cube faces: ``e2c`` then 4x average pool (3 colour channels + 1 zero
    channel = the tiny Sana's 4 latent channels)."""
    from pano_core.geometry import e2c

    z = F.avg_pool2d(e2c(erp, JOPANO_FACE) * 2 - 1, POOL) * 1.5
    return torch.cat([z, torch.zeros(z.shape[0], 1, *z.shape[-2:])], 1)


def build_sana(seed: int = 0):
    """A small Sana transformer (diffusers ``SanaTransformer2DModel``: width 64, 4 blocks, patch 1,
    random init) -- the base that the first stage trains on single faces."""
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    return SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=16, num_layers=4,
                                  num_cross_attention_heads=4, cross_attention_head_dim=16, cross_attention_dim=64,
                                  caption_channels=16, mlp_ratio=2.5, sample_size=JOPANO_FACE // POOL, patch_size=1,
                                  norm_elementwise_affine=False, norm_eps=1e-6)


def _jopano_batches(data: torch.Tensor, steps: int, batch: int, v2p: float, seed: int):
    """Batches of whole panoramas (6 faces each) for the trainer's loss: the trainer's own draws
    (``pano360_training.jopano.draw``: timestep, T2P/V2P switch with face F, quarter yaw) and noise
    from (seed, sample index); quarter yaws applied with the trainer's ``apply_quarter_yaw`` (the
    toy encoder is a pool, exactly rotation-equivariant, so turning U/D latents is exact here)."""
    from pano360_training import jopano as J
    from pano360_training.config import load_config, set_value
    from pano360_training.randomness import sample_generator

    cfg = load_config("jopano_adapter")
    set_value(cfg, "condition.v2p_probability", float(v2p))
    emb = torch.zeros(6 * batch, 4, 16)
    mask = torch.ones(6 * batch, 4, dtype=torch.long)
    n = 0
    for _ in range(steps):
        xs, ns, sig, cond, v = [], [], [], [], []
        for _ in range(batch):
            d = J.draw(cfg, seed, n)
            x0 = J.apply_quarter_yaw(data[n % data.shape[0]], d.quarter)
            xs.append(x0)
            ns.append(torch.randn(x0.shape, generator=sample_generator(seed, n, "noise")))
            sig.append(J.timestep(cfg, seed, n))
            c = torch.zeros(6, dtype=torch.bool)
            c[d.face] = d.v2p
            cond.append(c)
            v.append(d.v2p)
            n += 1
        yield J.Batch(x0=torch.cat(xs), noise=torch.cat(ns), sigma=torch.tensor(sig), cond=torch.cat(cond),
                      embeds=emb, mask=mask, v2p=torch.tensor(v), indices=list(range(n - batch, n)))


def _plain(transformer, **kw):
    return transformer(**kw)


def _mode(tr, adapters, mode: str):
    import contextlib

    from pano_core.jopano.adapter import adapters_attached
    from pano_core.jopano.sync import joint_face_sync

    stack = contextlib.ExitStack()
    if "adapter" in mode:
        stack.enter_context(adapters_attached(tr, adapters))
    if "sync" in mode:
        stack.enter_context(joint_face_sync(transformer=tr))
    return stack


def _train_jopano(tr, adapters, data, steps: int, batch: int, sync: bool, lr: float) -> tuple[float, float]:
    """Stage 1 (``adapters`` None): every weight of the base trained on single faces (independent
    T2P). Stage 2: the base frozen, only the adapters trained (condition switching 0.5, face F)."""
    from pano360_training import jopano as J

    from pano_core.jopano.adapter import detach_adapters
    from pano_core.jopano.sync import joint_face_sync

    params = list(tr.parameters()) if adapters is None else list(adapters.parameters())
    tr.requires_grad_(adapters is None)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model = _plain if adapters is None else adapters
    t0 = time.perf_counter()
    losses = []
    import contextlib

    for b in _jopano_batches(data, steps, batch, 0.0 if adapters is None else 0.5, seed=0 if adapters is None else 1):
        with joint_face_sync(transformer=tr) if sync else contextlib.nullcontext():
            loss, _ = J.compute_loss(model, tr, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    detach_adapters(tr)
    return (time.perf_counter() - t0) / steps, statistics.mean(losses[-20:])


@torch.no_grad()
def _sample_faces(tr, adapters, mode: str, seed: int, steps: int, given: torch.Tensor | None = None) -> torch.Tensor:
    """Euler sampling of one panorama's six faces (Sana 1.5's shift-3 flow schedule, no CFG); with
    ``given`` (1, 4, h, h) face F is the V2P condition: clean at its own timestep 0."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from pano360_training import jopano as J

    h = JOPANO_FACE // POOL
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(steps)
    x = torch.randn(6, 4, h, h, generator=torch.Generator().manual_seed(seed))
    if given is not None:
        x[0] = given[0]
    emb, mask = torch.zeros(6, 4, 16), torch.ones(6, 4, dtype=torch.long)
    with _mode(tr, adapters, mode):
        for i in range(steps):
            s = float(sched.sigmas[i])
            sig = torch.full([6], s)
            if given is not None:
                sig[0] = 0.0
            v = J.velocity(_plain, tr, x, sig, emb, mask)
            x = x + (float(sched.sigmas[i + 1]) - s) * v
            if given is not None:
                x[0] = given[0]
    return decode(x)


def _cube_metrics(faces: torch.Tensor) -> dict:
    from pano_core.seams.metrics import seam_metrics

    m = seam_metrics(faces.clamp(0, 1), layout="stack", band=2)
    return {k: float(m[k]) for k in ("seam_ssim", "seam_sobel", "seam_jump")}


def jopano_table(args) -> str:
    """Train the tiny Sana (stage 1: on single faces; stage 2: adapter, and adapter with sync on),
    sample every mode T2P and V2P with fixed seeds, and score the raw and blended cubes."""

    from pano_core.jopano.adapter import JointFaceAdapterSet
    from pano_core.seams.poisson import blend_cube_faces

    data = torch.stack([face_latents(synthetic_panorama(i, h=2 * JOPANO_FACE)) for i in range(args.images)])
    ref = [_cube_metrics(decode(face_latents(synthetic_panorama(1000 + i, h=2 * JOPANO_FACE)))) for i in range(args.samples)]
    gt = {k: statistics.mean(r[k] for r in ref) for k in ref[0]}
    noise = _cube_metrics(torch.rand(6, 3, JOPANO_FACE // POOL, JOPANO_FACE // POOL, generator=torch.Generator().manual_seed(0)))
    tr = build_sana(0)
    tr.train()
    base_s, base_loss = _train_jopano(tr, None, data, args.jopano_base_steps, args.batch, False, 1e-3)
    print(f"base (single faces): {base_s:.3f} s/step, final loss {base_loss:.4f}", flush=True)
    tr.requires_grad_(False)
    adapters, cost = {}, {}
    for name, sync in (("adapter", False), ("adapter+sync", True)):
        torch.manual_seed(1)
        a = JointFaceAdapterSet.for_transformer(tr)
        a.train()
        cost[name] = _train_jopano(tr, a, data, args.jopano_adapter_steps, args.batch, sync, 1e-3)
        print(f"{name}: {cost[name][0]:.3f} s/step, final loss {cost[name][1]:.4f}", flush=True)
        adapters[name] = a.eval()
    tr.eval()
    rows = {}
    for task in ("T2P", "V2P"):
        for mode in JOPANO_MODES:
            raw, blended = [], []
            for s in range(args.samples):
                given = data[s % data.shape[0], :1] if task == "V2P" else None
                faces = _sample_faces(tr, adapters.get(mode), mode, 100 + s, args.sample_steps, given)
                raw.append(_cube_metrics(faces))
                keep = ["F"] if task == "V2P" else None
                blended.append(_cube_metrics(blend_cube_faces(faces, method="exact", keep=keep).clamp(0, 1)))
            rows[(task, mode)] = ({k: statistics.mean(r[k] for r in raw) for k in raw[0]},
                                  {k: statistics.mean(r[k] for r in blended) for k in blended[0]})
            r, b = rows[(task, mode)]
            print(f"{task} {mode:13s} raw {r} blended {b}", flush=True)
    return render_jopano(rows, gt, noise, base_s, cost, args)


def render_jopano(rows: dict, gt: dict, noise: dict, base_s: float, cost: dict, args) -> str:
    lines = [
        "## training ablation (toy JoPano, CPU)",
        "",
        f"`python benchmarks/bench_training_ablation.py --table jopano --jopano-base-steps {args.jopano_base_steps} "
        f"--jopano-adapter-steps {args.jopano_adapter_steps} --batch {args.batch} --images {args.images} --samples "
        f"{args.samples} --sample-steps {args.sample_steps} --threads {args.threads}`: the same synthetic 360° set as six "
        f"{JOPANO_FACE} px cube faces, a toy autoencoder (4x average pool: {JOPANO_FACE // POOL}x{JOPANO_FACE // POOL} "
        "latent tokens per face, metrics on the generated colour channels at that resolution). A small Sana "
        "(`SanaTransformer2DModel`, width 64, 4 blocks, patch 1, random init) is first trained on **single faces** "
        f"(all weights, T2P, {base_s:.3f} s/step) -- the stand-in for Sana's natural-image pretraining; then, with it "
        "frozen, a Joint-Face adapter set (default width = half the model's) is trained with the trainer's loss "
        "(`pano360_training.jopano.compute_loss`: condition switching 0.5/0.5 with face F, quarter-yaw augmentation), "
        "once plain (`adapter`) and once with the joint-face sync on while it learns (`adapter+sync`, "
        f"{cost['adapter'][0]:.3f} and {cost['adapter+sync'][0]:.3f} s/step). Samples: {args.samples} fixed seeds per "
        f"mode, {args.sample_steps} Euler steps (shift 3, no CFG); V2P gives face F of a training panorama. "
        "Seam-SSIM (band 2 px; higher is better), Seam-Sobel and seam jump (mean step across the 12 cube edges, 0..255; "
        "lower is better), raw and after the exact cross-face blend (CFB).",
        "",
        "| task | mode | Seam-SSIM raw | Seam-Sobel raw | seam jump raw | Seam-SSIM CFB | Seam-Sobel CFB | seam jump CFB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| | noise | {noise['seam_ssim']:.3f} | {noise['seam_sobel']:.2f} | {noise['seam_jump']:.2f} | | | |",
        f"| | ground truth (data faces) | {gt['seam_ssim']:.3f} | {gt['seam_sobel']:.2f} | {gt['seam_jump']:.2f} | | | |",
    ]
    for (task, mode), (r, b) in rows.items():
        lines.append(f"| {task} | {mode} | {r['seam_ssim']:.3f} | {r['seam_sobel']:.2f} | {r['seam_jump']:.2f} | "
                     f"{b['seam_ssim']:.3f} | {b['seam_sobel']:.2f} | {b['seam_jump']:.2f} |")
    lines += ["", "The paper's Table 3 (SUN360, 512 px faces; Seam-SSIM / Seam-Sobel): "
              + "; ".join(f"{n} {a:.3f} / {b:.2f}" for n, a, b in PAPER_TABLE3) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
