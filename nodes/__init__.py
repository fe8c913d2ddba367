"""ComfyUI nodes of Pano360: thin adapters over :mod:`pano_core`.

Every module in this package that defines ``NODE_CLASS_MAPPINGS`` (and optionally
``NODE_DISPLAY_NAME_MAPPINGS``) is registered here. A module that fails to import
makes the whole pack fail loudly (ComfyUI logs ``IMPORT FAILED``), which the tests check.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._common import add_input_checks

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _mod = importlib.import_module(f"{__name__}.{_info.name}")
    _classes = getattr(_mod, "NODE_CLASS_MAPPINGS", {})
    _dupes = set(_classes) & set(NODE_CLASS_MAPPINGS)
    if _dupes:
        raise RuntimeError(f"Pano360: node ids registered twice: {sorted(_dupes)}")
    for _cls in _classes.values():  # NaN FLOATs, NaN or empty IMAGE/MASK batches -> a clear error
        add_input_checks(_cls)
    NODE_CLASS_MAPPINGS.update(_classes)
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))
