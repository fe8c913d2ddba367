"""Benchmark: the exact Poisson solve at an awkward DST-I length (issue 14, point 18), in one run.

Usage:  python benchmarks/bench_exact_length.py [--sizes 1536,2048] [--rounds 5] [--threads 2]

For a cube face of size S the exact solver's DST-I has length m = S - 2, an FFT of length
2(S - 1): 4094 = 2·23·89 at S = 2048. Since issue 14 the solver runs such sizes on a grid one row
and column bigger (m' = 2047: 4096) and pins the extra line with a capacitance solve
(``pano_core.seams.solvers.fast_interior`` / ``_solve_ring_embedded``). This script times
``blend_cube_faces(method="exact")`` on one cubemap (6 faces x 3 channels, float32) with the
embedding ("fast length") and without it ("direct", the same code with the embedding switched
off), in interleaved rounds (direct, fast, direct, ...), medians of wall and process CPU time,
the max difference of the two results, and the one-time set-up of the capacitance factor per face
size (first call, cache cleared) with the factor's size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_seams_hot import faces_for  # noqa: E402 (the same test cubemap)

from pano_core.seams import poisson, solvers  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1536,2048")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    embed_min = solvers.EMBED_MIN
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}, {args.rounds} interleaved rounds, medians")
    print("\n| S | DST-I length direct -> fast | direct wall s (cpu) | fast length wall s (cpu) | fast / direct wall "
          "(cpu) | max diff | set-up, first call s | factor MiB |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in (int(v) for v in args.sizes.split(",")):
        x = faces_for(s)
        poisson.cube_adjacency(s)
        m2 = solvers.fast_interior(s - 2)
        solvers._capacitance.cache_clear()
        t0 = time.perf_counter()
        solvers._capacitance(s - 2, s - 2, m2, m2) if m2 != s - 2 else None
        setup = time.perf_counter() - t0
        factor = 0.0
        if m2 != s - 2:
            factor = sum(f.nbytes for f in solvers._capacitance(s - 2, s - 2, m2, m2).factors) / 2**20
        wall = {"direct": [], "fast": []}
        cpu = {"direct": [], "fast": []}
        out = {}
        for _ in range(args.rounds):
            for k in ("direct", "fast"):
                solvers.EMBED_MIN = 10**9 if k == "direct" else embed_min
                c0, t0 = time.process_time(), time.perf_counter()
                out[k] = poisson.blend_cube_faces(x, method="exact")
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        solvers.EMBED_MIN = embed_min
        a, b = statistics.median(wall["direct"]), statistics.median(wall["fast"])
        ca, cb = statistics.median(cpu["direct"]), statistics.median(cpu["fast"])
        diff = float((out["fast"] - out["direct"]).abs().max())
        print(f"| {s} | {s - 2} (FFT {2 * (s - 1)}) -> {m2} (FFT {2 * (m2 + 1)}) | {a:.3f} ({ca:.3f}) | "
              f"{b:.3f} ({cb:.3f}) | **{b / a:.2f}** ({cb / ca:.2f}) | {diff:.1e} | {setup:.2f} | {factor:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
