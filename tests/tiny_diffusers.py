"""Tiny random diffusers Flux pipeline for tests (no downloads, builds in about a second).

``build_tiny_flux_pipeline(seed)`` returns a :class:`diffusers.FluxPipeline` made of

- a tiny ``FluxTransformer2DModel`` (patch 1, 64 input channels = 16 latent channels x 2x2
  packing, 1 double + 1 single block, 2 heads of 32, RoPE axes (8, 12, 12), guidance embeds):
  the architecture of the ComfyUI test builder (``tests/comfy_test_nodes/tiny_models.py``, whose
  dimensions are read here), so weights and LoRAs carry over between the two,
- a tiny ``AutoencoderKL`` (16 latent channels, 4 blocks -> downsampling by 8, FLUX's
  scaling/shift factors, no quant convs),
- a tiny ``CLIPTextModel`` (hidden 32) and ``T5EncoderModel`` (d_model 32),
- real CLIP and T5 tokenizers copied from ComfyUI (``comfy/sd1_tokenizer``,
  ``comfy/text_encoders/t5_tokenizer``) when a ComfyUI folder is found; otherwise small
  tokenizers built offline here (word-level T5, byte-level CLIP vocabulary),
- FLUX.1-dev's ``FlowMatchEulerDiscreteScheduler`` configuration (dynamic shifting).

``save_tiny_flux_pipeline(path, seed)`` writes it with ``save_pretrained`` (safetensors) so it
loads with ``from_pretrained(path)`` exactly like a real FLUX.1-dev folder.

Weights are random but deterministic per ``seed``. Reused by the DiT360, editing and pole
tests.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _comfy_tiny_dims():
    """tests/comfy_test_nodes/tiny_models.py (plain module: torch only at import time)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_pano360_tiny_dims", Path(__file__).resolve().parent / "comfy_test_nodes" / "tiny_models.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_DIMS = _comfy_tiny_dims()

# Transformer configuration of the tiny model (FLUX.1-dev's layout, tiny sizes), the same
# architecture as the ComfyUI tiny Flux (tiny_flux_unet_config("dev")).
TINY_TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=4 * _DIMS.LATENT_CHANNELS,
    out_channels=None,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=_DIMS.HIDDEN_SIZE // _DIMS.NUM_HEADS,
    num_attention_heads=_DIMS.NUM_HEADS,
    joint_attention_dim=_DIMS.CONTEXT_DIM,
    pooled_projection_dim=_DIMS.VEC_DIM,
    guidance_embeds=True,
    axes_dims_rope=tuple(_DIMS.AXES_DIM),
)
assert _DIMS.MLP_RATIO == 4.0, "diffusers' Flux blocks have MLP ratio 4"

FLUX_SCHEDULER_CONFIG = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)


def find_comfy_tokenizers() -> tuple[Path, Path] | None:
    """(clip_dir, t5_dir) of ComfyUI's shipped tokenizer files, or None when not found."""
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]))
    candidates += [ROOT / ".comfy" / "ComfyUI", ROOT.parents[1] if ROOT.parent.name == "custom_nodes" else None]
    for c in candidates:
        if c is None:
            continue
        clip = c / "comfy" / "sd1_tokenizer"
        t5 = c / "comfy" / "text_encoders" / "t5_tokenizer"
        if (clip / "vocab.json").is_file() and (clip / "merges.txt").is_file() and (t5 / "tokenizer.json").is_file():
            return clip, t5
    return None


def _build_offline_tokenizers(folder: Path):
    """Small CLIP and T5 tokenizers built without any download (used when ComfyUI is absent)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTokenizer, PreTrainedTokenizerFast

    # CLIP: byte-level BPE over single characters (every lower-case word still tokenizes).
    clip_dir = folder / "_clip_src"
    clip_dir.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = {}
    for ch in chars:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (clip_dir / "vocab.json").write_text(json.dumps(vocab))
    (clip_dir / "merges.txt").write_text("#version: 0.2\n")
    clip_tok = CLIPTokenizer(str(clip_dir / "vocab.json"), str(clip_dir / "merges.txt"), model_max_length=77)

    words = ["<pad>", "</s>", "<unk>"] + [chr(c) for c in range(97, 123)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    t5_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    shutil.rmtree(clip_dir, ignore_errors=True)
    return clip_tok, t5_tok


def build_tiny_flux_pipeline(seed: int = 0, tokenizers_dir: str | os.PathLike | None = None):
    """Build a tiny random :class:`diffusers.FluxPipeline` (float32, CPU), deterministic per seed."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    found = find_comfy_tokenizers()
    if found is not None:
        from transformers import CLIPTokenizer, T5TokenizerFast

        clip_tok = CLIPTokenizer.from_pretrained(str(found[0]), model_max_length=77)
        t5_tok = T5TokenizerFast.from_pretrained(str(found[1]), model_max_length=512)
        clip_vocab, t5_vocab = 49408, 32128
    else:
        tmp = Path(tokenizers_dir) if tokenizers_dir else Path(os.environ.get("TMPDIR", "/tmp")) / "pano360_tiny_tok"
        clip_tok, t5_tok = _build_offline_tokenizers(tmp)
        clip_vocab, t5_vocab = len(clip_tok), len(t5_tok)

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**TINY_TRANSFORMER_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    torch.manual_seed(seed + 2)
    clip_cfg = CLIPTextConfig(
        vocab_size=clip_vocab,
        hidden_size=_DIMS.VEC_DIM,  # FluxPipeline pools CLIP's hidden state: pooled_projection_dim
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=clip_tok.bos_token_id,
        eos_token_id=clip_tok.eos_token_id,
        pad_token_id=clip_tok.pad_token_id,
        hidden_act="gelu",
    )
    text_encoder = CLIPTextModel(clip_cfg)
    torch.manual_seed(seed + 3)
    t5_cfg = T5Config(
        vocab_size=t5_vocab,
        d_model=_DIMS.CONTEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=t5_tok.pad_token_id,
        eos_token_id=t5_tok.eos_token_id,
    )
    text_encoder_2 = T5EncoderModel(t5_cfg)
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    for m in (transformer, vae, text_encoder, text_encoder_2):
        m.eval()
    return pipe


def save_tiny_flux_pipeline(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build the tiny pipeline and ``save_pretrained`` it (safetensors) into ``path``."""
    path = Path(path)
    pipe = build_tiny_flux_pipeline(seed, tokenizers_dir=path.parent / f"{path.name}_tok")
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def make_peft_lora_file(
    path: str | os.PathLike,
    transformer,
    rank: int = 4,
    targets: tuple[str, ...] = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),
    prefix: str = "transformer.",
    seed: int = 0,
    scale: float = 0.5,
    alpha: float | None = None,
) -> Path:
    """Write a PEFT-format LoRA file like DiT360's ``adapter_model.safetensors``.

    Keys are ``<prefix><module>.lora_A.weight`` (``transformer.``: what DiT360's official conversion
    writes; ``base_model.model.``: a raw PEFT ``save_pretrained`` of the wrapped transformer) (rank x in) and ``.lora_B.weight`` (out x rank)
    for every transformer module whose name ends with one of ``targets`` (DiT360 targets the
    attention projections ``attn.to_q/to_k/to_v/to_out.0``). Both factors are random (a
    trained LoRA has non-zero B), so the adapter changes the output. When ``alpha`` is given
    an ``adapter_config.json`` with ``r`` and ``lora_alpha`` is written next to the file.
    """
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in transformer.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            sd[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, mod.in_features, generator=g) * scale
            sd[f"{prefix}{name}.lora_B.weight"] = torch.randn(mod.out_features, rank, generator=g) * scale
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    if alpha is not None:
        cfg = {
            "peft_type": "LORA",
            "r": rank,
            "lora_alpha": alpha,
            "target_modules": list({t.split(".")[-1] if not t.endswith(".0") else t for t in targets}),
        }
        (path.parent / "adapter_config.json").write_text(json.dumps(cfg))
    return path
