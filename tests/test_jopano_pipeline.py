"""JoPanoPipeline on tiny random Sana models (tests/tiny_sana.py): equality with diffusers'
SanaPipeline, condition switching, multi-text, batches, loading paths and bad input."""

from __future__ import annotations

import shutil

import pytest
import tiny_sana
import torch
from tiny_sana import TINY_FACE

from pano_core.errors import PanoInputError
from pano_core.jopano import conditions as C
from pano_core.jopano.pipeline import GenerationInterrupted, JoPanoPipeline, resolve_face_prompts

S = TINY_FACE
RUN = dict(face_size=S, steps=2, cfg=4.5, progress=False)


@pytest.fixture(scope="session")
def tiny_sana_dirs(tmp_path_factory):
    return tiny_sana.save_all(tmp_path_factory.mktemp("tiny_sana"))


@pytest.fixture(scope="session")
def pipe(tiny_sana_dirs):
    return JoPanoPipeline.from_pretrained(tiny_sana_dirs["sana15_p1"], device="cpu")


def _noise(b=1, seed=0):
    from diffusers.utils.torch_utils import randn_tensor

    return torch.cat([randn_tensor((6, 4, S // 4, S // 4), generator=torch.Generator().manual_seed(seed + k))
                      for k in range(b)])


# ------------------------------------------------------------------ independent == SanaPipeline


@pytest.mark.parametrize("variant", ["sana15_p1", "sana15_p2", "sana10_p1"])
def test_independent_equals_sana_pipeline_per_face(tiny_sana_dirs, variant):
    from diffusers import SanaPipeline

    jp = JoPanoPipeline.from_pretrained(tiny_sana_dirs[variant], device="cpu")
    out = jp("a snowy village at dusk", mode="independent", blend="none", seed=3, metrics=False, **RUN)
    sana = SanaPipeline.from_pretrained(str(tiny_sana_dirs[variant]), use_safetensors=True)
    sana.set_progress_bar_config(disable=True)
    noise = _noise(seed=3)
    for i in range(6):
        ref = sana("a snowy village at dusk", height=S, width=S, num_inference_steps=2, guidance_scale=4.5,
                   latents=noise[i:i + 1], use_resolution_binning=False, output_type="pt").images
        torch.testing.assert_close(out.raw_faces[i:i + 1], ref, atol=1e-5, rtol=0)  # batch of 6 vs 1: float order
    assert out.erp.shape == (1, 3, 2 * S, 4 * S)


def test_seeded_runs_repeat_and_seeds_differ(pipe):
    a = pipe("a beach", mode="independent", seed=5, output_type="latent", **RUN)
    b = pipe("a beach", mode="independent", seed=5, output_type="latent", **RUN)
    c = pipe("a beach", mode="independent", seed=6, output_type="latent", **RUN)
    assert torch.equal(a.latents, b.latents)
    assert not torch.allclose(a.latents, c.latents)


def test_batch_of_two_equals_two_single_runs(pipe):
    both = pipe(["a beach", "a forest"], mode="independent", seed=[1, 7], blend="exact", **RUN)
    one = pipe("a beach", mode="independent", seed=1, blend="exact", **RUN)
    two = pipe("a forest", mode="independent", seed=7, blend="exact", **RUN)
    torch.testing.assert_close(both.faces[:6], one.faces, atol=1e-5, rtol=0)
    torch.testing.assert_close(both.faces[6:], two.faces, atol=1e-5, rtol=0)
    torch.testing.assert_close(both.erp[1:], two.erp, atol=1e-5, rtol=0)
    assert both.seeds == [1, 7] and len(both.metrics) == 2
    assert set(both.metrics[0]) == {"raw", "blended"} and "seam_ssim" in both.metrics[0]["blended"]


# ------------------------------------------------------------------ multi-text


def test_face_prompts_reach_their_faces(pipe):
    base = pipe("a quiet street", mode="independent", seed=2, output_type="latent", **RUN).latents
    per = pipe("a quiet street", face_prompts={"R": "a red brick wall", "d": "cobblestones"}, mode="independent",
               seed=2, output_type="latent", **RUN).latents
    changed = [bool((base[i] - per[i]).abs().max() > 1e-4) for i in range(6)]
    assert changed == [False, True, False, False, False, True]


def test_resolve_face_prompts_rules():
    assert resolve_face_prompts("x", {"U": "sky"}) == ["x", "x", "x", "x", "sky", "x"]
    six = resolve_face_prompts(None, ["a", "b", "c", "d", "e", "f"])
    assert six == ["a", "b", "c", "d", "e", "f"]
    assert resolve_face_prompts(None, {k: k for k in "RBLUD"}, given=["F"])[1:] == list("RBLUD")
    with pytest.raises(PanoInputError, match="face key 'X'"):
        resolve_face_prompts("x", {"X": "nope"})
    with pytest.raises(PanoInputError, match="face F is given"):
        resolve_face_prompts("x", {"F": "front"}, given=["F"])
    with pytest.raises(PanoInputError, match="faces B L U D have no prompt"):
        resolve_face_prompts(None, {"F": "a", "R": "b"})


# ------------------------------------------------------------------ condition switching


def _photo(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)


def test_v2p_face_keeps_latent_and_pixels(pipe):
    face = _photo(S, S, 1)
    calls = []
    out = pipe("a castle courtyard", view=face, view_face="R", mode="independent", seed=0,
               callback=lambda i, n, x0: calls.append((i, n, x0.shape)), **RUN)
    clean = pipe.encode_faces(C.face_condition(face, "R", S).faces)[1:2]
    assert torch.equal(out.latents[1:2], clean)  # bit-identical through every step
    assert torch.equal(out.faces[1:2], face)  # the user's pixels, exactly, after the blend too
    assert torch.equal(out.raw_faces[1:2], face)
    assert [c[0] for c in calls] == [0, 1] and calls[0][1] == 2
    assert out.settings["given_faces"] == ["R"]
    # a larger square photo is resized to the face size, then kept exactly
    big = _photo(2 * S, 2 * S, 2)
    out2 = pipe("a castle courtyard", view=big, view_face="F", mode="independent", seed=0, **RUN)
    resized = C.face_condition(big, "F", S).faces[0:1]
    assert torch.equal(out2.faces[0:1], resized)


def test_perspective_view_covered_pixels_match_projection(pipe):
    photo = _photo(24, 32, 3)
    cond = C.view_condition(photo, 100.0, 30.0, 10.0, face_size=S)
    assert cond.partial, "a 100° view at yaw 30 must cover parts of several faces"
    out = pipe("a harbour", view=photo, fov=100.0, view_yaw=30.0, view_pitch=10.0, mode="independent", seed=0, **RUN)
    w = C.paste_weight(cond, max(1, S // 32))
    sel = (w >= 1.0).expand(-1, 3, -1, -1)
    assert sel.sum() > 0.1 * sel.numel() / 6
    assert torch.equal(out.faces[sel], cond.faces[sel])
    # the known latent pixels of partly covered faces were kept by replacement (sigma 0 at the end)
    known = pipe.encode_faces(cond.faces)
    m = C.latent_keep_mask(cond, pipe.vae_factor).bool().expand(-1, 4, -1, -1)
    for i in cond.partial:
        assert m[i].any()
        torch.testing.assert_close(out.latents[i][m[i]], known[i][m[i]], atol=1e-6, rtol=0)


def test_erp_with_keep_mask(pipe):
    erp = _photo(2 * S, 4 * S, 4)
    mask = torch.zeros(1, 1, 2 * S, 4 * S)
    mask[..., :, : 2 * S] = 1.0  # keep the left half (B, L and half of F)
    out = pipe("a desert", image=erp, mask=mask, mode="independent", seed=0, **RUN)
    cond = C.erp_condition(erp, mask, face_size=S)
    assert cond.full == [3]  # face L lies entirely in the kept half
    assert torch.equal(out.faces[3], cond.faces[3])


def test_interrupt_hook_stops_between_steps(pipe):
    seen = []
    with pytest.raises(GenerationInterrupted, match="before step 2"):
        pipe("a beach", mode="independent", seed=0, interrupt=lambda: len(seen) >= 1,
             callback=lambda i, n, x: seen.append(i), **RUN)
    assert seen == [0]


# ------------------------------------------------------------------ loading paths


def test_single_file_transformer_loads_like_the_folder(tiny_sana_dirs, pipe):
    d = tiny_sana_dirs["sana15_p1"]
    sf = JoPanoPipeline.from_pretrained(tiny_sana_dirs["single_file"], text_encoder=d, vae=d / "vae", device="cpu")
    a = sf("a lake", mode="independent", seed=0, output_type="latent", **RUN).latents
    b = pipe("a lake", mode="independent", seed=0, output_type="latent", **RUN).latents
    assert torch.equal(a, b)


def test_single_file_without_config_needs_one(tmp_path, tiny_sana_dirs):
    f = tiny_sana.save_tiny_single_file(tmp_path / "t.safetensors", with_config=False)
    d = tiny_sana_dirs["sana15_p1"]
    with pytest.raises(PanoInputError, match="cannot tell the configuration of t.safetensors"):
        JoPanoPipeline.from_pretrained(f, text_encoder=d, vae=d, device="cpu")
    p = JoPanoPipeline.from_pretrained(f, text_encoder=d, vae=d, transformer_config=d, device="cpu")
    assert p.transformer.config.num_layers == 2


# ------------------------------------------------------------------ bad input


def test_folder_missing_a_component(tmp_path, tiny_sana_dirs):
    bad = tmp_path / "sana"
    shutil.copytree(tiny_sana_dirs["sana15_p1"], bad)
    shutil.rmtree(bad / "vae")
    with pytest.raises(PanoInputError, match=r"missing the vae component"):
        JoPanoPipeline.from_pretrained(bad, device="cpu")


def test_pickled_weights_are_refused(tmp_path, tiny_sana_dirs):
    bad = tmp_path / "sana"
    shutil.copytree(tiny_sana_dirs["sana15_p1"], bad)
    w = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    w.rename(w.with_suffix(".bin"))
    with pytest.raises(PanoInputError, match=r"transformer.*only pickled weights \(diffusion_pytorch_model.bin\)"):
        JoPanoPipeline.from_pretrained(bad, device="cpu")
    ckpt = tmp_path / "sana.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(PanoInputError, match="not a .safetensors file"):
        JoPanoPipeline.from_pretrained(ckpt, text_encoder=bad, vae=bad, device="cpu")


def test_not_a_model_and_offline_hub_id(tmp_path):
    with pytest.raises(PanoInputError, match="no model_index.json"):
        JoPanoPipeline.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(PanoInputError, match="cannot load a Sana pipeline from 'nobody/no-such-sana'"):
        JoPanoPipeline.from_pretrained("nobody/no-such-sana", device="cpu", local_files_only=True)


def test_bad_call_inputs(pipe):
    with pytest.raises(PanoInputError, match=r"face_size: must be a multiple of 4"):
        pipe("x", face_size=30, steps=1, progress=False)
    with pytest.raises(PanoInputError, match="view: expected a torch.Tensor"):
        pipe("x", view="photo.png", view_face="F", **RUN)
    with pytest.raises(PanoInputError, match="view: expected 4 dimensions"):
        pipe("x", view=torch.rand(5), view_face="F", **RUN)
    with pytest.raises(PanoInputError, match="view: a cube face must be square"):
        pipe("x", view=torch.rand(1, 3, S, S + 4), view_face="F", **RUN)
    with pytest.raises(PanoInputError, match="view_face: expected one of F R B L U D"):
        pipe("x", view=torch.rand(1, 3, S, S), view_face="Q", **RUN)
    with pytest.raises(PanoInputError, match="face key 'top'"):
        pipe("x", face_prompts={"top": "sky"}, **RUN)
    with pytest.raises(PanoInputError, match="mode: expected one of"):
        pipe("x", mode="joint", **RUN)
    with pytest.raises(PanoInputError, match="mode: adapter needs a Joint-Face adapter"):
        pipe("x", mode="adapter", **RUN)
    with pytest.raises(PanoInputError, match="mask: must have the size of image"):
        pipe("x", image=torch.rand(1, 3, 2 * S, 4 * S), mask=torch.ones(1, 1, S, 2 * S), **RUN)


# ------------------------------------------------------------------ adapter and sync modes


@pytest.fixture(scope="session")
def zero_adapter(tmp_path_factory, pipe):
    from pano_core.jopano.adapter import JointFaceAdapterSet, save_adapter_set

    torch.manual_seed(0)
    ad = JointFaceAdapterSet.for_transformer(pipe.transformer)
    return save_adapter_set(tmp_path_factory.mktemp("adapter") / "jopano_adapter.safetensors", ad)


def test_zero_init_adapter_output_equals_no_adapter(tiny_sana_dirs, zero_adapter, pipe):
    with_ad = JoPanoPipeline.from_pretrained(tiny_sana_dirs["sana15_p1"], adapter=zero_adapter, device="cpu")
    for mode, plain in (("adapter", "independent"), ("adapter+sync", "sync")):
        a = with_ad("a canyon", mode=mode, seed=1, **RUN)
        b = pipe("a canyon", mode=plain, seed=1, **RUN)
        assert torch.equal(a.latents, b.latents), mode
        assert torch.equal(a.faces, b.faces), mode
    # default mode with an adapter is adapter+sync; the model is plain again after every call
    assert with_ad("a canyon", seed=1, output_type="latent", **RUN).settings["mode"] == "adapter+sync"
    assert not with_ad.transformer.transformer_blocks[0].attn2.processor.__class__.__name__.startswith("_Adapter")


def test_trained_adapter_changes_output_and_wrong_dims_are_refused(tmp_path, tiny_sana_dirs, pipe):
    from pano_core.jopano.adapter import JointFaceAdapterConfig, JointFaceAdapterSet, save_adapter_set

    torch.manual_seed(0)
    ad = JointFaceAdapterSet.for_transformer(pipe.transformer)
    for blk in ad:
        torch.nn.init.normal_(blk.out.weight, std=0.2)
    f = save_adapter_set(tmp_path / "trained.safetensors", ad)
    jp = JoPanoPipeline.from_pretrained(tiny_sana_dirs["sana15_p1"], adapter=f, device="cpu")
    a = jp("a canyon", mode="adapter", seed=1, output_type="latent", **RUN).latents
    b = pipe("a canyon", mode="independent", seed=1, output_type="latent", **RUN).latents
    assert (a - b).abs().max() > 1e-3
    cfg = JointFaceAdapterConfig(num_layers=2, model_dim=32, inner_dim=16, heads=2)
    other = save_adapter_set(tmp_path / "other.safetensors", JointFaceAdapterSet(cfg))
    with pytest.raises(PanoInputError, match="32"):
        JoPanoPipeline.from_pretrained(tiny_sana_dirs["sana15_p1"], adapter=other, device="cpu")


def test_sync_couples_faces_and_keeps_a_given_face(pipe):
    noise = _noise(seed=0)
    bumped = noise.clone()
    bumped[1] += 1.0  # change face R only
    for mode, coupled in (("independent", False), ("sync", True)):
        a = pipe("a plaza", mode=mode, latents=noise, output_type="latent", **RUN).latents
        b = pipe("a plaza", mode=mode, latents=bumped, output_type="latent", **RUN).latents
        assert bool((a[0] - b[0]).abs().max() > 1e-5) == coupled, mode
    face = _photo(S, S, 5)
    out = pipe("a plaza", view=face, view_face="F", mode="sync", seed=0, **RUN)
    assert torch.equal(out.faces[0:1], face)
    clean = pipe.encode_faces(C.face_condition(face, "F", S).faces)[0:1]
    assert torch.equal(out.latents[0:1], clean)


def test_sync_batch_of_two_equals_two_single_runs(pipe):
    both = pipe(["a beach", "a forest"], mode="sync", seed=[1, 7], **RUN)
    one = pipe("a beach", mode="sync", seed=1, **RUN)
    two = pipe("a forest", mode="sync", seed=7, **RUN)
    torch.testing.assert_close(both.faces[:6], one.faces, atol=1e-5, rtol=0)
    torch.testing.assert_close(both.faces[6:], two.faces, atol=1e-5, rtol=0)


def _lora_file(path, transformer, shift_in=0):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, m in transformer.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith(("attn1.to_q", "attn1.to_v", "attn2.to_q")):
            sd[f"base_model.model.{name}.lora_A.weight"] = torch.randn(4, m.in_features + shift_in, generator=g) * 0.3
            sd[f"base_model.model.{name}.lora_B.weight"] = torch.randn(m.out_features, 4, generator=g) * 0.3
    save_file(sd, str(path))
    return path


def test_sana_lora_loads_beside_the_adapter(tmp_path, tiny_sana_dirs, zero_adapter, pipe):
    f = _lora_file(tmp_path / "lora.safetensors", pipe.transformer)
    lp = JoPanoPipeline.from_pretrained(tiny_sana_dirs["sana15_p1"], lora=f, device="cpu")
    both = JoPanoPipeline.from_pretrained(tiny_sana_dirs["sana15_p1"], lora=f, adapter=zero_adapter, device="cpu")
    a = lp("a canyon", mode="sync", seed=1, output_type="latent", **RUN).latents
    b = both("a canyon", mode="adapter+sync", seed=1, output_type="latent", **RUN).latents
    plain = pipe("a canyon", mode="sync", seed=1, output_type="latent", **RUN).latents
    assert (a - plain).abs().max() > 1e-4  # the LoRA acts
    assert torch.equal(a, b)  # a zero-init adapter beside it changes nothing
    bad = _lora_file(tmp_path / "bad.safetensors", pipe.transformer, shift_in=1)
    with pytest.raises(PanoInputError, match="only 0 of 12 keys match the transformer"):
        JoPanoPipeline.from_pretrained(tiny_sana_dirs["sana15_p1"], lora=bad, device="cpu")
