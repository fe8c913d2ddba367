"""The shared diffusion layer: sampling loop, schedules, VAE helpers, loading (pano_core.diffusion).

The DiT360 pipeline and editing tests exercise these through a tiny Flux; here the generic
contracts a second generator (Sana: DC-AE, per-element timesteps, CFG) and the trainer rely on.
"""

from __future__ import annotations

import pytest
import torch

from pano_core.diffusion import loading as dl
from pano_core.diffusion import schedules as S
from pano_core.diffusion.sampling import SamplingInterrupted, cfg_combine, euler_step, sample, scheduler_step
from pano_core.diffusion.vae import scale_shift, spatial_factor, vae_decode, vae_encode
from pano_core.errors import PanoInputError

# --------------------------------------------------------------------------- sampling loop


def _straight_flow(x0, noise):
    """The exact velocity of the straight path x_s = (1 - s) x0 + s noise."""
    return lambda x, t: (noise - x0).expand_as(x).clone()


def test_euler_on_a_straight_flow_lands_on_x0():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    sig = [1.0, 0.7, 0.3, 0.1, 0.0]
    out = sample(_straight_flow(x0, noise), noise, [s * 1000 for s in sig[:-1]], sig)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_cfg_hooks_and_per_element_timesteps():
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    clean = torch.randn_like(x)
    keep = torch.tensor([False, True, False])
    seen_t, prepared, called_back = [], [], []

    def cond(x, t):
        seen_t.append(t.clone())
        return x * 0.5 + t.reshape(-1, 1, 1, 1) / 1000

    def uncond(x, t):
        return x * 0.1

    def cb(i, t, x):
        called_back.append(i)
        return x + 1 if i == 0 else None

    sig = torch.tensor([1.0, 0.5, 0.0])
    out = sample(cond, x, sig[:-1] * 1000, sig, uncond=uncond, cfg_scale=3.0, clean=(keep, clean),
                 prepare=lambda i, x: prepared.append(i) or x, callback=cb,
                 timestep_hook=lambda i, t, x: t * 0.5)
    # the clean element never moves, and the model sees it at t = 0
    assert torch.equal(out[1], clean[1])
    assert all(t[1] == 0 for t in seen_t) and torch.allclose(seen_t[0][[0, 2]], torch.tensor([500.0, 500.0]))
    assert prepared == [0, 1] and called_back == [0, 1]
    # reference: the same steps by hand (CFG, the hook's times, the callback's replacement)
    ref = torch.where(keep.reshape(-1, 1, 1, 1), clean, x)
    for i in range(2):
        t = torch.full((3,), float(sig[i]) * 1000 * 0.5)
        t[1] = 0
        v = cfg_combine(ref * 0.5 + t.reshape(-1, 1, 1, 1) / 1000, ref * 0.1, 3.0)
        ref = euler_step(v, ref, sig[i], sig[i + 1])
        ref = torch.where(keep.reshape(-1, 1, 1, 1), clean, ref)
        if i == 0:
            ref = ref + 1
    torch.testing.assert_close(out, ref)


def test_interrupt_progress_and_errors():
    x = torch.zeros(1, 1, 2, 2)
    calls = []

    class Bar:
        n = 0

        def update(self, k=1):
            self.n += k

    bar = Bar()
    with pytest.raises(SamplingInterrupted, match="step 3 of 4"):
        sample(lambda x, t: calls.append(1) or x, x, [4, 3, 2, 1], [1, 0.75, 0.5, 0.25, 0],
               interrupt=lambda: len(calls) == 2, progress=bar)
    assert len(calls) == 2 and bar.n == 2

    class Cancelled(Exception):
        pass

    def cancel():
        raise Cancelled()

    with pytest.raises(Cancelled):
        sample(lambda x, t: x, x, [1], [1, 0], interrupt=cancel)
    with pytest.raises(PanoInputError, match="sigmas"):
        sample(lambda x, t: x, x, [1, 2], [1, 0])
    with pytest.raises(PanoInputError, match="clean"):
        sample(lambda x, t: x, x, [1], [1, 0], clean=(torch.tensor([True, False]), x))


def test_scheduler_step_matches_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ts, sig = S.set_timesteps(sched, 4, image_seq_len=256, device="cpu")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 4, 4, generator=g)
    v = lambda x, t: torch.sin(x) + t.reshape(-1, 1, 1, 1) / 1000  # noqa: E731
    a = sample(v, x, ts, step=scheduler_step(sched))
    b = sample(v, x, ts, sig)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- schedules


def test_schedules_shift_and_sigma_sources_agree():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert S.shift_mu(1000) == pytest.approx(calculate_shift(1000, 256, 4096, 0.5, 1.15))
    assert S.time_shift(0.5, 0.0) == pytest.approx(0.5)
    assert S.time_shift(0.5, 1.0) > 0.5 and S.time_shift(0.0, 1.0) == 0.0
    assert S.constant_shift(0.5, 3.0) == pytest.approx(0.75)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
                                            base_shift=0.5, max_shift=1.15)
    cpu = S.sigma_schedule(sched, 6, 520)
    _, sig = S.set_timesteps(sched, 6, 520, device="cpu")
    assert cpu.shape == (7,) and float(cpu[-1]) == 0.0
    torch.testing.assert_close(cpu, sig.float())
    # the shifted sigmas are the time shift of the default sigmas with mu of the token count
    mu = S.schedule_mu(sched.config, 520)
    torch.testing.assert_close(cpu[:-1], S.time_shift(torch.tensor(S.default_sigmas(6)), mu).float())
    with pytest.raises(PanoInputError, match="steps"):
        S.default_sigmas(0)


def test_training_sigmas_and_targets():
    a = S.sample_sigmas(1000, generator=torch.Generator().manual_seed(0))
    b = S.sample_sigmas(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (1000,) and 0 < float(a.min()) and float(a.max()) < 1
    shifted = S.sample_sigmas(1000, shift=3.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, S.constant_shift(a, 3.0))
    assert float(shifted.mean()) > float(a.mean()) + 0.1
    by_mu = S.sample_sigmas(1000, mode="uniform", mu=S.shift_mu(4096), generator=torch.Generator().manual_seed(0))
    assert float(by_mu.mean()) > 0.6
    x0, n = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    s = torch.tensor([0.0, 0.5, 1.0])
    xt = S.add_noise(x0, n, s)
    assert torch.equal(xt[0], x0[0]) and torch.allclose(xt[2], n[2]) and torch.allclose(xt[1], (x0[1] + n[1]) / 2)
    # the velocity target moves x_t along the path: x_t + (0 - s) * v = x0
    torch.testing.assert_close(xt - s.reshape(-1, 1, 1, 1) * S.velocity_target(x0, n), x0)
    with pytest.raises(PanoInputError, match="mode"):
        S.sample_sigmas(2, mode="cosine")
    with pytest.raises(PanoInputError, match="not both"):
        S.sample_sigmas(2, shift=3.0, mu=1.0)


# --------------------------------------------------------------------------- VAE


def _tiny_dcae():
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    return AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=4, encoder_block_types=("ResBlock", "ResBlock"),
        decoder_block_types=("ResBlock", "ResBlock"), encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()), upsample_block_type="interpolate",
        downsample_block_type="Conv", decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41,
    ).eval()


def test_vae_helpers_on_dcae_and_circular_encode():
    """DC-AE (Sana's VAE: no shift, ``encode(...).latent``) through the same helpers; the
    circular encode sees across the seam: rolling the image by whole latent columns rolls the
    latent exactly (the plain encode does not, at the borders)."""
    vae = _tiny_dcae()
    assert spatial_factor(vae) == 2 and scale_shift(vae) == (0.41, 0.0)
    img = torch.rand(1, 3, 16, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = vae_encode(vae, img)
        torch.testing.assert_close(z, vae.encode(img * 2 - 1).latent * 0.41)
        k = 5  # latent columns
        errs = {}
        for cols in (0, 8):  # 8 latent columns cover the tiny DC-AE's receptive field
            a = vae_encode(vae, img, wrap_cols=cols)
            b = vae_encode(vae, torch.roll(img, 2 * k, -1), wrap_cols=cols)
            errs[cols] = float((torch.roll(a, k, -1) - b).abs().max())
        assert errs[8] < 1e-5 < 0.1 < errs[0]
        out = vae_decode(vae, z, wrap_cols=2)
    assert out.shape == img.shape and out.dtype == torch.float32 and 0 <= float(out.min()) and float(out.max()) <= 1
    with pytest.raises(PanoInputError, match="wrap_cols"):
        vae_encode(vae, img, wrap_cols=40)


# --------------------------------------------------------------------------- loading


def test_resolve_source_and_weight_file(tmp_path):
    with pytest.raises(PanoInputError, match="empty"):
        dl.resolve_source("")
    with pytest.raises(PanoInputError, match="neither an existing folder nor a hub id"):
        dl.resolve_source(str(tmp_path / "missing"))
    with pytest.raises(PanoInputError, match="model_index.json"):
        dl.resolve_source(tmp_path)
    assert dl.resolve_source(tmp_path, need_model_index=False) == ("folder", str(tmp_path))
    assert dl.resolve_source("owner/model") == ("hub", "owner/model")
    pt = tmp_path / "w.pt"
    pt.write_bytes(b"x")
    with pytest.raises(PanoInputError, match="only .safetensors"):
        dl.resolve_source(pt, single_file=True)
    with pytest.raises(PanoInputError, match="is a file"):
        dl.resolve_source(pt)
    with pytest.raises(PanoInputError, match="only .safetensors"):
        dl.resolve_weight_file(pt, "w.pt")
    with pytest.raises(PanoInputError, match="has no adapter.safetensors"):
        dl.resolve_weight_file(tmp_path, "adapter.safetensors", name="adapter")
    assert dl.resolve_dtype("auto", "cpu") == torch.float32 and dl.resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(PanoInputError, match="dtype"):
        dl.resolve_dtype("int8", "cpu")


def test_load_component_folder_and_single_file(tmp_path):
    """A component from a pipeline folder (subfolder), from its own folder, and the single-file
    route (``from_single_file`` gets the safetensors file, the dtype and the config source)."""
    from diffusers import AutoencoderDC

    vae = _tiny_dcae()
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    a = dl.load_component(AutoencoderDC, tmp_path / "pipe", subfolder="vae")
    b = dl.load_component(AutoencoderDC, tmp_path / "pipe" / "vae", subfolder="vae", dtype=torch.bfloat16)
    assert b.dtype == torch.bfloat16
    for (k, v), (_, w) in zip(vae.state_dict().items(), a.state_dict().items()):
        assert torch.equal(v, w), k

    class SingleFile:
        __name__ = "SingleFile"
        calls = []

        @classmethod
        def from_single_file(cls, path, **kw):
            cls.calls.append((path, kw))
            return cls

    f = tmp_path / "transformer.safetensors"
    f.write_bytes(b"")
    assert dl.load_component(SingleFile, f, config="owner/model", subfolder="transformer") is SingleFile
    path, kw = SingleFile.calls[0]
    assert path == str(f) and kw["config"] == "owner/model" and kw["subfolder"] == "transformer"
    assert torch.float32 in kw.values()
    with pytest.raises(PanoInputError, match="single file"):
        dl.load_component(AutoencoderDC.__mro__[-1], f)  # object: no from_single_file


def test_place_checks_offload():
    class Pipe:
        moved = None

        def to(self, d):
            self.moved = d

    p = dl.place(Pipe(), "cpu")
    assert p.moved == "cpu"
    with pytest.raises(PanoInputError, match="offload"):
        dl.place(Pipe(), "cpu", "model")
    with pytest.raises(PanoInputError, match="offload"):
        dl.place(Pipe(), "cpu", "everything")
