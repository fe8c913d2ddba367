"""Bad and hostile input to the ``pano360`` CLI (issue 14, points 10-12, 16 and 19): a clear
message, exit code 2, checked before any work, nothing a user made lost or half written."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pano_core import io as pio
from pano_core.cli import main
from pano_core.io import read_image, write_image


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A valid PNG header declaring w x h pixels with almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture()
def erp(tmp_path) -> Path:
    p = tmp_path / "erp.png"
    x = torch.linspace(0, 1, 32 * 64 * 3).reshape(1, 3, 32, 64)
    write_image(p, x)
    return p


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_size_read_from_the_header_before_decoding(tmp_path, erp, capsys, monkeypatch):
    big = tmp_path / "bomb.png"
    _png_header_only(big, 20000, 10000)
    assert big.stat().st_size < 1000

    def no_decode(*a, **k):
        raise AssertionError("decoded although the header is above the limit")

    monkeypatch.setattr(pio.cv2, "imdecode", no_decode)
    assert main(["e2c", str(big), "-o", str(tmp_path / "o.png")]) == 2
    err = _err(capsys)
    assert "20000x10000" in err and "above the limit" in err and "--max-pixels" in err
    monkeypatch.undo()
    # the limit is an option; a normal image above a small limit is refused too
    assert main(["e2c", str(erp), "--max-pixels", "1000", "-o", str(tmp_path / "o.png")]) == 2
    assert "64x32" in _err(capsys)
    assert main(["e2c", str(erp), "--max-pixels", "1000000", "-o", str(tmp_path / "o.png")]) == 0
    monkeypatch.setenv("PANO360_MAX_PIXELS", "100")
    assert main(["e2c", str(erp), "-o", str(tmp_path / "o2.png")]) == 2
    assert "above the limit" in _err(capsys)


@pytest.mark.parametrize("argv, expect", [
    (["e2c", "{erp}", "--face-size", "100000", "-o", "{out}/o.png"], "face_size"),
    (["e2p", "{erp}", "--size", "100000x100000", "-o", "{out}/o.png"], "out_hw"),
    (["c2e", "{cube}", "--width", "200000", "-o", "{out}/o.png"], "width"),
    (["p2e", "{erp}", "--fov", "0.001", "-o", "{out}/o.png"], "--width (from --fov"),
    (["p2e", "{erp}", "--fov", "0", "-o", "{out}/o.png"], "--fov: expected a field of view"),
    (["p2e", "{erp}", "--fov", "nan", "-o", "{out}/o.png"], "--fov: expected a finite field of view"),
    (["e2p", "{erp}", "--fov", "180", "-o", "{out}/o.png"], "between 0 and 180"),
    (["e2p", "{erp}", "--yaw", "inf", "-o", "{out}/o.png"], "--yaw"),
    (["blend-seams", "{cube}", "--iterations", "-1", "-o", "{out}/o.png"], "--iterations"),
    (["blend-seams", "{erp}", "--face-size", "nan", "-o", "{out}/o.png"], "--face-size"),
    (["seam-metrics", "{erp}", "--band", "0"], "--band"),
    (["blend-wrap", "{erp}", "--band", "x", "-o", "{out}/o.png"], "--band"),
])
def test_sizes_and_angles_are_checked(tmp_path, erp, capsys, argv, expect):
    cube = tmp_path / "cube.png"
    assert main(["e2c", str(erp), "--format", "horizon", "-o", str(cube)]) == 0
    capsys.readouterr()
    args = [a.format(erp=erp, cube=cube, out=tmp_path) for a in argv]
    assert main(args) == 2
    err = _err(capsys)
    assert expect in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_output_problems_are_found_before_the_work(tmp_path, erp, capsys, monkeypatch):
    import pano_core.geometry as geo

    def no_work(*a, **k):
        raise AssertionError("computed although the output cannot be written")

    monkeypatch.setattr(geo, "e2c", no_work)
    monkeypatch.setattr(geo, "c2e", no_work)
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    for out in (a_file / "o.png", Path("/sys/pano360_o.png"), Path("/proc/pano360/o.png")):
        assert main(["e2c", str(erp), "-o", str(out)]) == 2, out
        err = _err(capsys)
        assert "Traceback" not in err and "output" in err, err
        assert main(["blend-seams", str(erp), "-o", str(out)]) == 2
        _err(capsys)
    assert main(["e2c", str(erp), "--format", "dict", "-o", str(a_file)]) == 2
    assert "not a folder" in _err(capsys)
    assert a_file.read_text() == "mine"
    (tmp_path / "dir.png").mkdir()
    assert main(["e2c", str(erp), "-o", str(tmp_path / "dir.png")]) == 2
    assert "is a folder" in _err(capsys)


def test_os_errors_exit_2(tmp_path, erp, capsys, monkeypatch):
    import pano_core.cli as cli

    def fail(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.png"))

    parser = cli.build_parser()
    ns = parser.parse_args(["e2p", str(erp), "-o", str(tmp_path / "x.png")])
    ns.func = fail
    monkeypatch.setattr(cli.argparse.ArgumentParser, "parse_args", lambda self, argv=None: ns)
    assert main([]) == 2
    err = _err(capsys)
    assert "Permission denied" in err and "x.png" in err and "Traceback" not in err


def test_six_faces_all_or_nothing(tmp_path, erp, capsys, monkeypatch):
    real_link = pio.os.link

    def link(src, dst, *a, **k):
        if Path(dst).name == "L.png":
            raise OSError(28, "No space left on device", str(dst))
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(pio.os, "link", link)
    out = tmp_path / "faces"
    assert main(["e2c", str(erp), "--format", "dict", "-o", str(out)]) == 2
    assert "No space left" in _err(capsys)
    assert sorted(p.name for p in out.iterdir()) == []  # no F R B left behind, no temp files
    monkeypatch.undo()
    assert main(["e2c", str(erp), "--format", "dict", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["B.png", "D.png", "F.png", "L.png", "R.png", "U.png"]


def test_failed_overwrite_keeps_the_old_file(tmp_path, erp):
    old = erp.read_bytes()
    with pytest.raises(ValueError, match="cannot write 2 channels"):
        write_image(erp, torch.rand(1, 2, 4, 8), force=True)
    assert erp.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["erp.png"]  # no temporary left
    before = erp.stat().st_ino
    write_image(erp, torch.rand(1, 3, 4, 8), force=True)  # replaced through a temporary file
    assert erp.stat().st_ino != before and read_image(erp).shape == (1, 3, 4, 8)


def test_exif_orientation_of_jpeg(tmp_path):
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 255, (6, 10, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # blocky: JPEG-safe
    for o in (3, 6, 8):
        im = Image.fromarray(base)
        exif = im.getexif()
        exif[0x0112] = o
        p = tmp_path / f"o{o}.jpg"
        im.save(p, quality=98, exif=exif.tobytes())
        ref = np.asarray(ImageOps.exif_transpose(Image.open(p)), dtype=np.float32) / 255
        got = read_image(p)[0].permute(1, 2, 0).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).mean() < 0.01, o


def test_tiny_panorama_message(tmp_path, capsys):
    p = tmp_path / "tiny.png"
    write_image(p, torch.rand(1, 3, 1, 2))
    assert main(["e2c", str(p), "-o", str(tmp_path / "o.png")]) == 2
    err = _err(capsys)
    assert "2x1 is too small" in err and "None" not in err


def test_read_and_write_keep_values(tmp_path):
    """The one-pass read (channels-last) and the banded write give the old numbers exactly."""
    x = torch.rand(1, 4, 300, 7)
    for bits in (8, 16):
        p = tmp_path / f"x{bits}.png"
        write_image(p, x, bits=bits)
        y = read_image(p)
        maxv = 255 if bits == 8 else 65535
        assert torch.equal(y, torch.round(x * maxv) / maxv) or (y - torch.round(x * maxv) / maxv).abs().max() < 1e-7
        assert y.permute(0, 2, 3, 1).is_contiguous()  # channels-last, no layout copy
