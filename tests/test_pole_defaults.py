"""Pole refinement defaults (issue 14, point 5): the text-to-panorama template refines the poles
with the model (the unpatched Flux), OpenCV keeps a small default hole, and FSR (opencv-contrib's
xphoto) is offered when it is installed."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pano_core import poles
from pano_core.cli import main
from pano_core.io import write_image

ROOT = Path(__file__).resolve().parents[1]


def test_text_to_panorama_refines_with_the_unpatched_model():
    ui = json.loads((ROOT / "workflows" / "dit360_text_to_panorama.json").read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {lk[0]: lk for lk in ui["links"]}
    (ref,) = [n for n in ui["nodes"] if n["type"] == "Pano360RefinePoles"]
    assert not [n for n in ui["nodes"] if n["type"] == "Pano360RefinePolesOpenCV"]
    src = links[[i for i in ref["inputs"] if i["name"] == "model"][0]["link"]][1]
    assert nodes[src]["type"] == "UNETLoader"  # not the LoRA / DiT360-patched model


def test_opencv_default_fraction_is_small(tmp_path, monkeypatch):
    assert poles.OPENCV_DEFAULT_FRACTION < poles.DEFAULT_FRACTION
    seen = {}

    def fake(erp, inpainter, **kw):
        seen.update(kw)
        return erp

    import pano_core.poles as P

    monkeypatch.setattr(P, "refine_poles", fake)
    src = tmp_path / "erp.png"
    write_image(src, torch.rand(1, 3, 32, 64))
    assert main(["refine-poles", str(src), "-o", str(tmp_path / "o.png")]) == 0
    assert seen["fraction"] == poles.OPENCV_DEFAULT_FRACTION
    assert main(["refine-poles", str(src), "--fraction", "0.4", "-o", str(tmp_path / "o2.png")]) == 0
    assert seen["fraction"] == 0.4


def test_fsr_through_xphoto_when_present(monkeypatch):
    import cv2

    if not poles.fsr_available():
        with pytest.raises(ValueError, match="fsr needs OpenCV's xphoto"):
            poles.OpenCVInpainter("fsr")
        assert poles.opencv_methods() == ("telea", "ns")
    calls = []

    def inpaint(src, known, dst, flag):  # a stand-in with xphoto's contract: fill where known == 0
        calls.append((src.shape, flag, int(known.min()), int(known.max())))
        fill = src[known > 0].mean(axis=0)
        dst[...] = np.where((known > 0)[..., None] if src.ndim == 3 else known > 0, src, fill.astype(src.dtype))

    monkeypatch.setattr(cv2, "xphoto", types.SimpleNamespace(inpaint=inpaint, INPAINT_FSR_FAST=7), raising=False)
    assert poles.fsr_available() and "fsr" in poles.opencv_methods()
    inp = poles.make_inpainter("opencv-fsr")
    img = torch.rand(2, 4, 16, 16)  # RGBA: RGB in one call, alpha on its own
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    out = inp(img, mask)
    assert [c[:2] for c in calls] == [((16, 16, 3), 7), ((16, 16), 7)] * 2
    assert all(c[2:] == (0, 255) for c in calls)  # known-pixel masks: 0 in the hole
    keep = mask[:, 0] < 0.5
    assert torch.equal(out.permute(0, 2, 3, 1)[keep], img.permute(0, 2, 3, 1)[keep])
    assert not torch.allclose(out[:, :, 4:12, 4:12], img[:, :, 4:12, 4:12])
