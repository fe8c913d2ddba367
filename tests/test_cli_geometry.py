"""``pano360 e2c | c2e | e2p | p2e | rotate`` end to end (subprocess and main())."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pano_core.cli import main
from pano_core.geometry import c2e, e2c, e2p, roll_erp
from pano_core.io import image_bits, read_image, write_image

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "tests" / "assets" / "world_map_erp.png"


@pytest.fixture(scope="module")
def erp_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("erp")
    x = F.interpolate(read_image(ASSET)[:, :3], size=(64, 128), mode="area")
    write_image(d / "erp8.png", x)
    write_image(d / "erp16.png", x, bits=16)
    write_image(d / "erp.jpg", x)
    write_image(d / "bad.png", torch.rand(1, 3, 60, 100))
    return d


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pano_core", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def test_e2c_dict_and_c2e_subprocess(erp_files, tmp_path):
    r = run("e2c", erp_files / "erp16.png", "--face-size", 32, "--format", "dict", "--mode", "bicubic", "-o", tmp_path / "cube")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "cube").iterdir())
    assert names == ["B.png", "D.png", "F.png", "L.png", "R.png", "U.png"]
    assert image_bits(tmp_path / "cube" / "F.png") == 16  # 16-bit in -> 16-bit out
    x = read_image(erp_files / "erp16.png")
    expect = e2c(x, 32, "bicubic", "dict")["R"].clamp(0, 1)
    assert float((read_image(tmp_path / "cube" / "R.png") - expect).abs().max()) < 2e-4
    r = run("c2e", tmp_path / "cube", "--width", 128, "-o", tmp_path / "back.png")
    assert r.returncode == 0, r.stderr
    back = read_image(tmp_path / "back.png")
    assert back.shape == (1, 3, 64, 128) and image_bits(tmp_path / "back.png") == 16
    ref = c2e(e2c(x, 32, "bicubic").clamp(0, 1), 64, 128)
    assert float((back - ref).abs().max()) < 1e-3


@pytest.mark.parametrize("fmt,shape", [("horizon", (1, 3, 32, 192)), ("dice", (1, 3, 96, 128)), ("stack", (1, 3, 192, 32))])
def test_e2c_layout_images_and_back(erp_files, tmp_path, fmt, shape):
    out = tmp_path / f"{fmt}.png"
    assert main(["e2c", str(erp_files / "erp8.png"), "--face-size", "32", "--format", fmt, "-o", str(out)]) == 0
    img = read_image(out)
    assert img.shape == shape and image_bits(out) == 8
    assert main(["c2e", str(out), "-o", str(tmp_path / "b.png")]) == 0  # layout guessed
    assert main(["c2e", str(out), "--format", fmt, "-o", str(tmp_path / "c.png")]) == 0
    a, b = read_image(tmp_path / "b.png"), read_image(tmp_path / "c.png")
    assert a.shape == (1, 3, 64, 128) and torch.equal(a, b)
    x = read_image(erp_files / "erp8.png")
    assert float(-10 * torch.log10(((a - x) ** 2).mean())) > 25


def test_e2p_p2e_rotate(erp_files, tmp_path):
    src = erp_files / "erp8.png"
    x = read_image(src)
    assert main(["e2p", str(src), "--fov", "80", "--yaw", "30", "--pitch", "10", "--roll", "5",
                 "--size", "48x32", "-o", str(tmp_path / "v.png")]) == 0
    v = read_image(tmp_path / "v.png")
    assert v.shape == (1, 3, 32, 48)
    assert float((v - e2p(x, 80, 30, 10, 5, (32, 48))).abs().max()) < 3 / 255
    assert main(["p2e", str(tmp_path / "v.png"), "--fov", "80", "--yaw", "30", "--pitch", "10", "--roll", "5",
                 "--width", "128", "-o", str(tmp_path / "pe.png"), "--mask-out", str(tmp_path / "m.png")]) == 0
    pe, m = read_image(tmp_path / "pe.png"), read_image(tmp_path / "m.png")
    assert pe.shape == (1, 3, 64, 128) and m.shape == (1, 1, 64, 128)
    cov = m[0, 0] > 0.5
    assert 0.02 < float(cov.float().mean()) < 0.3 and float(pe[0, :, ~cov].abs().max()) == 0
    assert main(["rotate", str(src), "--yaw", "90", "--exact", "-o", str(tmp_path / "r.png")]) == 0
    assert torch.equal(read_image(tmp_path / "r.png"), roll_erp(x, 90))
    assert main(["rotate", str(src), "--yaw", "20", "--pitch", "15", "--roll", "-5", "-o", str(tmp_path / "r2.png")]) == 0
    assert read_image(tmp_path / "r2.png").shape == x.shape
    # JPEG in -> works, JPEG out is 8-bit
    assert main(["rotate", str(erp_files / "erp.jpg"), "--yaw", "10", "-o", str(tmp_path / "r.jpg")]) == 0
    assert image_bits(tmp_path / "r.jpg") == 8


def test_force_and_errors(erp_files, tmp_path, capsys):
    src = erp_files / "erp8.png"
    out = tmp_path / "v.png"
    assert main(["e2p", str(src), "--size", "16x16", "-o", str(out)]) == 0
    before = out.read_bytes()
    assert main(["e2p", str(src), "--size", "16x16", "--yaw", "90", "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["e2p", str(src), "--size", "16x16", "--yaw", "90", "-o", str(out), "--force"]) == 0
    assert out.read_bytes() != before
    # dict output: one existing face blocks the whole set
    cube = tmp_path / "cube"
    cube.mkdir()
    (cube / "U.png").write_bytes(b"keep")
    assert main(["e2c", str(src), "--format", "dict", "-o", str(cube)]) == 2
    assert sorted(p.name for p in cube.iterdir()) == ["U.png"]
    assert main(["e2c", str(src), "--format", "dict", "-o", str(cube), "--force"]) == 0
    # bad input: clear message, exit code 2
    for args, msg in [
        (["e2c", str(erp_files / "bad.png"), "-o", str(tmp_path / "x.png")], "2:1"),
        (["c2e", str(erp_files / "bad.png"), "-o", str(tmp_path / "x.png")], "layout"),
        (["e2p", str(tmp_path / "missing.png"), "-o", str(tmp_path / "x.png")], "not found"),
        (["c2e", str(tmp_path / "nofolder"), "--format", "dict", "-o", str(tmp_path / "x.png")], "folder"),
        (["e2p", str(src), "--fov", "200", "-o", str(tmp_path / "x.png")], "field of view"),
        (["rotate", str(src), "--pitch", "3", "--exact", "-o", str(tmp_path / "x.png")], "exact"),
    ]:
        assert main(args) == 2, args
        assert msg in capsys.readouterr().err
    r = run("e2p", src, "--size", "wide", "-o", tmp_path / "y.png")
    assert r.returncode == 2 and "WIDTHxHEIGHT" in r.stderr
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
