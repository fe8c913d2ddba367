"""Cross-face Poisson blending, ERP wrap blending and seam metrics (pano_core.seams)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pano_core.cli import main as cli_main
from pano_core.errors import PanoInputError
from pano_core.geometry import FACE_NAMES, e2c, faces_to_layout, write_cubemap
from pano_core.io import read_image, write_image
from pano_core.seams.adjacency import cube_adjacency, side_band
from pano_core.seams.metrics import cube_seam_metrics, erp_wrap_metrics, seam_metrics
from pano_core.seams.poisson import blend_cube_faces, edge_targets
from pano_core.seams.solvers import (
    laplacian5,
    residual,
    solve_exact,
    solve_gauss_seidel,
    solve_gauss_seidel_spectral,
)
from pano_core.seams.wrap import blend_erp_wrap

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="module")
def erps():
    return {n: read_image(ASSETS / f"{n}_erp.png")[:, :3] for n in ("snow_village", "chalet")}


def damage(faces: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Per-face gain 0.6..1.4 and offset +-40/255 (the validation damage of the issue)."""
    g = torch.Generator().manual_seed(seed)
    n = faces.shape[0]
    gain = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    off = (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 80 / 255
    return (faces * gain + off).clamp(0, 1)


# --------------------------------------------------------------------------- solvers


def _gs_reference(r, d, iterations):
    """Plain pixel-by-pixel red-black Gauss-Seidel (python loops), for tiny grids."""
    u = d.clone().double().numpy()
    u[:, 1:-1, 1:-1] = 0
    rr = r.double().numpy()
    n, h, w = u.shape
    for _ in range(iterations):
        for parity in (0, 1):
            for i in range(1, h - 1):
                for j in range(1, w - 1):
                    if (i + j) % 2 == parity:
                        u[:, i, j] = (u[:, i - 1, j] + u[:, i + 1, j] + u[:, i, j - 1] + u[:, i, j + 1] - rr[:, i - 1, j - 1]) / 4
    return torch.from_numpy(u)


@pytest.mark.parametrize("hw", [(7, 9), (8, 8), (9, 6), (3, 5)])
def test_gauss_seidel_sweeps_match_pixel_loop_and_closed_form(hw):
    h, w = hw
    g = torch.Generator().manual_seed(h * 10 + w)
    d = torch.randn(3, h, w, generator=g, dtype=torch.float64)
    r = torch.randn(3, h - 2, w - 2, generator=g, dtype=torch.float64)
    for k in (1, 2, 5):
        ref = _gs_reference(r, d, k)
        sweep = solve_gauss_seidel(r, d, k)
        assert torch.allclose(sweep, ref, atol=1e-12)
        for backend in ("scipy", "torch"):
            spec = solve_gauss_seidel_spectral(r, d, k, backend=backend)
            assert torch.allclose(spec, ref, atol=1e-11), (k, backend)
    # many sweeps converge to the exact solution
    assert torch.allclose(solve_gauss_seidel(r, d, 2000), solve_exact(r, d), atol=1e-9)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_solver_residual_below_1e5(backend, dtype):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 130, 97, generator=g).to(dtype)
    d = (torch.rand(4, 130, 97, generator=g) - 0.5).to(dtype)
    r = (torch.rand(4, 128, 95, generator=g) - 0.5).to(dtype) * 0.1
    u = solve_exact(r, d, backend=backend, x0=x0)
    assert u.dtype == dtype
    assert float(residual(u, laplacian5(x0.double()) + r.double())) < 1e-5
    ring = torch.ones(130, 97, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    assert torch.allclose(u[:, ring], (x0 + d)[:, ring], atol=1e-6)


def test_fast_interior_picks_fast_lengths_only_where_the_direct_one_is_slow():
    from pano_core.seams.solvers import _largest_prime, fast_interior

    # power-of-two faces: S = 2048 -> interior 2046, FFT length 4094 = 2*23*89 -> 2047 (4096)
    assert fast_interior(2046) == 2047
    assert fast_interior(1534) == 1535 and fast_interior(2998) == 2999
    # lengths pocketfft handles well stay; small interiors stay
    assert fast_interior(4094) == 4094 and fast_interior(1022) == 1022 and fast_interior(510) == 510
    for m in range(1000, 1300):
        m2 = fast_interior(m)
        assert m2 >= m and (m2 == m or _largest_prime(2 * (m2 + 1)) <= 5)


@pytest.mark.parametrize("hw", [(22, 22), (22, 30), (12, 40), (17, 30), (30, 17)])
@pytest.mark.parametrize("with_r", [False, True])
def test_exact_solve_on_a_bigger_fast_grid_equals_the_direct_solve(monkeypatch, hw, with_r):
    """The embedding + capacitance solve (issue 14, point 18) gives the direct DST-I solution:
    rows only, columns only, or both embedded; with and without an interior right-hand side."""
    import pano_core.seams.solvers as solvers

    monkeypatch.setattr(solvers, "EMBED_MIN", 4)
    monkeypatch.setattr(solvers, "EMBED_PRIME", 3)  # embed every length whose 2(m+1) has a factor > 3
    solvers._capacitance.cache_clear()
    h, w = hw
    m2, n2 = solvers.fast_interior(h - 2), solvers.fast_interior(w - 2)
    assert (m2, n2) != (h - 2, w - 2)  # (17, 30): columns only; (30, 17): rows only; squares: split C
    g = torch.Generator().manual_seed(h * 100 + w)
    d = torch.randn(3, h, w, generator=g, dtype=torch.float64)
    r = torch.randn(3, h - 2, w - 2, generator=g, dtype=torch.float64) if with_r else None
    outs = []
    for fast in (True, False):
        out = d.clone()
        out[:, 1:-1, 1:-1] = 0
        solvers.solve_ring_scipy(solvers._ring_rhs(d), out, None, r, fast_length=fast)
        outs.append(out)
    assert torch.allclose(outs[0], outs[1], atol=1e-12)
    rhs = torch.zeros(3, h - 2, w - 2, dtype=torch.float64) if r is None else r
    assert float(residual(outs[0], rhs)) < 1e-12
    assert torch.equal(outs[0][:, 0], d[:, 0]) and torch.equal(outs[0][:, :, -1], d[:, :, -1])
    # and through the public entry point, float32, channels-last faces as the cube blender has them
    faces = torch.rand(2, 3, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    dd = torch.randn(2, 3, h, w, generator=g)
    ref = solve_exact(None, dd.double(), x0=faces.double())
    assert torch.allclose(solve_exact(None, dd, x0=faces).double(), ref, atol=2e-5)


def test_cube_blend_exact_uses_the_fast_length_at_2048_faces(monkeypatch):
    """The cube blender at a face size whose DST length is awkward goes through the embedding
    (scaled down: the rule is the same at S = 2048)."""
    import pano_core.seams.solvers as solvers

    monkeypatch.setattr(solvers, "EMBED_MIN", 16)
    called = []
    real = solvers._solve_ring_embedded
    monkeypatch.setattr(solvers, "_solve_ring_embedded", lambda *a, **k: (called.append(a[-3:-1]), real(*a, **k))[1])
    faces = damage(torch.rand(6, 3, 48, 48, generator=torch.Generator().manual_seed(3)))  # interior 46: 94 = 2*47
    fast = blend_cube_faces(faces, method="exact")
    assert called and called[0] == (47, 47)
    monkeypatch.setattr(solvers, "EMBED_MIN", 10**9)
    direct = blend_cube_faces(faces, method="exact")
    assert torch.allclose(fast, direct, atol=2e-6)


# --------------------------------------------------------------------------- adjacency


def test_adjacency_is_geometric_and_complete():
    adj = cube_adjacency(16)
    assert len(adj.edges) == 12
    count = {k: 0 for k in range(6)}
    pairs = set()
    for e in adj.edges:
        count[e.face_a] += 1
        count[e.face_b] += 1
        pairs.add(frozenset((e.face_a, e.face_b)))
    assert all(v == 4 for v in count.values())
    assert len(pairs) == 12
    # opposite faces never touch: F-B, R-L, U-D
    for a, b in (("F", "B"), ("R", "L"), ("U", "D")):
        assert frozenset((FACE_NAMES.index(a), FACE_NAMES.index(b))) not in pairs
    assert int((adj.group_count == 3).sum()) == 8  # cube corners seen by 3 faces
    assert int((adj.group_count == 2).sum()) == 12 * (16 - 2)


def test_adjacency_orientation_matches_image_content(erps):
    # e2c puts the outermost pixels of neighbouring faces on the same 3D points: their values agree
    faces = e2c(erps["snow_village"], 64)
    adj = cube_adjacency(64)
    for e in adj.edges:
        a = side_band(faces[e.face_a], e.side_a, 1)
        b = side_band(faces[e.face_b], e.side_b, 1, reverse=e.reverse)
        assert (a - b).abs().max() < 1e-3, e.name  # same 3D points (up to e2c interpolation rounding)
        wrong = side_band(faces[e.face_b], e.side_b, 1, reverse=not e.reverse)
        assert (a - wrong).abs().mean() > 1e-3, e.name  # the other orientation would not match


# --------------------------------------------------------------------------- cube blending


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("method", ["gauss-seidel", "exact"])
def test_blend_makes_edges_agree_and_keeps_the_laplacian(channels, method):
    g = torch.Generator().manual_seed(channels)
    faces = torch.rand(12, channels, 24, 24, generator=g)  # two cubemaps of incoherent faces
    out = blend_cube_faces(faces, method=method, iterations=50)
    assert out.shape == faces.shape and out.dtype == faces.dtype
    cur, target = edge_targets(out)
    assert float((cur - target).abs().max()) < 1e-6
    # the border carries the average of the faces meeting there
    cur0, target0 = edge_targets(faces)
    assert torch.allclose(cur, target0, atol=1e-6)
    if method == "exact":
        assert float(residual(out, laplacian5(faces))) < 1e-5
    else:
        assert float(residual(out, laplacian5(faces))) > 1e-4  # 50 sweeps: not converged


def test_blend_batch_is_per_cubemap_and_gs_impls_agree(erps):
    a = damage(e2c(erps["snow_village"], 32), 1)
    b = damage(e2c(erps["chalet"], 32), 2)
    both = blend_cube_faces(torch.cat([a, b]), "gauss-seidel", iterations=30)
    assert torch.allclose(both[:6], blend_cube_faces(a, "gauss-seidel", iterations=30), atol=1e-6)
    assert torch.allclose(both[6:], blend_cube_faces(b, "gauss-seidel", iterations=30), atol=1e-6)
    sweep = blend_cube_faces(torch.cat([a, b]), "gauss-seidel", iterations=30, gs_impl="sweep")
    assert torch.allclose(both, sweep, atol=1e-5)
    torch_backend = blend_cube_faces(a, "exact", backend="torch")
    assert torch.allclose(torch_backend, blend_cube_faces(a, "exact"), atol=1e-5)


def test_blend_consistent_cube_changes_little_and_half_precision_works(erps):
    faces = e2c(erps["snow_village"], 64)
    out = blend_cube_faces(faces, "exact")
    assert float((out - faces).abs().max()) < 1e-3  # e2c faces already agree on their edges
    zero = blend_cube_faces(damage(faces), "gauss-seidel", iterations=0)
    dmg = damage(faces)
    interior = (zero - dmg)[..., 1:-1, 1:-1]
    assert float(interior.abs().max()) == 0.0 and float((zero - dmg).abs().max()) > 0.01
    half = blend_cube_faces(dmg.to(torch.bfloat16), "exact")
    assert half.dtype == torch.bfloat16
    assert float((half.float() - blend_cube_faces(dmg, "exact")).abs().max()) < 0.02


def test_blend_keep_faces_fixed(erps):
    dmg = damage(e2c(erps["snow_village"], 48))
    out = blend_cube_faces(torch.cat([dmg, dmg]), "exact", keep="F")
    f = FACE_NAMES.index("F")
    assert torch.equal(out[f], dmg[f]) and torch.equal(out[6 + f], dmg[f])
    cur, target = edge_targets(out)
    assert float((cur - target).abs().max()) < 1e-5  # the neighbours took F's edge values
    assert not torch.equal(out[FACE_NAMES.index("R")], dmg[FACE_NAMES.index("R")])
    with pytest.raises(PanoInputError, match="keep"):
        blend_cube_faces(dmg, keep="X")


def test_blend_bad_inputs():
    with pytest.raises(PanoInputError, match="square"):
        blend_cube_faces(torch.rand(6, 3, 16, 17))
    with pytest.raises(PanoInputError, match="6 faces"):
        blend_cube_faces(torch.rand(5, 3, 16, 16))
    nan = torch.rand(6, 3, 16, 16)
    nan[2, 0, 3, 3] = float("nan")
    with pytest.raises(PanoInputError, match="NaN"):
        blend_cube_faces(nan)
    with pytest.raises(PanoInputError, match="method"):
        blend_cube_faces(torch.rand(6, 3, 16, 16), method="sor")
    with pytest.raises(PanoInputError, match="iterations"):
        blend_cube_faces(torch.rand(6, 3, 16, 16), iterations=-1)
    with pytest.raises(PanoInputError, match="channels"):
        blend_cube_faces(torch.rand(6, 5, 16, 16))
    with pytest.raises(PanoInputError, match="layout"):
        seam_metrics(torch.rand(6, 3, 16, 16), layout="cross")
    with pytest.raises(PanoInputError, match="horizon"):
        seam_metrics(torch.rand(1, 3, 16, 90), layout="horizon")


# --------------------------------------------------------------------------- metrics (validation)


def test_metric_validation_gt_noise_damaged_blended(erps):
    """The paper's validation: ground truth scores well, noise badly, per-face gain/offset errors
    worse, blending restores values close to the ground truth."""
    for name, erp in erps.items():
        gt = e2c(erp)  # 256 px faces
        noise = torch.rand(gt.shape, generator=torch.Generator().manual_seed(0))
        dmg = damage(gt)
        m = {k: cube_seam_metrics(v) for k, v in {
            "gt": gt, "noise": noise, "damaged": dmg,
            "gs": blend_cube_faces(dmg, "gauss-seidel").clamp(0, 1),
            "exact": blend_cube_faces(dmg, "exact").clamp(0, 1),
        }.items()}
        assert m["gt"]["seam_ssim"] > 0.3, name
        assert abs(m["noise"]["seam_ssim"]) < 0.05, name
        assert m["noise"]["seam_sobel"] > 3 * m["gt"]["seam_sobel"], name
        assert m["noise"]["seam_jump"] > 5 * m["gt"]["seam_jump"], name
        assert m["damaged"]["seam_jump"] > 3 * m["gt"]["seam_jump"], name
        assert m["damaged"]["pole_seam_jump"] > 3 * m["gt"]["pole_seam_jump"], name
        for method in ("gs", "exact"):
            assert m[method]["seam_jump"] < 1.5 * m["gt"]["seam_jump"], (name, method)
            assert m[method]["seam_ssim"] > m["gt"]["seam_ssim"] - 0.08, (name, method)
            assert m[method]["seam_sobel"] < 1.5 * m["gt"]["seam_sobel"], (name, method)
        assert set(m["gt"]["edges"]) == {e.name for e in cube_adjacency(256).edges}
        assert all(set(v) == {"ssim", "sobel", "jump"} for v in m["gt"]["edges"].values())


def test_wrap_metric_detects_seam(erps):
    chalet = erps["chalet"]
    seamy = erp_wrap_metrics(chalet)["wrap_seam"]
    rolled = erp_wrap_metrics(torch.roll(chalet, chalet.shape[-1] // 2, -1))["wrap_seam"]
    assert seamy > 3.0  # this DiT360 output has a visible wrap seam
    assert 0.7 < rolled < 1.4  # the wrap of the rolled image is an ordinary column step


# --------------------------------------------------------------------------- wrap blending


@pytest.mark.parametrize("method", ["poisson", "feather"])
def test_wrap_blend_removes_seam_and_keeps_the_rest_bit_identical(erps, method):
    chalet = erps["chalet"]
    band = 24
    out = blend_erp_wrap(chalet, band=band, method=method)
    w = chalet.shape[-1]
    assert torch.equal(out[..., band : w - band], chalet[..., band : w - band])
    assert not torch.equal(out[..., :band], chalet[..., :band])
    assert erp_wrap_metrics(out)["wrap_seam"] < 1.6 < erp_wrap_metrics(chalet)["wrap_seam"]


def test_wrap_blend_synthetic_step():
    h, w = 64, 128
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    base = (0.3 + 0.2 * y + 0.1 * torch.sin(6.283 * x)).expand(h, w)
    erp = base.clone()
    erp[:, w // 2 :] += 0.2  # right half brighter: a step at the centre and at the wrap
    erp = erp[None, None].repeat(1, 3, 1, 1)
    out = blend_erp_wrap(erp, band=16, method="poisson")
    step_before = (erp[..., 0] - erp[..., -1]).abs().mean()
    step_after = (out[..., 0] - out[..., -1]).abs().mean()
    assert step_before > 0.15 and step_after < 0.01
    assert torch.equal(out[..., 16:-16], erp[..., 16:-16])  # the centre step is not touched
    # a seamless ERP is left almost unchanged
    smooth = base[None, None].repeat(1, 3, 1, 1)
    assert float((blend_erp_wrap(smooth, 16) - smooth).abs().max()) < 0.01


def test_wrap_blend_bad_inputs():
    with pytest.raises(PanoInputError, match="2:1"):
        blend_erp_wrap(torch.rand(1, 3, 64, 100))
    with pytest.raises(PanoInputError, match="band"):
        blend_erp_wrap(torch.rand(1, 3, 32, 64), band=32)
    with pytest.raises(PanoInputError, match="method"):
        blend_erp_wrap(torch.rand(1, 3, 32, 64), method="median")
    bad = torch.rand(1, 3, 32, 64)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(PanoInputError, match="infinite"):
        blend_erp_wrap(bad)


# --------------------------------------------------------------------------- CLI


def test_cli_seam_metrics_json(tmp_path, capsys):
    assert cli_main(["seam-metrics", str(ASSETS / "snow_village_erp.png"), "--indent", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("seam_ssim", "seam_sobel", "wrap_seam", "seam_jump", "pole_seam_jump", "edges"):
        assert key in out
    assert len(out["edges"]) == 12 and out["input"] == "erp"
    # the same panorama as a horizon cubemap file gives nearly the same cube metrics
    faces = e2c(read_image(ASSETS / "snow_village_erp.png"))
    write_image(tmp_path / "cube.png", faces_to_layout(faces, "horizon"))
    assert cli_main(["seam-metrics", str(tmp_path / "cube.png")]) == 0
    out2 = json.loads(capsys.readouterr().out)
    assert out2["input"] == "horizon"
    assert abs(out2["seam_ssim"] - out["seam_ssim"]) < 0.02
    # an image of no known form
    write_image(tmp_path / "odd.png", torch.rand(1, 3, 30, 50))
    assert cli_main(["seam-metrics", str(tmp_path / "odd.png")]) == 2
    assert "cannot tell" in capsys.readouterr().err


def test_cli_blend_seams_folder_and_overwrite(tmp_path, erps, capsys):
    faces = damage(e2c(erps["chalet"], 64))
    write_cubemap(tmp_path / "in", faces, "dict")
    out = tmp_path / "out"
    args = ["blend-seams", str(tmp_path / "in"), "-o", str(out), "--method", "exact"]
    assert cli_main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.png" for k in FACE_NAMES)
    before = json.loads(json.dumps(cube_seam_metrics(faces)))
    cli_main(["seam-metrics", str(out)])
    after = json.loads(capsys.readouterr().out)
    assert after["seam_jump"] < 0.5 * before["seam_jump"]
    mtime = (out / "F.png").stat().st_mtime_ns
    assert cli_main(args) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert (out / "F.png").stat().st_mtime_ns == mtime
    assert cli_main(args + ["--force", "--iterations", "10", "--method", "gauss-seidel"]) == 0
    # an ERP in, an ERP out of the same size
    erp_out = tmp_path / "erp.png"
    assert cli_main(["blend-seams", str(ASSETS / "chalet_erp.png"), "-o", str(erp_out)]) == 0
    assert read_image(erp_out).shape == read_image(ASSETS / "chalet_erp.png").shape
    assert cli_main(["blend-seams", str(ASSETS / "chalet_erp.png"), "-o", str(tmp_path / "x.png"), "--iterations", "-3"]) == 2


def test_cli_blend_wrap(tmp_path):
    out = tmp_path / "w.png"
    assert cli_main(["blend-wrap", str(ASSETS / "chalet_erp.png"), "-o", str(out), "--band", "16"]) == 0
    a = np.asarray(read_image(out))
    b = np.asarray(read_image(ASSETS / "chalet_erp.png"))
    assert np.array_equal(a[..., 16:-16], b[..., 16:-16])
    assert erp_wrap_metrics(read_image(out))["wrap_seam"] < 2.0
    assert cli_main(["blend-wrap", str(ASSETS / "chalet_erp.png"), "-o", str(out)]) == 2
