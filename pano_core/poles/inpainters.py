"""Inpainters for pole faces: any callable ``(images, masks) -> images`` (:class:`Inpainter`).

- :class:`OpenCVInpainter` -- Telea / Navier-Stokes, no weights;
- :class:`DiffusersInpainter` -- a diffusers inpainting pipeline (FLUX.1-Fill, SD inpainting,
  ...) loaded with :mod:`pano_core.diffusion.loading` (folder or hub id, safetensors only,
  dtype, device, offload);
- :func:`make_inpainter` -- an inpainter from a short spec (``opencv``, ``opencv-ns``,
  ``diffusers:PATH_OR_HUB_ID``).
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ..diffusion.loading import (
    OFFLOAD_MODES,
    dtype_kwargs,
    model_index_class,
    place,
    resolve_device,
    resolve_dtype,
    resolve_source,
)
from ..errors import PanoInputError
from ..validate import check_bchw, check_choice
from .faces import _check_pole_masks

__all__ = ["Inpainter", "OpenCVInpainter", "DiffusersInpainter", "make_inpainter", "OPENCV_DEFAULT_FRACTION",
           "fsr_available", "opencv_methods"]

# OpenCV inpainting (Telea, Navier-Stokes) smears an X over any large square hole: it is for small
# defects, so its default pole mask is smaller than the model refiner's 0.5 (DiT360's).
OPENCV_DEFAULT_FRACTION = 0.2


def fsr_available() -> bool:
    """Whether the installed OpenCV has ``xphoto`` (opencv-contrib) with frequency-selective
    reconstruction (FSR) inpainting."""
    try:
        import cv2
    except ImportError:  # pragma: no cover
        return False
    xp = getattr(cv2, "xphoto", None)
    return xp is not None and hasattr(xp, "inpaint") and hasattr(xp, "INPAINT_FSR_FAST")


def opencv_methods() -> tuple[str, ...]:
    """The OpenCV inpainting methods available here: telea, ns, and fsr with opencv-contrib."""
    return ("telea", "ns", "fsr") if fsr_available() else ("telea", "ns")


@runtime_checkable
class Inpainter(Protocol):
    """Fills masked regions of images.

    ``__call__(images (N, C, S, S) float 0..1, masks (N, 1, S, S) 0..1, 1 = fill)`` returns
    (N, C, S, S) float 0..1. Pixels outside the mask may change a little (e.g. a VAE round trip);
    :func:`merge_pole_faces` only uses them in the feather band.
    """

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor: ...


def _checked_inputs(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inpainter inputs checked: images (N, C, S, S); masks (N, 1, S, S) or (N, S, S) -> (N, 1, S, S)."""
    images = check_bchw(images, "images")
    n, _, h, w = images.shape
    if isinstance(masks, torch.Tensor) and masks.ndim == 3:
        masks = masks.unsqueeze(1)
    return images, (_check_pole_masks(masks, n, h, "masks") if h == w else masks)


class OpenCVInpainter:
    """OpenCV inpainting, no weights needed: ``method`` "telea" (Telea 2004, fast marching),
    "ns" (Navier-Stokes) or, when opencv-contrib's ``xphoto`` is installed, "fsr" (frequency-
    selective reconstruction, ``cv2.xphoto.inpaint`` with ``INPAINT_FSR_FAST``: fills large holes
    with texture instead of smearing an X). ``radius``: neighbourhood radius in pixels (Telea/NS).

    3-channel images are inpainted as 8-bit RGB (one call); other channel counts channel by
    channel in 16 bit. Pixels outside the mask are returned unchanged.
    """

    METHODS = ("telea", "ns", "fsr")

    def __init__(self, method: str = "telea", radius: float = 3.0):
        import cv2

        m = check_choice(str(method).lower().replace("opencv-", "").replace("navier-stokes", "ns"), "method", self.METHODS)
        if m == "fsr" and not fsr_available():
            raise PanoInputError(
                "method: fsr needs OpenCV's xphoto module (pip install opencv-contrib-python in place of "
                "opencv-python); available here: telea, ns"
            )
        if not radius > 0:
            raise PanoInputError(f"radius: expected a positive number of pixels, got {radius}")
        self.method = m
        self.radius = float(radius)
        self._flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}.get(m)

    def __repr__(self) -> str:
        return f"OpenCVInpainter(method={self.method!r}, radius={self.radius})"

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        import cv2

        images, masks = _checked_inputs(images, masks)
        n, c, s1, s2 = images.shape
        if not isinstance(masks, torch.Tensor) or masks.ndim != 4 or masks.shape[-2:] != images.shape[-2:]:
            got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise PanoInputError(f"masks: expected (N, 1, {s1}, {s2}) masks, got {got}")
        imgs = images.detach().float().cpu()
        holes = masks.detach().float().cpu()[:, 0] > 0.5
        out = imgs.clone()
        margin = int(math.ceil(self.radius)) + 2  # pixels farther from the hole do not take part
        for i in range(n):
            hole_t = holes[i]
            if not bool(hole_t.any()):
                continue
            rows = hole_t.any(1).nonzero().flatten()
            cols = hole_t.any(0).nonzero().flatten()
            r0, r1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, s1)
            c0, c1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, s2)
            crop = imgs[i, :, r0:r1, c0:c1].clamp(0, 1)
            hole = np.ascontiguousarray(hole_t[r0:r1, c0:c1].numpy().astype(np.uint8) * 255)
            if self.method == "fsr":  # xphoto: mask non-zero = known pixels; 8-bit, 1 or 3 channels
                known = np.ascontiguousarray(255 - hole)
                chans = []
                groups = [list(range(3))] + [[k] for k in range(3, c)] if c >= 3 else [[k] for k in range(c)]
                for grp in groups:
                    arr = np.ascontiguousarray((crop[grp].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8))
                    if arr.shape[2] == 1:
                        arr = arr[:, :, 0]
                    res = np.zeros_like(arr)
                    cv2.xphoto.inpaint(arr, known, res, cv2.xphoto.INPAINT_FSR_FAST)
                    res = res.reshape(arr.shape[0], arr.shape[1], -1)
                    chans.append(torch.from_numpy(res.astype(np.float32) / 255.0).permute(2, 0, 1))
                filled = torch.cat(chans)
            elif c == 3:
                arr = np.ascontiguousarray((crop.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8))
                res = cv2.inpaint(arr, hole, self.radius, self._flag)
                filled = torch.from_numpy(res.astype(np.float32) / 255.0).permute(2, 0, 1)
            else:
                # one channel at a time in 16 bit (OpenCV's float32 Telea path is unreliable)
                chans = []
                for ch in range(c):
                    arr = np.ascontiguousarray((crop[ch].numpy() * 65535.0 + 0.5).astype(np.uint16))
                    res = cv2.inpaint(arr, hole, self.radius, self._flag)
                    chans.append(torch.from_numpy(res.astype(np.float32) / 65535.0))
                filled = torch.stack(chans)
            sel = hole_t[r0:r1, c0:c1]
            out[i, :, r0:r1, c0:c1] = torch.where(sel, filled, imgs[i, :, r0:r1, c0:c1])
        return out.to(device=images.device, dtype=images.dtype)


class DiffusersInpainter:
    """Inpainting with a diffusers pipeline (e.g. ``black-forest-labs/FLUX.1-Fill-dev`` via
    ``FluxFillPipeline``, or any pipeline ``AutoPipelineForInpainting`` can build).

    Build it with :meth:`from_pretrained` (local folder or hub id) or wrap an existing pipeline.
    Faces are resized to ``size`` (a multiple of 16; None keeps their size rounded down to 16),
    inpainted in one batch with a seeded generator, and resized back.
    """

    def __init__(
        self,
        pipe: Any,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float | None = None,
        strength: float = 1.0,
        seed: int = 0,
        size: int | None = None,
        extra_call_kwargs: dict | None = None,
    ):
        self.pipe = pipe
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = guidance_scale
        self.strength = float(strength)
        self.seed = int(seed)
        self.size = size
        self.extra_call_kwargs = dict(extra_call_kwargs or {})
        if self.num_inference_steps < 1:
            raise PanoInputError(f"steps: expected at least 1, got {num_inference_steps}")
        if not 0.0 < self.strength <= 1.0:
            raise PanoInputError(f"strength: expected a number in (0, 1], got {strength}")
        if size is not None and (int(size) < 16 or int(size) % 16):
            raise PanoInputError(f"size: expected a multiple of 16 (>= 16), got {size}")

    def __repr__(self) -> str:
        return f"DiffusersInpainter({type(self.pipe).__name__}, steps={self.num_inference_steps}, seed={self.seed})"

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        pipeline: str = "auto",
        dtype: str | torch.dtype | None = "auto",
        device: str | None = None,
        offload: str = "none",
        local_files_only: bool = False,
        variant: str | None = None,
        progress: bool = False,
        **kwargs: Any,
    ) -> DiffusersInpainter:
        """Load an inpainting pipeline from a local diffusers folder or a hub id.

        ``pipeline``: "auto" (the class named in ``model_index.json`` when it is an inpainting
        or fill pipeline, else ``AutoPipelineForInpainting``), "flux-fill" (``FluxFillPipeline``)
        or "auto-inpaint" (``AutoPipelineForInpainting``). ``dtype``: auto (bf16 on CUDA, fp32
        on CPU), fp32, fp16, bf16. ``device``: default cuda if available. ``offload``: "none",
        "model" (``enable_model_cpu_offload``) or "sequential"
        (``enable_sequential_cpu_offload``). Weights are only read from safetensors files.
        Remaining keyword arguments go to :class:`DiffusersInpainter` (prompt, seed, ...).
        """
        import diffusers

        kind, src = resolve_source(path_or_id, name="model")
        dev = resolve_device(device or "auto")
        torch_dtype = resolve_dtype(dtype, dev)
        check_choice(offload, "offload", OFFLOAD_MODES)
        load_kw: dict[str, Any] = {
            **dtype_kwargs(torch_dtype),
            "use_safetensors": True,
            "local_files_only": local_files_only,
        }
        if variant:
            load_kw["variant"] = variant
        if pipeline == "flux-fill":
            pipe_cls: Any = diffusers.FluxFillPipeline
        elif pipeline == "auto-inpaint":
            pipe_cls = diffusers.AutoPipelineForInpainting
        elif pipeline == "auto":
            name = model_index_class(src) if kind == "folder" else None
            if name and ("Inpaint" in name or "Fill" in name) and hasattr(diffusers, name):
                pipe_cls = getattr(diffusers, name)
            elif name is None and "flux" in src.lower() and "fill" in src.lower():
                pipe_cls = diffusers.FluxFillPipeline
            else:
                pipe_cls = diffusers.AutoPipelineForInpainting
        else:
            raise PanoInputError(f"pipeline: expected auto, flux-fill or auto-inpaint, got {pipeline!r}")
        try:
            pipe = pipe_cls.from_pretrained(src, **load_kw)
        except (OSError, ValueError) as e:
            raise PanoInputError(f"model: cannot load an inpainting pipeline from {src!r}: {e}") from e
        place(pipe, dev, offload)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=not progress)
        return cls(pipe, **kwargs)

    def _call_kwargs(self, images: torch.Tensor, masks: torch.Tensor, size: int) -> dict[str, Any]:
        n = images.shape[0]
        params = inspect.signature(self.pipe.__call__).parameters

        def per_image(p):
            return list(p) if isinstance(p, (list, tuple)) else [p] * n

        kw: dict[str, Any] = {
            "prompt": per_image(self.prompt),
            "image": images,
            "mask_image": masks,
            "height": size,
            "width": size,
            "num_inference_steps": self.num_inference_steps,
            "generator": torch.Generator(device="cpu").manual_seed(self.seed),
            "output_type": "pt",
        }
        if self.negative_prompt is not None and "negative_prompt" in params:
            kw["negative_prompt"] = per_image(self.negative_prompt)
        if self.guidance_scale is not None:
            kw["guidance_scale"] = float(self.guidance_scale)
        if "strength" in params:
            kw["strength"] = self.strength
        kw.update(self.extra_call_kwargs)
        return {k: v for k, v in kw.items() if k in params or k in self.extra_call_kwargs}

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        images, masks = _checked_inputs(images, masks)
        n, c, h, w = images.shape
        if c != 3:
            # the pipelines work on RGB: grey is expanded (and averaged back), extra channels
            # (alpha) are kept as they are
            rgb = images[:, :1].expand(-1, 3, -1, -1) if c in (1, 2) else images[:, :3]
            out = self(rgb, masks)
            head = out.mean(dim=1, keepdim=True) if c in (1, 2) else out
            return torch.cat([head, images[:, head.shape[1] :]], dim=1)
        size = int(self.size) if self.size else max(16, (max(h, w) // 16) * 16)
        x = images.detach().float().cpu().clamp(0, 1)
        m = (masks.detach().float().cpu() > 0.5).float()
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            m = F.interpolate(m, size=(size, size), mode="nearest")
        kw = self._call_kwargs(x, m, size)
        with torch.inference_mode():
            result = self.pipe(**kw)
        out = result.images if hasattr(result, "images") else result[0]
        if isinstance(out, np.ndarray):
            out = torch.from_numpy(out).permute(0, 3, 1, 2)
        out = out.float().cpu().clamp(0, 1)
        if out.shape[0] != n:
            raise PanoInputError(f"inpainter: the pipeline returned {out.shape[0]} images for {n} inputs")
        if tuple(out.shape[-2:]) != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return out.to(device=images.device, dtype=images.dtype)


def make_inpainter(spec: str | Inpainter | None = "opencv", **kwargs: Any) -> Inpainter:
    """Inpainter from a short spec: ``opencv`` / ``opencv-telea`` (default), ``opencv-ns``, or
    ``diffusers:PATH_OR_HUB_ID`` (keyword arguments go to :meth:`DiffusersInpainter.from_pretrained`).
    An object that is already callable is returned as is."""
    if spec is None:
        spec = "opencv"
    if not isinstance(spec, str):
        if callable(spec):
            return spec
        raise PanoInputError(f"inpainter: expected a spec string or a callable, got {type(spec).__name__}")
    s = spec.strip()
    low = s.lower()
    if low in ("opencv", "opencv-telea", "telea"):
        return OpenCVInpainter("telea", **kwargs)
    if low in ("opencv-ns", "ns", "navier-stokes"):
        return OpenCVInpainter("ns", **kwargs)
    if low in ("opencv-fsr", "fsr"):
        return OpenCVInpainter("fsr", **kwargs)
    if low.startswith("diffusers:"):
        target = s.split(":", 1)[1]
        if not target:
            raise PanoInputError("inpainter: diffusers:PATH_OR_ID needs a folder or a hub id after the colon")
        return DiffusersInpainter.from_pretrained(target, **kwargs)
    raise PanoInputError(f"inpainter: expected opencv, opencv-ns, opencv-fsr or diffusers:PATH_OR_ID, got {spec!r}")
