"""A new user's first hour (issue 14, points 2, 3, 4, 8): example inputs in ComfyUI's input/,
the doctor command, a seam-blend input with real seams, launch on a busy port, --help."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
from pathlib import Path

import pytest

from pano_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def ws_mod():
    spec = importlib.util.spec_from_file_location("pano360_workspace_under_test", ROOT / "scripts" / "workspace.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _loaded_files(path: Path) -> list[str]:
    ui = json.loads(path.read_text())
    return [n["widgets_values"][0] for n in ui["nodes"] if n["type"] in ("LoadImage", "LoadImageMask")]


def test_every_template_input_is_an_example_input(ws_mod):
    names = {f for wf in WORKFLOWS for f in _loaded_files(wf)}
    assert names  # the templates do load images
    assert names <= set(ws_mod.EXAMPLE_INPUTS), names - set(ws_mod.EXAMPLE_INPUTS)
    for n in ws_mod.EXAMPLE_INPUTS:
        assert (ws_mod.EXAMPLE_DIR / n).is_file(), n


def test_example_inputs_are_copied_without_overwriting(ws_mod, tmp_path):
    (tmp_path / "input").mkdir()
    mine = tmp_path / "input" / "chalet_erp.png"
    mine.write_bytes(b"the user's own file")
    copied = ws_mod.copy_example_inputs(tmp_path)
    assert mine.read_bytes() == b"the user's own file"
    assert mine not in copied
    for n in ws_mod.EXAMPLE_INPUTS:
        if n != "chalet_erp.png":
            assert (tmp_path / "input" / n).read_bytes() == (ws_mod.EXAMPLE_DIR / n).read_bytes()
    assert ws_mod.copy_example_inputs(tmp_path) == []  # idempotent
    assert not list((tmp_path / "input").glob(".*tmp"))


def test_launch_on_a_busy_port_says_so_before_any_setup(ws_mod, monkeypatch, capsys):
    def no_setup():
        raise AssertionError("setup must not run when the port is taken")

    monkeypatch.setattr(ws_mod, "setup", no_setup)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert ws_mod.main(["launch", "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert f"port {port} is in use; pass --port N" in err and "Traceback" not in err
        monkeypatch.setenv("PANO360_PORT", str(port))  # the default port comes from PANO360_PORT
        assert ws_mod.main(["launch"]) == 1
        assert f"port {port} is in use" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ws_mod.main(["launch", "--port", "70000"])


def test_dev_script_help_has_no_stray_lines():
    r = subprocess.run(["bash", str(ROOT / "scripts" / "pano360-dev"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert "set -euo" not in r.stdout and lines[-1].strip()
    assert "PANO360_PORT" in r.stdout and "doctor" in r.stdout


def _fake_comfyui(tmp_path: Path, present: dict[str, str]) -> Path:
    root = tmp_path / "ComfyUI"
    (root / "models").mkdir(parents=True)
    (root / "main.py").write_text("")
    for folder, name in present.items():
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
        (root / "models" / folder / name).write_bytes(b"x")
    return root


def test_doctor_cli_lists_present_and_missing_models(tmp_path, capsys):
    root = _fake_comfyui(tmp_path, {"unet": "flux1-dev.safetensors", "vae": "ae.safetensors"})
    assert main(["doctor", "--comfyui", str(root)]) == 0
    out = capsys.readouterr().out
    blocks = {b.split(":")[0]: b for b in out.split("\n") if b.endswith(".json") or ".json:" in b}
    assert "needs no model files" in blocks["cubemap_seam_blend.json"]
    assert "missing" in blocks["dit360_text_to_panorama.json"]
    t2p = out.split("dit360_text_to_panorama.json:")[1].split(".json:")[0]
    assert "[ok]      models/unet/flux1-dev.safetensors" in t2p  # legacy folder name found too
    assert f"[missing] dit360_lora.safetensors (LoraLoaderModelOnly) -> put it in {root / 'models' / 'loras'}/" in t2p
    assert f"t5xxl_fp16.safetensors (DualCLIPLoader) -> put it in {root / 'models' / 'text_encoders'}/" in t2p
    assert "Non-Commercial" not in t2p.split("[ok]")[0]  # licence lines only for missing files
    assert main(["doctor", "--comfyui", str(root), "--strict"]) == 1
    capsys.readouterr()
    assert main(["doctor", "--comfyui", str(tmp_path / "nowhere")]) == 2
    assert "--comfyui" in capsys.readouterr().err


def test_doctor_reports_the_flux_licence_and_workspace_doctor(ws_mod, tmp_path, monkeypatch, capsys):
    root = _fake_comfyui(tmp_path, {})
    monkeypatch.setenv("COMFYUI_PATH", str(root))
    assert ws_mod.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "FLUX.1 [dev] Non-Commercial License" in out
    assert out.count("needs no model files") >= 2  # cubemap_seam_blend, viewer_perspective


def test_seam_blend_example_has_real_seams():
    """The template's input is a cubemap whose faces disagree; blending repairs it (before != after)."""
    from pano_core.geometry import read_cubemap
    from pano_core.seams.metrics import seam_metrics
    from pano_core.seams.poisson import blend_cube_faces

    faces, _ = read_cubemap(ROOT / "tests" / "assets" / "seams_exposure_dice.png")
    before = seam_metrics(faces, "stack")["seam_jump"]
    after = seam_metrics(blend_cube_faces(faces).clamp(0, 1), "stack")["seam_jump"]
    assert before > 3 * after, (before, after)


def test_bench_geometry_refuses_a_silent_fallback(tmp_path, monkeypatch, capsys):
    """Point 21: without the shared panoramas the benchmark stops and says where it looked."""
    monkeypatch.setenv("PANO360_DATA", str(tmp_path))
    spec = importlib.util.spec_from_file_location("bench_geometry_under_test", ROOT / "benchmarks" / "bench_geometry.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit, match=f"chalet_erp.png not found \\(looked in {tmp_path}\\).*--image PATH"):
        mod.main(["--sizes", "64"])
    (tmp_path / "chalet_erp.png").write_bytes(b"")
    assert mod.shared_panorama("chalet_erp.png") == tmp_path / "chalet_erp.png"


def test_every_template_has_a_thumbnail():
    import cv2

    for wf in WORKFLOWS:
        jpg = wf.with_suffix(".jpg")
        assert jpg.is_file(), f"{jpg.name} missing (scripts/make_thumbnails.py makes it)"
        img = cv2.imread(str(jpg))
        assert img is not None and img.shape[1] == 512 and img.std() > 5, jpg.name


def test_weight_needing_templates_name_weights_folders_and_licences():
    from pano_core.doctor import KNOWN_WEIGHTS, workflow_needs

    n_weighty = 0
    for wf in WORKFLOWS:
        ui = json.loads(wf.read_text())
        needs = workflow_needs(ui)
        if not needs:
            continue
        n_weighty += 1
        notes = " ".join(n["widgets_values"][0] for n in ui["nodes"] if n["type"] in ("MarkdownNote", "Note"))
        for need in needs:
            assert need.file in notes, (wf.name, need.file)
            assert need.folders[0] in notes, (wf.name, need.folders[0])
            assert need.file in KNOWN_WEIGHTS, need.file  # doctor knows where it comes from
        assert "doctor" in notes, wf.name
        if any(n.file == "flux1-dev.safetensors" for n in needs):
            assert "Non-Commercial" in notes, wf.name  # FLUX.1-dev's licence is named
    assert n_weighty >= 5
