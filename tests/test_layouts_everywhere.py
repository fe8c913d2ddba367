"""Every cubemap layout through every cubemap-consuming node and command (issue 14, point 1).

The natural chain ERP -> Cubemap (horizon) -> Seam Blend (horizon) once crashed because a layout
view kept non-contiguous strides. Each consumer gets each layout it offers, from the producer
that makes it (so the strides are the real ones), and must give the same faces as the stack.
"""

from __future__ import annotations

import importlib

import comfy_harness
import pytest
import torch
import torch.nn.functional as F

from pano_core.cli import main
from pano_core.geometry import e2c, faces_to_layout, read_cubemap
from pano_core.io import read_image, write_image

PACK = "pano360_pack_layouts_under_test"
ASSET = comfy_harness.REPO_ROOT / "tests" / "assets" / "snow_village_erp.png"
S = 16


@pytest.fixture(scope="module")
def erp() -> torch.Tensor:
    return F.interpolate(read_image(ASSET)[:, :3], size=(2 * S, 4 * S), mode="area")


@pytest.fixture(scope="module")
def nodes(comfy_inprocess):
    comfy_harness.import_pack_inprocess(PACK)
    return importlib.import_module(f"{PACK}.nodes").NODE_CLASS_MAPPINGS


def _layout_images(nodes, erp) -> dict[str, torch.Tensor]:
    """ComfyUI IMAGEs in every layout, as the ERP -> Cubemap node makes them."""
    conv = nodes["Pano360ERPToCubemap"]()
    img = erp.movedim(1, -1).contiguous()
    out = {}
    for lay in ("horizon", "dice"):
        faces, layout_image, _ = conv.run(img, S, lay, "bilinear")
        out[lay] = layout_image
    out["stack"] = faces
    return out


def test_seam_blend_node_every_layout(nodes, erp):
    blend = nodes["Pano360CubemapSeamBlend"]()
    imgs = _layout_images(nodes, erp)
    ref = None
    for lay, img in imgs.items():
        for method in ("gauss-seidel", "exact"):
            for keep in ("", "F"):
                (res,) = blend.blend(img, method, 20, lay, keep)
                assert res.shape == img.shape, (lay, method)
                assert torch.isfinite(res).all()
        (res,) = blend.blend(img, "exact", 20, lay)
        from pano_core.geometry import layout_to_faces

        stack = layout_to_faces(res.movedim(-1, 1), lay)
        if ref is None:
            ref = stack
        torch.testing.assert_close(stack, ref, atol=1e-5, rtol=0)


def test_cubemap_to_erp_node_every_layout(nodes, erp):
    c2e_node = nodes["Pano360CubemapToERP"]()
    imgs = _layout_images(nodes, erp)
    ref, _ = c2e_node.run(imgs["stack"], "stack (6-image batch)", 0, "bilinear")
    for lay, img in imgs.items():
        for choice in ("auto", "stack (6-image batch)" if lay == "stack" else lay):
            out, mask = c2e_node.run(img, choice, 0, "bilinear", mask=img[..., 0])
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
            assert mask.shape == out.shape[:3]


def test_seam_metrics_node_and_viewer_every_layout(nodes, erp):
    from importlib import import_module

    metrics = nodes["Pano360SeamMetrics"]()
    viewer = import_module(f"{PACK}.nodes.viewer")
    imgs = _layout_images(nodes, erp)
    ref = None
    for lay, img in imgs.items():
        res = metrics.measure(img, lay, 2)["result"]
        jump = [v for v in res if isinstance(v, float)]
        assert jump and all(v == v for v in jump)
        ref = jump if ref is None else ref
        assert jump == pytest.approx(ref, abs=1e-5), lay
        pano, src, _ = viewer.to_erp(img.movedim(-1, 1))
        assert pano.shape[-1] == 2 * pano.shape[-2]
        assert src == ("cubemap stack" if lay == "stack" else lay)


@pytest.mark.parametrize("fmt", ["dict", "list", "horizon", "dice", "stack"])
def test_cli_every_layout(fmt, erp, tmp_path, capsys):
    src = tmp_path / "erp.png"
    write_image(src, erp)
    cube = tmp_path / ("cube" if fmt in ("dict", "list") else "cube.png")
    assert main(["e2c", str(src), "--format", fmt, "-o", str(cube)]) == 0
    ref = e2c(read_image(src), S)
    faces, _ = read_cubemap(cube, fmt)
    assert (faces - ref).abs().max() < 1 / 255 + 1e-6
    assert main(["c2e", str(cube), "--format", fmt, "-o", str(tmp_path / "back.png")]) == 0
    for method in ("gauss-seidel", "exact"):
        out = tmp_path / f"blend_{method}{'' if fmt in ('dict', 'list') else '.png'}"
        in_fmt = "dict" if fmt == "list" else fmt
        assert main(["blend-seams", str(cube), "--format", in_fmt, "--method", method, "--iterations", "10",
                     "-o", str(out)]) == 0, capsys.readouterr().err
        blended, _ = read_cubemap(out, fmt)
        assert blended.shape == faces.shape
    capsys.readouterr()
    assert main(["seam-metrics", str(cube), "--format", "dict" if fmt == "list" else fmt]) == 0
    assert '"seam_jump"' in capsys.readouterr().out


def test_blend_faces_of_layout_views():
    """pano_core directly: faces that are strided views of a horizon/dice image."""
    from pano_core.geometry import layout_to_faces
    from pano_core.seams.poisson import blend_cube_faces

    faces = torch.rand(6, 3, 8, 8)
    for lay in ("horizon", "dice"):
        img = faces_to_layout(faces, lay).movedim(1, -1).contiguous().movedim(-1, 1)  # ComfyUI-like strides
        view = layout_to_faces(img, lay)
        for m in ("gauss-seidel", "exact"):
            torch.testing.assert_close(blend_cube_faces(view, m, 5), blend_cube_faces(faces, m, 5), atol=1e-6, rtol=0)
