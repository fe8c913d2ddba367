"""Benchmark: the seam-blending hot paths before/after issue 14 (points 17 and 18), in one run.

Usage:  python benchmarks/bench_seams_hot.py --before DIR [--sizes 1024,2048] [--rounds 5] [--threads 2]

``DIR`` holds an older ``pano_core`` (``git archive <commit> pano_core | tar -x -C DIR``); it is
imported as a second package next to this checkout's, and the two are run in interleaved rounds
(old, new, old, new, ...), medians reported, so load from other processes hits both alike.

1. ``cube_adjacency(S)`` on its first call (cache cleared before each call): wall time, and the peak
   resident memory of a fresh process making that one call (minus the same process without it).
2. ``blend_cube_faces`` on one cubemap (6 faces x 3 channels, float32, faces with a per-face gain)
   with ``gauss-seidel`` (200 sweeps, spectral) and ``exact``: wall time and process CPU time,
   adjacency cached (warm), max |new - old|; peak memory of one call in a fresh process.
3. The DST-I length: ``scipy.fft.idstn`` type 1 on (3, m, m) for m = S - 2 and m = S - 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MiB = 2**20


def load_as(name: str, folder: Path):
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def faces_for(s: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(6, 3, 8, 8, generator=g)
    faces = torch.nn.functional.interpolate(base, size=(s, s), mode="bilinear", align_corners=False)
    gain = torch.tensor([1.0, 0.8, 1.15, 0.9, 1.1, 0.85]).view(6, 1, 1, 1)
    return (faces * gain).contiguous()


def child_peak(code: str, root: str) -> int:
    """Peak resident memory (VmHWM of the child's own address space, bytes) of ``python -c code``
    run with ``root`` first on sys.path. (``ru_maxrss`` would include the parent's memory copied at
    fork, which is large here.)"""
    env = dict(os.environ, PYTHONPATH=root)
    tail = "; print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    r = subprocess.run([sys.executable, "-c", code.rstrip("; ") + tail], cwd=root, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return int(r.stdout.split()[-1]) * 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--sizes", default="1024,2048")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = Path(args.before).resolve()
    load_as("pano_core_before", before / "pano_core")
    old_adj = importlib.import_module("pano_core_before.seams.adjacency")
    old_poi = importlib.import_module("pano_core_before.seams.poisson")
    from pano_core.seams import adjacency as new_adj
    from pano_core.seams import poisson as new_poi

    roots = {"before": str(before), "after": str(ROOT)}
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{args.rounds} interleaved rounds, medians")
    print("\n| S | what | before | after | after/before |\n| ---: | --- | ---: | ---: | ---: |")
    for s in (int(v) for v in args.sizes.split(",")):
        # 1. adjacency, first call
        t = {"before": [], "after": []}
        for _ in range(args.rounds):
            for k, mod in (("before", old_adj), ("after", new_adj)):
                mod.cube_adjacency.cache_clear()
                t0 = time.perf_counter()
                mod.cube_adjacency(s)
                t[k].append(time.perf_counter() - t0)
        a, b = statistics.median(t["before"]), statistics.median(t["after"])
        print(f"| {s} | cube_adjacency first call, wall s | {a:.3f} | {b:.3f} | {b / a:.3f} |")
        imp = "import torch, pano_core.seams.adjacency as m"
        mem = {}
        for k, r in roots.items():
            base = child_peak(imp, r)
            mem[k] = child_peak(f"{imp}; m.cube_adjacency({s})", r) - base
        print(f"| {s} | cube_adjacency first call, peak RSS MiB (process minus imports) | {mem['before'] / MiB:.0f} | "
              f"{mem['after'] / MiB:.0f} | {mem['after'] / max(mem['before'], 1):.3f} |")
        # 2. blending, warm adjacency
        x = faces_for(s)
        for method in ("gauss-seidel", "exact"):
            wall = {"before": [], "after": []}
            cpu = {"before": [], "after": []}
            res = {}
            for _ in range(args.rounds):
                for k, mod in (("before", old_poi), ("after", new_poi)):
                    mod.cube_adjacency(s)
                    c0, t0 = time.process_time(), time.perf_counter()
                    res[k] = mod.blend_cube_faces(x, method=method)
                    wall[k].append(time.perf_counter() - t0)
                    cpu[k].append(time.process_time() - c0)
            diff = float((res["after"] - res["before"]).abs().max())
            a, b = statistics.median(wall["before"]), statistics.median(wall["after"])
            ca, cb = statistics.median(cpu["before"]), statistics.median(cpu["after"])
            print(f"| {s} | {method} blend, wall s (max diff {diff:.1e}) | {a:.3f} | {b:.3f} | {b / a:.3f} |")
            print(f"| {s} | {method} blend, CPU s (all threads) | {ca:.3f} | {cb:.3f} | {cb / ca:.3f} |")
            # one call in a fresh process, as in a CLI run (the first call builds the adjacency too)
            code = (f"import torch; import pano_core.seams.poisson as m; torch.set_num_threads({args.threads}); "
                    f"x = torch.rand(6, 3, {s}, {s}); ")
            mem = {}
            for k, r in roots.items():
                base = child_peak(code, r)
                mem[k] = child_peak(code + f"m.blend_cube_faces(x, method='{method}')", r) - base
            print(f"| {s} | {method} blend, first call in a fresh process: peak RSS MiB above imports + input "
                  f"(output is {6 * 3 * s * s * 4 / MiB:.0f}) | "
                  f"{mem['before'] / MiB:.0f} | {mem['after'] / MiB:.0f} | {mem['after'] / max(mem['before'], 1):.3f} |")
        # 3. DST-I lengths
        import scipy.fft as sfft

        tl = {}
        for m in (s - 2, s - 1):
            a = np.random.default_rng(0).random((3, m, m)).astype(np.float32)
            ts = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                sfft.idstn(a, type=1, norm="ortho", axes=(-2, -1), workers=args.threads)
                ts.append(time.perf_counter() - t0)
            tl[m] = statistics.median(ts)
        print(f"| {s} | idstn (3, m, m): m = S-2 = {s - 2} vs m = S-1 = {s - 1}, wall s | {tl[s - 2]:.3f} | "
              f"{tl[s - 1]:.3f} | {tl[s - 1] / tl[s - 2]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
