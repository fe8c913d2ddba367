"""Which model files the shipped workflows need, and whether a ComfyUI has them.

Standard library only: ``scripts/workspace.py`` (which runs with ComfyUI's Python, perhaps before
anything is installed) loads this file directly, and ``pano360 doctor --comfyui PATH`` calls it.

A workflow (UI format, ``workflows/*.json``) names model files in the widgets of its loader nodes;
:data:`LOADERS` says which widget holds which kind of file and which ComfyUI model folder(s) it is
looked up in. :data:`KNOWN_WEIGHTS` says where the files of our templates come from and under
which licence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LOADERS", "KNOWN_WEIGHTS", "ModelNeed", "workflow_needs", "check_comfyui", "report"]

# node type -> [(widget index, model folders: the first is where a missing file goes, others are
# legacy folder names ComfyUI also searches)]
LOADERS: dict[str, list[tuple[int, tuple[str, ...]]]] = {
    "UNETLoader": [(0, ("diffusion_models", "unet"))],
    "CheckpointLoaderSimple": [(0, ("checkpoints",))],
    "LoraLoaderModelOnly": [(0, ("loras",))],
    "LoraLoader": [(0, ("loras",))],
    "Pano360DiT360LoraLoader": [(0, ("loras",))],
    "DualCLIPLoader": [(0, ("text_encoders", "clip")), (1, ("text_encoders", "clip"))],
    "CLIPLoader": [(0, ("text_encoders", "clip"))],
    "VAELoader": [(0, ("vae",))],
    "Pano360SanaLoader": [(0, ("diffusers", "sana"))],  # a diffusers folder
}

# file name -> (what it is and where to get it, licence, approximate size)
KNOWN_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "flux1-dev.safetensors": (
        "FLUX.1-dev transformer, black-forest-labs/FLUX.1-dev (flux1-dev.safetensors)",
        "FLUX.1 [dev] Non-Commercial License (no commercial use)", "23.8 GB"),
    "dit360_lora.safetensors": (
        "DiT360 panorama LoRA: adapter_model.safetensors of "
        "Insta360-Research/DiT360-Panorama-Image-Generation, renamed", "MIT (the base model's licence still applies)",
        ""),
    "clip_l.safetensors": ("CLIP-L text encoder, comfyanonymous/flux_text_encoders", "MIT", "0.25 GB"),
    "t5xxl_fp16.safetensors": ("T5-XXL text encoder (fp16), comfyanonymous/flux_text_encoders", "Apache-2.0",
                               "9.8 GB"),
    "ae.safetensors": ("FLUX VAE, ae.safetensors of black-forest-labs/FLUX.1-schnell (Apache-2.0) or FLUX.1-dev",
                       "Apache-2.0 (schnell copy)", "0.3 GB"),
    # Qwen-Image 360 (workflows/qwen_image_360_text_to_panorama.json)
    "qwen_image_fp8_e4m3fn.safetensors": (
        "Qwen-Image transformer (fp8), Comfy-Org/Qwen-Image_ComfyUI (split_files/diffusion_models/)", "Apache-2.0",
        "20.4 GB"),
    "qwen_2.5_vl_7b_fp8_scaled.safetensors": (
        "Qwen2.5-VL-7B text encoder (fp8), Comfy-Org/Qwen-Image_ComfyUI (split_files/text_encoders/)", "Apache-2.0",
        "9.4 GB"),
    "qwen_image_vae.safetensors": ("Qwen-Image VAE, Comfy-Org/Qwen-Image_ComfyUI (split_files/vae/)", "Apache-2.0",
                                   "0.25 GB"),
    "qwen_360_diffusion_lora.safetensors": (
        "Qwen-Image 360° panorama LoRA: the LoRA file of ProGamerGov/qwen-360-diffusion, renamed (or any Qwen-Image "
        "360° equirectangular LoRA)", "MIT (its model card; the base model's licence still applies)", ""),
    # FLUX.2 360 (workflows/flux2_360_text_to_panorama.json)
    "flux2_dev_fp8mixed.safetensors": (
        "FLUX.2 [dev] transformer (fp8 mixed), Comfy-Org/flux2-dev (split_files/diffusion_models/); original "
        "black-forest-labs/FLUX.2-dev", "FLUX.2-dev Non-Commercial License (no commercial use)", "35 GB"),
    "mistral_3_small_flux2_bf16.safetensors": (
        "FLUX.2 text encoder (Mistral Small 3.2 24B, bf16), Comfy-Org/flux2-dev (split_files/text_encoders/)",
        "Apache-2.0", "18 GB"),
    "flux2-vae.safetensors": ("FLUX.2 VAE, Comfy-Org/flux2-dev (split_files/vae/)",
                              "Apache-2.0 (the FLUX.2 autoencoder)", "0.33 GB"),
    "flux2_dev_360_erp_lora.safetensors": (
        "a 360° equirectangular LoRA trained on FLUX.2 [dev] (not Klein), renamed; no specific public one is "
        "confirmed by us", "its own model card (the FLUX.2-dev Non-Commercial License still applies)", ""),
    "SANA1.5_1.6B_1024px_diffusers": (
        "Sana 1.5 1.6B as a diffusers folder, Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers (a folder, "
        "not a file)", "the licence on its model card (NVIDIA's own terms; read them before use)", ""),
}


@dataclass(frozen=True)
class ModelNeed:
    """One model file a workflow names."""

    node_id: int | str
    node_type: str
    file: str
    folders: tuple[str, ...]


def workflow_needs(workflow: dict) -> list[ModelNeed]:
    """Model files named by the loader nodes of a UI-format workflow (muted/bypassed ones skipped)."""
    needs: list[ModelNeed] = []
    nodes = list(workflow.get("nodes", []))
    for sg in (workflow.get("definitions") or {}).get("subgraphs", []) or []:
        nodes += sg.get("nodes", [])
    for node in nodes:
        spec = LOADERS.get(node.get("type", ""))
        if not spec or node.get("mode", 0) in (2, 4):
            continue
        values = node.get("widgets_values") or []
        for idx, folders in spec:
            if idx < len(values) and isinstance(values[idx], str) and values[idx]:
                needs.append(ModelNeed(node.get("id"), node["type"], values[idx], folders))
    return needs


def _find(comfyui: Path, need: ModelNeed) -> Path | None:
    for folder in need.folders:
        p = comfyui / "models" / folder / need.file
        if p.is_file() or (p.is_dir() and any(p.iterdir())):  # diffusers models are folders
            return p
    return None


def check_comfyui(comfyui: str | Path, workflows: list[Path]) -> list[tuple[Path, list[tuple[ModelNeed, Path | None]]]]:
    """Per workflow: its model needs and the file found for each (``None`` if missing)."""
    root = Path(comfyui)
    out = []
    for wf in workflows:
        needs = workflow_needs(json.loads(Path(wf).read_text(encoding="utf-8")))
        seen: dict[tuple[str, str], ModelNeed] = {}
        for n in needs:
            seen.setdefault((n.folders[0], n.file), n)
        out.append((Path(wf), [(n, _find(root, n)) for n in seen.values()]))
    return out


def report(comfyui: str | Path, workflows: list[Path]) -> tuple[str, int]:
    """Human-readable report and the number of missing files."""
    root = Path(comfyui)
    lines = [f"ComfyUI: {root}"]
    if not (root / "main.py").is_file():
        lines.append(f"  warning: no main.py in {root}; is this a ComfyUI folder?")
    missing_total = 0
    for wf, items in check_comfyui(root, workflows):
        if not items:
            lines.append(f"{wf.name}: needs no model files (runs as shipped)")
            continue
        missing = [n for n, found in items if found is None]
        missing_total += len(missing)
        state = "ready" if not missing else f"{len(missing)} of {len(items)} model files missing"
        lines.append(f"{wf.name}: {state}")
        for n, found in items:
            info = KNOWN_WEIGHTS.get(n.file)
            if found is not None:
                lines.append(f"  [ok]      {found.relative_to(root)}")
            else:
                dest = root / "models" / n.folders[0]
                lines.append(f"  [missing] {n.file} ({n.node_type}) -> put it in {dest}/")
            if info is not None and found is None:
                what, licence, size = info
                lines.append(f"            {what}; licence: {licence}" + (f"; {size}" if size else ""))
    return "\n".join(lines), missing_total
