"""Tiny stand-ins for the other pieces a Qwen-Image / FLUX.2 / Wan workflow loads (test-only, never
shipped): a text encoder whose features fit the tiny DiTs of :mod:`tiny_dits`, the family VAEs as
real ``comfy.sd.VAE`` objects (ComfyUI detects them from their state dicts and takes its own
branch for each), and LoRA files in the key formats ComfyUI's ``LoraLoaderModelOnly`` maps for
those families.

- :func:`build_tiny_dit_clip` -> ``comfy.sd.CLIP``: Flux tokenizer, conditioning (1, T, 16) = the
  tiny DiTs' text width (``tiny_dits.CTX``), no pooled vector.
- :func:`build_tiny_wan21_vae` -> the causal 3-D VAE of Wan 2.1 and Qwen-Image (16 channels, /8).
- :func:`build_tiny_wan22_vae` -> the Wan 2.2 VAE (48 channels, /16). ``comfy.sd.VAE`` hard-codes
  its width (dim 160, ~700 M parameters), so the class it instantiates is narrowed while it is
  built; everything else (detection, ratios, latent format, decode/encode paths) is ComfyUI's.
- :func:`build_tiny_flux2_vae` -> the FLUX.2 VAE (AutoencoderKL, 32 z-channels, batch-norm latent
  with 2x2 patchify = 128 channels, /16). Full width (ComfyUI hard-codes ``ch`` 128; 84 M
  parameters, about 2 s to build on 2 cores); ``narrow=True`` builds it at ``ch`` 32 with one
  res block per level (:data:`FLUX2_TINY`), everything else ComfyUI's.
- :func:`build_tiny_hunyuan_image_vae` -> the HunyuanImage 2.1 VAE (64 latent channels, /32,
  ``comfy.ldm.hunyuan_video.vae``), narrowed while built (:data:`HUNYUAN_IMAGE_TINY`; ComfyUI
  hard-codes ``block_out_channels`` [128, ..., 1024]).
- :func:`build_tiny_hunyuan_refiner_vae` -> the HunyuanImage 2.1 refiner's VAE (32 latent channels,
  16x spatial, 4x temporal, 5-D latents: ``comfy.ldm.hunyuan_video.vae_refiner``), narrowed the same
  way (:data:`HUNYUAN_REFINER_TINY`).
- :func:`tiny_dit_lora_state_dict` / :func:`save_tiny_dit_lora`: LoRA files for the tiny
  ``QwenImage``, ``WAN21``/``WAN22`` and ``Flux2`` (shapes from :data:`tiny_dits.CONFIGS`, so no
  ComfyUI import is needed to write one).
"""

from __future__ import annotations

import contextlib
import math

import torch

try:  # inside the test node pack (server) / top-level module (in-process tests)
    from . import tiny_dits
    from .tiny_models import TinyTextEncoder, _generator, init_module_
except ImportError:
    import tiny_dits
    from tiny_models import TinyTextEncoder, _generator, init_module_


# --------------------------------------------------------------------------- text encoder


def build_tiny_dit_clip(seed: int = 0):
    """A real ``comfy.sd.CLIP`` (Flux tokenizer) whose conditioning has the tiny DiTs' text width
    (``tiny_dits.CTX``) and no pooled output (as Qwen-Image's and FLUX.2's encoders)."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux

    class _Encoder(TinyTextEncoder):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, model_options=model_options, seed=seed)
            self.t5_emb = torch.nn.Embedding(self.T5_VOCAB, tiny_dits.CTX, device=device, dtype=torch.float32)
            with torch.no_grad():
                self.t5_emb.weight.copy_(torch.randn(self.t5_emb.weight.shape, generator=_generator(seed + 1)))

        def encode_token_weights(self, token_weight_pairs):
            return self._embed(self.t5_emb, token_weight_pairs["t5xxl"]), None

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, _Encoder)
    return comfy.sd.CLIP(target=target, embedding_directory=None)


# --------------------------------------------------------------------------- VAEs


def _state_dict(module: torch.nn.Module, seed: int) -> dict:
    init_module_(module, seed, gain=1.0)
    return {k: v.detach().clone().float() for k, v in module.state_dict().items()}


def build_tiny_wan21_vae(seed: int = 3):
    """A real ``comfy.sd.VAE`` holding a tiny Wan 2.1 causal 3-D VAE (dim 4, 16 latent channels,
    /8): the VAE of Wan 2.1 and of Qwen-Image (ComfyUI reads ``dim`` from the state dict)."""
    import comfy.ldm.wan.vae
    import comfy.sd

    m = comfy.ldm.wan.vae.WanVAE(dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                 temperal_downsample=[False, True, True], dropout=0.0)
    vae = comfy.sd.VAE(sd=_state_dict(m, seed))
    if not isinstance(vae.first_stage_model, comfy.ldm.wan.vae.WanVAE) or vae.latent_channels != 16:
        raise RuntimeError("ComfyUI did not detect the tiny Wan 2.1 VAE")
    return vae


WAN22_TINY = {"dim": 4, "dec_dim": 8, "num_res_blocks": 1}


@contextlib.contextmanager
def _narrow_wan22_vae():
    """While active, ``comfy.ldm.wan.vae2_2.WanVAE(...)`` builds the tiny width of :data:`WAN22_TINY`."""
    import comfy.ldm.wan.vae2_2 as v22

    real = v22.WanVAE

    class _Tiny(real):
        def __init__(self, **kwargs):
            super().__init__(**{**kwargs, **WAN22_TINY})

    v22.WanVAE = _Tiny
    try:
        yield real
    finally:
        v22.WanVAE = real


def build_tiny_wan22_vae(seed: int = 5):
    """A real ``comfy.sd.VAE`` on ComfyUI's Wan 2.2 branch (48 latent channels, 16x spatial with its
    2x2 patchify, 4x temporal), narrowed to dim 4 / dec_dim 8 (see the module docstring)."""
    import comfy.sd

    with _narrow_wan22_vae() as real:
        m = real(z_dim=48, dim_mult=[1, 2, 4, 4], attn_scales=[], temperal_downsample=[False, True, True],
                 dropout=0.0, **WAN22_TINY)
        vae = comfy.sd.VAE(sd=_state_dict(m, seed))
    if not isinstance(vae.first_stage_model, real) or vae.latent_channels != 48:
        raise RuntimeError("ComfyUI did not detect the tiny Wan 2.2 VAE")
    if vae.spacial_compression_decode() != 16:
        raise RuntimeError(f"Wan 2.2 VAE: expected 16x spatial compression, got {vae.spacial_compression_decode()}")
    return vae


def _check_loaded(vae, sd: dict, name: str) -> None:
    """Every key of ``sd`` loaded into ``vae.first_stage_model`` with its values (``comfy.sd.VAE``
    loads non-strictly and only logs missing keys)."""
    got = vae.first_stage_model.state_dict()
    missing = sorted(set(sd) - set(got))
    if missing or set(got) - set(sd):
        raise RuntimeError(f"{name}: state dict and ComfyUI's model differ: missing {missing[:5]}, "
                           f"extra {sorted(set(got) - set(sd))[:5]}")
    bad = [k for k, v in sd.items() if not torch.equal(got[k].float().cpu(), v)]
    if bad:
        raise RuntimeError(f"{name}: {len(bad)} tensors not loaded as saved, e.g. {bad[:3]}")


FLUX2_TINY = {"ch": 32, "num_res_blocks": 1}


@contextlib.contextmanager
def _narrow_flux2_vae():
    """While active, the ``AutoencoderKL(ddconfig=...)`` that ``comfy.sd.VAE`` builds gets the width of
    :data:`FLUX2_TINY` (``ch`` 32: GroupNorm's 32 groups allow no less)."""
    import comfy.sd

    real = comfy.sd.AutoencoderKL

    class _Tiny(real):
        def __init__(self, ddconfig, **kwargs):
            super().__init__(ddconfig={**ddconfig, **FLUX2_TINY}, **kwargs)

    comfy.sd.AutoencoderKL = _Tiny
    try:
        yield real
    finally:
        comfy.sd.AutoencoderKL = real


def build_tiny_flux2_vae(seed: int = 7, narrow: bool = False):
    """A real ``comfy.sd.VAE`` on ComfyUI's FLUX.2 branch (``bn.running_mean`` in the state dict:
    32 z-channels patchified 2x2 into 128 latent channels, /16). ``narrow``: ``ch`` 32 and one res
    block per level (about 4 M instead of 84 M parameters; see :func:`_narrow_flux2_vae`)."""
    import comfy.ldm.models.autoencoder
    import comfy.sd

    dd = {"double_z": True, "z_channels": 32, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
          "batch_norm_latent": True}
    with _narrow_flux2_vae() if narrow else contextlib.nullcontext():
        if narrow:
            dd = {**dd, **FLUX2_TINY}
        m = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dd, embed_dim=32)
        sd = _state_dict(m, seed)
        vae = comfy.sd.VAE(sd=sd)
    if vae.latent_channels != 128 or vae.spacial_compression_decode() != 16:
        raise RuntimeError("ComfyUI did not detect the tiny FLUX.2 VAE")
    if narrow:
        _check_loaded(vae, sd, "tiny FLUX.2 VAE")
    return vae


HUNYUAN_IMAGE_TINY = {"block_out_channels": [32, 32, 64, 64, 128, 128], "num_res_blocks": 1}
"""The narrowed width of the HunyuanImage 2.1 VAE: six levels as ComfyUI's (five 2x steps = 32x), each a
multiple of GroupNorm's 32 groups; the last is 128 = 2 x 64 latent channels, as the encoder's
channel-mean skip and the decoder's channel-repeat skip require."""


@contextlib.contextmanager
def _narrow_encoder_decoder(module, overrides: dict):
    """While active, ``module.Encoder`` / ``module.Decoder`` (which ``comfy.sd.VAE`` instantiates by name)
    are subclasses built with ``overrides`` (e.g. narrower ``block_out_channels``); yields the real pair."""
    real = module.Encoder, module.Decoder

    class _TinyEncoder(real[0]):
        def __init__(self, **kwargs):
            super().__init__(**{**kwargs, **overrides})

    class _TinyDecoder(real[1]):
        def __init__(self, **kwargs):
            super().__init__(**{**kwargs, **overrides})

    module.Encoder, module.Decoder = _TinyEncoder, _TinyDecoder
    try:
        yield real
    finally:
        module.Encoder, module.Decoder = real


def _hunyuan_engine_vae(module_name: str, dd: dict, tiny: dict, seed: int, label: str, channels: int,
                        compression: int, latent_dim: int):
    """A real ``comfy.sd.VAE`` built from the state dict of an ``AutoencodingEngine`` with
    ``comfy.ldm.hunyuan_video.<module_name>`` Encoder/Decoder narrowed to ``tiny`` while built; checks
    that ComfyUI's own branch detected it (channels, compression, latent dims, every key loaded)."""
    import importlib

    import comfy.ldm.models.autoencoder
    import comfy.sd

    module = importlib.import_module(f"comfy.ldm.hunyuan_video.{module_name}")
    dd = {"in_channels": 3, "out_channels": 3, "downsample_match_channel": True, "upsample_match_channel": True,
          **dd, **tiny}
    target = f"comfy.ldm.hunyuan_video.{module_name}"
    with _narrow_encoder_decoder(module, tiny) as (enc_cls, dec_cls):
        m = comfy.ldm.models.autoencoder.AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": f"{target}.Encoder", "params": dd},
            decoder_config={"target": f"{target}.Decoder", "params": dd})
        sd = _state_dict(m, seed)
        vae = comfy.sd.VAE(sd=sd)
    fsm = vae.first_stage_model
    if not (isinstance(fsm, comfy.ldm.models.autoencoder.AutoencodingEngine) and isinstance(fsm.encoder, enc_cls)
            and isinstance(fsm.decoder, dec_cls)) or vae.latent_channels != channels or vae.latent_dim != latent_dim:
        raise RuntimeError(f"ComfyUI did not detect the tiny {label}")
    if vae.spacial_compression_decode() != compression or vae.spacial_compression_encode() != compression:
        raise RuntimeError(f"{label}: expected {compression}x spatial compression, got {vae.spacial_compression_decode()}")
    _check_loaded(vae, sd, f"tiny {label}")
    return vae


def build_tiny_hunyuan_image_vae(seed: int = 9):
    """A real ``comfy.sd.VAE`` on ComfyUI's HunyuanImage 2.1 branch (``decoder.conv_in.weight`` with 64
    input channels: ``AutoencodingEngine`` with ``comfy.ldm.hunyuan_video.vae`` Encoder/Decoder, 64
    latent channels, 32x spatial), narrowed while built (:data:`HUNYUAN_IMAGE_TINY`, ~5 M parameters)."""
    return _hunyuan_engine_vae("vae", {"z_channels": 64, "ffactor_spatial": 32}, HUNYUAN_IMAGE_TINY, seed,
                               "HunyuanImage 2.1 VAE", channels=64, compression=32, latent_dim=2)


HUNYUAN_REFINER_TINY = {"block_out_channels": [32, 32, 64, 64, 64], "num_res_blocks": 1}
"""The narrowed width of the HunyuanImage 2.1 refiner's VAE: five levels as ComfyUI's (four 2x steps = 16x,
the last two encoder steps also 2x in time), multiples of GroupNorm's 32 groups; the deepest is 64 = 2 x 32
latent channels (the encoder's channel-mean skip; the decoder repeats the latent 2x)."""


def build_tiny_hunyuan_refiner_vae(seed: int = 11):
    """A real ``comfy.sd.VAE`` on ComfyUI's HunyuanImage 2.1 refiner branch (``decoder.conv_in.weight``
    with 32 input channels and 5 dims: ``AutoencodingEngine`` with ``comfy.ldm.hunyuan_video.vae_refiner``
    Encoder/Decoder built with ``refiner_vae=False``, 32 latent channels, 16x spatial, 4x temporal,
    ``latent_dim`` 3: an image is one frame of a 5-D latent), narrowed while built
    (:data:`HUNYUAN_REFINER_TINY`)."""
    return _hunyuan_engine_vae("vae_refiner", {"z_channels": 32, "ffactor_spatial": 16, "ffactor_temporal": 4,
                                               "refiner_vae": False},
                               HUNYUAN_REFINER_TINY, seed, "HunyuanImage 2.1 refiner VAE", channels=32,
                               compression=16, latent_dim=3)


# --------------------------------------------------------------------------- LoRA files

LORA_FAMILIES = ("QwenImage", "WAN21", "WAN22", "Flux2")


def lora_targets(family: str) -> dict[str, tuple[int, int]]:
    """``{LoRA module key: (out_features, in_features)}`` of the tiny ``family``, in the key format
    ComfyUI 0.3.75 maps for it (comfy/lora.py ``model_lora_keys_unet``):

    - Qwen-Image: diffusers/DiffSynth names with the ``transformer.`` prefix (the QwenImage branch);
    - Wan 2.x: ``diffusion_model.<module>`` (the generic branch; musubi-tuner / diffusion-pipe files);
    - FLUX.2: ``diffusion_model.<module>`` (generic branch), fused ``img_attn.qkv`` included.
    """
    cfg = tiny_dits.CONFIGS[family]
    out: dict[str, tuple[int, int]] = {}
    if family == "QwenImage":
        inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        for i in range(cfg["num_layers"]):
            for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
                out[f"transformer.transformer_blocks.{i}.attn.{proj}"] = (inner, inner)
            out[f"transformer.transformer_blocks.{i}.attn.to_out.0"] = (inner, inner)
            out[f"transformer.transformer_blocks.{i}.attn.to_add_out"] = (inner, inner)
    elif family in ("WAN21", "WAN22"):
        d = cfg["dim"]
        for i in range(cfg["num_layers"]):
            for attn in ("self_attn", "cross_attn"):
                for proj in ("q", "k", "v", "o"):
                    out[f"diffusion_model.blocks.{i}.{attn}.{proj}"] = (d, d)
            out[f"diffusion_model.blocks.{i}.ffn.0"] = (cfg["ffn_dim"], d)
            out[f"diffusion_model.blocks.{i}.ffn.2"] = (d, cfg["ffn_dim"])
    elif family == "Flux2":
        h = cfg["hidden_size"]
        for i in range(cfg["depth"]):
            out[f"diffusion_model.double_blocks.{i}.img_attn.qkv"] = (3 * h, h)
            out[f"diffusion_model.double_blocks.{i}.img_attn.proj"] = (h, h)
    else:
        raise ValueError(f"family must be one of {LORA_FAMILIES}, got {family!r}")
    return out


def tiny_dit_lora_state_dict(family: str, seed: int = 0, rank: int = 4, scale: float = 0.3) -> dict:
    """A PEFT-style LoRA (``<module>.lora_A.weight`` / ``lora_B.weight`` + ``<module>.alpha``) for
    the tiny ``family``; B is non-zero so the LoRA changes the model."""
    g = _generator(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, (n_out, n_in) in lora_targets(family).items():
        sd[f"{key}.lora_A.weight"] = torch.randn((rank, n_in), generator=g) / math.sqrt(n_in)
        sd[f"{key}.lora_B.weight"] = torch.randn((n_out, rank), generator=g) * scale
        sd[f"{key}.alpha"] = torch.tensor(float(rank))
    return sd


def save_tiny_dit_lora(path, family: str, seed: int = 0, rank: int = 4) -> str:
    """Write :func:`tiny_dit_lora_state_dict` as safetensors to ``path``; returns the path."""
    import os

    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
    sd = {k: v.contiguous() for k, v in tiny_dit_lora_state_dict(family, seed, rank).items()}
    save_file(sd, str(path), metadata={"format": "pt", "pano360_test": f"tiny-{family}-lora"})
    return str(path)
