"""Options and loading shared by the DiT360 subcommands (``generate``, ``edit``).

Private module (leading underscore): not a subcommand module.
"""

from __future__ import annotations

import argparse

from ..diffusion.prompts import PANORAMA_PREFIX
from ._args import add_device_args, add_force, finite_float, nonneg_int


def add_model_args(p: argparse.ArgumentParser) -> None:
    """FLUX.1 model, DiT360 LoRA, device/dtype/offload and VAE tiling options."""
    from ..dit360.loading import DEFAULT_LORA, DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"FLUX.1 diffusers folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--lora", default=DEFAULT_LORA, help=f"LoRA file, folder or hub id (default {DEFAULT_LORA})")
    p.add_argument("--lora-weight-name", default=None, help="file name inside a LoRA folder/repo (default adapter_model.safetensors)")
    p.add_argument("--lora-scale", type=finite_float, default=1.0, help="LoRA strength (default 1.0)")
    p.add_argument("--no-lora", action="store_true", help="plain FLUX.1 without a LoRA")
    add_device_args(p)


def add_pad_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pad", type=nonneg_int, default=1,
                   help="circular padding in token columns per side (default 1 = DiT360; 0 = plain FLUX)")


def add_output_args(p: argparse.ArgumentParser) -> None:
    """--prefix, --bits, --local-files-only, --force, -q (in this order)."""
    p.add_argument("--prefix", action=argparse.BooleanOptionalAction, default=True,
                   help=f'prefix the prompt(s) with "{PANORAMA_PREFIX}" as DiT360 does (default on; --no-prefix to disable)')
    p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub (use cached/local files only)")
    add_force(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def quiet_loading_bars() -> None:
    """Silence diffusers/transformers loading progress bars (``--quiet``)."""
    try:
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def load_pipeline(args):
    """``DiT360Pipeline.from_pretrained`` from the options of :func:`add_model_args` (and ``--quiet``)."""
    from ..dit360.pipeline import DiT360Pipeline

    if args.quiet:
        quiet_loading_bars()
    pipe = DiT360Pipeline.from_pretrained(
        args.model,
        device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        offload=args.offload,
        vae_tiling=args.vae_tiling,
        lora=None if args.no_lora else args.lora,
        lora_weight_name=args.lora_weight_name,
        lora_scale=args.lora_scale,
        local_files_only=True if args.local_files_only else None,
    )
    if args.quiet:
        pipe.flux.set_progress_bar_config(disable=True)
    return pipe


def check_pad(pad: int, width: int) -> None:
    """--pad: at most a quarter of the token width."""
    from ..errors import PanoInputError

    max_pad = (width // 16) // 4
    if pad > max_pad:
        raise PanoInputError(f"--pad: at most a quarter of the token width ({width // 16} tokens -> {max_pad}); got {pad}")
