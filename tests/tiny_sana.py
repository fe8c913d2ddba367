"""Tiny random Sana models for tests (no downloads; a folder builds and saves in about a second).

``build_tiny_sana_pipeline(seed, patch_size, version)`` returns a :class:`diffusers.SanaPipeline` of

- a tiny ``SanaTransformer2DModel`` (2 blocks, 2 heads of 8 = width 16, cross-attention 2 x 8,
  caption channels 32, patch size 1 or 2; ``version="1.5"`` adds Sana 1.5's ``qk_norm``),
- a tiny ``AutoencoderDC`` (DC-AE layout: ResBlock + two EfficientViT blocks with the 5x5
  multiscale depthwise convs, 4 latent channels). Its downscale factor is
  ``2 ** (len(encoder_block_out_channels) - 1)`` = 4, read from the config like ``SanaPipeline``
  does (:func:`vae_factor`), never assumed,
- a tiny ``Gemma2Model`` text encoder (hidden 32) with a ``GemmaTokenizer`` made in code
  (character-level BPE with byte fallback over printable ASCII, so every prompt tokenizes and
  different prompts give different embeddings),
- the scheduler of the real model: Sana 1.5's ``FlowMatchEulerDiscreteScheduler`` (shift 3.0) or,
  for ``version="1.0"``, Sana 1.0's ``DPMSolverMultistepScheduler`` (flow prediction, flow sigmas,
  flow shift 3.0).

``save_tiny_sana(path, ...)`` writes it with ``save_pretrained`` (safetensors only) so it loads with
``from_pretrained(path)`` exactly like ``Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers``.
``save_tiny_single_file(path, ...)`` writes the transformer alone as one ``.safetensors`` file
(diffusers key names, the transformer config as JSON under the safetensors metadata key
``config``) next to which the text encoder and VAE come from a folder, the layout of ComfyUI
users (``models/diffusion_models/*.safetensors``).

Weights are random but deterministic per ``seed``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

TINY_FACE = 32  # face size (px) the tests use: 8x8 latent tokens with the /4 VAE

TEXT_HIDDEN = 32

SANA15_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
SANA10_SCHEDULER = dict(
    num_train_timesteps=1000,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    flow_shift=3.0,
    algorithm_type="dpmsolver++",
    solver_order=2,
    final_sigmas_type="zero",
)


def transformer_config(patch_size: int = 1, version: str = "1.5", num_layers: int = 2) -> dict:
    """Config of the tiny transformer (Sana's layout, tiny sizes; cross dim = heads x head dim)."""
    if patch_size not in (1, 2):
        raise ValueError(f"patch_size: 1 or 2, got {patch_size}")
    return dict(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=TEXT_HIDDEN,
        mlp_ratio=2.5,
        sample_size=TINY_FACE // 4 // patch_size,
        patch_size=patch_size,
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        qk_norm="rms_norm_across_heads" if version == "1.5" else None,
    )


VAE_CONFIG = dict(
    in_channels=3,
    latent_channels=4,
    attention_head_dim=8,
    encoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(8, 16, 16),
    decoder_block_out_channels=(8, 16, 16),
    encoder_layers_per_block=(1, 1, 1),
    decoder_layers_per_block=(1, 1, 1),
    encoder_qkv_multiscales=((), (5,), (5,)),
    decoder_qkv_multiscales=((), (5,), (5,)),
    upsample_block_type="interpolate",
    downsample_block_type="Conv",
    decoder_norm_types=("batch_norm", "rms_norm", "rms_norm"),
    decoder_act_fns=("relu", "silu", "silu"),
    scaling_factor=0.41407,
)


def vae_factor(vae) -> int:
    """The DC-AE's downscale factor from its config (as ``SanaPipeline.vae_scale_factor``)."""
    return 2 ** (len(vae.config.encoder_block_out_channels) - 1)


def build_tokenizer():
    """A Gemma tokenizer made in code: BPE over printable ASCII (+ ``▁``, byte fallback), with
    merges learned here from Sana's complex human instruction, so that the ~700-character
    instruction every prompt carries is ~150 tokens, not ~700 (the tiny Gemma-2 attends eagerly)."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    alphabet = ["▁"] + [chr(c) for c in range(33, 127)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_previous")
    trainer = trainers.BpeTrainer(vocab_size=len(special) + len(alphabet) + 400, special_tokens=special,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(_instruction_text(), trainer=trainer)
    data = json.loads(tok.to_str())["model"]
    vocab = dict(data["vocab"])
    for b in range(256):  # byte fallback tokens: anything else still encodes
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["merges"]]
    fast = getattr(transformers, "GemmaTokenizerFast", None)
    if fast is None:  # transformers 5: GemmaTokenizer is the tokenizers-backed one, built from vocab + merges
        return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, model_max_length=4096)
    # transformers 4.x: GemmaTokenizer is the sentencepiece one (needs a vocab_file); give the fast one
    # the same tokenizers object transformers 5 builds (BPE with byte fallback, " " -> "▁")
    from tokenizers import decoders

    obj = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token="<unk>", byte_fallback=True))
    obj.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    obj.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    obj.normalizer = normalizers.Replace(" ", "▁")
    return fast(tokenizer_object=obj, add_bos_token=True, model_max_length=4096, unk_token="<unk>",
                bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", mask_token="<mask>")


def _instruction_text() -> list[str]:
    import inspect

    from diffusers import SanaPipeline

    lines = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    return ["\n".join(lines)]


def build_text_encoder(vocab_size: int, seed: int = 0):
    from transformers import Gemma2Config, Gemma2Model

    cfg = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(seed)
    return Gemma2Model(cfg).eval()


def build_tiny_transformer(seed: int = 0, patch_size: int = 1, version: str = "1.5", num_layers: int = 2):
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    return SanaTransformer2DModel(**transformer_config(patch_size, version, num_layers)).eval()


def build_tiny_vae(seed: int = 0):
    from diffusers import AutoencoderDC

    torch.manual_seed(seed + 1)
    return AutoencoderDC(**VAE_CONFIG).eval()


def build_scheduler(version: str = "1.5"):
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    if version == "1.0":
        return DPMSolverMultistepScheduler(**SANA10_SCHEDULER)
    return FlowMatchEulerDiscreteScheduler(**SANA15_SCHEDULER)


def build_tiny_sana_pipeline(seed: int = 0, patch_size: int = 1, version: str = "1.5"):
    """A tiny random :class:`diffusers.SanaPipeline` (float32, CPU), deterministic per ``seed``."""
    from diffusers import SanaPipeline

    if version not in ("1.0", "1.5"):
        raise ValueError(f"version: '1.0' or '1.5', got {version!r}")
    tok = build_tokenizer()
    return SanaPipeline(
        tokenizer=tok,
        text_encoder=build_text_encoder(len(tok), seed + 2),
        vae=build_tiny_vae(seed),
        transformer=build_tiny_transformer(seed, patch_size, version),
        scheduler=build_scheduler(version),
    )


def save_tiny_sana(path: str | os.PathLike, seed: int = 0, patch_size: int = 1, version: str = "1.5") -> Path:
    """Build the tiny pipeline and ``save_pretrained`` it (safetensors) into ``path``."""
    path = Path(path)
    build_tiny_sana_pipeline(seed, patch_size, version).save_pretrained(str(path), safe_serialization=True)
    return path


def save_tiny_single_file(path: str | os.PathLike, seed: int = 0, patch_size: int = 1, version: str = "1.5",
                          with_config: bool = True) -> Path:
    """The tiny transformer as one ``.safetensors`` file (its config in the metadata unless told not)."""
    from safetensors.torch import save_file

    tr = build_tiny_transformer(seed, patch_size, version)
    meta = {"config": json.dumps(dict(tr.config))} if with_config else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tr.state_dict().items()}, str(path), metadata=meta)
    return path


def save_all(root: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Every tiny Sana layout the tests use, under ``root``: folders ``sana15_p1``, ``sana15_p2``,
    ``sana10_p1`` and the single file ``sana15_p1_transformer.safetensors`` (same weights as
    ``sana15_p1``'s transformer). Returns ``{name: path}``."""
    root = Path(root)
    out = {
        "sana15_p1": save_tiny_sana(root / "sana15_p1", seed, 1, "1.5"),
        "sana15_p2": save_tiny_sana(root / "sana15_p2", seed, 2, "1.5"),
        "sana10_p1": save_tiny_sana(root / "sana10_p1", seed, 1, "1.0"),
    }
    out["single_file"] = save_tiny_single_file(root / "sana15_p1_transformer.safetensors", seed, 1, "1.5")
    return out
