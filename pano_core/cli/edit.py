"""``pano360 edit``: DiT360 inpainting / outpainting of an ERP panorama with a mask.

RF-inversion of the panorama, then a [source, edit] denoising pair with masked feature
replacement (:mod:`pano_core.dit360.editing`). Mask: white = generate anew, black = keep
(``--invert-mask`` flips it). ``--mode outpaint`` treats the white region as unknown (fresh
seeded noise there instead of the inverted latent). ``--preset official`` runs exactly the
official DiT360 editing settings, ``--preset pano360`` (default) ours; single options override
the preset. Existing outputs are never overwritten unless ``--force``. Bad input exits with code 2 and a message, before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import PanoInputError
from ..io import check_writable, read_image, write_image
from . import _dit360
from ._args import check_image_output, finite_float, fraction, nonneg_int, positive_int


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
    out = check_image_output(args.output, args.force)
    image, mask = _load_inputs(args)
    _dit360.check_pad(args.pad, image.shape[-1])

    from ..diffusion.prompts import PANORAMA_PREFIX, add_prompt_prefix
    from ..dit360 import editing

    t0 = time.time()
    pipe = _dit360.load_pipeline(args)
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
        preset=args.preset,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        gamma=args.gamma,
        eta=args.eta,
        eta_start=args.eta_start,
        eta_stop=args.eta_stop,
        tau=args.tau,
        replace=args.replace,
        circular_encode=args.circular_encode,
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
    p.add_argument("--preset", choices=("pano360", "official"), default="pano360",
                   help="pano360 (default): our settings; official: exactly the official DiT360 editing code's "
                        "(50 steps, inversion gamma 1 with guidance 0 and an empty prompt, eta 1 on steps [0, 49), "
                        "guidance 3.5, fresh noise also when inpainting, mu from the unpadded token count, plain "
                        "VAE encode). The options below override it")
    p.add_argument("--steps", type=positive_int, default=None, help="inversion and sampling steps (pano360 28, official 50)")
    p.add_argument("--guidance", type=finite_float, default=None, help="FLUX.1-dev distilled guidance (pano360 2.8, official 3.5)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the inversion noise (default 0); same seed -> same result")
    p.add_argument("--gamma", type=fraction, default=None, help="inversion controller strength (pano360 0.5, official 1.0)")
    p.add_argument("--eta", type=fraction, default=None, help="source-branch controller strength (pano360 0.9, official 1.0)")
    p.add_argument("--eta-start", type=fraction, default=None, help="first step fraction with eta (default 0)")
    p.add_argument("--eta-stop", type=fraction, default=None,
                   help="step fraction where eta stops (pano360 1 = all steps, official 0.98 = [0, 49) of 50)")
    p.add_argument("--tau", type=fraction, default=None, help="feature replacement while sigma > tau (default 0.5)")
    p.add_argument("--replace", choices=("attention", "block"), default=None,
                   help="attention (default, official): replace only the edit branch's attention input at kept "
                        "tokens; block: replace the whole block input (residual stream too, stronger)")
    p.add_argument("--circular-encode", action=argparse.BooleanOptionalAction, default=None,
                   help="VAE-encode with 8 wrapped latent columns (pano360 on, official off)")
    p.add_argument("--blend-until", type=fraction, default=None,
                   help="blend latents by the mask while sigma > this (default: tau; 0 = every step)")
    _dit360.add_model_args(p)
    _dit360.add_pad_arg(p)
    p.add_argument("--circular-decode", action="store_true", help="VAE-decode with wrapped latent columns")
    _dit360.add_output_args(p)
    p.set_defaults(func=cmd_edit)


if __name__ == "__main__":  # pragma: no cover
    from . import main

    sys.exit(main(["edit", *sys.argv[1:]]))
