"""LoRA files with the right names but the wrong shapes, and corrupt files (issue 14, point 15):
shape mismatches count as unmatched (not "7 of 7 match" and a sampler error later), and a corrupt
.safetensors names the file."""

from __future__ import annotations

import importlib

import comfy_harness
import pytest
import torch
from safetensors.torch import save_file

from pano_core.diffusion.lora import lora_shape_problem

PACK = "pano360_pack_lora_shapes_under_test"


def test_lora_shape_problem():
    assert lora_shape_problem((32, 16), "lora", ((32, 4), (4, 16))) is None
    assert lora_shape_problem((32, 16, 3, 3), "lora", ((32, 4), (4, 16, 3, 3))) is None
    assert "LoRA 48x16 vs model 32x16" in lora_shape_problem((32, 16), "lora", ((48, 4), (4, 16)))
    assert "rank" in lora_shape_problem((32, 16), "lora", ((32, 4), (8, 16)))
    assert lora_shape_problem((32,), "diff", ((32,),)) is None
    assert "diff (16,) vs model (32,)" in lora_shape_problem((32,), "diff", ((16,),))


@pytest.fixture(scope="module")
def node_mod(tiny_models):
    comfy_harness.import_pack_inprocess(PACK)
    return importlib.import_module(f"{PACK}.nodes.dit360_lora")


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models.build_tiny_flux(0, "dev", depth=1, depth_single_blocks=1)


@pytest.fixture
def loras(tmp_path, monkeypatch, comfy_inprocess):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras",
                        ([str(tmp_path)], set(folder_paths.supported_pt_extensions)))
    return tmp_path


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
