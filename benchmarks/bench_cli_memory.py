"""Benchmark: peak memory (and wall time) of ``pano360`` commands on an 8192x4096 panorama.

Usage:  python benchmarks/bench_cli_memory.py [--width 8192] [--work /tmp/pano360-bench-mem]
                                             [--commands e2c,c2e,blend-seams,refine-poles] [--json OUT]

Each command runs in a fresh subprocess (``python -m pano_core ...``); its peak resident memory is
``ru_maxrss`` of that child. The interpreter with torch, OpenCV, scipy and the CLI imported (no
work done) is measured the same way as the *baseline*; the table shows peak - baseline in MiB and
as a multiple of the float32 image (W x W/2 x 3 x 4 bytes). Target (issue 14, point 19): peak -
baseline <= 3 x the float32 input image + the float32 output, for e2c (dice), c2e and blend-seams.

``--before DIR`` also measures another checkout's ``pano_core`` (e.g. ``git archive <commit> pano_core |
tar -x -C DIR``) in the same run, interleaved command by command, and prints after/before ratios.

Inputs: the shared chalet_erp.png (2048x1024) resized to W x W/2 (area/cubic, 8-bit PNG) and its
dice cubemap (face W/4), made once in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _data import shared_panorama  # noqa: E402

MiB = 1024 * 1024
BASELINE = ("import torch, cv2, numpy, scipy.fft; from pano_core.cli import build_parser; build_parser(); "
            "import pano_core.geometry, pano_core.seams.poisson, pano_core.poles")


def run_child(argv: list[str], env: dict) -> tuple[int, float, int, str]:
    """(peak RSS bytes, wall s, exit code, stderr tail) of one subprocess, run in the folder of the
    pano_core it measures (``python -m`` puts the working folder first on sys.path)."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, cwd=env["PYTHONPATH"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace")[-500:]
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_maxrss * 1024, dt, p.returncode, err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=8192)
    ap.add_argument("--work", default="/tmp/pano360-bench-mem")
    ap.add_argument("--commands", default="e2c,c2e,blend-seams,refine-poles")
    ap.add_argument("--image", default=None, help="source panorama (default: shared chalet_erp.png)")
    ap.add_argument("--json", default="")
    ap.add_argument("--before", default=None, help="folder holding an older pano_core to compare with")
    args = ap.parse_args(argv)
    w, h = args.width, args.width // 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    py = sys.executable
    src = work / f"erp_{w}.png"
    dice = work / f"dice_{w}.png"
    if not src.is_file() or not dice.is_file():
        import cv2

        img = cv2.imread(str(args.image or shared_panorama("chalet_erp.png")), cv2.IMREAD_COLOR)
        cv2.imwrite(str(src), cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC))
        r = subprocess.run([py, "-m", "pano_core", "e2c", str(src), "--format", "dice", "-o", str(dice), "--force"],
                           cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr)
    img_f32 = w * h * 3 * 4
    s = w // 4
    commands = {
        "e2c": (["e2c", str(src), "--format", "dice", "-o", str(work / "out_dice.png"), "--force"], 12 * s * s * 3 * 4),
        "c2e": (["c2e", str(dice), "-o", str(work / "out_erp.png"), "--force"], img_f32),
        "blend-seams": (["blend-seams", str(dice), "-o", str(work / "out_blend.png"), "--force"], 6 * s * s * 3 * 4),
        "refine-poles": (["refine-poles", str(src), "-o", str(work / "out_poles.png"), "--force"], img_f32),
    }
    roots = {"after": str(ROOT)}
    if args.before:
        roots = {"before": str(Path(args.before).resolve()), **roots}
    envs = {k: dict(env, PYTHONPATH=v) for k, v in roots.items()}
    base = {}
    for k, e in envs.items():
        base[k], _, rc, err = run_child([py, "-c", BASELINE], e)
        if rc:
            raise SystemExit(err)
    print(f"{w}x{h}: float32 image {img_f32 / MiB:.0f} MiB; baseline interpreter "
          + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in base.items()))
    print("| command | version | peak RSS MiB | peak - baseline MiB | x float32 image | target MiB (3 x image + output) | met | wall s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    rows = []
    for name in args.commands.split(","):
        cmd, out_bytes = commands[name]
        target = 3 * img_f32 + out_bytes
        nets = {}
        for k, e in envs.items():
            peak, dt, rc, err = run_child([py, "-m", "pano_core", *cmd], e)
            if rc:
                raise SystemExit(f"{name} ({k}) failed: {err}")
            net = peak - base[k]
            nets[k] = net
            met = ("yes" if net <= target else "no") if name != "refine-poles" else "(no target)"
            rows.append({"command": name, "version": k, "peak_mib": peak / MiB, "net_mib": net / MiB,
                         "x_image": net / img_f32, "target_mib": target / MiB, "wall_s": dt})
            print(f"| {name} | {k} | {peak / MiB:.0f} | {net / MiB:.0f} | {net / img_f32:.2f} | {target / MiB:.0f} | "
                  f"{met} | {dt:.1f} |")
        if "before" in nets:
            print(f"|  | after/before | | {nets['after'] / nets['before']:.2f} | | | | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"width": w, "baseline_mib": {k: v / MiB for k, v in base.items()},
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
