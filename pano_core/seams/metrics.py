"""Seam metrics for cubemaps and equirectangular panoramas.

All metrics work on grey values in 0..255 (``0.299 R + 0.587 G + 0.114 B``; one-channel images as
they are; an alpha channel is ignored), are computed per panorama and averaged over the batch.

Cube edges come from :mod:`.adjacency` (derived from ``pano_core.geometry.face_directions``). In
the py360convert convention the outermost pixel row of a face lies *on* the cube edge and is the
same 3D point as the neighbour's outermost row. For an edge between faces a and b, "row k" on a
side is the row of pixels at distance k from the shared edge row, oriented along the edge so
both sides line up. Per edge (12 per cube):

* ``ssim`` -- Seam-SSIM (JoPano): SSIM between the two bands of ``band`` rows (rows 1..band, the
  shared row 0 excluded) on either side, both laid out in the same direction across the edge
  (as the two strips appear side by side in the unfolded cube), with ``band x band`` uniform
  windows sliding along the edge (C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2). Higher is better;
  about 0 for independent noise. Default ``band = 8`` pixels at any face size.
* ``sobel`` -- Seam-Sobel (JoPano): the 3x3 Sobel derivative across the edge (raw Sobel
  weights, like ``cv2.Sobel(ksize=3)``) at the first row with full support inside each face
  (row 1), both taken in the same direction across the seam; mean absolute difference.
  Lower is better.
* ``jump`` -- value continuity: mean absolute difference between rows 1 on the two sides (two
  pixels apart through the edge). Seam-Sobel compares gradients, so a per-face gain or offset
  barely moves it (see DESIGN.md section 7); this term sees such jumps. Lower is better.

Summary keys: ``seam_ssim``, ``seam_sobel``, ``seam_jump`` (means over the 12 edges),
``pole_seam_ssim`` / ``pole_seam_jump`` (the pole metric: means over the 8 edges that touch the U
or D face, i.e. the seams around the two polar caps), and for the ERP 0°/360° wrap:

* ``wrap_seam`` -- :func:`wrap_seam_ratio` of the grey image: mean |first column - last column|
  divided by the mean absolute difference of neighbouring column pairs next to the wrap (columns
  0-1, 1-2, 2-3 and W-4..W-1). About 1 for a seamless panorama (the wrap looks like any other
  column step); clearly > 1 for a visible seam. 0.5 grey levels are added to numerator and
  denominator so flat content gives about 1.
* ``wrap_jump`` -- the numerator alone (0..255).

:func:`wrap_seam_ratio` is the one wrap-seam measure of the package; on latents and token grids
(any range) it is used with ``near=None`` (all column pairs) and no ``eps``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PanoInputError
from ..geometry import FACE_NAMES, c2e, e2c, layout_to_faces
from ..validate import check_bchw, check_choice, check_erp, check_faces, check_int
from .adjacency import cube_adjacency, side_band

__all__ = [
    "DEFAULT_BAND",
    "grey255",
    "wrap_seam_ratio",
    "cube_seam_metrics",
    "erp_wrap_metrics",
    "seam_metrics",
    "format_metrics",
]

DEFAULT_BAND = 8
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2
POLE_FACES = (FACE_NAMES.index("U"), FACE_NAMES.index("D"))


def grey255(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in 0..1 -> (B, H, W) grey in 0..255 (float64)."""
    x = x.detach().double()
    c = x.shape[1]
    if c >= 3:
        g = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    else:
        g = x[:, 0]
    return g * 255.0


def _ssim_band(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (B, w, S) bands with w x w uniform windows sliding along S -> (B,)."""
    w = a.shape[-2]
    pool = lambda t: F.avg_pool2d(t.unsqueeze(1), (w, w), stride=1).flatten(1)  # noqa: E731
    ma, mb = pool(a), pool(b)
    va = pool(a * a) - ma * ma
    vb = pool(b * b) - mb * mb
    cov = pool(a * b) - ma * mb
    s = ((2 * ma * mb + _C1) * (2 * cov + _C2)) / ((ma * ma + mb * mb + _C1) * (va + vb + _C2))
    return s.mean(-1)


def _normal_sobel(band: torch.Tensor) -> torch.Tensor:
    """Sobel derivative along the band's row axis (away from the edge) at row 1: (B, w, S) -> (B, S)."""
    diff = band[:, 2] - band[:, 0]  # (B, S)
    p = F.pad(diff.unsqueeze(1), (1, 1), mode="replicate").squeeze(1)
    return p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]


def cube_seam_metrics(faces: torch.Tensor, band: int = DEFAULT_BAND) -> dict:
    """Seam metrics of a cubemap stack (B*6, C, S, S) in 0..1 (see the module docstring).

    Returns a dict with ``seam_ssim``, ``seam_sobel``, ``seam_jump``, ``pole_seam_ssim``,
    ``pole_seam_jump``, ``band`` and ``edges`` (``{"F-U": {"ssim", "sobel", "jump"}, ...}``);
    all values are floats averaged over the batch.
    """
    faces = check_faces(faces, "faces")
    s = faces.shape[-1]
    if s < 4:
        raise PanoInputError(f"faces: seam metrics need faces of at least 4x4 pixels, got {s}x{s}")
    check_int(band, "band", 1, what="a number of pixels")
    band = min(band, s - 1)
    adj = cube_adjacency(s)
    g = grey255(faces).reshape(-1, 6, s, s)
    edges = {}
    for e in adj.edges:
        a = side_band(g[:, e.face_a], e.side_a, band + 1)
        b = side_band(g[:, e.face_b], e.side_b, band + 1, reverse=e.reverse)
        ssim = _ssim_band(a[:, 1:].flip(1), b[:, 1:])  # both bands in the same direction across the edge
        sobel = (_normal_sobel(a) + _normal_sobel(b)).abs().mean(-1)
        jump = (a[:, 1] - b[:, 1]).abs().mean(-1)
        edges[e.name] = {
            "ssim": float(ssim.mean()),
            "sobel": float(sobel.mean()),
            "jump": float(jump.mean()),
            "pole": e.face_a in POLE_FACES or e.face_b in POLE_FACES,
        }
    mean = lambda key, pole=None: float(  # noqa: E731
        sum(v[key] for v in edges.values() if pole is None or v["pole"] == pole)
        / sum(1 for v in edges.values() if pole is None or v["pole"] == pole)
    )
    out = {
        "seam_ssim": mean("ssim"),
        "seam_sobel": mean("sobel"),
        "seam_jump": mean("jump"),
        "pole_seam_ssim": mean("ssim", True),
        "pole_seam_jump": mean("jump", True),
        "band": band,
        "edges": {k: {kk: vv for kk, vv in v.items() if kk != "pole"} for k, v in edges.items()},
    }
    return out


def wrap_seam_ratio(x: torch.Tensor, near: int | None = None, eps: float = 0.0, per_item: bool = False):
    """Wrap-seam score of a panorama-like tensor ``(..., H, W)`` (image, grey image, latent, token grid).

    Mean ``|x[..., 0] - x[..., -1]|`` (the 0/360 seam) over the mean absolute difference of
    neighbouring column pairs: all of them (``near=None``) or the ``near`` pairs next to the wrap
    on each side; ``eps`` is added to both means. About 1: the seam is no more visible than any
    other column step; larger: a visible seam. ``per_item``: a ``(B,)`` tensor (one score per
    leading index) instead of one float over everything.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[-1] < 3:
        raise PanoInputError(f"x: expected a tensor (..., H, W) with W >= 3, got {getattr(x, 'shape', type(x))}")
    x = x.detach()
    x = x if x.dtype == torch.float64 else x.float()
    seam = (x[..., 0] - x[..., -1]).abs()
    steps = (x[..., 1:] - x[..., :-1]).abs()
    if near is not None:
        steps = torch.cat([steps[..., :near], steps[..., -near:]], dim=-1)
    if per_item:
        s = seam.reshape(seam.shape[0], -1).mean(-1)
        n = steps.reshape(steps.shape[0], -1).mean(-1)
        return (s + eps) / (n + eps).clamp_min(1e-12)
    return float((seam.mean() + eps) / (steps.mean() + eps).clamp_min(1e-12))


def erp_wrap_metrics(erp: torch.Tensor) -> dict:
    """0°/360° wrap metrics of an ERP (B, C, H, 2H) in 0..1: ``wrap_seam`` (ratio) and ``wrap_jump``."""
    erp = check_erp(erp, "panorama")
    g = grey255(erp)
    w = g.shape[-1]
    if w < 8:
        raise PanoInputError(f"panorama: the wrap metric needs at least 8 columns, got {w}")
    eps = 0.5  # grey levels: keeps the ratio near 1 on flat content (sky, sea)
    return {
        "wrap_seam": float(wrap_seam_ratio(g, near=3, eps=eps, per_item=True).mean()),
        "wrap_jump": float((g[..., 0] - g[..., -1]).abs().mean(-1).mean()),
    }


def seam_metrics(image: torch.Tensor, layout: str = "erp", band: int = DEFAULT_BAND, face_size: int | None = None) -> dict:
    """All seam metrics of a panorama given as an ERP or a cubemap.

    Args:
        image: (B, C, H, W) in 0..1: an ERP (``layout="erp"``), a cubemap stack (B*6, C, S, S)
            (``"stack"``) or a ``"horizon"`` / ``"dice"`` layout image.
        layout: ``"erp"``, ``"stack"``, ``"horizon"`` or ``"dice"``.
        band: Seam-SSIM band width in pixels.
        face_size: cube face size for an ERP input (default W/4).
    Returns:
        The dict of :func:`cube_seam_metrics` plus ``wrap_seam`` / ``wrap_jump`` and ``input``.
        An ERP is converted to a cubemap (bilinear ``e2c``) for the cube metrics; for a cubemap
        the wrap metric is measured on its ``c2e`` ERP (the wrap lies inside face B there).
    """
    if layout == "erp":
        erp = check_erp(image, "panorama")
        faces = e2c(erp, face_size=face_size)
    elif layout in ("stack", "horizon", "dice"):
        check_bchw(image, "cubemap")
        faces = check_faces(layout_to_faces(image, layout, "cubemap"), "cubemap")
        erp = c2e(faces)
    else:
        check_choice(layout, "layout", ("erp", "stack", "horizon", "dice"))
    out = cube_seam_metrics(faces, band)
    out.update(erp_wrap_metrics(erp))
    out["input"] = layout
    return out


SUMMARY_KEYS = ("seam_ssim", "seam_sobel", "seam_jump", "wrap_seam", "pole_seam_jump", "pole_seam_ssim")


def format_metrics(m: dict) -> str:
    """A short human-readable multi-line summary of a :func:`seam_metrics` result."""
    lines = [
        f"Seam-SSIM  {m['seam_ssim']:.4f}  (higher is better, band {m['band']} px)",
        f"Seam-Sobel {m['seam_sobel']:.3f}  (lower is better)",
        f"Seam jump  {m['seam_jump']:.3f}  (mean |step| across cube edges, 0..255)",
        f"Pole seams jump {m['pole_seam_jump']:.3f}  SSIM {m['pole_seam_ssim']:.4f}  (8 edges of U and D)",
    ]
    if "wrap_seam" in m:
        lines.append(f"Wrap seam  {m['wrap_seam']:.3f}  (about 1 = seamless; jump {m['wrap_jump']:.3f})")
    lines.append("Edges: " + ", ".join(f"{k} {v['ssim']:.3f}/{v['sobel']:.1f}/{v['jump']:.1f}" for k, v in m["edges"].items()))
    return "\n".join(lines)
