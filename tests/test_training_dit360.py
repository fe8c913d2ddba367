"""pano360-train dit360 on a tiny random Flux (CPU): training runs, exact resume, caches, export,
sampling, fp8 base, and the 2-process DDP gradient check (accelerate launch, gloo)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pano360_training import cli
from pano360_training.config import get, load_config
from pano360_training.dit360 import DataPlan, build_caches
from pano360_training.lora_export import add_lora, export_lora, lora_state_dict
from pano360_training.memory import quantize_linear_fp8_
from safetensors.torch import load_file
from training_helpers import FAST, RES, _losses, _pano, _sets, _train, ddp_and_single_grads

from pano_core.io import read_image, write_image

pytestmark = pytest.mark.timeout(600)


def test_training_overfits_a_batch_and_writes_the_run_folder(tiny_flux, prepared, tmp_path):
    run = _train(tiny_flux, prepared, tmp_path / "run", steps=8, extra=[
        "debug.overfit_batches=1", "optimizer.lr=5e-2", "lora.dropout=0.0", "sample.every=4", "checkpoint.every=4",
        "checkpoint.keep=1", "sample.seeds=[0, 1]", "sample.prompts=[a snowy village, a beach]"])
    losses = [r["loss"] for r in _losses(run)]
    assert len(losses) == 8
    # the same batch (same noise, timestep, flip and roll) is learnt: the loss falls at every step
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0], losses
    cfg = load_config(run / "config.yaml")
    assert get(cfg, "train.max_steps") == 8 and get(cfg, "optimizer.lr") == 5e-2 and cfg["output"] == str(run)
    # keep 1: only the last checkpoint remains, complete, with a usable LoRA inside
    cks = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert cks == ["step-000008"]
    for f in ("trainable.safetensors", "optimizer.safetensors", "optimizer.json", "state.json", "rng.safetensors",
              "adapter_model.safetensors", "adapter_config.json"):
        assert (run / "checkpoints" / "step-000008" / f).is_file(), f
    # samples: a grid per sampling step (2 prompts x 2 seeds) and their seam metrics
    grid = read_image(run / "samples" / "step-000004.png")
    assert grid.shape == (1, 3, 2 * RES + 2, 2 * (2 * RES) + 2)
    assert (run / "samples" / "step-000008.png").is_file()
    recs = [json.loads(x) for x in (run / "samples" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and {r["step"] for r in recs} == {4, 8}
    assert all(r["wrap_seam"] > 0 and "seam_ssim" in r and "pole_seam_jump" in r for r in recs)
    assert read_image(run / "logs" / "loss.png").shape[1] >= 3
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    # the exported LoRA: DiT360's PEFT format, alpha folded (alpha = r)
    sd = load_file(run / "adapter_model.safetensors")
    assert sd and all(k.startswith("transformer.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))
                      for k in sd)
    modules = {k.rsplit(".lora_", 1)[0] for k in sd}
    assert "transformer.transformer_blocks.0.attn.to_out.0" in modules
    assert "transformer.single_transformer_blocks.0.attn.to_q" in modules
    conf = json.loads((run / "adapter_config.json").read_text())
    assert conf["r"] == conf["lora_alpha"] == 4 and conf["peft_type"] == "LORA"
    # a second run into the same folder without --resume is refused (nothing is overwritten)
    rc = cli.main(["dit360", "--data", str(prepared), "--output", str(run), "--model", str(tiny_flux),
                   "--resolution", str(RES), "--no-progress", *_sets(FAST)])
    assert rc == 2


def test_resume_gives_the_losses_of_an_uninterrupted_run(tiny_flux, prepared, tmp_path):
    # dropout on, accumulation 2, yaw (equivariance form: two model calls) and cube losses on,
    # perspective canvases mixed in from epoch 0
    extra = ["train.gradient_accumulation=2", "lora.dropout=0.1", "losses.yaw.form=equivariance",
             "data.perspective_from_epoch=0", "data.perspective_fraction=1.0", "scheduler.warmup=2"]
    full = _train(tiny_flux, prepared, tmp_path / "full", steps=5, extra=extra)
    part = _train(tiny_flux, prepared, tmp_path / "part", steps=5, extra=extra + ["debug.stop_at_step=2"])
    assert not (part / "adapter_model.safetensors").exists() and len(_losses(part)) == 2
    _train(tiny_flux, prepared, part, steps=5, extra=extra, resume="latest")
    a, b = _losses(full), _losses(part)
    assert len(a) == len(b) == 5
    assert a == b  # bit for bit: every loss term and the learning rate
    assert any(r["loss/perspective"] > 0 for r in a) and all(r["loss/yaw"] > 0 for r in a)
    fa, fb = load_file(full / "adapter_model.safetensors"), load_file(part / "adapter_model.safetensors")
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    # --resume with a named checkpoint folder works too; a folder that is not one is an error
    rc = cli.main(["dit360", "--data", str(prepared), "--output", str(tmp_path / "x"), "--model", str(tiny_flux),
                   "--resolution", str(RES), "--resume", str(tmp_path / "nothing"), "--no-progress"])
    assert rc == 2


def test_dataset_errors(tiny_flux, prepared, tmp_path, capsys):
    rc = cli.main(["dit360", "--data", str(prepared), "--output", str(tmp_path / "r"), "--model", str(tiny_flux),
                   "--resolution", "64", "--no-progress", *_sets(FAST)])
    err = capsys.readouterr().err
    assert rc == 2 and "was prepared at 64x32" in err and "--resolution 32" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"format": "pano360-prepared", "items": []}))
    rc = cli.main(["dit360", "--data", str(empty), "--output", str(tmp_path / "r2"), "--model", str(tiny_flux),
                   "--no-progress"])
    assert rc == 2 and "is empty" in capsys.readouterr().err
    rc = cli.main(["dit360", "--data", str(prepared), "--output", str(tmp_path / "r3"), "--model", str(tiny_flux),
                   "--resolution", str(RES), "--resume", "--no-progress"])
    assert rc == 2 and "no checkpoints" in capsys.readouterr().err


def test_latent_cache_is_circular_versioned_and_reused(tiny_flux, prepared, tmp_path):
    data = tmp_path / "prep"
    shutil.copytree(prepared, data, ignore=shutil.ignore_patterns("caches"))
    cfg = load_config("dit360_lora")
    for k, v in {"model.path": str(tiny_flux), "data.dir": str(data), "data.resolution": RES,
                 "model.dtype": "fp32", "data.max_sequence_length": 16}.items():
        from pano360_training.config import set_value

        set_value(cfg, k, v)
    info = build_caches(cfg, progress=False)
    # a roll by whole latent columns is nearly the latent of the rolled image with the circular
    # encode, and far from it with a plain encode (measured on the first item)
    assert info["roll_error"] < 0.5 * info["roll_error_plain"], info
    assert info["latents"] == 5 and info["texts"] == 6  # 3 panoramas + 2 photos; 5 captions + ""
    folder = Path(info["folder"])
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}
    assert build_caches(cfg, progress=False)["folder"] == str(folder)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")} == stamp  # reused, not rebuilt
    # the cached latent is the circular encode of the prepared image; the flip entry is the flipped image's
    lat = load_file(next(folder.glob("latents-*.safetensors")))
    assert lat["pano0::latent"].shape == (16, RES // 8, RES // 4)
    assert not torch.allclose(lat["pano0::flip"], torch.flip(lat["pano0::latent"], dims=[-1]))
    # an input change (a prepared image rewritten) invalidates the cache
    write_image(data / "images" / "pano0.png", _pano(RES, 7), force=True)
    build_caches(cfg, progress=False)
    lat2 = load_file(next(folder.glob("latents-*.safetensors")))
    assert not torch.equal(lat2["pano0::latent"], lat["pano0::latent"])


def test_data_plan_follows_the_perspective_schedule():
    plan = DataPlan(n_pano=4, n_persp=8, seed=0, persp_from_epoch=2, persp_fraction=0.5)
    assert [plan.epoch_size(e) for e in range(5)] == [4, 4, 4 + 4, 4 + 2, 4 + 1]
    seen = [plan.locate(n) for n in range(plan.samples_in(3))]
    by_epoch = {}
    for it in seen:
        by_epoch.setdefault(it.epoch, []).append((it.kind, it.index))
    assert sorted(by_epoch[0]) == [("pano", i) for i in range(4)]
    assert sorted(x for x in by_epoch[2] if x[0] == "pano") == [("pano", i) for i in range(4)]
    assert len({x for x in by_epoch[2] if x[0] == "persp"}) == 4
    assert plan.locate(5) == DataPlan(4, 8, 0, 2, 0.5).locate(5)


def _flux_inputs(seed: int):
    """A 2 x 4 token latent and the other forward arguments of the tiny diffusers Flux transformer."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 8, 64, generator=g)
    kw = dict(timestep=torch.tensor([0.5]), guidance=torch.tensor([1.0]), pooled_projections=torch.randn(1, 32, generator=g),
              encoder_hidden_states=torch.randn(1, 4, 32, generator=g), txt_ids=torch.zeros(4, 3),
              img_ids=torch.stack([torch.zeros(8), torch.arange(8.0) // 4, torch.arange(8.0) % 4], dim=1),
              return_dict=False)
    return x, kw


def test_export_folds_alpha_and_loads_in_dit360_pipeline(tiny_flux, tmp_path):
    """The exported file means the same in DiT360Pipeline (PEFT) as the adapter in memory, with
    alpha != rank folded into lora_B."""
    from pano_core.dit360.pipeline import DiT360Pipeline

    pipe = DiT360Pipeline.from_pretrained(str(tiny_flux), device="cpu", dtype="fp32")
    tr = pipe.transformer
    torch.manual_seed(0)
    add_lora(tr, rank=4, alpha=8, dropout=0.0, targets=["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"])
    with torch.no_grad():  # a trained-looking adapter (B != 0)
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    tr.eval()
    x, kw = _flux_inputs(0)
    with torch.no_grad():
        ref = tr(hidden_states=x, **kw)[0]
    out = export_lora(tr, tmp_path / "lora", rank=4, alpha=8, targets=["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"])
    raw = lora_state_dict(tr)
    sd = load_file(out)
    k = "transformer_blocks.0.attn.to_q.lora_B.weight"
    torch.testing.assert_close(sd["transformer." + k], raw[k] * 2.0)  # alpha / rank = 2 folded in
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["lora_alpha"] == 4
    fresh = DiT360Pipeline.from_pretrained(str(tiny_flux), device="cpu", dtype="fp32")
    report = fresh.load_lora(str(out))
    with torch.no_grad():
        got = fresh.transformer(hidden_states=x, **kw)[0]
        base = DiT360Pipeline.from_pretrained(str(tiny_flux), device="cpu", dtype="fp32").transformer(hidden_states=x, **kw)[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, ref, atol=1e-4)
    assert report is not None


def test_fp8_base_keeps_the_output_and_trains_the_lora(tiny_flux):
    from pano_core.dit360.pipeline import DiT360Pipeline

    tr = DiT360Pipeline.from_pretrained(str(tiny_flux), device="cpu", dtype="fp32").transformer
    torch.manual_seed(0)
    add_lora(tr, rank=4, alpha=4, dropout=0.0, targets=["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"])
    x, kw = _flux_inputs(1)
    with torch.no_grad():
        ref = tr(hidden_states=x, **kw)[0]
    n = quantize_linear_fp8_(tr)
    assert n > 10
    fp8 = [m for m in tr.modules() if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float8_e4m3fn]
    assert len(fp8) == n and all(not m.weight.requires_grad for m in fp8)
    out = tr(hidden_states=x, **kw)[0]
    rel = float((out - ref).detach().norm() / ref.norm())
    assert 0 < rel < 0.1, rel
    out.pow(2).mean().backward()
    grads = [p.grad for n_, p in tr.named_parameters() if "lora_B" in n_]  # B starts at 0: A gets no grad yet
    assert grads and all(g_ is not None and torch.isfinite(g_).all() for g_ in grads)
    assert any(g_.abs().sum() > 0 for g_ in grads)


def test_sample_command(tiny_flux, prepared, tmp_path, capsys):
    # trained without caches (live VAE/T5 encode), with gradient checkpointing and an fp8 base (the 24 GB options)
    run = _train(tiny_flux, prepared, tmp_path / "run", steps=2, extra=[
        "sample.prompts=[]", "data.cache=false", "model.gradient_checkpointing=true", "model.quantize_base=fp8"])
    assert all(r["loss"] > 0 and r["loss/base"] > 0 for r in _losses(run))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a snowy village\n\na desert at noon\n")
    rc = cli.main(["sample", "--run", str(run), "--prompts", str(prompts), "--seed", "5", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    out = run / "samples" / "manual-step-000002"
    imgs = sorted(out.glob("*.png"))
    assert [p.name for p in imgs] == ["0000-seed5.png", "0001-seed6.png"]
    assert read_image(imgs[0]).shape == (1, 3, RES, 2 * RES)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    rc = cli.main(["sample", "--run", str(run), "--prompts", str(prompts), "--step", "7"])
    assert rc == 2 and "no checkpoint at step 7" in capsys.readouterr().err


def test_ddp_two_processes_give_the_gradients_of_one_batch_of_two(tiny_flux, prepared, tmp_path, training_env):
    """Two CPU processes (gloo DDP): 2 x batch 1 all-reduces to the gradient of 1 x batch 2, since
    every draw comes from (seed, global sample index). Dropout 0.

    Launched with ``accelerate launch --multi_gpu --num_processes 2`` (torchrun underneath): in
    accelerate 1.x ``accelerate launch --num_processes 2 --cpu`` starts a single process unless
    mpirun is set up, which would make this check vacuous; the run records its world size."""
    common = ["dit360", "--data", str(prepared), "--model", str(tiny_flux), "--max-steps", "1",
              "--resolution", str(RES), "--no-progress",
              *_sets(FAST + ["lora.dropout=0.0", "log.logger=none", "sample.prompts=[]", "data.perspective=false"])]
    a, b = ddp_and_single_grads(common, tmp_path, training_env, 29500)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-7)
    assert any(a[k].abs().sum() > 0 for k in a)
    # only rank 0 wrote the run folder's files; both runs wrote the same kind of folder
    assert (tmp_path / "ddp" / "adapter_model.safetensors").is_file()
    (ck,) = (tmp_path / "ddp" / "checkpoints").iterdir()
    assert json.loads((ck / "state.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "one" / "checkpoints" / ck.name / "state.json").read_text())["world_size"] == 1


def test_prepare_with_model_prebuilds_the_caches(tiny_flux, tmp_path):
    from training_helpers import make_prepared_set

    data = make_prepared_set(tmp_path)
    rc = cli.main(["prepare", "--data", str(tmp_path / "raw"), "--output", str(tmp_path / "again"), "--resolution",
                   str(RES), "--model", str(tiny_flux), "--no-progress"])
    assert rc == 0
    (cache,) = (tmp_path / "again" / "caches").iterdir()
    assert (cache / "latents.json").is_file() and (cache / "text.json").is_file()
    rec = json.loads((cache / "latents.json").read_text())
    assert rec["model"] == str(tiny_flux) and rec["resolution"] == RES and rec["items"] == 3
    assert data.is_dir()
