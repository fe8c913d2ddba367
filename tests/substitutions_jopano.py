"""Workflow-test substitutions for the JoPano nodes (merged by tests/test_workflows.py): the Sana
folder or single file a workflow names is written as a tiny random Sana (tests/tiny_sana.py) under
that name in the server's models folders, a named adapter as a zero-initialised tiny adapter, and
the face size shrinks to the tiny model's 32 px."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_sana  # noqa: E402


def install_tiny_sana(server, name: str) -> None:
    """Write a tiny Sana as ``models/diffusers/<name>`` (a folder name) or
    ``models/diffusion_models/<name>`` (a .safetensors name, plus ``models/diffusers/tiny_sana`` for
    its text encoder and VAE)."""
    models = Path(server.models_dir)
    if name.endswith(".safetensors"):
        f = models / "diffusion_models" / name
        if not f.exists():
            tiny_sana.save_tiny_single_file(f)
        name = "tiny_sana"
    d = models / "diffusers" / name
    if not (d / "model_index.json").exists():
        tiny_sana.save_tiny_sana(d)


def install_tiny_adapter(server, name: str) -> Path:
    from pano_core.jopano.adapter import JointFaceAdapterSet, save_adapter_set

    f = Path(server.models_dir) / "pano360" / name
    if not f.exists():
        tr = tiny_sana.build_tiny_transformer()
        save_adapter_set(f, JointFaceAdapterSet.for_transformer(tr))
    return f


def sub_sana_loader(node: dict, ui_node: dict, ctx: dict) -> dict | None:
    server = ctx.get("server")
    inp = node["inputs"]
    if server is not None:
        install_tiny_sana(server, inp["model"])
        for k in ("text_encoder", "vae"):
            if inp.get(k) not in (None, "(from model)"):
                install_tiny_sana(server, inp[k])
    return None


def sub_adapter_loader(node: dict, ui_node: dict, ctx: dict) -> dict | None:
    server = ctx.get("server")
    if server is not None:
        install_tiny_adapter(server, node["inputs"]["adapter_name"])
    return None


def sub_sampler(node: dict, ui_node: dict, ctx: dict) -> dict:
    inp = dict(node["inputs"])
    inp["face_size"] = tiny_sana.TINY_FACE
    inp["steps"] = min(int(inp.get("steps", 2)), ctx.get("max_steps", 2))
    return {"class_type": node["class_type"], "inputs": inp}


SUBSTITUTIONS = {
    "Pano360SanaLoader": sub_sana_loader,
    "Pano360JointFaceAdapterLoader": sub_adapter_loader,
    "Pano360JointFaceSampler": sub_sampler,
}
