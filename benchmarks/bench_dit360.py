"""Per-step cost of the DiT360 ComfyUI patch (circular token padding) over the unpatched Flux.

CPU (default): the tiny random Flux of the tests at a 64x128 token grid (1024x2048 px latent
size), real ComfyUI sampling (``comfy.sample.sample``), unpatched vs patched (padding 1 =
DiT360, wrapped ids, and padding 1 with per-step re-sync). Contenders run in interleaved rounds
(one sampling of each per round, ``--repeats`` rounds after a warm-up) and the table shows the
median of the rounds (a minimum hides the spread; medians of interleaved rounds are what load
from other processes affects alike). Two references separate the costs:

* ``unpatched`` at the panorama's size: the ratio ``patched / unpatched`` is the whole cost;
* ``unpatched, padded width``: the same model on a latent that is ``2p`` token columns wider,
  i.e. the inherent cost of the extra tokens; ``patched / unpatched padded`` is what the
  wrappers themselves add (padding, id rewrite, re-sync, crop).

``--before DIR`` also times the patch of an older checkout (``DIR/nodes/_dit360_patch.py``
with its ``pano_core``, e.g. ``git archive <commit> __init__.py nodes pano_core | tar -x -C
DIR``) in the same rounds. Prints ms/step, the ratios, the spread (min..max of the rounds) and
the allowance ``1.05 + 2p/w`` (5 % plus the extra tokens' share).

``--gpu``: one step of a random-weight model with FLUX.1-dev's real configuration (hidden 3072,
19 double + 38 single blocks, 24 heads, T5 context 4096 x 512 tokens) at 2048x1024 in bf16,
patched vs unpatched: seconds/step and peak GPU memory. Needs a CUDA GPU with >= 40 GB.

Run from the repository root:  python benchmarks/bench_dit360.py [--gpu] [--steps N] [--repeats R]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY = Path(os.environ.get("COMFYUI_PATH") or ROOT / ".comfy" / "ComfyUI")

# FLUX.1-dev as ComfyUI detects it (comfy/model_detection.py for a flux-dev checkpoint)
FLUX_DEV_UNET_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
    "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
    "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}


def _setup_comfy(gpu: bool):
    sys.path.insert(0, str(COMFY))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = not gpu
    import comfy.model_management  # noqa: F401


def _load_pack(root: Path = ROOT, name: str = "pano360_pack_bench"):
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module(f"{name}.nodes._dit360_patch")


def _time_sampling(model, noise, cond, steps, repeats, sync=None, warmup=True):
    import comfy.sample

    def once():
        if sync:
            sync()
        t = time.perf_counter()
        comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", cond, cond, noise * 0, seed=0,
                            disable_pbar=True)
        if sync:
            sync()
        return (time.perf_counter() - t) / steps

    if warmup:
        once()  # warm-up (model load, allocator)
    if repeats == 0:
        return 0.0
    return statistics.median(once() for _ in range(repeats))


def bench_cpu(args):
    import torch

    _setup_comfy(gpu=False)
    sys.path.insert(0, str(ROOT / "tests" / "comfy_test_nodes"))
    import tiny_models

    P = _load_pack()
    old = _load_pack(Path(args.before).resolve(), "pano360_pack_bench_before") if args.before else None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = tiny_models.build_tiny_flux(0, "dev")
    clip = tiny_models.build_tiny_clip(0)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("This is a panorama. a snowy village"))
    h_tok, w_tok = 64, 128
    p = args.padding
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 16, 2 * h_tok, 2 * w_tok, generator=g)
    noise_wide = torch.randn(1, 16, 2 * h_tok, 2 * (w_tok + 2 * p), generator=g)
    allowance = 1.05 + 2 * p / w_tok
    configs = {"unpatched": (model, noise), f"unpatched, padded width (+{2 * p} cols)": (model, noise_wide)}
    for id_mode, resync in (("wrapped", "none"), ("wrapped", "per step")):
        if old is not None:
            configs[f"before: padding {p} {id_mode} {resync}"] = (
                old.apply_dit360_patch(model, p, id_mode, resync), noise)
        configs[f"padding {p} {id_mode} {resync}"] = (P.apply_dit360_patch(model, p, id_mode, resync), noise)
    for m, x in configs.values():
        _time_sampling(m, x, cond, 1, 0)  # warm-up of each (first-call costs)
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.repeats):  # interleaved rounds; medians below
        for k, (m, x) in configs.items():
            times[k].append(_time_sampling(m, x, cond, args.steps, 1, warmup=False))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["unpatched"]
    wide = med[f"unpatched, padded width (+{2 * p} cols)"]
    print(f"tiny Flux, {h_tok}x{w_tok} tokens ({2 * w_tok * 8}x{2 * h_tok * 8} px), {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved rounds of {args.steps} step(s)")
    print("| model | ms/step (median) | min..max ms | / unpatched | / unpatched padded width | allowance |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    ok = True
    for k, t in med.items():
        lo, hi = min(times[k]) * 1e3, max(times[k]) * 1e3
        ratio = t / base
        extra = "" if k == "unpatched" else f"{t / wide:.3f}"
        allow = ""
        if k.startswith("padding"):
            allow = f"{allowance:.3f} {'OK' if ratio <= allowance else 'OVER'}"
            ok = ok and ratio <= allowance
        print(f"| {k} | {t * 1e3:.1f} | {lo:.0f}..{hi:.0f} | {ratio:.3f} | {extra} | {allow} |")
    return ok


def bench_gpu(args):
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device")
    _setup_comfy(gpu=True)
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher

    P = _load_pack()
    cfg = comfy.model_detection.model_config_from_unet_config(dict(FLUX_DEV_UNET_CONFIG))
    cfg.set_inference_dtype(torch.bfloat16, None)
    dev = comfy.model_management.get_torch_device()
    base_model = cfg.get_model({}, "", device=dev)
    with torch.no_grad():
        g = torch.Generator(device=dev).manual_seed(0)
        for prm in base_model.diffusion_model.parameters():
            prm.copy_((torch.randn(prm.shape, generator=g, device=dev) * 0.02).to(prm.dtype))
    model = comfy.model_patcher.ModelPatcher(base_model, load_device=dev, offload_device=dev)
    ctx = torch.randn(1, 512, 4096, device=dev) * 0.1
    pooled = torch.randn(1, 768, device=dev) * 0.1
    cond = [[ctx, {"pooled_output": pooled, "guidance": 2.8}]]
    noise = torch.randn(1, 16, 128, 256, device="cpu", generator=torch.Generator().manual_seed(0))  # 2048x1024

    def run(m, label):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = _time_sampling(m, noise, cond, args.steps, args.repeats, sync=torch.cuda.synchronize)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"  {label:34s} {t:7.3f} s/step  peak {peak:6.2f} GiB")
        return t

    print(f"FLUX.1-dev config, random bf16 weights, 2048x1024 (64x128 tokens + 512 text), {torch.cuda.get_device_name()}")
    base = run(model, "unpatched")
    for p in (1, 4):
        t = run(P.apply_dit360_patch(model, p, "wrapped", "per step"), f"padding {p} wrapped per step")
        print(f"    ratio {t / base:.3f}  allowance {1.05 + 2 * p / 128:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="FLUX.1-dev-sized random model in bf16 on CUDA")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--padding", type=int, default=1)
    ap.add_argument("--before", default=None, help="folder with an older checkout's __init__.py, nodes/, pano_core/")
    args = ap.parse_args(argv)
    if args.gpu:
        bench_gpu(args)
        return 0
    return 0 if bench_cpu(args) else 1


if __name__ == "__main__":
    raise SystemExit(main())
