"""Workflow-test substitutions for the DiT360 ComfyUI nodes (merged by tests/test_workflows.py):
panorama latents and the padded shift shrink to the tiny test size (128x64 px)."""

from __future__ import annotations


def sub_panorama_latent(node: dict, ui_node: dict, ctx: dict) -> dict:
    side = ctx.get("max_side", 128)
    return {"class_type": node["class_type"],
            "inputs": {**node["inputs"], "size": "custom", "width": side, "height": side // 2}}


def sub_panorama_shift(node: dict, ui_node: dict, ctx: dict) -> dict:
    side = ctx.get("max_side", 128)
    return {"class_type": node["class_type"], "inputs": {**node["inputs"], "width": side, "height": side // 2}}


SUBSTITUTIONS = {
    "Pano360EmptyPanoramaLatent": sub_panorama_latent,
    "Pano360FluxPanoramaShift": sub_panorama_shift,
}
