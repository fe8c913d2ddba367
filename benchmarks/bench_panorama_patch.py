"""Per-step cost of ``Pano360PanoramaPatch`` (issue 15) for every supported DiT family.

CPU: the tiny random models of the tests (FLUX.1 from tests/comfy_test_nodes/tiny_models.py, the
other families from tests/comfy_test_nodes/tiny_dits.py), real ComfyUI sampling
(``comfy.sample.sample``, euler, cfg 1). Per family the contenders are

* ``unpatched`` at the panorama's latent size;
* ``unpatched, padded width``: the same model on a latent ``2 * padding`` tokens wider, i.e. the
  inherent cost of the extra tokens;
* ``latent``: the latent-level patch (every family), and ``token``: DiT360's wrapped ids where
  offered (FLUX.1, FLUX.2: ``post_input``; Chroma, Qwen-Image, HunyuanImage 2.1, Wan 2.1 / 2.2: the
  latent level plus the wrapped rotary embedding in every block, nodes/_panorama_tokens.py).

All contenders of all families run in interleaved rounds (one sampling of each per round,
``--repeats`` rounds after a warm-up); the table shows medians of the rounds. Per patched
contender: ``ratio = patched / unpatched``, the token share ``(w + 2p) / w`` (padded / unpadded
image tokens) and the overhead beyond the share ``ratio / share`` against the target ≤ 1.05
(met / not met); ``/ padded`` is the measured ``patched / unpatched padded width`` for comparison
(the share is the nominal cost of the extra tokens, the padded-width reference the measured one).
Every row also shows the minor page faults per step (median; ``getrusage``).

Allocator (``--malloc``): on CPU, ComfyUI's attention (sub-quadratic, ``baddbmm`` + ``softmax``)
allocates several MB per call for the score matrices (about 9 MB each for the two-frame Wan
latents). glibc's malloc adapts its mmap / trim thresholds to the history of allocations, so
depending on that history such buffers are either reused or handed back to the kernel and faulted
in again (thousands of page faults per step): whichever contender happens to be in that state pays
1.3-1.9x, with or without the patch (this was the Wan 2.1 / 2.2 "miss", see benchmarks/RESULTS.md).
``fixed`` (default) sets ``mallopt`` before torch is imported: no mmap for any size (glibc caps
the mmap threshold at 32 MiB, and mmapped buffers are faulted in at every call: with the threshold
at 32 MiB the 24x48-token Wan runs still faulted 11 000+ times per step), trim threshold 1 GiB,
top pad 64 MiB, so every contender reuses its buffers from the heap; ``default`` keeps glibc's adaptive behaviour to reproduce the
effect. Only glibc is affected; elsewhere ``fixed`` does nothing (and says so).

Run from the repository root:  python benchmarks/bench_panorama_patch.py [--steps N] [--repeats R]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY = Path(os.environ.get("COMFYUI_PATH") or ROOT / ".comfy" / "ComfyUI")
TARGET = 1.05
FAMILIES = ("Flux", "Flux2", "Chroma", "ChromaRadiance", "QwenImage", "HunyuanImage21", "HunyuanImage21Refiner", "Lumina2",
            "HiDream", "WAN21", "WAN21_Vace", "WAN21_Camera", "WAN22", "WAN21_HuMo", "WAN22_S2V", "WAN22_Animate")


def _fix_malloc() -> str:
    """Pin glibc's malloc thresholds (see the module docstring); returns what was done, for the header."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return "malloc: no glibc mallopt here, allocator left as is"
    m_trim, m_top_pad, m_mmap_max = -1, -2, -4  # glibc's M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX
    ok = [mallopt(m_mmap_max, 0), mallopt(m_trim, 1 << 30), mallopt(m_top_pad, 64 << 20)]
    if not all(ok):
        return f"malloc: mallopt refused ({ok}), allocator partly adaptive"
    return "malloc: glibc fixed (no mmap, trim threshold 1 GiB, top pad 64 MiB)"


def _minflt() -> int:
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _setup_comfy():
    sys.path.insert(0, str(COMFY))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401

    sys.path.insert(0, str(ROOT / "tests" / "comfy_test_nodes"))


def _load_pack(name: str = "pano360_pack_bench_panorama"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module(f"{name}.nodes.panorama"), importlib.import_module(f"{name}.nodes._panorama_patch")


def _sample_time(model, noise, cond, steps):
    """(seconds per step, minor page faults per step) of one sampling."""
    import comfy.sample

    f = _minflt()
    t = time.perf_counter()
    comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", cond, cond, noise * 0, seed=0,
                        disable_pbar=True)
    return (time.perf_counter() - t) / steps, (_minflt() - f) / steps


def _family_setup(fam, tiny_models, tiny_dits, P, h_tok, w_tok, p):
    """(model, cond, noise, wide noise, patch width) for one family at an h_tok x w_tok token grid."""
    import torch

    patch = P.FAMILIES[fam].patch
    h, w, wide = h_tok * patch, w_tok * patch, (w_tok + 2 * p) * patch
    g = torch.Generator().manual_seed(0)
    if fam == "Flux":
        model = tiny_models.build_tiny_flux(0, "dev")
        clip = tiny_models.build_tiny_clip(0)
        cond = clip.encode_from_tokens_scheduled(clip.tokenize("This is a panorama. a snowy village"))
        shape, shape_w = (1, 16, h, w), (1, 16, h, wide)
    else:
        model = tiny_dits.build(fam, 0)
        cond = tiny_dits.cond(fam, 0)
        shape, shape_w = tiny_dits.latent_shape(fam, 1, h, w), tiny_dits.latent_shape(fam, 1, h, wide)
    return model, cond, torch.randn(shape, generator=g), torch.randn(shape_w, generator=g)


def bench(args):
    malloc = _fix_malloc() if args.malloc == "fixed" else "malloc: glibc's adaptive default"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    _setup_comfy()
    import tiny_dits
    import tiny_models

    node, P = _load_pack()
    assert set(FAMILIES) == set(P.FAMILIES), "benchmark families out of date with nodes/_panorama_patch.py"
    p, h_tok, w_tok = args.padding, args.tokens_h, args.tokens_w
    share = (w_tok + 2 * p) / w_tok
    configs: dict[tuple[str, str], tuple] = {}
    for fam in args.families:
        model, cond, noise, noise_wide = _family_setup(fam, tiny_models, tiny_dits, P, h_tok, w_tok, p)
        configs[fam, "unpatched"] = (model, noise, cond)
        configs[fam, "unpatched, padded width"] = (model, noise_wide, cond)
        configs[fam, "latent"] = (node.Pano360PanoramaPatch().patch(model, p, "latent")[0], noise, cond)
        if P.FAMILIES[fam].token_level:
            configs[fam, "token"] = (node.Pano360PanoramaPatch().patch(model, p, "token")[0], noise, cond)
    for m, x, c in configs.values():
        _sample_time(m, x, c, 1)  # warm-up of each (model load, first-call costs)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in configs}
    faults: dict[tuple[str, str], list[float]] = {k: [] for k in configs}
    t0 = time.perf_counter()
    for _ in range(args.repeats):  # interleaved rounds; medians below
        for k, (m, x, c) in configs.items():
            dt, nf = _sample_time(m, x, c, args.steps)
            times[k].append(dt)
            faults[k].append(nf)
    wall = time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in times.items()}
    flt = {k: statistics.median(v) for k, v in faults.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"tiny random models, {h_tok}x{w_tok} image tokens, padding {p} token(s) per side, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds of {args.steps} step(s) "
          f"({wall:.0f} s of rounds), load average at the end {load:.2f}; {malloc}")
    print(f"token share (padded / unpadded image tokens) = ({w_tok} + {2 * p}) / {w_tok} = {share:.4f}; "
          f"target: ratio / share <= {TARGET}")
    print("| family | level | unpatched ms/step | padded width ms/step | patched ms/step (min..max) | "
          "ratio patched / unpatched | token share | overhead beyond share (ratio / share) | "
          "/ padded width (measured) | ≤ 1.05 | page faults / step (unpatched, padded, patched) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    ok = True
    for fam in args.families:
        base, wide = med[fam, "unpatched"], med[fam, "unpatched, padded width"]
        for level in ("latent", "token"):
            if (fam, level) not in med:
                continue
            t = med[fam, level]
            lo, hi = min(times[fam, level]) * 1e3, max(times[fam, level]) * 1e3
            ratio = t / base
            over = ratio / share
            met = over <= TARGET
            ok = ok and met
            print(f"| {P.FAMILIES[fam].name} | {level} | {base * 1e3:.2f} | {wide * 1e3:.2f} | "
                  f"{t * 1e3:.2f} ({lo:.2f}..{hi:.2f}) | {ratio:.3f} | {share:.4f} | **{over:.3f}** | "
                  f"{t / wide:.3f} | {'met' if met else 'not met'} | "
                  f"{flt[fam, 'unpatched']:.0f}, {flt[fam, 'unpatched, padded width']:.0f}, {flt[fam, level]:.0f} |")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="sampling steps per timed call")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved rounds")
    ap.add_argument("--padding", type=int, default=1, help="token columns per side")
    ap.add_argument("--tokens-h", type=int, default=16, help="image token rows")
    ap.add_argument("--tokens-w", type=int, default=32, help="image token columns (2:1 panorama)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0 = torch's default); 1 is steadier on a CPU shared with other processes")
    ap.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                    help="glibc malloc thresholds: fixed (default; see the docstring) or glibc's adaptive default")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    args = ap.parse_args(argv)
    return 0 if bench(args) else 1


if __name__ == "__main__":
    raise SystemExit(main())
