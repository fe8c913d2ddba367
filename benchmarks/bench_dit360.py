"""Per-step cost of the DiT360 ComfyUI patch (circular token padding) over the unpatched Flux.

CPU (default): the tiny random Flux of the tests at a 64x128 token grid (1024x2048 px latent
size), real ComfyUI sampling (``comfy.sample.sample``), unpatched vs patched (padding 1 =
DiT360, wrapped ids, and padding 1 with per-step re-sync). Prints seconds/step, the ratio and
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
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY = ROOT / ".comfy" / "ComfyUI"

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


def _load_pack():
    name = "pano360_pack_bench"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
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
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = tiny_models.build_tiny_flux(0, "dev")
    clip = tiny_models.build_tiny_clip(0)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("This is a panorama. a snowy village"))
    h_tok, w_tok = 64, 128
    noise = torch.randn(1, 16, 2 * h_tok, 2 * w_tok, generator=torch.Generator().manual_seed(0))
    p = args.padding
    allowance = 1.05 + 2 * p / w_tok
    configs = {"unpatched": model}
    for id_mode, resync in (("wrapped", "none"), ("wrapped", "per step"), ("linear", "per step")):
        configs[f"padding {p} {id_mode:7s} {resync:8s}"] = P.apply_dit360_patch(model, p, id_mode, resync)
    _time_sampling(model, noise, cond, 1, 0)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.repeats):  # interleaved, min over repeats: robust on a shared machine
        for k, m in configs.items():
            times[k].append(_time_sampling(m, noise, cond, args.steps, 1, warmup=False))
    best = {k: min(v) for k, v in times.items()}
    base = best["unpatched"]
    print(f"tiny Flux, {h_tok}x{w_tok} tokens ({2 * w_tok * 8}x{2 * h_tok * 8} px), {torch.get_num_threads()} threads, "
          f"min of {args.repeats} interleaved runs of {args.steps} steps")
    print(f"  {'unpatched':30s} {base * 1000:8.1f} ms/step")
    rows = []
    for k, t in best.items():
        if k == "unpatched":
            continue
        ratio = t / base
        rows.append(ratio)
        print(f"  {k:30s} {t * 1000:8.1f} ms/step  ratio {ratio:.3f}  allowance {allowance:.3f}  "
              f"{'OK' if ratio <= allowance else 'OVER'}")
    return max(rows) <= allowance


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
    args = ap.parse_args(argv)
    if args.gpu:
        bench_gpu(args)
        return 0
    return 0 if bench_cpu(args) else 1


if __name__ == "__main__":
    raise SystemExit(main())
