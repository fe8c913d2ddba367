"""Panorama prompts: the prefix DiT360 was trained with, added once.

- :data:`PANORAMA_PREFIX` -- ``"This is a panorama."`` (DiT360's training captions start with it)
- :func:`add_prompt_prefix` -- prefix every prompt of a batch, once
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import PanoInputError

__all__ = ["PANORAMA_PREFIX", "add_prompt_prefix"]

PANORAMA_PREFIX = "This is a panorama."


def add_prompt_prefix(prompt: str | Sequence[str], prefix: str | None = PANORAMA_PREFIX) -> list[str]:
    """Prefix every prompt with ``prefix`` (DiT360: "This is a panorama."), once.

    Prompts already starting with the prefix are left alone; ``prefix=None`` or ``""`` only
    turns a single prompt into a list.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise PanoInputError(f"prompt: expected a string or a non-empty list of strings, got {prompt!r}")
    if not prefix:
        return prompts
    out = []
    for p in prompts:
        s = p.strip()
        out.append(s if s.startswith(prefix) else (f"{prefix} {s}" if s else prefix))
    return out
