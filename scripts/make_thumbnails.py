#!/usr/bin/env python3
"""Make the template-browser thumbnails ``workflows/<name>.jpg`` (dev tool; needs ComfyUI).

* Workflows that need no model weights are run for real in a ComfyUI server (the test harness,
  ``tests/comfy_harness.py``; full-size example inputs from ``tests/assets``, no substitutions),
  and the thumbnail is their saved output.
* Workflows that need model weights (FLUX.1-dev, FLUX.2, Qwen-Image, Sana) cannot be run here: their thumbnail is an illustration
  made from the example input with a banner saying so (never presented as a result).

    COMFYUI_PATH=... python scripts/make_thumbnails.py [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

THUMB_W = 512
ILLUSTRATION = {  # workflow -> (example image, banner lines)
    "dit360_text_to_panorama": ("chalet_erp.png", ["ILLUSTRATION - not a result of this workflow",
                                                   "needs FLUX.1-dev + DiT360 LoRA (~34 GB of weights)"]),
    "dit360_inpaint": ("snow_village_erp.png", ["ILLUSTRATION: the example input and its mask",
                                                "needs FLUX.1-dev + DiT360 LoRA (~34 GB of weights)"]),
    "dit360_outpaint": ("snow_village_erp.png", ["ILLUSTRATION: the example input and its mask",
                                                 "needs FLUX.1-dev + DiT360 LoRA (~34 GB of weights)"]),
    "dit360_view_to_panorama": ("chalet_erp.png", ["ILLUSTRATION - not a result of this workflow",
                                                   "needs FLUX.1-dev + DiT360 LoRA (~34 GB of weights)"]),
    "pole_refine": ("snow_village_erp.png", ["ILLUSTRATION: the example input (poles to refine)",
                                             "model branch needs FLUX.1-dev (~34 GB of weights)"]),
    "jopano_text_to_panorama": ("snow_village_erp.png", ["ILLUSTRATION - not a result of this workflow",
                                                         "needs the Sana 1.5 1.6B diffusers weights"]),
    "jopano_multi_text": ("chalet_erp.png", ["ILLUSTRATION - not a result of this workflow",
                                             "needs the Sana 1.5 1.6B diffusers weights"]),
    "jopano_view_to_panorama": ("chalet_erp.png", ["ILLUSTRATION: the example input photo",
                                                   "needs the Sana 1.5 1.6B diffusers weights"]),
    "qwen_image_360_text_to_panorama": ("snow_village_erp.png", ["ILLUSTRATION - not a result of this workflow",
                                                                 "needs Qwen-Image + a 360 LoRA (~30 GB)"]),
    "flux2_360_text_to_panorama": ("chalet_erp.png", ["ILLUSTRATION - not a result of this workflow",
                                                      "needs FLUX.2 [dev] + a 360 LoRA (~53 GB)"]),
}
MASKED = {"dit360_inpaint", "dit360_outpaint"}


def _fit(img: np.ndarray, width: int = THUMB_W) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def _banner(img: np.ndarray, lines: list[str]) -> np.ndarray:
    out = img.copy()
    bh = 22 * len(lines) + 10
    out[:bh] = (out[:bh] * 0.35).astype(np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(out, text, (10, 24 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), (0, 200, 255), 3)
    return out


def illustration(name: str) -> np.ndarray:
    src, lines = ILLUSTRATION[name]
    img = _fit(cv2.imread(str(REPO / "tests" / "assets" / src), cv2.IMREAD_COLOR))
    if name in MASKED:
        m = _fit(cv2.imread(str(REPO / "tests" / "assets" / "snow_village_mask0.png"), cv2.IMREAD_GRAYSCALE))
        m = cv2.resize(m, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST) > 127
        img[m] = (0.5 * img[m] + 0.5 * np.array([0, 0, 255])).astype(np.uint8)
    return _banner(img, lines)


def real_run(name: str, server) -> np.ndarray:
    import comfy_harness as ch

    ui = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    for n in ui["nodes"]:
        if n["type"] in ("LoadImage", "LoadImageMask"):
            server.add_input_file(REPO / "tests" / "assets" / n["widgets_values"][0])
    api = ch.ui_to_api(ui, server.object_info(), {})
    outputs = server.run(api, timeout=600)
    saves = [nid for nid, node in api.items() if node["class_type"] in ("SaveImage", "Pano360SavePanorama")]
    pick = {"viewer_perspective": "ERPToPerspective"}.get(name)
    if pick:  # the SaveImage fed by this node type
        for nid in saves:
            src = api[nid]["inputs"]["images"][0]
            if pick in api[src]["class_type"]:
                saves = [nid]
    img = server.images(outputs, saves[0])[0]
    return _fit(cv2.cvtColor(np.asarray(img)[..., :3].astype(np.uint8), cv2.COLOR_RGB2BGR))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None)
    args = ap.parse_args(argv)
    names = [p.stem for p in sorted((REPO / "workflows").glob("*.json"))]
    if args.only:
        names = [args.only]
    server = None
    try:
        for name in names:
            if name in ILLUSTRATION:
                img = illustration(name)
            else:
                if server is None:
                    import comfy_harness as ch

                    server = ch.ComfyServer(base_dir=tempfile.mkdtemp(prefix="pano360-thumbs-")).start()
                img = real_run(name, server)
            cv2.imwrite(str(REPO / "workflows" / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
            print(f"workflows/{name}.jpg ({'illustration' if name in ILLUSTRATION else 'real run'})")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
