"""Random draws that depend only on (seed, global sample index), never on a process's stream.

Every random choice a training sample needs (its noise, timestep, yaw roll, flip, caption
dropout, the yaw angle of the yaw loss) comes from a CPU ``torch.Generator`` seeded
from ``(seed, index, purpose)``. So sample 7 gets the same noise whether it is drawn by the only
process with batch 2 or by process 1 of 2 with batch 1, and a resumed run draws exactly what the
uninterrupted run drew. :func:`data_order` gives the epoch's sample order the same way.

Example::

    g = sample_generator(seed=0, index=7, purpose="noise")
    noise = torch.randn(16, 64, 128, generator=g)
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "sample_generator", "data_order", "SampleDraws", "draw_sample"]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (stable across Python runs and platforms)."""
    h = hashlib.blake2b(repr(tuple(parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


def sample_generator(seed: int, index: int, purpose: str) -> torch.Generator:
    """A CPU generator for one purpose of one global sample."""
    return torch.Generator("cpu").manual_seed(derive_seed(int(seed), int(index), purpose))


def data_order(seed: int, epoch: int, n: int, purpose: str = "order") -> torch.Tensor:
    """The permutation of ``n`` dataset items used in ``epoch`` (same on every process)."""
    g = torch.Generator("cpu").manual_seed(derive_seed(int(seed), int(epoch), purpose))
    return torch.randperm(n, generator=g)


class SampleDraws:
    """The scalar draws of one training sample (see :func:`draw_sample`)."""

    __slots__ = ("flip", "roll", "drop_caption", "yaw_angle")

    def __init__(self, flip: bool, roll: int, drop_caption: bool, yaw_angle: float):
        self.flip = flip
        self.roll = roll  # yaw roll in token columns (0..w-1)
        self.drop_caption = drop_caption
        self.yaw_angle = yaw_angle

    def __repr__(self) -> str:
        return (f"SampleDraws(flip={self.flip}, roll={self.roll}, "
                f"drop_caption={self.drop_caption}, yaw_angle={self.yaw_angle})")


def draw_sample(
    seed: int,
    index: int,
    *,
    token_cols: int,
    flip_p: float,
    yaw_roll: bool,
    caption_dropout: float,
    yaw_angles: tuple[float, ...] | list[float] = (),
) -> SampleDraws:
    """All scalar draws for global sample ``index`` (the noise and the timestep are drawn
    separately, with :func:`sample_generator` and the purposes ``"noise"`` / ``"sigma"``)."""
    g = sample_generator(seed, index, "draws")
    r = torch.rand(5, generator=g, dtype=torch.float64).tolist()
    roll = int(r[2] * token_cols) % token_cols if yaw_roll and token_cols > 0 else 0
    angle = float(yaw_angles[int(r[4] * len(yaw_angles)) % len(yaw_angles)]) if len(yaw_angles) else 0.0
    return SampleDraws(
        flip=bool(r[1] < flip_p),
        roll=roll,
        drop_caption=bool(r[3] < caption_dropout),
        yaw_angle=angle,
    )
