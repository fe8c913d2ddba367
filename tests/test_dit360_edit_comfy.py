"""DiT360 editing nodes in-process (real ComfyUI modules, tiny random Flux)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import comfy_harness
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "pano360_pack_edit_under_test"

LAT_H, LAT_W = 8, 16  # 64 x 128 px


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    comfy_harness.import_pack_inprocess(PACK_NAME)
    return importlib.import_module(f"{PACK_NAME}.nodes.dit360_edit")


@pytest.fixture(scope="module")
def errors(pack):
    return importlib.import_module(f"{PACK_NAME}.pano_core.errors")


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models.build_tiny_flux(0, "dev", depth=1, depth_single_blocks=1)


@pytest.fixture(scope="module")
def conds(tiny_models):
    clip = tiny_models.build_tiny_clip(0)

    def enc(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    return {"src": enc(""), "edit": enc("a red wooden house in the snow")}


@pytest.fixture(scope="module")
def latent():
    g = torch.Generator().manual_seed(0)
    return {"samples": torch.randn(1, 16, LAT_H, LAT_W, generator=g)}


@pytest.fixture(scope="module")
def mask():
    m = torch.zeros(1, LAT_H * 8, LAT_W * 8)
    m[:, 16:48, 40:88] = 1.0
    return m


def _invert(pack, model, conds, latent, seed=0, guidance=2.8, steps=4):
    (inv,) = pack.Pano360DiT360Invert().invert(model, conds["src"], latent, steps, 0.5, seed, guidance, "simple")
    return inv


def _edit(pack, model, conds, inv, mask, **kw):
    args = dict(mode="inpaint", steps=4, guidance=2.8, eta=0.9, eta_start=0.0, eta_stop=1.0, tau=0.5,
                blend_until=-1.0, seed=0, scheduler="simple", cfg=1.0)
    args.update(kw)
    (out,) = pack.Pano360DiT360Edit().edit(model, conds["src"], conds["edit"], inv, mask, **args)
    return out["samples"]


def _capture(monkeypatch, pack):
    """Record the states of every editing step (pano_core loop called by the node)."""
    rec = {"states": [], "mask": None, "result": None}
    orig = pack.rf.edit_latent

    def wrapped(velocity, inverted, y0, mask, sigmas, **kw):
        cb = kw.pop("callback", None)

        def cb2(i, n, st):
            rec["states"].append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()})
            if cb is not None:
                cb(i, n, st)

        rec["mask"], rec["y0"] = mask.clone(), y0.clone()
        res = orig(velocity, inverted, y0, mask, sigmas, callback=cb2, **kw)
        rec["result"] = res
        return res

    monkeypatch.setattr(pack.rf, "edit_latent", wrapped)
    return rec


def test_registered(pack):
    for name in ("Pano360DiT360Invert", "Pano360DiT360Edit", "Pano360PlaceViewOnPanorama"):
        assert name in pack.NODE_CLASS_MAPPINGS and name in pack.NODE_DISPLAY_NAME_MAPPINGS
        assert pack.NODE_CLASS_MAPPINGS[name].CATEGORY.startswith("Pano360/")


def test_invert_is_seeded_and_repeatable(pack, model, conds, latent):
    a = _invert(pack, model, conds, latent, seed=3)
    b = _invert(pack, model, conds, latent, seed=3)
    c = _invert(pack, model, conds, latent, seed=4)
    assert torch.equal(a["samples"], b["samples"])
    assert not torch.allclose(a["samples"], c["samples"])
    assert a["samples"].shape == latent["samples"].shape
    assert torch.equal(a[pack.INV_KEY]["source"], latent["samples"])


def test_guidance_reaches_the_model(pack, model, conds, latent, mask):
    seen = []
    m = model.clone()

    def wrapper(apply_model, args):
        seen.append(args["c"].get("guidance"))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    inv = _invert(pack, m, conds, latent, guidance=4.25, steps=2)
    _edit(pack, m, conds, inv, mask, steps=2, guidance=4.25)
    assert len(seen) == 2 + 2 * 2
    for g in seen:
        assert g is not None and torch.allclose(g.float(), torch.full_like(g.float(), 4.25))
    other = _invert(pack, model, conds, latent, guidance=1.0, steps=2)
    assert not torch.allclose(inv["samples"], other["samples"])


@pytest.mark.parametrize("patched", [False, True], ids=["unpatched", "dit360-patch"])
def test_edit_keeps_unmasked_and_changes_masked(pack, model, conds, latent, mask, monkeypatch, patched):
    mdl = model
    if patched:
        dit = importlib.import_module(f"{PACK_NAME}.nodes.dit360")
        (mdl,) = dit.Pano360DiT360Patch().patch(model, padding=1)
    inv = _invert(pack, mdl, conds, latent)
    rec = _capture(monkeypatch, pack)
    out = _edit(pack, mdl, conds, inv, mask, eta=1.0, blend_until=0.0, tau=0.7)
    m = rec["mask"]
    cols = 2 if patched else 0
    assert m.shape[-1] == LAT_W + 2 * cols
    if patched:  # the mask is wrap-padded exactly like the latent
        assert torch.equal(m[..., :cols], m[..., -2 * cols:-cols]) and torch.equal(m[..., -cols:], m[..., cols:2 * cols])
    res = rec["result"]
    keep = 1 - m
    last = res.last_replace_step
    assert last >= 0
    st = rec["states"][last]
    assert st["replaced"] and not rec["states"][-1]["replaced"]
    assert torch.allclose(st["x_edit"] * keep, st["x_src"] * keep, atol=1e-5)
    # eta = 1 on every step reconstructs the inversion target; the kept region follows it
    assert torch.allclose(res.source, rec["y0"], atol=1e-3)
    assert torch.allclose(res.edit * keep, rec["y0"] * keep, atol=1e-3)
    # node output (cropped, VAE space): unmasked equal to the source latent, masked changed
    lm = torch.nn.functional.max_pool2d(mask[:, None], 8)
    src = latent["samples"]
    assert out.shape == src.shape
    assert torch.allclose(out * (1 - lm), src * (1 - lm), atol=1e-3)
    assert ((out - src).abs() * lm).sum() / lm.sum() / 16 > 0.05


def test_feature_replacement_changes_the_edit(pack, model, conds, latent, mask):
    inv = _invert(pack, model, conds, latent)
    with_rep = _edit(pack, model, conds, inv, mask, blend_until=0.0, tau=0.5)
    without = _edit(pack, model, conds, inv, mask, blend_until=0.0, tau=1.0)  # sigma never > 1: no replacement
    lm = torch.nn.functional.max_pool2d(mask[:, None], 8)
    assert torch.allclose(with_rep * (1 - lm), without * (1 - lm), atol=1e-4)
    assert ((with_rep - without).abs() * lm).max() > 1e-3


class _QKVSpy:
    """A user's ``optimized_attention_override`` (ours chains to it): records the Q/K/V every
    attention call gets, after our replacement, with the block it belongs to."""

    def __init__(self):
        self.calls = []

    def __call__(self, func, *args, **kwargs):
        topts = kwargs.get("transformer_options") or {}
        self.calls.append(((topts.get("block_type"), topts.get("block_index")),
                           [a.detach().clone() for a in args[:3]]))
        return func(*args, **kwargs)


@pytest.mark.parametrize("replace,patched", [("attention", False), ("attention", True), ("block", False)])
def test_replace_modes_in_the_edit_node(pack, model, conds, latent, mask, replace, patched):
    """``replace = attention`` (official, default): at every block of every replacing step the edit
    call's Q/K/V at kept image tokens are exactly the source call's (the attention input is
    replaced), edited tokens keep their own; with the DiT360 patch the kept mask is padded like
    the tokens. ``replace = block``: the block input is replaced instead, so Q/K/V at kept tokens
    still carry the edit branch's own modulation (prompt) and differ."""
    assert pack.Pano360DiT360Edit.INPUT_TYPES()["required"]["replace"][1]["default"] == "attention"
    mdl = model
    cols = 0
    if patched:
        dit = importlib.import_module(f"{PACK_NAME}.nodes.dit360")
        (mdl,) = dit.Pano360DiT360Patch().patch(model, padding=1)
        cols = 2
    spy = _QKVSpy()
    mdl = mdl.clone()
    mdl.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = spy
    inv = _invert(pack, model, conds, latent, steps=2)
    spy.calls.clear()
    _edit(pack, mdl, conds, inv, mask, steps=2, tau=0.0, replace=replace)
    # the kept image tokens of the (padded) grid
    lm = torch.nn.functional.max_pool2d(mask[:, None], 8)
    lm = torch.cat([lm[..., LAT_W - cols:], lm, lm[..., :cols]], -1) if cols else lm
    keep = ~torch.nn.functional.max_pool2d(lm, 2).flatten(1)[0].bool()
    n_img = keep.numel()
    per_call = 2  # one double + one single block
    assert len(spy.calls) == 2 * 2 * per_call  # 2 steps x (source call, edit call)
    same = []
    for step in range(2):
        base = step * 2 * per_call
        for b in range(per_call):
            (key_s, qkv_s), (key_e, qkv_e) = spy.calls[base + b], spy.calls[base + per_call + b]
            assert key_s == key_e
            for src, ed in zip(qkv_s, qkv_e):
                src_img, ed_img = src[:, :, -n_img:], ed[:, :, -n_img:]
                same.append(torch.equal(ed_img[:, :, keep], src_img[:, :, keep]))
                assert not torch.allclose(ed_img[:, :, ~keep], src_img[:, :, ~keep])
    assert all(same) if replace == "attention" else not any(same)


def test_presets_in_the_edit_nodes(pack, model, conds, latent, mask):
    """``preset = official`` runs exactly the official settings (50 steps, inversion guidance 0,
    edit guidance 3.5, fresh noise in the white region also when inpainting), whatever the
    widgets say; ``custom`` uses the widgets; ``pano360`` equals custom with the default widgets."""
    seen = []
    m = model.clone()

    def wrapper(apply_model, args):
        seen.append(float(args["c"]["guidance"][0]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    for node in (pack.Pano360DiT360Invert, pack.Pano360DiT360Edit):
        assert node.INPUT_TYPES()["required"]["preset"][0] == ["custom", "pano360", "official"]
    (inv,) = pack.Pano360DiT360Invert().invert(m, conds["src"], latent, 3, 0.5, 0, 2.8, "simple", "official")
    assert seen == [0.0] * 50 and inv[pack.INV_KEY]["gamma"] == 1.0
    seen.clear()
    a = _edit(pack, m, conds, inv, mask, steps=3, preset="official", seed=4)
    assert seen == [3.5] * 100
    # the official inpaint starts the white region from fresh noise: the same as outpaint mode
    b = _edit(pack, m, conds, inv, mask, mode="outpaint", steps=50, guidance=3.5, eta=1.0, eta_stop=0.98, seed=4)
    assert torch.equal(a, b)
    # pano360 = custom with the widget defaults
    req = pack.Pano360DiT360Edit.INPUT_TYPES()["required"]
    widgets = {k: req[k][1]["default"] for k in ("steps", "guidance", "eta", "eta_start", "eta_stop", "tau", "replace")}
    assert pack._preset("pano360") == pack._preset("custom", **widgets)
    assert pack._preset("custom", steps=7).steps == 7 and pack._preset("official", steps=7).steps == 50


def test_outpaint_starts_from_fresh_noise(pack, model, conds, latent, mask):
    inv = _invert(pack, model, conds, latent)
    a = _edit(pack, model, conds, inv, mask, mode="outpaint", seed=1)
    b = _edit(pack, model, conds, inv, mask, mode="outpaint", seed=1)
    c = _edit(pack, model, conds, inv, mask, mode="outpaint", seed=2)
    d = _edit(pack, model, conds, inv, mask, mode="inpaint", seed=1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, d)


def test_bad_inputs(pack, errors, model, conds, latent, mask):
    inv = _invert(pack, model, conds, latent, steps=1)
    with pytest.raises(errors.PanoInputError, match="mask: size 128x32"):
        _edit(pack, model, conds, inv, mask[:, :32], steps=1)
    with pytest.raises(errors.PanoInputError, match="inversion"):
        _edit(pack, model, conds, latent, mask, steps=1)


def test_non_flux_model_is_rejected(pack, errors, conds, latent, mask):
    import comfy.model_patcher

    class SD15Like(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)

    fake = comfy.model_patcher.ModelPatcher(SD15Like(), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))
    with pytest.raises(errors.PanoInputError, match="model: DiT360 editing needs a Flux model.*SD15Like.*Linear"):
        _invert(pack, fake, conds, latent, steps=1)
    fake_inv = {"samples": latent["samples"], pack.INV_KEY: {"source": latent["samples"], "seed": 0,
                                                             "gamma": 0.5, "steps": 1}}
    with pytest.raises(errors.PanoInputError, match="model: DiT360 editing needs a Flux model"):
        _edit(pack, fake, conds, fake_inv, mask, steps=1)


def test_place_view_node(pack):
    geo = importlib.import_module(f"{PACK_NAME}.pano_core.geometry")
    photo = torch.rand(1, 40, 40, 3)
    canvas, gen = pack.Pano360PlaceViewOnPanorama().place(photo, 80.0, 45.0, -10.0, 128, 64, 0.5)
    assert canvas.shape == (1, 64, 128, 3) and gen.shape == (1, 64, 128)
    erp, cov = geo.p2e(photo.movedim(-1, 1), 80.0, yaw=45.0, pitch=-10.0, erp_hw=(64, 128))
    keep = (cov[:, 0] >= 0.999).float()
    assert torch.equal(gen, 1 - keep)
    assert torch.allclose(canvas * keep[..., None], erp.movedim(1, -1) * keep[..., None])


# --------------------------------------------------------------------------- real server


def _workflow_api(comfy, name):
    import json

    import comfy_harness as ch

    ui = json.loads((ROOT / "workflows" / name).read_text())
    return ch.ui_to_api(ui, comfy.object_info(), ch.DEFAULT_SUBSTITUTIONS, context={"server": comfy})


@pytest.mark.comfy
@pytest.mark.timeout(400)
def test_server_edit_graph_and_wrong_mask_error(comfy):
    import comfy_harness as ch

    api = _workflow_api(comfy, "dit360_inpaint.json")
    edit_id = next(k for k, n in api.items() if n["class_type"] == "Pano360DiT360Edit")
    save_id = next(k for k, n in api.items() if n["class_type"] == "SaveImage")
    info = comfy.object_info("Pano360DiT360Edit")
    assert info["category"] == "Pano360/dit360"
    # a mask of the wrong size is a clear execution error, and the server keeps serving
    bad = dict(api)
    bad["900"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    bad[edit_id] = {**api[edit_id], "inputs": {**api[edit_id]["inputs"], "mask": ["900", 0]}}
    with pytest.raises(ch.ComfyExecutionError) as e:
        comfy.run(bad, timeout=300)
    assert e.value.node_type == "Pano360DiT360Edit"
    assert "mask: size 64x64" in (e.value.exception_message or "")
    outputs = comfy.run(api, timeout=300)
    (img,) = comfy.images(outputs, save_id)
    assert img.shape == (64, 128, 3) and img.std() > 0
