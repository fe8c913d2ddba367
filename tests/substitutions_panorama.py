"""Workflow-test substitutions for the Panorama Patch workflows of other DiT families (merged by
tests/test_workflows.py): the family is read from the file names and CLIP type the loaders name
(Qwen-Image, FLUX.2), its loaders become the tiny models of tests/comfy_test_nodes (tiny DiT,
text encoder of the DiT's width, the family's VAE through ComfyUI's own detection), and a LoRA the
workflow names is written in that family's key format. Loaders naming anything else keep the
default substitutions of tests/comfy_harness.py (tiny FLUX.1)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_harness as ch  # noqa: E402

_DEFAULTS = ch.DEFAULT_SUBSTITUTIONS


def family_of_name(name: str | None) -> str | None:
    """'QwenImage' / 'Flux2' from a model file name or CLIP type, else None (FLUX.1 and others)."""
    n = (name or "").lower().replace("-", "_").replace(".", "_")
    if "qwen" in n:
        return "QwenImage"
    if "flux2" in n or "flux_2" in n or "mistral_3" in n:
        return "Flux2"
    return None


def _default(node_type: str, node: dict, ui_node: dict, ctx: dict):
    spec = _DEFAULTS[node_type]
    return spec(node, ui_node, ctx) if callable(spec) else spec


def sub_unet_loader(node: dict, ui_node: dict, ctx: dict):
    fam = family_of_name(node["inputs"].get("unet_name"))
    if fam is None:
        return _default("UNETLoader", node, ui_node, ctx)
    return {"class_type": "Pano360TestTinyDiT", "inputs": {"seed": 0, "family": fam}, "outputs": {0: 0}}


def sub_clip_loader(node: dict, ui_node: dict, ctx: dict):
    inp = node["inputs"]
    if family_of_name(inp.get("type")) is None and family_of_name(inp.get("clip_name")) is None:
        return _default("CLIPLoader", node, ui_node, ctx)
    return {"class_type": "Pano360TestTinyDiTCLIP", "inputs": {"seed": 0}}


def sub_vae_loader(node: dict, ui_node: dict, ctx: dict):
    fam = family_of_name(node["inputs"].get("vae_name"))
    if fam is None:
        return _default("VAELoader", node, ui_node, ctx)
    return {"class_type": "Pano360TestTinyFamilyVAE",
            "inputs": {"seed": 0, "family": "flux2" if fam == "Flux2" else "wan21 (qwen_image)"}}


def sub_lora_loader(node: dict, ui_node: dict, ctx: dict):
    name = node["inputs"].get("lora_name")
    fam = family_of_name(name)
    if fam is None:
        return _default(node["class_type"], node, ui_node, ctx)
    server = ctx.get("server")
    if server is not None and name:
        sys.path.insert(0, str(ch.TEST_NODES_DIR))
        try:
            import tiny_family_extras  # noqa: PLC0415
        finally:
            sys.path.remove(str(ch.TEST_NODES_DIR))
        path = Path(server.models_dir) / "loras" / name
        if not path.exists():
            tiny_family_extras.save_tiny_dit_lora(path, fam)
    return None


SUBSTITUTIONS = {
    "UNETLoader": sub_unet_loader,
    "CLIPLoader": sub_clip_loader,
    "VAELoader": sub_vae_loader,
    "LoraLoaderModelOnly": sub_lora_loader,
}
