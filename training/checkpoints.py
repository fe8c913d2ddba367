"""Training checkpoints: written atomically, the last K kept, loaded without pickles.

A checkpoint is ``RUN/checkpoints/step-NNNNNN/`` with

* ``trainable.safetensors`` -- the trained parameters by name (the LoRA),
* ``optimizer.safetensors`` + ``optimizer.json`` -- the optimizer state (tensors / structure),
* ``state.json`` -- step counters, seed, scheduler state and anything else JSON-serialisable,
* ``rng.safetensors`` -- the torch CPU (and CUDA) generator states of the writing process.

It is written to ``step-NNNNNN.tmp`` and renamed into place, so a crash never leaves a half
checkpoint under a final name; older checkpoints beyond ``keep`` are removed afterwards.
Everything loads from safetensors and JSON only (no ``torch.load``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pano_core.errors import PanoInputError

__all__ = [
    "checkpoint_name",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_resume",
    "save_checkpoint",
    "load_checkpoint",
    "optimizer_to_tensors",
    "optimizer_from_tensors",
]

_STEP = re.compile(r"^step-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{int(step):06d}"


def list_checkpoints(run: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(step, folder)]`` of the complete checkpoints of a run, oldest first."""
    d = Path(run) / "checkpoints"
    out = []
    if d.is_dir():
        for p in d.iterdir():
            m = _STEP.match(p.name)
            if m and p.is_dir() and (p / "state.json").is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run: str | os.PathLike) -> Path | None:
    cks = list_checkpoints(run)
    return cks[-1][1] if cks else None


def resolve_resume(resume: str | None, run: str | os.PathLike) -> Path | None:
    """``None`` -> no resume; ``"latest"`` -> the newest checkpoint in ``run`` (error if none);
    a path -> that checkpoint folder (checked)."""
    if resume is None:
        return None
    if resume == "latest":
        p = latest_checkpoint(run)
        if p is None:
            raise PanoInputError(f"--resume: {run} has no checkpoints to resume from")
        return p
    p = Path(resume).expanduser()
    if not (p / "state.json").is_file():
        alt = Path(run) / "checkpoints" / str(resume)
        if (alt / "state.json").is_file():
            return alt
        raise PanoInputError(f"--resume: {resume} is not a checkpoint folder (no state.json)")
    return p


def optimizer_to_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and a JSON structure."""
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict] = {}
    for pid, st in state["state"].items():
        entry = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                key = f"state.{pid}.{k}"
                tensors[key] = v.detach().to("cpu").contiguous()
                entry[k] = {"tensor": key}
            else:
                entry[k] = {"value": v}
        meta_state[str(pid)] = entry
    return tensors, {"state": meta_state, "param_groups": state["param_groups"]}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of :func:`optimizer_to_tensors`."""
    state = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entry.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def save_checkpoint(
    run: str | os.PathLike,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict,
    state: dict,
    keep: int | None = None,
) -> Path:
    """Write a checkpoint atomically (temp folder renamed into place); keep the newest ``keep``."""
    root = Path(run) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / (checkpoint_name(step) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().to("cpu").contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    opt_t, opt_meta = optimizer_to_tensors(optimizer_state)
    save_file(opt_t, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
    save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(dict(state, step=int(step)), indent=1))
    if final.exists():  # re-saving the same step (a resumed run reaching it again)
        old = root / (checkpoint_name(step) + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    if keep is not None and keep > 0:
        for _, p in list_checkpoints(run)[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict, dict[str, torch.Tensor]]:
    """``(trainable, optimizer_state, state, rng)`` of a checkpoint folder."""
    p = Path(folder)
    try:
        trainable = load_file(str(p / "trainable.safetensors"))
        opt = optimizer_from_tensors(load_file(str(p / "optimizer.safetensors")), json.loads((p / "optimizer.json").read_text()))
        state = json.loads((p / "state.json").read_text())
        rng = load_file(str(p / "rng.safetensors"))
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise PanoInputError(f"--resume: {p} is not a complete checkpoint ({e})") from e
    return trainable, opt, state, rng
