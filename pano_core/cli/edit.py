"""``pano360 edit``: DiT360 inpainting / outpainting of an ERP panorama with a mask.

RF-inversion of the panorama, then a [source, edit] denoising pair with masked feature
replacement (:mod:`pano_core.dit360.editing`). Mask: white = generate anew, black = keep
(``--invert-mask`` flips it). ``--mode outpaint`` treats the white region as unknown (fresh
seeded noise there instead of the inverted latent). Existing outputs are never overwritten
unless ``--force``. Bad input exits with code 2 and a message, before any model is loaded.
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


def _fraction(text: str) -> float:
    v = _finite(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def _load_inputs(args):
    """Read and check the panorama and mask (no model needed)."""
    from ..validate import check_erp

    image = read_image(args.image, "--image")
    if image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1)
    image = check_erp(image[:, :3].contiguous(), "--image", channels=(3,))
    h, w = image.shape[-2:]
    if h % 16 or w % 16:
        raise PanoInputError(f"--image: width and height must be multiples of 16 for Flux; got {w}x{h} (W x H)")
    mask = read_image(args.mask, "--mask")
    if mask.shape[1] in (2, 4):  # grey+alpha / RGBA: use the colour, not the alpha
        mask = mask[:, :-1]
    mask = mask.mean(dim=1, keepdim=True)
    if mask.shape[-2:] != image.shape[-2:]:
        raise PanoInputError(
            f"--mask: size {mask.shape[-1]}x{mask.shape[-2]} (W x H) does not match the image "
            f"{w}x{h}; the mask must have the panorama's size"
        )
    if args.invert_mask:
        mask = 1.0 - mask
    if not bool((mask > 0.5).any()):
        raise PanoInputError("--mask: no white pixels: nothing to generate (white = generate, black = keep)")
    return image, mask


def cmd_edit(args) -> int:
    if not args.prompt or not args.prompt.strip():
        raise PanoInputError("--prompt: expected a non-empty text")
    out = Path(args.output)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise PanoInputError(f"-o/--output: unsupported file type {out.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if out.exists() and not args.force:
        raise PanoInputError(f"output: {out} already exists; pass --force to overwrite it")
    image, mask = _load_inputs(args)
    max_pad = (image.shape[-1] // 16) // 4
    if args.pad > max_pad:
        raise PanoInputError(f"--pad: at most a quarter of the token width ({image.shape[-1] // 16} tokens -> {max_pad}); got {args.pad}")

    from ..dit360 import editing
    from ..dit360.pipeline import PANORAMA_PREFIX, DiT360Pipeline, add_prompt_prefix

    lora = None if args.no_lora else args.lora
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
    prefix = PANORAMA_PREFIX if args.prefix else None
    prompt = add_prompt_prefix(args.prompt, prefix)[0]
    source_prompt = add_prompt_prefix(args.source_prompt, prefix)[0] if args.source_prompt else (prefix or "")
    fn = editing.inpaint if args.mode == "inpaint" else editing.outpaint
    result = fn(
        pipe,
        image,
        mask,
        prompt=prompt,
        source_prompt=source_prompt,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        gamma=args.gamma,
        eta=args.eta,
        eta_start=args.eta_start,
        eta_stop=args.eta_stop,
        tau=args.tau,
        blend_until=args.blend_until,
        padding=args.pad,
        progress=not args.quiet,
        circular_decode=args.circular_decode,
    )
    check_writable(out, args.force)
    write_image(out, result[:1].float().cpu(), bits=args.bits, force=args.force)
    print(f"wrote {out} ({args.mode}, {image.shape[-1]}x{image.shape[-2]}, seed {args.seed}, {time.time() - t0:.1f} s)")
    return 0


def register(subparsers) -> None:
    from ..dit360.loading import DEFAULT_LORA, DEFAULT_MODEL

    p = subparsers.add_parser(
        "edit",
        help="inpaint/outpaint a panorama with DiT360 (RF-inversion + masked feature replacement)",
        description=(
            "Edit a 2:1 panorama with FLUX.1-dev + DiT360's LoRA: the image is RF-inverted (seeded), then the "
            "white region of --mask is generated from --prompt while the black region is reconstructed. "
            "--mode inpaint: the white region starts from the inverted image (keeps its layout); --mode "
            "outpaint: the white region is unknown (e.g. around a kept photo) and starts from fresh noise."
        ),
    )
    p.add_argument("--mode", choices=("inpaint", "outpaint"), required=True, help="inpaint or outpaint")
    p.add_argument("--image", required=True, help="input ERP panorama (2:1, multiples of 16 px)")
    p.add_argument("--mask", required=True, help="mask of the same size: white = generate anew, black = keep")
    p.add_argument("--invert-mask", action="store_true", help="flip the mask (white = keep)")
    p.add_argument("--prompt", required=True, help="what the white region should show")
    p.add_argument("--source-prompt", default="", help="description of the input panorama (default empty)")
    p.add_argument("-o", "--output", required=True, help="output image (.png or .jpg); never overwritten without --force")
    p.add_argument("--steps", type=_positive, default=28, help="inversion and sampling steps (default 28)")
    p.add_argument("--guidance", type=_finite, default=2.8, help="FLUX.1-dev distilled guidance (default 2.8)")
    p.add_argument("--seed", type=_nonneg, default=0, help="seed of the inversion noise (default 0); same seed -> same result")
    p.add_argument("--gamma", type=_fraction, default=0.5, help="inversion controller strength (default 0.5)")
    p.add_argument("--eta", type=_fraction, default=0.9, help="source-branch controller strength (default 0.9)")
    p.add_argument("--eta-start", type=_fraction, default=0.0, help="first step fraction with eta (default 0)")
    p.add_argument("--eta-stop", type=_fraction, default=1.0, help="step fraction where eta stops (default 1 = all)")
    p.add_argument("--tau", type=_fraction, default=0.5, help="feature replacement while sigma > tau (default 0.5)")
    p.add_argument("--blend-until", type=_fraction, default=None,
                   help="blend latents by the mask while sigma > this (default: tau; 0 = every step)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"FLUX.1 diffusers folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--lora", default=DEFAULT_LORA, help=f"LoRA file, folder or hub id (default {DEFAULT_LORA})")
    p.add_argument("--lora-weight-name", default=None, help="file name inside a LoRA folder/repo (default adapter_model.safetensors)")
    p.add_argument("--lora-scale", type=_finite, default=1.0, help="LoRA strength (default 1.0)")
    p.add_argument("--no-lora", action="store_true", help="plain FLUX.1 without a LoRA")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="weights dtype (default auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--offload", choices=("none", "model", "sequential"), default="none",
                   help="CPU offload: model (whole models) or sequential (layer by layer, slowest)")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles (less memory for large panoramas)")
    p.add_argument("--pad", type=_nonneg, default=1, help="circular padding in token columns per side (default 1 = DiT360)")
    p.add_argument("--circular-decode", action="store_true", help="VAE-decode with wrapped latent columns")
    p.add_argument("--prefix", action=argparse.BooleanOptionalAction, default=True,
                   help='prefix prompts with "This is a panorama." as DiT360 does (default on)')
    p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub (cached/local files only)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_edit)


if __name__ == "__main__":  # pragma: no cover
    from . import main

    sys.exit(main(["edit", *sys.argv[1:]]))
