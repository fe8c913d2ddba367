"""JoPano: 360° panoramas as six jointly generated cube faces on Sana (diffusers).

:class:`JoPanoPipeline` wraps a diffusers ``SanaPipeline`` (Sana 1.0/1.5, folder, hub id or a
single-file transformer, :mod:`.loading`) and generates the six faces F R B L U D of each panorama
as one batch (faces of a panorama contiguous), in one of four modes:

* ``independent``: six plain Sana images (the baseline); with the same noise each face is
  exactly what ``SanaPipeline`` gives for it;
* ``sync``: training-free joint-face sync (:func:`pano_core.jopano.sync.joint_face_sync`: joint
  linear attention, cube-padded depthwise convs, synced DC-AE decoder);
* ``adapter``: the trained Joint-Face Adapter in every block (:mod:`pano_core.jopano.adapter`);
* ``adapter+sync``: both.

Condition switching (:mod:`.conditions`): T2P (all faces from noise); V2P with a given face (its
clean latent enters every step at **its own timestep 0**, Sana's timestep being per batch
element; the latent stays bit-identical and the decoded face is replaced by the user's pixels);
a perspective photo or an ERP with a keep mask (fully covered faces on the clean-face path,
partly covered faces keep the covered latent pixels by replacement with the noised known latent
after each step; the known pixels pasted back with a feathered border).

Text: one prompt, or one per face (``face_prompts={"F": ..., ...}``), and a negative prompt;
prompt encoding and classifier-free guidance exactly as ``SanaPipeline`` (Gemma-2, 300 tokens,
the complex human instruction, ``uncond + g * (text - uncond)`` in one batched call).

After decoding: cross-face Poisson blending (:func:`pano_core.seams.poisson.blend_cube_faces`,
``exact`` by default; known faces kept), then ``c2e`` to an ERP of width 4 x face size. The result
(:class:`JoPanoOutput`) holds the faces, the ERP, and the seam metrics of the raw and blended cubes.

Example::

    pipe = JoPanoPipeline.from_pretrained("Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers",
                                          adapter="jopano_adapter.safetensors", device="cuda")
    out = pipe("a snowy alpine village at dusk", face_size=512, seed=0)
    out.erp  # (1, 3, 1024, 2048) float32 0..1 on the CPU
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..diffusion.generator import DiffusersGenerator
from ..diffusion.loading import OFFLOAD_MODES, resolve_device, resolve_dtype
from ..diffusion.sampling import SamplingInterrupted, cfg_combine, sample, scheduler_step
from ..diffusion.schedules import add_noise, scheduler_timesteps
from ..diffusion.vae import spatial_factor, vae_decode, vae_encode
from ..errors import PanoInputError
from ..geometry import FACE_NAMES, c2e
from ..validate import check_choice, check_int
from . import conditions as C
from .loading import DEFAULT_MODEL, load_sana_pipeline

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULTS",
    "MODES",
    "BLENDS",
    "JoPanoOutput",
    "JoPanoPipeline",
    "GenerationInterrupted",
    "default_mode",
    "resolve_face_prompts",
    "sana_complex_human_instruction",
]

MODES = ("adapter", "sync", "adapter+sync", "independent")
BLENDS = ("exact", "gauss-seidel", "none")
# Sana 1.5 1.6B's published inference settings (model card / SanaPipeline defaults)
DEFAULTS = dict(face_size=512, steps=20, cfg=4.5)


GenerationInterrupted = SamplingInterrupted
"""Raised when the ``interrupt`` hook returns True (the shared loop's :class:`SamplingInterrupted`)."""


def sana_complex_human_instruction() -> list[str]:
    """Sana's "complex human instruction" prompt prefix, as diffusers' ``SanaPipeline`` uses it."""
    from diffusers import SanaPipeline

    return list(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


def default_mode(adapter: object | None) -> str:
    """``adapter+sync`` when an adapter is given, else ``sync`` (training-free)."""
    return "adapter+sync" if adapter is not None else "sync"


def _face_key(k: object, name: str) -> str:
    key = str(k).strip().upper()
    if key not in FACE_NAMES:
        raise PanoInputError(f"{name}: face key {k!r} is not one of {' '.join(FACE_NAMES)}")
    return key


def resolve_face_prompts(
    prompt: str | None,
    face_prompts: Mapping[str, str] | Sequence[str] | None = None,
    given: Sequence[str] = (),
    name: str = "face_prompts",
) -> list[str]:
    """Six prompts F R B L U D from one ``prompt`` and/or per-face overrides.

    ``face_prompts`` is a dict ``{"F": text, ...}`` (keys among F R B L U D) or a list of six.
    Faces in ``given`` are not generated: a face prompt for one of them is an error; their slot
    gets ``prompt`` (or "" without one). Every generated face needs a non-empty prompt.
    """
    given = {_face_key(g, "view_face") for g in given}
    if prompt is not None and not isinstance(prompt, str):
        raise PanoInputError(f"prompt: expected a text, got {type(prompt).__name__}")
    base = prompt.strip() if prompt else ""
    per: dict[str, str] = {}
    if face_prompts is not None:
        if isinstance(face_prompts, Mapping):
            items = list(face_prompts.items())
        elif isinstance(face_prompts, Sequence) and not isinstance(face_prompts, str):
            if len(face_prompts) != 6:
                raise PanoInputError(f"{name}: expected six prompts (F R B L U D), got {len(face_prompts)}")
            items = [(FACE_NAMES[i], t) for i, t in enumerate(face_prompts) if t]
        else:
            raise PanoInputError(f"{name}: expected a dict {{face: text}} or a list of six texts")
        for k, v in items:
            key = _face_key(k, name)
            if not isinstance(v, str):
                raise PanoInputError(f"{name}: the prompt of face {key} must be a text, got {type(v).__name__}")
            if key in given:
                raise PanoInputError(f"{name}: face {key} is given (the view), it is not generated; drop its prompt")
            if v.strip():
                per[key] = v.strip()
    out = []
    missing = []
    for f in FACE_NAMES:
        if f in given:
            out.append(base)
            continue
        text = per.get(f, base)
        if not text:
            missing.append(f)
        out.append(text)
    if missing:
        who = "prompt" if name == "face_prompts" else name
        raise PanoInputError(
            f"{who}: faces {' '.join(missing)} have no prompt; give a prompt for all faces or one per face"
        )
    return out


@dataclass
class JoPanoOutput:
    """Result of :meth:`JoPanoPipeline.__call__` (tensors float32 on the CPU).

    ``faces``: (B*6, 3, S, S) blended faces F R B L U D in 0..1; ``raw_faces``: the same before the
    cross-face blend; ``erp``: (B, 3, 2S, 4S); ``latents``: (B*6, C, S/f, S/f) final latents;
    ``metrics``: one ``{"raw": ..., "blended": ...}`` per panorama (keys of ``pano360 seam-metrics``);
    ``seeds``: the seed of each panorama (None with explicit generators); ``settings``: what made it.
    """

    faces: torch.Tensor | None
    raw_faces: torch.Tensor | None
    erp: torch.Tensor | None
    latents: torch.Tensor
    metrics: list[dict] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


class JoPanoPipeline(DiffusersGenerator):
    """Joint-face panorama sampling on a diffusers ``SanaPipeline`` (see the module docstring).

    Build with :meth:`from_pretrained`, or wrap an existing ``SanaPipeline``
    (``JoPanoPipeline(sana, adapter=...)``). ``self.sana`` (= ``self.pipe``) stays usable;
    components, memory placement, checked LoRA loading and the progress bar come from
    :class:`~pano_core.diffusion.generator.DiffusersGenerator`.
    """

    default_adapter = "sana_lora"

    def __init__(self, sana, adapter=None):
        from diffusers import SanaTransformer2DModel

        if not isinstance(getattr(sana, "transformer", None), SanaTransformer2DModel):
            raise PanoInputError(f"pipeline: expected a diffusers SanaPipeline, got {type(sana).__name__}")
        super().__init__(sana)
        self.adapter = None
        self.adapter_source: str | None = None
        if adapter is not None:
            self.load_adapter(adapter)

    # ------------------------------------------------------------------ loading / memory
    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = DEFAULT_MODEL,
        adapter: str | os.PathLike | object | None = None,
        *,
        text_encoder: str | os.PathLike | None = None,
        vae: str | os.PathLike | None = None,
        transformer_config: str | os.PathLike | dict | None = None,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
        offload: str = "none",
        vae_tiling: bool = False,
        lora: str | os.PathLike | None = None,
        lora_scale: float = 1.0,
        revision: str | None = None,
        local_files_only: bool | None = None,
    ) -> JoPanoPipeline:
        """Load Sana (a diffusers folder or hub id; or a single-file ``.safetensors`` transformer
        with ``text_encoder`` and ``vae`` folders) and optionally a Joint-Face adapter file.

        ``dtype`` ``None``: bfloat16 on CUDA, float32 on the CPU (fp16 keeps the text encoder and
        the DC-AE in bfloat16, which do not overflow there). ``offload``: ``none``, ``model`` or
        ``sequential`` CPU offload (GPU only). ``lora``: a Sana LoRA (PEFT/diffusers ``.safetensors``)
        loaded beside the adapter with strength ``lora_scale``. Weights load from safetensors only.
        """
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        check_choice(offload, "offload", OFFLOAD_MODES)
        side = torch.bfloat16 if torch_dtype == torch.float16 else torch_dtype
        sana = load_sana_pipeline(
            model, text_encoder=text_encoder, vae=vae, transformer_config=transformer_config, dtype=torch_dtype,
            text_dtype=side, vae_dtype=side, revision=revision, local_files_only=local_files_only,
        )
        pipe = cls(sana)
        pipe.model_source = str(model)
        if lora is not None:
            pipe.load_lora(lora, scale=lora_scale)
        if adapter is not None:
            pipe.load_adapter(adapter)
        pipe.set_memory(dev, offload=offload, vae_tiling=vae_tiling)
        return pipe

    model_source: str = ""

    @property
    def sana(self):
        """The wrapped diffusers ``SanaPipeline``."""
        return self.pipe

    def set_memory(self, device: str | torch.device = "auto", offload: str = "none", vae_tiling: bool = False) -> None:
        """Place the models (device, diffusers' model / sequential CPU offload, VAE tiling) and the adapter."""
        super().set_memory(device, offload=offload, vae_tiling=vae_tiling)
        if self.adapter is not None:
            self.adapter.to(self.device)

    def load_adapter(self, adapter) -> None:
        """Load (a path) or take (a ``JointFaceAdapterSet``) the Joint-Face adapter; its dims must
        fit the transformer (:func:`pano_core.jopano.adapter.load_adapter_set` checks them)."""
        from . import adapter as A

        if isinstance(adapter, (str, os.PathLike)):
            src = str(adapter)
            adapter = A.load_adapter_set(src, transformer=self.transformer, device=self.device, dtype=self.dtype)
            self.adapter_source = src
        elif not isinstance(adapter, A.JointFaceAdapterSet):
            raise PanoInputError(f"adapter: expected a .safetensors path or a JointFaceAdapterSet, got {type(adapter).__name__}")
        else:
            self.adapter_source = None
        self.adapter = adapter

    @property
    def vae_factor(self) -> int:
        """The DC-AE's downscale factor, from its config (32 for f32c32)."""
        return spatial_factor(self.vae)

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    def check_face_size(self, face_size: int) -> int:
        """A positive multiple of the VAE factor x patch size (the token grid must be whole)."""
        face_size = check_int(face_size, "face_size", 1, what="a number of pixels")
        m = self.vae_factor * self.patch_size
        if face_size % m:
            lo, hi = (face_size // m) * m, (face_size // m + 1) * m
            raise PanoInputError(
                f"face_size: must be a multiple of {m} (the VAE's downscale factor {self.vae_factor} x patch size "
                f"{self.patch_size}); got {face_size}, use {lo or hi} or {hi}"
            )
        return int(face_size)

    # ------------------------------------------------------------------ text
    def encode_prompts(self, prompts: Sequence[str], negative: Sequence[str] | None, chi, max_sequence_length: int):
        """Embeddings of a list of prompts (one per face) like ``SanaPipeline.encode_prompt``;
        unique texts are encoded once. Returns ``(embeds, mask, neg_embeds, neg_mask)`` (negatives
        None without ``negative``)."""
        dev = self.device

        def enc(texts, instr):
            uniq = list(dict.fromkeys(texts))
            e, m, _, _ = self.sana.encode_prompt(
                uniq, do_classifier_free_guidance=False, num_images_per_prompt=1, device=dev,
                clean_caption=False, max_sequence_length=max_sequence_length, complex_human_instruction=instr,
            )
            idx = torch.tensor([uniq.index(t) for t in texts], device=e.device)
            return e[idx], m[idx]

        pe, pm = enc(list(prompts), chi)
        if negative is None:
            return pe, pm, None, None
        ne, nm = enc(list(negative), None)
        return pe, pm, ne, nm

    # ------------------------------------------------------------------ VAE
    @torch.no_grad()
    def encode_faces(self, faces: torch.Tensor) -> torch.Tensor:
        """Faces (N, 3, S, S) in 0..1 -> model-space latents (N, C, S/f, S/f) float32."""
        return vae_encode(self.vae, faces, device=self.device).float()

    @torch.no_grad()
    def decode_faces(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) -> faces (N, 3, S, S) float32 0..1 (as ``SanaPipeline``'s decode)."""
        return vae_decode(self.vae, latents, device=self.device)

    # ------------------------------------------------------------------ modes
    def mode_context(self, mode: str, decode: bool = False):
        """The context manager of ``mode`` around the transformer (``decode``: around the VAE)."""
        stack = contextlib.ExitStack()
        if decode:
            if "sync" in mode:
                from .sync import joint_face_sync

                stack.enter_context(joint_face_sync(vae=self.vae))
            return stack
        if "adapter" in mode:
            from .adapter import adapters_attached

            stack.enter_context(adapters_attached(self.transformer, self.adapter))
        if "sync" in mode:
            from .sync import joint_face_sync

            stack.enter_context(joint_face_sync(transformer=self.transformer))
        return stack

    def _check_mode(self, mode: str | None) -> str:
        mode = default_mode(self.adapter) if mode is None else mode
        check_choice(mode, "mode", MODES)
        if "adapter" in mode and self.adapter is None:
            raise PanoInputError(f"mode: {mode} needs a Joint-Face adapter (adapter=...); without one use sync or independent")
        return mode

    # ------------------------------------------------------------------ conditions
    def conditions(self, *, face_size: int, view=None, view_face: str | None = None, fov: float | None = None,
                   view_yaw: float = 0.0, view_pitch: float = 0.0, image=None, mask=None) -> C.FaceConditions | None:
        """The :class:`~pano_core.jopano.conditions.FaceConditions` of the inputs (None for T2P)."""
        if view is not None and image is not None:
            raise PanoInputError("view/image: give a view (V2P) or an ERP with a mask (in/outpainting), not both")
        if view is not None:
            if view_face is not None and fov is not None:
                raise PanoInputError("view_face/fov: the view is either one face (view_face) or a photo with a fov, not both")
            if view_face is not None:
                return C.face_condition(view, view_face, face_size)
            if fov is None:
                raise PanoInputError("view: say where it goes: view_face (F R B L U D) or fov (+ view_yaw, view_pitch)")
            return C.view_condition(view, fov, view_yaw, view_pitch, face_size=face_size)
        if view_face is not None or fov is not None:
            raise PanoInputError("view_face/fov: only meaningful with a view image")
        if image is not None:
            if mask is None:
                raise PanoInputError("mask: an ERP image needs a mask of what to keep (white = keep)")
            return C.erp_condition(image, mask, face_size=face_size)
        if mask is not None:
            raise PanoInputError("mask: only meaningful with an ERP image")
        return None

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        face_prompts: Mapping[str, str] | Sequence | None = None,
        negative_prompt: str = "",
        mode: str | None = None,
        face_size: int = DEFAULTS["face_size"],
        steps: int = DEFAULTS["steps"],
        cfg: float = DEFAULTS["cfg"],
        seed: int | Sequence[int] | None = 0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        num_panoramas: int | None = None,
        view: torch.Tensor | None = None,
        view_face: str | None = None,
        fov: float | None = None,
        view_yaw: float = 0.0,
        view_pitch: float = 0.0,
        image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        feather: int | None = None,
        blend: str = "exact",
        blend_iterations: int = 200,
        sync_decode: bool = True,
        complex_human_instruction: list[str] | None | bool = True,
        max_sequence_length: int = 300,
        metrics: bool = True,
        output_type: str = "pt",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        interrupt: Callable[[], bool | None] | None = None,
        progress: bool = True,
    ) -> JoPanoOutput:
        """Generate ``B`` panoramas as ``B x 6`` faces.

        Args:
            prompt: one text for every face, or a list of one text per panorama.
            face_prompts: per-face overrides ``{"F": text, ...}`` (or a list of such dicts, one per
                panorama); in V2P only the generated faces take one.
            negative_prompt: Sana's negative prompt (default "").
            mode: ``adapter``, ``sync``, ``adapter+sync`` or ``independent`` (default: ``adapter+sync``
                with an adapter, else ``sync``).
            face_size: pixels per face, a multiple of the VAE factor x patch size (ERP = 4 x face wide).
            steps, cfg: sampling steps and guidance scale (Sana 1.5 1.6B: 20 and 4.5).
            seed: seed of the first panorama (panorama k uses ``seed + k``) or one seed per panorama;
                each panorama's noise is drawn from its own CPU generator, so a batch equals single runs.
            latents: initial noise (B*6, C, S/f, S/f) instead of seeds.
            view, view_face / fov, view_yaw, view_pitch: V2P with a face or a perspective photo.
            image, mask: an ERP and its keep mask (1 = keep) for in/outpainting.
            feather: width (px) of the blend band where a projected photo is pasted back (default S/32).
            blend: cross-face blending ``exact`` (default), ``gauss-seidel`` (JoPano's 200 sweeps) or ``none``.
            sync_decode: in sync modes, decode with the synced DC-AE (no seams from the decoder).
            complex_human_instruction: True for Sana's, a list of lines, or None/False for none.
            output_type: ``"pt"`` (faces + ERP) or ``"latent"`` (latents only).
            callback: ``callback(step, total, x0)`` after every step (x0: the current prediction of
                the clean latents, for previews).
            interrupt: called before every step; a true return value stops with
                :class:`GenerationInterrupted` (it may also raise its own exception).
        """
        check_choice(output_type, "output_type", ("pt", "latent"))
        check_choice(blend, "blend", BLENDS)
        steps = check_int(steps, "steps", 1)
        try:
            cfg = float(cfg)
        except (TypeError, ValueError):
            raise PanoInputError(f"cfg: expected a number, got {cfg!r}") from None
        if not np.isfinite(cfg):
            raise PanoInputError(f"cfg: expected a finite number, got {cfg}")
        mode = self._check_mode(mode)
        s = self.check_face_size(face_size)
        f = self.vae_factor
        cond = self.conditions(face_size=s, view=view, view_face=view_face, fov=fov, view_yaw=view_yaw,
                               view_pitch=view_pitch, image=image, mask=mask)

        # -- prompts: one list of six per panorama
        prompts = [prompt] if prompt is None or isinstance(prompt, str) else list(prompt)
        fps = face_prompts if isinstance(face_prompts, (list, tuple)) and face_prompts and isinstance(face_prompts[0], Mapping) else [face_prompts]
        b = num_panoramas or max(len(prompts), len(fps))
        if len(prompts) == 1:
            prompts = prompts * b
        if len(fps) == 1:
            fps = fps * b
        if len(prompts) != b or len(fps) != b:
            raise PanoInputError(f"prompt/face_prompts: expected one per panorama ({b}), got {len(prompts)} and {len(fps)}")
        given = cond.full_names if cond is not None else []
        face_texts = [t for p, fp in zip(prompts, fps) for t in resolve_face_prompts(p, fp, given)]
        negs = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negs) == 1:
            negs = negs * b
        if len(negs) != b:
            raise PanoInputError(f"negative_prompt: expected one per panorama ({b}), got {len(negs)}")
        neg_texts = [n for n in negs for _ in range(6)]

        # -- noise
        n = 6 * b
        h = s // f
        shape = (n, self.latent_channels, h, h)
        seeds: list[int | None] = [None] * b
        dev = self.device
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise PanoInputError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
            noise = latents.to(dev, torch.float32)
        else:
            if generator is None:
                if seed is None:
                    base = int(torch.randint(0, 2**31 - 1, (1,)).item())
                    seeds = [base + k for k in range(b)]
                elif isinstance(seed, (int, np.integer)):
                    seeds = [int(seed) + k for k in range(b)]
                else:
                    seeds = [int(x) for x in seed]
                    if len(seeds) != b:
                        raise PanoInputError(f"seed: expected one seed per panorama ({b}), got {len(seeds)}")
                generator = [torch.Generator("cpu").manual_seed(x) for x in seeds]
            gens = generator if isinstance(generator, list) else [generator]
            if len(gens) == 1 and b > 1:
                raise PanoInputError("generator: give one generator per panorama")
            from diffusers.utils.torch_utils import randn_tensor

            noise = torch.cat([randn_tensor((6,) + shape[1:], generator=g, device=dev, dtype=torch.float32)
                               for g in gens[:b]])

        # -- conditions at the latent level
        clean_idx: list[int] = []
        clean_lat = None
        keep = known_lat = None
        if cond is not None:
            lat_known = self.encode_faces(cond.faces).to(dev)  # (6, C, h, h)
            full = cond.full
            clean_idx = [k * 6 + i for k in range(b) for i in full]
            if full:
                clean_lat = lat_known[full].repeat(b, 1, 1, 1)
            part = cond.partial
            if part:
                m = torch.zeros(6, 1, h, h)
                lm = C.latent_keep_mask(cond, f)
                m[part] = lm[part]
                keep = m.to(dev).repeat(b, 1, 1, 1)
                known_lat = lat_known.repeat(b, 1, 1, 1)
        x = noise.clone()
        clean_t = torch.tensor(clean_idx, device=dev, dtype=torch.long)
        if clean_idx:
            x[clean_t] = clean_lat

        # -- text
        do_cfg = cfg > 1.0
        chi = sana_complex_human_instruction() if complex_human_instruction is True else (complex_human_instruction or None)
        pe, pm, ne, nm = self.encode_prompts(face_texts, neg_texts if do_cfg else None, chi, max_sequence_length)
        if do_cfg:
            pe, pm = torch.cat([ne, pe]), torch.cat([nm, pm])

        # -- schedule: the loaded model's scheduler with its own spacing, as SanaPipeline
        timesteps, sigmas = scheduler_timesteps(self.scheduler, steps, dev)
        tscale = float(self.transformer.config.timestep_scale)
        tdtype = self.dtype
        last = {}

        def velocity(xin: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
            # Sana's CFG: one batched call on [uncond, cond]; tb is per face (given faces at 0)
            model_in = torch.cat([xin, xin]) if do_cfg else xin
            ts = torch.cat([tb, tb]) if do_cfg else tb
            pred = self.transformer(model_in.to(tdtype), encoder_hidden_states=pe.to(tdtype),
                                    encoder_attention_mask=pm, timestep=ts * tscale, return_dict=False)[0].float()
            if do_cfg:
                u, c = pred.chunk(2)
                pred = cfg_combine(c, u, cfg)
            if self.transformer.config.out_channels // 2 == self.latent_channels:
                pred = pred.chunk(2, dim=1)[0]
            last["x"], last["v"] = xin, pred
            return pred

        def after_step(i: int, t, xn: torch.Tensor):
            if keep is not None:  # partly known faces: the known latent pixels, noised to the next level
                xn = keep * add_noise(known_lat, noise, float(sigmas[i + 1])) + (1 - keep) * xn
            if callback is not None:
                x0 = last["x"] - float(sigmas[i]) * last["v"]  # the current prediction of the clean latents
                if clean_idx:
                    x0[clean_t] = clean_lat
                callback(i, len(timesteps), x0)
            return xn

        clean = None
        if clean_idx:
            mask = torch.zeros(n, dtype=torch.bool, device=dev)
            mask[clean_t] = True
            x0_full = x.clone()
            clean = (mask, x0_full)
        with self.mode_context(mode):
            x = sample(velocity, x, timesteps, step=scheduler_step(self.scheduler), clean=clean,
                       callback=after_step, interrupt=interrupt,
                       progress=self.progress_bar(len(timesteps), enabled=progress))

        settings = dict(mode=mode, face_size=s, steps=int(steps), cfg=cfg, prompts=face_texts[:6] if b == 1 else face_texts,
                        negative_prompt=negs[0] if b == 1 else negs, seeds=seeds, blend=blend,
                        model=self.model_source, adapter=self.adapter_source,
                        condition=None if cond is None else ("face" if cond.exact else "projection"),
                        given_faces=given)
        if output_type == "latent":
            self.sana.maybe_free_model_hooks()
            return JoPanoOutput(faces=None, raw_faces=None, erp=None, latents=x.cpu(), seeds=seeds, settings=settings)

        # -- decode, paste known pixels, blend, ERP
        use_sync_vae = sync_decode and "sync" in mode and not getattr(self.vae, "use_tiling", False)
        with self.mode_context(mode if use_sync_vae else "independent", decode=True):
            raw = self.decode_faces(x).cpu()
        feather = max(1, s // 32) if feather is None else int(feather)
        if cond is not None and cond.exact:
            raw = C.paste_known(raw, cond, feather)
        blended = raw
        if blend != "none":
            from ..seams.poisson import blend_cube_faces

            keep_faces = cond.full_names if cond is not None else None
            blended = blend_cube_faces(raw, method=blend, iterations=blend_iterations, keep=keep_faces or None).clamp(0, 1)
        if cond is not None and not cond.exact:
            blended = C.paste_known(blended, cond, feather)
        erp = c2e(blended.contiguous())
        mets = []
        if metrics:
            from ..seams.metrics import seam_metrics

            for k in range(b):
                sl = slice(6 * k, 6 * k + 6)
                mets.append({"raw": seam_metrics(raw[sl], "stack"), "blended": seam_metrics(blended[sl], "stack")})
        self.sana.maybe_free_model_hooks()
        return JoPanoOutput(faces=blended, raw_faces=raw, erp=erp, latents=x.cpu(), metrics=mets, seeds=seeds,
                            settings=settings)

    generate = __call__
