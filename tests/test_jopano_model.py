"""JoPano model pieces on tiny random diffusers models built here: sphere RoPE, the Joint-Face
Adapter (identity at zero init, the exact block semantics, attach/detach, save/load, LoRAs beside
it) and the training-free joint-face sync (real, non-destructive, equivariant under a 90° yaw of
the cube, seamless DC-AE decoding)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderDC, SanaTransformer2DModel  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_cube_padding import broken_fu_edge  # noqa: E402,F401  (fixture)

from pano_core import PanoInputError  # noqa: E402
from pano_core.geometry import face_cell_directions, rotation_matrix  # noqa: E402
from pano_core.jopano import (  # noqa: E402
    ADAPTER_METADATA_KEY,
    JointFaceAdapterConfig,
    JointFaceAdapterSet,
    SphereRoPE,
    adapters_attached,
    attach_adapters,
    attached_adapters,
    detach_adapters,
    face_token_directions,
    is_synced,
    joint_face_sync,
    load_adapter_set,
    save_adapter_set,
)

HEADS, HEAD_DIM = 2, 8
DIM = HEADS * HEAD_DIM
CAPTION = 8


def tiny_transformer(
    patch_size: int = 1, layers: int = 2, seed: int = 0, heads: int = HEADS, qk_norm: str | None = None
) -> SanaTransformer2DModel:
    """Tiny random Sana transformer (cross_attention_dim = heads x head dim, no positional
    embedding); ``qk_norm="rms_norm_across_heads"`` is Sana 1.5's layout."""
    torch.manual_seed(seed)
    return SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=heads,
        attention_head_dim=HEAD_DIM,
        num_layers=layers,
        num_cross_attention_heads=heads,
        cross_attention_head_dim=HEAD_DIM,
        cross_attention_dim=heads * HEAD_DIM,
        caption_channels=CAPTION,
        sample_size=8,
        patch_size=patch_size,
        mlp_ratio=2.0,
        qk_norm=qk_norm,
    ).eval()


def tiny_dcae(seed: int = 0) -> AutoencoderDC:
    """Tiny random DC-AE: downscale 4, a ResBlock level and an EfficientViT level (5x5 depthwise
    multi-scale linear attention, GLUMBConv) in the decoder."""
    torch.manual_seed(seed)
    return AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=4,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8, 16),
        decoder_block_out_channels=(8, 8, 16),
        encoder_layers_per_block=(1, 1, 1),
        decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)),
        decoder_qkv_multiscales=((), (), (5,)),
    ).eval()


def inputs(panoramas: int = 1, size: int = 6, seed: int = 1, one_prompt: bool = False):
    g = torch.Generator().manual_seed(seed)
    b = 6 * panoramas
    x = torch.randn(b, 4, size, size, generator=g)
    enc = torch.randn(panoramas if one_prompt else b, 5, CAPTION, generator=g)
    if one_prompt:
        enc = enc.repeat_interleave(6, 0)
    return x, enc, torch.full((b,), 500.0)


def run(t, x, enc, ts) -> torch.Tensor:
    with torch.no_grad():
        return t(x, enc, ts).sample


def randomize(adapters: JointFaceAdapterSet, seed: int = 3) -> JointFaceAdapterSet:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return adapters


@pytest.fixture(scope="module")
def transformer():
    return tiny_transformer()


def snapshot(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_plain(model: torch.nn.Module, before: dict) -> None:
    """Same parameters (keys and values) as before and no instance-level overrides left."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    for m in model.modules():
        assert "forward" not in m.__dict__
        assert "apply_linear_attention" not in m.__dict__
        assert not m._forward_pre_hooks and not m._forward_hooks
        if isinstance(m, torch.nn.Conv2d):
            assert m.padding == (m.kernel_size[0] // 2,) * 2


# ------------------------------------------------------------------------------ sphere RoPE


def test_face_token_directions_are_the_cell_centres():
    d = face_token_directions(5, dtype=torch.float64)
    assert d.shape == (6, 25, 3)
    assert torch.allclose(d.norm(dim=-1), torch.ones(6, 25, dtype=torch.float64))
    assert torch.allclose(d[0, 12], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))  # F's centre token
    # row-major like the transformer's token order, and the same cells cube_pad works on
    assert torch.equal(d.view(6, 5, 5, 3), face_cell_directions(5, dtype=torch.float64))


def test_rope_score_depends_only_on_per_axis_differences():
    rope = SphereRoPE(56)
    assert rope.axis_pairs == (10, 9, 9)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 56, generator=g, dtype=torch.float64)
    p1, p2, shift = torch.randn(3, 3, generator=g, dtype=torch.float64)

    def score(a, b):
        ca, sa = rope.cos_sin(a)
        cb, sb = rope.cos_sin(b)
        return float(rope.apply(q, ca, sa) @ rope.apply(k, cb, sb))

    s = score(p1, p2)
    assert score(p1 + shift, p2 + shift) == pytest.approx(s, abs=1e-10)
    for axis in range(3):  # each axis' difference matters
        e = torch.zeros(3, dtype=torch.float64)
        e[axis] = 0.3
        assert abs(score(p1 + e, p2) - s) > 1e-3


def test_rope_equal_directions_give_the_identity_rotation():
    rope = SphereRoPE(12, scale=8.0, base=100.0)
    d = face_token_directions(4, dtype=torch.float64)[1]  # face R
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 16, 12, generator=g, dtype=torch.float64)
    cos, sin = rope.cos_sin(d)
    rq, rk = rope.apply(q, cos, sin), rope.apply(k, cos, sin)
    assert torch.allclose((rq * rk).sum(-1), (q * k).sum(-1), atol=1e-12)  # same place: no relative turn
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1))  # a rotation
    c0, s0 = rope.cos_sin(torch.zeros(3))
    assert torch.equal(c0, torch.ones(12)) and torch.equal(s0, torch.zeros(12))


def test_rope_rotation_paths_agree():
    from pano_core.jopano.sphere_rope import _rotate_complex, _rotate_real

    rope = SphereRoPE(18)
    cos, sin = rope.cos_sin(face_token_directions(3).reshape(-1, 3))
    x = torch.randn(2, 3, 54, 18)
    assert torch.allclose(_rotate_complex(x, cos, sin), _rotate_real(x, cos, sin), atol=1e-6)
    xb = x.to(torch.bfloat16)
    assert SphereRoPE.apply(xb, cos, sin).dtype == torch.bfloat16


def test_rope_position_scale_neighbours_one_unit_apart_at_a_face_centre():
    d = face_token_directions(16, dtype=torch.float64)[0].view(16, 16, 3)  # 512 px face, f = 32
    step = float((d[7, 8] - d[7, 7]).norm()) * SphereRoPE(12).scale
    assert step == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("head_dim", [4, 7, 0])
def test_rope_rejects_bad_head_dims(head_dim):
    with pytest.raises(PanoInputError, match="head_dim"):
        SphereRoPE(head_dim)


# ------------------------------------------------------------------------------ adapter


def test_config_defaults_half_width():
    c = JointFaceAdapterConfig(num_layers=20, model_dim=2240)
    assert (c.inner_dim, c.heads, c.head_dim) == (1120, 20, 56)
    assert JointFaceAdapterConfig(num_layers=1, model_dim=2240, inner_dim=2240).head_dim == 64
    with pytest.raises(PanoInputError, match="heads"):
        JointFaceAdapterConfig(num_layers=1, model_dim=16, inner_dim=12, heads=5)
    with pytest.raises(PanoInputError, match="rope_scale"):
        JointFaceAdapterConfig(num_layers=1, model_dim=16, rope_scale=0)
    with pytest.raises(PanoInputError, match="num_layers"):
        JointFaceAdapterConfig(num_layers=0, model_dim=16)
    with pytest.raises(PanoInputError, match="format 2"):
        JointFaceAdapterConfig.from_dict({"num_layers": 1, "model_dim": 16, "format_version": 2})


def test_zero_initialised_adapter_is_bit_identical(transformer):
    x, enc, ts = inputs(panoramas=2)
    before = snapshot(transformer)
    plain = run(transformer, x, enc, ts)
    adapters = JointFaceAdapterSet.for_transformer(transformer)
    with adapters_attached(transformer, adapters):
        assert attached_adapters(transformer) is adapters
        assert torch.equal(run(transformer, x, enc, ts), plain)
        with joint_face_sync(transformer):
            synced_with = run(transformer, x, enc, ts)
    with joint_face_sync(transformer):
        assert torch.equal(run(transformer, x, enc, ts), synced_with)
    assert attached_adapters(transformer) is None
    assert_plain(transformer, before)


def test_adapter_is_h_plus_adapter_before_cross_attention(transformer):
    """A hand-written SanaTransformerBlock forward with ``h = h + adapter(h)`` inserted after the
    linear self-attention matches the attached adapter."""
    adapters = randomize(JointFaceAdapterSet.for_transformer(transformer))
    x, enc, ts = inputs()
    seen = {}
    blk = transformer.transformer_blocks[1]
    hook = blk.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    with adapters_attached(transformer, adapters):
        run(transformer, x, enc, ts)
    hook.remove()
    h, _, enc_h, enc_mask, temb, hh, ww = seen["args"]
    with torch.no_grad():
        mods = (blk.scale_shift_table[None] + temb.reshape(h.shape[0], 6, -1)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        h = h + gate_msa * blk.attn1(blk.norm1(h) * (1 + scale_msa) + shift_msa)
        h = h + adapters[1](h)
        h = h + blk.attn2.processor(blk.attn2, h, enc_h, enc_mask)  # the plain processor again
        n = blk.norm2(h) * (1 + scale_mlp) + shift_mlp
        ff = blk.ff(n.unflatten(1, (hh, ww)).permute(0, 3, 1, 2)).flatten(2, 3).permute(0, 2, 1)
        ref = h + gate_mlp * ff
    assert torch.allclose(seen["out"], ref, atol=1e-5)


def test_trained_adapter_joins_faces_and_batches_of_panoramas(transformer):
    adapters = randomize(JointFaceAdapterSet.for_transformer(transformer))
    x, enc, ts = inputs(panoramas=2)
    y = x.clone()
    y[1] += 1.0  # change face R of the first panorama
    plain = run(transformer, x, enc, ts)
    with adapters_attached(transformer, adapters):
        a, b = run(transformer, x, enc, ts), run(transformer, y, enc, ts)
        singles = torch.cat([run(transformer, x[:6], enc[:6], ts[:6]), run(transformer, x[6:], enc[6:], ts[6:])])
    assert not torch.allclose(a, plain, atol=1e-3)  # the adapter acts
    assert (a[0] - b[0]).abs().max() > 1e-3  # face F sees face R
    assert torch.equal(a[6:], b[6:])  # the other panorama does not
    assert torch.allclose(a, singles, atol=1e-5)


def test_adapters_train_through_a_frozen_checkpointed_transformer():
    t = tiny_transformer()
    t.requires_grad_(False)
    t.enable_gradient_checkpointing()
    t.train()
    adapters = JointFaceAdapterSet.for_transformer(t)
    x, enc, ts = inputs()
    adapters(t, x, enc, ts).sample.square().mean().backward()  # fresh set: only `out` gets a gradient
    assert adapters[0].out.weight.grad.abs().sum() > 0
    assert adapters[0].q.weight.grad is None or not adapters[0].q.weight.grad.any()
    randomize(adapters).zero_grad()
    adapters(t, x, enc, ts).sample.square().mean().backward()
    for name, p in adapters.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None for p in t.parameters())
    assert attached_adapters(t) is adapters
    detach_adapters(t)


def test_attach_detach_restores_processors_and_replaces_previous(transformer):
    procs = [blk.attn2.processor for blk in transformer.transformer_blocks]
    a1 = JointFaceAdapterSet.for_transformer(transformer)
    a2 = randomize(JointFaceAdapterSet.for_transformer(transformer))
    h1 = attach_adapters(transformer, a1)
    h2 = attach_adapters(transformer, a2)  # replaces a1
    assert not h1.attached and attached_adapters(transformer) is a2
    assert not any(n.startswith("blocks") or "adapter" in n for n in transformer.state_dict())
    detach_adapters(transformer)
    h2.detach()  # idempotent
    assert [blk.attn2.processor for blk in transformer.transformer_blocks] == procs


def test_adapter_dims_must_fit(transformer):
    wrong = JointFaceAdapterSet(JointFaceAdapterConfig(num_layers=2, model_dim=24, base_model="other/sana"))
    with pytest.raises(PanoInputError, match=r"width 24 .*other/sana.* width 16"):
        attach_adapters(transformer, wrong)
    x, enc, ts = inputs()
    with adapters_attached(transformer, JointFaceAdapterSet.for_transformer(transformer)):
        with pytest.raises(PanoInputError, match="whole panoramas"):
            run(transformer, x[:4], enc[:4], ts[:4])


def test_save_load_roundtrip_format_and_errors(transformer, tmp_path):
    adapters = randomize(JointFaceAdapterSet.for_transformer(transformer, face_size=256, rope_scale=4.0))
    path = save_adapter_set(tmp_path / "jopano_adapter.safetensors", adapters)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()[ADAPTER_METADATA_KEY])
    parts = ("norm", "q", "k", "v", "out")
    assert keys == {f"blocks.{i}.{p}.{w}" for i in range(2) for p in parts for w in ("weight", "bias")}
    assert meta["model_dim"] == DIM and meta["num_layers"] == 2 and meta["rope_scale"] == 4.0 and meta["face_size"] == 256
    loaded = load_adapter_set(path, transformer)
    assert loaded.config == adapters.config
    assert all(p.requires_grad for p in loaded.parameters())  # ready to train on (resume)
    x, enc, ts = inputs()
    with adapters_attached(transformer, adapters):
        ref = run(transformer, x, enc, ts)
    with adapters_attached(transformer, loaded):
        assert torch.equal(run(transformer, x, enc, ts), ref)
    assert load_adapter_set(path, dtype=torch.float16).blocks[0].q.weight.dtype == torch.float16

    with pytest.raises(PanoInputError, match="exists"):
        save_adapter_set(path, adapters)
    save_adapter_set(path, adapters, overwrite=True)
    other = tiny_transformer(heads=3, layers=1)
    with pytest.raises(PanoInputError, match=r"width 16 with 2 blocks.*width 24 with 1 blocks"):
        load_adapter_set(path, other)
    pt = tmp_path / "adapter.pt"
    torch.save(adapters.state_dict(), pt)
    with pytest.raises(PanoInputError, match="safetensors"):
        load_adapter_set(pt)
    nometa = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in adapters.state_dict().items()}, str(nometa))
    with pytest.raises(PanoInputError, match=ADAPTER_METADATA_KEY):
        load_adapter_set(nometa)
    short = tmp_path / "short.safetensors"
    sd = {k: v.contiguous() for k, v in adapters.state_dict().items() if not k.startswith("blocks.1.")}
    save_file(sd, str(short), metadata={ADAPTER_METADATA_KEY: json.dumps(adapters.config.to_dict())})
    with pytest.raises(PanoInputError, match="missing 10 tensors"):
        load_adapter_set(short)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(PanoInputError, match="not a readable"):
        load_adapter_set(garbage)


def test_diffusers_lora_loads_beside_the_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline
    from peft.utils import get_peft_model_state_dict

    donor = tiny_transformer(seed=5)
    donor.add_adapter(
        peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    SanaPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(donor))

    t = tiny_transformer(seed=5)
    x, enc, ts = inputs()
    base = run(t, x, enc, ts)
    adapters = randomize(JointFaceAdapterSet.for_transformer(t))
    with adapters_attached(t, adapters):
        adapter_only = run(t, x, enc, ts)
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=t, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.load_lora_weights(str(tmp_path / "pytorch_lora_weights.safetensors"))
    lora = run(t, x, enc, ts)
    assert (lora - base).abs().max() > 1e-3
    with adapters_attached(t, JointFaceAdapterSet.for_transformer(t)):
        assert torch.equal(run(t, x, enc, ts), lora)  # identity adapter: exactly the LoRA model
    with adapters_attached(t, adapters):
        both = run(t, x, enc, ts)
        with joint_face_sync(t):
            run(t, x, enc, ts)
    assert (both - adapter_only).abs().max() > 1e-3  # the LoRA still acts with the adapter
    assert (both - lora).abs().max() > 1e-3  # and so does the adapter
    assert torch.equal(run(t, x, enc, ts), lora)


# ------------------------------------------------------------------------------ sync


@pytest.mark.parametrize("attention,padding", [(True, True), (True, False), (False, True)])
def test_sync_is_real(transformer, attention, padding):
    x, enc, ts = inputs()
    y = x.clone()
    y[1, :, :, :2] += 1.0  # face R, near its left edge (which meets F's right edge)
    plain_x, plain_y = run(transformer, x, enc, ts), run(transformer, y, enc, ts)
    assert torch.equal(plain_x[0], plain_y[0])  # independent faces: F does not see R
    with joint_face_sync(transformer, attention=attention, padding=padding):
        sx, sy = run(transformer, x, enc, ts), run(transformer, y, enc, ts)
    assert (sx[0] - sy[0]).abs().max() > 1e-3  # synced: it does


def test_sync_is_non_destructive_and_batched(transformer):
    before = snapshot(transformer)
    procs = [blk.attn1.processor for blk in transformer.transformer_blocks]
    x, enc, ts = inputs(panoramas=2)
    plain = run(transformer, x, enc, ts)
    with pytest.raises(RuntimeError, match="boom"):
        with joint_face_sync(transformer):
            assert is_synced(transformer)
            with joint_face_sync(transformer):  # nested: no double wrapping
                both = run(transformer, x, enc, ts)
            singles = torch.cat([run(transformer, x[:6], enc[:6], ts[:6]), run(transformer, x[6:], enc[6:], ts[6:])])
            with pytest.raises(PanoInputError, match="whole panoramas"):
                run(transformer, x[:3], enc[:3], ts[:3])
            raise RuntimeError("boom")
    assert torch.allclose(both, singles, atol=1e-5)
    assert not is_synced(transformer)
    assert [blk.attn1.processor for blk in transformer.transformer_blocks] == procs
    assert_plain(transformer, before)
    assert torch.equal(run(transformer, x, enc, ts), plain)


def test_sana15_patch2_with_adapter_and_sync():
    """Sana 1.5 (qk_norm) with patch size 2: identity adapter exact under sync, batches of two
    panoramas equal two single runs, and sync couples the faces."""
    t = tiny_transformer(patch_size=2, qk_norm="rms_norm_across_heads", seed=4)
    x, enc, ts = inputs(panoramas=2, size=8)
    adapters = JointFaceAdapterSet.for_transformer(t)
    with joint_face_sync(t):
        synced = run(t, x, enc, ts)
        with adapters_attached(t, adapters):
            assert torch.equal(run(t, x, enc, ts), synced)
        with adapters_attached(t, randomize(adapters)):
            both = run(t, x, enc, ts)
            singles = torch.cat([run(t, x[:6], enc[:6], ts[:6]), run(t, x[6:], enc[6:], ts[6:])])
    assert torch.allclose(both, singles, atol=1e-5)
    assert (synced[:6] - run(t, x, enc, ts)[:6]).abs().max() > 1e-3


def test_sync_and_adapter_work_with_accelerate_sequential_offload(transformer):
    """accelerate's offload hooks replace the modules' ``forward``; sync must keep them working."""
    accelerate = pytest.importorskip("accelerate")
    x, enc, ts = inputs()
    adapters = randomize(JointFaceAdapterSet.for_transformer(transformer))
    with adapters_attached(transformer, adapters), joint_face_sync(transformer):
        ref = run(transformer, x, enc, ts)
    t = tiny_transformer()
    accelerate.cpu_offload(t, execution_device=torch.device("cpu"))
    conv = t.transformer_blocks[0].ff.conv_depth
    offload_forward = conv.__dict__["forward"]
    with adapters_attached(t, adapters), joint_face_sync(t):
        assert torch.allclose(run(t, x, enc, ts), ref, atol=1e-6)
    assert conv.__dict__["forward"] is offload_forward and conv.padding == (1, 1)


def test_per_face_timesteps_under_sync_and_adapter(transformer):
    """V2P: face F is clean (t = 0) beside five noisy faces, in one forward."""
    x, enc, ts = inputs()
    ts = ts.clone()
    ts[0] = 0.0
    adapters = randomize(JointFaceAdapterSet.for_transformer(transformer))
    with adapters_attached(transformer, adapters), joint_face_sync(transformer):
        out = run(transformer, x, enc, ts)
        same_t = run(transformer, x, enc, torch.full_like(ts, 500.0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (out[1] - same_t[1]).abs().max() > 1e-4  # the clean face's timestep reaches its neighbours


def yaw90_permutation(n: int) -> torch.Tensor:
    """Index map of a 90° yaw of the cube (F -> R -> B -> L, U and D turned in plane), derived
    from the cell directions: new cell (g, i, j) shows old direction R^-1 d_g(i, j)."""
    d = face_cell_directions(n, dtype=torch.float64).reshape(-1, 3)
    r = rotation_matrix(yaw=90.0, dtype=torch.float64)
    assert torch.allclose(r @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 0, 0], dtype=torch.float64))
    dots = (d @ r) @ d.T  # rows: R^T d_new . d_old
    best, idx = dots.max(1)
    assert torch.allclose(best, torch.ones_like(best)) and len(set(idx.tolist())) == 6 * n * n
    return idx


def yaw90(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    b, c, n, _ = x.shape
    flat = x.view(b // 6, 6, c, n * n).permute(0, 2, 1, 3).reshape(b // 6, c, 6 * n * n)
    return flat[..., perm].view(b // 6, c, 6, n * n).permute(0, 2, 1, 3).reshape(b, c, n, n)


@pytest.fixture(scope="module")
def symmetric_transformer():
    """Patch size 1, depthwise kernels averaged over their four 90° rotations."""
    t = tiny_transformer(seed=7)
    with torch.no_grad():
        for blk in t.transformer_blocks:
            w = blk.ff.conv_depth.weight
            w.copy_(sum(torch.rot90(w, k, (2, 3)) for k in range(4)) / 4)
    return t


def sample(t: SanaTransformer2DModel, x: torch.Tensor, enc: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """A few Euler steps of the flow (velocity = the transformer output), t from 1000 to 0."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    for s0, s1 in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s1 - s0) * run(t, x, enc, torch.full((x.shape[0],), float(s0) * 1000))
    return x


def equivariance_error(t: SanaTransformer2DModel) -> tuple[float, float]:
    """Max |sample(rotated noise) - rotated sample(noise)| under sync, and the latents' scale."""
    n = 6
    x, enc, _ = inputs(size=n, seed=11, one_prompt=True)
    perm = yaw90_permutation(n)
    with joint_face_sync(t):
        out = sample(t, x, enc)
        out_rot = sample(t, yaw90(x, perm), enc)
    return float((out_rot - yaw90(out, perm)).abs().max()), float(out.abs().max())


def test_sync_is_equivariant_to_a_yaw_of_the_cube(symmetric_transformer):
    err, scale = equivariance_error(symmetric_transformer)
    assert err < 1e-5 * scale
    # The test sees U and D: with general (not 90°-symmetric) kernels they cannot commute with
    # the in-plane turn of U and D, and the error is large.
    err_general, scale_general = equivariance_error(tiny_transformer(seed=7))
    assert err_general > 1e-2 * scale_general


def test_equivariance_fails_with_the_f_u_edge_reversed(symmetric_transformer, broken_fu_edge):  # noqa: F811
    err, scale = equivariance_error(symmetric_transformer)
    assert err > 3e-4 * scale  # 30x the tolerance: one wrong edge in the synced cube breaks it


# ------------------------------------------------------------------------------ DC-AE


def seam_error(faces: torch.Tensor, strip: torch.Tensor, band: int = 8) -> float:
    """Mean |decoded cube - decoded unfolded F|R strip| in the bands on both sides of the F-R
    edge (middle rows, away from the strip's own top and bottom borders)."""
    s = faces.shape[-1]
    rows = slice(s // 4, 3 * s // 4)
    cube = torch.cat([faces[0, :, rows, s - band :], faces[1, :, rows, :band]], -1)
    return float((cube - strip[0, :, rows, s - band : s + band]).abs().mean())


def test_synced_dcae_decode_is_seamless_and_non_destructive():
    """Across the F-R edge, the synced decode matches decoding F and R unfolded side by side as one
    image (where the decoder sees across the edge), clearly better than independent faces."""
    vae = tiny_dcae()
    before = snapshot(vae)
    z = torch.randn(6, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = vae.decode(z).sample
        strip = vae.decode(torch.cat([z[0], z[1]], -1)[None]).sample  # F | R: an exact unfolding
        with joint_face_sync(vae=vae):
            synced = vae.decode(z).sample
            with pytest.raises(PanoInputError, match="whole panoramas"):
                vae.decode(z[:2])
        vae.enable_slicing()
        with joint_face_sync(vae=vae):
            sliced = vae.decode(torch.cat([z, z.flip(0)])).sample
        assert vae.use_slicing and "decode" not in vae.__dict__
        vae.disable_slicing()
    assert synced.shape == (6, 3, 64, 64)
    assert seam_error(synced, strip) < 0.5 * seam_error(plain, strip)
    assert torch.allclose(sliced[:6], synced, atol=1e-5)
    assert_plain(vae, before)
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, plain)


def test_dcae_decoder_attention_is_joint():
    vae = tiny_dcae()
    z = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z2 = z.clone()
    z2[2] += 1.0  # face B, opposite F: reached only through the joint attention
    with torch.no_grad(), joint_face_sync(vae=vae, padding=False):
        a, b = vae.decode(z).sample, vae.decode(z2).sample
    assert (a[0] - b[0]).abs().max() > 1e-4
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample[0], vae.decode(z2).sample[0])
