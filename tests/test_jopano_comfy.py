"""JoPano nodes in the real ComfyUI server (tests/comfy_harness.py) with tiny Sana models:
T2P and V2P graphs, the adapter loader, single-file loading, bad input that must not take the
server down, Cancel between steps; the loader cache and the shipped workflows' layout."""

from __future__ import annotations

import json
from pathlib import Path

import comfy_harness as ch
import numpy as np
import pytest
import substitutions_jopano as sj
import tiny_sana

ROOT = Path(__file__).resolve().parent.parent
S = tiny_sana.TINY_FACE
JOPANO_WORKFLOWS = sorted((ROOT / "workflows").glob("jopano_*.json"))


@pytest.fixture(scope="module")
def sana_server(comfy):
    sj.install_tiny_sana(comfy, "tiny_sana")
    sj.install_tiny_sana(comfy, "tiny_sana_transformer.safetensors")
    sj.install_tiny_adapter(comfy, "tiny_jopano_adapter.safetensors")
    comfy.object_info(refresh=True)
    return comfy


def _graph(**sampler):
    inputs = {"sana": ["1", 0], "prompt": "a snowy village", "negative_prompt": "", "task": "T2P (text to panorama)",
              "mode": "auto", "face_size": S, "steps": 2, "cfg": 4.5, "seed": 0, "blend": "exact"}
    inputs.update(sampler)
    return {
        "1": {"class_type": "Pano360SanaLoader", "inputs": {"model": "tiny_sana", "dtype": "fp32"}},
        "2": {"class_type": "Pano360JointFaceSampler", "inputs": inputs},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": "jopano_erp"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "jopano_faces"}},
    }


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_t2p_graph_and_adapter(sana_server):
    comfy = sana_server
    info = comfy.object_info("Pano360JointFaceSampler")
    assert info["category"] == "Pano360/jopano"
    assert info["output_name"] == ["faces", "erp", "metrics"]
    models = comfy.object_info("Pano360SanaLoader")["input"]["required"]["model"][0]
    assert "tiny_sana" in models and "tiny_sana_transformer.safetensors" in models

    out = comfy.run(_graph(prompt_U="a blue sky"), timeout=240)
    (erp,) = comfy.images(out, "3")
    faces = comfy.images(out, "4")
    assert erp.shape == (2 * S, 4 * S, 3) and erp.std() > 0
    assert len(faces) == 6 and all(f.shape == (S, S, 3) for f in faces)

    api = _graph(mode="adapter+sync")
    api["5"] = {"class_type": "Pano360JointFaceAdapterLoader", "inputs": {"adapter_name": "tiny_jopano_adapter.safetensors"}}
    api["2"]["inputs"]["adapter"] = ["5", 0]
    api["6"] = {"class_type": "Pano360SeamMetrics", "inputs": {"image": ["2", 0], "layout": "stack", "band": 4}}
    out2 = comfy.run(api, timeout=240)
    assert comfy.images(out2, "3")[0].shape == (2 * S, 4 * S, 3)
    assert "Seam-SSIM" in out2["6"]["text"][0]


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_v2p_face_is_kept_and_single_file_loader(sana_server, tmp_path):
    from PIL import Image

    comfy = sana_server
    rng = np.random.default_rng(0)
    arr = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    view = np.array(Image.fromarray(arr).resize((S, S), Image.BILINEAR))
    Image.fromarray(view).save(tmp_path / "face_view.png")
    name = comfy.add_input_file(tmp_path / "face_view.png")
    api = _graph(task="V2P (view to panorama)", view=["7", 0], view_placement="face R", mode="sync")
    api["7"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    api["1"]["inputs"] = {"model": "tiny_sana_transformer.safetensors", "dtype": "fp32",
                          "text_encoder": "tiny_sana", "vae": "tiny_sana"}
    out = comfy.run(api, timeout=240)
    faces = comfy.images(out, "4")
    assert np.array_equal(faces[1], view)  # face R is the user's pixels exactly


@pytest.mark.comfy
@pytest.mark.timeout(400)
def test_bad_input_keeps_the_server_serving(sana_server):
    comfy = sana_server
    models = Path(comfy.models_dir)
    broken = models / "diffusers" / "broken_sana"
    if not broken.exists():
        tiny_sana.save_tiny_sana(broken)
        import shutil

        shutil.rmtree(broken / "vae")
    (models / "diffusion_models" / "pickled.ckpt").write_bytes(b"not safetensors")
    from pano_core.jopano.adapter import JointFaceAdapterConfig, JointFaceAdapterSet, save_adapter_set

    other = models / "pano360" / "other_dims.safetensors"
    if not other.exists():
        save_adapter_set(other, JointFaceAdapterSet(JointFaceAdapterConfig(num_layers=2, model_dim=32)))
    comfy.object_info(refresh=True)

    def fails(api, match, exc="PanoInputError"):
        with pytest.raises(ch.ComfyExecutionError) as e:
            comfy.run(api, timeout=240)
        assert e.value.exception_type.endswith(exc), e.value
        assert match in e.value.exception_message, e.value.exception_message

    api = _graph()
    api["1"]["inputs"]["model"] = "broken_sana"
    fails(api, "missing the vae component")
    api = _graph(face_size=34)
    fails(api, "face_size: must be a multiple of 4")
    api = _graph(mode="adapter")
    fails(api, "mode: adapter needs a Joint-Face adapter")
    api = _graph()
    api["5"] = {"class_type": "Pano360JointFaceAdapterLoader", "inputs": {"adapter_name": "other_dims.safetensors"}}
    api["2"]["inputs"]["adapter"] = ["5", 0]
    fails(api, "32")
    fails(_graph(task="V2P (view to panorama)"), "view: the V2P task needs a view image")
    api = _graph()
    api["1"]["inputs"]["model"] = "pickled.ckpt"
    with pytest.raises(ch.ComfyValidationError):  # not offered: only .safetensors files are listed
        comfy.run(api)
    # still serving: a good graph runs
    out = comfy.run(_graph(seed=3), timeout=240)
    assert comfy.images(out, "3")[0].shape == (2 * S, 4 * S, 3)


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_cancel_stops_between_steps(sana_server):
    import time

    comfy = sana_server
    comfy.run(_graph(seed=5, steps=1), timeout=240)  # model loaded and cached
    pid = comfy.queue(_graph(seed=6, steps=400))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the sampler runs
        q = comfy.get_json("/queue")
        if any(item[1] == pid for item in q.get("queue_running", [])):
            break
        time.sleep(0.1)
    time.sleep(1.0)
    comfy.interrupt()
    with pytest.raises(ch.ComfyExecutionError) as e:
        comfy.wait(pid, timeout=120)
    assert e.value.exception_type == "Interrupted"


def test_loader_cache_and_folders(comfy_inprocess, tmp_path, monkeypatch):
    import folder_paths

    pack = ch.import_pack_inprocess("pano360_jopano_pack")
    mod = pack.nodes.jopano
    base = tmp_path / "models"
    tiny_sana.save_tiny_sana(base / "sana" / "tiny")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sana", ([str(base / "sana")], {"folder"}))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusers", ([str(base / "diffusers")], {"folder"}))
    assert "tiny" in mod.Pano360SanaLoader.INPUT_TYPES()["required"]["model"][0]
    loader = mod.Pano360SanaLoader()
    (a,) = loader.load("tiny", "fp32")
    (b,) = loader.load("tiny", "fp32")
    assert a is b  # cached while nothing changed
    cfg = base / "sana" / "tiny" / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text() + " ")
    (c,) = loader.load("tiny", "fp32")
    assert c is not a  # a changed file reloads
    with pytest.raises(pack.pano_core.errors.PanoInputError, match="neither a Sana diffusers folder"):
        loader.load("missing", "fp32")


@pytest.mark.parametrize("path", JOPANO_WORKFLOWS, ids=[p.stem for p in JOPANO_WORKFLOWS])
def test_workflow_layout(path):
    ui = json.loads(path.read_text())
    boxes = []
    for n in ui["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        boxes.append((n["id"], x, y - 30, x + w, y + h))  # the title bar sits above pos
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap = a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]
            assert not overlap, f"{path.name}: nodes {a[0]} and {b[0]} overlap"
    types = {n["type"] for n in ui["nodes"]}
    assert {"Pano360SanaLoader", "Pano360JointFaceSampler"} <= types
    assert len(JOPANO_WORKFLOWS) == 3
