"""Pano360 core library: panorama geometry, seams, poles, diffusion, DiT360 and JoPano.

Packages: ``geometry`` (projections), ``seams`` (blending, metrics), ``poles`` (pole refinement),
``diffusion`` (the model-agnostic layer every generator and the trainer share), ``dit360`` (Flux
specifics), ``io`` / ``xmp`` (files with 360 metadata), ``cli`` (the ``pano360`` command);
``validate`` / ``errors`` hold the input checks and :class:`PanoInputError`.

Standalone: never imports ComfyUI. Tensors are BCHW (float32/16) unless stated.
Inside this package use relative imports only, so it works both installed as
``pano_core`` and vendored inside the ComfyUI pack.
"""

from .errors import PanoInputError

__version__ = "0.1.0"
__all__ = ["PanoInputError", "__version__"]
