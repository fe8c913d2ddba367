"""``pano360 refine-poles``: inpaint the poles of an equirectangular panorama."""

from __future__ import annotations

import argparse
import time

from ._args import add_force, check_not_input, finite_float, fraction, nonneg_int, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "refine-poles",
        help="inpaint the centre of the top/bottom cube faces and blend them back into an ERP",
        description=(
            "Refine the poles of an equirectangular panorama (DiT360's panoramic refinement): the "
            "central part of the top (U) and bottom (D) cube faces is inpainted and blended back; "
            "the rest of the image stays bit-identical."
        ),
    )
    p.add_argument("input", help="equirectangular panorama (2:1 image file)")
    p.add_argument("-o", "--output", required=True, help="output image file (PNG/JPEG/...)")
    p.add_argument(
        "--inpainter",
        default="opencv",
        help="opencv (Telea, default), opencv-ns (Navier-Stokes), opencv-fsr (needs opencv-contrib) or diffusers:PATH_OR_HUB_ID",
    )
    p.add_argument("--prompt", default="", help="prompt for a diffusers inpainter")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (pipelines that support it)")
    p.add_argument("--steps", type=positive_int, default=28, help="diffusers: number of inference steps (28)")
    p.add_argument("--guidance", type=finite_float, default=None, help="diffusers: guidance scale (pipeline default)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="diffusers: random seed (0)")
    p.add_argument("--size", type=positive_int, default=None, help="diffusers: inpaint faces at this size (multiple of 16)")
    p.add_argument("--dtype", default="auto", help="diffusers: auto, fp32, fp16 or bf16")
    p.add_argument("--device", default=None, help="diffusers: torch device (default cuda if available)")
    p.add_argument(
        "--offload", default="none", choices=("none", "model", "sequential"), help="diffusers: CPU offload mode"
    )
    p.add_argument("--radius", type=finite_float, default=3.0, help="opencv: inpainting radius in pixels (3)")
    p.add_argument("--fraction", type=fraction, default=None,
                   help="share of the face side to inpaint (default 0.2 for opencv*, which smears large holes; "
                   "0.5 for diffusers, as DiT360)")
    p.add_argument("--feather", type=nonneg_int, default=16, help="blend band in face pixels outside the mask (16)")
    p.add_argument("--face-size", type=nonneg_int, default=0, help="pole face size (0: width / 4)")
    p.add_argument("--bits", type=int, choices=(8, 16), default=None, help="output bit depth (default: input's)")
    add_force(p, "overwrite the output if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable, image_bits, read_image, write_image
    from ..poles import join_rgb_alpha, make_inpainter, refine_poles, split_rgb_alpha

    out_path = check_not_input(args.input, args.output, args.force)
    check_writable(out_path, args.force)
    erp = read_image(args.input, "input")
    spec = args.inpainter.strip()
    if spec.lower().startswith("diffusers:"):
        inpainter = make_inpainter(
            spec,
            dtype=args.dtype,
            device=args.device,
            offload=args.offload,
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            size=args.size,
        )
    else:
        inpainter = make_inpainter(spec, radius=args.radius)
    t0 = time.perf_counter()
    from ..poles import DEFAULT_FRACTION, OPENCV_DEFAULT_FRACTION

    frac = args.fraction if args.fraction is not None else (
        OPENCV_DEFAULT_FRACTION if spec.lower().startswith("opencv") else DEFAULT_FRACTION)
    opts = dict(fraction=frac, feather=args.feather, face_size=args.face_size or None)
    if spec.lower().startswith("opencv"):  # OpenCV inpaints any channel count itself
        out = refine_poles(erp, inpainter, **opts)
    else:  # models inpaint RGB
        rgb, _ = split_rgb_alpha(erp)
        out = join_rgb_alpha(refine_poles(rgb, inpainter, **opts), rgb, erp)
    bits = args.bits or image_bits(args.input)
    write_image(out_path, out, bits=bits, force=args.force)
    print(f"refine-poles: wrote {out_path} ({out.shape[-1]}x{out.shape[-2]}, {time.perf_counter() - t0:.2f} s)")
    return 0
