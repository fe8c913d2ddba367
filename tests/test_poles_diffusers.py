"""Pole refinement with diffusers inpainting pipelines (tiny random pipelines built and saved here)."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pano_core import poles
from pano_core.cli import main as cli_main
from pano_core.errors import PanoInputError
from pano_core.io import read_image, write_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_diffusers  # noqa: E402

ASSETS = Path(__file__).parent / "assets"


def _tiny_clip_tokenizer(folder: Path):
    """A tiny CLIP BPE tokenizer written offline (characters and end-of-word characters)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in chars + [c + "</w>" for c in chars]:
        vocab[tok] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16,
                         pad_token="<|endoftext|>")


def _tiny_sd_components(tmp: Path, unet_in_channels: int):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = _tiny_clip_tokenizer(tmp / "tok")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32,
        num_attention_heads=2, num_hidden_layers=1, vocab_size=len(tok), max_position_embeddings=16))
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=unet_in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
        norm_num_groups=8)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32)
    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def sd_inpaint_dir(tmp_path_factory) -> Path:
    from diffusers import StableDiffusionInpaintPipeline

    tmp = tmp_path_factory.mktemp("tiny_sd_inpaint")
    pipe = StableDiffusionInpaintPipeline(**_tiny_sd_components(tmp, 9))
    pipe.save_pretrained(tmp / "pipe", safe_serialization=True)
    return tmp / "pipe"


@pytest.fixture(scope="module")
def erp() -> torch.Tensor:
    return F.interpolate(read_image(ASSETS / "snow_village_erp.png"), size=(64, 128), mode="area")


def _outside(erp: torch.Tensor, feather: int) -> torch.Tensor:
    _, masks = poles.extract_pole_faces(erp)
    return (poles.pole_weight_erp(erp.shape[-2:], masks, feather) == 0).expand_as(erp)


def test_sd_inpaint_pipeline_from_folder(sd_inpaint_dir, erp):
    assert not list(sd_inpaint_dir.rglob("*.bin"))
    inp = poles.DiffusersInpainter.from_pretrained(
        sd_inpaint_dir, dtype="fp32", device="cpu", prompt="snow", num_inference_steps=2, seed=1)
    assert type(inp.pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert inp.pipe.unet.dtype == torch.float32
    out = poles.refine_poles(erp, inp, feather=2)
    outside = _outside(erp, 2)
    assert out.shape == erp.shape and torch.isfinite(out).all()
    assert torch.equal(out[outside], erp[outside])
    assert (out[~outside] - erp[~outside]).abs().mean() > 1e-3
    assert torch.equal(out, poles.refine_poles(erp, inp, feather=2))  # seeded
    inp.seed = 2
    assert not torch.equal(out, poles.refine_poles(erp, inp, feather=2))


def test_grey_and_rgba_inputs(sd_inpaint_dir):
    inp = poles.DiffusersInpainter.from_pretrained(sd_inpaint_dir, dtype="fp32", device="cpu", num_inference_steps=1)
    m = poles.pole_mask(32)
    rgba = torch.rand(2, 4, 32, 32)
    out = inp(rgba, m)
    assert out.shape == rgba.shape and torch.equal(out[:, 3], rgba[:, 3])
    assert not torch.equal(out[:, :3], rgba[:, :3])
    grey = torch.rand(2, 1, 32, 32)
    assert inp(grey, m).shape == grey.shape


def test_inpainter_resizes_faces_to_its_working_size(sd_inpaint_dir):
    inp = poles.DiffusersInpainter.from_pretrained(
        sd_inpaint_dir, dtype="fp32", device="cpu", num_inference_steps=1, size=48)
    seen = {}
    original = inp.pipe.__class__.__call__

    @functools.wraps(original)
    def spy(self, *a, **kw):
        seen.update(height=kw["height"], width=kw["width"], image=tuple(kw["image"].shape))
        return original(self, *a, **kw)

    inp.pipe.__class__.__call__ = spy
    try:
        out = inp(torch.rand(2, 3, 40, 40), poles.pole_mask(40))
    finally:
        inp.pipe.__class__.__call__ = original
    assert seen == {"height": 48, "width": 48, "image": (2, 3, 48, 48)}
    assert out.shape == (2, 3, 40, 40)


def test_auto_pipeline_for_inpainting_from_text_to_image_folder(tmp_path, erp):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**_tiny_sd_components(tmp_path, 4))
    pipe.save_pretrained(tmp_path / "t2i", safe_serialization=True)
    inp = poles.make_inpainter(f"diffusers:{tmp_path / 't2i'}", dtype="fp32", device="cpu",
                               num_inference_steps=1, prompt="sky")
    assert type(inp.pipe).__name__ == "StableDiffusionInpaintPipeline"
    out = poles.refine_poles(erp, inp, feather=1)
    assert torch.equal(out[_outside(erp, 1)], erp[_outside(erp, 1)])


def test_flux_fill_pipeline(tmp_path, erp):
    from diffusers import FluxFillPipeline, FluxTransformer2DModel

    base = tiny_diffusers.build_tiny_flux_pipeline(0, tokenizers_dir=tmp_path / "tok")
    torch.manual_seed(5)
    # Fill: 64 packed latent + 64 packed masked-image latent + 256 packed mask (8x8 x 2x2) channels
    transformer = FluxTransformer2DModel(**{**tiny_diffusers.TINY_TRANSFORMER_CONFIG, "in_channels": 384,
                                            "out_channels": 64})
    keep = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    comps = {k: base.components[k] for k in keep} | {"transformer": transformer}
    FluxFillPipeline(**comps).save_pretrained(tmp_path / "fill", safe_serialization=True)
    inp = poles.make_inpainter(f"diffusers:{tmp_path / 'fill'}", dtype="fp32", device="cpu",
                               num_inference_steps=2, guidance_scale=30.0, prompt="snowy ground", seed=3)
    assert type(inp.pipe).__name__ == "FluxFillPipeline"
    out = poles.refine_poles(erp, inp, feather=2)
    outside = _outside(erp, 2)
    assert torch.isfinite(out).all() and torch.equal(out[outside], erp[outside])
    assert (out[~outside] - erp[~outside]).abs().mean() > 1e-3


def test_only_safetensors_are_loaded(sd_inpaint_dir, tmp_path):
    from safetensors.torch import load_file

    bad = tmp_path / "pickled"
    shutil.copytree(sd_inpaint_dir, bad)
    st = bad / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(st)), bad / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    with pytest.raises(PanoInputError, match="model: cannot load.*safetensors"):
        poles.DiffusersInpainter.from_pretrained(bad, dtype="fp32", device="cpu")


def test_loader_bad_input(tmp_path, sd_inpaint_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PanoInputError, match="no model_index.json"):
        poles.DiffusersInpainter.from_pretrained(tmp_path / "empty")
    with pytest.raises(PanoInputError, match="folder not found"):
        poles.DiffusersInpainter.from_pretrained(tmp_path / "missing")
    with pytest.raises(PanoInputError, match="dtype"):
        poles.DiffusersInpainter.from_pretrained(sd_inpaint_dir, dtype="fp8x", device="cpu")
    with pytest.raises(PanoInputError, match="offload"):
        poles.DiffusersInpainter.from_pretrained(sd_inpaint_dir, device="cpu", offload="gpu")
    with pytest.raises(PanoInputError, match="pipeline"):
        poles.DiffusersInpainter.from_pretrained(sd_inpaint_dir, device="cpu", pipeline="magic")
    with pytest.raises(PanoInputError, match="size"):
        poles.DiffusersInpainter.from_pretrained(sd_inpaint_dir, device="cpu", dtype="fp32", size=50)


def test_cli_with_diffusers(sd_inpaint_dir, tmp_path, erp):
    src = tmp_path / "in.png"
    write_image(src, erp)
    out = tmp_path / "out.png"
    rc = cli_main(["refine-poles", str(src), "-o", str(out), "--inpainter", f"diffusers:{sd_inpaint_dir}",
                   "--prompt", "snow", "--steps", "1", "--seed", "4", "--dtype", "fp32", "--device", "cpu",
                   "--feather", "2"])
    assert rc == 0
    a, b = read_image(src), read_image(out)
    outside = _outside(a, 2)
    assert torch.equal(a[outside], b[outside]) and not torch.equal(a, b)


def test_hub_id_selects_flux_fill_with_safe_options(monkeypatch):
    """A hub id is passed to from_pretrained as is (no network here: the call is recorded)."""
    import diffusers

    calls = {}

    class FakePipe:
        def __init__(self):
            self.moved = None

        def to(self, device):
            self.moved = device
            return self

        def set_progress_bar_config(self, **kw):
            calls["progress"] = kw

    def fake_from_pretrained(src, **kw):
        calls["src"], calls["kw"] = src, kw
        return FakePipe()

    monkeypatch.setattr(diffusers.FluxFillPipeline, "from_pretrained", staticmethod(fake_from_pretrained))
    inp = poles.make_inpainter("diffusers:black-forest-labs/FLUX.1-Fill-dev", dtype="bf16", device="cpu",
                               prompt="sky", seed=5)
    assert calls["src"] == "black-forest-labs/FLUX.1-Fill-dev"
    assert calls["kw"]["use_safetensors"] is True
    assert torch.bfloat16 in calls["kw"].values()
    assert inp.pipe.moved == "cpu" and inp.seed == 5 and inp.prompt == "sky"
    assert calls["progress"] == {"disable": True}
    with pytest.raises(PanoInputError, match="folder not found"):
        poles.make_inpainter("diffusers:./not/here")
