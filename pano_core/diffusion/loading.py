"""Loading diffusers models for every generator: folders, hub ids, single files, dtype, offload.

Generic: the caller names the class (``FluxPipeline``, ``SanaPipeline``, ``AutoencoderDC``,
``SanaTransformer2DModel``, ``Gemma2Model`` ...); weights are read from **safetensors only**
(``use_safetensors=True``; single files must be ``.safetensors``), never pickles.

- :func:`resolve_device` / :func:`resolve_dtype`: ``"auto"|"cpu"|"cuda[:N]"|"mps"``,
  ``"auto"|"bf16"|"fp16"|"fp32"`` (auto: bf16 on CUDA, fp32 elsewhere).
- :func:`looks_like_repo_id`, :func:`resolve_source`: a local diffusers folder, a hub id or a
  single ``.safetensors`` file, checked with a clear error.
- :func:`model_index_class`: the pipeline class named in a folder's ``model_index.json``.
- :func:`load_pipeline` (cls, source, dtype): ``cls.from_pretrained`` on a folder or hub id.
- :func:`load_component` (cls, source, dtype, subfolder): one model from a folder / hub id
  (``subfolder``) or from a single safetensors file (``cls.from_single_file``).
- :func:`place` (pipe, device, offload): ``"none"`` (move), ``"model"`` (model CPU offload) or
  ``"sequential"`` (layer streaming).
- :func:`resolve_weight_file` (source, weight_name): a ``.safetensors`` file from a file, a
  folder or a hub id (LoRAs, adapters).
- :func:`module_device`: where a (possibly offloaded) module computes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import PanoInputError
from ..validate import check_choice

__all__ = [
    "OFFLOAD_MODES",
    "looks_like_repo_id",
    "resolve_device",
    "resolve_dtype",
    "dtype_kwargs",
    "resolve_source",
    "model_index_class",
    "load_pipeline",
    "load_component",
    "place",
    "resolve_weight_file",
    "module_device",
]

OFFLOAD_MODES = ("none", "model", "sequential")

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


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """``None``/``"auto"``: bfloat16 on CUDA, float32 elsewhere; else bf16, fp16 or fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    key = str(dtype).lower()
    if key not in _DTYPES:
        raise PanoInputError(f"dtype: expected auto, bf16, fp16 or fp32, got {dtype!r}")
    return _DTYPES[key]


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``{"dtype": ...}`` for diffusers >= 0.36 (which renamed ``torch_dtype``), else ``{"torch_dtype": ...}``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def resolve_source(
    source: str | os.PathLike,
    *,
    name: str = "model",
    single_file: bool = False,
    need_model_index: bool = True,
    example: str = "owner/name",
    layout_hint: str = "diffusers layout",
) -> tuple[str, str]:
    """Check a model source and say what it is: ``("folder" | "hub" | "file", path_or_id)``.

    A folder must hold ``model_index.json`` (``need_model_index``; component folders need not);
    a file is accepted only with ``single_file`` and must be ``.safetensors``; anything else must
    look like a hub id ``owner/name``. Raises :class:`PanoInputError` naming ``name``.
    """
    src = str(source)
    if not src:
        raise PanoInputError(f"{name}: expected a diffusers folder or a hub id, got an empty string")
    p = Path(src).expanduser()
    if p.is_file():
        if not single_file:
            raise PanoInputError(f"{name}: {p} is a file; expected a folder in {layout_hint} or a hub id")
        if p.suffix != ".safetensors":
            raise PanoInputError(f"{name}: {p.name}: only .safetensors files are loaded (no pickled .bin/.pt/.ckpt)")
        return "file", str(p)
    if p.is_dir():
        if need_model_index and not (p / "model_index.json").is_file():
            raise PanoInputError(
                f"{name}: {p} has no model_index.json; expected a diffusers pipeline folder ({layout_hint}) or a hub id"
            )
        return "folder", str(p)
    if looks_like_repo_id(src):
        return "hub", src
    raise PanoInputError(
        f"{name}: folder not found: {src} is neither an existing folder nor a hub id like {example}"
    )


def model_index_class(folder: str | os.PathLike) -> str | None:
    """The ``_class_name`` in ``folder/model_index.json`` (None without the file)."""
    p = Path(folder) / "model_index.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text()).get("_class_name")
    except (OSError, ValueError) as e:
        raise PanoInputError(f"model: cannot read {p}: {e}") from None


def _hub_kwargs(kwargs: dict, revision: str | None, local_files_only: bool | None) -> dict:
    """``kwargs`` plus ``revision`` / ``local_files_only`` when they are set."""
    kw = dict(kwargs)
    if revision is not None:
        kw["revision"] = revision
    if local_files_only is not None:
        kw["local_files_only"] = local_files_only
    return kw


def load_pipeline(
    cls: Any,
    source: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    name: str = "model",
    what: str | None = None,
    example: str = "owner/name",
    layout_hint: str = "diffusers layout",
    revision: str | None = None,
    local_files_only: bool | None = None,
    **kwargs,
):
    """``cls.from_pretrained`` (a diffusers pipeline class) on a local folder or a hub id,
    safetensors only, in ``dtype``. ``what`` names the pipeline in errors (default: the class)."""
    kind, src = resolve_source(source, name=name, example=example, layout_hint=layout_hint)
    what = what or getattr(cls, "__name__", str(cls))
    kw = _hub_kwargs(kwargs, revision, local_files_only)
    try:
        return cls.from_pretrained(src, **dtype_kwargs(dtype), use_safetensors=True, **kw)
    except (OSError, ValueError) as e:
        raise PanoInputError(f"{name}: cannot load a {what} from {src!r}: {e}") from e


def load_component(
    cls: Any,
    source: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    subfolder: str | None = None,
    name: str = "model",
    config: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    **kwargs,
):
    """One model of class ``cls`` (a diffusers ``ModelMixin`` or a transformers model):

    - a folder or hub id: ``cls.from_pretrained(source, subfolder=subfolder)`` (the folder may be a
      pipeline folder with ``subfolder`` or the component folder itself);
    - a single ``.safetensors`` file: ``cls.from_single_file(file, config=config)`` (``config``: a
      diffusers folder / hub id to take the architecture from, where diffusers cannot infer it).
    """
    kind, src = resolve_source(source, name=name, single_file=True, need_model_index=False)
    kw = _hub_kwargs(kwargs, revision, local_files_only)
    try:
        if kind == "file":
            if not hasattr(cls, "from_single_file"):
                raise PanoInputError(f"{name}: {cls.__name__} cannot be loaded from a single file; pass a folder or hub id")
            if config is not None:
                kw["config"] = str(config)
                if subfolder:
                    kw["subfolder"] = subfolder
            return cls.from_single_file(src, **dtype_kwargs(dtype), **kw)
        if subfolder and kind == "folder" and not (Path(src) / subfolder).is_dir():
            subfolder = None  # the component folder itself
        if subfolder:  # transformers' from_pretrained rejects subfolder=None
            kw["subfolder"] = subfolder
        return cls.from_pretrained(src, **dtype_kwargs(dtype), use_safetensors=True, **kw)
    except (OSError, ValueError) as e:
        raise PanoInputError(f"{name}: cannot load a {cls.__name__} from {src!r}: {e}") from e


def place(pipe, device: str | torch.device = "auto", offload: str = "none"):
    """Put a diffusers pipeline on ``device``: ``offload="none"`` moves every model there;
    ``"model"`` keeps models on the CPU and moves each to the GPU while it runs
    (``enable_model_cpu_offload``); ``"sequential"`` streams layer by layer (slowest, smallest).
    Returns ``pipe``."""
    dev = resolve_device(device)
    check_choice(offload, "offload", OFFLOAD_MODES)
    if offload != "none" and dev.type == "cpu":
        raise PanoInputError(f"offload: {offload} CPU offload needs a GPU device; with --device cpu use --offload none")
    if offload == "none":
        pipe.to(str(dev))
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=dev)
    else:
        pipe.enable_sequential_cpu_offload(device=dev)
    return pipe


def resolve_weight_file(
    source: str | os.PathLike,
    weight_name: str,
    *,
    name: str = "lora",
    example: str = "owner/name",
    config_name: str | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> tuple[Path, dict | None]:
    """A ``.safetensors`` weight file from a file, a folder (``weight_name`` in it) or a hub id
    (downloaded with ``huggingface_hub``), and the optional JSON ``config_name`` next to it.
    Returns ``(file, config or None)``."""
    src = str(source)
    p = Path(src).expanduser()
    cfg_path: Path | None = None
    if p.is_file():
        f = p
        cfg_path = p.parent / config_name if config_name else None
    elif p.is_dir():
        f = p / weight_name
        if not f.is_file():
            found = sorted(x.name for x in p.glob("*.safetensors"))
            hint = f"; .safetensors files there: {', '.join(found)} (pass weight_name / --{name}-weight-name)" if found else ""
            raise PanoInputError(f"{name}: {p} has no {weight_name}{hint}")
        cfg_path = p / config_name if config_name else None
    elif looks_like_repo_id(src):
        from huggingface_hub import hf_hub_download

        try:
            f = Path(hf_hub_download(src, weight_name, revision=revision, local_files_only=bool(local_files_only)))
        except Exception as e:  # noqa: BLE001 - hub errors have many types
            raise PanoInputError(f"{name}: cannot fetch {weight_name} from the hub repository {src!r}: {e}") from e
        if config_name:
            try:
                cfg_path = Path(hf_hub_download(src, config_name, revision=revision, local_files_only=bool(local_files_only)))
            except Exception:  # noqa: BLE001 - the config is optional
                cfg_path = None
    else:
        raise PanoInputError(f"{name}: {src} is neither an existing file/folder nor a hub id like {example}")
    if f.suffix != ".safetensors":
        raise PanoInputError(f"{name}: {f.name}: only .safetensors files are loaded (no pickled .bin/.pt/.ckpt)")
    config = None
    if cfg_path is not None and cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            config = None
    return f, config


def module_device(module: torch.nn.Module, fallback: torch.device | str | None = None) -> torch.device:
    """The device a module computes on (offloaded modules report their execution device)."""
    try:
        from diffusers.utils.torch_utils import get_module_execution_device

        return get_module_execution_device(module)
    except Exception:  # noqa: BLE001 - older diffusers, or not a diffusers module
        try:
            return next(module.parameters()).device
        except StopIteration:
            return torch.device(fallback) if fallback is not None else torch.device("cpu")
