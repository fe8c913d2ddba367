"""The prepared set for the DiT360 trainer: the data plan (which item each global sample
index is), model loading, the latent/text caches and batch assembly."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pano_core.errors import PanoInputError
from pano_core.io import read_image

from .. import losses as L
from ..caches import LatentCache, TextCache, cache_dir, input_hash, progress_bar
from ..config import get
from ..prepare import read_manifest
from ..randomness import data_order, draw_sample, sample_generator

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
    from pano_core.diffusion.loading import resolve_dtype

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
    from pano_core.diffusion.prompts import add_prompt_prefix

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
    bar = progress_bar(len(items), "cache latents", progress)
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
    txt = TextCache.ensure(
        root, t_expect,
        ((_text_key(t), {"prompt_embeds": e.prompt_embeds[0], "pooled": e.pooled[0]})
         for t in texts for e in (_encode_text(pipe, t, msl),)),
        total=len(texts), desc="cache text", progress=progress,
    )
    summary["texts"] = txt.record.get("items")
    return summary


def _encode_text(pipe, text: str, max_sequence_length: int):
    with torch.no_grad():
        return pipe.encode_prompt(text, prompt_prefix=None, max_sequence_length=max_sequence_length)


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
class Batch:
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


def _sigma(cfg: dict, seed: int, index: int, pipe, grid) -> float:
    """The training timestep (sigma in 0..1) of global sample ``index``: the configured sampling,
    then the shift (``pano_core.diffusion.schedules.sample_sigmas``), drawn from (seed, index)."""
    from pano_core.diffusion.schedules import sample_sigmas, schedule_mu

    mode = get(cfg, "flow.timestep_sampling")
    if mode not in ("uniform", "logit_normal"):
        raise PanoInputError(f"flow.timestep_sampling: expected uniform or logit_normal, got {mode!r}")
    shift = get(cfg, "flow.shift")
    kw = {}
    if shift == "auto":
        kw["mu"] = schedule_mu(pipe.scheduler.config, grid.padded_tokens)
    elif shift not in (None, "none", 0):
        try:
            kw["shift"] = float(shift)
        except (TypeError, ValueError):
            raise PanoInputError(f"flow.shift: expected none, auto or a number, got {shift!r}") from None
    s = sample_sigmas(1, mode=mode, mean=float(get(cfg, "flow.logit_mean")), std=float(get(cfg, "flow.logit_std")),
                      generator=sample_generator(seed, index, "sigma"), **kw)
    return float(s[0])


def _make_batch(cfg: dict, src: _Source, plan: DataPlan, indices: list[int], pipe, grid, device,
                dtype: torch.dtype = torch.float32) -> Batch:
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
        sig.append(_sigma(cfg, seed, n, pipe, grid))
        pe, pooled = src.text("" if d.drop_caption else src.caption(it.kind, it.index))
        pes.append(pe)
        pools.append(pooled)
        persp.append(it.kind == "persp")
        epochs.append(it.epoch)
        yaws.append(d.yaw_angle)
    mask = None
    if any_mask:
        mask = torch.stack([m if m is not None else torch.ones(1, *xs[0].shape[-2:]) for m in masks])
    return Batch(
        x0=torch.stack(xs).float().to(device), noise=torch.stack(ns).to(device),
        sigma=torch.tensor(sig, dtype=torch.float32, device=device),
        prompt_embeds=torch.stack(pes).to(device=device, dtype=dtype),
        pooled=torch.stack(pools).to(device=device, dtype=dtype),
        mask=None if mask is None else mask.to(device), is_persp=torch.tensor(persp, device=device),
        epochs=epochs, yaw_angles=yaws, indices=list(indices),
    )
