"""``pano360-train dit360``: DiT360's hybrid LoRA training of FLUX.1 (accelerate, 1..N GPUs).

One optimizer step, as DiT360's official code (``train.py``, ``src/dit360.py``) does it:

1. each process takes its samples of the global sample stream (sample ``n`` of an epoch is
   item ``data_order(seed, epoch)[n]``; process ``r`` of ``R`` with batch ``B`` takes the
   samples ``k*R*B + r*B + j``), and every random draw of a sample (flip, yaw roll, caption
   dropout, timestep, noise, yaw-loss angle) comes from ``(seed, sample index)``;
2. the latent is the cached **circular** VAE encode (flip = the cached encode of the flipped
   image), rolled by whole token columns;
3. flow matching: ``x_t = (1 - s) x0 + s n`` with ``s`` from the configured timestep sampling
   and shift, target ``n - x0``;
4. the packed tokens are circularly padded (``padding.pad`` token columns per side, wrapped
   position ids: the DiT360 token grid), the transformer predicts on the padded tokens, the
   prediction is cropped and unpacked before the loss;
5. loss = base MSE + yaw loss (published or equivariance form) + cube loss for panoramas (each
   from its epoch/step), perspective masked MSE for the perspective-guidance canvases
   (``training/losses.py``).

Only the LoRA is trained (PEFT on ``attn.to_q/to_k/to_v/to_out.0``). Checkpoints (every N,
keep K, atomic), fixed-seed samples with seam metrics, a loss log and plot, TensorBoard events,
and at the end ``adapter_model.safetensors`` + ``adapter_config.json`` (DiT360's PEFT format with
``transformer.`` keys and alpha folded into ``lora_B``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pano_core.errors import PanoInputError
from pano_core.io import read_image

from . import losses as L
from .caches import LatentCache, TextCache, cache_dir, input_hash
from .checkpoints import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from .config import get, load_config, save_config
from .lora_export import add_lora, export_lora, lora_parameters, lora_state_dict
from .prepare import read_manifest
from .randomness import data_order, derive_seed, draw_sample, sample_generator
from .samples import LossLog, append_metrics, plot_losses, sample_metrics, write_sample_grid

__all__ = ["TRAINER", "train", "build_caches", "sample_from_run", "render_samples", "DataPlan"]

TRAINER = "dit360"
log = logging.getLogger("pano360")


# ----------------------------------------------------------------------------------- data plan


@dataclass(frozen=True)
class PlanItem:
    kind: str  # "pano" | "persp"
    index: int
    epoch: int


class DataPlan:
    """Which item each global sample index is: panoramas every epoch, plus (from
    ``perspective_from_epoch``) a subset of ``N * fraction^(epoch - 1)`` perspective canvases
    (DiT360's schedule), each epoch in its own seeded order."""

    def __init__(self, n_pano: int, n_persp: int, seed: int, persp_from_epoch: int, persp_fraction: float):
        if n_pano < 1:
            raise PanoInputError("data: the prepared set holds no panoramas")
        self.n_pano, self.n_persp, self.seed = n_pano, n_persp, int(seed)
        self.persp_from_epoch, self.persp_fraction = int(persp_from_epoch), float(persp_fraction)
        self._starts = [0]

    def persp_count(self, epoch: int) -> int:
        if self.n_persp == 0 or epoch < self.persp_from_epoch:
            return 0
        return max(1, min(self.n_persp, round(self.n_persp * self.persp_fraction ** max(epoch - 1, 0))))

    def epoch_size(self, epoch: int) -> int:
        return self.n_pano + self.persp_count(epoch)

    def epoch_start(self, epoch: int) -> int:
        while len(self._starts) <= epoch:
            e = len(self._starts) - 1
            self._starts.append(self._starts[-1] + self.epoch_size(e))
        return self._starts[epoch]

    def samples_in(self, epochs: int) -> int:
        return self.epoch_start(epochs)

    def locate(self, n: int) -> PlanItem:
        epoch = 0
        while self.epoch_start(epoch + 1) <= n:
            epoch += 1
        pos = n - self.epoch_start(epoch)
        k = self.persp_count(epoch)
        order = data_order(self.seed, epoch, self.n_pano + k)
        slot = int(order[pos])
        if slot < self.n_pano:
            return PlanItem("pano", slot, epoch)
        subset = data_order(self.seed, epoch, self.n_persp, purpose="perspective-subset")[:k]
        return PlanItem("persp", int(subset[slot - self.n_pano]), epoch)


# ----------------------------------------------------------------------------------- set-up


def _device_dtype(cfg: dict, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    from pano_core.dit360.loading import resolve_dtype

    dt = resolve_dtype(get(cfg, "model.dtype"), device)
    vdt = resolve_dtype(get(cfg, "model.vae_dtype"), device)
    if device.type == "cpu" and dt in (torch.float16, torch.bfloat16):
        log.info("model.dtype %s on the CPU: using fp32", get(cfg, "model.dtype"))
        dt = torch.float32
    if device.type == "cpu":
        vdt = torch.float32
    return dt, vdt


def load_pipeline(cfg: dict, device: torch.device, model: str | None = None):
    """FLUX.1 through ``DiT360Pipeline`` on ``device`` (weights in ``model.dtype``, VAE in
    ``model.vae_dtype``); the text encoders stay on ``device`` until :func:`_park_text_encoders`."""
    from pano_core.dit360.pipeline import DiT360Pipeline

    dt, vdt = _device_dtype(cfg, device)
    pipe = DiT360Pipeline.from_pretrained(model or get(cfg, "model.path"), device="cpu", dtype=dt,
                                          revision=get(cfg, "model.revision"))
    pipe.flux.set_progress_bar_config(disable=True)
    pipe.vae.to(device=device, dtype=vdt)
    for m in (pipe.flux.text_encoder, pipe.flux.text_encoder_2, pipe.transformer):
        if m is not None:
            m.to(device)
    return pipe


def _park_text_encoders(pipe) -> None:
    for m in (pipe.flux.text_encoder, pipe.flux.text_encoder_2):
        if m is not None:
            m.to("cpu")


def _check_resolution(cfg: dict, manifest: dict, folder: str) -> int:
    res = int(get(cfg, "data.resolution"))
    if int(manifest["resolution"]) != res:
        raise PanoInputError(
            f"data: {folder} was prepared at {manifest['width']}x{manifest['resolution']}, but training is at "
            f"{2 * res}x{res}; run prepare again with --resolution {res} or train with --resolution {manifest['resolution']}"
        )
    if res % 16:
        raise PanoInputError(f"resolution: expected a multiple of 16 for Flux, got {res}")
    return res


def _caption_text(cfg: dict, caption: str) -> str:
    from pano_core.dit360.pipeline import add_prompt_prefix

    trigger = get(cfg, "data.trigger") or None
    return add_prompt_prefix(caption, trigger)[0]


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


# ----------------------------------------------------------------------------------- caches


def _item_image(folder: Path, it: dict, use_refined: bool) -> Path:
    rel = it.get("refined") if use_refined and it.get("refined") else it["image"]
    return folder / rel


def _encode(pipe, grid, img: torch.Tensor, pad: int) -> torch.Tensor:
    """Circular VAE encode of (1, 3, H, W) -> (16, H/8, W/8) latent in transformer space."""
    with torch.no_grad():
        tok = pipe.encode_image(img, circular_encode=pad > 0, encode_pad=max(pad, 1))
        return pipe.unpack(tok, grid)[0].float()


def _roll_error(pipe, grid, img: torch.Tensor, lat: torch.Tensor, pad: int) -> dict:
    """How far the latent of the image rolled by a quarter turn (whole latent columns) is from
    the rolled latent, for this encode and for a plain one (relative RMS)."""
    cols = max(1, lat.shape[-1] // 4)
    f = pipe.vae_scale_factor
    rolled = torch.roll(img, -cols * f, dims=-1)
    out = {}
    for name, p in (("circular", pad), ("plain", 0)):
        a = _encode(pipe, grid, img, p) if p != pad else lat
        b = _encode(pipe, grid, rolled, p)
        out[name] = float((b - L.roll_latent(a, cols)).pow(2).mean().sqrt() / a.pow(2).mean().sqrt().clamp_min(1e-12))
    return out


def build_caches(cfg: dict, progress: bool = True, pipe=None, device: torch.device | None = None,
                 prompts: list[str] | None = None) -> dict:
    """Build (or reuse) the latent and text caches of the prepared set ``data.dir`` for
    ``model.path``; returns a summary. ``prompts``: extra texts to encode (sample prompts)."""
    folder = Path(get(cfg, "data.dir"))
    manifest = read_manifest(folder)
    res = _check_resolution(cfg, manifest, str(folder))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pipe is None:
        pipe = load_pipeline(cfg, device)
    model = str(get(cfg, "model.path"))
    grid = pipe.grid(2 * res, res, pad=0)
    use_refined = bool(get(cfg, "data.use_refined"))
    pad = int(get(cfg, "data.encode_pad"))
    items = list(manifest["items"]) + list(manifest.get("perspective") or [])
    keys = [it["name"] for it in manifest["items"]] + ["persp:" + it["name"] for it in manifest.get("perspective") or []]
    files = [str(_item_image(folder, it, use_refined).relative_to(folder)) for it in items]
    root = cache_dir(folder, TRAINER, model, res)
    expect = {
        "version": 1, "model": model, "resolution": res, "encode_pad": pad, "use_refined": use_refined,
        "input": input_hash(folder, manifest, files, {"pad": pad}),
        "latent_channels": int(pipe.latent_channels), "vae_scale_factor": int(pipe.vae_scale_factor),
    }
    lat = LatentCache.open(root, expect)
    summary: dict = {"folder": str(root)}
    bar = _bar(len(items), "cache latents", progress)
    if lat is None:
        if root.exists() and (root / "latents.json").is_file():
            log.info("latent cache %s does not match this model/size/input: rebuilding", root)
        errors = {}

        def gen():
            for key, rel in zip(keys, files):
                img = read_image(folder / rel, name="data")[:, :3]
                a = _encode(pipe, grid, img, pad)
                b = _encode(pipe, grid, torch.flip(img, dims=[-1]), pad)
                if not errors:
                    errors.update(_roll_error(pipe, grid, img, a, pad))
                    errors["flip"] = float((torch.flip(a, dims=[-1]) - b).pow(2).mean().sqrt()
                                           / a.pow(2).mean().sqrt().clamp_min(1e-12))
                yield key, {"latent": a, "flip": b}

        rec = dict(expect)
        lat = LatentCache.write(root, rec, gen(), progress=bar.update)
        lat.record.update(roll_error=errors.get("circular"), roll_error_plain=errors.get("plain"),
                          flip_error=errors.get("flip"))
        (root / "latents.json").write_text(json.dumps(lat.record, indent=1))
        log.info("latent cache: roll error %.3g (circular encode) vs %.3g (plain encode); flip error %.3g",
                 errors.get("circular", float("nan")), errors.get("plain", float("nan")), errors.get("flip", float("nan")))
    else:
        bar.update(len(items))
    bar.close()
    C = lat.get(keys[0], "latent").shape[0]
    if C != pipe.latent_channels:
        raise PanoInputError(f"data: the cache {root} was built for another model ({C} latent channels); delete it")
    summary.update(latents=lat.record.get("items"), roll_error=lat.record.get("roll_error"),
                   roll_error_plain=lat.record.get("roll_error_plain"), flip_error=lat.record.get("flip_error"))

    texts = sorted({_caption_text(cfg, (folder / it["caption"]).read_text(encoding="utf-8").strip()) for it in items})
    texts = sorted(set(texts) | {""} | set(prompts or []))
    msl = int(get(cfg, "data.max_sequence_length"))
    t_expect = {"version": 1, "model": model, "max_sequence_length": msl,
                "texts": hashlib.sha1("\n".join(texts).encode()).hexdigest()}
    txt = TextCache.open(root, t_expect)
    if txt is None:
        tbar = _bar(len(texts), "cache text", progress)

        def tgen():
            for t in texts:
                e = _encode_text(pipe, t, msl)
                yield _text_key(t), {"prompt_embeds": e.prompt_embeds[0], "pooled": e.pooled[0]}

        txt = TextCache.write(root, t_expect, tgen(), progress=tbar.update)
        tbar.close()
    summary["texts"] = txt.record.get("items")
    return summary


def _encode_text(pipe, text: str, max_sequence_length: int):
    with torch.no_grad():
        return pipe.encode_prompt(text, prompt_prefix=None, max_sequence_length=max_sequence_length)


class _Bar:
    def __init__(self, bar=None):
        self.bar = bar

    def update(self, n: int = 1):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _bar(total: int, desc: str, enabled: bool) -> _Bar:
    if not enabled:
        return _Bar()
    from tqdm.auto import tqdm

    return _Bar(tqdm(total=total, desc=desc, unit="it"))


# ----------------------------------------------------------------------------------- batches


class _Source:
    """Latents, masks and text embeddings of the prepared set (from the caches or encoded live)."""

    def __init__(self, cfg: dict, pipe, grid, device: torch.device, cache_root: Path | None):
        self.cfg, self.pipe, self.grid, self.device = cfg, pipe, grid, device
        self.folder = Path(get(cfg, "data.dir"))
        self.manifest = read_manifest(self.folder)
        self.pano = list(self.manifest["items"])
        self.persp = list(self.manifest.get("perspective") or []) if get(cfg, "data.perspective") else []
        self.use_refined = bool(get(cfg, "data.use_refined"))
        self.encode_pad = int(get(cfg, "data.encode_pad"))
        self.msl = int(get(cfg, "data.max_sequence_length"))
        self.latents = LatentCache(cache_root, json.loads((cache_root / "latents.json").read_text())) if cache_root else None
        self.texts = TextCache(cache_root, json.loads((cache_root / "text.json").read_text())) if cache_root else None
        self._captions: dict[tuple[str, int], str] = {}
        self._masks: dict[tuple[str, int, bool], torch.Tensor | None] = {}

    def item(self, kind: str, index: int) -> dict:
        return self.pano[index] if kind == "pano" else self.persp[index]

    def caption(self, kind: str, index: int) -> str:
        key = (kind, index)
        if key not in self._captions:
            raw = (self.folder / self.item(kind, index)["caption"]).read_text(encoding="utf-8").strip()
            self._captions[key] = _caption_text(self.cfg, raw)
        return self._captions[key]

    def latent(self, kind: str, index: int, flip: bool) -> torch.Tensor:
        it = self.item(kind, index)
        if self.latents is not None:
            key = it["name"] if kind == "pano" else "persp:" + it["name"]
            return self.latents.get(key, "flip" if flip else "latent")
        img = read_image(_item_image(self.folder, it, self.use_refined), name="data")[:, :3]
        if flip:
            img = torch.flip(img, dims=[-1])
        return _encode(self.pipe, self.grid, img, self.encode_pad)

    def mask(self, kind: str, index: int, flip: bool) -> torch.Tensor | None:
        key = (kind, index, flip)
        if key not in self._masks:
            it = self.item(kind, index)
            m = None
            if it.get("mask"):
                px = read_image(self.folder / it["mask"], name="mask")[:, :1]
                if flip:
                    px = torch.flip(px, dims=[-1])
                m = L.latent_mask(px, (self.grid.latent_h, self.grid.latent_w))[0]
            self._masks[key] = m
        return self._masks[key]

    def text(self, caption: str):
        if self.texts is not None:
            k = _text_key(caption)
            return self.texts.get(k, "prompt_embeds"), self.texts.get(k, "pooled")
        e = _encode_text(self.pipe, caption, self.msl)
        return e.prompt_embeds[0], e.pooled[0]


@dataclass
class _Batch:
    x0: torch.Tensor  # (B, 16, lh, lw)
    noise: torch.Tensor
    sigma: torch.Tensor  # (B,)
    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor | None  # (B, 1, lh, lw) supervision / coverage (ones where none)
    is_persp: torch.Tensor  # (B,) bool
    epochs: list[int]
    yaw_angles: list[float]
    indices: list[int]


def _sigma(cfg: dict, u: float, pipe, grid) -> float:
    """The timestep (sigma in 0..1) of a uniform draw ``u``: sampling, then the shift."""
    mode = get(cfg, "flow.timestep_sampling")
    u = min(max(u, 1e-6), 1 - 1e-6)
    if mode == "uniform":
        s = u
    elif mode == "logit_normal":
        z = get(cfg, "flow.logit_mean") + get(cfg, "flow.logit_std") * math.sqrt(2) * torch.erfinv(
            torch.tensor(2 * u - 1, dtype=torch.float64)).item()
        s = 1 / (1 + math.exp(-z))
    else:
        raise PanoInputError(f"flow.timestep_sampling: expected uniform or logit_normal, got {mode!r}")
    shift = get(cfg, "flow.shift")
    if shift in (None, "none", 0):
        return s
    if shift == "auto":
        from pano_core.dit360.pipeline import schedule_mu

        mu = schedule_mu(pipe.scheduler.config, grid.padded_tokens)
        return float(pipe.scheduler.time_shift(mu, 1.0, torch.tensor(s, dtype=torch.float64)))
    try:
        k = float(shift)
    except (TypeError, ValueError):
        raise PanoInputError(f"flow.shift: expected none, auto or a number, got {shift!r}") from None
    return k * s / (1 + (k - 1) * s)


def _make_batch(cfg: dict, src: _Source, plan: DataPlan, indices: list[int], pipe, grid, device,
                dtype: torch.dtype = torch.float32) -> _Batch:
    seed = int(get(cfg, "train.seed"))
    angles = tuple(get(cfg, "losses.yaw.angles") or ())
    xs, ns, sig, pes, pools, masks, persp, epochs, yaws = [], [], [], [], [], [], [], [], []
    any_mask = False
    for n in indices:
        it = plan.locate(n)
        d = draw_sample(seed, n, token_cols=grid.w, flip_p=float(get(cfg, "data.flip")),
                        yaw_roll=bool(get(cfg, "data.yaw_roll")), caption_dropout=float(get(cfg, "data.caption_dropout")),
                        yaw_angles=angles)
        cols = 2 * d.roll  # whole token columns = 2 latent columns
        x0 = L.roll_latent(src.latent(it.kind, it.index, d.flip), cols)
        m = src.mask(it.kind, it.index, d.flip)
        if m is not None:
            any_mask = True
            m = L.roll_latent(m, cols)
        masks.append(m)
        xs.append(x0)
        ns.append(torch.randn(x0.shape, generator=sample_generator(seed, n, "noise")))
        sig.append(_sigma(cfg, d.u, pipe, grid))
        pe, pooled = src.text("" if d.drop_caption else src.caption(it.kind, it.index))
        pes.append(pe)
        pools.append(pooled)
        persp.append(it.kind == "persp")
        epochs.append(it.epoch)
        yaws.append(d.yaw_angle)
    mask = None
    if any_mask:
        mask = torch.stack([m if m is not None else torch.ones(1, *xs[0].shape[-2:]) for m in masks])
    return _Batch(
        x0=torch.stack(xs).float().to(device), noise=torch.stack(ns).to(device),
        sigma=torch.tensor(sig, dtype=torch.float32, device=device),
        prompt_embeds=torch.stack(pes).to(device=device, dtype=dtype),
        pooled=torch.stack(pools).to(device=device, dtype=dtype),
        mask=None if mask is None else mask.to(device), is_persp=torch.tensor(persp, device=device),
        epochs=epochs, yaw_angles=yaws, indices=list(indices),
    )


# ----------------------------------------------------------------------------------- the model call


def _velocity(model, pipe, grid, latents: torch.Tensor, sigma: torch.Tensor, prompt_embeds, pooled, img_ids, guidance):
    """Velocity on circularly padded tokens, cropped and unpacked: (B, 16, lh, lw) -> same."""
    tokens = pipe.pad_tokens(pipe.pack(latents), grid)
    dt = prompt_embeds.dtype
    out = model(
        hidden_states=tokens.to(dt),
        timestep=sigma.to(dt),
        guidance=guidance,
        pooled_projections=pooled,
        encoder_hidden_states=prompt_embeds,
        txt_ids=torch.zeros(prompt_embeds.shape[1], 3, device=tokens.device, dtype=img_ids.dtype),
        img_ids=img_ids,
        return_dict=False,
    )[0]
    return pipe.unpack(pipe.crop_tokens(out, grid), grid).float()


def _active(cfg: dict, term: str, step: int, epoch: int) -> bool:
    if float(get(cfg, f"losses.{term}.weight")) == 0.0:
        return False
    fs = get(cfg, f"losses.{term}.from_step")
    if fs is not None:
        return step >= int(fs)
    return epoch >= int(get(cfg, f"losses.{term}.from_epoch"))


LOSS_TERMS = ("base", "yaw", "cube", "perspective")


def compute_loss(cfg: dict, model, pipe, grid, b: _Batch, step: int, img_ids, guidance) -> tuple[torch.Tensor, dict]:
    """The total loss of a batch (mean over its samples) and each term's mean over the samples
    it applies to (0 when none; always the same keys, for the all-reduce of the logs)."""
    x_t = L.noisy_latent(b.x0, b.noise, b.sigma)
    target = L.flow_target(b.x0, b.noise)
    nb = x_t.shape[0]
    pano = (~b.is_persp).float()
    persp = b.is_persp.float()
    yaw_on = torch.tensor([_active(cfg, "yaw", step, e) for e in b.epochs], device=x_t.device).float() * pano
    cube_on = torch.tensor([_active(cfg, "cube", step, e) for e in b.epochs], device=x_t.device).float() * pano
    form = get(cfg, "losses.yaw.form")
    if form not in ("published", "equivariance"):
        raise PanoInputError(f"losses.yaw.form: expected published or equivariance, got {form!r}")
    equi = bool(yaw_on.any()) and form == "equivariance"
    g = guidance[:nb] if guidance is not None else None
    if equi:
        # one model call on [x_t, R x_t] (a second forward through a DDP model would be unsafe)
        cols = torch.tensor([2 * (round(a * grid.w / 360.0) % grid.w) for a in b.yaw_angles])
        rolled = torch.cat([L.roll_latent(x_t[i : i + 1], int(c)) for i, c in enumerate(cols)])
        both = _velocity(model, pipe, grid, torch.cat([x_t, rolled]), torch.cat([b.sigma, b.sigma]),
                         torch.cat([b.prompt_embeds] * 2), torch.cat([b.pooled] * 2), img_ids,
                         None if g is None else torch.cat([g, g]))
        pred, pred_rolled = both[:nb], both[nb:]
    else:
        pred = _velocity(model, pipe, grid, x_t, b.sigma, b.prompt_embeds, b.pooled, img_ids, g)
    zero = torch.zeros(nb, device=x_t.device)
    terms = {k: zero for k in LOSS_TERMS}
    base = L.base_loss(pred, target, b.mask, reduction="none")
    total = float(get(cfg, "losses.base")) * base * pano
    terms["base"] = base
    if yaw_on.any():
        if equi:
            # the model was already evaluated on the rolled input (R x_t) above
            yaw = L.yaw_loss_equivariance(lambda z: pred_rolled, x_t, target, cols, mask=b.mask, reduction="none")
        else:
            yaw = L.yaw_loss_published(pred, target, torch.tensor(b.yaw_angles), mask=b.mask, reduction="none")
        total = total + float(get(cfg, "losses.yaw.weight")) * yaw * yaw_on
        terms["yaw"] = yaw
    if cube_on.any():
        cube = L.cube_loss(pred, target, mask=b.mask, reduction="none")
        total = total + float(get(cfg, "losses.cube.weight")) * cube * cube_on
        terms["cube"] = cube
    if persp.any():
        cov = b.mask if b.mask is not None else torch.ones_like(pred[:, :1])
        pl = L.perspective_loss(pred, target, cov, reduction="none")
        total = total + float(get(cfg, "losses.perspective.weight")) * pl * persp
        terms["perspective"] = pl
    on = {"base": pano, "yaw": yaw_on, "cube": cube_on, "perspective": persp}
    logs = {k: (terms[k].detach() * on[k]).sum() / on[k].sum().clamp_min(1) for k in LOSS_TERMS}
    return total.sum() / nb, logs


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
            tokens = pipe.pad_tokens(noise, grid)
            ts, _ = pipe.timesteps(int(steps), grid)
            g = torch.full([1], float(guidance), device=dev) if pipe.transformer.config.guidance_embeds else None
            tokens = pipe.denoise(tokens, grid, e, ts, g, img_ids=pipe.image_ids(grid, dtype=e.text_ids.dtype),
                                  progress=False)
            lat = pipe.unpack(pipe.crop_tokens(tokens, grid), grid)
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
        from .memory import quantize_linear_fp8_

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
    bar = _bar(len(lines), "sample", progress)
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
