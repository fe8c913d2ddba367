"""Panorama geometry: ERP <-> cubemap <-> perspective, rotations and unit-sphere directions.

Lives here: projections, cube layouts (incl. :func:`guess_layout`, the one layout detector),
cube padding, masks, cubemap files. Not here: seam blending (``seams``), anything diffusion.

Conventions (the same as py360convert, followed by pytorch360convert and DreamCube):

* **ERP** images are (B, C, H, W) with W = 2 H. Column ``c`` is at longitude
  ``((c + 0.5) / W - 0.5) * 360`` degrees (0 at the image centre, increasing to the right),
  row ``r`` at latitude ``(0.5 - (r + 0.5) / H) * 180`` (+90 at the top).
* **3D frame**: ``x`` right (lon +90°, face R), ``y`` up (lat +90°, face U), ``z`` forward
  (lon 0, lat 0: the ERP centre, face F). ``d = (cos(lat) sin(lon), sin(lat), cos(lat) cos(lon))``,
  ``lon = atan2(x, z)``, ``lat = atan2(y, hypot(x, z))``. All direction functions return unit
  vectors in this frame, last dimension (x, y, z).
* **Cube faces** F R B L U D (front, right, back, left, up, down), oriented exactly like
  py360convert's ``e2c``. Face pixel (row i, column j) of a face of size S lies at
  ``0.5 * centre + u * right + w * down`` with ``u = -0.5 + j / (S - 1)``, ``w = -0.5 + i / (S - 1)``
  (so the first/last pixel centres lie on the cube edges). Per face (centre, right, down):
  F (+z, +x, -y), R (+x, -z, -y), B (-z, -x, -y), L (-x, +z, -y), U (+y, +x, +z), D (-y, +x, -z).
  Layouts: ``stack`` (B*6, C, S, S), ``list``, ``dict``, ``horizon`` (B, C, S, 6S) and ``dice``
  (B, C, 3S, 4S: U above F; L F R B in the middle row; D below F).
* **Views**: angles in degrees; ``yaw`` positive turns right (toward R), ``pitch`` positive looks
  up, ``roll`` turns about the viewing axis (same sign as py360convert's ``in_rot_deg``). The
  camera rotation is ``R = Ry(yaw) Rx(-pitch) Rz(-roll)`` (world <- camera, see
  :func:`rotation_matrix`); camera pixels point along ``(x, y, 1)`` with x right, y up.

All sampling functions take batched BCHW float tensors on any device, support ``nearest``,
``bilinear`` and ``bicubic``, wrap around the 0°/360° seam and over the poles without a clamping
seam, are differentiable w.r.t. the image, and cache their sampling grids in a bounded LRU cache
(:func:`cache_info`, :func:`clear_cache`, :func:`set_cache_limits`).

Two sampling paths give the same results: CPU tensors that need no gradient are sampled with
``cv2.remap`` on analytic float32 maps (:mod:`.remap`, several times faster); tensors that require
grad, CUDA/other devices and the rare mode/dtype OpenCV mishandles use ``torch.grid_sample``
(:mod:`.sampling`). Channels-last inputs (a ComfyUI IMAGE moved to BCHW) give channels-last
results on the CPU path.
"""

from .cube import DICE_XY, LAYOUTS, c2e, e2c, faces_to_layout, guess_layout, layout_to_faces
from .cube_padding import (
    CUBE_PAD_MODES,
    CubePadPlan,
    cube_pad,
    cube_pad_cache_clear,
    cube_pad_plan,
    face_cell_directions,
)
from .directions import (
    FACE_BASIS,
    FACE_NAMES,
    dirs_to_cube,
    dirs_to_lonlat,
    erp_directions,
    erp_lonlat,
    face_directions,
    lonlat_to_dirs,
    perspective_directions,
    rotation_matrix,
)
from .files import FILE_LAYOUTS, check_cubemap_output, read_cubemap, write_cubemap
from .masks import pole_mask, seam_mask
from .perspective import e2p, p2e
from .rotate import roll_erp, rotate_erp, yaw_to_pixels
from .sampling import MODES, cache_info, clear_cache, set_cache_limits

__all__ = [
    "CUBE_PAD_MODES",
    "CubePadPlan",
    "cube_pad",
    "cube_pad_cache_clear",
    "cube_pad_plan",
    "face_cell_directions",
    "DICE_XY",
    "FACE_BASIS",
    "FACE_NAMES",
    "LAYOUTS",
    "MODES",
    "c2e",
    "cache_info",
    "clear_cache",
    "dirs_to_cube",
    "dirs_to_lonlat",
    "e2c",
    "FILE_LAYOUTS",
    "guess_layout",
    "read_cubemap",
    "write_cubemap",
    "check_cubemap_output",
    "pole_mask",
    "seam_mask",
    "e2p",
    "p2e",
    "roll_erp",
    "rotate_erp",
    "yaw_to_pixels",
    "erp_directions",
    "erp_lonlat",
    "face_directions",
    "faces_to_layout",
    "layout_to_faces",
    "lonlat_to_dirs",
    "perspective_directions",
    "rotation_matrix",
    "set_cache_limits",
]
