"""ERP wrap blending: remove a visible 0°/360° seam (between the last and the first column).

Only ``band`` columns on each side of the wrap change (columns ``W-band .. W-1`` and
``0 .. band-1``); every other pixel of the result is bit-identical to the input.

The seam jump of each row is estimated as the step across the wrap minus the natural gradient
(the mean of the steps just inside on both sides)::

    J = (x[:, 0] - x[:, W-1]) - ((x[:, W-1] - x[:, W-2]) + (x[:, 1] - x[:, 0])) / 2

Methods:

* ``"feather"`` -- per row, add ``+J/2`` tapering linearly to 0 over the band on the left of the
  wrap and ``-J/2`` likewise on the right, so the step across the wrap becomes the natural
  gradient. Cheap, exact per row.
* ``"poisson"`` -- gradient-domain blend: on the strip of the ``2 band`` columns around the wrap,
  solve ``lap(u) = div(v)`` where ``v`` is the image gradient with the step across the wrap
  replaced by the natural gradient estimate, with Dirichlet values from the untouched image on
  the strip's left and right ends (and the feathered rows at the top and bottom). The correction
  is harmonic: smooth in both directions, no per-row streaks. Exact DST-I solve.
"""

from __future__ import annotations

import torch

from ..errors import PanoInputError
from ..validate import check_choice, check_erp, check_int
from .solvers import solve_exact

__all__ = ["WRAP_METHODS", "blend_erp_wrap", "wrap_jump"]

WRAP_METHODS = ("poisson", "feather")


def wrap_jump(erp: torch.Tensor) -> torch.Tensor:
    """Per-row seam jump J (B, C, H) across the wrap (see module docstring)."""
    x = erp
    step = x[..., 0] - x[..., -1]
    natural = 0.5 * ((x[..., -1] - x[..., -2]) + (x[..., 1] - x[..., 0]))
    return step - natural


def _feather_strip(strip: torch.Tensor, band: int, jump: torch.Tensor) -> torch.Tensor:
    """Feathered correction of a strip laid out as [x[W-band-1] .. x[W-1] | x[0] .. x[band]]."""
    k = torch.arange(band, device=strip.device, dtype=strip.dtype)
    w = (band - k) / band  # 1 at the wrap, 1/band at the band's far end
    out = strip.clone()
    half = 0.5 * jump.unsqueeze(-1)
    out[..., band + 1 - 1 - torch.arange(band, device=strip.device)] += half * w  # left: cols band..1
    out[..., band + 1 + torch.arange(band, device=strip.device)] -= half * w  # right: cols band+1..2band
    return out


def blend_erp_wrap(erp: torch.Tensor, band: int = 32, method: str = "poisson", backend: str = "auto") -> torch.Tensor:
    """Blend an ERP across its 0°/360° wrap.

    Args:
        erp: (B, C, H, 2H) float panorama, 1-4 channels, any device.
        band: columns changed on each side of the wrap (1 .. W/2 - 1).
        method: ``"poisson"`` or ``"feather"`` (see the module docstring).
        backend: exact-solver backend for ``poisson`` (``auto``/``scipy``/``torch``).
    Returns:
        The blended ERP (same shape/dtype/device; not clamped). Columns outside the band are
        bit-identical to the input.
    """
    erp = check_erp(erp, "panorama")
    check_choice(method, "method", WRAP_METHODS)
    _, _, h, w = erp.shape
    check_int(band, "band", 1, w // 2 - 1, what="a number of pixels (W/2 - 1 at most)")
    if w < 4:
        raise PanoInputError(f"panorama: too small to blend the wrap ({w}x{h})")
    orig_dtype = erp.dtype
    x = erp if orig_dtype in (torch.float32, torch.float64) else erp.float()
    strip = torch.cat([x[..., w - band - 1 :], x[..., : band + 1]], dim=-1)  # (B, C, H, 2 band + 2)
    jump = wrap_jump(x)  # (B, C, H)
    feathered = _feather_strip(strip, band, jump)
    if method == "feather" or h < 3:
        u = feathered
    else:
        # correction h = u - strip: the guidance differs from the strip's own Laplacian only in
        # the two columns beside the wrap (interior rows), the boundary only on the top/bottom rows
        sw = strip.shape[-1]
        r = torch.zeros(strip.shape[:-2] + (h - 2, sw - 2), dtype=x.dtype, device=x.device)
        r[..., band - 1] = -jump[..., 1:-1]  # strip column `band` (left of the wrap)
        r[..., band] = jump[..., 1:-1]  # strip column `band + 1` (right of the wrap)
        d = torch.zeros_like(strip)
        d[..., 0, :] = feathered[..., 0, :] - strip[..., 0, :]
        d[..., -1, :] = feathered[..., -1, :] - strip[..., -1, :]
        u = solve_exact(r, d, backend=backend, x0=strip)
    out = x.clone()
    out[..., w - band :] = u[..., 1 : band + 1]
    out[..., :band] = u[..., band + 1 : 2 * band + 1]
    return out.to(orig_dtype)
