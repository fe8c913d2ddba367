"""``pano360-train jopano``: train the Joint-Face Adapter of JoPano on a frozen Sana (accelerate, 1..N GPUs).

One optimizer step (JoPano, section 3.2, with our documented choices where the paper is silent):

1. each process takes its samples of the global sample stream exactly as the DiT360 trainer does
   (sample ``n`` of an epoch is item ``data_order(seed, epoch)[n]``; process ``r`` of ``R`` with
   batch ``B`` takes ``k*R*B + r*B + j``); every random draw of a sample (timestep, noise,
   T2P/V2P switch, condition face, quarter-turn yaw, caption dropout, small yaw) comes from
   ``(seed, sample index)``;
2. the panorama is its six cube faces F R B L U D (``e2c``, ``data.face_size`` px), as DC-AE
   latents from the cache (or encoded live with ``data.cache: false``);
3. **augmentation agreeing with the cache**: a yaw by ``k`` quarter turns permutes the four side
   faces and turns U and D in plane. The side faces of the turned panorama are exactly the side
   faces of the original (the cube's face grids map onto each other), so their cached latents
   are simply permuted. A turned DC-AE latent is *not* the latent of the turned image (the
   encoder's convolutions are not rotation-equivariant; ``ud_rotation_error`` in the cache record
   measures by how much), so the cache holds U and D encoded in all four in-plane rotations
   (``rot1..rot3``) and the trainer picks the right one: the augmented latents are exactly the
   latents of the augmented faces. A small random yaw (any whole ERP column,
   ``data.random_yaw``) resamples every face, so it needs ``data.cache: false``;
4. rectified flow on the faces: ``x_t = (1 - s) x0 + s n``, target ``n - x0``, one ``s`` per
   panorama (timestep sampling and shift from ``flow``); **condition switching** per sample:
   T2P with probability ``1 - condition.v2p_probability`` (all six faces noised, loss on six) or
   V2P (the condition face -- ``condition.face``: ``F`` as in the paper, or ``random`` -- enters
   clean at **its own timestep 0**, the mechanism :class:`~pano_core.jopano.JoPanoPipeline` samples
   with, and the loss is taken on the other five);
5. the frozen Sana transformer runs with the adapter set attached (the set is the only trained
   module; ``train.sync: true`` keeps the training-free joint-face sync on while it learns).

The adapters' output projections start at zero, so step 0 is exactly the base model. Checkpoints
(every N, keep K, atomic; ``--resume`` exact), fixed-seed T2P and V2P samples (ERP + faces, seam
metrics of the raw and blended cubes), a loss log and plot, TensorBoard events, and at the end
``RUN/jopano_adapter.safetensors`` in the format :func:`pano_core.jopano.load_adapter_set`,
``JoPanoPipeline``, ``pano360 jopano --adapter`` and the ComfyUI Joint-Face Adapter Loader read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pano_core.diffusion.schedules import add_noise, sample_sigmas, velocity_target
from pano_core.errors import PanoInputError
from pano_core.geometry import FACE_NAMES, e2c
from pano_core.io import read_image

from .caches import LatentCache, TextCache, cache_dir, input_hash, progress_bar
from .checkpoints import load_checkpoint, resolve_resume, save_checkpoint
from .config import get, save_config
from .dit360.data import DataPlan
from .loop import (
    LoopState,
    check_run_folder,
    flat_config,
    make_accelerator,
    make_lr_schedule,
    make_optimizer,
    run_steps,
)
from .prepare import read_manifest
from .randomness import derive_seed, sample_generator
from .samples import LossLog, append_metrics, plot_losses, write_sample_grid

__all__ = ["TRAINER", "ADAPTER_FILE", "train", "build_caches", "quarter_yaw_map", "apply_quarter_yaw",
           "compute_loss", "load_pipeline", "new_adapter_set", "sample_from_run", "is_jopano_run"]

TRAINER = "jopano"
ADAPTER_FILE = "jopano_adapter.safetensors"
LOSS_TERMS = ("t2p", "v2p")
log = logging.getLogger("pano360")


# ----------------------------------------------------------------------------------- quarter turns


@functools.lru_cache(maxsize=4)
def quarter_yaw_map(k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """How a yaw by ``k`` quarter turns (``roll_erp(erp, 90 k)``) acts on the six faces:
    ``(source, rot)`` with face ``t`` of the turned panorama = ``rot90(face[source[t]], rot[t])``.

    Derived from :func:`pano_core.geometry.e2c` itself (a random panorama, rolled by whole
    quarters, matched face by face), so it cannot disagree with the faces the data step makes.
    """
    k = int(k) % 4
    g = torch.Generator().manual_seed(1234)
    erp = torch.rand(1, 3, 16, 32, generator=g, dtype=torch.float32)
    faces = e2c(erp, 8)
    turned = e2c(torch.roll(erp, -8 * k, dims=-1), 8)
    src, rot = [], []
    for t in range(6):
        errs = {(s, r): float((torch.rot90(faces[s], r, dims=(-2, -1)) - turned[t]).abs().max())
                for s in range(6) for r in range(4)}
        (s, r), e = min(errs.items(), key=lambda kv: kv[1])
        if e > 1e-4:  # pragma: no cover - would mean e2c's faces are not a cube
            raise RuntimeError(f"quarter_yaw_map: face {FACE_NAMES[t]} of a {90 * k} degree yaw matches no face ({e})")
        src.append(s)
        rot.append(r)
    return tuple(src), tuple(rot)


def apply_quarter_yaw(faces: torch.Tensor, k: int, rotated: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """The six faces (6, C, S, S) -- images or latents -- of the panorama turned by ``k`` quarters.

    ``rotated``: ``{r: (2, C, S, S)}`` the U and D faces turned in plane by ``r`` quarters
    *before* encoding (the cache's ``rot1..rot3``): used for U and D instead of turning the
    latent, which would not be the latent of the turned image. Without it, U and D are turned
    with ``torch.rot90`` (exact for images).
    """
    src, rot = quarter_yaw_map(k)
    out = []
    for t in range(6):
        s, r = src[t], rot[t]
        if s >= 4 and r and rotated is not None:
            out.append(rotated[r][s - 4])
        else:
            out.append(torch.rot90(faces[s], r, dims=(-2, -1)) if r else faces[s])
    return torch.stack(out)


# ----------------------------------------------------------------------------------- set-up


def load_pipeline(cfg: dict, device: torch.device, model: str | None = None):
    """Sana through :class:`JoPanoPipeline` on ``device`` (fp32 on the CPU), transformer frozen."""
    from pano_core.diffusion.loading import resolve_dtype
    from pano_core.jopano.pipeline import JoPanoPipeline

    dt = resolve_dtype(get(cfg, "model.dtype"), device)
    if device.type == "cpu":
        dt = torch.float32
    jp = JoPanoPipeline.from_pretrained(model or get(cfg, "model.path"), device=device, dtype=dt,
                                        revision=get(cfg, "model.revision"))
    jp.sana.set_progress_bar_config(disable=True)
    jp.transformer.requires_grad_(False)
    jp.vae.requires_grad_(False)
    jp.sana.text_encoder.requires_grad_(False)
    return jp


def new_adapter_set(cfg: dict, transformer, face_size: int):
    """A fresh (identity) adapter set for ``transformer`` from the ``adapter`` section."""
    from pano_core.jopano.adapter import JointFaceAdapterSet

    kw = {k: get(cfg, f"adapter.{k}") for k in ("inner_dim", "heads", "rope_scale", "rope_base")}
    kw = {k: v for k, v in kw.items() if v is not None}
    return JointFaceAdapterSet.for_transformer(transformer, face_size=int(face_size),
                                               base_model=str(get(cfg, "model.path")), **kw).float()


def _face_size(cfg: dict, jp) -> int:
    s = get(cfg, "data.face_size")
    return jp.check_face_size(int(s) if not isinstance(s, bool) and isinstance(s, (int, float)) else s)


def _item_image(folder: Path, it: dict, use_refined: bool) -> Path:
    rel = it.get("refined") if use_refined and it.get("refined") else it["image"]
    return folder / rel


def _read_text(folder: Path, rel: str) -> str:
    return (folder / rel).read_text(encoding="utf-8").strip()


def _face_texts(cfg: dict, folder: Path, it: dict) -> list[str]:
    """Six captions F R B L U D: the per-face caption where prepare found one (and
    ``data.face_captions`` is on), else the panorama's caption; the trigger word prefixed."""
    from pano_core.diffusion.prompts import add_prompt_prefix

    base = _read_text(folder, it["caption"])
    per = (it.get("extra") or {}).get("face_captions") or {} if get(cfg, "data.face_captions") else {}
    trigger = get(cfg, "data.trigger") or None
    return [add_prompt_prefix(_read_text(folder, per[f]) if f in per else base, trigger)[0] for f in FACE_NAMES]


def _text_key(text: str, instruction: bool) -> str:
    return hashlib.sha1(f"{int(instruction)}:{text}".encode()).hexdigest()[:20]


def _instruction(cfg: dict):
    from pano_core.jopano.pipeline import sana_complex_human_instruction

    return sana_complex_human_instruction() if get(cfg, "data.complex_human_instruction") else None


def _encode_text(jp, cfg: dict, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma-2 embedding (L, D) and mask (L,) of one caption as Sana's pipeline encodes it; the
    empty caption (caption dropout) as its negative prompt: without the instruction."""
    msl = int(get(cfg, "data.max_sequence_length"))
    with torch.no_grad():
        pe, pm, _, _ = jp.encode_prompts([text], None, _instruction(cfg) if text else None, msl)
    return pe[0].float().cpu(), pm[0].cpu()


def _encode_faces(jp, faces: torch.Tensor) -> torch.Tensor:
    return jp.encode_faces(faces).float().cpu()


# ----------------------------------------------------------------------------------- caches


def _pano_faces(folder: Path, it: dict, use_refined: bool, face_size: int, roll_px: int = 0) -> torch.Tensor:
    erp = read_image(_item_image(folder, it, use_refined), name="data")[:, :3]
    if roll_px:
        erp = torch.roll(erp, -int(roll_px), dims=-1)
    return e2c(erp, face_size)


def _ud_rotations(jp, faces: torch.Tensor) -> dict[int, torch.Tensor]:
    ud = faces[4:6]
    return {r: _encode_faces(jp, torch.rot90(ud, r, dims=(-2, -1))) for r in (1, 2, 3)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-12))


def _measure(jp, folder: Path, it: dict, use_refined: bool, s: int, lat: torch.Tensor, rots: dict) -> dict:
    """On one item: (a) side faces of the ERP rolled by a quarter vs the permuted faces (pixels,
    max abs: the permutation is exact); (b) ``rot90`` of the U/D latents vs the latents of the
    turned U/D images (relative RMS: why the cache holds U and D in four rotations)."""
    faces = _pano_faces(folder, it, use_refined, s)
    erp_w = read_image(_item_image(folder, it, use_refined), name="data").shape[-1]
    turned = _pano_faces(folder, it, use_refined, s, roll_px=erp_w // 4)
    perm = float((apply_quarter_yaw(faces, 1) - turned).abs().max())
    rot_err = statistics.mean([_rel(torch.rot90(lat[4:6], r, dims=(-2, -1)), rots[r]) for r in (1, 2, 3)])
    return {"side_permutation_error": perm, "ud_rotation_error": rot_err}


def build_caches(cfg: dict, progress: bool = True, jp=None, device: torch.device | None = None) -> dict:
    """Build (or reuse) the face-latent and Gemma caches of ``data.dir`` for ``model.path`` at
    ``data.face_size``; versioned by model id, face size and a hash of the input."""
    folder = Path(get(cfg, "data.dir"))
    manifest = read_manifest(folder)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    jp = jp or load_pipeline(cfg, device)
    s = _face_size(cfg, jp)
    model = str(get(cfg, "model.path"))
    use_refined = bool(get(cfg, "data.use_refined"))
    items = list(manifest["items"])
    files = [str(_item_image(folder, it, use_refined).relative_to(folder)) for it in items]
    root = cache_dir(folder, TRAINER, model, s)
    expect = {"version": 1, "model": model, "face_size": s, "use_refined": use_refined,
              "input": input_hash(folder, manifest, files, {"face_size": s}),
              "latent_channels": int(jp.latent_channels), "vae_factor": int(jp.vae_factor)}
    lat = LatentCache.open(root, expect)
    bar = progress_bar(len(items), "cache face latents", progress)
    if lat is None:
        measured: dict = {}

        def gen():
            for it in items:
                faces = _pano_faces(folder, it, use_refined, s)
                z = _encode_faces(jp, faces)
                rots = _ud_rotations(jp, faces)
                if not measured:
                    measured.update(_measure(jp, folder, it, use_refined, s, z, rots))
                yield it["name"], {"faces": z, **{f"rot{r}": v for r, v in rots.items()}}

        lat = LatentCache.write(root, dict(expect), gen(), progress=bar.update)
        lat.record.update(measured)
        (root / "latents.json").write_text(json.dumps(lat.record, indent=1))
        log.info("face latent cache: side faces of a quarter yaw match the permuted faces to %.2g (pixels); "
                 "a turned U/D latent differs from the latent of the turned face by %.3g (relative RMS), "
                 "so U and D are cached in all four rotations",
                 measured.get("side_permutation_error", float("nan")), measured.get("ud_rotation_error", float("nan")))
    else:
        bar.update(len(items))
    bar.close()
    texts = sorted({t for it in items for t in _face_texts(cfg, folder, it)} | {""})
    t_expect = {"version": 1, "model": model, "max_sequence_length": int(get(cfg, "data.max_sequence_length")),
                "instruction": bool(get(cfg, "data.complex_human_instruction")),
                "texts": hashlib.sha1("\n".join(texts).encode()).hexdigest()}
    txt = TextCache.ensure(
        root, t_expect,
        ((_text_key(t, bool(t)), {"embeds": e, "mask": m}) for t in texts for e, m in (_encode_text(jp, cfg, t),)),
        total=len(texts), desc="cache Gemma embeddings", progress=progress,
    )
    return {"folder": str(root), "latents": lat.record.get("items"), "texts": txt.record.get("items"),
            "side_permutation_error": lat.record.get("side_permutation_error"),
            "ud_rotation_error": lat.record.get("ud_rotation_error")}


# ----------------------------------------------------------------------------------- batches


class _Source:
    """Face latents and caption embeddings of the prepared set (cached, or encoded live)."""

    def __init__(self, cfg: dict, jp, face_size: int, cache_root: Path | None):
        self.cfg, self.jp, self.s = cfg, jp, face_size
        self.folder = Path(get(cfg, "data.dir"))
        self.items = list(read_manifest(self.folder)["items"])
        self.use_refined = bool(get(cfg, "data.use_refined"))
        self.latents = None
        if cache_root is not None:
            self.latents = LatentCache(cache_root, json.loads((cache_root / "latents.json").read_text()))
        self.texts = (_TextCacheOf(cache_root) if cache_root is not None else None)
        self._captions: dict[int, list[str]] = {}

    def captions(self, index: int) -> list[str]:
        if index not in self._captions:
            self._captions[index] = _face_texts(self.cfg, self.folder, self.items[index])
        return self._captions[index]

    def faces(self, index: int, quarter: int, roll: float = 0.0) -> torch.Tensor:
        """(6, C, h, h) latents of item ``index`` turned by ``quarter`` quarter turns (and, live
        only, by a further small yaw of ``roll`` x 360 degrees, any whole ERP column)."""
        it = self.items[index]
        if self.latents is not None:
            z = self.latents.get(it["name"], "faces")
            rots = {r: self.latents.get(it["name"], f"rot{r}") for r in (1, 2, 3)}
            return apply_quarter_yaw(z, quarter, rots)
        erp = read_image(_item_image(self.folder, it, self.use_refined), name="data")[:, :3]
        w = erp.shape[-1]
        erp = torch.roll(erp, -(int(roll * w) + quarter * (w // 4)) % w, dims=-1)
        return _encode_faces(self.jp, e2c(erp, self.s))

    def text(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.texts is not None:
            return self.texts.get(_text_key(caption, bool(caption)))
        return _encode_text(self.jp, self.cfg, caption)


class _TextCacheOf:
    def __init__(self, root: Path):
        self.cache = TextCache(root, json.loads((root / "text.json").read_text()))

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.get(key, "embeds"), self.cache.get(key, "mask")


@dataclass
class Draws:
    """The random choices of one training sample (all from ``(seed, sample index)``)."""

    drop_caption: bool
    v2p: bool
    face: int  # condition face index (V2P)
    quarter: int  # yaw by quarter turns (0..3)
    yaw_fraction: float  # random yaw as a fraction of a full turn (live encode only)


def timestep(cfg: dict, seed: int, n: int) -> float:
    """The training sigma (0..1) of global sample ``n``: ``flow.timestep_sampling`` then Sana's
    constant ``flow.shift`` (``pano_core.diffusion.schedules.sample_sigmas``), from (seed, n)."""
    shift = get(cfg, "flow.shift")
    shift = None if shift in (None, "none", 0) else float(shift)
    return float(sample_sigmas(1, mode=str(get(cfg, "flow.timestep_sampling")), mean=float(get(cfg, "flow.logit_mean")),
                               std=float(get(cfg, "flow.logit_std")), shift=shift,
                               generator=sample_generator(seed, n, "sigma"))[0])


def draw(cfg: dict, seed: int, n: int) -> Draws:
    r = torch.rand(6, generator=sample_generator(seed, n, "jopano-draws"), dtype=torch.float64).tolist()
    face_cfg = str(get(cfg, "condition.face"))
    if face_cfg == "random":
        face = int(r[3] * 6) % 6
    elif face_cfg.upper() in FACE_NAMES:
        face = FACE_NAMES.index(face_cfg.upper())
    else:
        raise PanoInputError(f"condition.face: expected random or one of {' '.join(FACE_NAMES)}, got {face_cfg!r}")
    return Draws(drop_caption=r[1] < float(get(cfg, "data.caption_dropout")),
                 v2p=r[2] < float(get(cfg, "condition.v2p_probability")), face=face,
                 quarter=int(r[4] * 4) % 4 if get(cfg, "data.yaw_quarter") else 0,
                 yaw_fraction=r[5] if get(cfg, "data.random_yaw") else 0.0)


@dataclass
class Batch:
    x0: torch.Tensor  # (B*6, C, h, h) faces F R B L U D per panorama
    noise: torch.Tensor  # (B*6, C, h, h)
    sigma: torch.Tensor  # (B,) one timestep per panorama
    cond: torch.Tensor  # (B*6,) bool: the clean V2P condition faces
    embeds: torch.Tensor  # (B*6, L, D)
    mask: torch.Tensor  # (B*6, L)
    v2p: torch.Tensor  # (B,) bool
    indices: list[int]


def make_batch(cfg: dict, src: _Source, plan: DataPlan, indices: list[int], device, dtype=torch.float32) -> Batch:
    seed = int(get(cfg, "train.seed"))
    xs, ns, sig, cond, es, ms, v2p = [], [], [], [], [], [], []
    for n in indices:
        it = plan.locate(n)
        d = draw(cfg, seed, n)
        x0 = src.faces(it.index, d.quarter, d.yaw_fraction)
        xs.append(x0)
        ns.append(torch.randn(x0.shape, generator=sample_generator(seed, n, "noise")))
        sig.append(timestep(cfg, seed, n))
        caps = [""] * 6 if d.drop_caption else src.captions(it.index)
        if d.quarter and not d.drop_caption:  # captions follow their faces
            src_idx, _ = quarter_yaw_map(d.quarter)
            caps = [caps[s] for s in src_idx]
        for c in caps:
            e, m = src.text(c)
            es.append(e)
            ms.append(m)
        c = torch.zeros(6, dtype=torch.bool)
        if d.v2p:
            c[d.face] = True
        cond.append(c)
        v2p.append(d.v2p)
    return Batch(x0=torch.cat(xs).float().to(device), noise=torch.cat(ns).to(device),
                 sigma=torch.tensor(sig, dtype=torch.float32, device=device), cond=torch.cat(cond).to(device),
                 embeds=torch.stack(es).to(device=device, dtype=dtype), mask=torch.stack(ms).to(device),
                 v2p=torch.tensor(v2p, device=device), indices=list(indices))


# ----------------------------------------------------------------------------------- the loss


def face_inputs(b: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, sigma per face, target, weight per face)``: noised faces, the V2P condition faces
    clean at timestep 0 (weight 0), the flow target ``noise - x0``."""
    sig = b.sigma.repeat_interleave(6)
    sig = torch.where(b.cond, torch.zeros_like(sig), sig)
    x_t = add_noise(b.x0, b.noise, sig)  # sigma 0: exactly x0
    return x_t, sig, velocity_target(b.x0, b.noise), (~b.cond).float()


def velocity(model, transformer, x_t: torch.Tensor, sigma: torch.Tensor, embeds, mask) -> torch.Tensor:
    """Sana's flow prediction for faces (B*6, C, h, h) at per-face sigmas (0..1), run through
    ``model`` (the adapter set, possibly DDP-wrapped) with ``transformer`` inside."""
    cfg_t = transformer.config
    scale = float(getattr(cfg_t, "timestep_scale", 1.0) or 1.0)
    ts = sigma * 1000.0 * scale  # the schedulers' timesteps are sigma x num_train_timesteps (1000)
    dt = embeds.dtype
    out = model(transformer, hidden_states=x_t.to(dt), encoder_hidden_states=embeds, encoder_attention_mask=mask,
                timestep=ts.float(), return_dict=False)[0].float()  # float32 timesteps, as SanaPipeline passes them
    if cfg_t.out_channels // 2 == cfg_t.in_channels and cfg_t.out_channels != cfg_t.in_channels:
        out = out.chunk(2, dim=1)[0]
    return out


def compute_loss(model, transformer, b: Batch) -> tuple[torch.Tensor, dict]:
    """Mean over panoramas of the MSE over their supervised faces (six in T2P, five in V2P), and
    the mean loss of the T2P and the V2P samples (0 when none; always both keys)."""
    x_t, sig, target, wf = face_inputs(b)
    pred = velocity(model, transformer, x_t, sig, b.embeds, b.mask)
    per_face = (pred - target).pow(2).mean(dim=(1, 2, 3))
    nb = b.sigma.shape[0]
    per_pano = (per_face * wf).reshape(nb, 6).sum(1) / wf.reshape(nb, 6).sum(1)
    v2p = b.v2p.float()
    logs = {"t2p": (per_pano.detach() * (1 - v2p)).sum() / (1 - v2p).sum().clamp_min(1),
            "v2p": (per_pano.detach() * v2p).sum() / v2p.sum().clamp_min(1)}
    return per_pano.mean(), logs


# ----------------------------------------------------------------------------------- samples


def _sample_mode(cfg: dict) -> str:
    m = get(cfg, "sample.mode")
    if m in (None, "auto"):
        return "adapter+sync" if get(cfg, "train.sync") else "adapter"
    from pano_core.jopano.pipeline import MODES

    if m not in MODES:
        raise PanoInputError(f"sample.mode: expected auto or one of {', '.join(MODES)}, got {m!r}")
    return m


def _sample_view(cfg: dict, src: _Source) -> tuple[torch.Tensor, str, str]:
    """The V2P sample's given face: the condition face of the first panorama of the set, pixels."""
    face = str(get(cfg, "condition.face"))
    face = "F" if face == "random" else face.upper()
    it = src.items[0]
    faces = _pano_faces(src.folder, it, src.use_refined, src.s)
    return faces[FACE_NAMES.index(face)][None], face, src.captions(0)[0]


def _tile(out, s: int) -> torch.Tensor:
    """One sample as an image: the ERP (2S x 4S) above the six faces in a row (S x 6S)."""
    gap = 2
    canvas = torch.ones(3, 2 * s + gap + s, 6 * s)
    canvas[:, : 2 * s, : 4 * s] = out.erp[0]
    for i in range(6):
        canvas[:, 2 * s + gap :, i * s : (i + 1) * s] = out.faces[i]
    return canvas


def render_samples(jp, adapters, cfg: dict, face_size: int, prompts: list[str], seeds: list[int],
                   view: tuple | None) -> tuple[list[torch.Tensor], list[dict]]:
    """T2P samples for every (prompt, seed), then V2P samples (the given ``view`` face) per seed,
    with the current adapters; tiles and metric records (raw and blended seam metrics)."""
    from pano_core.jopano.adapter import detach_adapters

    detach_adapters(jp.transformer)  # the training forward leaves the set attached
    jp.adapter, jp.adapter_source = adapters, None
    mode = _sample_mode(cfg)
    kw = dict(mode=mode, face_size=face_size, steps=int(get(cfg, "sample.steps")), cfg=float(get(cfg, "sample.cfg")),
              blend=str(get(cfg, "sample.blend")), progress=False,
              complex_human_instruction=True if get(cfg, "data.complex_human_instruction") else None,
              max_sequence_length=int(get(cfg, "data.max_sequence_length")))
    tiles, recs = [], []
    for p in prompts:
        for s in seeds:
            out = jp(p, seed=int(s), **kw)
            tiles.append(_tile(out, face_size))
            recs.append({"task": "t2p", "prompt": p, "seed": int(s), "mode": mode, **out.metrics[0]})
    if view is not None:
        img, face, caption = view
        p = prompts[0] if prompts else caption
        for s in seeds:
            out = jp(p, view=img, view_face=face, seed=int(s), **kw)
            tiles.append(_tile(out, face_size))
            kept = float((out.faces[FACE_NAMES.index(face)] - img[0]).abs().max())
            recs.append({"task": "v2p", "prompt": p, "seed": int(s), "mode": mode, "view_face": face,
                         "given_face_max_abs": kept, **out.metrics[0]})
    return tiles, recs


def _write_samples(run: Path, step: int, jp, adapters, cfg: dict, s: int, prompts, view) -> Path:
    seeds = [int(x) for x in get(cfg, "sample.seeds")]
    was = jp.transformer.training
    jp.transformer.eval()
    try:
        tiles, recs = render_samples(jp, adapters, cfg, s, prompts, seeds, view)
    finally:
        jp.transformer.train(was)
    path = write_sample_grid(run / "samples" / f"step-{step:06d}.png", torch.stack(tiles), cols=len(seeds))
    append_metrics(run / "samples" / "metrics.jsonl", [dict(step=step, **r) for r in recs])
    return path


# ----------------------------------------------------------------------------------- training


def _check(cfg: dict) -> None:
    if get(cfg, "data.random_yaw") and get(cfg, "data.cache"):
        raise PanoInputError("data.random_yaw: a small random yaw resamples every face, so the cached latents cannot "
                             "follow it; set data.cache=false (or train with data.yaw_quarter only)")
    p = float(get(cfg, "condition.v2p_probability"))
    if not 0.0 <= p <= 1.0:
        raise PanoInputError(f"condition.v2p_probability: expected a probability 0..1, got {p}")
    draw(cfg, 0, 0)  # validates condition.face
    shift = get(cfg, "flow.shift")
    if shift not in (None, "none") and not (isinstance(shift, (int, float)) and not isinstance(shift, bool) and shift >= 0):
        raise PanoInputError(f"flow.shift: expected Sana's constant shift (a number, 3.0) or none, got {shift!r}")
    timestep(cfg, 0, 0)  # validates flow.timestep_sampling


def _save_adapter(adapters, path: Path) -> Path:
    from pano_core.jopano.adapter import save_adapter_set

    return save_adapter_set(path, adapters, overwrite=True)


def train(cfg: dict, resume: str | None = None, progress: bool = True) -> dict:
    """Train a Joint-Face adapter set with the resolved config ``cfg`` (``configs/jopano_adapter.yaml``).

    ``resume``: ``None``, ``"latest"`` or a checkpoint folder. Returns ``{"adapter", "step", "run"}``.
    """
    from contextlib import nullcontext

    from pano_core.jopano.sync import joint_face_sync

    if not cfg.get("output"):
        raise PanoInputError("--output: a run folder is required")
    if not get(cfg, "data.dir"):
        raise PanoInputError("--data: the prepared folder is required")
    run = Path(cfg["output"])
    _check(cfg)
    check_run_folder(run, resume)
    ck_path = resolve_resume(resume, run)
    manifest = read_manifest(get(cfg, "data.dir"))
    acc = make_accelerator(cfg, run)
    main = acc.is_main_process
    seed = int(get(cfg, "train.seed"))
    dev = acc.device
    jp = load_pipeline(cfg, dev)
    s = _face_size(cfg, jp)  # checked before anything is written
    if main and s > int(manifest["width"]) // 4:
        log.warning("data.face_size %d is larger than the prepared panoramas' natural face size %d (width / 4): the "
                    "faces are upsampled; prepare the set with --resolution %d for sharp faces",
                    s, int(manifest["width"]) // 4, 2 * s)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
    transformer = jp.transformer
    cache_root = None
    if get(cfg, "data.cache"):
        with acc.main_process_first():
            info = build_caches(cfg, progress=progress and main, jp=jp, device=dev)
        cache_root = Path(info["folder"])
        if main:
            log.info("caches: %s", info)
    src = _Source(cfg, jp, s, cache_root)
    prompts = [str(p) for p in (get(cfg, "sample.prompts") or [])]
    want_samples = main and int(get(cfg, "sample.every")) >= 0 and (prompts or get(cfg, "sample.v2p"))
    view = _sample_view(cfg, src) if want_samples and get(cfg, "sample.v2p") else None
    if cache_root is not None and not want_samples:
        jp.sana.text_encoder.to("cpu")  # the cache has every embedding
    plan = DataPlan(len(src.items), 0, seed, 0, 1.0)

    torch.manual_seed(derive_seed(seed, "adapter-init"))
    adapters = new_adapter_set(cfg, transformer, s).to(dev)
    if get(cfg, "model.gradient_checkpointing"):
        transformer.enable_gradient_checkpointing()
    transformer.train()
    adapters.train()
    params = [p for p in adapters.parameters()]
    optimizer = make_optimizer(cfg, params)
    B, ga, world = int(get(cfg, "train.batch_size")), int(get(cfg, "train.gradient_accumulation")), acc.num_processes
    max_steps = get(cfg, "train.max_steps")
    if max_steps is None:
        max_steps = max(1, plan.samples_in(int(get(cfg, "train.epochs"))) // (B * ga * world))
    max_steps = int(max_steps)
    scheduler = make_lr_schedule(cfg, optimizer, max_steps)
    model, optimizer = acc.prepare(adapters, optimizer)

    state = LoopState()
    loss_log = LossLog(run / "logs" / "losses.jsonl")
    if ck_path is not None:
        trainable, opt_state, saved, _ = load_checkpoint(ck_path)
        named = dict(acc.unwrap_model(model).named_parameters())
        if set(named) != set(trainable) or saved.get("trainer") != TRAINER:
            raise PanoInputError(f"--resume: {ck_path} is not a checkpoint of this Joint-Face adapter configuration")
        with torch.no_grad():
            for k, p in named.items():
                if tuple(p.shape) != tuple(trainable[k].shape):
                    raise PanoInputError(f"--resume: {ck_path} holds {k} of shape {tuple(trainable[k].shape)}, "
                                         f"this configuration has {tuple(p.shape)}")
                p.copy_(trainable[k].to(p.dtype))
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(saved["scheduler"])
        state = LoopState(int(saved["step"]), int(saved["samples_seen"]))
        if main:
            loss_log.truncate(state.step)
            log.info("resumed from %s at step %d", ck_path, state.step)
    if get(cfg, "log.logger") == "tensorboard":
        acc.init_trackers("jopano", config={k: v for k, v in flat_config(cfg).items() if isinstance(v, (int, float, str, bool))})

    keep, grad_dump, sync = int(get(cfg, "checkpoint.keep")), get(cfg, "debug.grad_dump"), bool(get(cfg, "train.sync"))
    edt = jp.dtype

    def save(step_: int) -> None:
        acc.wait_for_everyone()
        if main:
            unwrapped = acc.unwrap_model(model)
            info = {"samples_seen": state.samples_seen, "seed": seed, "scheduler": scheduler.state_dict(),
                    "world_size": world, "trainer": TRAINER}
            ck = save_checkpoint(run, step_, {k: v.detach() for k, v in unwrapped.named_parameters()},
                                 optimizer.state_dict(), info, keep=keep)
            _save_adapter(unwrapped, ck / ADAPTER_FILE)
        acc.wait_for_everyone()

    def samples(step_: int) -> None:
        _write_samples(run, step_, jp, acc.unwrap_model(model), cfg, s, prompts, view)
        plot_losses(loss_log.read(), run / "logs" / "loss.png")

    t0 = time.time()

    def micro_context():  # forward and backward (recomputed blocks) both synced
        return joint_face_sync(transformer=transformer) if sync else nullcontext()

    stopped = run_steps(
        acc, model, optimizer, scheduler, params, cfg, state, max_steps,
        make_batch=lambda idx: make_batch(cfg, src, plan, idx, dev, edt),
        loss=lambda batch, _step: compute_loss(model, transformer, batch),
        loss_log=loss_log, save=save, samples=samples if want_samples else None, micro_context=micro_context,
        on_first_grads=(lambda: _dump_grads_named(grad_dump, acc.unwrap_model(model))) if grad_dump else None,
        progress=progress, desc="jopano",
    )
    if stopped:
        acc.end_training()
        return {"adapter": None, "step": state.step, "run": str(run), "stopped": True}
    step = state.step
    save(step)
    out = None
    if main:
        out = _save_adapter(acc.unwrap_model(model), run / ADAPTER_FILE)
        if want_samples:
            samples(step)
        else:
            plot_losses(loss_log.read(), run / "logs" / "loss.png")
        log.info("trained %d steps in %.1f s; Joint-Face adapter: %s", step, time.time() - t0, out)
    acc.end_training()
    return {"adapter": str(out) if out else None, "step": step, "run": str(run)}


def _dump_grads_named(path: str, module: torch.nn.Module) -> None:
    """The adapter set's gradients after the first backward (all parameters; the DiT360 dump is LoRA-only)."""
    from safetensors.torch import save_file

    grads = {k: p.grad.detach().float().cpu().contiguous() for k, p in module.named_parameters() if p.grad is not None}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(grads, str(path))


# ----------------------------------------------------------------------------------- sample command


def is_jopano_run(cfg: dict) -> bool:
    """Whether a run's resolved config is a Joint-Face adapter run (it has a ``condition`` section)."""
    return isinstance(cfg.get("condition"), dict)


def sample_from_run(run, prompts, step: int | None = None, output=None, seed: int = 0, model: str | None = None,
                    progress: bool = True) -> list[Path]:
    """``pano360-train sample`` for a jopano run: every line of ``prompts`` as a T2P panorama
    (ERP PNG) with the adapter of the checkpoint at ``step`` (default the newest), the run's
    sample settings and mode, and the seam metrics of each in ``metrics.jsonl``."""
    from pano_core.io import write_image

    from .checkpoints import list_checkpoints
    from .config import load_config

    run = Path(run)
    cfg = load_config(run / "config.yaml")
    found = {s_: p for s_, p in list_checkpoints(run)}
    if not found:
        raise PanoInputError(f"--run: {run} has no checkpoints")
    step = max(found) if step is None else step
    if step not in found:
        raise PanoInputError(f"--step: {run} has no checkpoint at step {step} (has {', '.join(map(str, sorted(found)))})")
    lines = [x.strip() for x in Path(prompts).read_text(encoding="utf-8").splitlines() if x.strip()] \
        if Path(prompts).is_file() else None
    if not lines:
        raise PanoInputError(f"--prompts: {prompts} is not a text file with one prompt per line")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    jp = load_pipeline(cfg, dev, model=model)
    jp.load_adapter(str(found[step] / ADAPTER_FILE))
    s = _face_size(cfg, jp)
    out = Path(output) if output else run / "samples" / f"manual-step-{step:06d}"
    out.mkdir(parents=True, exist_ok=True)
    mode = _sample_mode(cfg)
    written = []
    bar = progress_bar(len(lines), "sample", progress)
    for i, text in enumerate(lines):
        res = jp(text, mode=mode, face_size=s, steps=int(get(cfg, "sample.steps")), cfg=float(get(cfg, "sample.cfg")),
                 blend=str(get(cfg, "sample.blend")), seed=seed + i, progress=False)
        path = write_image(out / f"{i:04d}-seed{seed + i}.png", res.erp, force=True)
        append_metrics(out / "metrics.jsonl", [{"step": step, "prompt": text, "seed": seed + i, "mode": mode,
                                                **res.metrics[0]}])
        written.append(path)
        bar.update()
    bar.close()
    return written
