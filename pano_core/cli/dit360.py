"""``pano360 generate``: text-to-panorama (and view-to-panorama) with DiT360 on diffusers FLUX.1.

Loads FLUX.1-dev (local diffusers folder or hub id) and DiT360's LoRA, samples with circular
token padding (:mod:`pano_core.dit360.pipeline`) and writes a 2:1 PNG/JPEG. With ``--view`` a
perspective photo is placed on the panorama (fov, yaw, pitch) and the rest is outpainted
(:func:`pano_core.dit360.editing.generate_from_view`). Existing outputs are never overwritten
unless ``--force``. Bad input exits with code 2 and a message.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from ..errors import PanoInputError
from ..io import IMAGE_SUFFIXES, check_writable, read_image, write_image


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonneg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _load_generate_from_view():
    try:
        from ..dit360 import editing
    except ImportError as e:
        raise PanoInputError(f"--view: view-to-panorama is not available in this installation ({e})") from e
    fn = getattr(editing, "generate_from_view", None)
    if fn is None:
        raise PanoInputError(
            "--view: view-to-panorama is not available in this installation "
            "(pano_core.dit360.editing.generate_from_view is missing)"
        )
    return fn


def _quiet_loading_bars() -> None:
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


def cmd_generate(args) -> int:
    from ..dit360.pipeline import PANORAMA_PREFIX, DiT360Pipeline, add_prompt_prefix, check_pano_size

    # cheap checks first: nothing is loaded when the request cannot succeed
    if not args.prompt or not args.prompt.strip():
        raise PanoInputError("--prompt: expected a non-empty text")
    check_pano_size(args.width, args.height)
    out = Path(args.output)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise PanoInputError(f"-o/--output: unsupported file type {out.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if out.exists() and not args.force:
        raise PanoInputError(f"output: {out} already exists; pass --force to overwrite it")
    max_pad = (args.width // 16) // 4
    if args.pad > max_pad:
        raise PanoInputError(f"--pad: at most a quarter of the token width ({args.width // 16} tokens -> {max_pad}); got {args.pad}")
    view = None
    generate_from_view = None
    if args.view is not None:
        if args.fov is None:
            raise PanoInputError("--fov: required with --view (the photo's horizontal field of view in degrees)")
        if not 0.0 < args.fov < 180.0:
            raise PanoInputError(f"--fov: expected a horizontal field of view between 0 and 180 degrees, got {args.fov}")
        generate_from_view = _load_generate_from_view()
        view = read_image(args.view, "--view photo")
        if view.shape[1] == 1:
            view = view.expand(-1, 3, -1, -1)
        view = view[:, :3].contiguous()
    elif args.fov is not None or args.view_yaw or args.view_pitch:
        raise PanoInputError("--fov/--view-yaw/--view-pitch: only meaningful with --view PHOTO")

    lora = None if args.no_lora else args.lora
    if args.quiet:
        _quiet_loading_bars()
    t0 = time.time()
    pipe = DiT360Pipeline.from_pretrained(
        args.model,
        device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        offload=args.offload,
        vae_tiling=args.vae_tiling,
        lora=lora,
        lora_weight_name=args.lora_weight_name,
        lora_scale=args.lora_scale,
        local_files_only=True if args.local_files_only else None,
    )
    if args.quiet:
        pipe.flux.set_progress_bar_config(disable=True)
    if lora is not None and not args.quiet:
        rep = pipe.lora_reports.get("dit360")
        if rep is not None:
            print(f"LoRA {rep.source}: {rep.summary()}", file=sys.stderr)
    prefix = PANORAMA_PREFIX if args.prefix else None
    if view is not None:
        prompt = add_prompt_prefix(args.prompt, prefix)[0]
        image = generate_from_view(
            pipe.flux,
            view,
            args.fov,
            args.view_yaw,
            args.view_pitch,
            prompt=prompt,
            height=args.height,
            width=args.width,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
            padding=args.pad,
            progress=not args.quiet,
        )
        image = image.float().cpu()
    else:
        res = pipe(
            args.prompt,
            width=args.width,
            height=args.height,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
            pad=args.pad,
            id_mode=args.id_mode,
            resync=args.resync,
            circular_decode=args.circular_decode,
            decode_pad=args.decode_pad,
            prompt_prefix=prefix,
            max_sequence_length=args.max_sequence_length,
            progress=not args.quiet,
        )
        image = res.images
    check_writable(out, args.force)
    write_image(out, image[:1], bits=args.bits, force=args.force)
    print(f"wrote {out} ({args.width}x{args.height}, seed {args.seed}, {time.time() - t0:.1f} s)")
    return 0


def register(subparsers) -> None:
    from ..dit360.loading import DEFAULT_LORA, DEFAULT_MODEL

    p = subparsers.add_parser(
        "generate",
        help="text-to-panorama with DiT360 (FLUX.1-dev + LoRA, circular padding)",
        description=(
            "Generate a seamless 2:1 equirectangular panorama with FLUX.1-dev + DiT360's LoRA and "
            "token-level circular padding. Defaults are DiT360's: 2048x1024, 28 steps, guidance 2.8, "
            "1 padded token column per side with wrapped position ids, prompt prefixed with "
            '"This is a panorama.". With --view PHOTO --fov D the photo is placed on the panorama and '
            "the rest is outpainted."
        ),
    )
    p.add_argument("--prompt", required=True, help="text prompt")
    p.add_argument("-o", "--output", required=True, help="output image (.png or .jpg); never overwritten without --force")
    p.add_argument("--width", type=_positive, default=2048, help="panorama width in pixels, multiple of 16 (default 2048)")
    p.add_argument("--height", type=_positive, default=1024, help="panorama height, width/2 (default 1024)")
    p.add_argument("--steps", type=_positive, default=28, help="sampling steps (default 28)")
    p.add_argument("--guidance", type=_finite, default=2.8, help="FLUX.1-dev distilled guidance (default 2.8)")
    p.add_argument("--seed", type=_nonneg, default=0, help="random seed (default 0); same seed -> same panorama")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"FLUX.1 diffusers folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--lora", default=DEFAULT_LORA, help=f"LoRA file, folder or hub id (default {DEFAULT_LORA})")
    p.add_argument("--lora-weight-name", default=None, help="file name inside a LoRA folder/repo (default adapter_model.safetensors)")
    p.add_argument("--lora-scale", type=_finite, default=1.0, help="LoRA strength (default 1.0)")
    p.add_argument("--no-lora", action="store_true", help="plain FLUX.1 without a LoRA")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="weights dtype (default auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--offload", choices=("none", "model", "sequential"), default="none",
                   help="CPU offload: model (one whole model at a time on the GPU) or sequential (layer by layer, slowest)")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles (less memory for large panoramas)")
    p.add_argument("--pad", type=_nonneg, default=1, help="circular padding in token columns per side (default 1 = DiT360; 0 = plain FLUX)")
    p.add_argument("--id-mode", choices=("wrapped", "linear"), default="wrapped",
                   help="position ids of the padded columns (default wrapped = DiT360)")
    p.add_argument("--resync", action="store_true", help="rebuild the padded columns from the opposite edge every step")
    p.add_argument("--circular-decode", action="store_true", help="VAE-decode with wrapped latent columns (no edge seam from the decoder)")
    p.add_argument("--decode-pad", type=_positive, default=4, help="latent columns wrapped per side for --circular-decode (default 4)")
    p.add_argument("--prefix", action=argparse.BooleanOptionalAction, default=True,
                   help='prefix the prompt with "This is a panorama." as DiT360 does (default on; --no-prefix to disable)')
    p.add_argument("--max-sequence-length", type=_positive, default=512, help="T5 tokens (default 512)")
    p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub (use cached/local files only)")
    p.add_argument("--view", default=None, metavar="PHOTO", help="perspective photo to build the panorama around")
    p.add_argument("--fov", type=_finite, default=None, help="horizontal field of view of --view, degrees")
    p.add_argument("--view-yaw", type=_finite, default=0.0, help="where the photo looks: yaw in degrees (default 0 = centre)")
    p.add_argument("--view-pitch", type=_finite, default=0.0, help="where the photo looks: pitch in degrees (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_generate)
