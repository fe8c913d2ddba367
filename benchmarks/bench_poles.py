"""Benchmark: pole refinement with OpenCV (pano_core.poles.refine_poles).

Usage::

    python benchmarks/bench_poles.py [--threads 2] [--repeat 7] [--width 2048]
                                     [--image /work/shared/data/panoramas/snow_village_erp.png]

The panorama is resized (bicubic) to ``width x width/2``; faces are width/4, mask fraction 0.5,
feather 16. For Telea and Navier-Stokes it times the one-shot ``refine_poles`` (target: <= 1 s at
2048x1024 on 2 CPU cores) and its three stages (extract U/D faces, inpaint, merge back), with
the geometry's sampling plans warm (one warm-up call; the first call in a process also builds
them, shown as "first call"). Medians of ``--repeat`` runs in milliseconds, wall clock and
process CPU time (all threads; on a machine shared with other jobs the CPU time is the better
guide: on 2 free cores the wall time is at most about the CPU time). The 1-minute load average
is printed with each row. Also checks the
guarantee that only the pole region changes. Prints a markdown table (copied into
benchmarks/RESULTS.md, section ``## poles``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pano_core import poles  # noqa: E402
from pano_core.geometry import clear_cache  # noqa: E402
from pano_core.io import read_image  # noqa: E402

DEFAULT_IMAGE = Path("/work/shared/data/panoramas/snow_village_erp.png")


def measure(fn, repeat: int) -> tuple[float, float]:
    """(median wall-clock ms, median process CPU ms, all threads) of ``repeat`` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls) * 1000.0, statistics.median(cpus) * 1000.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--feather", type=int, default=16)
    ap.add_argument("--image", default=str(DEFAULT_IMAGE if DEFAULT_IMAGE.is_file() else ROOT / "tests/assets/snow_village_erp.png"))
    args = ap.parse_args(argv)

    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    w = args.width
    erp = F.interpolate(read_image(args.image), size=(w // 2, w), mode="bicubic", align_corners=False).clamp(0, 1)
    erp = (erp * 255).round() / 255  # an 8-bit image, as read from a file

    rows = []
    for method in ("telea", "ns"):
        inp = poles.OpenCVInpainter(method)
        clear_cache()
        t = time.perf_counter()
        out = poles.refine_poles(erp, inp, fraction=args.fraction, feather=args.feather)
        first = (time.perf_counter() - t) * 1000.0
        # guarantee: bit-identical outside the pole region
        _, masks = poles.extract_pole_faces(erp, fraction=args.fraction)
        outside = (poles.pole_weight_erp(erp.shape[-2:], masks, args.feather) == 0).expand_as(erp)
        assert torch.equal(out[outside], erp[outside]), "pixels outside the pole region changed"
        changed = float((~outside[:, 0]).float().mean())

        def run_all(inp=inp):
            return poles.refine_poles(erp, inp, fraction=args.fraction, feather=args.feather)

        def run_extract():
            return poles.extract_pole_faces(erp, fraction=args.fraction)

        faces, masks = run_extract()
        filled = inp(faces, masks)

        def run_inpaint(inp=inp, faces=faces, masks=masks):
            return inp(faces, masks)

        def run_merge(filled=filled, masks=masks):
            return poles.merge_pole_faces(erp, filled, masks, feather=args.feather)

        total, total_cpu = measure(run_all, args.repeat)
        extract = measure(run_extract, args.repeat)[0]
        inpaint = measure(run_inpaint, args.repeat)[0]
        merge = measure(run_merge, args.repeat)[0]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        rows.append((method, first, total, total_cpu, extract, inpaint, merge, changed, load))

    print(f"Pole refinement, OpenCV, {w}x{w // 2} ERP ({Path(args.image).name}), faces {w // 4}, "
          f"fraction {args.fraction}, feather {args.feather}; torch {torch.__version__}, OpenCV {cv2.__version__}, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
          f"median of {args.repeat} (ms)\n")
    print("| inpainter | first call | refine_poles wall | refine_poles CPU (all threads) | extract U/D | inpaint "
          "| merge back | ERP pixels changed | load avg | <= 1 s wall |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for method, first, total, total_cpu, extract, inpaint, merge, changed, load in rows:
        ok = "yes" if total <= 1000 else "NO"
        print(f"| OpenCV {method} | {first:.0f} | **{total:.0f}** | {total_cpu:.0f} | {extract:.0f} | {inpaint:.0f} | "
              f"{merge:.0f} | {changed * 100:.1f} % | {load:.1f} | {ok} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
