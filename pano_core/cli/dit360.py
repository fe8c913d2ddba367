"""``pano360 generate``: text-to-panorama (and view-to-panorama) with DiT360 on diffusers FLUX.1.

Loads FLUX.1-dev (local diffusers folder or hub id) and DiT360's LoRA, samples with circular
token padding (:mod:`pano_core.dit360.pipeline`) and writes a 2:1 PNG/JPEG. With ``--view`` a
perspective photo is placed on the panorama (fov, yaw, pitch) and the rest is outpainted
(:func:`pano_core.dit360.editing.generate_from_view`). Existing outputs are never overwritten
unless ``--force``. Bad input exits with code 2 and a message.
"""

from __future__ import annotations

import sys
import time

from ..diffusion.prompts import PANORAMA_PREFIX
from ..errors import PanoInputError
from ..io import check_writable, read_image
from . import _batch, _dit360
from ._args import angle, check_image_output, finite_float, nonneg_int, positive_int


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


def cmd_generate(args) -> int:
    from ..dit360.pipeline import check_pano_size

    # cheap checks first: nothing is loaded when the request cannot succeed
    if args.prompts is not None:
        if args.prompt is not None:
            raise PanoInputError("--prompts: a prompt list excludes --prompt")
        items = _batch.read_prompts_file(args.prompts, allow_faces=False, allow_negative=False)
    else:
        if not args.prompt or not args.prompt.strip():
            raise PanoInputError("--prompt: expected a non-empty text (or --prompts FILE)")
        items = [_batch.PromptItem(0, args.prompt, seed=args.seed)]
    check_pano_size(args.width, args.height)
    if args.prompts is not None:
        items = _batch.process_share(items)
        out_dir = _batch.check_batch_outputs(args.output, items, ".png", args.force)
    else:
        out = check_image_output(args.output, args.force)
    _dit360.check_pad(args.pad, args.width)
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

    t0 = time.time()
    if args.prompts is not None:
        args.device = _batch.local_device(args.device)
    pipe = _dit360.load_pipeline(args)
    if not args.no_lora and not args.quiet:
        rep = pipe.lora_reports.get("dit360")
        if rep is not None:
            print(f"LoRA {rep.source}: {rep.summary()}", file=sys.stderr)
    prefix = PANORAMA_PREFIX if args.prefix else None
    for it in items:
        seed = it.seed if it.seed is not None else args.seed + it.index
        image = _generate_one(args, pipe, it.prompt, seed, prefix, view, generate_from_view)
        target = out if args.prompts is None else out_dir / f"{it.stem}.png"
        if args.prompts is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        check_writable(target, args.force)
        settings = {"software": "Pano360 generate", "prompt": it.prompt, "seed": seed, "model": str(args.model),
                    "lora": None if args.no_lora else str(args.lora), "lora_scale": args.lora_scale,
                    **_effective_steps_guidance(args, view), "pad": args.pad,
                    "prefix": PANORAMA_PREFIX if args.prefix else None}
        _batch.write_panorama(target, image[:1], settings, bits=args.bits, force=args.force)
        print(f"wrote {target} ({args.width}x{args.height}, seed {seed}, {time.time() - t0:.1f} s)")
    return 0


def _effective_steps_guidance(args, view) -> dict:
    """The steps and guidance a run uses: the options, else 28 / 2.8 (text) or the --view-preset's."""
    if view is None:
        return {"steps": args.steps or 28, "guidance": 2.8 if args.guidance is None else args.guidance}
    from ..dit360.editing import edit_settings

    st = edit_settings(args.view_preset, steps=args.steps, guidance=args.guidance)
    return {"steps": st.steps, "guidance": st.guidance}


def _generate_one(args, pipe, prompt, seed, prefix, view, generate_from_view):
    from ..diffusion.prompts import add_prompt_prefix

    if view is not None:
        prompt = add_prompt_prefix(prompt, prefix)[0]
        image = generate_from_view(
            pipe.flux,
            view,
            args.fov,
            args.view_yaw,
            args.view_pitch,
            prompt=prompt,
            height=args.height,
            width=args.width,
            preset=args.view_preset,
            steps=args.steps,
            guidance=args.guidance,
            seed=seed,
            padding=args.pad,
            progress=not args.quiet,
        )
        image = image.float().cpu()
    else:
        res = pipe(
            prompt,
            width=args.width,
            height=args.height,
            steps=args.steps or 28,
            guidance=2.8 if args.guidance is None else args.guidance,
            seed=seed,
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
    return image


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="text-to-panorama with DiT360 (FLUX.1-dev + LoRA, circular padding)",
        description=(
            "Generate a seamless 2:1 equirectangular panorama with FLUX.1-dev + DiT360's LoRA and "
            "token-level circular padding. Defaults are DiT360's: 2048x1024, 28 steps, guidance 2.8, "
            "1 padded token column per side with wrapped position ids, prompt prefixed with "
            f'"{PANORAMA_PREFIX}". With --view PHOTO --fov D the photo is placed on the panorama and '
            "the rest is outpainted."
        ),
    )
    p.add_argument("--prompt", default=None, help="text prompt (or --prompts FILE)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompt list: one per line, or JSON lines {\"prompt\", \"seed\"}; -o is then a "
                        "folder of 00000.png ...; split across processes under accelerate launch")
    p.add_argument("-o", "--output", required=True,
                   help="output image (.png or .jpg), or a folder with --prompts; never overwritten without --force")
    p.add_argument("--width", type=positive_int, default=2048, help="panorama width in pixels, multiple of 16 (default 2048)")
    p.add_argument("--height", type=positive_int, default=1024, help="panorama height, width/2 (default 1024)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampling steps (default 28; with --view: the --view-preset's, pano360 28, official 50)")
    p.add_argument("--guidance", type=finite_float, default=None,
                   help="FLUX.1-dev distilled guidance (default 2.8; with --view: the --view-preset's, pano360 2.8, "
                        "official 3.5)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0); same seed -> same panorama")
    _dit360.add_model_args(p)
    _dit360.add_pad_arg(p)
    p.add_argument("--id-mode", choices=("wrapped", "linear"), default="wrapped",
                   help="position ids of the padded columns (default wrapped = DiT360)")
    p.add_argument("--resync", action="store_true", help="rebuild the padded columns from the opposite edge every step")
    p.add_argument("--circular-decode", action="store_true", help="VAE-decode with wrapped latent columns (no edge seam from the decoder)")
    p.add_argument("--decode-pad", type=positive_int, default=None,
                   help="latent columns wrapped per side for --circular-decode (default 8, at most half the latent width)")
    p.add_argument("--max-sequence-length", type=positive_int, default=512, help="T5 tokens (default 512)")
    p.add_argument("--view", default=None, metavar="PHOTO", help="perspective photo to build the panorama around")
    p.add_argument("--fov", type=finite_float, default=None, help="horizontal field of view of --view, degrees")
    p.add_argument("--view-yaw", type=angle, default=0.0, help="where the photo looks: yaw in degrees (default 0 = centre)")
    p.add_argument("--view-pitch", type=angle, default=0.0, help="where the photo looks: pitch in degrees (default 0)")
    p.add_argument("--view-preset", choices=("pano360", "official"), default="pano360",
                   help="editing settings of --view (outpainting): pano360 (default, ours) or official (the official "
                        "DiT360 editing code's; see pano360 edit --preset)")
    _dit360.add_output_args(p)
    p.set_defaults(func=cmd_generate)
