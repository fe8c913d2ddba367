"""A real LoRA file on the non-FLUX families with Pano360PanoramaPatch: a safetensors LoRA for the tiny
Qwen-Image / Wan 2.1 / Wan 2.2 (tests/comfy_test_nodes/tiny_family_extras.py, in the key format
ComfyUI's ``LoraLoaderModelOnly`` maps for each family) is loaded by ComfyUI's own
``LoraLoaderModelOnly`` from a ``loras`` folder, then patched:

(a) every key of the file is matched (no "lora key not loaded", one weight patch per LoRA module)
    and the LoRA changes the output;
(b) the padded columns equal their source at every model call (cond + uncond, two samplers);
(c) padding 0 on the LoRA'd model equals the LoRA'd unpatched model, bit for bit.
"""

from __future__ import annotations

import logging

import pytest
import test_panorama_patch_comfy as patch_tests
import torch

# fixtures and helpers shared with the patch tests (fixtures re-bound here so pytest uses them in this module)
pack, P, dits, _free_models = patch_tests.pack, patch_tests.P, patch_tests.dits, patch_tests._free_models
_model, _sample, _spied = patch_tests._model, patch_tests._sample, patch_tests._spied

LORA_FAMILIES = ("QwenImage", "WAN21", "WAN22")


@pytest.fixture(scope="module")
def extras(tiny_models):
    import tiny_family_extras

    return tiny_family_extras


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, comfy_inprocess):
    import folder_paths

    d = tmp_path_factory.mktemp("pano_loras")
    folder_paths.add_model_folder_path("loras", str(d), is_default=True)
    return d


_LORA_MODELS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _free_lora_models():
    yield
    _LORA_MODELS.clear()


def _lora_model(extras, lora_dir, dits, fam):
    """The tiny ``fam`` through ComfyUI's LoraLoaderModelOnly with a LoRA file written for it."""
    if fam not in _LORA_MODELS:
        import nodes

        name = f"tiny_{fam.lower()}_360_lora.safetensors"
        extras.save_tiny_dit_lora(lora_dir / name, fam, seed=11)
        (m,) = nodes.LoraLoaderModelOnly().load_lora_model_only(_model(dits, fam), name, 1.0)
        _LORA_MODELS[fam] = m
    return _LORA_MODELS[fam]


@pytest.mark.parametrize("fam", LORA_FAMILIES)
def test_lora_file_loads_every_key_and_changes_the_output(pack, extras, lora_dir, dits, fam, caplog):
    base = _model(dits, fam)
    with caplog.at_level(logging.WARNING):
        _LORA_MODELS.pop(fam, None)
        lora = _lora_model(extras, lora_dir, dits, fam)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    targets = extras.lora_targets(fam)
    assert len(lora.patches) == len(targets)  # one weight patch per LoRA module: every key matched
    assert not base.patches  # LoraLoaderModelOnly cloned: the base model is untouched
    ref = _sample(dits, base, fam)
    out = _sample(dits, lora, fam)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() > 1e-3, "the LoRA did not change the output"
    # the same LoRA'd weights survive the panorama patch (which only adds a wrapper)
    padded_base = _sample(dits, pack.Pano360PanoramaPatch().patch(base, 1, "auto")[0], fam)
    padded_lora = _sample(dits, pack.Pano360PanoramaPatch().patch(lora, 1, "auto")[0], fam)
    assert (padded_lora - padded_base).abs().max() > 1e-3


@pytest.mark.parametrize("fam", LORA_FAMILIES)
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_lora_padded_columns_equal_source_at_every_call(pack, P, extras, lora_dir, dits, fam, sampler):
    pad = 2
    patched = pack.Pano360PanoramaPatch().patch(_lora_model(extras, lora_dir, dits, fam), pad, "latent")[0]
    m, spy = _spied(patched)
    shape = dits.latent_shape(fam, 2)
    out = _sample(dits, m, fam, batch=2, steps=3, cfg=2.0, sampler=sampler, neg=dits.cond(fam, 1))
    assert out.shape == shape and torch.isfinite(out).all()
    cols = pad * P.FAMILIES[fam].patch
    assert len(spy.xs) == 3
    for x in spy.xs:
        assert x.shape[0] == 4 and x.shape[-1] == shape[-1] + 2 * cols
        assert torch.equal(x[..., :cols], x[..., -2 * cols:-cols])  # left pad = last interior columns
        assert torch.equal(x[..., -cols:], x[..., cols:2 * cols])  # right pad = first interior columns


@pytest.mark.parametrize("fam", LORA_FAMILIES)
def test_padding_zero_on_the_lora_model_equals_the_lora_model(pack, extras, lora_dir, dits, fam):
    lora = _lora_model(extras, lora_dir, dits, fam)
    ref = _sample(dits, lora, fam, sampler="euler_ancestral", seed=4)
    p0 = pack.Pano360PanoramaPatch().patch(lora, 0, "latent")[0]
    assert torch.equal(_sample(dits, p0, fam, sampler="euler_ancestral", seed=4), ref)
