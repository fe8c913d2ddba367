"""``pano360 generate`` end to end on a tiny random FLUX pipeline saved by the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import tiny_diffusers as td  # noqa: E402

from pano_core.cli import main  # noqa: E402
from pano_core.io import read_image, write_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return td.save_tiny_flux_pipeline(tmp_path_factory.mktemp("cli-gen") / "tiny-flux", seed=1)


def _args(model_dir, out, *extra):
    return [
        "generate", "--prompt", "a mountain lake", "--model", str(model_dir), "--width", "64", "--height", "32",
        "--steps", "2", "--seed", "0", "--device", "cpu", "--dtype", "fp32", "--no-lora", "-q", "-o", str(out), *extra,
    ]


def test_generate_subprocess_writes_2to1_png_and_refuses_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "pano.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "pano_core", *_args(model_dir, out)], capture_output=True, text=True,
                       env=env, cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote" in r.stdout
    img = read_image(out)
    assert img.shape == (1, 3, 32, 64)
    assert float(img.std()) > 1e-3

    before = out.read_bytes()
    assert main(_args(model_dir, out)) == 2  # refuses to overwrite (checked before loading anything)
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert out.read_bytes() == before


def test_generate_in_process_matches_python_api_and_force(model_dir, tmp_path, capsys):
    from pano_core.dit360.pipeline import DiT360Pipeline

    out = tmp_path / "a.png"
    assert main(_args(model_dir, out, "--pad", "1", "--resync", "--circular-decode", "--decode-pad", "2")) == 0
    pipe = DiT360Pipeline.from_pretrained(model_dir, device="cpu", dtype="fp32")
    ref = pipe("a mountain lake", width=64, height=32, steps=2, seed=0, pad=1, resync=True, circular_decode=True,
               decode_pad=2, progress=False).images
    img = read_image(out)
    assert (img - ref).abs().max() <= 1 / 255 + 1e-6  # 8-bit rounding only
    # --no-prefix changes the prompt -> a different image; --force overwrites
    assert main(_args(model_dir, out, "--no-prefix", "--force")) == 0
    img2 = read_image(out)
    assert img2.shape == img.shape and not torch.equal(img, img2)
    # 16-bit output
    out16 = tmp_path / "b.png"
    assert main(_args(model_dir, out16, "--bits", "16")) == 0
    from pano_core.io import image_bits

    assert image_bits(out16) == 16


def test_generate_with_lora_file(model_dir, tmp_path):
    from diffusers import FluxTransformer2DModel

    tr = FluxTransformer2DModel.from_pretrained(str(model_dir), subfolder="transformer")
    lora_dir = tmp_path / "lora"
    td.make_peft_lora_file(lora_dir / "adapter_model.safetensors", tr, rank=2)
    plain, withl = tmp_path / "plain.png", tmp_path / "lora.png"
    assert main(_args(model_dir, plain)) == 0
    args = [a for a in _args(model_dir, withl) if a != "--no-lora"] + ["--lora", str(lora_dir), "--lora-scale", "1.5"]
    assert main(args) == 0
    assert not torch.equal(read_image(plain), read_image(withl))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--width", "72", "--height", "36"], "multiple of 16"),
        (["--width", "96", "--height", "32"], "2:1"),
        (["--pad", "5"], "--pad"),
        (["--fov", "90"], "only meaningful with --view"),
        (["--view", "nope.png"], "--fov"),
    ],
)
def test_generate_bad_input_fails_before_loading(tmp_path, capsys, extra, message):
    out = tmp_path / "x.png"
    # a model folder that does not exist: the size checks must fire first
    code = main(_args(tmp_path / "no-model", out, *extra))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_generate_bad_model_and_lora(model_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(_args(tmp_path / "no-model", out)) == 2
    assert "neither an existing folder nor a hub id" in capsys.readouterr().err
    from safetensors.torch import save_file

    save_file({"base_model.model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(2, 32),
               "base_model.model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(96, 2)},
              str(tmp_path / "other.safetensors"))
    args = [a for a in _args(model_dir, out) if a != "--no-lora"] + ["--lora", str(tmp_path / "other.safetensors")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "0 of 2 keys" in err
    assert not out.exists()


def test_generate_from_view_is_wired(model_dir, tmp_path, monkeypatch):
    """--view calls pano_core.dit360.editing.generate_from_view with the photo, angles and options."""
    from pano_core.dit360 import editing

    seen = {}

    def fake(pipe, view, fov, yaw, pitch, **kw):
        seen.update(pipe=pipe, view=view, fov=fov, yaw=yaw, pitch=pitch, **kw)
        return torch.full((1, 3, kw["height"], kw["width"]), 0.5)

    monkeypatch.setattr(editing, "generate_from_view", fake)
    photo = tmp_path / "photo.png"
    write_image(photo, torch.rand(1, 3, 24, 32))
    out = tmp_path / "v.png"
    assert main(_args(model_dir, out, "--view", str(photo), "--fov", "80", "--view-yaw", "30", "--view-pitch", "-10")) == 0
    assert seen["fov"] == 80 and seen["yaw"] == 30 and seen["pitch"] == -10
    assert seen["view"].shape == (1, 3, 24, 32)
    assert seen["prompt"] == "This is a panorama. a mountain lake"
    assert (seen["height"], seen["width"], seen["steps"], seen["seed"], seen["padding"]) == (32, 64, 2, 0, 1)
    assert seen["guidance"] is None and seen["preset"] == "pano360"  # guidance from the editing preset
    assert hasattr(seen["pipe"], "transformer")
    assert read_image(out).shape == (1, 3, 32, 64)


def test_generate_from_view_missing_is_a_clear_error(model_dir, tmp_path, monkeypatch, capsys):
    from pano_core.dit360 import editing

    monkeypatch.delattr(editing, "generate_from_view")
    photo = tmp_path / "photo.png"
    write_image(photo, torch.rand(1, 3, 24, 32))
    assert main(_args(model_dir, tmp_path / "v.png", "--view", str(photo), "--fov", "80")) == 2
    assert "not available" in capsys.readouterr().err


def test_generate_help_lists_options(capsys):
    assert main(["generate", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--prompt", "--lora", "--lora-scale", "--model", "--offload", "--pad", "--resync", "--view", "--fov",
                "--no-prefix", "--circular-decode", "--force"):
        assert opt in text


def test_generate_from_view_real_run(model_dir, tmp_path):
    """--view end to end through the real editing code on the tiny model."""
    from pano_core.dit360 import editing

    if not hasattr(editing, "generate_from_view"):
        pytest.skip("pano_core.dit360.editing.generate_from_view not available")
    photo = tmp_path / "photo.png"
    write_image(photo, torch.rand(1, 3, 24, 32))
    out = tmp_path / "v.png"
    assert main(_args(model_dir, out, "--view", str(photo), "--fov", "90", "--view-yaw", "20")) == 0
    img = read_image(out)
    assert img.shape == (1, 3, 32, 64) and torch.isfinite(img).all()


def test_default_lora_is_dit360_from_the_hub(model_dir, tmp_path, monkeypatch, capsys):
    """Without --lora the CLI asks the hub for DiT360's adapter_model.safetensors (hub faked here)."""
    import huggingface_hub
    from diffusers import FluxTransformer2DModel

    from pano_core.dit360.loading import DEFAULT_LORA

    tr = FluxTransformer2DModel.from_pretrained(str(model_dir), subfolder="transformer")
    lora_file = td.make_peft_lora_file(tmp_path / "hub" / "adapter_model.safetensors", tr, rank=2)
    asked = []

    def fake_download(repo_id, filename, **kw):
        asked.append((repo_id, filename))
        if filename == "adapter_model.safetensors":
            return str(lora_file)
        raise FileNotFoundError(filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    out = tmp_path / "d.png"
    args = [a for a in _args(model_dir, out) if a not in ("--no-lora", "-q")]
    assert main(args) == 0
    assert (DEFAULT_LORA, "adapter_model.safetensors") in asked
    assert DEFAULT_LORA == "Insta360-Research/DiT360-Panorama-Image-Generation"
    from safetensors.torch import load_file

    n = len(load_file(str(lora_file)))
    assert f"{n} of {n} LoRA keys matched" in capsys.readouterr().err
