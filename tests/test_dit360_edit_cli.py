"""``pano360 edit`` with a tiny saved FLUX.1 pipeline (no downloads)."""

from __future__ import annotations

import pytest
import torch

from pano_core.cli import main
from pano_core.io import read_image, write_image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tiny_diffusers import save_tiny_flux_pipeline

    d = tmp_path_factory.mktemp("edit_cli")
    model = save_tiny_flux_pipeline(d / "tiny_flux", seed=0)
    g = torch.Generator().manual_seed(0)
    write_image(d / "pano.png", torch.rand(1, 3, 64, 128, generator=g))
    m = torch.zeros(1, 1, 64, 128)
    m[..., 16:48, 32:96] = 1
    write_image(d / "mask.png", m)
    write_image(d / "mask_small.png", m[..., :32, :])
    return d, model


def _args(d, model, out, *extra, mask="mask.png", mode="inpaint"):
    return ["edit", "--mode", mode, "--image", str(d / "pano.png"), "--mask", str(d / mask), "--prompt", "a lake",
            "--steps", "2", "--model", str(model), "--no-lora", "--device", "cpu", "-q", "-o", str(out), *extra]


def test_edit_cli_writes_and_never_overwrites(files, capsys):
    d, model = files
    out = d / "out_inpaint.png"
    assert main(_args(d, model, out)) == 0
    img = read_image(out)
    assert img.shape == (1, 3, 64, 128)
    before = out.read_bytes()
    assert main(_args(d, model, out)) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(_args(d, model, out, "--force", "--seed", "5", mode="outpaint")) == 0


def test_edit_cli_is_repeatable(files):
    d, model = files
    a, b = d / "rep_a.png", d / "rep_b.png"
    assert main(_args(d, model, a, "--seed", "3")) == 0
    assert main(_args(d, model, b, "--seed", "3")) == 0
    assert a.read_bytes() == b.read_bytes()


def test_edit_cli_bad_mask_is_a_clear_error(files, capsys):
    d, model = files
    out = d / "never.png"
    assert main(_args(d, model, out, mask="mask_small.png")) == 2
    err = capsys.readouterr().err
    assert "--mask: size 128x32" in err and "does not match the image 128x64" in err
    assert not out.exists()
    # all-black mask: nothing to generate
    write_image(d / "black.png", torch.zeros(1, 1, 64, 128))
    assert main(_args(d, model, out, mask="black.png")) == 2
    assert "no white pixels" in capsys.readouterr().err


def test_generate_view_calls_generate_from_view(files):
    """``pano360 generate --view PHOTO --fov D`` (DiT360 CLI) runs view-to-panorama end to end."""
    d, model = files
    write_image(d / "photo.png", torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(1)))
    out = d / "from_view.png"
    rc = main(["generate", "--view", str(d / "photo.png"), "--fov", "90", "--view-yaw", "30", "--prompt", "a beach",
               "--width", "128", "--height", "64", "--steps", "2", "--model", str(model), "--no-lora",
               "--device", "cpu", "-q", "-o", str(out)])
    assert rc == 0
    assert read_image(out).shape == (1, 3, 64, 128)
