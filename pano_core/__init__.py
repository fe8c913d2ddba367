"""Pano360 core library: panorama geometry, seams, poles, DiT360 and JoPano.

Standalone: never imports ComfyUI. Tensors are BCHW (float32/16) unless stated.
Inside this package use relative imports only, so it works both installed as
``pano_core`` and vendored inside the ComfyUI pack.
"""

from .errors import PanoInputError

__version__ = "0.1.0"
__all__ = ["PanoInputError", "__version__"]
