"""A base for generators that wrap a diffusers pipeline (DiT360 on Flux, JoPano on Sana).

:class:`DiffusersGenerator` holds what every such wrapper needs and nothing model-specific:
the wrapped pipeline (``self.pipe``) and its components (``transformer``, ``vae``,
``scheduler``, ``device`` -- the execution device under offload --, ``dtype``,
``vae_scale_factor``), placement (:meth:`~DiffusersGenerator.set_memory`: device, CPU offload,
VAE tiling, via :func:`pano_core.diffusion.loading.place`), checked LoRA loading with
per-adapter strengths (:meth:`~DiffusersGenerator.load_lora`, :meth:`~DiffusersGenerator.set_lora_scale`)
and diffusers' progress bar. A subclass adds loading of its model family, its text encoder, its
velocity function and ``__call__`` (on :func:`pano_core.diffusion.sampling.sample`).
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import PanoInputError
from .loading import place
from .lora import LoraReport, load_lora
from .vae import set_tiling

__all__ = ["DiffusersGenerator"]


class DiffusersGenerator:
    """Wraps a diffusers pipeline ``pipe`` (kept usable as ``self.pipe``); see the module docstring."""

    default_adapter = "default"

    def __init__(self, pipe):
        self.pipe = pipe
        self.lora_reports: dict[str, LoraReport] = {}
        self._adapter_scales: dict[str, float] = {}

    # ------------------------------------------------------------------ memory
    def set_memory(self, device: str | torch.device = "auto", offload: str = "none", vae_tiling: bool = False) -> None:
        """Place the models: ``offload="none"`` moves everything to ``device``; ``"model"``
        keeps models on the CPU and moves each to the GPU while it runs (diffusers
        ``enable_model_cpu_offload``); ``"sequential"`` streams layer by layer (slowest,
        smallest). ``vae_tiling`` encodes/decodes large panoramas in tiles."""
        place(self.pipe, device, offload)
        set_tiling(self.vae, vae_tiling)

    # ------------------------------------------------------------------ LoRA
    def load_lora(
        self,
        lora: str | os.PathLike | dict,
        weight_name: str | None = None,
        scale: float = 1.0,
        adapter_name: str | None = None,
        strict: bool = True,
        local_files_only: bool | None = None,
    ) -> LoraReport:
        """Load a PEFT/diffusers LoRA (file, folder, hub id or state dict) into the transformer
        with strength ``scale`` (:func:`pano_core.diffusion.lora.load_lora`: raises
        :class:`PanoInputError` naming how many keys matched when they do not all match
        (``strict``) or none do)."""
        name = adapter_name or self.default_adapter
        report = load_lora(self.pipe, lora, weight_name=weight_name, adapter_name=name, strict=strict,
                           local_files_only=local_files_only)
        report.scale = float(scale)
        self.lora_reports[name] = report
        self._adapter_scales[name] = float(scale)
        self._apply_adapter_scales()
        return report

    def set_lora_scale(self, scale: float, adapter_name: str | None = None) -> None:
        """Change the strength of a loaded adapter."""
        name = adapter_name or self.default_adapter
        if name not in self._adapter_scales:
            raise PanoInputError(f"lora: no adapter named {name!r} is loaded")
        self._adapter_scales[name] = float(scale)
        self._apply_adapter_scales()

    def _apply_adapter_scales(self) -> None:
        self.pipe.set_adapters(list(self._adapter_scales), adapter_weights=list(self._adapter_scales.values()))

    # ------------------------------------------------------------------ components
    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def device(self) -> torch.device:
        """Where the computation runs (the GPU under CPU offload)."""
        return self.pipe._execution_device

    @property
    def _execution_device(self) -> torch.device:
        """Alias of :attr:`device` (the name diffusers pipelines use)."""
        return self.pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def progress_bar(self, total: int, enabled: bool = True):
        """diffusers' tqdm progress bar (respects ``pipe.set_progress_bar_config``); a no-op
        context with ``update()`` when not ``enabled``."""
        if not enabled:
            return contextlib.nullcontext(_NullBar())
        return self.pipe.progress_bar(total=total)

    def maybe_free_model_hooks(self) -> None:
        """Let diffusers' offload hooks release the models after a run."""
        self.pipe.maybe_free_model_hooks()


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass
