"""Pano360 training (installed as ``pano360_training``): the ``pano360-train`` command.

Trainers for the panorama adapters our loaders read: ``prepare`` (data checks, pole refinement,
perspective-guidance canvases), ``dit360`` (DiT360's LoRA for FLUX.1 with circular padding, yaw,
cube and perspective losses), ``jopano`` (the Joint-Face adapter for Sana with T2P/V2P condition
switching) and ``sample``. Imports ``pano_core``, never the ComfyUI nodes.
Run ``pano360-train --help`` or ``accelerate launch -m pano360_training ...`` for several GPUs.
"""

__version__ = "0.1.0"
