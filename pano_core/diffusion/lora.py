"""LoRA key bookkeeping: which modules of a LoRA file match a model, and checked loading.

Two users: the ComfyUI LoRA loader (:func:`match_lora_modules` against ComfyUI's key map) and
the diffusers pipelines (:func:`convert_lora_state_dict` + :func:`load_lora`: PEFT/diffusers keys
converted to diffusers' naming, checked against the transformer's Linear layers, loaded with
``load_lora_weights`` and verified to have landed; a :class:`LoraReport` says how many keys
matched instead of silently ignoring a LoRA for another model).

Why the key conversion: DiT360's official conversion (``get_lora_weights.py``) writes a PEFT
``adapter_model.safetensors`` with keys ``transformer.<module>.lora_A.weight``; a raw PEFT
``save_pretrained`` of the wrapped transformer writes ``base_model.model.<module>.lora_A.weight``
instead. Both load here. diffusers' Flux loader treats any key containing ``base_model`` as a
fal-Kontext LoRA in BFL naming and would mis-convert it, and ComfyUI 0.3.75 maps only
``transformer.`` (and ``lycoris_`` / ``lora_transformer_``) for Flux, so a ``base_model.model.``
file loads 0 modules there: :func:`peft_to_transformer_prefix` renames such keys (the checked
ComfyUI loader does it on load; ``pano360 convert-lora`` writes a renamed file for the plain
``LoraLoaderModelOnly``).

Key grouping is pure bookkeeping (no ComfyUI, no diffusers): a LoRA file holds a few keys per adapted layer
(``<module>.lora_A.weight`` + ``<module>.lora_B.weight`` [+ ``<module>.alpha``], or
``lora_up``/``lora_down``, LoHa/LoKr/GLoRA/OFT factors, diffs, ...). :func:`lora_module` maps
a key to its module prefix; :func:`match_lora_modules` tells, given the prefixes a model
accepts (ComfyUI's ``model_lora_keys_unet`` key map) and what a loader actually produced
patches for, how many modules (and keys) of the file match, so a loader can say "only 4 of 7
LoRA modules match" instead of silently ignoring the rest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import PanoInputError
from .loading import resolve_weight_file

__all__ = [
    "LORA_KEY_SUFFIXES",
    "PEFT_PREFIX",
    "OFFICIAL_PREFIX",
    "peft_to_transformer_prefix",
    "DEFAULT_LORA_WEIGHT_NAME",
    "LoraModuleMatch",
    "lora_module",
    "group_lora_keys",
    "match_lora_modules",
    "lora_shape_problem",
    "LoraReport",
    "convert_lora_state_dict",
    "load_lora",
]

DEFAULT_LORA_WEIGHT_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
"""Key prefix of a raw PEFT ``save_pretrained`` of a wrapped model."""
OFFICIAL_PREFIX = "transformer."
"""Key prefix DiT360's official conversion writes (and ComfyUI maps for Flux)."""
# Prefixes stripped from LoRA keys, in order (PEFT model wrapper, diffusers pipeline component).
_KEY_PREFIXES = ("base_model.model.", "transformer.")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B)(?:\.(?P<adapter>[\w-]+))?\.weight$")
_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")

# Suffixes after a module prefix in the LoRA formats ComfyUI loads (LoRA/LoCon in its
# kohya, diffusers, PEFT, mochi, transformers and Qwen forms; LoHa; LoKr; GLoRA; OFT; diffs;
# alpha and DoRA scale). Longest first so a longer form wins over its tail.
LORA_KEY_SUFFIXES: tuple[str, ...] = tuple(sorted({
    ".lora_up.weight", ".lora_down.weight", ".lora_mid.weight",
    "_lora.up.weight", "_lora.down.weight",
    ".lora.up.weight", ".lora.down.weight",
    ".lora_A.weight", ".lora_B.weight", ".lora_A", ".lora_B",
    ".lora_A.default.weight", ".lora_B.default.weight",
    ".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight",
    ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2",
    ".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2",
    ".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight",
    ".oft_blocks", ".rescale",
    ".w_norm", ".b_norm", ".diff", ".diff_b", ".set_weight", ".reshape_weight",
    ".alpha", ".dora_scale",
}, key=len, reverse=True))


def peft_to_transformer_prefix(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """``state_dict`` with every ``base_model.model.<m>`` key renamed to ``transformer.<m>`` (the form
    DiT360's official conversion writes and ComfyUI maps for Flux); other keys unchanged.
    Returns ``(new_dict, number_renamed)``; raises :class:`PanoInputError` when a renamed key
    would collide with an existing one."""
    out: dict[str, Any] = {}
    renamed = 0
    for key, value in state_dict.items():
        new = key
        if key.startswith(PEFT_PREFIX):
            rest = key[len(PEFT_PREFIX):]
            new = rest if rest.startswith(OFFICIAL_PREFIX) else OFFICIAL_PREFIX + rest
            renamed += 1
        if new in out:
            raise PanoInputError(f"lora: keys {key!r} and another both become {new!r}; the file mixes two prefixes")
        out[new] = value
    return out, renamed


def lora_module(key: str) -> str | None:
    """The module prefix of a LoRA key (``a.b.lora_A.weight`` -> ``a.b``), or None when the key
    has none of the known LoRA suffixes (then it is not a LoRA weight ComfyUI would load).

    PEFT keys with a named adapter (``<m>.lora_A.<adapter>.weight``) count too.
    """
    for suffix in LORA_KEY_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)]
    parts = key.rsplit(".", 3)
    if len(parts) == 4 and parts[1] in ("lora_A", "lora_B") and parts[3] == "weight" and parts[0]:
        return parts[0]
    return None


def group_lora_keys(keys: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``({module: [its keys]}, [keys that belong to no module])``, both in file order."""
    modules: dict[str, list[str]] = {}
    other: list[str] = []
    for key in keys:
        m = lora_module(key)
        if m is None:
            other.append(key)
        else:
            modules.setdefault(m, []).append(key)
    return modules, other


@dataclass(frozen=True)
class LoraModuleMatch:
    """How a LoRA file's modules matched a model.

    ``modules``: every module of the file (file order); ``matched`` / ``unmatched``: split of
    ``modules``; ``total_keys`` / ``matched_keys``: the same in keys (``unrecognised`` keys, with
    no LoRA suffix, count as unmatched keys); ``source``: the file's name for messages.
    """

    source: str
    modules: tuple[str, ...]
    matched: tuple[str, ...]
    unmatched: tuple[str, ...]
    unrecognised: tuple[str, ...]
    total_keys: int
    matched_keys: int

    @property
    def complete(self) -> bool:
        """Every key of the file belongs to a module that matched (and there is one)."""
        return bool(self.matched) and not self.unmatched and not self.unrecognised

    def summary(self) -> str:
        return (
            f"{len(self.matched)} of {len(self.modules)} LoRA modules ({self.matched_keys} of "
            f"{self.total_keys} keys) in {self.source} match this model"
        )

    def mismatch_message(self, name: str = "lora_name", limit: int = 6) -> str:
        """The error text for an incomplete match, naming up to ``limit`` unmatched modules/keys."""
        missing = list(self.unmatched) + list(self.unrecognised)
        shown = ", ".join(missing[:limit]) + (f", ... ({len(missing) - limit} more)" if len(missing) > limit else "")
        if not self.modules:
            return (
                f"{name}: {self.source} holds no LoRA weights ({self.total_keys} keys, none of a known LoRA "
                f"form such as <module>.lora_A.weight / .lora_down.weight){': ' + shown if shown else ''}"
            )
        return (
            f"{name}: only {len(self.matched)} of {len(self.modules)} LoRA modules ({self.matched_keys} of "
            f"{self.total_keys} keys) in {self.source} match this model (unmatched: {shown}); "
            f"is it a LoRA for a different model?"
        )


def lora_shape_problem(weight_shape: Sequence[int], kind: str, shapes: Sequence[Sequence[int]]) -> str | None:
    """Why a LoRA patch cannot apply to a weight of ``weight_shape``, or None when it fits.

    ``kind``: ``"lora"`` with ``shapes = (up, down)`` (``up`` (out, rank[, ...]), ``down`` (rank, in...)),
    or ``"diff"`` / ``"set"`` with ``shapes = (tensor,)`` (a full-size difference or replacement).
    A mismatch would make the sampler fail ("shapes cannot be multiplied") or the patch be skipped,
    so such modules count as unmatched.
    """
    ws = tuple(int(v) for v in weight_shape)
    if kind == "lora":
        up, down = (tuple(int(v) for v in t) for t in shapes[:2])
        n_in = 1
        for v in down[1:]:
            n_in *= v
        w_in = 1
        for v in ws[1:]:
            w_in *= v
        if len(up) < 2 or len(down) < 2 or up[1] != down[0]:
            return f"up {up} and down {down} do not share a rank"
        if not ws or up[0] != ws[0] or n_in != w_in:
            return f"LoRA {up[0]}x{n_in} vs model {ws[0] if ws else '?'}x{w_in}"
        return None
    if kind in ("diff", "set"):
        t = tuple(int(v) for v in shapes[0])
        return None if t == ws else f"{kind} {t} vs model {ws}"
    return None


def match_lora_modules(
    keys: Iterable[str],
    key_map: Mapping[str, Any],
    patched: Collection[Any] | None = None,
    source: str = "the LoRA",
) -> LoraModuleMatch:
    """Count the modules of a LoRA file (its ``keys``) that match a model.

    ``key_map``: module prefix -> model weight the model accepts (ComfyUI's
    ``comfy.lora.model_lora_keys_unet``; a target may be a weight name or a
    ``(name, slice)`` tuple). ``patched``: the targets a loader produced patches for
    (``comfy.lora.load_lora``'s result keys); when given, a module matches only if its
    target was patched (its keys were of a form the loader understood), else a module matches
    when the model accepts its prefix.
    """
    keys = list(keys)
    groups, other = group_lora_keys(keys)
    patched_set = set(patched) if patched is not None else None
    if not keys:
        raise PanoInputError(f"lora: {source} holds no tensors")

    def ok(module: str) -> bool:
        if module not in key_map:
            return False
        if patched_set is None:
            return True
        target = key_map[module]
        if target in patched_set:
            return True
        # diff_b-only modules patch the bias next to the mapped weight
        return isinstance(target, str) and target.endswith(".weight") and f"{target[:-7]}.bias" in patched_set

    matched = tuple(m for m in groups if ok(m))
    matched_set = set(matched)
    unmatched = tuple(m for m in groups if m not in matched_set)
    return LoraModuleMatch(
        source=source,
        modules=tuple(groups),
        matched=matched,
        unmatched=unmatched,
        unrecognised=tuple(other),
        total_keys=len(keys),
        matched_keys=sum(len(groups[m]) for m in matched),
    )


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
            f"{len(self.matched_modules)} modules of the transformer"
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
    """Convert PEFT/diffusers LoRA keys to diffusers' naming and check them against ``transformer``.

    Accepted key forms (``<m>`` a module path of the transformer (Flux: ``FluxTransformer2DModel``), e.g.
    ``transformer_blocks.0.attn.to_q``): ``transformer.<m>.lora_A.weight`` (DiT360's official
    conversion, diffusers), ``base_model.model.<m>.lora_A.weight`` (raw PEFT), ``<m>.lora_A.weight``, the same with
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
    pipe,
    lora: str | os.PathLike | dict,
    weight_name: str | None = None,
    adapter_name: str = "default",
    strict: bool = True,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> LoraReport:
    """Load a PEFT/diffusers LoRA into ``pipe.transformer`` through ``pipe.load_lora_weights``
    (any diffusers pipeline with LoRA support: Flux, Sana, ...).

    ``lora`` is a file, folder (``weight_name``, default ``adapter_model.safetensors``), hub id or
    an in-memory state dict. Raises
    :class:`PanoInputError` when no key matches the transformer, or (``strict``) when some
    do not, saying how many of the file's keys matched. After loading, checks that the
    adapter was injected into every matched module.
    """
    from safetensors.torch import load_file

    if isinstance(lora, dict):
        sd, config, src = lora, None, "state dict"
    else:
        path, config = resolve_weight_file(
            lora, weight_name or DEFAULT_LORA_WEIGHT_NAME, name="lora", config_name="adapter_config.json",
            revision=revision, local_files_only=local_files_only,
        )
        src = str(path)
        try:
            sd = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise PanoInputError(f"lora: cannot read {path} as safetensors: {e}") from e
    if not sd:
        raise PanoInputError(f"lora: {src} holds no tensors")
    converted, report = convert_lora_state_dict(sd, pipe.transformer, config, source=src)
    if report.matched_keys == 0 or (strict and report.unmatched_keys):
        example = ", ".join(report.unmatched_keys[:3])
        raise PanoInputError(
            f"lora: {src}: only {report.matched_keys} of {report.total_keys} keys match the transformer "
            f"(expected PEFT/diffusers keys like transformer.transformer_blocks.0.attn.to_q.lora_A.weight "
            f"for this model's layer sizes); unmatched e.g. {example}. Is this a LoRA for a different model?"
        )
    adapters = set(getattr(pipe, "get_list_adapters", lambda: {})().get("transformer", []))
    if adapter_name in adapters:
        raise PanoInputError(f"lora: an adapter named {adapter_name!r} is already loaded; pick another adapter name")
    pipe.load_lora_weights(converted, adapter_name=adapter_name)
    landed = _adapter_modules(pipe.transformer, adapter_name)
    if len(landed) != len(report.matched_modules):
        raise PanoInputError(
            f"lora: {src}: {report.matched_keys} of {report.total_keys} keys matched, but the adapter landed in "
            f"{len(landed)} of {len(report.matched_modules)} modules"
        )
    return report
