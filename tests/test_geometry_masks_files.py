"""Seam/pole masks and cubemap files (read_cubemap / write_cubemap)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pano_core.errors import PanoInputError
from pano_core.geometry import (
    dirs_to_cube,
    e2c,
    erp_directions,
    erp_lonlat,
    guess_layout,
    pole_mask,
    read_cubemap,
    seam_mask,
    write_cubemap,
)
from pano_core.io import image_bits, read_image, write_image


def test_wrap_seam_mask():
    m = seam_mask(32, 64, "wrap", band_px=4, feather_px=0)[0, 0]
    assert m.shape == (32, 64)
    # 2 columns on each side of the seam, nothing elsewhere, the same on every row
    assert torch.equal(m[:, :2], torch.ones(32, 2)) and torch.equal(m[:, -2:], torch.ones(32, 2))
    assert float(m[:, 2:-2].sum()) == 0
    f = seam_mask(32, 64, "wrap", band_px=4, feather_px=4)[0, 0, 0]
    assert f[0] == 1 and 0 < f[2] < 1 and f[2] > f[3] > f[4] and f[10] == 0
    assert torch.equal(f, f.flip(0))  # symmetric about the seam


def test_cube_seam_mask_follows_face_edges():
    h, w, s = 64, 128, 32
    m = seam_mask(h, w, "cube", band_px=2, feather_px=0, face_size=s)[0, 0]
    _, j, i = dirs_to_cube(erp_directions(h, w, dtype=torch.float64), s)
    dist = torch.minimum(torch.minimum(j, s - 1 - j), torch.minimum(i, s - 1 - i))
    assert torch.equal(m.bool(), dist <= 1)
    lon, lat = erp_lonlat(h, w)
    c45 = int(torch.argmin((lon - 45).abs()))
    assert m[h // 2, c45] == 1 and m[h // 2, w // 2] == 0  # F/R edge at lon 45; F centre clear
    both = seam_mask(h, w, "both", 2, 0, s)[0, 0]
    assert torch.equal(both, torch.maximum(m, seam_mask(h, w, "wrap", 2, 0)[0, 0]))


def test_pole_mask():
    _, lat = erp_lonlat(90, 180)
    m = pole_mask(90, 180, 60, 0)[0, 0]
    assert torch.equal(m[:, 0].bool(), lat.abs() >= 60) and torch.equal(m, m[:, :1].expand(90, 180))
    n = pole_mask(90, 180, 60, 10, "north")[0, 0, :, 0]
    assert n[0] == 1 and n[-1] == 0 and float(n[(lat > 50) & (lat < 60)].min()) > 0
    s = pole_mask(90, 180, 60, 10, "south")[0, 0, :, 0]
    assert torch.equal(s, n.flip(0))


def test_mask_bad_input():
    for fn, match in [
        (lambda: seam_mask(32, 64, "diagonal"), "kind"),
        (lambda: seam_mask(32, 64, "wrap", -1), "band_px"),
        (lambda: seam_mask(0, 64), "height"),
        (lambda: pole_mask(32, 64, 95), "lat_deg"),
        (lambda: pole_mask(32, 64, 60, 5, "east"), "pole"),
    ]:
        with pytest.raises(PanoInputError, match=match):
            fn()


@pytest.mark.parametrize("layout", ["dict", "list", "horizon", "dice", "stack"])
def test_cubemap_files_round_trip(tmp_path, layout):
    faces = e2c(torch.rand(1, 3, 32, 64), 16)
    out = tmp_path / ("cube" if layout in ("dict", "list") else "cube.png")
    paths = write_cubemap(out, faces, layout, bits=16)
    assert len(paths) == (6 if layout in ("dict", "list") else 1)
    back, bits = read_cubemap(out, None if layout in ("dict", "list") else layout)
    assert bits == 16 and back.shape == faces.shape
    assert float((back - faces).abs().max()) < 1 / 65535 + 1e-6
    if layout not in ("dict", "list"):
        assert read_cubemap(out)[0].shape == faces.shape  # layout guessed from the shape
    with pytest.raises(PanoInputError, match="already exists"):
        write_cubemap(out, faces, layout)
    write_cubemap(out, faces, layout, force=True)


def test_read_cubemap_errors(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for k in "FRBLU":
        write_image(folder / f"{k}.png", torch.rand(1, 3, 8, 8))
    with pytest.raises(PanoInputError, match="lacks face"):
        read_cubemap(folder)
    write_image(folder / "D.png", torch.rand(1, 3, 9, 9))
    with pytest.raises(PanoInputError, match="same shape"):
        read_cubemap(folder)
    write_image(tmp_path / "odd.png", torch.rand(1, 3, 10, 15))
    with pytest.raises(PanoInputError, match="layout"):
        read_cubemap(tmp_path / "odd.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(PanoInputError, match="cannot read"):
        read_cubemap(tmp_path / "bad.png")
    with pytest.raises(PanoInputError, match="not found"):
        read_cubemap(tmp_path / "missing")
    assert guess_layout(8, 48) == "horizon" and guess_layout(24, 32) == "dice" and guess_layout(48, 8) == "stack"
    assert guess_layout(10, 15) is None
    # with a batch (a tensor batch such as a ComfyUI IMAGE) "stack" is 6k square faces, not a 1:6 strip
    assert guess_layout(8, 8, batch=12) == "stack" and guess_layout(8, 8, batch=5) is None
    assert guess_layout(48, 8, batch=1) is None and guess_layout(8, 48, batch=2) == "horizon"
    assert guess_layout(24, 32, batch=1) == "dice" and guess_layout(32, 64, batch=6) is None  # ERPs are no cubemap


def test_stack_file_is_vertical(tmp_path):
    faces = torch.stack([torch.full((3, 4, 4), k / 10) for k in range(6)])
    write_cubemap(tmp_path / "s.png", faces, "stack", bits=16)
    img = read_image(tmp_path / "s.png")
    assert img.shape == (1, 3, 24, 4) and image_bits(tmp_path / "s.png") == 16
    assert np.allclose(img[0, 0, ::4, 0].numpy(), np.arange(6) / 10, atol=1e-4)
