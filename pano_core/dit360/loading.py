"""Loading FLUX.1 pipelines and DiT360's PEFT LoRA for the diffusers path.

- :func:`resolve_device` / :func:`resolve_dtype`: ``"auto"|"cpu"|"cuda"``, ``"bf16"|"fp16"|"fp32"``.
- :func:`load_flux_pipeline`: a diffusers ``FluxPipeline`` from a local folder (diffusers layout)
  or a hub id, safetensors weights only.
- :func:`resolve_lora_file`: a LoRA file from a local file, a folder or a hub id.
- :func:`convert_lora_state_dict`: PEFT / diffusers LoRA keys -> ``transformer.<module>.lora_A|B.weight``
  checked against the transformer's modules; counts matched keys.
- :func:`load_lora`: the above + ``FluxPipeline.load_lora_weights`` + a check that the adapter
  really landed in the transformer; raises :class:`PanoInputError` saying how many keys matched
  instead of silently ignoring a LoRA for another model.

Why the key conversion: DiT360 publishes a PEFT ``adapter_model.safetensors`` whose keys look
like ``base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight``. diffusers' Flux
loader treats any key containing ``base_model`` as a fal-Kontext LoRA in BFL naming and would
mis-convert it, and it ignores keys without the ``transformer.`` prefix. Converting the keys
here to diffusers' own naming makes the load exact and checkable.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import PanoInputError

DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"
DEFAULT_LORA = "Insta360-Research/DiT360-Panorama-Image-Generation"
DEFAULT_LORA_WEIGHT_NAME = "adapter_model.safetensors"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}
# Prefixes stripped from LoRA keys, in order (PEFT model wrapper, diffusers pipeline component).
_KEY_PREFIXES = ("base_model.model.", "transformer.")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B)(?:\.(?P<adapter>[\w-]+))?\.weight$")
_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")


def looks_like_repo_id(s: str) -> bool:
    """True for ``owner/name`` strings that are not an existing local path."""
    return bool(_REPO_ID.match(str(s))) and not Path(s).exists()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise PanoInputError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PanoInputError("device: cuda was requested but no CUDA GPU is available (use --device cpu or auto)")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: bfloat16 on CUDA, float32 elsewhere; else bf16, fp16 or fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    key = str(dtype).lower()
    if key not in _DTYPES:
        raise PanoInputError(f"dtype: expected bf16, fp16 or fp32, got {dtype!r}")
    return _DTYPES[key]


def load_flux_pipeline(
    model: str | os.PathLike = DEFAULT_MODEL,
    torch_dtype: torch.dtype = torch.bfloat16,
    revision: str | None = None,
    local_files_only: bool | None = None,
    **kwargs,
):
    """Load a diffusers ``FluxPipeline`` (FLUX.1-dev layout) from a local folder or a hub id.

    Weights are read from safetensors only (``use_safetensors=True``). Raises
    :class:`PanoInputError` for a missing folder, a folder that is not a diffusers Flux
    pipeline, or a hub id that cannot be fetched.
    """
    from diffusers import FluxPipeline, FluxTransformer2DModel

    src = str(model)
    p = Path(src).expanduser()
    if p.exists():
        if not p.is_dir():
            raise PanoInputError(
                f"model: {p} is a file; expected a folder in diffusers layout (model_index.json, transformer/, vae/, "
                "text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/) or a hub id"
            )
        if not (p / "model_index.json").is_file():
            raise PanoInputError(f"model: {p} has no model_index.json; expected a diffusers FLUX.1 folder or a hub id")
        src = str(p)
    elif not looks_like_repo_id(src):
        raise PanoInputError(f"model: {src} is neither an existing folder nor a hub id like {DEFAULT_MODEL}")
    try:  # diffusers >= 0.36 renamed torch_dtype to dtype
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

        dtype_kw = {"dtype": torch_dtype}
    except ImportError:
        dtype_kw = {"torch_dtype": torch_dtype}
    try:
        pipe = FluxPipeline.from_pretrained(
            src,
            **dtype_kw,
            use_safetensors=True,
            revision=revision,
            local_files_only=local_files_only,
            **kwargs,
        )
    except (OSError, ValueError) as e:
        raise PanoInputError(f"model: cannot load a FLUX.1 pipeline from {src!r}: {e}") from e
    if not isinstance(pipe.transformer, FluxTransformer2DModel):
        raise PanoInputError(
            f"model: {src} holds a {type(pipe.transformer).__name__}; a Flux transformer (FLUX.1) is required"
        )
    return pipe


def resolve_lora_file(
    lora: str | os.PathLike,
    weight_name: str | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> tuple[Path, dict | None]:
    """Find a LoRA ``.safetensors`` file and its optional PEFT ``adapter_config.json``.

    ``lora`` is a file, a folder (``weight_name``, default ``adapter_model.safetensors``) or a
    hub id (downloaded with ``huggingface_hub``). Returns ``(file, config or None)``.
    """
    name = weight_name or DEFAULT_LORA_WEIGHT_NAME
    src = str(lora)
    p = Path(src).expanduser()
    cfg_path: Path | None = None
    if p.is_file():
        f = p
        cfg_path = p.parent / "adapter_config.json"
    elif p.is_dir():
        f = p / name
        if not f.is_file():
            found = sorted(x.name for x in p.glob("*.safetensors"))
            hint = f"; .safetensors files there: {', '.join(found)} (pass weight_name / --lora-weight-name)" if found else ""
            raise PanoInputError(f"lora: {p} has no {name}{hint}")
        cfg_path = p / "adapter_config.json"
    elif looks_like_repo_id(src):
        try:
            from huggingface_hub import hf_hub_download

            f = Path(hf_hub_download(src, name, revision=revision, local_files_only=bool(local_files_only)))
        except Exception as e:  # noqa: BLE001 - hub errors have many types
            raise PanoInputError(f"lora: cannot fetch {name} from the hub repository {src!r}: {e}") from e
        try:
            cfg_path = Path(
                hf_hub_download(src, "adapter_config.json", revision=revision, local_files_only=bool(local_files_only))
            )
        except Exception:  # noqa: BLE001 - the config is optional
            cfg_path = None
    else:
        raise PanoInputError(f"lora: {src} is neither an existing file/folder nor a hub id like {DEFAULT_LORA}")
    if f.suffix != ".safetensors":
        raise PanoInputError(f"lora: {f.name}: only .safetensors LoRA files are loaded (no pickled .bin/.pt/.ckpt)")
    config = None
    if cfg_path is not None and cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            config = None
    return f, config


@dataclass
class LoraReport:
    """What :func:`convert_lora_state_dict` / :func:`load_lora` found."""

    source: str
    total_keys: int
    matched_keys: int
    matched_modules: list[str] = field(default_factory=list)
    unmatched_keys: list[str] = field(default_factory=list)
    rank: int | None = None
    scale: float = 1.0

    def summary(self) -> str:
        return (
            f"{self.matched_keys} of {self.total_keys} LoRA keys matched "
            f"{len(self.matched_modules)} modules of the Flux transformer"
        )


def _strip_prefix(key: str) -> str:
    for pre in _KEY_PREFIXES:
        if key.startswith(pre):
            key = key[len(pre) :]
    return key


def _base_linear(mod: torch.nn.Module) -> torch.nn.Module:
    """The plain Linear under a PEFT LoRA wrapper (a second LoRA on the same module)."""
    return getattr(mod, "base_layer", mod)


def convert_lora_state_dict(
    state_dict: dict[str, torch.Tensor],
    transformer: torch.nn.Module,
    config: dict | None = None,
    source: str = "LoRA",
) -> tuple[dict[str, torch.Tensor], LoraReport]:
    """Convert PEFT/diffusers LoRA keys to diffusers' Flux naming and check them against ``transformer``.

    Accepted key forms (``<m>`` a module path of ``FluxTransformer2DModel``, e.g.
    ``transformer_blocks.0.attn.to_q``): ``base_model.model.<m>.lora_A.weight`` (PEFT, DiT360),
    ``transformer.<m>.lora_A.weight`` (diffusers), ``<m>.lora_A.weight``, the same with
    ``lora_A.<adapter>.weight``, plus optional ``<m>.alpha`` scalars.

    A key matches when ``<m>`` is a Linear of the transformer and the factor has the right
    shape (``lora_A``: rank x in_features, ``lora_B``: out_features x rank). The alpha/rank
    scale (from ``.alpha`` keys or the PEFT config's ``lora_alpha``/``r``) is folded into
    ``lora_B`` so the result loads with scale 1. Returns ``(converted, report)``; the caller
    decides what to do with unmatched keys.
    """
    modules = dict(transformer.named_modules())
    alphas: dict[str, float] = {}
    factors: dict[str, dict[str, torch.Tensor]] = {}
    unmatched: list[str] = []
    total = 0
    for key, value in state_dict.items():
        k = _strip_prefix(key)
        am = _ALPHA_KEY.match(k)
        if am and value.numel() == 1:
            alphas[am.group("module")] = float(value.reshape(-1)[0])
            continue
        total += 1
        m = _LORA_KEY.match(k)
        if not m:
            unmatched.append(key)
            continue
        mod = modules.get(m.group("module"))
        lin = _base_linear(mod) if mod is not None else None
        if not isinstance(lin, torch.nn.Linear) or value.ndim != 2:
            unmatched.append(key)
            continue
        if m.group("which") == "lora_A" and value.shape[1] != lin.in_features:
            unmatched.append(key)
            continue
        if m.group("which") == "lora_B" and value.shape[0] != lin.out_features:
            unmatched.append(key)
            continue
        factors.setdefault(m.group("module"), {})[m.group("which")] = (key, value)
    converted: dict[str, torch.Tensor] = {}
    matched_modules: list[str] = []
    cfg_alpha = (config or {}).get("lora_alpha")
    ranks = set()
    for mod_name, fac in factors.items():
        if "lora_A" not in fac or "lora_B" not in fac or fac["lora_A"][1].shape[0] != fac["lora_B"][1].shape[1]:
            unmatched += [fac[w][0] for w in fac]
            continue
        a = fac["lora_A"][1]
        b = fac["lora_B"][1]
        r = a.shape[0]
        ranks.add(r)
        alpha = alphas.get(mod_name)
        if alpha is None and cfg_alpha is not None:
            pattern = (config or {}).get("alpha_pattern") or {}
            alpha = float(pattern.get(mod_name, cfg_alpha))
        scale = (alpha / r) if alpha is not None else 1.0
        if scale != 1.0:
            b = (b.float() * scale).to(b.dtype)
        converted[f"transformer.{mod_name}.lora_A.weight"] = a
        converted[f"transformer.{mod_name}.lora_B.weight"] = b
        matched_modules.append(mod_name)
    report = LoraReport(
        source=source,
        total_keys=total,
        matched_keys=2 * len(matched_modules),
        matched_modules=sorted(matched_modules),
        unmatched_keys=unmatched,
        rank=(ranks.pop() if len(ranks) == 1 else None),
    )
    return converted, report


def _adapter_modules(transformer: torch.nn.Module, adapter_name: str) -> list[str]:
    out = []
    for name, mod in transformer.named_modules():
        la = getattr(mod, "lora_A", None)
        if isinstance(la, torch.nn.ModuleDict) and adapter_name in la:
            out.append(name)
    return out


def load_lora(
    flux,
    lora: str | os.PathLike | dict = DEFAULT_LORA,
    weight_name: str | None = None,
    adapter_name: str = "dit360",
    strict: bool = True,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> LoraReport:
    """Load a (DiT360-style PEFT) LoRA into ``flux.transformer`` through ``load_lora_weights``.

    ``lora`` is a file, folder, hub id or an in-memory state dict. Raises
    :class:`PanoInputError` when no key matches the transformer, or (``strict``) when some
    do not, saying how many of the file's keys matched. After loading, checks that the
    adapter was injected into every matched module.
    """
    from safetensors.torch import load_file

    if isinstance(lora, dict):
        sd, config, src = lora, None, "state dict"
    else:
        path, config = resolve_lora_file(lora, weight_name, revision=revision, local_files_only=local_files_only)
        src = str(path)
        try:
            sd = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise PanoInputError(f"lora: cannot read {path} as safetensors: {e}") from e
    if not sd:
        raise PanoInputError(f"lora: {src} holds no tensors")
    converted, report = convert_lora_state_dict(sd, flux.transformer, config, source=src)
    if report.matched_keys == 0 or (strict and report.unmatched_keys):
        example = ", ".join(report.unmatched_keys[:3])
        raise PanoInputError(
            f"lora: {src}: only {report.matched_keys} of {report.total_keys} keys match the Flux transformer "
            f"(expected PEFT/diffusers keys like base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight "
            f"for this model's layer sizes); unmatched e.g. {example}. Is this a LoRA for a different model?"
        )
    adapters = set(getattr(flux, "get_list_adapters", lambda: {})().get("transformer", []))
    if adapter_name in adapters:
        raise PanoInputError(f"lora: an adapter named {adapter_name!r} is already loaded; pick another adapter name")
    flux.load_lora_weights(converted, adapter_name=adapter_name)
    landed = _adapter_modules(flux.transformer, adapter_name)
    if len(landed) != len(report.matched_modules):
        raise PanoInputError(
            f"lora: {src}: {report.matched_keys} of {report.total_keys} keys matched, but the adapter landed in "
            f"{len(landed)} of {len(report.matched_modules)} modules"
        )
    return report
