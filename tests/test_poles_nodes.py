"""Pole refinement nodes, in-process (real ComfyUI modules, tiny models)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from pathlib import Path

import comfy_harness
import pytest
import torch
import torch.nn.functional as F

from pano_core import poles as core
from pano_core.io import read_image

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "pano360_pack_poles_under_test"


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    """The ComfyUI pack imported as a package (as ComfyUI does), its nodes.poles module returned."""
    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.poles")


@pytest.fixture(scope="module")
def erp_image() -> torch.Tensor:
    """ComfyUI IMAGE (1, 64, 128, 3) of the snow village."""
    erp = F.interpolate(read_image(ROOT / "tests" / "assets" / "snow_village_erp.png"), size=(64, 128), mode="area")
    return erp.movedim(1, -1).contiguous()


@contextlib.contextmanager
def raises_pano(match: str):
    """pytest.raises for the pack's own PanoInputError (the pack imports its vendored pano_core)."""
    with pytest.raises(ValueError, match=match) as info:
        yield info
    assert type(info.value).__name__ == "PanoInputError", type(info.value)


def _outside(erp_bhwc: torch.Tensor, masks_bchw: torch.Tensor, feather: int) -> torch.Tensor:
    w = core.pole_weight_erp(erp_bhwc.shape[1:3], masks_bchw, feather)
    return (w == 0)[:, 0]  # (B, H, W)


def test_registered(pack):
    for name in ("Pano360ExtractPoleFaces", "Pano360MergePoleFaces", "Pano360RefinePoles", "Pano360RefinePolesOpenCV"):
        assert name in pack.NODE_CLASS_MAPPINGS and name in pack.NODE_DISPLAY_NAME_MAPPINGS
        cls = pack.NODE_CLASS_MAPPINGS[name]
        assert cls.CATEGORY.startswith("Pano360/")
        assert isinstance(cls.INPUT_TYPES(), dict)


def test_extract_and_merge_nodes_round_trip(pack, erp_image):
    faces, masks, passthrough = pack.Pano360ExtractPoleFaces().extract(erp_image, 0.5, 0)
    assert faces.shape == (2, 32, 32, 3) and masks.shape == (2, 32, 32)
    assert passthrough is erp_image
    assert masks[0].sum().item() == 16 * 16
    # inpaint graph stand-in: paint the masked region black
    painted = faces * (1 - masks[..., None])
    (out,) = pack.Pano360MergePoleFaces().merge(erp_image, painted, 2, masks)
    assert out.shape == erp_image.shape
    outside = _outside(erp_image, masks[:, None], 2)
    assert torch.equal(out[outside], erp_image[outside])
    assert (~outside).any()
    # the zenith became dark
    assert out[0, 0].mean() < 0.5 * erp_image[0, 0].mean()
    # without the mask input the node falls back to the fraction's square
    (out2,) = pack.Pano360MergePoleFaces().merge(erp_image, painted, 2, None, 0.5)
    assert torch.equal(out, out2)


def test_merge_node_bad_inputs(pack, erp_image):
    faces, masks, _ = pack.Pano360ExtractPoleFaces().extract(erp_image, 0.5, 0)
    node = pack.Pano360MergePoleFaces()
    with raises_pano("pole_masks.*size"):
        node.merge(erp_image, faces, 2, masks[:, :-4, :-4])
    with raises_pano("pole_faces"):
        node.merge(erp_image, faces[:1], 2, masks)
    with raises_pano("panorama.*2:1"):
        node.merge(erp_image[:, :, :100], faces, 2, masks)
    with raises_pano("feather"):
        node.merge(erp_image, faces, -1, masks)


def test_opencv_node(pack, erp_image):
    (out,) = pack.Pano360RefinePolesOpenCV().refine(erp_image, "ns", 3.0, 0.5, 2, 0)
    assert out.shape == erp_image.shape
    _, masks = core.extract_pole_faces(erp_image.movedim(-1, 1))
    outside = _outside(erp_image, masks, 2)
    assert torch.equal(out[outside], erp_image[outside])
    assert not torch.equal(out, erp_image)


def _conditioning(tiny_models, text: str):
    clip = tiny_models.build_tiny_clip(0)
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


@pytest.mark.parametrize("variant", ["dev", "fill"])
def test_model_refiner_node(pack, tiny_models, erp_image, variant):
    import comfy.utils

    model = tiny_models.build_tiny_flux(0, variant)
    vae = tiny_models.build_tiny_vae(0)
    pos, neg = _conditioning(tiny_models, "snowy sky"), _conditioning(tiny_models, "")
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        node = pack.Pano360RefinePoles()
        args = dict(seed=7, steps=3, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0,
                    fraction=0.5, feather=2, face_size=0)
        out, faces = node.refine(model, vae, pos, neg, erp_image, **args)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert out.shape == erp_image.shape and faces.shape == (2, 32, 32, 3)
    assert torch.isfinite(out).all()
    _, masks = core.extract_pole_faces(erp_image.movedim(-1, 1), face_size=32)
    outside = _outside(erp_image, masks, 2)
    assert torch.equal(out[outside], erp_image[outside])
    assert (out[~outside] - erp_image[~outside]).abs().mean() > 1e-3
    assert calls and calls[-1] == (3, 3)  # the sampler drove the progress bar to the end
    out_again, _ = node.refine(model, vae, pos, neg, erp_image, **args)
    assert torch.equal(out, out_again)  # seeded
    out_other, _ = node.refine(model, vae, pos, neg, erp_image, **{**args, "seed": 8})
    assert not torch.equal(out, out_other)


def test_model_refiner_node_bad_input(pack, tiny_models, erp_image):
    model = tiny_models.build_tiny_flux(0, "dev")
    vae = tiny_models.build_tiny_vae(0)
    pos = _conditioning(tiny_models, "x")
    node = pack.Pano360RefinePoles()
    with raises_pano("panorama"):
        node.refine(model, vae, pos, pos, erp_image[:, :, :90], steps=1)
    with raises_pano("feather"):
        node.refine(model, vae, pos, pos, erp_image, steps=1, feather=-3)
