"""Tiny random DiTs of the families the panorama patch supports, built with ComfyUI's own classes
(``model_config_from_unet_config`` -> ``get_model`` -> ``ModelPatcher``) and explicit init
(ComfyUI's ops skip init). Test-only; configs mirror what ``comfy.model_detection`` derives
from real checkpoints, with tiny widths/depths.

``build(family, seed)`` -> (MODEL, cond_factory): ``cond_factory(batch, seed)`` returns a ComfyUI
conditioning list with the extra inputs that family's ``extra_conds`` needs.
"""

from __future__ import annotations

import torch

try:  # inside the test node pack (server) / top-level module (in-process tests)
    from .tiny_models import _generator, init_module_
except ImportError:
    from tiny_models import _generator, init_module_

H = 32  # hidden size
CTX = 16  # text feature width

CONFIGS: dict[str, dict] = {
    "Flux2": {
        "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
        "context_in_dim": CTX, "hidden_size": H, "mlp_ratio": 3.0, "num_heads": 2, "depth": 1,
        "depth_single_blocks": 1, "axes_dim": [4, 4, 4, 4], "theta": 2000, "patch_size": 1, "qkv_bias": False,
        "guidance_embed": True, "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
        "default_ref_method": "index", "ref_index_scale": 10.0,
    },
    "Chroma": {
        "image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": CTX, "hidden_size": H,
        "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [4, 6, 6],
        "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": H, "hidden_dim": 32,
        "n_layers": 1,
    },
    "QwenImage": {
        "image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 1, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": CTX, "axes_dims_rope": (4, 6, 6),
    },
    "Lumina2": {
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": H, "cap_feat_dim": CTX, "n_layers": 1,
        "n_refiner_layers": 1, "qk_norm": True, "n_heads": 2, "n_kv_heads": 2, "axes_dims": [4, 6, 6],
        "axes_lens": [300, 64, 64], "rope_theta": 10000.0, "ffn_dim_multiplier": 1.0, "multiple_of": 16,
    },
    "WAN21": {
        "image_model": "wan2.1", "model_type": "t2v", "dim": H, "out_dim": 16, "num_heads": 2, "ffn_dim": 64,
        "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 32, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16, "text_dim": CTX,
    },
    "WAN22": {
        "image_model": "wan2.1", "model_type": "t2v", "dim": H, "out_dim": 48, "num_heads": 2, "ffn_dim": 64,
        "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 32, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 48, "text_dim": CTX,
    },
    "HiDream": {
        "image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 1,
        "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2, "caption_channels": [CTX, CTX],
        "text_emb_dim": CTX, "num_routed_experts": 2, "num_activated_experts": 1, "axes_dims_rope": [8, 4, 4],
        "max_resolution": [64, 64], "llama_layers": [0, 1],
    },
    "HunyuanImage21": {
        "image_model": "hunyuan_video", "in_channels": 64, "out_channels": 64, "patch_size": [1, 1],
        "vec_in_dim": None, "axes_dim": [8, 8], "meanflow": False, "context_in_dim": CTX, "hidden_size": H,
        "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "theta": 256, "qkv_bias": True,
        "byt5": False, "guidance_embed": False, "use_cond_type_embedding": False, "vision_in_dim": None,
    },
    # Wan 2.1 VACE (ComfyUI detects model_type "vace" from vace_patch_embedding): 96 = 2 x 16 latent + 64 mask ch
    "WAN21_Vace": {
        "image_model": "wan2.1", "model_type": "vace", "dim": H, "out_dim": 16, "num_heads": 2, "ffn_dim": 64,
        "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 32, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16, "text_dim": CTX, "vace_in_dim": 96, "vace_layers": 1,
    },
    # Wan 2.2 Fun Camera (model_type "camera_2.2", in_dim 36 = 16 latent + 20 concat ch): model_base WAN21_Camera
    "WAN21_Camera": {
        "image_model": "wan2.1", "model_type": "camera_2.2", "dim": H, "out_dim": 16, "num_heads": 2, "ffn_dim": 64,
        "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 32, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 36, "text_dim": CTX,
    },
    # Chroma Radiance (pixel space): Chroma's DiT on 16 x 16 px RGB patches + a per-patch NeRF head (conv final
    # layer: a 3 x 3 conv over the reassembled image, as ComfyUI detects from nerf_final_layer_conv keys)
    "ChromaRadiance": {
        "image_model": "chroma_radiance", "in_channels": 3, "out_channels": 3, "context_in_dim": CTX,
        "hidden_size": H, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [4, 6, 6],
        "theta": 10000, "patch_size": 16, "qkv_bias": True, "in_dim": 64, "out_dim": H, "hidden_dim": 32, "n_layers": 1,
        "nerf_hidden_size": 16, "nerf_mlp_ratio": 2, "nerf_depth": 1, "nerf_max_freqs": 4, "nerf_tile_size": 8,
        "nerf_final_head_type": "conv", "nerf_embedder_dtype": torch.float32,
    },
    # HunyuanImage 2.1 refiner (patch [1, 1, 1], 3-axis RoPE): 64-channel one-frame latent + 64 c_concat channels
    "HunyuanImage21Refiner": {
        "image_model": "hunyuan_video", "in_channels": 128, "out_channels": 64, "patch_size": [1, 1, 1],
        "vec_in_dim": None, "axes_dim": [4, 6, 6], "meanflow": True, "context_in_dim": CTX, "hidden_size": H,
        "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "theta": 256, "qkv_bias": True,
        "byt5": False, "guidance_embed": True, "use_cond_type_embedding": False, "vision_in_dim": None,
    },
    # the other Wan variants (model_base WAN21_HuMo, WAN22_S2V, WAN22_Animate; ComfyUI's fixed-size audio /
    # motion / face encoders keep their real widths). HuMo 17B style: in_dim 36 = 16 latent + 20 concat channels
    "WAN21_HuMo": {
        "image_model": "wan2.1", "model_type": "humo", "dim": H, "out_dim": 16, "num_heads": 2, "ffn_dim": 64,
        "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 32, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 36, "text_dim": CTX,
    },
    "WAN22_S2V": {
        "image_model": "wan2.1", "model_type": "s2v", "dim": H, "out_dim": 16, "num_heads": 2, "ffn_dim": 64,
        "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 32, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16, "text_dim": CTX,
    },
    # Animate: i2v, in_dim 36 = 16 latent + 4 mask + 16 reference channels; 5 blocks = one face fuser block
    "WAN22_Animate": {
        "image_model": "wan2.1", "model_type": "animate", "dim": H, "out_dim": 16, "num_heads": 2, "ffn_dim": 64,
        "num_layers": 5, "patch_size": (1, 2, 2), "freq_dim": 32, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 36, "text_dim": CTX,
    },
}
"""family (ComfyUI model_base class name) -> tiny unet_config."""

LATENT_CHANNELS = {"WAN22": 48, "HiDream": 16, "Flux2": 128, "Chroma": 16, "QwenImage": 16, "Lumina2": 16, "WAN21": 16, "HunyuanImage21": 64}
LATENT_CHANNELS.update({"WAN21_Vace": 16, "WAN21_Camera": 16})
LATENT_CHANNELS.update({"ChromaRadiance": 3, "HunyuanImage21Refiner": 64})
VIDEO = {"WAN21", "WAN22", "QwenImage", "WAN21_Vace", "WAN21_Camera", "HunyuanImage21Refiner"}
ONE_FRAME = {"QwenImage", "HunyuanImage21Refiner"}  # image models with a 5-D latent
PIXEL_SCALE = {"ChromaRadiance": 4}  # pixel-space: default size x 4 (32 x 128 px: 2 x 8 tokens of 16 x 16 px)
REFINER_VAE_CHANNELS = 32  # the refiner's LATENT (VAE space); its latent format folds frame pairs into 64 channels
WAN_VARIANTS = ("WAN21_HuMo", "WAN22_S2V", "WAN22_Animate")
LATENT_CHANNELS.update(dict.fromkeys(WAN_VARIANTS, 16))
VIDEO.update(WAN_VARIANTS)


def build(family: str, seed: int = 0):
    """A real ComfyUI MODEL (ModelPatcher) of ``family`` with tiny random float32 weights."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher

    cfg = dict(CONFIGS[family])
    model_config = comfy.model_detection.model_config_from_unet_config(cfg)
    if model_config is None:
        raise RuntimeError(f"ComfyUI did not recognise the tiny {family} config")
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device=comfy.model_management.unet_offload_device())
    if type(model).__name__ != family:
        raise RuntimeError(f"expected a {family} model, got {type(model).__name__}")
    init_module_(model.diffusion_model, seed)
    model.diffusion_model.to(dtype=torch.float32)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def cond(family: str, seed: int = 0, tokens: int = 5) -> list:
    """A ComfyUI conditioning list for ``family`` (random text features)."""
    g = _generator(seed)
    ctx = torch.randn(1, tokens, CTX, generator=g)
    extra: dict = {}
    if family == "Lumina2":
        extra["attention_mask"] = torch.ones(1, tokens, dtype=torch.long)
    if family in ("Flux2", "Chroma", "ChromaRadiance"):
        extra["pooled_output"] = None
    if family == "Flux2":
        extra["guidance"] = 3.0
    if family == "HiDream":
        extra["pooled_output"] = torch.randn(1, CTX, generator=g)
        extra["conditioning_llama3"] = torch.randn(1, 2, tokens, CTX, generator=g)
    if family == "HunyuanImage21Refiner":  # the image it refines (what HunyuanRefinerLatent sets), VAE space
        extra["concat_latent_image"] = torch.randn(1, REFINER_VAE_CHANNELS, 1, 8, 32, generator=g)
        extra["noise_augmentation"] = 0.1
    return [[ctx, extra]]


def latent_shape(family: str, batch: int = 1, h: int | None = None, w: int | None = None) -> tuple[int, ...]:
    """The shape the model samples in (noise, ``x`` of every model call); ``h``, ``w`` default to 8 x 32, times
    :data:`PIXEL_SCALE` for pixel-space models."""
    c = LATENT_CHANNELS[family]
    s = PIXEL_SCALE.get(family, 1)
    h, w = 8 * s if h is None else h, 32 * s if w is None else w
    frames = 1 if family in ONE_FRAME else 2  # Qwen-Image, HunyuanImage 2.1 refiner: one-frame 5-D latent
    return (batch, c, frames, h, w) if family in VIDEO else (batch, c, h, w)


def comfy_latent_shape(family: str, batch: int = 1) -> tuple[int, ...]:
    """The shape of the LATENT a KSampler takes and returns for ``family``: :func:`latent_shape`, except for the
    HunyuanImage 2.1 refiner (VAE space: 32 channels; an empty one is widened to 64 by ComfyUI)."""
    shape = latent_shape(family, batch)
    if family == "HunyuanImage21Refiner":
        return (shape[0], REFINER_VAE_CHANNELS, *shape[2:])
    return shape


# --------------------------------------------------------------------------- ControlNets for these families


def build_qwen_image_controlnet(seed: int = 0):
    """A real ComfyUI Qwen-Image InstantX ControlNet (``comfy.controlnet.ControlNet`` around
    ``QwenImageControlNetModel``, as ``load_controlnet_qwen_instantx`` builds it) with tiny random
    weights matching the tiny Qwen-Image; its hint is VAE-encoded (needs a VAE when applied)."""
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.ldm.qwen_image.controlnet
    import comfy.model_management
    import comfy.ops

    m = comfy.ldm.qwen_image.controlnet.QwenImageControlNetModel(
        extra_condition_channels=0, operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32,
        **CONFIGS["QwenImage"])
    init_module_(m, seed)
    m.to(dtype=torch.float32)
    return comfy.controlnet.ControlNet(m, compression_ratio=1, latent_format=comfy.latent_formats.Wan21(),
                                       load_device=comfy.model_management.get_torch_device(), extra_conds=[])


def build_qwen_image_diffsynth_patch(seed: int = 0):
    """A real ComfyUI MODEL_PATCH (what ``ModelPatchLoader`` returns for a DiffSynth Qwen-Image
    blockwise ControlNet) with tiny random weights matching the tiny Qwen-Image."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops
    from comfy_extras.nodes_model_patch import QwenImageBlockWiseControlNet

    q = CONFIGS["QwenImage"]
    m = QwenImageBlockWiseControlNet(num_layers=q["num_layers"], in_dim=q["in_channels"],
                                     dim=q["num_attention_heads"] * q["attention_head_dim"], device="cpu",
                                     dtype=torch.float32, operations=comfy.ops.manual_cast)
    init_module_(m, seed)
    m.to(dtype=torch.float32)
    return comfy.model_patcher.ModelPatcher(m, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_chroma_flux_controlnet(seed: int = 0):
    """A real ComfyUI Flux ControlNet (XLabs style: pixel hint, ``ControlNetFlux``) with the tiny Chroma's
    widths, as a FLUX.1 ControlNet is applied to Chroma (same hidden size and token layout)."""
    import comfy.controlnet
    import comfy.ldm.flux.controlnet
    import comfy.model_management
    import comfy.ops

    c = CONFIGS["Chroma"]
    m = comfy.ldm.flux.controlnet.ControlNetFlux(
        latent_input=False, in_channels=16, out_channels=16, vec_in_dim=CTX, context_in_dim=CTX,
        hidden_size=c["hidden_size"], mlp_ratio=c["mlp_ratio"], num_heads=c["num_heads"], depth=c["depth"],
        depth_single_blocks=c["depth_single_blocks"], axes_dim=c["axes_dim"], theta=c["theta"], patch_size=2,
        qkv_bias=True, guidance_embed=False, operations=comfy.ops.disable_weight_init, device="cpu",
        dtype=torch.float32)
    init_module_(m, seed)
    m.to(dtype=torch.float32)
    return comfy.controlnet.ControlNet(m, load_device=comfy.model_management.get_torch_device(), extra_conds=["y"])
