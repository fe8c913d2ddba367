"""JoPano nodes (``Pano360/jopano``): Sana Loader, Joint-Face Adapter Loader, Joint-Face Sampler.

ComfyUI has no native Sana, so Sana is loaded through diffusers here
(:class:`pano_core.jopano.pipeline.JoPanoPipeline`) and cooperates with ComfyUI: it runs on
ComfyUI's device, frees VRAM through ``comfy.model_management`` before loading, drives the node's
progress bar with previews of the current faces, and stops between steps on Cancel.
Thin adapters: everything else lives in :mod:`pano_core.jopano`.
"""

from __future__ import annotations

import json
import logging
import os

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch

from ..pano_core.errors import PanoInputError
from ..pano_core.geometry import FACE_NAMES
from ._common import bchw_to_image, image_to_bchw

CATEGORY = "Pano360/jopano"
FROM_MODEL = "(from model)"
AUTO = "auto"
DTYPES = ("auto", "bf16", "fp16", "fp32")
TASKS = ("T2P (text to panorama)", "V2P (view to panorama)")
PLACEMENTS = tuple(f"face {f}" for f in FACE_NAMES) + ("perspective photo",)
log = logging.getLogger("pano360")

# models/sana (Sana diffusers folders) and models/pano360 (Joint-Face adapters) join ComfyUI's folders
for _name, _exts in (("sana", {"folder"}), ("pano360", {".safetensors"})):
    _default = os.path.join(folder_paths.models_dir, _name)
    if _name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[_name] = ([_default], set(_exts))
    else:
        folder_paths.add_model_folder_path(_name, _default)
        folder_paths.folder_names_and_paths[_name][1].update(_exts)


def _model_folders() -> dict[str, str]:
    """``{name shown: absolute path}`` of diffusers folders (model_index.json) in models/diffusers
    and models/sana."""
    out = {}
    for kind in ("diffusers", "sana"):
        for base in folder_paths.get_folder_paths(kind):
            if not os.path.isdir(base):
                continue
            for root, _dirs, files in os.walk(base, followlinks=True):
                if "model_index.json" in files:
                    out.setdefault(os.path.relpath(root, base).replace(os.sep, "/"), root)
    return out


def _component_folders(kind: str) -> dict[str, str]:
    """Folders holding a ``config.json`` in models/<kind> (text_encoders or vae)."""
    out = {}
    for base in folder_paths.get_folder_paths(kind):
        if not os.path.isdir(base):
            continue
        for root, _dirs, files in os.walk(base, followlinks=True):
            if "config.json" in files and root != base:
                out.setdefault(f"{kind}/{os.path.relpath(root, base).replace(os.sep, '/')}", root)
    return out


def _single_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list("diffusion_models") if f.lower().endswith(".safetensors")]


class SanaModel:
    """What the SANA socket carries: the loaded :class:`JoPanoPipeline` and where it came from."""

    def __init__(self, pipe, source: str):
        self.pipe = pipe
        self.source = source

    def __repr__(self) -> str:
        return f"SanaModel({self.source})"


def _stamp(path: str) -> tuple:
    """Change stamp of a file or folder (its files' sizes and times)."""
    if os.path.isfile(path):
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns)
    items = []
    for root, _d, files in os.walk(path, followlinks=True):
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            items.append((os.path.relpath(os.path.join(root, f), path), st.st_size, st.st_mtime_ns))
    return (path, tuple(items))


def _size_on_disk(*paths: str) -> int:
    total = 0
    for p in paths:
        if p is None:
            continue
        if os.path.isfile(p):
            total += os.path.getsize(p)
            continue
        for root, _d, files in os.walk(p, followlinks=True):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files if f.endswith(".safetensors"))
    return total


class Pano360SanaLoader:
    """Loads Sana (1.0 / 1.5) through diffusers for the Joint-Face Sampler."""

    _cache: dict = {}

    @classmethod
    def INPUT_TYPES(cls):
        models = sorted(_model_folders()) + _single_files()
        comps = [FROM_MODEL] + sorted(_model_folders())
        return {
            "required": {
                "model": (models or ["(no Sana model found)"], {"tooltip":
                    "A Sana diffusers folder in models/diffusers or models/sana (e.g. SANA1.5_1.6B_1024px_diffusers), "
                    "or a single-file transformer .safetensors in models/diffusion_models (then pick text_encoder "
                    "and vae)."}),
                "dtype": (list(DTYPES), {"default": "auto", "tooltip":
                    "auto: what ComfyUI picks for the device (bf16 where supported, else fp16; fp32 on the CPU). fp16 keeps Gemma and the DC-AE in bf16."}),
            },
            "optional": {
                "text_encoder": (comps + sorted(_component_folders("text_encoders")), {"default": FROM_MODEL,
                    "tooltip": "For a single-file model: a Sana folder (its text_encoder/ and tokenizer/) or a Gemma-2 "
                               "folder in models/text_encoders."}),
                "vae": (comps + sorted(_component_folders("vae")), {"default": FROM_MODEL,
                    "tooltip": "For a single-file model: a Sana folder (its vae/) or a DC-AE folder in models/vae."}),
                "lora_name": (["(none)"] + [f for f in folder_paths.get_filename_list("loras")
                                            if f.lower().endswith(".safetensors")], {"default": "(none)",
                    "tooltip": "A Sana LoRA (PEFT/diffusers keys) in models/loras, loaded beside the Joint-Face adapter."}),
                "lora_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
            },
        }

    RETURN_TYPES = ("SANA",)
    RETURN_NAMES = ("sana",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads Sana through diffusers (ComfyUI has no native Sana): a diffusers folder, or a single-file "
        "transformer with a text encoder and VAE. Weights from .safetensors only. Frees VRAM through ComfyUI "
        "before loading and keeps the model cached while the inputs do not change."
    )

    @staticmethod
    def _resolve(model: str, text_encoder: str, vae: str) -> tuple[str, str | None, str | None]:
        folders = _model_folders()
        comps = {**folders, **_component_folders("text_encoders"), **_component_folders("vae")}
        if model in folders:
            if text_encoder not in (None, FROM_MODEL) or vae not in (None, FROM_MODEL):
                raise PanoInputError("text_encoder/vae: a Sana folder brings its own; pick them only for a single-file model")
            return folders[model], None, None
        path = folder_paths.get_full_path("diffusion_models", model)
        if path is None:
            raise PanoInputError(
                f"model: {model!r} is neither a Sana diffusers folder in models/diffusers or models/sana nor a file in "
                "models/diffusion_models"
            )
        if not path.lower().endswith(".safetensors"):
            raise PanoInputError(f"model: {model} is not a .safetensors file; weights load from safetensors only")
        if text_encoder in (None, FROM_MODEL) or vae in (None, FROM_MODEL):
            raise PanoInputError(f"text_encoder/vae: the single-file model {model} needs a text encoder and a VAE folder")
        for name, v in (("text_encoder", text_encoder), ("vae", vae)):
            if v not in comps:
                raise PanoInputError(f"{name}: {v!r} not found")
        return path, comps[text_encoder], comps[vae]

    def load(self, model, dtype="auto", text_encoder=FROM_MODEL, vae=FROM_MODEL, lora_name="(none)", lora_strength=1.0):
        from ..pano_core.jopano.pipeline import JoPanoPipeline

        if dtype not in DTYPES:
            raise PanoInputError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        path, te, va = self._resolve(model, text_encoder, vae)
        lora = None
        if lora_name not in (None, "", "(none)"):
            lora = folder_paths.get_full_path("loras", lora_name)
            if lora is None:
                raise PanoInputError(f"lora_name: {lora_name} not found in models/loras")
        device = mm.get_torch_device()
        key = (_stamp(path), te and _stamp(te), va and _stamp(va), lora and _stamp(lora), float(lora_strength), dtype,
               str(device))
        hit = self._cache.get("entry")
        if hit is not None and hit[0] == key:
            return (hit[1],)
        self._cache.clear()  # one Sana at a time: drop the previous one before loading
        need = _size_on_disk(path, te, va)
        mm.free_memory(need * 1.3 + 1024**3, device)
        mm.soft_empty_cache()
        if dtype == "auto":  # what ComfyUI would pick for this device: bf16 where supported, else fp16 / fp32
            dtype = "fp32" if device.type == "cpu" else ("bf16" if mm.should_use_bf16(device) else
                                                        "fp16" if mm.should_use_fp16(device) else "fp32")
        pipe = JoPanoPipeline.from_pretrained(
            path, text_encoder=te, vae=va, device=device, dtype=dtype,
            lora=lora, lora_scale=float(lora_strength), local_files_only=True,
        )
        pipe.sana.set_progress_bar_config(disable=True)
        sana = SanaModel(pipe, model)
        self._cache["entry"] = (key, sana)
        return (sana,)


class Pano360JointFaceAdapterLoader:
    """Picks a Joint-Face adapter (.safetensors) from models/pano360."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"adapter_name": (folder_paths.get_filename_list("pano360"), {"tooltip":
            "A Joint-Face adapter (jopano_adapter.safetensors) in models/pano360, trained for your Sana model."})}}

    RETURN_TYPES = ("JOPANO_ADAPTER",)
    RETURN_NAMES = ("adapter",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "A Joint-Face adapter file for the Joint-Face Sampler (its dims are checked against the Sana model)."

    def load(self, adapter_name):
        from ..pano_core.jopano.adapter import read_adapter_config

        path = folder_paths.get_full_path("pano360", adapter_name)
        if path is None:
            raise PanoInputError(f"adapter_name: {adapter_name} not found in models/pano360")
        if not path.lower().endswith(".safetensors"):
            raise PanoInputError(f"adapter_name: {adapter_name} is not a .safetensors file")
        read_adapter_config(path)  # a clear error now if it is not an adapter file
        return (path,)


def _preview(x0: torch.Tensor, size: int = 96):
    """A cheap RGB preview of the current faces (a horizontal strip F R B L U D) from latents."""
    from PIL import Image

    z = x0[:6].float().cpu()
    c = z.shape[1]
    k = max(1, c // 3)
    rgb = torch.stack([z[:, i * k : (i + 1) * k].mean(1) for i in range(3)], 1)
    lo, hi = rgb.amin(), rgb.amax()
    rgb = (rgb - lo) / (hi - lo + 1e-6)
    rgb = torch.nn.functional.interpolate(rgb, size=(size, size), mode="nearest")
    strip = torch.cat(list(rgb), dim=-1)  # (3, size, 6 size)
    arr = (strip.permute(1, 2, 0).numpy() * 255).clip(0, 255).astype("uint8")
    return ("JPEG", Image.fromarray(arr), 512)


class Pano360JointFaceSampler:
    """Generates a 360° panorama as six jointly generated cube faces (JoPano on Sana)."""

    @classmethod
    def INPUT_TYPES(cls):
        from ..pano_core.jopano.pipeline import BLENDS, DEFAULTS, MODES

        face = {"multiline": False, "default": "", "tooltip": "Prompt of this face (empty: the main prompt)."}
        return {
            "required": {
                "sana": ("SANA",),
                "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                      "tooltip": "Text for every face (per-face prompts below override it)."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
                "task": (list(TASKS), {"default": TASKS[0], "tooltip":
                    "T2P: all six faces from text. V2P: a view is given (connect 'view'); it is kept exactly."}),
                "mode": ([AUTO, *MODES], {"default": AUTO, "tooltip":
                    "auto: adapter+sync with an adapter, else sync (training-free). independent: six plain Sana images."}),
                "face_size": ("INT", {"default": DEFAULTS["face_size"], "min": 32, "max": 4096, "step": 32, "tooltip":
                    "Pixels per face (a multiple of the VAE factor, 32 for DC-AE f32); the ERP is 4x as wide."}),
                "steps": ("INT", {"default": DEFAULTS["steps"], "min": 1, "max": 1000}),
                "cfg": ("FLOAT", {"default": DEFAULTS["cfg"], "min": 0.0, "max": 30.0, "step": 0.1}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "blend": (list(BLENDS), {"default": "exact", "tooltip":
                    "Cross-face blending after decoding: exact (converged), gauss-seidel (JoPano's 200 sweeps), none."}),
            },
            "optional": {
                "adapter": ("JOPANO_ADAPTER",),
                "view": ("IMAGE", {"tooltip": "V2P: the given view (the first image of the batch)."}),
                "view_placement": (list(PLACEMENTS), {"default": "face F", "tooltip":
                    "face X: the view IS cube face X (square, resized to the face size). perspective photo: placed "
                    "with fov / yaw / pitch."}),
                "fov": ("FLOAT", {"default": 90.0, "min": 1.0, "max": 179.0, "step": 0.5}),
                "yaw": ("FLOAT", {"default": 0.0, "min": -180.0, "max": 180.0, "step": 0.5}),
                "pitch": ("FLOAT", {"default": 0.0, "min": -90.0, "max": 90.0, "step": 0.5}),
                **{f"prompt_{f}": ("STRING", dict(face)) for f in FACE_NAMES},
            },
        }

    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("faces", "erp", "metrics")
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "JoPano: the six cube faces F R B L U D generated jointly by Sana (trained Joint-Face adapter and/or "
        "training-free sync), optionally around a given view, blended across the cube edges. Outputs the faces "
        "(a 6-image batch), the ERP (4 x face wide) and the seam metrics (JSON, raw and blended)."
    )

    def sample(self, sana, prompt, negative_prompt, task, mode, face_size, steps, cfg, seed, blend,
               adapter=None, view=None, view_placement="face F", fov=90.0, yaw=0.0, pitch=0.0, **face_prompts):
        if not isinstance(sana, SanaModel):
            raise PanoInputError("sana: connect a Sana Loader (Pano360)")
        if task not in TASKS:
            raise PanoInputError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
        if view_placement not in PLACEMENTS:
            raise PanoInputError(f"view_placement: expected one of {', '.join(PLACEMENTS)}, got {view_placement!r}")
        pipe = sana.pipe
        if adapter is not None:
            if pipe.adapter_source != adapter:
                pipe.load_adapter(adapter)
        elif pipe.adapter is not None:
            pipe.adapter = None
            pipe.adapter_source = None
        kw = {}
        if task.startswith("V2P"):
            if view is None:
                raise PanoInputError("view: the V2P task needs a view image (connect one), or choose T2P")
            v = image_to_bchw(view, "view")[:1]
            kw["view"] = v
            if view_placement.startswith("face "):
                kw["view_face"] = view_placement[-1]
            else:
                kw.update(fov=float(fov), view_yaw=float(yaw), view_pitch=float(pitch))
        fp = {}
        for k, v in face_prompts.items():
            if not k.startswith("prompt_"):
                raise PanoInputError(f"{k}: unknown input")
            key = k[len("prompt_"):]
            if key.upper() not in FACE_NAMES:
                raise PanoInputError(f"{k}: face key {key!r} is not one of {' '.join(FACE_NAMES)}")
            if isinstance(v, str) and v.strip():
                fp[key.upper()] = v
        pbar = comfy.utils.ProgressBar(int(steps))

        def callback(i, n, x0):
            pbar.update_absolute(i + 1, n, _preview(x0))

        res = pipe(
            prompt if prompt.strip() else None, face_prompts=fp or None, negative_prompt=negative_prompt,
            mode=None if mode == AUTO else mode, face_size=int(face_size), steps=int(steps), cfg=float(cfg),
            seed=int(seed) % 2**63, blend=blend, callback=callback,
            interrupt=mm.throw_exception_if_processing_interrupted, progress=False, **kw,
        )
        metrics = json.dumps(res.metrics[0])
        return (bchw_to_image(res.faces), bchw_to_image(res.erp), metrics)


NODE_CLASS_MAPPINGS = {
    "Pano360SanaLoader": Pano360SanaLoader,
    "Pano360JointFaceAdapterLoader": Pano360JointFaceAdapterLoader,
    "Pano360JointFaceSampler": Pano360JointFaceSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "Pano360SanaLoader": "Sana Loader (Pano360)",
    "Pano360JointFaceAdapterLoader": "Joint-Face Adapter Loader",
    "Pano360JointFaceSampler": "Joint-Face Sampler (JoPano)",
}
