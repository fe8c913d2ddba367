"""Shared pieces of the training tests: a tiny saved Flux, a tiny prepared set, a training run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from pano360_training import cli
from pano360_training.prepare import prepare_dataset
from safetensors.torch import load_file

from pano_core.io import write_image

RES = 32  # ERP 64x32 pixels -> latent 4x8 -> 2x4 tokens

# Overrides that make the official recipe run in seconds on the tiny model.
FAST = [
    "model.dtype=fp32", "train.gradient_accumulation=1", "lora.rank=4", "lora.alpha=4",
    "data.max_sequence_length=16", "sample.steps=2", "sample.every=0", "checkpoint.every=2", "log.every=1",
    "losses.yaw.from_step=0", "losses.cube.from_step=0", "optimizer.lr=1e-3",
]


def _sets(items):
    out = []
    for s in items:
        out += ["--set", s]
    return out


def _pano(h, i):
    x = torch.linspace(0, 2 * torch.pi, 2 * h + 1)[:-1]
    return torch.stack([
        0.5 + 0.4 * torch.sin(x + i).expand(h, -1),
        0.5 + 0.4 * torch.cos(2 * x).expand(h, -1),
        torch.linspace(0, 1, h)[:, None].expand(h, 2 * h),
    ])[None]


def make_prepared_set(root: Path) -> Path:
    """3 wrapping test panoramas (one with a supervision mask) and 2 photos, prepared at RES."""
    raw = root / "raw"
    raw.mkdir()
    for i in range(3):
        write_image(raw / f"pano{i}.png", _pano(RES, i))
        (raw / f"pano{i}.txt").write_text(f"a striped test panorama {i}")
    (raw / "masks").mkdir()
    m = torch.ones(1, 1, RES, 2 * RES)
    m[..., : RES // 4, :] = 0
    write_image(raw / "masks" / "pano2.png", m)
    photos = root / "photos"
    photos.mkdir()
    for i in range(2):
        write_image(photos / f"photo{i}.png", torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(i)))
        (photos / f"photo{i}.txt").write_text(f"a perspective photo {i}")
    prepare_dataset(raw, root / "prepared", resolution=RES, photos=photos, progress=False)
    return root / "prepared"


def _train(tiny_flux, data, run, extra=(), steps=4, resume=None):
    argv = ["dit360", "--data", str(data), "--output", str(run), "--model", str(tiny_flux), "--max-steps",
            str(steps), "--resolution", str(RES), "--no-progress", *_sets(FAST + list(extra))]
    if resume is not None:
        argv += ["--resume"] + ([] if resume == "latest" else [resume])
    rc = cli.main(argv)
    assert rc == 0
    return run


def _losses(run):
    return [json.loads(x) for x in (Path(run) / "logs" / "losses.jsonl").read_text().splitlines()]


def ddp_and_single_grads(common: list[str], tmp_path: Path, env: dict, port_base: int):
    """The step-0 gradients of ``pano360-train <common>`` run as 2 CPU processes x batch 1 (gloo DDP
    through ``accelerate launch --multi_gpu``: accelerate's ``--cpu`` launcher starts one process
    unless mpirun is set up) and in this process as 1 x batch 2. Returns ``(ddp, single)`` dicts;
    the runs are ``tmp_path/ddp`` and ``tmp_path/one``."""
    ddp, one = tmp_path / "ddp.safetensors", tmp_path / "one.safetensors"
    r = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port_base + os.getpid() % 1000),
         "-m", "pano360_training", *common, "--output", str(tmp_path / "ddp"),
         "--set", "train.batch_size=1", "--set", f"debug.grad_dump={ddp}"],
        env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert cli.main([*common, "--output", str(tmp_path / "one"), "--set", "train.batch_size=2",
                     "--set", f"debug.grad_dump={one}"]) == 0  # the same code in this process: 1 x batch 2
    return load_file(ddp), load_file(one)
