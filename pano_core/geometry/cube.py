"""ERP <-> cubemap (faces F R B L U D, oriented exactly like py360convert's ``e2c``)."""

from __future__ import annotations

import torch

from ..budget import check_output_size
from ..errors import PanoInputError
from ..validate import check_choice
from ._checks import check_bchw, check_erp, check_faces
from .directions import FACE_NAMES, dirs_to_cube, dirs_to_lonlat, erp_directions, face_points
from .fastgrid import build_c2e_plan, build_e2c_plan
from .remap import (
    build_c2e_remap,
    build_e2c_remap,
    cube_stride_for,
    fast_path_ok,
    fits,
    hwc_faces,
    work_dtype,
)
from .sampling import (
    build_cube_plan,
    build_erp_plan,
    cached_plan,
    check_mode,
    default_row_chunks,
    faces_to_atlas,
    sampling_dtype,
)

LAYOUTS = ("stack", "list", "dict", "horizon", "dice")

# Dice positions (column, row) in units of faces for F R B L U D:
#        U
#     L  F  R  B
#        D
DICE_XY = ((1, 1), (2, 1), (3, 1), (0, 1), (1, 0), (1, 2))


def _check_layout(layout: str) -> str:
    return check_choice(layout, "layout", LAYOUTS)


def guess_layout(h: int, w: int, batch: int | None = None) -> str | None:
    """The cubemap layout of an image shape, or None: ``"horizon"`` (6:1), ``"dice"`` (4:3, 4 x 3
    square cells), ``"stack"``. With ``batch`` (a tensor batch, e.g. a ComfyUI IMAGE) ``"stack"``
    is a batch of 6k square faces; without (one image file) it is a 1:6 vertical strip. The one
    place these rules live (nodes, viewer, file readers and CLIs call it)."""
    if batch is not None:
        if h == w and batch % 6 == 0:
            return "stack"
    elif h == 6 * w:
        return "stack"
    if w == 6 * h:
        return "horizon"
    if h % 3 == 0 and w % 4 == 0 and w // 4 == h // 3:
        return "dice"
    return None


def faces_to_layout(stack: torch.Tensor, layout: str = "stack"):
    """(B*6, C, S, S) faces -> the requested layout.

    ``stack``: unchanged; ``list``: [F, R, B, L, U, D] each (B, C, S, S); ``dict``: {"F": ..};
    ``horizon``: (B, C, S, 6 S) faces side by side; ``dice``: (B, C, 3 S, 4 S) cross (empty = 0).
    """
    _check_layout(layout)
    return _layout(check_faces(stack, "faces", channels=None), layout)


def _layout(stack: torch.Tensor, layout: str):
    """:func:`faces_to_layout` without the input checks (for results of :func:`e2c`)."""
    bn, c, s, _ = stack.shape
    b = bn // 6
    v = stack.reshape(b, 6, c, s, s)  # a view (also of channels-last results)
    if layout == "stack":
        return stack
    if layout == "list":
        return [v[:, k] for k in range(6)]
    if layout == "dict":
        return {name: v[:, k] for k, name in enumerate(FACE_NAMES)}
    if layout == "horizon":
        return v.permute(0, 2, 3, 1, 4).reshape(b, c, s, 6 * s)
    out = stack.new_zeros(b, c, 3 * s, 4 * s)
    for k, (cx, cy) in enumerate(DICE_XY):
        out[:, :, cy * s : (cy + 1) * s, cx * s : (cx + 1) * s] = v[:, k]
    return out


def layout_to_faces(x, layout: str = "stack", name: str = "cubemap") -> torch.Tensor:
    """A cubemap in any layout -> (B*6, C, S, S) stack (F R B L U D per panorama)."""
    _check_layout(layout)
    if layout in ("list", "dict"):
        if layout == "dict":
            if not isinstance(x, dict) or set(x) != set(FACE_NAMES):
                got = sorted(x) if isinstance(x, dict) else type(x).__name__
                raise PanoInputError(f"{name}: expected a dict with keys F R B L U D, got {got}")
            faces = [x[k] for k in FACE_NAMES]
        else:
            if not isinstance(x, (list, tuple)) or len(x) != 6:
                got = len(x) if isinstance(x, (list, tuple)) else type(x).__name__
                raise PanoInputError(f"{name}: expected a list of 6 faces (F R B L U D), got {got}")
            faces = list(x)
        faces = [check_bchw(f, f"{name}[{FACE_NAMES[k]}]", channels=None) for k, f in enumerate(faces)]
        shapes = {tuple(f.shape) for f in faces}
        if len(shapes) != 1:
            raise PanoInputError(f"{name}: all six faces must have the same shape, got {sorted(shapes)}")
        b, c, h, w = faces[0].shape
        if h != w:
            raise PanoInputError(f"{name}: cube faces must be square; got {w}x{h} (W x H)")
        return torch.stack(faces, 1).reshape(b * 6, c, h, w)
    x = check_bchw(x, name, channels=None)
    if layout == "stack":
        return check_faces(x, name, channels=None)
    b, c, h, w = x.shape
    if layout == "horizon":
        if w != 6 * h:
            raise PanoInputError(f"{name}: a horizon cubemap must be 6:1 (width = 6 x height); got {w}x{h}")
        s = h
        return x.view(b, c, s, 6, s).permute(0, 3, 1, 2, 4).reshape(b * 6, c, s, s)
    if h % 3 or w % 4 or w // 4 != h // 3:
        raise PanoInputError(f"{name}: a dice cubemap must be 4:3 (4 x 3 square faces); got {w}x{h}")
    s = h // 3
    faces = [x[:, :, cy * s : (cy + 1) * s, cx * s : (cx + 1) * s] for cx, cy in DICE_XY]
    return torch.stack(faces, 1).reshape(b * 6, c, s, s)


def reference_e2c_plan(h: int, w: int, s: int, mode: str, device, dtype):
    """Generic (slow, float64) e2c plan from :func:`face_points`; used to test the fast builder."""
    p = face_points(s, device=device, dtype=torch.float64)  # (6, S, S, 3)
    lon, lat = dirs_to_lonlat(p)
    return build_erp_plan(lon, lat, h, w, mode, dtype)


def reference_c2e_plan(s: int, h: int, w: int, mode: str, device, dtype):
    """Generic (slow, float64) c2e plan from :func:`erp_directions`; used to test the fast builder."""
    d = erp_directions(h, w, device=device, dtype=torch.float64)
    face, j, i = dirs_to_cube(d, s)
    return build_cube_plan(face[None], j[None], i[None], s, mode, dtype)


def _e2c_plan(h: int, w: int, s: int, mode: str, device: torch.device, dtype: torch.dtype):
    def build():
        return build_e2c_plan(h, w, s, mode, device, dtype)

    return cached_plan(("e2c", h, w, s, mode, device, dtype), build)


def e2c(erp: torch.Tensor, face_size: int | None = None, mode: str = "bilinear", layout: str = "stack"):
    """Equirectangular (B, C, H, 2H) -> cubemap faces F R B L U D in ``layout``.

    ``stack`` gives (B*6, C, S, S) (the faces of each panorama contiguous); see
    :func:`faces_to_layout` for the others. ``face_size`` defaults to W // 4. The faces are
    pixel-for-pixel those of py360convert 1.0.4 ``e2c`` (edge pixels lie on the cube edges).
    Wraps around the 0°/360° seam and over the poles; differentiable w.r.t. ``erp``.
    """
    check_mode(mode)
    _check_layout(layout)
    erp = check_erp(erp, "panorama", channels=None)
    _, _, h, w = erp.shape
    s = w // 4 if face_size is None else face_size
    if face_size is None and s < 1:
        raise PanoInputError(
            f"panorama: {w}x{h} is too small for cube faces of width / 4 pixels; give a face_size or a panorama "
            "at least 4 pixels wide"
        )
    if not isinstance(s, int) or isinstance(s, bool) or s < 1:
        raise PanoInputError(f"face_size: expected a positive integer, got {face_size!r}")
    check_output_size("face_size", s, s, 6 * erp.shape[0], erp.shape[1], erp.element_size(), "cube faces")
    if fast_path_ok(erp, mode) and fits(h, w, s):  # cv2.remap on the CPU (no gradient needed)
        wd = work_dtype(erp.dtype)
        plan = cached_plan(("e2c", h, w, s, mode, "cv2", wd), lambda: build_e2c_remap(h, w, s, mode, wd))
        return _layout(plan(erp), layout)
    dt = sampling_dtype(erp.dtype, erp.device)
    plan = _e2c_plan(h, w, s, mode, erp.device, dt)
    faces = plan(erp)  # (B*6, C, S, S)
    return _layout(faces, layout)


def e2c_pole_faces(erp: torch.Tensor, face_size: int, mode: str = "bilinear") -> torch.Tensor:
    """The ``U`` and ``D`` faces of :func:`e2c` only: (2B, C, S, S) ordered ``U0, D0, U1, D1, ...``,
    bit-identical to ``e2c``'s, without making the four side faces (pole refinement)."""
    check_mode(mode)
    erp = check_erp(erp, "panorama", channels=None)
    b, c, h, w = erp.shape
    s = face_size
    if not isinstance(s, int) or isinstance(s, bool) or s < 1:
        raise PanoInputError(f"face_size: expected a positive integer, got {face_size!r}")
    check_output_size("face_size", s, s, 2 * b, c, erp.element_size(), "pole faces")
    if fast_path_ok(erp, mode) and fits(h, w, s):
        wd = work_dtype(erp.dtype)
        plan = cached_plan(("e2c-poles", h, w, s, mode, "cv2", wd),
                           lambda: build_e2c_remap(h, w, s, mode, wd, poles_only=True))
        return plan(erp)
    faces = e2c(erp, face_size=s, mode=mode, layout="stack")
    return faces.reshape(b, 6, c, s, s)[:, 4:6].reshape(2 * b, c, s, s).contiguous()


def _c2e_plan(s: int, h: int, w: int, mode: str, device: torch.device, dtype: torch.dtype):
    def build():
        return build_c2e_plan(s, h, w, mode, device, dtype, default_row_chunks())

    return cached_plan(("c2e", s, h, w, mode, device, dtype, default_row_chunks()), build)


def c2e(cube, height: int | None = None, width: int | None = None, mode: str = "bilinear", layout: str = "stack"):
    """Cubemap (any layout, faces F R B L U D) -> equirectangular (B, C, H, W).

    Defaults: ``width = 4 S``, ``height = width // 2`` (``width = 2 * height`` when only the
    height is given). The exact inverse of :func:`e2c`'s face geometry. Differentiable.
    """
    check_mode(mode)
    faces = layout_to_faces(cube, layout)
    s = faces.shape[-1]
    if width is None and height is None:
        width = 4 * s
    if width is None:
        width = 2 * height
    if height is None:
        height = width // 2
    for v, nm in ((height, "height"), (width, "width")):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise PanoInputError(f"{nm}: expected a positive integer, got {v!r}")
    if width != 2 * height:
        raise PanoInputError(f"width/height: an equirectangular output must be 2:1, got {width}x{height}")
    check_output_size("width", width, height, faces.shape[0] // 6, faces.shape[1], faces.element_size(), "panorama")
    if fast_path_ok(faces, mode) and fits(height, width):  # cv2.remap on the CPU (no gradient needed)
        stride = cube_stride_for(s, faces.shape[1], hwc_faces(faces, mode))
        if stride is not None:
            wd = work_dtype(faces.dtype)
            c = faces.shape[1]
            key = ("c2e", s, height, width, mode, "cv2", stride, c, wd)
            return cached_plan(key, lambda: build_c2e_remap(s, height, width, mode, wd, stride, c))(faces)
    dt = sampling_dtype(faces.dtype, faces.device)
    plan = _c2e_plan(s, height, width, mode, faces.device, dt)
    return plan(faces_to_atlas(faces.to(dt))).to(faces.dtype)
