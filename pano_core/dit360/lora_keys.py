"""Which modules of a LoRA file match a model: grouping of LoRA keys into modules and a summary.

Pure key bookkeeping (no ComfyUI, no diffusers): a LoRA file holds a few keys per adapted layer
(``<module>.lora_A.weight`` + ``<module>.lora_B.weight`` [+ ``<module>.alpha``], or
``lora_up``/``lora_down``, LoHa/LoKr/GLoRA/OFT factors, diffs, ...). :func:`lora_module` maps
a key to its module prefix; :func:`match_lora_modules` tells, given the prefixes a model
accepts (ComfyUI's ``model_lora_keys_unet`` key map) and what a loader actually produced
patches for, how many modules (and keys) of the file match, so a loader can say "only 4 of 7
LoRA modules match" instead of silently ignoring the rest.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import PanoInputError

__all__ = ["LORA_KEY_SUFFIXES", "LoraModuleMatch", "lora_module", "group_lora_keys", "match_lora_modules"]

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
