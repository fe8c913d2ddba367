"""Benchmarks of pano_core.seams: cross-face blending solvers, ERP wrap blending, metric validation.

Usage::

    python benchmarks/bench_seams.py [--threads 2] [--quick] [--data /work/shared/data/panoramas]

Prints markdown tables (copied into benchmarks/RESULTS.md, section ``## seams``):

1. Cross-face blending of one cubemap (6 faces x 3 channels, float32) at 512^2 and 1024^2:
   ``exact`` (DST-I), ``gauss-seidel`` 200 sweeps in closed form (the default) and as literal
   vectorised torch sweeps, a straightforward numpy red-black loop (200 sweeps, strided slices,
   float32, the same arithmetic) measured in the same run, and ``cv2.seamlessClone`` per face for
   scale. Medians of repeated runs, CPU, ``--threads`` torch/scipy threads. GPU times are only
   measured when CUDA is available.
2. Metric validation (the paper's protocol): ground-truth cubemaps (e2c of the real panoramas,
   faces W/4), pure noise, faces damaged by a per-face gain 0.6..1.4 and offset +-40/255, and the
   damaged faces blended by gauss-seidel-200 and exact.
3. ERP wrap blending: wrap_seam before/after (poisson / feather, band 32) and time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pano_core.geometry import e2c  # noqa: E402
from pano_core.io import read_image  # noqa: E402
from pano_core.seams.metrics import cube_seam_metrics, erp_wrap_metrics  # noqa: E402
from pano_core.seams.poisson import blend_cube_faces  # noqa: E402
from pano_core.seams.wrap import blend_erp_wrap  # noqa: E402

PANORAMAS = ("snow_village", "chalet", "world_map")


class T(float):
    """A wall time (s) that also carries the process CPU time (all threads) of the same run."""

    cpu: float = 0.0

    def __format__(self, spec):
        return f"{float(self):{spec}} s (cpu {self.cpu:{spec}})"


def timeit(fn, repeat=3, warmup=1) -> T:
    """Median wall time of ``repeat`` runs, with the CPU time of that run."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        c, t = time.process_time(), time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t, time.process_time() - c))
    wall, cpu = sorted(ts)[len(ts) // 2]
    out = T(wall)
    out.cpu = cpu
    return out


def damage(faces: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = faces.shape[0]
    gain = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    off = (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 80 / 255
    return (faces * gain + off).clamp(0, 1)


def numpy_red_black(u: np.ndarray, iterations: int) -> np.ndarray:
    """Straightforward numpy red-black Gauss-Seidel for lap(h) = 0 on (N, S, S), ring fixed.

    Per half-sweep, the two strided sub-lattices of one colour are updated with slices.
    """
    n, h, w = u.shape
    for _ in range(iterations):
        for parity in (0, 1):
            for i0 in (1, 2):
                j0 = 1 if (i0 + 1) % 2 == parity else 2
                c = u[:, i0 : h - 1 : 2, j0 : w - 1 : 2]
                rows, cols = c.shape[1], c.shape[2]
                up = u[:, i0 - 1 : i0 - 1 + 2 * rows : 2, j0 : j0 + 2 * cols : 2]
                down = u[:, i0 + 1 : i0 + 1 + 2 * rows : 2, j0 : j0 + 2 * cols : 2]
                left = u[:, i0 : i0 + 2 * rows : 2, j0 - 1 : j0 - 1 + 2 * cols : 2]
                right = u[:, i0 : i0 + 2 * rows : 2, j0 + 1 : j0 + 1 + 2 * cols : 2]
                c[...] = 0.25 * (up + down + left + right)
    return u


def seamless_clone_per_face(face: np.ndarray) -> float:
    """Time of cv2.seamlessClone (NORMAL_CLONE) of one S x S face into a same-size canvas."""
    import cv2

    s = face.shape[0]
    src = (face * 255).astype(np.uint8)
    dst = np.roll(src, 7, axis=1).copy()
    mask = np.zeros((s, s), np.uint8)
    mask[2:-2, 2:-2] = 255
    center = (s // 2, s // 2)
    return timeit(lambda: cv2.seamlessClone(src, dst, mask, center, cv2.NORMAL_CLONE), repeat=3)


def load(name: str, data: Path) -> torch.Tensor:
    p = data / f"{name}_erp.png"
    if not p.is_file():
        p = ROOT / "tests" / "assets" / f"{name}_erp.png"
    return read_image(p)[:, :3]


def bench_solvers(args, data: Path) -> None:
    print("### Cross-face blending, one cubemap (6 faces x 3 channels, float32)\n")
    print(f"CPU, {args.threads} threads (torch.set_num_threads; scipy.fft workers = threads). Median of 3 runs "
          "(1 for the slow loops): wall time, and in brackets the process CPU time of the same run "
          "(all threads; on a shared machine the wall time includes waiting for a core).\n")
    print("| face | exact | gauss-seidel-200 (closed form) | gauss-seidel-200 (torch sweeps) | numpy red-black loop 200 | speed-up vs numpy (closed form / sweeps) | cv2.seamlessClone per face |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    erp = load("snow_village", data)
    sizes = (512,) if args.quick else (512, 1024)
    for s in sizes:
        faces = damage(e2c(erp, s))
        t_exact = timeit(lambda f=faces: blend_cube_faces(f, "exact"))
        t_gs = timeit(lambda f=faces: blend_cube_faces(f, "gauss-seidel", 200))
        if args.no_loops:
            t_sc = seamless_clone_per_face(faces[0].permute(1, 2, 0).numpy())
            print(f"| {s}² | {t_exact:.3f} | {t_gs:.3f} | – | – | – | {t_sc:.3f} |")
            continue
        t_sweep = timeit(lambda f=faces: blend_cube_faces(f, "gauss-seidel", 200, gs_impl="sweep"), repeat=1, warmup=0)
        # numpy reference on the same problem (the correction h, ring = target - source)
        from pano_core.seams.poisson import edge_targets

        cur, target = edge_targets(faces)
        hb = torch.zeros(1, 3, 6 * s * s)
        from pano_core.seams.adjacency import cube_adjacency

        hb[..., cube_adjacency(s).border_index] = target - cur
        h0 = hb.reshape(1, 3, 6, s, s).transpose(1, 2).reshape(18, s, s).numpy().astype(np.float32)
        t_np = timeit(lambda h0=h0: numpy_red_black(h0.copy(), 200), repeat=1, warmup=0)
        ref = torch.from_numpy(numpy_red_black(h0.copy(), 3)).reshape(6, 3, s, s)
        ours = blend_cube_faces(faces, "gauss-seidel", 3) - faces
        assert float((ref - ours).abs().max()) < 1e-5, "numpy reference disagrees"
        t_sc = seamless_clone_per_face(faces[0].permute(1, 2, 0).numpy())
        print(f"| {s}² | {t_exact:.3f} | {t_gs:.3f} | {t_sweep:.2f} | {t_np:.2f} | "
              f"{t_np / t_gs:.0f}x / {t_np / t_sweep:.1f}x | {t_sc:.3f} |")
    if torch.cuda.is_available():
        print("\nGPU:\n\n| face | exact | gauss-seidel-200 (closed form) | gauss-seidel-200 (sweeps) |\n| --- | --- | --- | --- |")
        for s in sizes:
            faces = damage(e2c(erp, s)).cuda()

            def sync(fn):
                def run():
                    fn()
                    torch.cuda.synchronize()

                return run

            t1 = timeit(sync(lambda f=faces: blend_cube_faces(f, "exact")))
            t2 = timeit(sync(lambda f=faces: blend_cube_faces(f, "gauss-seidel", 200)))
            t3 = timeit(sync(lambda f=faces: blend_cube_faces(f, "gauss-seidel", 200, gs_impl="sweep")))
            print(f"| {s}² | {float(t1) * 1000:.1f} ms | {float(t2) * 1000:.1f} ms | {float(t3) * 1000:.1f} ms |")
    else:
        print("\nNo GPU in this run: GPU times not measured.")
    print()


def bench_metrics(args, data: Path) -> None:
    print("### Metric validation (faces W/4, band 8 px, grey 0..255)\n")
    print("Damage: per-face gain 0.6..1.4 and offset ±40/255 (seed 0). Blended = the damaged faces after cross-face blending.\n")
    print("| panorama | face | cubemap | Seam-SSIM ↑ | Seam-Sobel ↓ | seam jump ↓ | pole seam jump ↓ |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in PANORAMAS:
        erp = load(name, data)
        gt = e2c(erp)
        s = gt.shape[-1]
        dmg = damage(gt)
        rows = {
            "ground truth": gt,
            "noise": torch.rand(gt.shape, generator=torch.Generator().manual_seed(0)),
            "damaged": dmg,
            "damaged + gauss-seidel-200": blend_cube_faces(dmg, "gauss-seidel", 200).clamp(0, 1),
            "damaged + exact": blend_cube_faces(dmg, "exact").clamp(0, 1),
        }
        for k, v in rows.items():
            m = cube_seam_metrics(v)
            print(f"| {name} | {s} | {k} | {m['seam_ssim']:.3f} | {m['seam_sobel']:.2f} | {m['seam_jump']:.2f} | {m['pole_seam_jump']:.2f} |")
    print()


def bench_wrap(args, data: Path) -> None:
    print("### ERP wrap blending (band 32 columns each side)\n")
    print("| panorama | size | wrap_seam before | poisson after | time | feather after | time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in PANORAMAS:
        erp = load(name, data)
        h, w = erp.shape[-2:]
        before = erp_wrap_metrics(erp)["wrap_seam"]
        res = []
        for method in ("poisson", "feather"):
            out = blend_erp_wrap(erp, 32, method)
            t = timeit(lambda e=erp, m=method: blend_erp_wrap(e, 32, m))
            res.append((erp_wrap_metrics(out.clamp(0, 1))["wrap_seam"], t))
        print(f"| {name} | {w}x{h} | {before:.2f} | {res[0][0]:.2f} | {res[0][1]:.3f} | {res[1][0]:.2f} | {res[1][1]:.3f} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="512 faces only")
    ap.add_argument("--data", default="/work/shared/data/panoramas", help="folder of full-size *_erp.png")
    ap.add_argument("--no-loops", action="store_true", help="skip the slow sweep/numpy loops")
    ap.add_argument("--only", choices=("solvers", "metrics", "wrap"), default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average at start {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2-core machine)\n")
    if args.only in (None, "solvers"):
        bench_solvers(args, data)
    if args.only in (None, "metrics"):
        bench_metrics(args, data)
    if args.only in (None, "wrap"):
        bench_wrap(args, data)


if __name__ == "__main__":
    main()
