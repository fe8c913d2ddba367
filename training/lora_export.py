"""LoRA injection (PEFT) and export in DiT360's published format.

The export is a PEFT ``adapter_model.safetensors`` with keys
``transformer.<module>.lora_A.weight`` (rank x in) / ``.lora_B.weight`` (out x rank) and an
``adapter_config.json``. ComfyUI applies a LoRA's alpha only from ``<module>.alpha`` tensors (no
tensor: scale 1), while PEFT/diffusers read ``lora_alpha`` from the config; so the scale
``alpha / rank`` is folded into ``lora_B`` and the config says ``lora_alpha = r``. The file then
means the same in ``LoraLoaderModelOnly``, our checked loader and ``DiT360Pipeline``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from pano_core.errors import PanoInputError

__all__ = ["ADAPTER", "add_lora", "lora_parameters", "lora_state_dict", "export_lora"]

ADAPTER = "default"
_KEY = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B)\.(?P<adapter>[\w-]+)\.weight$")


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float, dropout: float, targets, init: str = "gaussian"):
    """Add a trainable PEFT LoRA adapter to a diffusers transformer (the base stays frozen).

    ``targets``: module-name suffixes (DiT360: ``attn.to_q``, ``attn.to_k``, ``attn.to_v``,
    ``attn.to_out.0``). ``init``: ``gaussian`` (DiT360) or ``default`` (PEFT's).
    Returns the ``LoraConfig``.
    """
    from peft import LoraConfig

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise PanoInputError(f"lora.rank: expected a positive integer, got {rank!r}")
    if not (0.0 <= float(dropout) < 1.0):
        raise PanoInputError(f"lora.dropout: expected 0 <= dropout < 1, got {dropout!r}")
    if init not in ("gaussian", "default"):
        raise PanoInputError(f"lora.init: expected gaussian or default, got {init!r}")
    targets = list(targets)
    names = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise PanoInputError(f"lora.targets: no module of the transformer ends with {', '.join(missing)}")
    transformer.requires_grad_(False)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules=targets,
        init_lora_weights="gaussian" if init == "gaussian" else True,
    )
    transformer.add_adapter(cfg, adapter_name=ADAPTER)
    for n, p in transformer.named_parameters():
        if ".lora_" in n:
            p.requires_grad_(True)
            p.data = p.data.float()  # train the adapter in fp32 whatever the base dtype
    return cfg


def lora_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The trainable LoRA parameters by name."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad and ".lora_" in n}


def lora_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{<module>.lora_A/B.weight: tensor}`` (adapter name removed) of the LoRA in ``module``."""
    out = {}
    for n, p in lora_parameters(module).items():
        m = _KEY.match(n)
        if m and m.group("adapter") == ADAPTER:
            out[f"{m.group('module')}.{m.group('which')}.weight"] = p.detach()
    return out


def export_lora(
    module: torch.nn.Module | dict[str, torch.Tensor],
    folder: str | os.PathLike,
    rank: int,
    alpha: float,
    targets,
    base_model: str | None = None,
    dtype: torch.dtype = torch.float32,
    metadata: dict | None = None,
) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` into ``folder``.

    ``module``: the transformer with the adapter, or a ``lora_state_dict`` result. Keys get the
    ``transformer.`` prefix; ``alpha / rank`` is folded into every ``lora_B`` and the config
    states ``lora_alpha = r`` (so every loader applies scale 1 to what the file holds).
    """
    sd = lora_state_dict(module) if isinstance(module, torch.nn.Module) else dict(module)
    if not sd:
        raise PanoInputError("export: the model holds no LoRA weights to export")
    scale = float(alpha) / float(rank)
    out = {}
    modules = set()
    for k, v in sd.items():
        t = v.detach().float().cpu()
        if k.endswith(".lora_B.weight"):
            t = t * scale
        modules.add(k.rsplit(".lora_", 1)[0])
        out[f"transformer.{k}"] = t.to(dtype).contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "adapter_model.safetensors.tmp"
    meta = {"format": "pt", "pano360": "dit360-lora", "rank": str(rank), "alpha_folded": str(alpha)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    save_file(out, str(tmp), metadata=meta)
    os.replace(tmp, folder / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": int(rank),
        "lora_alpha": int(rank),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "target_modules": sorted(set(targets)),
        "inference_mode": True,
        "modules_to_save": None,
        "pano360_note": f"trained with lora_alpha {alpha} and r {rank}; alpha/r = {scale:g} is folded into lora_B",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1))
    if not math.isfinite(scale):
        raise PanoInputError(f"lora.alpha / lora.rank is not finite ({alpha}/{rank})")
    return folder / "adapter_model.safetensors"
