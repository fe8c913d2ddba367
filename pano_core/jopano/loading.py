"""Loading Sana for JoPano: diffusers folders, hub ids, or a single-file transformer + text encoder + VAE.

- :func:`load_sana_pipeline`: a diffusers ``SanaPipeline`` (Sana 1.0 / 1.5 layout) from a local
  folder or a hub id, or from a single ``.safetensors`` transformer file plus a text-encoder
  source and a VAE source (folders: a whole Sana diffusers folder, or the component's own
  folder). Weights load from safetensors only. Every missing component is named.
- :func:`read_single_file_transformer`: a ``SanaTransformer2DModel`` from one ``.safetensors``
  file in diffusers naming or in the original Sana naming (converted with diffusers' own
  converter), its configuration from the file's metadata (key ``config``), a given config, or
  inferred from the tensor shapes for the published Sana sizes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..diffusion.loading import load_component, load_pipeline, looks_like_repo_id
from ..errors import PanoInputError

__all__ = [
    "DEFAULT_MODEL",
    "SANA_COMPONENTS",
    "WEIGHT_SUFFIXES",
    "KNOWN_TRANSFORMERS",
    "check_sana_folder",
    "infer_transformer_config",
    "read_single_file_transformer",
    "load_sana_pipeline",
]

DEFAULT_MODEL = "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers"
SANA_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf")
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# Published Sana transformer sizes: (width, layers, qk_norm) -> the config entries shapes cannot tell.
_SANA_BASE = dict(in_channels=32, out_channels=32, attention_head_dim=32, caption_channels=2304, mlp_ratio=2.5,
                  sample_size=32, patch_size=1, attention_bias=False, norm_elementwise_affine=False, norm_eps=1e-6)
KNOWN_TRANSFORMERS = {
    (2240, 20, False): dict(_SANA_BASE, num_attention_heads=70, num_layers=20, num_cross_attention_heads=20,
                            cross_attention_head_dim=112, cross_attention_dim=2240),  # Sana 1.0 1.6B
    (2240, 20, True): dict(_SANA_BASE, num_attention_heads=70, num_layers=20, num_cross_attention_heads=20,
                           cross_attention_head_dim=112, cross_attention_dim=2240,
                           qk_norm="rms_norm_across_heads"),  # Sana 1.5 1.6B
    (2240, 60, True): dict(_SANA_BASE, num_attention_heads=70, num_layers=60, num_cross_attention_heads=20,
                           cross_attention_head_dim=112, cross_attention_dim=2240,
                           qk_norm="rms_norm_across_heads"),  # Sana 1.5 4.8B
    (1152, 28, False): dict(_SANA_BASE, num_attention_heads=36, num_layers=28, num_cross_attention_heads=16,
                            cross_attention_head_dim=72, cross_attention_dim=1152),  # Sana 0.6B
}

# Sana 1.5's scheduler (used when a single-file model comes without a scheduler folder)
SANA15_SCHEDULER = ("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=3.0))


def _weights_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def _check_weights(folder: Path, what: str) -> None:
    files = _weights_in(folder)
    safe = [p for p in files if p.suffix == ".safetensors"]
    if safe:
        return
    pickles = [p.name for p in files if p.suffix in _PICKLES]
    if pickles:
        raise PanoInputError(
            f"{what}: {folder} holds only pickled weights ({', '.join(pickles)}); weights are loaded from "
            ".safetensors only (pickles can run code): convert them first"
        )
    raise PanoInputError(f"{what}: {folder} has no .safetensors weights")


def check_sana_folder(folder: Path, name: str = "model") -> dict:
    """Check a Sana diffusers folder before loading: model_index.json and every component
    (weights as safetensors, configs, tokenizer files). Returns the model index."""
    idx_path = folder / "model_index.json"
    if not idx_path.is_file():
        raise PanoInputError(
            f"{name}: {folder} has no model_index.json; expected a Sana diffusers folder (model_index.json, "
            "transformer/, vae/, text_encoder/, tokenizer/, scheduler/) or a hub id like " + DEFAULT_MODEL
        )
    try:
        index = json.loads(idx_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PanoInputError(f"{name}: cannot read {idx_path}: {e}") from e
    if "Sana" not in str(index.get("_class_name", "")):
        raise PanoInputError(f"{name}: {folder} is a {index.get('_class_name')!r} folder; a Sana pipeline is required")
    for comp in SANA_COMPONENTS:
        sub = folder / comp
        if not sub.is_dir() or index.get(comp) in (None, [None, None]):
            raise PanoInputError(f"{name}: {folder} is missing the {comp} component ({comp}/)")
        if comp in ("transformer", "vae", "text_encoder"):
            if not (sub / "config.json").is_file():
                raise PanoInputError(f"{name}: {sub} has no config.json")
            _check_weights(sub, f"{name} ({comp})")
        elif comp == "scheduler":
            if not (sub / "scheduler_config.json").is_file():
                raise PanoInputError(f"{name}: {sub} has no scheduler_config.json")
        elif not any((sub / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise PanoInputError(f"{name}: {sub} holds no tokenizer files")
    return index


def _read_safetensors(path: Path, name: str) -> tuple[dict, dict]:
    from safetensors import safe_open

    if path.suffix.lower() != ".safetensors":
        raise PanoInputError(
            f"{name}: {path.name} is not a .safetensors file; weights are loaded from safetensors only "
            "(.ckpt/.pt/.pth/.bin are pickles that can run code): convert it first"
        )
    if not path.is_file():
        raise PanoInputError(f"{name}: file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise PanoInputError(f"{name}: cannot read {path} as safetensors: {e}") from e
    return sd, meta


def infer_transformer_config(sd: dict) -> dict | None:
    """Config of a published Sana size from a diffusers-named state dict (None if unknown)."""
    w = sd.get("patch_embed.proj.weight")
    if w is None:
        return None
    layers = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    qk = any(".attn1.norm_q." in k for k in sd)
    cfg = KNOWN_TRANSFORMERS.get((int(w.shape[0]), layers, qk))
    if cfg is None:
        return None
    cfg = dict(cfg)
    cfg["in_channels"] = int(w.shape[1])
    cfg["patch_size"] = int(w.shape[-1])
    cfg["out_channels"] = int(sd["proj_out.weight"].shape[0]) // cfg["patch_size"] ** 2
    cfg["caption_channels"] = int(sd["caption_projection.linear_1.weight"].shape[1])
    cfg["guidance_embeds"] = any(k.startswith("time_embed.guidance_embedder") for k in sd)
    return cfg


def _config_from(source: str | os.PathLike | dict, name: str) -> dict:
    if isinstance(source, dict):
        return dict(source)
    p = Path(source).expanduser()
    for cand in (p, p / "config.json", p / "transformer" / "config.json"):
        if cand.is_file():
            try:
                return json.loads(cand.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise PanoInputError(f"{name}: cannot read {cand}: {e}") from e
    raise PanoInputError(f"{name}: no transformer config.json found at {p}")


def read_single_file_transformer(path: str | os.PathLike, config: str | os.PathLike | dict | None = None,
                                 dtype: torch.dtype = torch.float32, name: str = "model"):
    """A ``SanaTransformer2DModel`` from one ``.safetensors`` file (see the module docstring)."""
    from diffusers import SanaTransformer2DModel

    path = Path(path).expanduser()
    sd, meta = _read_safetensors(path, name)
    if any(k.startswith(("blocks.", "model.diffusion_model.blocks.")) for k in sd):  # original Sana naming
        from diffusers.loaders.single_file_utils import convert_sana_transformer_to_diffusers

        try:
            sd = convert_sana_transformer_to_diffusers(dict(sd))
        except KeyError as e:
            raise PanoInputError(f"{name}: {path.name} looks like an original Sana checkpoint but lacks {e}") from e
    if "patch_embed.proj.weight" not in sd:
        raise PanoInputError(
            f"{name}: {path.name} is not a Sana transformer (no patch_embed.proj.weight / x_embedder.proj.weight)"
        )
    if config is not None:
        cfg = _config_from(config, "transformer_config")
    elif meta.get("config"):
        try:
            cfg = json.loads(meta["config"])
        except json.JSONDecodeError as e:
            raise PanoInputError(f"{name}: {path.name} has an unreadable config in its metadata: {e}") from e
    else:
        cfg = infer_transformer_config(sd)
        if cfg is None:
            w = sd["patch_embed.proj.weight"]
            raise PanoInputError(
                f"{name}: cannot tell the configuration of {path.name} (width {w.shape[0]}, not a published Sana "
                "size); pass transformer_config (a Sana diffusers folder or its transformer/config.json)"
            )
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    try:
        model = SanaTransformer2DModel(**cfg)
    except TypeError as e:
        raise PanoInputError(f"transformer_config: not a SanaTransformer2DModel config: {e}") from e
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise PanoInputError(
            f"{name}: {path.name} does not fit its configuration: {len(missing)} missing tensors "
            f"(e.g. {', '.join(missing[:3])}), {len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})"
        )
    return model.to(dtype).eval()


def _component_dir(source: str | os.PathLike, comp: str, name: str) -> Path:
    p = Path(source).expanduser()
    if not p.is_dir():
        raise PanoInputError(f"{name}: {p} is not a folder (expected a Sana diffusers folder or a {comp} folder)")
    if (p / comp).is_dir():
        return p / comp
    return p


def load_sana_pipeline(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    text_encoder: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    transformer_config: str | os.PathLike | dict | None = None,
    dtype: torch.dtype = torch.float32,
    text_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
):
    """A diffusers ``SanaPipeline`` (see the module docstring); ``text_dtype``/``vae_dtype``
    default to ``dtype``. Raises :class:`PanoInputError` naming what is missing or wrong."""
    from diffusers import AutoencoderDC, SanaPipeline, SanaTransformer2DModel
    from transformers import AutoModel, AutoTokenizer

    text_dtype = text_dtype or dtype
    vae_dtype = vae_dtype or dtype
    src = str(model)
    p = Path(src).expanduser()
    if p.is_file() or p.suffix.lower() in WEIGHT_SUFFIXES:
        # single-file transformer + text encoder + VAE
        if not p.is_file():
            raise PanoInputError(f"model: file not found: {p}")
        if text_encoder is None or vae is None:
            raise PanoInputError(
                f"model: {p.name} is a single transformer file; also give text_encoder (a Sana folder or a Gemma-2 "
                "folder with its tokenizer) and vae (a Sana folder or a DC-AE folder)"
            )
        tr = read_single_file_transformer(p, transformer_config, dtype=dtype, name="model")
        te_dir = _component_dir(text_encoder, "text_encoder", "text_encoder")
        tok_dir = te_dir.parent / "tokenizer" if (te_dir.parent / "tokenizer").is_dir() and te_dir.name == "text_encoder" else te_dir
        vae_dir = _component_dir(vae, "vae", "vae")
        for d, what in ((te_dir, "text_encoder"), (vae_dir, "vae")):
            if not (d / "config.json").is_file():
                raise PanoInputError(f"{what}: {d} has no config.json")
            _check_weights(d, what)
        try:
            tok = AutoTokenizer.from_pretrained(str(tok_dir))
        except (OSError, ValueError) as e:
            raise PanoInputError(f"text_encoder: cannot load a tokenizer from {tok_dir}: {e}") from e
        te = load_component(AutoModel, te_dir, dtype=text_dtype, name="text_encoder")
        dc = load_component(AutoencoderDC, vae_dir, dtype=vae_dtype, name="vae")
        sched = _scheduler_for(text_encoder, vae)
        return SanaPipeline(tokenizer=tok, text_encoder=te.eval(), vae=dc.eval(), transformer=tr, scheduler=sched)
    if p.exists():
        if not p.is_dir():
            raise PanoInputError(f"model: {p} is neither a folder nor a .safetensors file")
        check_sana_folder(p)
        src = str(p)
    elif not looks_like_repo_id(src):
        raise PanoInputError(f"model: {src} is neither an existing folder or .safetensors file nor a hub id like {DEFAULT_MODEL}")
    dt = dtype if text_dtype == dtype and vae_dtype == dtype else {"default": dtype, "text_encoder": text_dtype, "vae": vae_dtype}
    pipe = load_pipeline(SanaPipeline, src, dtype=dt, name="model", what="Sana pipeline", example=DEFAULT_MODEL,
                         layout_hint="model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/",
                         revision=revision, local_files_only=local_files_only)
    if not isinstance(pipe.transformer, SanaTransformer2DModel):
        raise PanoInputError(f"model: {src} holds a {type(pipe.transformer).__name__}; a Sana transformer is required")
    return pipe


def _scheduler_for(*sources):
    """The scheduler of a Sana folder among ``sources``, else Sana 1.5's."""
    import diffusers

    for s in sources:
        d = Path(s).expanduser() / "scheduler"
        if (d / "scheduler_config.json").is_file():
            cfg = json.loads((d / "scheduler_config.json").read_text())
            cls = getattr(diffusers, cfg.get("_class_name", ""), None)
            if cls is not None:
                return cls.from_pretrained(str(d))
    name, cfg = SANA15_SCHEDULER
    return getattr(diffusers, name)(**cfg)
