"""The checked LoRA loader: pano_core.diffusion.lora (pure key bookkeeping), the
Pano360DiT360LoraLoader node in-process (tiny Flux, real comfy.lora) and in the server."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import comfy_harness
import pytest
import torch
from safetensors.torch import load_file, save_file

from pano_core.diffusion.lora import group_lora_keys, lora_module, lora_shape_problem, match_lora_modules
from pano_core.errors import PanoInputError

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "pano360_pack_lora_under_test"

# keys of modules the tiny Flux does not have: an SD1-style kohya LoRA module and a Flux
# module of a second double block (the tiny model has one)
FOREIGN = {
    "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": (4, 32),
    "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": (32, 4),
    "lora_unet_input_blocks_1_1_proj_in.alpha": (),
    "transformer.transformer_blocks.1.attn.to_q.lora_A.weight": (4, 32),
    "transformer.transformer_blocks.1.attn.to_q.lora_B.weight": (32, 4),
}


# --------------------------------------------------------------------------- pure key bookkeeping


def test_lora_module_of_each_format():
    cases = {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": "transformer.transformer_blocks.0.attn.to_q",
        "base_model.model.x.to_k.lora_B.weight": "base_model.model.x.to_k",
        "m.lora_A.my_adapter.weight": "m",
        "m.lora_B.default.weight": "m",
        "lora_unet_a_b.lora_down.weight": "lora_unet_a_b",
        "lora_unet_a_b.alpha": "lora_unet_a_b",
        "a.b_lora.up.weight": "a.b",
        "a.b.lora.down.weight": "a.b",
        "a.lora_linear_layer.up.weight": "a",
        "lycoris_x.hada_w1_a": "lycoris_x",
        "lycoris_x.lokr_w2_b": "lycoris_x",
        "diffusion_model.img_in.diff_b": "diffusion_model.img_in",
        "diffusion_model.img_in.reshape_weight": "diffusion_model.img_in",
        "mochi.lora_A": "mochi",
        "x.dora_scale": "x",
    }
    for key, module in cases.items():
        assert lora_module(key) == module, key
    for key in ("double_blocks.0.img_attn.qkv.weight", "lora_A.weight", "model.diffusion_model.x.bias"):
        assert lora_module(key) is None, key


def test_match_counts_modules_and_keys():
    keys = ["a.lora_A.weight", "a.lora_B.weight", "a.alpha", "b.lora_A.weight", "b.lora_B.weight",
            "c.lora_down.weight", "c.lora_up.weight", "stray.weight"]
    groups, other = group_lora_keys(keys)
    assert groups == {"a": keys[:3], "b": keys[3:5], "c": keys[5:7]} and other == ["stray.weight"]
    key_map = {"a": "w.a.weight", "b": ("w.qkv.weight", (0, 0, 4)), "zzz": "w.z.weight"}
    r = match_lora_modules(keys, key_map, source="x.safetensors")
    assert r.matched == ("a", "b") and r.unmatched == ("c",) and r.unrecognised == ("stray.weight",)
    assert (r.total_keys, r.matched_keys) == (8, 5) and not r.complete
    msg = r.mismatch_message()
    assert msg.startswith("lora_name: only 2 of 3 LoRA modules (5 of 8 keys) in x.safetensors match this model")
    assert "unmatched: c, stray.weight" in msg
    # with the loader's result: a module counts only when its target was patched
    r2 = match_lora_modules(keys[:5], key_map, patched=[("w.qkv.weight", (0, 0, 4))])
    assert r2.matched == ("b",) and r2.unmatched == ("a",)
    r3 = match_lora_modules(keys[:5], key_map, patched=["w.a.weight", ("w.qkv.weight", (0, 0, 4))])
    assert r3.complete and r3.summary() == "2 of 2 LoRA modules (5 of 5 keys) in the LoRA match this model"
    # a diff_b-only module patches the bias next to the mapped weight
    r4 = match_lora_modules(["a.diff_b"], key_map, patched=["w.a.bias"])
    assert r4.complete


def test_match_messages_for_no_lora_and_long_lists():
    r = match_lora_modules(["double_blocks.0.img_attn.qkv.weight", "final_layer.linear.bias"], {}, source="ckpt")
    assert not r.complete and "holds no LoRA weights" in r.mismatch_message() and "2 keys" in r.mismatch_message()
    keys = [f"m{i}.lora_A.weight" for i in range(10)]
    msg = match_lora_modules(keys, {"m0": "w"}).mismatch_message(limit=3)
    assert "only 1 of 10" in msg and "m1, m2, m3, ... (6 more)" in msg
    with pytest.raises(PanoInputError, match="no tensors"):
        match_lora_modules([], {})


# --------------------------------------------------------------------------- the node in-process


@pytest.fixture(scope="module")
def node_mod(comfy_inprocess):
    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.dit360_lora")


@pytest.fixture(scope="module")
def errors(node_mod):
    return importlib.import_module(f"{PACK_NAME}.pano_core.errors")


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models.build_tiny_flux(0, "dev", depth=1, depth_single_blocks=1)


@pytest.fixture
def loras(tmp_path, monkeypatch, comfy_inprocess):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras",
                        ([str(tmp_path)], set(folder_paths.supported_pt_extensions)))
    return tmp_path


def _cond(tiny_models):
    clip = tiny_models.build_tiny_clip(0)
    return clip.encode_from_tokens_scheduled(clip.tokenize("This is a panorama. a snowy village"))


def _sample(model, cond):
    import comfy.sample

    noise = torch.randn(1, 16, 8, 16, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(model, noise, 2, 1.0, "euler", "simple", cond, cond, torch.zeros_like(noise),
                               seed=0, disable_pbar=True)


def _stock(model, path, strength):
    """What LoraLoaderModelOnly does with the file (nodes.LoraLoader.load_lora)."""
    import comfy.sd
    import comfy.utils

    return comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(path), safe_load=True),
                                         strength, 0)[0]


def _same_patches(a, b):
    assert a.patches.keys() == b.patches.keys() and a.patches
    for k in a.patches:
        pa, pb = a.patches[k], b.patches[k]
        assert len(pa) == len(pb)
        for x, y in zip(pa, pb):
            assert x[0] == y[0]  # strength
            wa, wb = x[1].weights, y[1].weights
            assert all((ta is None and tb is None) or torch.equal(ta, tb) for ta, tb in zip(wa, wb)
                       if torch.is_tensor(ta) or ta is None)


def test_matching_lora_loads_like_lora_loader_model_only(node_mod, model, tiny_models, loras):
    path = tiny_models.save_tiny_dit360_lora(loras / "dit360_lora.safetensors", seed=0, rank=4)
    out, summary = node_mod.Pano360DiT360LoraLoader().load(model, "dit360_lora.safetensors", 0.8)
    assert summary == "7 of 7 LoRA modules (14 of 14 keys) in dit360_lora.safetensors match this model"
    ref = _stock(model, path, 0.8)
    _same_patches(out, ref)
    assert not model.patches  # the input model is untouched (clone)
    cond = _cond(tiny_models)
    a, b, base = _sample(out, cond), _sample(ref, cond), _sample(model, cond)
    assert torch.equal(a, b)
    assert not torch.allclose(a, base)  # the LoRA changes the output
    # strength 0: the model itself, like LoraLoaderModelOnly
    same, _ = node_mod.Pano360DiT360LoraLoader().load(model, "dit360_lora.safetensors", 0.0)
    assert same is model


def test_peft_prefix_loads_in_the_checked_loader_and_after_convert_lora(node_mod, model, tiny_models, loras,
                                                                        capsys):
    """DiT360's official conversion writes ``transformer.<m>`` keys; a raw PEFT file has
    ``base_model.model.<m>``, which ComfyUI does not map for Flux (the plain loader gets 0
    modules). The checked loader reads it as ``transformer.<m>`` (same patches as the official
    file); ``pano360 convert-lora`` writes a file the plain loader maps completely."""
    from pano_core.cli import main

    official = tiny_models.save_tiny_dit360_lora(loras / "official.safetensors", seed=0, rank=4)
    sd = load_file(official)
    assert all(k.startswith("transformer.") for k in sd)
    save_file({"base_model.model." + k[len("transformer."):]: v for k, v in sd.items()},
              str(loras / "peft.safetensors"), metadata={"format": "pt"})
    plain = _stock(model, loras / "peft.safetensors", 1.0)
    assert not plain.patches  # LoraLoaderModelOnly: 0 modules of a base_model.model. file
    out, summary = node_mod.Pano360DiT360LoraLoader().load(model, "peft.safetensors", 1.0)
    assert summary == "7 of 7 LoRA modules (14 of 14 keys) in peft.safetensors match this model"
    _same_patches(out, _stock(model, official, 1.0))
    conv = loras / "converted.safetensors"
    assert main(["convert-lora", str(loras / "peft.safetensors"), str(conv)]) == 0
    assert "14 of 14 keys renamed" in capsys.readouterr().out
    assert load_file(str(conv)).keys() == sd.keys()
    _same_patches(_stock(model, conv, 1.0), _stock(model, official, 1.0))
    assert main(["convert-lora", str(loras / "peft.safetensors"), str(conv)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


def test_foreign_keys_are_an_error_with_the_count(node_mod, model, tiny_models, loras, errors, caplog):
    good = tiny_models.save_tiny_dit360_lora(loras / "good.safetensors", seed=1, rank=4)
    sd = load_file(good)
    g = torch.Generator().manual_seed(0)
    sd.update({k: (torch.randn(shape, generator=g) if shape else torch.tensor(4.0)) for k, shape in FOREIGN.items()})
    save_file(sd, str(loras / "mixed.safetensors"))
    node = node_mod.Pano360DiT360LoraLoader()
    with pytest.raises(errors.PanoInputError) as ei:
        node.load(model, "mixed.safetensors", 1.0)
    msg = str(ei.value)
    assert msg.startswith("lora_name: only 7 of 9 LoRA modules (14 of 19 keys) in mixed.safetensors match this model")
    assert "lora_unet_input_blocks_1_1_proj_in" in msg and "transformer.transformer_blocks.1.attn.to_q" in msg
    # warn: the matching modules are applied (as the stock loader would) and the summary says what was left out
    with caplog.at_level("WARNING", logger="pano360"):
        out, summary = node.load(model, "mixed.safetensors", 1.0, on_mismatch="warn")
    assert summary == msg and "only 7 of 9" in caplog.text
    _same_patches(out, _stock(model, loras / "mixed.safetensors", 1.0))
    _same_patches(out, _stock(model, good, 1.0))
    # a LoRA for another model entirely: nothing matches
    save_file({k: v for k, v in sd.items() if k in FOREIGN}, str(loras / "sd15.safetensors"))
    with pytest.raises(errors.PanoInputError, match=r"only 0 of 2 LoRA modules \(0 of 5 keys\) in sd15.safetensors"):
        node.load(model, "sd15.safetensors", 1.0)
    # a full checkpoint given as a LoRA
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 3)}, str(loras / "full.safetensors"))
    with pytest.raises(errors.PanoInputError, match="holds no LoRA weights"):
        node.load(model, "full.safetensors", 1.0)


def test_pickle_files_are_refused_before_reading(node_mod, model, tiny_models, loras, errors, monkeypatch):
    import comfy.utils

    sd = tiny_models.tiny_dit360_lora_state_dict(0, 4)
    for name in ("dit360.ckpt", "dit360.pt", "dit360.bin"):
        torch.save(sd, loras / name)

    def must_not_read(*a, **k):
        raise AssertionError("load_torch_file called for a pickle file")

    monkeypatch.setattr(comfy.utils, "load_torch_file", must_not_read)
    for name in ("dit360.ckpt", "dit360.pt", "dit360.bin"):
        with pytest.raises(errors.PanoInputError, match=rf"lora_name: {name} is not a \.safetensors file"):
            node_mod.Pano360DiT360LoraLoader().load(model, name, 1.0)
    with pytest.raises(errors.PanoInputError, match="not found"):
        node_mod.Pano360DiT360LoraLoader().load(model, "missing.safetensors", 1.0)
    with pytest.raises(errors.PanoInputError, match="on_mismatch"):
        node_mod.Pano360DiT360LoraLoader().load(model, "dit360.pt", 1.0, on_mismatch="ignore")


# --------------------------------------------------------------------------- in the server


def _graph(lora_name):
    return {
        "1": {"class_type": "Pano360TestTinyFlux", "inputs": {"seed": 0, "variant": "dev", "depth": 1,
                                                             "depth_single_blocks": 1}},
        "2": {"class_type": "Pano360TestTinyCLIP", "inputs": {"seed": 0}},
        "3": {"class_type": "Pano360TestTinyVAE", "inputs": {"seed": 0}},
        "4": {"class_type": "Pano360DiT360LoraLoader", "inputs": {"model": ["1", 0], "lora_name": lora_name,
                                                                 "strength_model": 1.0, "on_mismatch": "error"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a snowy village"}},
        "6": {"class_type": "Pano360EmptyPanoramaLatent", "inputs": {"size": "custom", "width": 128, "height": 64,
                                                                    "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                  "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
                                                  "positive": ["5", 0], "negative": ["5", 0],
                                                  "latent_image": ["6", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "pano360_lora_check"}},
    }


@pytest.mark.comfy
@pytest.mark.timeout(300)
def test_mismatch_is_an_execution_error_and_the_server_goes_on(comfy):
    import comfy_harness as ch

    good = comfy.add_tiny_lora("pano360_checked_good.safetensors")
    sd = load_file(good)
    sd.update({k: (torch.ones(shape) if shape else torch.tensor(4.0)) for k, shape in FOREIGN.items()})
    save_file(sd, str(Path(good).parent / "pano360_checked_mixed.safetensors"))
    with pytest.raises(ch.ComfyExecutionError) as ei:
        comfy.run(_graph("pano360_checked_mixed.safetensors"), timeout=120)
    assert ei.value.node_type == "Pano360DiT360LoraLoader"
    assert "only 7 of 9 LoRA modules (14 of 19 keys)" in (ei.value.exception_message or "")
    out = comfy.run(_graph("pano360_checked_good.safetensors"), timeout=120)
    (img,) = comfy.images(out, "9")
    assert img.shape == (64, 128, 3)


# ------------------------------------------------ right names, wrong shapes; corrupt files (issue 14.15)


def test_lora_shape_problem():
    assert lora_shape_problem((32, 16), "lora", ((32, 4), (4, 16))) is None
    assert lora_shape_problem((32, 16, 3, 3), "lora", ((32, 4), (4, 16, 3, 3))) is None
    assert "LoRA 48x16 vs model 32x16" in lora_shape_problem((32, 16), "lora", ((48, 4), (4, 16)))
    assert "rank" in lora_shape_problem((32, 16), "lora", ((32, 4), (8, 16)))
    assert lora_shape_problem((32,), "diff", ((32,),)) is None
    assert "diff (16,) vs model (32,)" in lora_shape_problem((32,), "diff", ((16,),))


def test_right_names_wrong_shapes_are_unmatched(node_mod, model, tiny_models, loras):
    sd = tiny_models.tiny_dit360_lora_state_dict(0, 4)
    h = sd["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"].shape[0]
    bad = {}
    for k, v in sd.items():  # a LoRA made for a wider model: every B has 2x the rows
        bad[k] = torch.cat([v, v]) if k.endswith("lora_B.weight") and "to_q" in k else v
    save_file(bad, str(loras / "wide.safetensors"))
    node = node_mod.Pano360DiT360LoraLoader()
    with pytest.raises(ValueError) as info:
        node.load(model, "wide.safetensors", 1.0)
    msg = str(info.value)
    assert msg.startswith("lora_name: only 5 of 7 LoRA modules"), msg
    assert "2 with shapes that do not fit the model" in msg and f"LoRA {2 * h}x{h} vs model {h}x{h}" in msg
    # warn: the fitting modules are applied, the misfits are not (sampling works)
    out, summary = node.load(model, "wide.safetensors", 1.0, on_mismatch="warn")
    assert summary == msg
    assert sum(len(v) for v in out.patches.values()) == 5
    import comfy.sample

    clip = tiny_models.build_tiny_clip(0)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a panorama"))
    noise = torch.randn(1, 16, 8, 16, generator=torch.Generator().manual_seed(0))
    res = comfy.sample.sample(out, noise, 1, 1.0, "euler", "simple", cond, cond, torch.zeros_like(noise), seed=0,
                              disable_pbar=True)  # no "shapes cannot be multiplied"
    assert torch.isfinite(res).all()


def test_corrupt_safetensors_names_the_file(node_mod, model, loras):
    (loras / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"lora_name: broken.safetensors \(.*broken.safetensors\) is not a "
                                         r"readable .safetensors file"):
        node_mod.Pano360DiT360LoraLoader().load(model, "broken.safetensors", 1.0)
