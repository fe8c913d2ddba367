"""Probe: how fast can the cached e2c sampling pass be on this machine, whatever does the sampling?

Usage:  python benchmarks/bench_sampler_floor.py [--sizes 2048,4096] [--repeat 11] [--threads 2] [--no-native]

Issue 2 asks for repeated (cached-grid) e2c / c2e calls >= 10x faster than py360convert 1.0.4.
Our cached call is one ``cv2.remap`` pass over the output (see ``bench_geometry.py``). This script
asks whether *any* sampler reachable from this project could make that pass fast enough: it times
the bilinear e2c sampling of a W x W/2 float32 RGB panorama into 6 faces of W/4, with the maps
already built (the cached case), through

* ``cv2.remap`` as our plan uses it (one call per channel plane; the fast path of ``pano_core``),
  and on interleaved 3- and 4-channel images;
* ``torch.nn.functional.grid_sample`` (the torch path), ``torch.nn.functional.embedding_bag``
  (bilinear as a weighted sum of 4 gathered rows, an optimised gather-reduce kernel) and a
  sparse CSR matrix product;
* native code compiled here with the system C compiler (``-O3 -march=native -fopenmp``), loaded
  with ctypes, **probe only, never shipped** (the pack ships no compiled code): a plain scalar
  loop over interleaved RGB and an explicit AVX-512 / AVX2 gather kernel over planes;

next to py360convert's own e2c call (cold: its lru_caches cleared; warm: repeated) and the time a
>= 10x target against each leaves. All contenders use the same threads (default 2). Everything
produces the same faces (checked against ``cv2.remap`` to 1e-5).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pano_core.geometry.remap import build_e2c_remap  # noqa: E402

C_SOURCE = r"""
#include <stdint.h>
#include <omp.h>
void set_threads(int n) { omp_set_num_threads(n); }
#ifdef __AVX512F__
#include <immintrin.h>
#elif defined(__AVX2__)
#include <immintrin.h>
#endif
/* out[p, c] = bilinear(src HWC 3 channels) at top-left a0 (x0) / a1 (x0 + 1, wrapped), row below + W */
void scalar_hwc(const float* __restrict src, const int32_t* __restrict a0, const int32_t* __restrict a1,
                const float* __restrict fx, const float* __restrict fy, int W, long n, float* __restrict out) {
  #pragma omp parallel for schedule(static)
  for (long p = 0; p < n; p++) {
    const float* s0 = src + 3L * a0[p]; const float* s1 = src + 3L * a1[p];
    float u = fx[p], v = fy[p];
    for (int c = 0; c < 3; c++) {
      float t = s0[c] + u * (s1[c] - s0[c]);
      float b = s0[3L * W + c] + u * (s1[3L * W + c] - s0[3L * W + c]);
      out[3 * p + c] = t + v * (b - t);
    }
  }
}
/* same over 3 planes (CHW); n must be a multiple of 16 */
int gather_planes(const float* __restrict src, const int32_t* __restrict a0, const int32_t* __restrict a1,
                  const float* __restrict fx, const float* __restrict fy, int W, long n, long plane,
                  float* __restrict out) {
#if defined(__AVX512F__)
  #pragma omp parallel for schedule(static)
  for (long p = 0; p < n; p += 16) {
    __m512i i0 = _mm512_loadu_si512(a0 + p), i1 = _mm512_loadu_si512(a1 + p), w = _mm512_set1_epi32(W);
    __m512i j0 = _mm512_add_epi32(i0, w), j1 = _mm512_add_epi32(i1, w);
    __m512 u = _mm512_loadu_ps(fx + p), v = _mm512_loadu_ps(fy + p);
    for (int c = 0; c < 3; c++) {
      const float* s = src + c * plane;
      __m512 A = _mm512_i32gather_ps(i0, s, 4), B = _mm512_i32gather_ps(i1, s, 4);
      __m512 C = _mm512_i32gather_ps(j0, s, 4), D = _mm512_i32gather_ps(j1, s, 4);
      __m512 t = _mm512_fmadd_ps(u, _mm512_sub_ps(B, A), A), b = _mm512_fmadd_ps(u, _mm512_sub_ps(D, C), C);
      _mm512_storeu_ps(out + c * n + p, _mm512_fmadd_ps(v, _mm512_sub_ps(b, t), t));
    }
  }
  return 512;
#elif defined(__AVX2__)
  #pragma omp parallel for schedule(static)
  for (long p = 0; p < n; p += 8) {
    __m256i i0 = _mm256_loadu_si256((const __m256i*)(a0 + p)), i1 = _mm256_loadu_si256((const __m256i*)(a1 + p));
    __m256i w = _mm256_set1_epi32(W), j0 = _mm256_add_epi32(i0, w), j1 = _mm256_add_epi32(i1, w);
    __m256 u = _mm256_loadu_ps(fx + p), v = _mm256_loadu_ps(fy + p);
    for (int c = 0; c < 3; c++) {
      const float* s = src + c * plane;
      __m256 A = _mm256_i32gather_ps(s, i0, 4), B = _mm256_i32gather_ps(s, i1, 4);
      __m256 C = _mm256_i32gather_ps(s, j0, 4), D = _mm256_i32gather_ps(s, j1, 4);
      __m256 t = _mm256_fmadd_ps(u, _mm256_sub_ps(B, A), A), b = _mm256_fmadd_ps(u, _mm256_sub_ps(D, C), C);
      _mm256_storeu_ps(out + c * n + p, _mm256_fmadd_ps(v, _mm256_sub_ps(b, t), t));
    }
  }
  return 256;
#else
  return 0;
#endif
}
"""


def build_native(threads: int):
    """Compile the probe kernels with the system C compiler; None when there is none."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    d = Path(tempfile.mkdtemp(prefix="pano360_floor_"))
    (d / "k.c").write_text(C_SOURCE)
    try:
        subprocess.run([cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-o", str(d / "k.so"), str(d / "k.c")],
                       check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as e:  # pragma: no cover - depends on the machine
        print(f"(native probe skipped: {cc} failed: {getattr(e, 'stderr', b'').decode()[:200]})")
        return None
    lib = ctypes.CDLL(str(d / "k.so"))
    lib.set_threads(threads)
    return lib


def timeit(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        time.sleep(0.02)
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def probe(w: int, repeat: int, lib, py360convert) -> None:
    import cv2

    h, s = w // 2, w // 4
    plan = build_e2c_remap(h, w, s, "bilinear", torch.float32)
    mx, my = np.concatenate(plan.xmaps, 0), np.concatenate(plan.ymaps, 0)  # (6 s, s): the six faces stacked
    rng = np.random.default_rng(0)
    chw = rng.random((3, h, w), dtype=np.float32)
    hwc = np.ascontiguousarray(chw.transpose(1, 2, 0))
    hwc4 = np.ascontiguousarray(np.concatenate([hwc, hwc[..., :1]], -1))

    # integer top-left taps and fractions (rows clamped: the pole rows are patched separately in
    # the real plan, which does not matter for timing)
    x0 = np.floor(mx.astype(np.float64)).ravel()
    y0 = np.floor(my.astype(np.float64)).ravel()
    fx = (mx.ravel() - x0).astype(np.float32)
    fy = (my.ravel() - y0).astype(np.float32)
    x0i = x0.astype(np.int64) % w
    y0i = np.clip(y0.astype(np.int64), 0, h - 2)
    a0 = (y0i * w + x0i).astype(np.int32)
    a1 = (y0i * w + (x0i + 1) % w).astype(np.int32)
    fy = np.where(y0 < 0, 0, np.where(y0 > h - 2, 1, fy)).astype(np.float32)
    n = a0.size

    res: dict[str, float] = {}
    ref = np.empty((3, 6 * s, s), np.float32)

    def cv_planes():
        for c in range(3):
            cv2.remap(chw[c], mx, my, cv2.INTER_LINEAR, dst=ref[c], borderMode=cv2.BORDER_WRAP)

    res["cv2.remap per plane (our path)"] = timeit(cv_planes, repeat)
    o3 = np.empty((6 * s, s, 3), np.float32)
    res["cv2.remap HWC 3 ch"] = timeit(lambda: cv2.remap(hwc, mx, my, cv2.INTER_LINEAR, dst=o3,
                                                          borderMode=cv2.BORDER_WRAP), repeat)
    o4 = np.empty((6 * s, s, 4), np.float32)
    res["cv2.remap HWC 4 ch (layout given)"] = timeit(lambda: cv2.remap(hwc4, mx, my, cv2.INTER_LINEAR, dst=o4,
                                                                         borderMode=cv2.BORDER_WRAP), repeat)
    src_t = torch.from_numpy(chw)[None]
    grid = torch.from_numpy(np.stack([(mx + 0.5) / w * 2 - 1, (my + 0.5) / h * 2 - 1], -1))[None]
    res["torch grid_sample"] = timeit(lambda: F.grid_sample(src_t, grid, "bilinear", "border", False), repeat)
    idx = torch.from_numpy(np.stack([a0, a1, a0 + w, a1 + w], 1))
    wts = torch.from_numpy(np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1))
    table = torch.from_numpy(hwc).view(-1, 3)
    res["torch embedding_bag (4-tap gather-sum)"] = timeit(
        lambda: F.embedding_bag(idx, table, per_sample_weights=wts, mode="sum"), repeat)
    with warnings.catch_warnings():  # "beta" / "invariant checks disabled" notices
        warnings.simplefilter("ignore")
        csr = torch.sparse_csr_tensor(torch.arange(0, 4 * n + 1, 4, dtype=torch.int32), idx.reshape(-1),
                                      wts.reshape(-1), size=(n, h * w))
    res["torch sparse CSR @ HWC"] = timeit(lambda: csr @ table, repeat)
    check = {"torch embedding_bag (4-tap gather-sum)": F.embedding_bag(idx, table, per_sample_weights=wts,
                                                                        mode="sum").numpy().T}

    if lib is not None:
        p = ctypes.c_void_p
        outh = np.empty((n, 3), np.float32)
        outp = np.empty((3, n), np.float32)
        args = (a0.ctypes.data_as(p), a1.ctypes.data_as(p), fx.ctypes.data_as(p), fy.ctypes.data_as(p), w, ctypes.c_long(n))
        res["native C scalar, HWC (probe)"] = timeit(lambda: lib.scalar_hwc(hwc.ctypes.data_as(p), *args,
                                                                            outh.ctypes.data_as(p)), repeat)
        check["native C scalar, HWC (probe)"] = outh.T
        bits = lib.gather_planes(chw.ctypes.data_as(p), *args, ctypes.c_long(h * w), outp.ctypes.data_as(p))
        if bits:
            k = f"native AVX{bits if bits == 512 else 2} gather, planes (probe)"
            res[k] = timeit(lambda: lib.gather_planes(chw.ctypes.data_as(p), *args, ctypes.c_long(h * w),
                                                      outp.ctypes.data_as(p)), repeat)
            check[k] = outp

    # all produce the same faces away from the clamped pole rows
    cv_planes()
    inner = ((y0 >= 0) & (y0 <= h - 2)).reshape(6 * s, s)
    for k, v in check.items():
        err = float(np.abs(v.reshape(3, 6 * s, s) - ref)[:, inner].max())
        assert err < 1e-5, f"{k} disagrees with cv2.remap ({err})"

    py = {}
    if py360convert is not None:
        u = py360convert.utils

        def clear():
            for f in (u.xyzcube, u.equirect_uvgrid, u.equirect_facetype, u.EquirecSampler.from_cubemap,
                      u.EquirecSampler.from_perspective, u.CubeFaceSampler.from_equirec):
                f.cache_clear()

        def cold():
            clear()
            py360convert.e2c(hwc, s, "bilinear", "list")

        py["py360convert e2c cold"] = timeit(cold, repeat)
        py["py360convert e2c warm"] = timeit(lambda: py360convert.e2c(hwc, s, "bilinear", "list"), repeat)

    print(f"\ne2c sampling pass only, {w}x{h} -> 6x{s}, bilinear float32 RGB (median ms of {repeat})")
    for k, v in py.items():
        print(f"  {k:44s}{v:8.2f}   (a 10x target leaves {v / 10:.2f} ms)")
    for k, v in res.items():
        line = f"  {k:44s}{v:8.2f}"
        if py:
            line += "   " + ", ".join(f"{py[q] / v:5.2f}x vs {q.split()[-1]}" for q in py)
        print(line)
    print("  load average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2048,4096")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-native", action="store_true", help="skip the compiled probe kernels")
    args = ap.parse_args(argv)
    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    lib = None if args.no_native else build_native(args.threads)
    try:
        import py360convert
        import py360convert.utils  # noqa: F401
    except ImportError:  # pragma: no cover
        py360convert = None
    print(f"torch {torch.__version__}, OpenCV {cv2.__version__}, {args.threads} threads, {os.cpu_count()} CPUs")
    for w in (int(v) for v in args.sizes.split(",")):
        probe(w, args.repeat, lib, py360convert)
    return 0


if __name__ == "__main__":
    sys.exit(main())
