"""Sphere RoPE: rotary position embedding on the unit-sphere directions of cube-face tokens.

JoPano's Joint-Face Adapter attends over the tokens of all six faces of a panorama; each token's
position is the unit direction ``(x, y, z)`` of its cell centre on the cube (the line from the
cube centre through the token, intersected with the unit sphere; py360convert's face frame, see
:mod:`pano_core.geometry`).

**Axes.** The head dimension ``D`` (even) is split into ``D / 2`` rotation pairs, shared out over
the three axes as evenly as possible (x first, then y: 28 pairs -> 10, 9, 9). Pair ``k`` of an axis
with ``m`` pairs turns by ``angle = p_axis * base ** (-k / m)``, ``k = 0 .. m - 1``, where
``p = scale * direction``. So the score between a query at ``p`` and a key at ``p'`` depends on the
positions only through the per-axis differences ``p - p'`` (the RoPE property), and equal
directions give the identity rotation between them.

**Position scale** (``DEFAULT_ROPE_SCALE = 8``). Neighbouring tokens at the centre of a face of
``n`` tokens are ``2 / n`` radians apart on the sphere; with ``scale = 8`` they are one position
unit apart on a 16-token face, i.e. a 512-pixel face with Sana's f32 DC-AE (the JoPano
resolution). The scale is a physical constant of the adapter, not tied to the token count: at
1024 pixels (32 tokens) neighbours are half a unit apart and the whole sphere still spans the same
positions ``[-8, 8]`` per axis the adapter was trained on (position interpolation, not
extrapolation).

**Frequency base** (``DEFAULT_ROPE_BASE = 100``). The fastest pair of each axis turns 1 rad per
unit (one turn in about 6 neighbouring tokens) and resolves neighbours; the slowest,
``base ** (-(m - 1) / m)`` rad per unit, turns at most about a quarter turn across the whole
sphere (16 units) and tells coarse places apart without wrapping. The usual text base of 10 000
would spend most pairs on wavelengths thousands of times the size of the sphere.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..errors import PanoInputError
from ..geometry import face_cell_directions
from ..validate import check_int

__all__ = ["DEFAULT_ROPE_BASE", "DEFAULT_ROPE_SCALE", "SphereRoPE", "face_token_directions"]

DEFAULT_ROPE_SCALE = 8.0
DEFAULT_ROPE_BASE = 100.0


def face_token_directions(size_tokens: int, device=None, dtype=None) -> torch.Tensor:
    """(6, n * n, 3) unit directions of the token centres of the six faces F R B L U D.

    ``size_tokens``: tokens per face side, ``n = face_size / f`` with ``f`` the VAE's downscale
    factor times the transformer's patch size (read them from the configs; 16 for 512-pixel faces
    with Sana's DC-AE f32). Token ``(i, j)`` (row-major, as the transformer flattens its grid) is
    the cell centre ``((j + 0.5) / n - 0.5, (i + 0.5) / n - 0.5)`` of the face plane
    (:func:`pano_core.geometry.face_cell_directions`).
    """
    check_int(size_tokens, "size_tokens", 1, what="a number of tokens per face side")
    d = face_cell_directions(size_tokens, device=device, dtype=torch.float64)
    return d.reshape(6, size_tokens * size_tokens, 3).to(dtype=dtype if dtype is not None else torch.get_default_dtype())


def positive(v: object, name: str) -> float:
    """``v`` as a float if it is a finite number > 0, else :class:`PanoInputError` naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise PanoInputError(f"{name}: expected a positive number, got {v!r}")
    return float(v)


class SphereRoPE:
    """Rotary embedding of 3D positions ``scale * direction`` (see the module docstring).

    ``head_dim``: the attention head dimension (even, at least 6: one pair per axis).
    ``scale`` and ``base``: the position scale and frequency base.
    """

    def __init__(self, head_dim: int, scale: float = DEFAULT_ROPE_SCALE, base: float = DEFAULT_ROPE_BASE) -> None:
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 6 or head_dim % 2:
            raise PanoInputError(f"head_dim: sphere RoPE needs an even head dimension of at least 6 (one pair per axis), got {head_dim!r}")
        positive(scale, "rope_scale")
        positive(base, "rope_base")
        if base <= 1:
            raise PanoInputError(f"rope_base: expected a frequency base above 1, got {base!r}")
        self.head_dim = head_dim
        self.scale = float(scale)
        self.base = float(base)
        pairs = head_dim // 2
        self.axis_pairs = tuple(pairs // 3 + (1 if a < pairs % 3 else 0) for a in range(3))
        axis, freq = [], []
        for a, m in enumerate(self.axis_pairs):
            axis += [a] * m
            freq += [self.base ** (-k / m) for k in range(m)]
        self._axis = torch.tensor(axis, dtype=torch.long, device="cpu")  # (D/2,) axis of each pair
        self._freq = torch.tensor(freq, dtype=torch.float64, device="cpu")  # (D/2,) radians per position unit

    def __repr__(self) -> str:
        return f"SphereRoPE(head_dim={self.head_dim}, scale={self.scale}, base={self.base}, axis_pairs={self.axis_pairs})"

    def angles(self, directions: torch.Tensor) -> torch.Tensor:
        """(..., 3) directions (or any 3D points) -> (..., D/2) rotation angles in float32/64."""
        if not isinstance(directions, torch.Tensor) or directions.shape[-1:] != (3,):
            raise PanoInputError(f"directions: expected a (..., 3) tensor, got {getattr(directions, 'shape', type(directions))}")
        dt = torch.float64 if directions.dtype == torch.float64 else torch.float32
        d = directions.to(dt)
        p = d[..., self._axis.to(d.device)] * self.scale
        return p * self._freq.to(device=d.device, dtype=dt)

    def cos_sin(self, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 3) directions -> (cos, sin), each (..., D), every pair's value repeated twice
        (interleaved pairs ``(2k, 2k + 1)``), float32 (float64 for float64 directions)."""
        a = self.angles(directions).repeat_interleave(2, dim=-1)
        return a.cos(), a.sin()

    def face_cos_sin(self, size_tokens: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached ``cos_sin`` of :func:`face_token_directions` ``(size_tokens)``: each (6 n^2, D) float32."""
        return _face_cos_sin(self.head_dim, self.scale, self.base, size_tokens, torch.device(device or "cpu"))

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate the interleaved pairs of ``x`` (..., T, D) by the angles of ``cos``/``sin``
        (broadcastable to ``x``, e.g. (T, D)). Computed in float32 at least (as one complex
        multiply where the device has complex kernels); returns ``x.dtype``. Differentiable."""
        if x.device.type == "mps":  # no complex kernels there
            return _rotate_real(x, cos, sin)
        return _rotate_complex(x, cos, sin)


def _rotate_complex(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    dt = torch.promote_types(x.dtype, cos.dtype)
    pairs = torch.view_as_complex(x.to(dt).reshape(*x.shape[:-1], -1, 2))
    rot = torch.complex(cos[..., 0::2].to(dt), sin[..., 0::2].to(dt))
    return torch.view_as_real(pairs * rot).flatten(-2).to(x.dtype)


def _rotate_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    dt = torch.promote_types(x.dtype, cos.dtype)
    xf = x.to(dt)
    pairs = xf.unflatten(-1, (-1, 2))
    rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (xf * cos.to(dt) + rot * sin.to(dt)).to(x.dtype)


@lru_cache(maxsize=32)
def _face_cos_sin(head_dim: int, scale: float, base: float, size_tokens: int, device: torch.device):
    rope = SphereRoPE(head_dim, scale, base)
    d = face_token_directions(size_tokens, dtype=torch.float64).reshape(-1, 3)
    cos, sin = rope.cos_sin(d)
    return cos.to(device=device, dtype=torch.float32), sin.to(device=device, dtype=torch.float32)
