"""Before/after picture of the weight-free pole refiners (README, issue 14 point 5).

    python benchmarks/figure_pole_refiners.py [-o benchmarks/figures/pole_refiners.jpg]

For the shared 2048x1024 snow village and chalet panoramas: the top (U) and bottom (D) cube faces
(512 px) as they are, refined by OpenCV Telea with the old default hole (fraction 0.5), Telea and
Navier-Stokes with the new default (0.2), and FSR (opencv-contrib's xphoto, fraction 0.5) when
it is installed. One row per face, one column per refiner, labelled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _data import shared_panorama  # noqa: E402

from pano_core import poles  # noqa: E402
from pano_core.io import read_image  # noqa: E402

TILE = 256


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "figures" / "pole_refiners.jpg"))
    args = ap.parse_args(argv)
    cols = [("input", None, None), ("Telea, 0.5 (old default)", "telea", 0.5), ("Telea, 0.2 (default)", "telea", 0.2),
            ("Navier-Stokes, 0.2", "ns", 0.2)]
    if poles.fsr_available():
        cols.append(("FSR (xphoto), 0.5", "fsr", 0.5))
    rows = []
    for name in ("snow_village_erp.png", "chalet_erp.png"):
        erp = read_image(shared_panorama(name))[:, :3]
        s = erp.shape[-1] // 4
        for face_idx, face_name in ((0, "U"), (1, "D")):
            tiles = []
            for label, method, frac in cols:
                if method is None:
                    faces, _ = poles.extract_pole_faces(erp, fraction=0.5, face_size=s)
                else:
                    faces, masks = poles.extract_pole_faces(erp, fraction=frac, face_size=s)
                    faces = poles.OpenCVInpainter(method)(faces, masks)
                img = (faces[face_idx].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
                img = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), (TILE, TILE), interpolation=cv2.INTER_AREA)
                cv2.putText(img, f"{name.split('_erp')[0]} {face_name}: {label}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX,
                            0.42, (255, 255, 255), 1, cv2.LINE_AA)
                tiles.append(img)
            rows.append(np.concatenate(tiles, 1))
    out = np.concatenate(rows, 0)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.output, out, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.output} ({out.shape[1]}x{out.shape[0]}; FSR {'shown' if poles.fsr_available() else 'not installed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
