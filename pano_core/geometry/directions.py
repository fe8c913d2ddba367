"""Unit-sphere directions for ERP pixels, cube-face pixels and perspective views.

The 3D frame (used everywhere in Pano360, the same as py360convert):

* ``x`` points right (longitude +90°, the centre of cube face ``R``),
* ``y`` points up (latitude +90°, the centre of face ``U``),
* ``z`` points forward (longitude 0, latitude 0: the ERP image centre, the centre of face ``F``).

A direction ``d = (x, y, z)`` has longitude ``lon = atan2(x, z)`` (degrees, -180..180, positive to
the right) and latitude ``lat = atan2(y, hypot(x, z))`` (degrees, -90..90, positive up), i.e.
``d = (cos(lat) sin(lon), sin(lat), cos(lat) cos(lon))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import PanoInputError

FACE_NAMES = ("F", "R", "B", "L", "U", "D")

# Per face: centre c, "right" r (direction of increasing column) and "down" n (increasing row).
# A face pixel (row i, column j) of a face of size S lies on the cube of half-size 0.5 at
#   P = 0.5 c + u r + w n,  u = -0.5 + j / (S - 1),  w = -0.5 + i / (S - 1)
# (pixel centres of the first and last row/column lie on the cube edges, like py360convert).
FACE_BASIS = (
    # centre         right           down
    ((0, 0, 1), (1, 0, 0), (0, -1, 0)),  # F
    ((1, 0, 0), (0, 0, -1), (0, -1, 0)),  # R
    ((0, 0, -1), (-1, 0, 0), (0, -1, 0)),  # B
    ((-1, 0, 0), (0, 0, 1), (0, -1, 0)),  # L
    ((0, 1, 0), (1, 0, 0), (0, 0, 1)),  # U
    ((0, -1, 0), (1, 0, 0), (0, 0, -1)),  # D
)


def _basis(device=None, dtype=None) -> torch.Tensor:
    """(6, 3, 3) tensor: [face, (centre, right, down), xyz]."""
    return torch.tensor(FACE_BASIS, device=device, dtype=dtype or torch.float32)


def _dtype(dtype) -> torch.dtype:
    return dtype if dtype is not None else torch.get_default_dtype()


def lonlat_to_dirs(lon_deg: torch.Tensor, lat_deg: torch.Tensor) -> torch.Tensor:
    """Longitude/latitude in degrees (same shape) -> unit directions (..., 3)."""
    lon = torch.deg2rad(lon_deg)
    lat = torch.deg2rad(lat_deg)
    c = torch.cos(lat)
    return torch.stack((c * torch.sin(lon), torch.sin(lat), c * torch.cos(lon)), dim=-1)


def dirs_to_lonlat(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions (..., 3), not necessarily unit -> (lon_deg, lat_deg)."""
    x, y, z = d.unbind(-1)
    lon = torch.rad2deg(torch.atan2(x, z))
    lat = torch.rad2deg(torch.atan2(y, torch.hypot(x, z)))
    return lon, lat


def erp_lonlat(h: int, w: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """1D longitudes (w,) and latitudes (h,) in degrees of ERP pixel centres.

    Column ``c`` has lon = ((c + 0.5) / w - 0.5) * 360, row ``r`` has lat = (0.5 - (r + 0.5) / h) * 180.
    """
    dt = torch.float64
    lon = ((torch.arange(w, device=device, dtype=dt) + 0.5) / w - 0.5) * 360.0
    lat = (0.5 - (torch.arange(h, device=device, dtype=dt) + 0.5) / h) * 180.0
    return lon.to(_dtype(dtype)), lat.to(_dtype(dtype))


def erp_directions(h: int, w: int, device=None, dtype=None, rows: torch.Tensor | None = None,
                   cols: torch.Tensor | None = None) -> torch.Tensor:
    """(h, w, 3) unit directions of the pixel centres of an ERP image of size h x w; with ``rows``
    and/or ``cols`` (integer index tensors) only those rows/columns, (len(rows), len(cols), 3),
    without building the full grid."""
    _check_size(h, "height")
    _check_size(w, "width")
    dt = torch.float64
    ci = torch.arange(w, device=device, dtype=dt) if cols is None else cols.to(device=device, dtype=dt)
    ri = torch.arange(h, device=device, dtype=dt) if rows is None else rows.to(device=device, dtype=dt)
    lon = torch.deg2rad(((ci + 0.5) / w - 0.5) * 360.0)
    lat = torch.deg2rad((0.5 - (ri + 0.5) / h) * 180.0)
    c = torch.cos(lat)[:, None]
    d = torch.stack(
        (c * torch.sin(lon)[None, :], torch.sin(lat)[:, None].expand(len(ri), len(ci)), c * torch.cos(lon)[None, :]),
        dim=-1,
    )
    return d.to(_dtype(dtype))


def face_plane_coords(face_size: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """(S,) plane coordinates -0.5..0.5 of face pixel centres (first/last on the cube edges)."""
    s = face_size
    if s == 1:
        return torch.zeros(1, device=device, dtype=dtype)
    return torch.arange(s, device=device, dtype=dtype) / (s - 1) - 0.5


def face_points(face_size: int, device=None, dtype=None) -> torch.Tensor:
    """(6, S, S, 3) points on the cube of half-size 0.5 (faces F R B L U D, py360convert's xyzcube)."""
    _check_size(face_size, "face_size")
    b = _basis(device, torch.float64)
    t = face_plane_coords(face_size, device)
    u = t[None, None, :, None]  # columns
    w = t[None, :, None, None]  # rows
    p = 0.5 * b[:, 0][:, None, None, :] + u * b[:, 1][:, None, None, :] + w * b[:, 2][:, None, None, :]
    return p.to(_dtype(dtype))


def face_directions(face_size: int, device=None, dtype=None) -> torch.Tensor:
    """(6, S, S, 3) unit directions of the pixel centres of cube faces F R B L U D."""
    p = face_points(face_size, device, torch.float64)
    return (p / p.norm(dim=-1, keepdim=True)).to(_dtype(dtype))


def dirs_to_cube(d: torch.Tensor, face_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Directions (..., 3) -> (face index 0..5, column j, row i) as continuous pixel coordinates.

    The inverse of :func:`face_points`: ``j = (u + 0.5) (S - 1)``, ``i = (w + 0.5) (S - 1)``.
    """
    x, y, z = d.unbind(-1)
    ax, ay, az = x.abs(), y.abs(), z.abs()
    face = torch.where(
        (ay > ax) & (ay > az),
        torch.where(y > 0, 4, 5),
        torch.where(az >= ax, torch.where(z > 0, 0, 2), torch.where(x > 0, 1, 3)),
    )
    b = _basis(d.device, d.dtype)[face]  # (..., 3, 3)
    dc = (d * b[..., 0, :]).sum(-1)
    dr = (d * b[..., 1, :]).sum(-1)
    dn = (d * b[..., 2, :]).sum(-1)
    t = 0.5 / dc.clamp_min(1e-12)
    scale = float(max(face_size - 1, 0))
    j = (t * dr + 0.5) * scale
    i = (t * dn + 0.5) * scale
    return face, j, i


def rotation_matrix(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, device=None, dtype=None) -> torch.Tensor:
    """(3, 3) camera rotation R (world <- camera) for a view turned by yaw/pitch/roll degrees.

    ``R = Ry(yaw) Rx(-pitch) Rz(-roll)`` with right-hand rotations about the frame axes: a camera
    looking along +z (forward) with +x right and +y up sees, after ``R``, the direction
    ``R @ (0, 0, 1)`` = (lon = yaw, lat = pitch). Roll turns the camera about its viewing axis with
    the same sign as py360convert's ``in_rot_deg``.
    """
    a, b, c = (math.radians(float(v)) for v in (yaw, pitch, roll))
    ry = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    p = -b
    rx = torch.tensor([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]], dtype=torch.float64)
    r = -c
    rz = torch.tensor([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]], dtype=torch.float64)
    return (ry @ rx @ rz).to(device=device, dtype=_dtype(dtype))


def _fov_pair(fov_deg: float | Sequence[float], h: int, w: int) -> tuple[float, float]:
    """(h_fov, v_fov) in degrees. A single number is the horizontal fov; the vertical one follows
    from the aspect ratio (square pixels)."""
    if isinstance(fov_deg, (int, float)):
        hf = float(fov_deg)
        _check_fov(hf, "fov")
        ratio = (h - 1) / (w - 1) if h > 1 and w > 1 else h / w
        vf = math.degrees(2 * math.atan(math.tan(math.radians(hf) / 2) * ratio))
        return hf, vf
    try:
        hf, vf = (float(v) for v in fov_deg)
    except (TypeError, ValueError):
        raise PanoInputError(f"fov: expected a number or (h_fov, v_fov) in degrees, got {fov_deg!r}") from None
    _check_fov(hf, "h_fov")
    _check_fov(vf, "v_fov")
    return hf, vf


def _check_fov(v: float, name: str) -> None:
    if not (math.isfinite(v) and 0 < v < 180):
        raise PanoInputError(f"{name}: expected a field of view in degrees between 0 and 180 (exclusive), got {v}")


def _check_size(v: int, name: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise PanoInputError(f"{name}: expected a positive integer size, got {v!r}")


def perspective_points(fov_deg, h: int, w: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """(h, w, 3) camera-frame points (x right, y up, z = 1) of a pinhole view (no rotation).

    Pixel centres of the first/last column lie at the edges of the horizontal field of view
    (the convention of py360convert's ``e2p``).
    """
    hf, vf = _fov_pair(fov_deg, h, w)
    xm = math.tan(math.radians(hf) / 2)
    ym = math.tan(math.radians(vf) / 2)
    xs = torch.linspace(-xm, xm, w, device=device, dtype=torch.float64) if w > 1 else torch.zeros(1, device=device, dtype=torch.float64)
    ys = torch.linspace(ym, -ym, h, device=device, dtype=torch.float64) if h > 1 else torch.zeros(1, device=device, dtype=torch.float64)
    p = torch.stack((xs[None, :].expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=device, dtype=torch.float64)), -1)
    return p.to(dtype)


def perspective_directions(
    fov_deg, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, h: int = 512, w: int = 512, device=None, dtype=None
) -> torch.Tensor:
    """(h, w, 3) unit world directions of the pixels of a perspective view.

    ``fov_deg``: horizontal field of view (vertical from the aspect ratio) or (h_fov, v_fov).
    ``yaw`` turns right, ``pitch`` looks up, ``roll`` turns about the viewing axis (degrees).
    """
    _check_size(h, "height")
    _check_size(w, "width")
    p = perspective_points(fov_deg, h, w, device)
    r = rotation_matrix(yaw, pitch, roll, device=device, dtype=torch.float64)
    d = p @ r.T
    d = d / d.norm(dim=-1, keepdim=True)
    return d.to(_dtype(dtype))
