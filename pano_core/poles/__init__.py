"""Pole refinement (DiT360's "panoramic refinement"): faces, inpainters, the one-shot refiner.

Lives here: projecting the poles onto the ``U``/``D`` cube faces and back (``faces``: extract,
masks, feather, merge, channel handling), 2-D inpainters (``inpainters``: OpenCV, diffusers),
``refine_poles`` (``refine``). Not here: model loading (``pano_core.diffusion.loading``) and
cube geometry (``pano_core.geometry``).

Equirectangular panoramas are stretched near the poles, and generators often leave swirls or
smears there. The fix: look at the poles through the top (``U``) and bottom (``D``) cube faces,
where they are undistorted, mask the centre of those faces, inpaint it with any 2-D inpainter,
project the faces back and blend them into the panorama::

    faces, masks = extract_pole_faces(erp)          # (2B, C, S, S): U, D of each panorama
    filled = inpainter(faces, masks)                # any Inpainter (OpenCV, diffusers, ...)
    out = merge_pole_faces(erp, filled, masks)      # only the pole region changes

or in one call ``refine_poles(erp, inpainter)``. Default mask: the central half of each pole
face (``fraction=0.5``), as in DiT360. The names below are the package's public API.
"""

from . import faces, inpainters, refine
from .faces import *  # noqa: F403 - the package's public API is its modules' __all__
from .inpainters import *  # noqa: F403
from .refine import *  # noqa: F403

__all__ = [*faces.__all__, *inpainters.__all__, *refine.__all__]
