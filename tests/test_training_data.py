"""pano360-train: configs, command line and the data step (prepare), CPU only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pano360_training import cli
from pano360_training.config import (
    ConfigError,
    apply_overrides,
    get,
    load_config,
    save_config,
    shipped_configs,
)
from pano360_training.prepare import DataCheckError, prepare_dataset, read_manifest

from pano_core.io import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ configs


def test_shipped_configs_hold_the_official_recipe():
    assert {"dit360_lora", "dit360_lora_24gb"} <= set(shipped_configs())
    cfg = load_config("dit360_lora")
    assert get(cfg, "lora.rank") == 64 and get(cfg, "lora.alpha") == 64 and get(cfg, "lora.dropout") == 0.05
    assert get(cfg, "lora.targets") == ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]
    assert get(cfg, "optimizer.lr") == 5e-5 and get(cfg, "optimizer.weight_decay") == 1e-5
    assert get(cfg, "optimizer.eps") == 1e-6
    assert get(cfg, "scheduler.name") == "constant_with_warmup" and get(cfg, "scheduler.warmup") == 0.05
    assert get(cfg, "train.batch_size") == 1 and get(cfg, "train.gradient_accumulation") == 4
    assert get(cfg, "data.resolution") == 1024
    assert get(cfg, "losses.yaw.weight") == 0.5 and get(cfg, "losses.cube.weight") == 0.5
    assert get(cfg, "losses.yaw.from_epoch") == 2 and get(cfg, "padding.pad") == 1
    small = load_config("dit360_lora_24gb")
    assert get(small, "model.gradient_checkpointing") is True and get(small, "data.cache") is True
    assert get(small, "model.quantize_base") == "fp8"


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import ClusterConfig

    kinds = {}
    for f in sorted((ROOT / "training" / "configs" / "accelerate").glob("*.yaml")):
        kinds[f.stem] = str(ClusterConfig.from_yaml_file(str(f)).distributed_type)
    assert kinds == {
        "single_gpu": "DistributedType.NO",
        "ddp": "DistributedType.MULTI_GPU",
        "zero2": "DistributedType.DEEPSPEED",
        "fsdp": "DistributedType.FSDP",
    }


def test_overrides(tmp_path):
    cfg = load_config("dit360_lora")
    out = apply_overrides(cfg, ["optimizer.lr=1e-4", "lora.rank=16", "losses.yaw.form=equivariance",
                                "sample.seeds=[1, 2]", "flow.shift=auto", "data.dir=/x"])
    assert get(out, "optimizer.lr") == 1e-4 and get(out, "lora.rank") == 16
    assert get(out, "losses.yaw.form") == "equivariance" and get(out, "sample.seeds") == [1, 2]
    assert get(cfg, "optimizer.lr") == 5e-5  # the input is untouched
    with pytest.raises(ConfigError, match="did you mean optimizer.lr"):
        apply_overrides(cfg, ["optimiser.lr=1"])
    with pytest.raises(ConfigError, match="did you mean optimizer.lr"):
        apply_overrides(cfg, ["lr=1"])
    with pytest.raises(ConfigError, match="did you mean lora.rank"):
        apply_overrides(cfg, ["lora.rnak=8"])
    with pytest.raises(ConfigError, match="expects a int"):
        apply_overrides(cfg, ["lora.rank=big"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(cfg, ["lora.rank"])
    p = save_config(out, tmp_path / "config.yaml")
    assert load_config(p) == out


def test_cli_flags_and_errors(tmp_path, capsys):
    args = cli.build_parser().parse_args(
        ["dit360", "--data", "D", "--output", "O", "--max-steps", "7", "--resolution", "64", "--seed", "3",
         "--model", "M", "--set", "optimizer.lr=2e-4", "--resume"])
    cfg = cli.trainer_config(args)
    assert (get(cfg, "train.max_steps"), get(cfg, "data.resolution"), get(cfg, "train.seed")) == (7, 64, 3)
    assert get(cfg, "model.path") == "M" and get(cfg, "data.dir") == "D" and get(cfg, "optimizer.lr") == 2e-4
    assert args.resume == "latest"
    assert cli.build_parser().parse_args(["dit360", "--resume", "ck"]).resume == "ck"
    rc = cli.main(["dit360", "--data", str(tmp_path), "--output", str(tmp_path / "run"), "--set", "optimizer.lrr=1"])
    assert rc == 2 and "did you mean optimizer.lr" in capsys.readouterr().err
    rc = cli.main(["dit360", "--data", str(tmp_path), "--output", str(tmp_path / "run")])
    assert rc == 2 and "not a prepared set" in capsys.readouterr().err


def test_module_entry_point(training_env):
    r = subprocess.run([sys.executable, "-m", "pano360_training", "--help"], env=training_env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "prepare" in r.stdout and "dit360" in r.stdout and "sample" in r.stdout


# ------------------------------------------------------------------------------------ data


def _pano(h=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 1, 2 * h)
    img = torch.stack([x.expand(h, -1), torch.rand(h, 2 * h, generator=g), x.flip(0).expand(h, -1)])
    return img[None]


def _raw_set(folder: Path, n=3, h=32):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_image(folder / f"pano{i}.png", _pano(h, i))
        (folder / f"pano{i}.txt").write_text(f"a test panorama number {i}\n")
    return folder


def test_prepare_reports_every_problem_at_once(tmp_path):
    raw = _raw_set(tmp_path / "raw", n=2)
    write_image(raw / "square.png", torch.rand(1, 3, 32, 32))
    (raw / "square.txt").write_text("not 2:1")
    write_image(raw / "nocaption.png", _pano())
    (raw / "broken.png").write_bytes(b"not an image")
    (raw / "broken.txt").write_text("unreadable file")
    with pytest.raises(DataCheckError) as e:
        prepare_dataset(raw, tmp_path / "out", resolution=16, progress=False)
    msg = str(e.value)
    assert len(e.value.problems) == 3, msg
    assert "square.png is 32x32" in msg and "nocaption.png has no caption" in msg and "cannot read" in msg
    assert not (tmp_path / "out").exists()  # nothing written when the check fails
    with pytest.raises(ValueError, match="no images"):
        prepare_dataset(tmp_path / "raw" / "..", tmp_path / "o2", resolution=16, progress=False)


def test_prepare_folder_with_masks_refinement_and_photos(tmp_path):
    raw = _raw_set(tmp_path / "raw", n=2, h=32)
    (raw / "masks").mkdir()
    m = torch.ones(1, 1, 32, 64)
    m[..., :8, :] = 0
    write_image(raw / "masks" / "pano1.png", m)
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "street.jpg", torch.rand(1, 3, 40, 60))
    (photos / "street.txt").write_text("a street photo")
    before = sorted(p.name for p in raw.rglob("*"))
    out = tmp_path / "prepared"
    man = prepare_dataset(raw, out, resolution=16, refine_poles="opencv", photos=photos, progress=False)
    assert sorted(p.name for p in raw.rglob("*")) == before  # the raw folder is never written to
    assert man["resolution"] == 16 and man["width"] == 32 and len(man["items"]) == 2
    it0, it1 = man["items"]
    assert it0["mask"] is None and it1["mask"] == "masks/pano1.png"
    img = read_image(out / it0["image"])
    assert img.shape == (1, 3, 16, 32)
    assert (out / it0["caption"]).read_text().strip() == "a test panorama number 0"
    mask = read_image(out / it1["mask"])
    assert mask.shape[-2:] == (16, 32) and mask[..., :3, :].max() == 0 and mask[..., 6:, :].min() == 1
    refined = read_image(out / it0["refined"])
    assert refined.shape == img.shape
    # only the poles change: the equator rows are the prepared image
    assert torch.allclose(refined[..., 6:10, :], img[..., 6:10, :], atol=1 / 255)
    assert not torch.allclose(refined[..., :2, :], img[..., :2, :], atol=1 / 255)
    (pe,) = man["perspective"]
    assert pe["extra"]["yaw"] in (0.0, 90.0, 180.0, 270.0) and pe["extra"]["fov"] == 90.0
    canvas, cover = read_image(out / pe["image"]), read_image(out / pe["mask"])
    assert canvas.shape == (1, 3, 16, 32) and cover.shape[-2:] == (16, 32)
    frac = float(cover.mean())
    assert 0.1 < frac < 0.3  # a 90 deg side face covers about 1/6 of the sphere's ERP pixels
    assert float((canvas * (1 - cover)).abs().max()) == 0.0  # nothing outside the coverage
    assert read_manifest(out)["items"] == man["items"]
    # an output inside the raw folder or a non-empty foreign folder is refused
    with pytest.raises(ValueError, match="inside the raw data folder"):
        prepare_dataset(raw, raw / "prepared", resolution=16, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a prepared set"):
        prepare_dataset(raw, foreign, resolution=16, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_prepare_jsonl_longest_caption_and_cli(tmp_path, capsys):
    _raw_set(tmp_path / "raw", n=2)
    lines = [
        {"image": "raw/pano0.png", "caption": ["short", "the longest of the captions", "mid one"], "mask": None},
        {"image": "raw/pano1.png", "caption": "plain caption"},
    ]
    jl = tmp_path / "set.jsonl"
    jl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rc = cli.main(["prepare", "--data", str(jl), "--output", str(tmp_path / "p"), "--resolution", "16", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    man = read_manifest(tmp_path / "p")
    caps = [(tmp_path / "p" / it["caption"]).read_text().strip() for it in man["items"]]
    assert caps == ["the longest of the captions", "plain caption"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "raw/missing.png", "caption": "x"}\nnot json\n{"image": "raw/pano0.png"}\n')
    rc = cli.main(["prepare", "--data", str(bad), "--output", str(tmp_path / "q"), "--resolution", "16"])
    err = capsys.readouterr().err
    assert rc == 2 and "3 problem(s)" in err and "not JSON" in err and "no caption" in err and "not found" in err


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ValueError, match="not a prepared set"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "pano360-prepared", "items": []}))
    with pytest.raises(ValueError, match="is empty"):
        read_manifest(tmp_path)


def test_prepare_refines_poles_with_a_diffusers_inpainter(tmp_path):
    """--refine-poles diffusers:PATH uses pano_core's diffusers inpainter (a tiny SD inpainting
    pipeline saved here) and writes refined copies next to the untouched prepared images."""
    from diffusers import StableDiffusionInpaintPipeline
    from test_poles_diffusers import _tiny_sd_components

    pipe = StableDiffusionInpaintPipeline(**_tiny_sd_components(tmp_path / "sd", 9))
    pipe.save_pretrained(tmp_path / "sd" / "pipe", safe_serialization=True)
    raw = _raw_set(tmp_path / "raw", n=1, h=32)
    rc = cli.main(["prepare", "--data", str(raw), "--output", str(tmp_path / "p"), "--resolution", "32",
                   "--refine-poles", f"diffusers:{tmp_path / 'sd' / 'pipe'}", "--no-progress"])
    assert rc == 0
    (it,) = read_manifest(tmp_path / "p")["items"]
    img, ref = read_image(tmp_path / "p" / it["image"]), read_image(tmp_path / "p" / it["refined"])
    assert torch.allclose(ref[..., 12:20, :], img[..., 12:20, :], atol=1 / 255)  # equator untouched
    assert not torch.allclose(ref[..., :2, :], img[..., :2, :], atol=2 / 255)  # poles inpainted
    rc = cli.main(["prepare", "--data", str(raw), "--output", str(tmp_path / "q"), "--resolution", "32",
                   "--refine-poles", "magic"])
    assert rc == 2


def test_packaging_declares_the_training_package():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert py["project"]["scripts"]["pano360-train"] == "pano360_training.cli:main"
    assert {"accelerate", "tensorboard", "matplotlib", "pyyaml"} <= {
        d.split(">")[0].split("=")[0].strip().lower() for d in py["project"]["optional-dependencies"]["train"]}
    assert "configs/*.yaml" in py["tool"]["setuptools"]["package-data"]["pano360_training"]
    setup = (ROOT / "setup.py").read_text()
    assert '"pano360_training": "training"' in setup
    assert ",train]" in (ROOT / "scripts" / "pano360-dev").read_text()  # the test command installs the extra
