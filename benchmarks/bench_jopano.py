"""Per-step cost of JoPano's modes over ``independent`` (six plain Sana faces).

One "step" is one transformer call on a panorama's six faces with classifier-free guidance, the
way :class:`pano_core.jopano.pipeline.JoPanoPipeline` calls it (batch 12 = 6 faces x [uncond,
cond], 300 text tokens), inside each mode's context:

* ``independent`` -- plain Sana;
* ``sync`` -- training-free joint-face sync (joint ``attn1``, cube-padded GLUMBConv convs);
* ``adapter`` -- the Joint-Face adapter at its default width (half the model width);
* ``adapter+sync`` -- both;
* ``adapter-full`` -- the adapter at the full model width (for comparison).

Two models (random weights):

* ``tiny``: the tests' tiny Sana (tests/tiny_sana.py) at 64 px faces;
* ``sana1.6b-block``: Sana 1.6B's real configuration (width 2240 = 70 x 32 heads, cross 20 x
  112, caption 2304, Sana 1.5's qk_norm) with ONE block, at 6 x 512 px faces (16 x 16 tokens per
  face with the f32 DC-AE). The embeddings and output layer are included (a small share).

Rounds are interleaved (every round times every mode once, in a rotating order), the reported
figure is the median over rounds; the ratio is mode / independent of the same round's medians.
``--gpu``: the same on CUDA in bf16 with the full 20-block model at 6x512 and 6x1024, with peak
memory (needs a GPU; none was lent when these results were taken).

Run from the repository root:  python benchmarks/bench_jopano.py [--rounds R] [--only tiny|block]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

MODES = ("independent", "sync", "adapter", "adapter+sync", "adapter-full")

SANA16_BLOCK = dict(in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=1,
                    num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
                    caption_channels=2304, mlp_ratio=2.5, sample_size=32, patch_size=1, qk_norm="rms_norm_across_heads")


def _contexts(transformer, adapters: dict):
    from pano_core.jopano.adapter import adapters_attached
    from pano_core.jopano.sync import joint_face_sync

    def ctx(mode):
        stack = contextlib.ExitStack()
        if mode.startswith("adapter"):
            stack.enter_context(adapters_attached(transformer, adapters["full" if mode == "adapter-full" else "half"]))
        if "sync" in mode:
            stack.enter_context(joint_face_sync(transformer=transformer))
        return stack

    return ctx


def _bench(transformer, face_tokens: int, text_dim: int, rounds: int, dtype, device, label: str, inner: int = 1) -> dict:
    from pano_core.jopano.adapter import JointFaceAdapterConfig, JointFaceAdapterSet

    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    layers = transformer.config.num_layers
    half = JointFaceAdapterSet(JointFaceAdapterConfig(num_layers=layers, model_dim=width))
    full = JointFaceAdapterSet(JointFaceAdapterConfig(num_layers=layers, model_dim=width, inner_dim=width))
    for ad in (half, full):
        for blk in ad:  # a trained adapter: non-zero output projection
            torch.nn.init.normal_(blk.out.weight, std=0.02)
        ad.to(device, dtype)
    transformer.to(device, dtype)
    ctx = _contexts(transformer, {"half": half, "full": full})
    g = torch.Generator().manual_seed(0)
    c = transformer.config.in_channels
    x = torch.randn(12, c, face_tokens, face_tokens, generator=g).to(device, dtype)
    enc = torch.randn(12, 300, text_dim, generator=g).to(device, dtype)
    mask = torch.ones(12, 300, device=device)
    t = torch.full((12,), 500.0, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(mode):
        with ctx(mode), torch.no_grad():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(inner):
                transformer(x, encoder_hidden_states=enc, encoder_attention_mask=mask, timestep=t, return_dict=False)
            sync()
            return (time.perf_counter() - t0) / inner, (time.process_time() - c0) / inner

    for m in MODES:  # warm-up
        step(m)
    wall = {m: [] for m in MODES}
    cpu = {m: [] for m in MODES}
    load = []
    for r in range(rounds):
        order = MODES[r % len(MODES):] + MODES[: r % len(MODES)]
        for m in order:
            w, c = step(m)
            wall[m].append(w)
            cpu[m].append(c)
        load.append(os.getloadavg()[0])
    med = {m: statistics.median(v) for m, v in wall.items()}
    medc = {m: statistics.median(v) for m, v in cpu.items()}
    print(f"\n{label}: {rounds} interleaved rounds x {inner} calls, load avg {min(load):.1f}-{max(load):.1f}, "
          f"torch threads {torch.get_num_threads()}")
    print("| mode | wall s/step (median) | × independent | CPU s/step (all threads) | × independent |")
    print("|---|---:|---:|---:|---:|")
    for m in MODES:
        print(f"| {m} | {med[m]:.4f} | {med[m] / med['independent']:.2f} | {medc[m]:.4f} | "
              f"{medc[m] / medc['independent']:.2f} |")
    return med


def bench_tiny(rounds: int) -> dict:
    import tiny_sana

    tr = tiny_sana.build_tiny_transformer()
    return _bench(tr, 64 // 4, tiny_sana.TEXT_HIDDEN, rounds, torch.float32, torch.device("cpu"),
                  "tiny Sana, 6 x 64 px faces (16 x 16 tokens), CFG batch 12", inner=10)


def bench_block(rounds: int) -> dict:
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(0)
    tr = SanaTransformer2DModel(**SANA16_BLOCK).eval()
    return _bench(tr, 512 // 32, 2304, rounds, torch.float32, torch.device("cpu"),
                  "Sana 1.6B configuration, 1 block, 6 x 512 px faces (16 x 16 tokens), CFG batch 12, fp32 CPU")


def bench_gpu(rounds: int) -> None:
    from diffusers import SanaTransformer2DModel

    dev = torch.device("cuda")
    tr = SanaTransformer2DModel(**{**SANA16_BLOCK, "num_layers": 20}).eval()
    for face in (512, 1024):
        torch.cuda.reset_peak_memory_stats()
        _bench(tr, face // 32, 2304, rounds, torch.bfloat16, dev, f"Sana 1.6B (20 blocks) bf16, 6 x {face} px faces")
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=("tiny", "block"), default=None)
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args(argv)
    if args.gpu:
        bench_gpu(args.rounds)
        return 0
    if args.only in (None, "tiny"):
        bench_tiny(max(args.rounds, 9))
    if args.only in (None, "block"):
        bench_block(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
