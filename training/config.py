"""YAML training configs with dotted command-line overrides.

A config is a nested dict read from YAML. :func:`load_config` reads a file (or a shipped config
by name: ``dit360_lora`` -> ``training/configs/dit360_lora.yaml``); :func:`apply_overrides`
applies ``--set a.b.c=value`` overrides, where the value is parsed as YAML (``1e-4``, ``true``,
``[1, 2]``, ``null``) and the dotted key must already exist in the config: an unknown key is an
error naming the closest existing one (a typo must never silently train with the default).
:func:`save_config` writes the resolved config into the run folder.

Example::

    cfg = load_config("dit360_lora")
    cfg = apply_overrides(cfg, ["optimizer.lr=1e-4", "lora.rank=16"])
    get(cfg, "optimizer.lr")  # 0.0001
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pano_core.errors import PanoInputError

__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "shipped_configs",
    "resolve_config_path",
    "load_config",
    "apply_overrides",
    "dotted_keys",
    "get",
    "set_value",
    "save_config",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(PanoInputError):
    """A config file or override that cannot be used (the message says which and why)."""


def _yaml():
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is in the [train] extra
        raise ConfigError("config: PyYAML is needed for training configs (pip install 'comfyui-pano360[train]')") from e
    return yaml


def shipped_configs() -> list[str]:
    """Names of the configs shipped in ``training/configs`` (without ``.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(config: str | os.PathLike) -> Path:
    """A config file path, or a shipped config name (``dit360_lora``) -> its path."""
    p = Path(config).expanduser()
    if p.is_file():
        return p
    named = CONFIG_DIR / f"{config}.yaml"
    if named.is_file():
        return named
    raise ConfigError(
        f"config: {config} is neither a file nor a shipped config (shipped: {', '.join(shipped_configs())})"
    )


def load_config(config: str | os.PathLike) -> dict:
    """Read a YAML config (a path or a shipped name) into a nested dict."""
    path = resolve_config_path(config)
    try:
        data = _yaml().safe_load(path.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - YAML syntax errors of any kind
        raise ConfigError(f"config: cannot parse {path} as YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def dotted_keys(cfg: Mapping, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a nested mapping: sections and leaves (``optimizer``, ``optimizer.lr``)."""
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        yield key
        if isinstance(v, Mapping):
            yield from dotted_keys(v, key + ".")


def get(cfg: Mapping, key: str, default: Any = ...) -> Any:
    """The value at a dotted key; raises :class:`ConfigError` when missing and no default is given."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is not ...:
                return default
            raise ConfigError(_unknown(cfg, key))
        node = node[part]
    return node


def set_value(cfg: dict, key: str, value: Any) -> None:
    """Set an existing dotted key (in place)."""
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _unknown(cfg: Mapping, key: str) -> str:
    keys = list(dotted_keys(cfg))
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.0)
    # prefer a key with the same last part (lr -> optimizer.lr)
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    guess = same_leaf[0] if same_leaf else (close[0] if close else None)
    hint = f"; did you mean {guess}?" if guess else ""
    return f"--set: {key} is not a key of this config{hint}"


def _parse_value(text: str) -> Any:
    try:
        value = _yaml().safe_load(text) if text.strip() else ""
    except Exception:  # noqa: BLE001 - an unparsable value is taken as a plain string
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return value


def _compatible(old: Any, new: Any) -> bool:
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return not (isinstance(old, int) and isinstance(new, float) and not new.is_integer())
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple))
    if isinstance(old, Mapping):
        return isinstance(new, Mapping)
    return isinstance(new, type(old)) or isinstance(old, str)


def apply_overrides(cfg: Mapping, overrides: Iterable[str]) -> dict:
    """A copy of ``cfg`` with ``key=value`` overrides applied (values parsed as YAML).

    Raises :class:`ConfigError` for a malformed override, a key the config does not have
    (naming the closest key) or a value of the wrong kind (a string for a number, ...).
    """
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set: expected KEY=VALUE with a dotted key (optimizer.lr=1e-4), got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        old = get(out, key, default=_MISSING)
        if old is _MISSING:
            raise ConfigError(_unknown(out, key))
        value = _parse_value(text)
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _compatible(old, value):
            raise ConfigError(
                f"--set: {key} expects a {type(old).__name__} like {old!r}, got {text!r} ({type(value).__name__})"
            )
        set_value(out, key, value)
    return out


_MISSING = object()


def save_config(cfg: Mapping, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (keys in their original order)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(_yaml().safe_dump(dict(cfg), sort_keys=False, default_flow_style=None), encoding="utf-8")
    return p
