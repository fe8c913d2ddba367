"""``pano360 jopano`` (and ``pano360 generate --prompts``) end to end on tiny random models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_sana
import torch

from pano_core.cli import main
from pano_core.io import read_image, write_image
from pano_core.xmp import png_text, read_gpano

ROOT = Path(__file__).resolve().parents[1]
S = tiny_sana.TINY_FACE


@pytest.fixture(scope="module")
def sana_dir(tmp_path_factory):
    return tiny_sana.save_tiny_sana(tmp_path_factory.mktemp("cli-jopano") / "sana")


def _args(model, out, *extra):
    return ["jopano", "--model", str(model), "--face-size", str(S), "--steps", "2", "--device", "cpu",
            "--mode", "independent", "-q", "-o", str(out), *extra]


def _settings(path: Path) -> dict:
    return json.loads(png_text(path.read_bytes())["pano360"])


def test_jopano_subprocess_end_to_end(sana_dir, tmp_path, capsys):
    out = tmp_path / "pano.png"
    faces = tmp_path / "faces"
    metrics = tmp_path / "m.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "pano_core", *_args(sana_dir, out, "--prompt", "a mountain lake", "--face-prompt",
                                                     "U=blue sky", "--seed", "4", "--faces-out", str(faces),
                                                     "--metrics-out", str(metrics))]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    img = read_image(out)
    assert img.shape == (1, 3, 2 * S, 4 * S)
    data = out.read_bytes()
    gp = read_gpano(data)
    assert gp["ProjectionType"] == "equirectangular" and gp["FullPanoWidthPixels"] == 4 * S
    st = _settings(out)
    assert st["prompt"] == "a mountain lake" and st["face_prompts"] == {"U": "blue sky"}
    assert st["seed"] == 4 and st["mode"] == "independent" and st["model"] == str(sana_dir)
    assert sorted(p.name for p in faces.iterdir()) == sorted(f"{f}.png" for f in "FRBLUD")
    m = json.loads(metrics.read_text())
    assert set(m) == {"raw", "blended"}
    assert {"seam_ssim", "seam_sobel", "seam_jump", "edges"} <= set(m["blended"])
    # no overwrite without --force (checked before loading), exit 2 naming the output
    assert main(_args(sana_dir, out, "--prompt", "x")) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == data
    assert main(_args(sana_dir, tmp_path / "new.png", "--prompt", "x", "--faces-out", str(faces))) == 2
    assert "--faces-out" in capsys.readouterr().err


def test_cli_matches_python_api_and_view_face(sana_dir, tmp_path):
    from pano_core.jopano.pipeline import JoPanoPipeline

    view = tmp_path / "view.png"
    g = torch.Generator().manual_seed(0)
    write_image(view, torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(S, S), mode="bilinear"))
    out = tmp_path / "v2p.png"
    faces = tmp_path / "faces"
    assert main(_args(sana_dir, out, "--prompt", "a cloister", "--view", str(view), "--view-face", "r",
                      "--faces-out", str(faces), "--bits", "16")) == 0
    # the given face is the user's pixels exactly
    assert torch.equal(read_image(faces / "R.png"), read_image(view))
    pipe = JoPanoPipeline.from_pretrained(sana_dir, device="cpu")
    res = pipe("a cloister", view=read_image(view), view_face="R", mode="independent", face_size=S, steps=2,
               seed=0, progress=False)
    np.testing.assert_allclose(read_image(out).numpy(), res.erp.numpy(), atol=1.0 / 65535 + 1e-6)
    assert _settings(out)["view_face"] == "R"


def test_prompts_file_txt_jsonl_and_process_split(sana_dir, tmp_path, monkeypatch):
    txt = tmp_path / "p.txt"
    txt.write_text("# a comment\na beach\n\na forest\n")
    out = tmp_path / "txt_out"
    assert main(_args(sana_dir, out, "--prompts", str(txt), "--seed", "10")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png"]
    assert _settings(out / "00001.png")["seed"] == 11 and _settings(out / "00001.png")["prompt"] == "a forest"

    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps(o) for o in [
        {"prompt": "a beach", "seed": 3},
        {"faces": {"F": "a door", "R": "a wall", "B": "a window", "L": "a shelf", "U": "a ceiling", "D": "a rug"}},
        {"prompt": "a street", "negative": "blurry"},
    ]))
    out2 = tmp_path / "jl_out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(_args(sana_dir, out2, "--prompts", str(jl), "--metrics-out", str(tmp_path / "m.json"))) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["00001.png"]  # process 1 of 2 takes every second prompt
    assert _settings(out2 / "00001.png")["face_prompts"]["D"] == "a rug"
    assert json.loads((tmp_path / "m.rank1.json").read_text())["00001"]["raw"]
    monkeypatch.setenv("RANK", "0")
    assert main(_args(sana_dir, out2, "--prompts", str(jl))) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    st = _settings(out2 / "00002.png")
    assert st["negative_prompt"] == "blurry" and st["seed"] == 2
    assert _settings(out2 / "00000.png")["seed"] == 3


@pytest.mark.parametrize("content,message", [
    ('{"prompt": "a"}\n{"prompt": "b",}\n', "p.jsonl line 2: not valid JSON"),
    ('{"prompt": "a", "steps": 3}\n', "line 1: unknown keys ['steps']"),
    ('{"faces": {"top": "sky"}}\n', "line 1: face key 'top' is not one of F R B L U D"),
    ('{"faces": {"F": "a"}}\n', "--prompts line 1: faces R B L U D have no prompt"),
    ('{"prompt": "a", "seed": -1}\n', '"seed" must be an integer >= 0'),
    ("a beach\n{\"prompt\": \"x\"}\n", "line 2: a JSON line in a plain-text prompts file"),
    ("\n# only a comment\n", "holds no prompts"),
])
def test_bad_prompts_files(sana_dir, tmp_path, capsys, content, message):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    assert main(_args(sana_dir, tmp_path / "o", "--prompts", str(f))) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra,message", [
    (["--prompt", "x", "--face-prompt", "Q=sky"], "face key 'Q' is not one of F R B L U D"),
    (["--prompt", "x", "--face-prompt", "F"], "expected FACE=TEXT"),
    (["--face-prompt", "F=a door"], "faces R B L U D have no prompt"),
    (["--prompt", "x", "--prompts", "p.txt"], "--prompts: a prompt list excludes --prompt"),
    (["--prompt", "x", "--view", "VIEW", "--view-face", "F", "--face-prompt", "F=door"], "face F is the given view"),
    (["--prompt", "x", "--view", "NOTIMG"], "--view: say where it goes"),
    (["--prompt", "x", "--view", "VIEW", "--fov", "170", "--face-prompt", "F=door"], "face F is given"),
    (["--prompt", "x", "--view", "NOTIMG", "--view-face", "F"], "--view: cannot read"),
    (["--prompt", "x", "--fov", "90"], "only meaningful with --view"),
    (["--prompt", "x", "--image", "NOTIMG"], "--image/--mask"),
    (["--prompt", "x", "--mode", "adapter"], "--mode: adapter needs --adapter FILE"),
    (["--prompt", "x", "--adapter", "missing.safetensors"], "--adapter: file not found"),
    (["--prompt", "x", "--metrics-out", "m.txt"], "--metrics-out: expected a .json file"),
])
def test_bad_input_exits_2_before_loading(tmp_path, capsys, extra, message):
    (tmp_path / "notimg.txt").write_text("hello")
    write_image(tmp_path / "view.png", torch.rand(1, 3, S, S))
    extra = [str(tmp_path / "notimg.txt") if a == "NOTIMG" else str(tmp_path / "view.png") if a == "VIEW" else a
             for a in extra]
    out = tmp_path / "out.png"
    # a model path that does not exist: these checks must fail before anything is loaded
    assert main(_args(tmp_path / "no-model", out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_model_and_face_size(sana_dir, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(_args(sana_dir, out, "--prompt", "x", "--face-size", "30")) == 2
    assert "face_size: must be a multiple of 4" in capsys.readouterr().err
    pt = tmp_path / "sana.pth"
    pt.write_bytes(b"pickle")
    assert main(_args(pt, out, "--prompt", "x", "--text-encoder", str(sana_dir), "--vae", str(sana_dir))) == 2
    assert "not a .safetensors file" in capsys.readouterr().err
    assert main(_args(tmp_path, out, "--prompt", "x")) == 2
    assert "no model_index.json" in capsys.readouterr().err
    assert not out.exists()


def test_generate_prompts_option(tmp_path, capsys):
    import tiny_diffusers as td

    model = td.save_tiny_flux_pipeline(tmp_path / "flux", seed=1)
    f = tmp_path / "p.txt"
    f.write_text("a lake\na desert\n")
    out = tmp_path / "gen"
    args = ["generate", "--prompts", str(f), "--model", str(model), "--width", "64", "--height", "32", "--steps", "1",
            "--device", "cpu", "--dtype", "fp32", "--no-lora", "-q", "-o", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png"]
    assert read_gpano((out / "00001.png").read_bytes())["ProjectionType"] == "equirectangular"
    assert _settings(out / "00001.png")["seed"] == 1
    assert main(args) == 2  # never overwritten without --force
    assert "00000.png already exists" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "faces": {"F": "b"}}\n')
    assert main(args[:1] + ["--prompts", str(tmp_path / "bad.jsonl")] + args[3:]) == 2
    assert "per-face prompts) is a JoPano option" in capsys.readouterr().err


def test_erp_and_keep_mask(sana_dir, tmp_path):
    from pano_core.jopano.conditions import erp_condition

    g = torch.Generator().manual_seed(3)
    erp = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 8, generator=g), size=(2 * S, 4 * S), mode="bilinear")
    mask = torch.zeros(1, 1, 2 * S, 4 * S)
    mask[..., : 2 * S] = 1.0
    write_image(tmp_path / "pano.png", erp, bits=16)
    write_image(tmp_path / "keep.png", mask)
    faces = tmp_path / "faces"
    assert main(_args(sana_dir, tmp_path / "out.jpg", "--prompt", "a desert", "--image", str(tmp_path / "pano.png"),
                      "--mask", str(tmp_path / "keep.png"), "--faces-out", str(faces))) == 0
    cond = erp_condition(read_image(tmp_path / "pano.png"), read_image(tmp_path / "keep.png"), face_size=S)
    assert cond.full == [3]
    np.testing.assert_allclose(read_image(faces / "L.png")[0].numpy(), cond.faces[3].numpy(), atol=0.5 / 255 + 1e-6)
    from pano_core.xmp import jpeg_comments

    data = (tmp_path / "out.jpg").read_bytes()
    assert read_gpano(data)["ProjectionType"] == "equirectangular"
    assert json.loads(jpeg_comments(data)[-1].split(":", 1)[1])["prompt"] == "a desert"
