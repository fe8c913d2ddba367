"""Memory savers for big base models: fp8 storage of the frozen linear weights.

:func:`quantize_linear_fp8_` stores every frozen ``nn.Linear`` weight of a module as
``float8_e4m3fn`` with a per-tensor scale and casts it back to the activation dtype inside the
forward (weight-only fp8, like ComfyUI's fp8 checkpoints): FLUX.1-dev's transformer then needs
about 12 GB instead of 24 GB. Trainable (LoRA) weights are left alone. Pure torch (2.1+).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from pano_core.errors import PanoInputError

__all__ = ["FP8_DTYPE", "quantize_linear_fp8_"]

FP8_DTYPE = getattr(torch, "float8_e4m3fn", None)
_FP8_MAX = 448.0


def _fp8_forward(self, x: torch.Tensor) -> torch.Tensor:
    w = self.weight.to(x.dtype) * self.fp8_scale.to(x.dtype)
    return F.linear(x, w, self.bias)


@torch.no_grad()
def quantize_linear_fp8_(module: torch.nn.Module) -> int:
    """Store the frozen ``nn.Linear`` weights of ``module`` in fp8 (in place); returns how many.

    Linear layers with a trainable weight and LoRA factors (names containing ``lora_``) are
    skipped.
    """
    if FP8_DTYPE is None:
        raise PanoInputError("model.quantize_base: fp8 needs torch >= 2.1 (torch.float8_e4m3fn)")
    n = 0
    for name, m in module.named_modules():
        if not isinstance(m, torch.nn.Linear) or "lora_" in name or m.weight.requires_grad:
            continue
        if m.weight.dtype == FP8_DTYPE:
            continue
        w = m.weight.data.float()
        scale = (w.abs().amax() / _FP8_MAX).clamp_min(1e-12)
        m.weight = torch.nn.Parameter((w / scale).to(FP8_DTYPE), requires_grad=False)
        m.register_buffer("fp8_scale", scale.reshape(()).to(torch.float32), persistent=False)
        m.forward = types.MethodType(_fp8_forward, m)
        n += 1
    return n
