"""Every FLOAT, IMAGE and MASK input of every node is checked (issue 14, point 13): NaN and
infinity slip through ComfyUI's min/max checks, so each node says which input is not finite, and
an empty batch is an error instead of silently doing nothing. In-process over all nodes, and
through a real server (which keeps serving)."""

from __future__ import annotations

import importlib
import math

import comfy_harness as ch
import pytest
import torch

PACK = "pano360_pack_input_checks_under_test"


@pytest.fixture(scope="module")
def nodes(comfy_inprocess):
    ch.import_pack_inprocess(PACK)
    mod = importlib.import_module(f"{PACK}.nodes")
    return mod.NODE_CLASS_MAPPINGS, importlib.import_module(f"{PACK}.nodes._common")


def _bad_values(typ: str):
    if typ == "FLOAT":
        return [("nan", math.nan, "finite"), ("inf", math.inf, "finite")]
    shape = (1, 8, 16, 3) if typ == "IMAGE" else (1, 8, 16)
    x = torch.rand(shape)
    x[0, 2, 3] = math.nan
    return [("nan", x, "NaN"), ("empty batch", torch.zeros((0,) + shape[1:]), "empty")]


def test_every_float_image_mask_input_of_every_node(nodes):
    classes, common = nodes
    counts = {"FLOAT": 0, "IMAGE": 0, "MASK": 0}
    for node_id, cls in classes.items():
        fn = getattr(cls(), cls.FUNCTION)
        assert getattr(fn, "_pano360_checked", False), node_id
        for name, typ in common._input_type_map(cls).items():
            if typ not in counts:
                continue
            counts[typ] += 1
            for label, value, expect in _bad_values(typ):
                with pytest.raises(ValueError, match=expect) as info:
                    fn(**{name: value})
                assert type(info.value).__name__ == "PanoInputError", (node_id, name, label)
                assert str(info.value).startswith(f"{name}:"), (node_id, name, str(info.value))
    assert counts["FLOAT"] >= 20 and counts["IMAGE"] >= 15 and counts["MASK"] >= 5, counts


def test_good_values_pass_the_checks(nodes):
    _, common = nodes
    common.check_input_value("x", "FLOAT", 1.5)
    common.check_input_value("x", "FLOAT", 0)
    common.check_input_value("x", "IMAGE", torch.rand(2, 4, 4, 3))
    common.check_input_value("x", "MASK", torch.rand(4, 4))


@pytest.mark.comfy
@pytest.mark.timeout(600)
def test_nan_and_empty_batch_in_the_server(comfy):
    name = comfy.add_input_file(ch.ASSETS_DIR / "snow_village_erp.png")
    load = {"class_type": "LoadImage", "inputs": {"image": name}}
    small = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "area", "width": 64,
                                                    "height": 32, "crop": "disabled"}}
    cases = [
        ({"3": {"class_type": "Pano360RotatePanorama", "inputs": {"image": ["2", 0], "yaw": math.nan, "pitch": 0.0,
                                                                  "roll": 0.0, "mode": "bilinear"}},
          "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}, "Pano360RotatePanorama", "yaw"),
    ]
    for extra, node_type, input_name in cases:
        prompt = {"1": load, "2": small, **extra}
        with pytest.raises(ch.ComfyExecutionError) as info:
            comfy.run(prompt, timeout=300)
        assert info.value.node_type == node_type
        assert info.value.exception_message.startswith(f"{input_name}: expected a finite number"), \
            info.value.exception_message
    # a mask of the wrong size (point 14)
    prompt = {"1": load, "2": small,
              "3": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 30}},
              "4": {"class_type": "Pano360RotatePanorama", "inputs": {"image": ["2", 0], "yaw": 5.0, "pitch": 0.0,
                                                                      "roll": 0.0, "mode": "bilinear",
                                                                      "mask": ["3", 0]}},
              "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}
    with pytest.raises(ch.ComfyExecutionError) as info:
        comfy.run(prompt, timeout=300)
    assert "mask: expected the size of image (64x32); got 64x30" in info.value.exception_message
    # the server keeps serving
    out = comfy.run({"1": load, "2": small, "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}},
                    timeout=300)
    assert comfy.images(out, "3")[0].shape[:2] == (32, 64)


def test_size_limit_setting_parsing_and_scope(nodes, tmp_path):
    """The Size limit setting file: megapixels -> pixels, 0/unset/bad values give the other limits
    back (a bad value is ignored, not fatal), a change of the file is seen; the limit and its hint
    apply only inside the node call."""
    import json

    from pano_core import budget
    from pano_core.errors import PanoInputError

    _, common = nodes
    f = tmp_path / "comfy.settings.json"
    assert common.size_limit_from_settings(str(f)) is None  # no file
    for raw, want in ((2.5, 2_500_000), (0, None), ("abc", None), (-1, None), (float("nan"), None), (1e-9, 1)):
        f.write_text(json.dumps({common.SIZE_LIMIT_SETTING: raw, "Comfy.Other": 1}))
        assert common.size_limit_from_settings(str(f)) == want, raw
    f.write_text("{not json")
    assert common.size_limit_from_settings(str(f)) is None
    default = budget.max_pixels()
    with budget.pixel_limit(100, common.SIZE_LIMIT_HINT):
        assert budget.max_pixels() == 100
        with pytest.raises(PanoInputError, match="Settings → Pano360 → Size limit"):
            budget.check_pixels("face_size", 20, 10)
    assert budget.max_pixels() == default
    with pytest.raises(PanoInputError, match="--max-pixels"):
        budget.check_pixels("face_size", 20, 10, limit=100)
