"""Mask and face sizes are enforced by the nodes (issue 14, point 14)."""

from __future__ import annotations

import importlib

import comfy_harness as ch
import pytest
import torch

PACK = "pano360_pack_sizes_under_test"


@pytest.fixture(scope="module")
def nodes(comfy_inprocess):
    ch.import_pack_inprocess(PACK)
    return importlib.import_module(f"{PACK}.nodes").NODE_CLASS_MAPPINGS


def _call(nodes, node_id, **kw):
    cls = nodes[node_id]
    return getattr(cls(), cls.FUNCTION)(**kw)


def test_masks_of_the_wrong_size_are_refused(nodes):
    erp = torch.rand(1, 32, 64, 3)
    view = torch.rand(1, 24, 32, 3)
    wrong = torch.ones(1, 30, 64)
    calls = {
        "Pano360ERPToCubemap": dict(image=erp, face_size=8, layout="dice", mode="bilinear"),
        "Pano360RotatePanorama": dict(image=erp, yaw=10.0, pitch=0.0, roll=0.0, mode="bilinear"),
        "Pano360RollYaw": dict(image=erp, yaw=10.0),
        "Pano360ERPToPerspective": dict(image=erp, fov=90.0, yaw=0.0, pitch=0.0, roll=0.0, width=16, height=16,
                                        mode="bilinear"),
        "Pano360PerspectiveToERP": dict(image=view, fov=90.0, yaw=0.0, pitch=0.0, roll=0.0, erp_width=64,
                                        mode="bilinear"),
        "Pano360CubemapToERP": dict(image=torch.rand(1, 8, 48, 3), input_layout="horizon", width=0,
                                    mode="bilinear"),
    }
    for node_id, kw in calls.items():
        with pytest.raises(ValueError, match="mask: expected the size of image") as info:
            _call(nodes, node_id, mask=wrong, **kw)
        assert type(info.value).__name__ == "PanoInputError", node_id
        right = torch.ones(1, *kw["image"].shape[1:3])
        _call(nodes, node_id, mask=right, **kw)  # the right size works
    with pytest.raises(ValueError, match="expected 1 mask or one per image"):
        _call(nodes, "Pano360RollYaw", image=erp, yaw=0.0, mask=torch.ones(3, 32, 64))


def test_merge_pole_faces_checks_the_face_size(nodes):
    pano = torch.rand(1, 128, 256, 3)
    faces, masks, _ = _call(nodes, "Pano360ExtractPoleFaces", panorama=pano)
    assert faces.shape[1] == 64
    small = torch.nn.functional.interpolate(faces.movedim(-1, 1), size=(40, 40)).movedim(1, -1)
    with pytest.raises(ValueError, match="pole_faces: expected 64x64 faces .* got 40x40"):
        _call(nodes, "Pano360MergePoleFaces", panorama=pano, pole_faces=small, feather=4)
    with pytest.raises(ValueError, match="masks must have the size of the pole faces"):
        _call(nodes, "Pano360MergePoleFaces", panorama=pano, pole_faces=small, feather=4, pole_masks=masks)
    (out,) = _call(nodes, "Pano360MergePoleFaces", panorama=pano, pole_faces=faces, feather=4)
    assert out.shape == pano.shape
    # faces extracted with an explicit face size merge when the same size is given
    faces48, _, _ = _call(nodes, "Pano360ExtractPoleFaces", panorama=pano, face_size=48)
    _call(nodes, "Pano360MergePoleFaces", panorama=pano, pole_faces=faces48, feather=4, face_size=48)
