"""pano360-train jopano on a tiny random Sana (tests/tiny_sana.py, CPU): step 0 is the base model,
a batch is overfit, exact resume, the quarter-yaw cache, V2P samples keep their face, the adapter
file loads in JoPanoPipeline, ``pano360 jopano --adapter`` and the ComfyUI loader (dims checked),
and the 2-process DDP gradients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_sana
import torch
from pano360_training import cli
from pano360_training import jopano as J
from pano360_training.config import load_config, set_value
from pano360_training.prepare import prepare_dataset
from safetensors.torch import load_file
from training_helpers import _losses, _pano, _sets, ddp_and_single_grads

from pano_core.errors import PanoInputError
from pano_core.geometry import e2c
from pano_core.io import read_image, write_image

pytestmark = pytest.mark.timeout(600)

S = tiny_sana.TINY_FACE  # 32 px faces: 8x8 tokens with the tiny /4 DC-AE
RES = 2 * S  # ERP height whose natural face size is S

FAST = ["model.dtype=fp32", "train.gradient_accumulation=1", "data.max_sequence_length=24", "sample.steps=2",
        "sample.every=0", "checkpoint.every=2", "log.every=1", "optimizer.lr=1e-3", "scheduler.warmup=0",
        "model.gradient_checkpointing=false", "sample.prompts=[]", "sample.v2p=false",
        "log.logger=none"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models are far faster on one thread than on two contended ones (shared CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sana(tmp_path_factory, one_thread):
    return tiny_sana.save_tiny_sana(tmp_path_factory.mktemp("jopano-train") / "sana")


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("jopano-data")
    raw = root / "raw"
    raw.mkdir()
    for i in range(2):
        img = _pano(RES, i)
        img[:, 0] = img[:, 0] * torch.linspace(0.3, 1.0, RES)[:, None]  # not symmetric top/bottom
        write_image(raw / f"pano{i}.png", img)
        (raw / f"pano{i}.txt").write_text(f"a striped test panorama {i}")
    (raw / "pano0.U.txt").write_text("a blue sky")
    prepare_dataset(raw, root / "prepared", resolution=RES, progress=False)
    return root / "prepared"


def _train(sana, data, run, extra=(), steps=4, resume=None):
    argv = ["jopano", "--data", str(data), "--output", str(run), "--model", str(sana), "--max-steps", str(steps),
            "--face-size", str(S), "--no-progress", *_sets(FAST + list(extra))]
    if resume is not None:
        argv += ["--resume"] + ([] if resume == "latest" else [resume])
    assert cli.main(argv) == 0
    return run


def _cfg(sana, data, **kv):
    cfg = load_config("jopano_adapter")
    for k, v in {"model.path": str(sana), "data.dir": str(data), "data.face_size": S, "model.dtype": "fp32",
                 "data.max_sequence_length": 24, **kv}.items():
        set_value(cfg, k, v)
    return cfg


def test_step0_is_the_base_model_and_only_adapters_train(sana, data):
    cfg = _cfg(sana, data, **{"data.cache": False, "condition.v2p_probability": 1.0})
    jp = J.load_pipeline(cfg, torch.device("cpu"))
    src = J._Source(cfg, jp, S, None)
    plan = J.DataPlan(len(src.items), 0, 0, 0, 1.0)
    b = J.make_batch(cfg, src, plan, [0, 1], "cpu")
    assert b.cond.reshape(2, 6)[:, 0].all() and b.cond.sum() == 2  # V2P, face F given
    x_t, sig, _, w = J.face_inputs(b)
    assert torch.equal(x_t[b.cond], b.x0[b.cond]) and (sig[b.cond] == 0).all() and (w[b.cond] == 0).all()
    tr = jp.transformer
    adapters = J.new_adapter_set(cfg, tr, S)

    def plain(transformer, **kw):
        return transformer(**kw)

    with torch.no_grad():
        ref = J.velocity(plain, tr, x_t, sig, b.embeds, b.mask)
    loss, _ = J.compute_loss(adapters, tr, b)
    got = J.velocity(adapters, tr, x_t, sig, b.embeds, b.mask)
    assert torch.equal(got, ref)  # zero-initialised output projections: exactly the base model
    loss.backward()
    assert all(p.grad is None for p in tr.parameters())  # Sana frozen
    outs = [blk.out.weight.grad for blk in adapters]
    assert all(g is not None and g.abs().sum() > 0 for g in outs)
    # train.sync: the joint-face sync couples the faces in the training forward (another loss)
    from pano_core.jopano.sync import joint_face_sync

    with torch.no_grad(), joint_face_sync(transformer=tr):
        synced = J.compute_loss(adapters, tr, b)[0]
    assert abs(float(synced) - float(loss.detach())) > 1e-6
    # the condition face does not enter the loss: changing its target changes nothing
    b2 = J.Batch(**{**b.__dict__, "noise": torch.where(b.cond[:, None, None, None], b.noise * 5, b.noise)})
    with torch.no_grad():
        torch.testing.assert_close(J.compute_loss(adapters, tr, b2)[0], loss.detach(), rtol=0, atol=0)


def test_quarter_yaw_permutes_the_cached_faces_exactly(sana, data, tmp_path):
    import shutil

    d = tmp_path / "prep"
    shutil.copytree(data, d, ignore=shutil.ignore_patterns("caches"))
    cfg = _cfg(sana, d)
    jp = J.load_pipeline(cfg, torch.device("cpu"))
    info = J.build_caches(cfg, progress=False, jp=jp)
    assert info["latents"] == 2 and info["texts"] == 4  # 2 captions + "a blue sky" + ""
    # side faces of a rolled ERP are the permuted faces; a turned U/D latent is not the turned face's latent
    assert info["side_permutation_error"] < 1e-5 and info["ud_rotation_error"] > 1e-3, info
    src = J._Source(cfg, jp, S, Path(info["folder"]))
    live = J._Source(_cfg(sana, d, **{"data.cache": False}), jp, S, None)
    for k in range(4):
        torch.testing.assert_close(src.faces(0, k), live.faces(0, k), rtol=0, atol=1e-4)
    src_idx, rot = J.quarter_yaw_map(1)
    assert sorted(src_idx[:4]) == [0, 1, 2, 3] and src_idx[4:] == (4, 5) and rot[:4] == (0, 0, 0, 0) and rot[4] != 0
    # per-face captions follow their faces; the cache was reused on a second call
    assert src.captions(0)[4] == "a blue sky" and src.captions(0)[0] == "a striped test panorama 0"
    assert J.build_caches(cfg, progress=False, jp=jp)["folder"] == info["folder"]
    with pytest.raises(PanoInputError, match="data.cache=false"):
        J._check(_cfg(sana, d, **{"data.random_yaw": True}))


def test_training_overfits_and_writes_the_run_folder(sana, data, tmp_path):
    run = _train(sana, data, tmp_path / "run", steps=6, extra=[
        "debug.overfit_batches=1", "optimizer.lr=2e-2", "checkpoint.every=3", "checkpoint.keep=1", "sample.every=3",
        "sample.prompts=[a beach]", "sample.v2p=true", "sample.seeds=[0]", "train.batch_size=2"])
    losses = [r["loss"] for r in _losses(run)]
    assert len(losses) == 6 and all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.85 * losses[0], losses
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000006"]
    assert (run / "checkpoints" / "step-000006" / J.ADAPTER_FILE).is_file()
    grid = read_image(run / "samples" / "step-000003.png")
    assert grid.shape == (1, 3, 2 * (3 * S + 2) + 2, 6 * S)  # T2P row, V2P row: ERP above six faces
    recs = [json.loads(x) for x in (run / "samples" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["task"]) for r in recs] == [(3, "t2p"), (3, "v2p"), (6, "t2p"), (6, "v2p")]
    assert all({"raw", "blended"} <= set(r) and "seam_ssim" in r["raw"] for r in recs)
    assert all(r["given_face_max_abs"] == 0 for r in recs if r["task"] == "v2p")  # V2P keeps the given face
    assert read_image(run / "logs" / "loss.png").shape[1] >= 3
    # the adapter file: the JoPano format, trained (out projections no longer zero)
    from pano_core.jopano.adapter import read_adapter_config

    conf = read_adapter_config(run / J.ADAPTER_FILE)
    assert conf.face_size == S and conf.base_model == str(sana) and conf.num_layers == 2 and conf.model_dim == 16
    sd = load_file(run / J.ADAPTER_FILE)
    assert set(sd) == {f"blocks.{i}.{m}.{p}" for i in range(2) for m in ("norm", "q", "k", "v", "out")
                       for p in ("weight", "bias")}
    assert sd["blocks.0.out.weight"].abs().sum() > 0
    assert cli.main(["jopano", "--data", str(data), "--output", str(run), "--model", str(sana), "--no-progress",
                     "--face-size", str(S)]) == 2  # an existing run is never overwritten without --resume
    # pano360-train sample renders T2P panoramas from the run's newest checkpoint adapter
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a snowy village\n\na desert\n")
    assert cli.main(["sample", "--run", str(run), "--prompts", str(prompts), "--seed", "5", "--no-progress"]) == 0
    out = run / "samples" / "manual-step-000006"
    assert sorted(p.name for p in out.glob("*.png")) == ["0000-seed5.png", "0001-seed6.png"]
    assert read_image(out / "0000-seed5.png").shape == (1, 3, 2 * S, 4 * S)
    assert [json.loads(x)["mode"] for x in (out / "metrics.jsonl").read_text().splitlines()] == ["adapter"] * 2
    assert cli.main(["sample", "--run", str(run), "--prompts", str(prompts), "--step", "2"]) == 2


def test_resume_gives_the_losses_of_an_uninterrupted_run(sana, data, tmp_path):
    extra = ["train.gradient_accumulation=2", "train.sync=true", "condition.face=random", "data.caption_dropout=0.3",
             "model.gradient_checkpointing=true"]
    full = _train(sana, data, tmp_path / "full", steps=4, extra=extra)
    part = _train(sana, data, tmp_path / "part", steps=4, extra=extra + ["debug.stop_at_step=2"])
    assert not (part / J.ADAPTER_FILE).exists() and len(_losses(part)) == 2
    _train(sana, data, part, steps=4, extra=extra, resume="latest")
    a, b = _losses(full), _losses(part)
    assert len(a) == 4 and a == b  # bit for bit: every loss term and the learning rate
    assert any(r["loss/v2p"] > 0 for r in a) and any(r["loss/t2p"] > 0 for r in a)
    fa, fb = load_file(full / J.ADAPTER_FILE), load_file(part / J.ADAPTER_FILE)
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def test_trained_adapter_loads_in_pipeline_cli_and_comfyui(sana, data, tmp_path, comfy_inprocess, monkeypatch):
    import comfy_harness as ch
    import folder_paths

    from pano_core.cli import main as pano360
    from pano_core.jopano.adapter import load_adapter_set
    from pano_core.jopano.pipeline import JoPanoPipeline

    # trained without caches (faces encoded every step) and with a random yaw of any whole ERP column
    run = _train(sana, data, tmp_path / "run", steps=2, extra=["optimizer.lr=5e-2", "data.cache=false",
                                                                "data.random_yaw=true"])
    f = run / J.ADAPTER_FILE
    kw = dict(face_size=S, steps=2, cfg=4.5, seed=3, progress=False, blend="none")
    jp = JoPanoPipeline.from_pretrained(sana, adapter=f, device="cpu")
    with_adapter = jp("a beach", mode="adapter", **kw)
    without = jp("a beach", mode="independent", **kw)
    assert (with_adapter.latents - without.latents).abs().max() > 1e-4  # the trained adapter acts
    # pano360 jopano --adapter FILE (mode adapter+sync by default) writes the panorama
    out = tmp_path / "pano.png"
    assert pano360(["jopano", "--model", str(sana), "--adapter", str(f), "--face-size", str(S), "--steps", "2",
                    "--device", "cpu", "--prompt", "a beach", "-q", "-o", str(out)]) == 0
    assert read_image(out).shape == (1, 3, 2 * S, 4 * S)
    # the ComfyUI Joint-Face Adapter Loader + Sampler give what the pipeline gives
    pack = ch.import_pack_inprocess("pano360_jopano_train_pack")
    mod = pack.nodes.jopano
    models = tmp_path / "models"
    (models / "pano360").mkdir(parents=True)
    (models / "pano360" / "mine.safetensors").write_bytes(f.read_bytes())
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "pano360", ([str(models / "pano360")], {".safetensors"}))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sana", ([str(Path(sana).parent)], {"folder"}))
    (adapter,) = mod.Pano360JointFaceAdapterLoader().load("mine.safetensors")
    (model,) = mod.Pano360SanaLoader().load(Path(sana).name, "fp32")
    faces, erp, metrics = mod.Pano360JointFaceSampler().sample(model, "a beach", "", mod.TASKS[0], "adapter", S, 2, 4.5, 3,
                                                                "none", adapter=adapter)
    torch.testing.assert_close(faces.permute(0, 3, 1, 2), with_adapter.faces, rtol=0, atol=1e-5)
    # dims are checked: an adapter for another Sana is refused, naming both
    other = tiny_sana.build_tiny_transformer(num_layers=3)
    with pytest.raises(PanoInputError, match="2 blocks.*3 blocks"):
        load_adapter_set(f, transformer=other)


def test_ddp_two_processes_give_the_gradients_of_one_batch_of_two(sana, data, tmp_path, training_env):
    """2 CPU processes (gloo DDP, accelerate launch --multi_gpu as in the DiT360 test): 2 x batch 1
    all-reduce to the gradients of 1 x batch 2 (all draws from (seed, global sample index))."""
    common = ["jopano", "--data", str(data), "--model", str(sana), "--max-steps", "1", "--face-size", str(S),
              "--no-progress", *_sets(FAST + ["condition.v2p_probability=0.5"])]
    a, b = ddp_and_single_grads(common, tmp_path, training_env, 29700)
    assert a.keys() == b.keys() and any(a[k].abs().sum() > 0 for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-7)
    (ck,) = (tmp_path / "ddp" / "checkpoints").iterdir()
    assert json.loads((ck / "state.json").read_text())["world_size"] == 2
    assert (tmp_path / "ddp" / J.ADAPTER_FILE).is_file()


def test_face_captions_are_prepared(data):
    from pano360_training.prepare import read_manifest

    items = {it["name"]: it for it in read_manifest(data)["items"]}
    assert items["pano0"]["extra"]["face_captions"] == {"U": "captions/pano0.U.txt"}
    assert (data / "captions" / "pano0.U.txt").read_text().strip() == "a blue sky"
    assert "face_captions" not in items["pano1"]["extra"]
    assert e2c(read_image(data / items["pano0"]["image"]), S).shape == (6, 3, S, S)


def test_bad_input(sana, data, tmp_path, capsys):
    def err(*argv):
        assert cli.main(["jopano", "--data", str(data), "--model", str(sana), "--no-progress", *argv]) == 2
        return capsys.readouterr().err

    assert "face_size: must be a multiple of 4" in err("--output", str(tmp_path / "a"), "--face-size", "30",
                                                       *_sets(FAST))
    assert "condition.face: expected random or one of F R B L U D" in err(
        "--output", str(tmp_path / "b"), *_sets(FAST + ["condition.face=X"]))
    assert "set data.cache=false" in err("--output", str(tmp_path / "c"), *_sets(FAST + ["data.random_yaw=true"]))
    assert "did you mean condition.v2p_probability" in err("--output", str(tmp_path / "d"), "--set", "v2p_probability=1")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written for bad input


def test_prepare_with_a_jopano_config_prebuilds_the_face_caches(sana, data, tmp_path):
    from pano360_training.config import save_config

    conf = save_config(_cfg(sana, data), tmp_path / "jopano.yaml")
    raw = data.parent / "raw"
    assert cli.main(["prepare", "--data", str(raw), "--output", str(tmp_path / "again"), "--resolution", str(RES),
                     "--model", str(sana), "--config", str(conf), "--no-progress"]) == 0
    (cache,) = (tmp_path / "again" / "caches").iterdir()
    rec = json.loads((cache / "latents.json").read_text())
    assert cache.name.startswith("jopano-") and rec["face_size"] == S and rec["items"] == 2
    assert rec["ud_rotation_error"] > 1e-3 and (cache / "text.json").is_file()
