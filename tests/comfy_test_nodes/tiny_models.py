"""Tiny random models for tests (never shipped).

Plain module, importable both by the test node pack (inside the ComfyUI server) and by
in-process unit tests (with the ComfyUI folder first on ``sys.path`` and
``comfy.cli_args.args.cpu = True`` set before ``comfy.model_management`` is imported).

Everything is built from an explicit ``seed``: ComfyUI's ops skip weight initialisation, so
every parameter is initialised here, deterministically, with modest scales so outputs are finite.

Public functions:
  - :func:`tiny_flux_unet_config` / :func:`build_tiny_flux` -> ``comfy.model_patcher.ModelPatcher``
    (a real ComfyUI Flux ``MODEL``; variants ``dev`` (guidance embed), ``schnell`` (no guidance),
    ``fill`` (in_channels 96: latent + masked image latent + 64 mask channels, detected by
    ComfyUI as ``FluxInpaint``), ``control`` (in_channels 32: latent + control image latent,
    like Flux Canny/Depth with InstructPixToPixConditioning)). Kontext-style ``ref_latents`` work with every variant (the
    ComfyUI Flux forward appends them as extra tokens).
  - :func:`build_tiny_clip` -> ``comfy.sd.CLIP`` with the real Flux tokenizer (keys ``l`` and
    ``t5xxl``) and a tiny embedding encoder: cond (B, T, CONTEXT_DIM), pooled (B, VEC_DIM).
  - :func:`build_tiny_vae` -> ``comfy.sd.VAE`` (TAESD architecture, 16 latent channels, /8).
  - :func:`tiny_dit360_lora_state_dict` / :func:`save_tiny_dit360_lora`: a LoRA for the tiny
    Flux in DiT360's PEFT key format (``transformer.<module>.lora_A.weight`` / ``lora_B.weight``
    on ``attn.to_q/to_k/to_v/to_out.0``), loadable by ``LoraLoaderModelOnly``.
"""

from __future__ import annotations

import math

import torch

# Tiny Flux dimensions (shared with the tiny CLIP so conditioning matches). The diffusers test
# builder (tests/tiny_diffusers.py) reads these too, so the ComfyUI and the diffusers tiny Flux
# are the same architecture and a weight/LoRA file works in both (diffusers' Flux blocks have
# MLP ratio 4, its pooled projection is the CLIP hidden size, 32).
HIDDEN_SIZE = 64
NUM_HEADS = 2
AXES_DIM = [8, 12, 12]  # sums to HIDDEN_SIZE // NUM_HEADS = 32 (RoPE over [index, row, col])
CONTEXT_DIM = 32  # text token features (T5 stand-in)
VEC_DIM = 32  # pooled text vector (CLIP-L stand-in)
MLP_RATIO = 4.0
LATENT_CHANNELS = 16

VARIANTS = ("dev", "schnell", "fill", "control")


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
    return g


@torch.no_grad()
def init_module_(module: torch.nn.Module, seed: int, gain: float = 1.0, bias_std: float = 0.02) -> None:
    """Initialise every parameter of ``module`` deterministically from ``seed``.

    Matrices/convolutions: normal with std ``gain / sqrt(fan_in)``; 1-D weights and norm
    ``scale`` parameters: ones; biases: small normal. Buffers are left alone.
    """
    g = _generator(seed)
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim >= 2:
            fan_in = int(math.prod(p.shape[1:]))
            vals = torch.randn(p.shape, generator=g, dtype=torch.float32) * (gain / math.sqrt(max(fan_in, 1)))
        elif leaf == "bias":
            vals = torch.randn(p.shape, generator=g, dtype=torch.float32) * bias_std
        elif p.ndim == 1:
            vals = torch.ones(p.shape, dtype=torch.float32)
        else:  # scalars (e.g. vae_scale): leave to the caller
            continue
        p.copy_(vals.to(dtype=p.dtype, device=p.device))


# --------------------------------------------------------------------------- Flux


def tiny_flux_unet_config(variant: str = "dev", depth: int = 1, depth_single_blocks: int = 1) -> dict:
    """unet_config for ``comfy.model_detection.model_config_from_unet_config``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return {
        "image_model": "flux",
        "in_channels": {"fill": 96, "control": 2 * LATENT_CHANNELS}.get(variant, LATENT_CHANNELS),
        "out_channels": LATENT_CHANNELS,
        "vec_in_dim": VEC_DIM,
        "context_in_dim": CONTEXT_DIM,
        "hidden_size": HIDDEN_SIZE,
        "mlp_ratio": MLP_RATIO,
        "num_heads": NUM_HEADS,
        "depth": int(depth),
        "depth_single_blocks": int(depth_single_blocks),
        "axes_dim": list(AXES_DIM),
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "guidance_embed": variant != "schnell",
    }


def build_tiny_flux(seed: int = 0, variant: str = "dev", depth: int = 1, depth_single_blocks: int = 1):
    """A real ComfyUI Flux ``MODEL`` (ModelPatcher) with tiny random weights (float32)."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher

    unet_config = tiny_flux_unet_config(variant, depth, depth_single_blocks)
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    if model_config is None:
        raise RuntimeError(f"ComfyUI did not recognise the tiny Flux config {unet_config}")
    model_config.set_inference_dtype(torch.float32, None)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    model = model_config.get_model({}, "", device=offload_device)
    init_module_(model.diffusion_model, seed)
    model.diffusion_model.to(dtype=torch.float32)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def build_tiny_flux_controlnet(seed: int = 0, latent_input: bool = True):
    """A real ComfyUI Flux ControlNet (``comfy.controlnet.ControlNet`` around ``ControlNetFlux``)
    with tiny random weights. ``latent_input``: InstantX style (the hint is VAE-encoded; needs a
    VAE when applied), else XLabs style (pixel hint through the conv stem, 8x compression)."""
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.ldm.flux.controlnet
    import comfy.model_management
    import comfy.ops

    cfg = tiny_flux_unet_config("dev")
    m = comfy.ldm.flux.controlnet.ControlNetFlux(
        latent_input=latent_input, control_latent_channels=LATENT_CHANNELS if latent_input else None,
        operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32, **cfg)
    init_module_(m, seed)
    m.to(dtype=torch.float32)
    load_device = comfy.model_management.get_torch_device()
    if latent_input:
        return comfy.controlnet.ControlNet(m, compression_ratio=1, latent_format=comfy.latent_formats.Flux(),
                                           load_device=load_device, extra_conds=["y", "guidance"])
    return comfy.controlnet.ControlNet(m, load_device=load_device, extra_conds=["y", "guidance"])


# --------------------------------------------------------------------------- text encoder


class TinyTextEncoder(torch.nn.Module):
    """Stand-in for Flux's CLIP-L + T5: token embeddings only (cond from ``t5xxl`` tokens,
    pooled = weighted mean of ``l`` token embeddings). Deterministic per text."""

    T5_VOCAB = 32128
    CLIP_VOCAB = 49408

    def __init__(self, device="cpu", dtype=None, model_options=None, seed: int = 0):
        super().__init__()
        self.t5_emb = torch.nn.Embedding(self.T5_VOCAB, CONTEXT_DIM, device=device, dtype=torch.float32)
        self.l_emb = torch.nn.Embedding(self.CLIP_VOCAB, VEC_DIM, device=device, dtype=torch.float32)
        with torch.no_grad():
            g = _generator(seed)
            self.t5_emb.weight.copy_(torch.randn(self.t5_emb.weight.shape, generator=g))
            self.l_emb.weight.copy_(torch.randn(self.l_emb.weight.shape, generator=g))
        self.dtypes = {torch.float32}

    # ComfyUI CLIP protocol -------------------------------------------------
    def set_clip_options(self, options):
        pass

    def reset_clip_options(self):
        pass

    def load_sd(self, sd):
        return self.load_state_dict(sd, strict=False)

    def _embed(self, emb: torch.nn.Embedding, sections) -> torch.Tensor:
        rows = []
        for section in sections:
            ids, weights = [], []
            for item in section:
                tok, w = item[0], item[1]
                ids.append(int(tok) if isinstance(tok, int) else 0)
                weights.append(float(w))
            ids_t = torch.tensor(ids, dtype=torch.long, device=emb.weight.device).clamp_(0, emb.num_embeddings - 1)
            w_t = torch.tensor(weights, dtype=torch.float32, device=emb.weight.device)
            rows.append(emb(ids_t) * w_t[:, None])
        return torch.cat(rows, dim=0)[None]  # (1, T, D): sections concatenated like ComfyUI

    def encode_token_weights(self, token_weight_pairs):
        cond = self._embed(self.t5_emb, token_weight_pairs["t5xxl"])
        pooled = self._embed(self.l_emb, token_weight_pairs["l"]).mean(dim=1)
        return cond, pooled


def build_tiny_clip(seed: int = 0):
    """A real ``comfy.sd.CLIP`` (Flux tokenizer, tiny encoder): works with CLIPTextEncode,
    CLIPTextEncodeFlux, FluxGuidance and ConditioningZeroOut."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux

    class _Encoder(TinyTextEncoder):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, model_options=model_options, seed=seed)

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, _Encoder)
    return comfy.sd.CLIP(target=target, embedding_directory=None)


# --------------------------------------------------------------------------- VAE


def tiny_vae_state_dict(seed: int = 0) -> dict:
    """State dict of a TAESD-architecture VAE with 16 latent channels (taef1 layout)."""
    import comfy.taesd.taesd

    m = comfy.taesd.taesd.TAESD(latent_channels=LATENT_CHANNELS)
    init_module_(m, seed, gain=1.0)
    sd = {k: v.detach().clone().float() for k, v in m.state_dict().items()}
    # centre decoded images on mid-grey so they are neither all black nor all white
    last = max((k for k in sd if k.startswith("taesd_decoder.") and k.endswith(".bias")),
               key=lambda k: int(k.split(".")[1]))
    sd[last] = sd[last] + 0.5
    sd["vae_scale"] = torch.tensor(0.3611)
    sd["vae_shift"] = torch.tensor(0.1159)
    return sd


def build_tiny_vae(seed: int = 0):
    """A real ``comfy.sd.VAE`` (TAESD architecture, 16 latent channels, downscale 8)."""
    import comfy.sd

    vae = comfy.sd.VAE(sd=tiny_vae_state_dict(seed))
    if vae.latent_channels != LATENT_CHANNELS:
        raise RuntimeError(f"tiny VAE has {vae.latent_channels} latent channels, expected {LATENT_CHANNELS}")
    return vae


# --------------------------------------------------------------------------- LoRA


def tiny_dit360_lora_state_dict(
    seed: int = 0, rank: int = 4, depth: int = 1, depth_single_blocks: int = 1, scale: float = 0.05
) -> dict:
    """LoRA for the tiny Flux in DiT360's PEFT format (diffusers Flux module names).

    Keys: ``transformer.transformer_blocks.<i>.attn.{to_q,to_k,to_v,to_out.0}.lora_{A,B}.weight``
    and ``transformer.single_transformer_blocks.<i>.attn.{to_q,to_k,to_v}.lora_{A,B}.weight``.
    """
    g = _generator(seed)
    sd: dict[str, torch.Tensor] = {}
    h = HIDDEN_SIZE

    def add(module: str):
        sd[f"transformer.{module}.lora_A.weight"] = torch.randn((rank, h), generator=g) / math.sqrt(h)
        sd[f"transformer.{module}.lora_B.weight"] = torch.randn((h, rank), generator=g) * scale

    for i in range(depth):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            add(f"transformer_blocks.{i}.attn.{proj}")
    for i in range(depth_single_blocks):
        for proj in ("to_q", "to_k", "to_v"):
            add(f"single_transformer_blocks.{i}.attn.{proj}")
    return sd


def save_tiny_dit360_lora(path, seed: int = 0, rank: int = 4, **kwargs) -> str:
    """Write :func:`tiny_dit360_lora_state_dict` as safetensors to ``path``; returns the path."""
    import os

    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
    sd = {k: v.contiguous() for k, v in tiny_dit360_lora_state_dict(seed, rank, **kwargs).items()}
    save_file(sd, str(path), metadata={"format": "pt", "pano360_test": "tiny-dit360-lora"})
    return str(path)
