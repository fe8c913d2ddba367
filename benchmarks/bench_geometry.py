"""Benchmark: pano_core.geometry e2c / c2e against py360convert 1.0.4 and pytorch360convert 0.2.3.

Usage:  python benchmarks/bench_geometry.py [--sizes 2048,4096] [--repeat 7] [--mode bilinear]
                                           [--image PATH] [--threads N]

For each ERP width W (face size W/4) it times, in one run:
  * py360convert ``e2c``/``c2e`` (numpy HWC; its own internal lru_cache is left as it is);
  * pytorch360convert ``e2c``/``c2e`` (torch CHW);
  * ours one-shot (sampling plan cache cleared before every call: the grid is built inside the call);
  * ours cached (repeated calls reusing the cached plan);
and the round-trip PSNR ERP -> cube -> ERP of each library on a real panorama (resized to W x W/2).
Times are the median of ``--repeat`` calls after one warm-up, in milliseconds.
"""

from __future__ import annotations

import argparse
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


def timeit(fn, repeat: int, before=None) -> float:
    if before:
        before()
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        if before:
            before()
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def load_panorama(path: Path, w: int) -> torch.Tensor:
    img = read_image(path)[:, :3]
    return F.interpolate(img, size=(w // 2, w), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def bench_size(w: int, args, py360convert, pytorch360convert) -> dict:
    """Time and measure one size; prints its table and returns the figures."""
    h, s = w // 2, w // 4
    erp = load_panorama(Path(args.image), w)
    erp_np = np.ascontiguousarray(erp[0].permute(1, 2, 0).numpy())
    erp_chw = erp[0].contiguous()
    ref_faces = py360convert.e2c(erp_np, s, args.mode, "list")
    faces_t = e2c(erp, s, args.mode)
    faces_chw = pytorch360convert.e2c(erp_chw, s, args.mode, "list")

    t = {}
    t["py e2c"] = timeit(lambda: py360convert.e2c(erp_np, s, args.mode, "list"), args.repeat)
    t["py c2e"] = timeit(lambda: py360convert.c2e(ref_faces, h, w, args.mode, "list"), args.repeat)
    t["pt e2c"] = timeit(lambda: pytorch360convert.e2c(erp_chw, s, args.mode, "list"), args.repeat)
    t["pt c2e"] = timeit(lambda: pytorch360convert.c2e(faces_chw, h, w, args.mode, "list"), args.repeat)
    t["our e2c 1shot"] = timeit(lambda: e2c(erp, s, args.mode), args.repeat, before=clear_cache)
    t["our c2e 1shot"] = timeit(lambda: c2e(faces_t, h, w, args.mode), args.repeat, before=clear_cache)
    t["our e2c cached"] = timeit(lambda: e2c(erp, s, args.mode), args.repeat)
    t["our c2e cached"] = timeit(lambda: c2e(faces_t, h, w, args.mode), args.repeat)

    p_py = psnr(py360convert.c2e(ref_faces, h, w, args.mode, "list"), erp_np)
    p_pt = psnr(pytorch360convert.c2e(faces_chw, h, w, args.mode, "list").numpy(), erp_chw.numpy())
    p_our = psnr(c2e(faces_t, h, w, args.mode).numpy(), erp.numpy())

    print(f"\n{w}x{h} <-> 6x{s}  (ms, median of {args.repeat})")
    print(f"{'':8}{'py360convert':>14}{'pytorch360conv':>16}{'ours 1-shot':>13}{'ours cached':>13}"
          f"{'x py 1-shot':>13}{'x py cached':>13}")
    for op in ("e2c", "c2e"):
        py, pt, o1, oc = t[f"py {op}"], t[f"pt {op}"], t[f"our {op} 1shot"], t[f"our {op} cached"]
        print(f"{op:8}{py:14.1f}{pt:16.1f}{o1:13.1f}{oc:13.1f}{py / o1:12.2f}x{py / oc:12.2f}x")
    print(f"round-trip PSNR (ERP->cube->ERP): py360convert {p_py:.2f} dB, pytorch360convert {p_pt:.2f} dB, "
          f"ours {p_our:.2f} dB")
    return {"w": w, "t": t, "psnr": (p_py, p_pt, p_our)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2048,4096", help="ERP widths, comma separated")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--mode", default="bilinear")
    shared = ROOT.parent / "shared" / "data" / "panoramas" / "chalet_erp.png"  # 2048x1024 original
    default_image = shared if shared.is_file() else ROOT / "tests" / "assets" / "chalet_erp.png"
    ap.add_argument("--image", default=str(default_image), help="panorama for the PSNR (resized to each size)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import py360convert
    import pytorch360convert

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, py360convert {py360convert.__version__ if hasattr(py360convert, '__version__') else '1.0.4'}, "
          f"pytorch360convert {getattr(pytorch360convert, '__version__', '0.2.3')}, mode {args.mode}")
    for w in (int(v) for v in args.sizes.split(",")):
        bench_size(w, args, py360convert, pytorch360convert)
        print("load average (1/5/15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
