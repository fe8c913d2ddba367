"""Cube padding (pano_core.geometry.cube_pad): geometry of every padded cell, batching, caching,
gradients, bad input. ``reverse_fu_edge`` (a padding plan with the F-U edge reversed) is shared
with the JoPano equivariance test."""

from __future__ import annotations

import pytest
import torch

from pano_core import PanoInputError
from pano_core.geometry import (
    FACE_NAMES,
    CubePadPlan,
    cube_pad,
    cube_pad_cache_clear,
    cube_pad_plan,
    face_cell_directions,
)
from pano_core.geometry import cube_padding as cp

F_, U_ = FACE_NAMES.index("F"), FACE_NAMES.index("U")


def reverse_fu_edge(plan: CubePadPlan) -> CubePadPlan:
    """The same plan with the padding across the F-U edge mirrored along the edge (F's top band
    and U's bottom band read their neighbour's edge in the wrong order): a single wrong edge."""
    s, w = plan.size, plan.width
    n = s + 2 * w
    src, weight = plan.src.clone(), plan.weight.clone()
    key = {(int(f), int(r), int(c)): i for i, (f, r, c) in enumerate(zip(plan.face, plan.row, plan.col))}
    for (f, r, c), i in key.items():
        if w <= c < w + s and ((f == F_ and r < w) or (f == U_ and r >= w + s)):
            j = key[(f, r, n - 1 - c)]
            src[i], weight[i] = plan.src[j], plan.weight[j]
    return CubePadPlan(s, w, plan.face, plan.row, plan.col, src, weight)


@pytest.fixture
def broken_fu_edge(monkeypatch):
    """Make every newly built padding plan have its F-U edge reversed (caches cleared around)."""
    build = cp._build_plan
    cube_pad_cache_clear()
    monkeypatch.setattr(cp, "_build_plan", lambda *a: reverse_fu_edge(build(*a)))
    yield
    cube_pad_cache_clear()


def padded_direction_error(size: int, width: int, mode: str) -> torch.Tensor:
    """(6, n, n) angle (radians) between each cell of the padded direction field and the direction
    of that cell on the extended face plane (0 in the interior)."""
    d = face_cell_directions(size, dtype=torch.float64).permute(0, 3, 1, 2).contiguous()
    p = cube_pad(d, width, mode)
    target = face_cell_directions(size, width, dtype=torch.float64).permute(0, 3, 1, 2)
    p = p / p.norm(dim=1, keepdim=True)
    return torch.acos((p * target).sum(1).clamp(-1, 1))


# Tolerance: a face-centre cell spans 2/S rad; bilinear samples the neighbour at the padded
# cell's own direction up to the clamp between the outer cell centre and the edge (< 1/4 cell),
# nearest up to half a cell diagonal (sqrt(2) / S).
TOL = {"bilinear": 0.5, "nearest": 1.42}


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("size,width", [(1, 1), (2, 1), (5, 2), (8, 1), (8, 3), (16, 2), (12, 12)])
def test_every_padded_cell_has_its_source_direction(size, width, mode):
    err = padded_direction_error(size, width, mode)
    assert err.shape == (6, size + 2 * width, size + 2 * width)
    assert float(err.max()) < TOL[mode] / size


def test_direction_check_catches_one_reversed_edge(broken_fu_edge):
    err = padded_direction_error(8, 2, "bilinear")
    assert float(err.max()) > 10 * TOL["bilinear"] / 8  # far beyond the tolerance
    bad = (err > TOL["bilinear"] / 8).nonzero()
    assert set(bad[:, 0].tolist()) == {F_, U_}  # only the two faces of the reversed edge


def test_interior_is_the_input_and_width_one_is_the_neighbour_row():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 7, 7)
    p = cube_pad(x, 2)
    assert torch.equal(p[:, :, 2:-2, 2:-2], x)
    # Width 1, nearest: F's right padding column is R's first column, top to bottom (classic
    # cube padding for side faces), and F's top padding row is U's bottom row.
    q = cube_pad(x, 1, "nearest")
    r = FACE_NAMES.index("R")
    assert torch.equal(q[F_, :, 1:-1, -1], x[r, :, :, 0])
    assert torch.equal(q[F_, :, 0, 1:-1], x[U_, :, -1, :])


def test_corner_cells_average_the_two_faces_on_the_diagonal():
    # A field that is constant per face: the padded corner cell on the diagonal is the mean of
    # the two faces meeting the source face at that corner; other corner cells take one face.
    vals = torch.arange(6, dtype=torch.float64).mul(10).view(6, 1, 1, 1).expand(6, 1, 4, 4).contiguous()
    p = cube_pad(vals, 2)
    r, u = FACE_NAMES.index("R"), FACE_NAMES.index("U")
    assert float(p[F_, 0, 0, -1]) == pytest.approx((10 * r + 10 * u) / 2)  # F's top-right diagonal cell
    assert float(p[F_, 0, 1, -1]) == pytest.approx(10 * r)  # below the diagonal: on R
    assert float(p[F_, 0, 0, -2]) == pytest.approx(10 * u)  # above it: on U


def test_batches_of_panoramas_pad_each_from_its_own_faces():
    torch.manual_seed(1)
    x = torch.randn(12, 2, 6, 6)
    p = cube_pad(x, 2)
    assert torch.equal(p[:6], cube_pad(x[:6], 2))
    assert torch.equal(p[6:], cube_pad(x[6:], 2))


def test_channels_last_input_gives_the_same_channels_last_result():
    torch.manual_seed(2)
    x = torch.randn(12, 5, 6, 6)
    cl = x.contiguous(memory_format=torch.channels_last)
    p = cube_pad(cl, 2)
    assert p.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(p, cube_pad(x, 2), atol=1e-6)


def test_plan_is_cached_per_size_width_device_dtype():
    a = cube_pad_plan(6, 1, device="cpu", dtype=torch.float32)
    assert cube_pad_plan(6, 1, device="cpu", dtype=torch.float32) is a
    assert cube_pad_plan(6, 1, device="cpu", dtype=torch.float64) is not a
    assert cube_pad_plan(6, 2, device="cpu", dtype=torch.float32) is not a
    assert torch.allclose(a.weight.sum(1), torch.ones(len(a.weight)))
    assert a.src.shape[1] <= 2  # width 1: at most two taps per cell (along the edge)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_flow_to_the_neighbour_faces(channels_last):
    x = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: cube_pad(t, 2), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    x = torch.randn(6, 4, 5, 5)
    assert torch.allclose(cube_pad(x.to(dtype), 1).float(), cube_pad(x, 1), atol=2e-2)


@pytest.mark.parametrize(
    "bad,width,match",
    [
        (torch.zeros(5, 1, 4, 4), 1, "6 square faces"),
        (torch.zeros(6, 1, 4, 5), 1, "6 square faces"),
        (torch.zeros(6, 4, 4), 1, r"\(B\*6, C, S, S\)"),
        (torch.zeros(6, 1, 4, 4), -1, "width"),
        (torch.zeros(6, 1, 4, 4), 1.5, "width"),
        (torch.zeros(6, 1, 4, 4, dtype=torch.long), 1, "float"),
    ],
)
def test_bad_input(bad, width, match):
    with pytest.raises(PanoInputError, match=match):
        cube_pad(bad, width)
