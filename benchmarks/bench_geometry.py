"""Benchmark: pano_core.geometry e2c / c2e against py360convert 1.0.4 and pytorch360convert 0.2.3.

Usage:  python benchmarks/bench_geometry.py [--sizes 2048,4096] [--repeat 9] [--mode bilinear]
                                           [--image PATH] [--threads 2] [--json OUT.json]

For each ERP width W (face size W/4, ERP W x W/2, float32, 3 channels) it times, in one run:

* **py360convert cold**: its internal ``functools.lru_cache`` s (``xyzcube``, ``equirect_uvgrid``,
  ``equirect_facetype``, ``EquirecSampler.from_cubemap/from_perspective``,
  ``CubeFaceSampler.from_equirec``) are cleared before every call, so the call builds its
  sampling maps (the "one-shot" cost of py360convert);
* **py360convert warm**: repeated calls (maps cached by py360convert itself);
* **pytorch360convert** (torch CHW; it has no grid cache);
* **ours one-shot**: our plan cache cleared before every call (maps built inside the call);
* **ours cached**: repeated calls reusing the cached plan;

plus the round-trip PSNR ERP -> cube -> ERP of each library on a real panorama resized to W x W/2.
Contenders are run round-robin (one call of each per round, ``--repeat`` rounds after one warm-up
round, 20 ms pause before each timed call) so that load from other processes affects all of them
alike; the table shows medians in milliseconds. Targets (issue 2, 2 CPU cores): ours one-shot >= 2x faster than py360convert cold,
ours cached >= 10x faster than py360convert cold; ours cached vs py360convert warm is shown for
transparency. Threads: ``torch.set_num_threads`` and ``cv2.setNumThreads`` (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pano_core.geometry import c2e, clear_cache, e2c  # noqa: E402
from pano_core.io import read_image  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _data import shared_panorama  # noqa: E402

TARGET_ONESHOT = 2.0
TARGET_CACHED = 10.0


def clear_py360_caches(py360convert) -> None:
    """Clear every lru_cache py360convert 1.0.4 keeps (maps, grids, face types)."""
    u = py360convert.utils
    for f in (u.xyzcube, u.equirect_uvgrid, u.equirect_facetype, u.EquirecSampler.from_cubemap,
              u.EquirecSampler.from_perspective, u.CubeFaceSampler.from_equirec):
        f.cache_clear()


def round_robin(contenders: dict, repeat: int) -> dict:
    """{name: (fn, before, rounds)} -> {name: median ms}; one warm-up round, then up to ``repeat``
    timed rounds (``rounds`` for that contender); ``before`` runs untimed before each call."""
    times = {k: [] for k in contenders}
    for r in range(repeat + 1):
        for name, (fn, before, reps) in contenders.items():
            if r > reps:
                continue
            if before is not None:
                before()
            time.sleep(0.02)  # let other threads (e.g. torch's spinning OpenMP workers) settle first
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            if r > 0:
                times[name].append(dt)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def load_panorama(path: Path, w: int) -> torch.Tensor:
    img = read_image(path)[:, :3]
    return F.interpolate(img, size=(w // 2, w), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def bench_size(w: int, args, py360convert, pytorch360convert) -> dict:
    """Time and measure one size; prints its table and returns the figures."""
    h, s = w // 2, w // 4
    mode = args.mode
    erp = load_panorama(Path(args.image), w)
    erp_np = np.ascontiguousarray(erp[0].permute(1, 2, 0).numpy())
    erp_chw = erp[0].contiguous()
    ref_faces = py360convert.e2c(erp_np, s, mode, "list")
    faces_t = e2c(erp, s, mode)
    faces_chw = pytorch360convert.e2c(erp_chw, s, mode, "list")

    def py_clear():
        clear_py360_caches(py360convert)

    slow = max(1, min(args.repeat, args.repeat_slow))
    t = {}
    for op in ("e2c", "c2e"):
        if op == "e2c":
            py = lambda: py360convert.e2c(erp_np, s, mode, "list")  # noqa: E731
            pt = lambda: pytorch360convert.e2c(erp_chw, s, mode, "list")  # noqa: E731
            ours = lambda: e2c(erp, s, mode)  # noqa: E731
        else:
            py = lambda: py360convert.c2e(ref_faces, h, w, mode, "list")  # noqa: E731
            pt = lambda: pytorch360convert.c2e(faces_chw, h, w, mode, "list")  # noqa: E731
            ours = lambda: c2e(faces_t, h, w, mode)  # noqa: E731
        r = round_robin(
            {
                "py cold": (py, py_clear, args.repeat),
                "py warm": (py, None, args.repeat),
                "ours 1-shot": (ours, clear_cache, args.repeat),
                "ours cached": (ours, None, args.repeat),
                "pytorch360convert": (pt, None, slow),
            },
            args.repeat,
        )
        t[op] = r

    p_py = psnr(py360convert.c2e(ref_faces, h, w, mode, "list"), erp_np)
    p_pt = psnr(pytorch360convert.c2e(faces_chw, h, w, mode, "list").numpy(), erp_chw.numpy())
    p_our = psnr(c2e(faces_t, h, w, mode).numpy(), erp.numpy())
    load = os.getloadavg()

    print(f"\n{w}x{h} <-> 6x{s}  (ms, median; {args.repeat} rounds, pytorch360convert {slow})")
    print(f"{'':5}{'py cold':>9}{'py warm':>9}{'pt360':>9}{'ours 1-shot':>12}{'ours cached':>12}"
          f"{'1-shot/py cold':>16}{'cached/py cold':>16}{'cached/py warm':>16}")
    for op in ("e2c", "c2e"):
        r = t[op]
        a, b, c = r["py cold"] / r["ours 1-shot"], r["py cold"] / r["ours cached"], r["py warm"] / r["ours cached"]
        print(f"{op:5}{r['py cold']:9.1f}{r['py warm']:9.1f}{r['pytorch360convert']:9.1f}{r['ours 1-shot']:12.1f}"
              f"{r['ours cached']:12.1f}{a:15.2f}x{b:15.2f}x{c:15.2f}x")
        r.update({"x_oneshot_vs_py_cold": a, "x_cached_vs_py_cold": b, "x_cached_vs_py_warm": c})
    print(f"round-trip PSNR (ERP->cube->ERP): py360convert {p_py:.2f} dB, pytorch360convert {p_pt:.2f} dB, "
          f"ours {p_our:.2f} dB")
    print("load average (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*load))
    return {"w": w, "h": h, "face": s, "ms": t, "psnr": {"py360convert": p_py, "pytorch360convert": p_pt, "ours": p_our},
            "loadavg": load}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2048,4096", help="ERP widths, comma separated")
    ap.add_argument("--repeat", type=int, default=9, help="timed rounds (after one warm-up round)")
    ap.add_argument("--repeat-slow", type=int, default=3, help="timed rounds for pytorch360convert (slow)")
    ap.add_argument("--mode", default="bilinear")
    ap.add_argument("--image", default=None, help="panorama for the PSNR (resized to each size; default: the "
                    "2048x1024 shared chalet_erp.png, see benchmarks/_data.py; the run stops if it is missing)")
    ap.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads (0 = library defaults)")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    args.image = args.image or str(shared_panorama("chalet_erp.png"))
    print(f"PSNR image: {args.image}")
    import cv2

    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    import py360convert
    import py360convert.utils  # noqa: F401
    import pytorch360convert

    try:
        from importlib.metadata import version

        v_py, v_pt = version("py360convert"), version("pytorch360convert")
    except Exception:  # pragma: no cover
        v_py = v_pt = "?"
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), OpenCV {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), py360convert {v_py}, pytorch360convert {v_pt}, mode {args.mode}, "
          f"{os.cpu_count()} CPUs")
    results = []
    for w in (int(v) for v in args.sizes.split(",")):
        results.append(bench_size(w, args, py360convert, pytorch360convert))
    ok = []
    for r in results:
        for op in ("e2c", "c2e"):
            m = r["ms"][op]
            ok.append(f"{r['w']} {op}: 1-shot {m['x_oneshot_vs_py_cold']:.2f}x "
                      f"({'met' if m['x_oneshot_vs_py_cold'] >= TARGET_ONESHOT else 'NOT met'}), cached "
                      f"{m['x_cached_vs_py_cold']:.2f}x ({'met' if m['x_cached_vs_py_cold'] >= TARGET_CACHED else 'NOT met'})")
        p = r["psnr"]
        ok.append(f"{r['w']} PSNR: {'met' if p['ours'] >= max(p['py360convert'], p['pytorch360convert']) else 'NOT met'}")
    print("\ntargets (>= 2x one-shot and >= 10x cached vs py360convert cold, PSNR >= theirs):")
    print("\n".join("  " + s for s in ok))
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "mode": args.mode, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
