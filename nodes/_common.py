"""Conversions between ComfyUI types and pano_core tensors (no panorama math here).

ComfyUI IMAGE: (B, H, W, C) float 0..1.  MASK: (B, H, W) or (H, W) float 0..1.
pano_core: (B, C, H, W).
"""

from __future__ import annotations

import logging

import torch

from ..pano_core.budget import pixel_limit
from ..pano_core.errors import PanoInputError

log = logging.getLogger("pano360")
"""The one logger of the pack (``pano360``)."""

CATEGORY = "Pano360"
CAT_GEOMETRY = f"{CATEGORY}/geometry"
CAT_SEAMS = f"{CATEGORY}/seams"
CAT_POLES = f"{CATEGORY}/poles"
CAT_DIT360 = f"{CATEGORY}/dit360"
CAT_JOPANO = f"{CATEGORY}/jopano"
CAT_IO = f"{CATEGORY}/io"
CAT_VIEW = f"{CATEGORY}/view"


def image_to_bchw(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> (B, C, H, W)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise PanoInputError(f"{name}: expected a ComfyUI IMAGE (batch, height, width, channels), got {shape}")
    return image.movedim(-1, 1)


def bchw_to_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> ComfyUI IMAGE (B, H, W, C), float32 on CPU, contiguous."""
    return x.movedim(1, -1).float().cpu().contiguous()


def mask_to_bchw(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """ComfyUI MASK (B, H, W) or (H, W) -> (B, 1, H, W)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise PanoInputError(f"{name}: expected a ComfyUI MASK (batch, height, width), got {shape}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    return mask.unsqueeze(1)


def bchw_to_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> ComfyUI MASK (B, H, W)."""
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    return x[:, 0].float().cpu().contiguous()


# ------------------------------------------------------------------ input checks of every node


def _input_type_map(cls) -> dict[str, str]:
    """{input name: ComfyUI type} of a node class (required, optional; lists/combos as 'COMBO')."""
    spec = cls.INPUT_TYPES()
    out: dict[str, str] = {}
    for group in ("required", "optional"):
        for name, entry in (spec.get(group) or {}).items():
            t = entry[0] if isinstance(entry, (tuple, list)) and entry else entry
            out[name] = t if isinstance(t, str) else "COMBO"
    return out


def check_input_value(name: str, typ: str, value) -> None:
    """One node input: a FLOAT must be finite (ComfyUI's min/max checks let NaN through); an IMAGE
    or MASK must be a non-empty batch of finite numbers. Raises PanoInputError naming the input."""
    import math

    from ..pano_core.validate import check_finite

    if typ == "FLOAT" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise PanoInputError(f"{name}: expected a finite number, got {value}")
    elif typ in ("IMAGE", "MASK") and isinstance(value, torch.Tensor):
        if value.ndim >= 3 and value.shape[0] == 0:
            raise PanoInputError(f"{name}: the {typ.lower()} batch is empty (shape {tuple(value.shape)})")
        if value.numel() == 0:
            raise PanoInputError(f"{name}: the {typ.lower()} is empty (shape {tuple(value.shape)})")
        if torch.is_floating_point(value):
            check_finite(value, name)


# ------------------------------------------------------------------ the Size limit setting

SIZE_LIMIT_SETTING = "Pano360.SizeLimitMegapixels"
"""ComfyUI setting (Settings → Pano360 → Size limit, registered by web/pano360_settings.js): the
largest image a node makes, in megapixels; 0 or unset: $PANO360_MAX_PIXELS or the default."""
SIZE_LIMIT_HINT = f"ComfyUI Settings → Pano360 → Size limit ({SIZE_LIMIT_SETTING}), or PANO360_MAX_PIXELS"
_settings_cache: dict[str, tuple[tuple[int, int], int | None]] = {}


def settings_file() -> str | None:
    """The settings file the frontend writes (``<user dir>/default/comfy.settings.json``; with
    ``--multi-user`` the default user's, which applies to the whole server), or None outside ComfyUI."""
    import os

    try:
        import folder_paths
    except ImportError:
        return None
    getter = getattr(folder_paths, "get_public_user_directory", None)
    root = getter("default") if getter else os.path.join(folder_paths.get_user_directory(), "default")
    return os.path.join(root, "comfy.settings.json") if root else None


def size_limit_from_settings(path: str | None = None) -> int | None:
    """The Size limit setting in pixels, or None when it is unset or 0 (re-read when the file changes).
    An unreadable file or a bad value is logged and ignored (the other limits apply)."""
    import json
    import math
    import os

    path = settings_file() if path is None else path
    if not path:
        return None
    try:
        st = os.stat(path)
        mtime = (st.st_mtime_ns, st.st_size)
    except OSError:
        return None
    hit = _settings_cache.get(path)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    value = None
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f).get(SIZE_LIMIT_SETTING)
        if raw not in (None, 0, "", "0"):
            mpx = float(raw)
            if not math.isfinite(mpx) or mpx < 0:
                raise ValueError(raw)
            value = max(1, int(mpx * 1_000_000)) if mpx > 0 else None
    except (OSError, ValueError, TypeError, AttributeError) as e:
        log.warning("Pano360: ignoring the %s setting in %s (%s)", SIZE_LIMIT_SETTING, path, e)
        value = None
    _settings_cache[path] = (mtime, value)
    return value


def add_input_checks(cls) -> type:
    """Wrap the node's FUNCTION so every FLOAT, IMAGE and MASK input is checked before it runs,
    and it runs under the Size limit setting (applied to every node of the pack at registration)."""
    import functools

    fname = getattr(cls, "FUNCTION", None)
    fn = getattr(cls, fname, None) if fname else None
    if fn is None or getattr(fn, "_pano360_checked", False):
        return cls
    types: dict[str, str] = {}

    @functools.wraps(fn)
    def checked(self, *args, **kwargs):
        if not types:
            types.update(_input_type_map(cls))
        listed = getattr(cls, "INPUT_IS_LIST", False)
        for k, v in kwargs.items():
            t = types.get(k)
            if t in ("FLOAT", "IMAGE", "MASK"):
                for item in (v if listed and isinstance(v, list) else [v]):
                    check_input_value(k, t, item)
        with pixel_limit(size_limit_from_settings(), SIZE_LIMIT_HINT):
            return fn(self, *args, **kwargs)

    checked._pano360_checked = True
    setattr(cls, fname, checked)
    return cls
