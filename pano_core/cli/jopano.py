"""``pano360 jopano``: text-to-panorama and view-to-panorama with JoPano on Sana (six cube faces).

Loads Sana (diffusers folder, hub id, or a single-file transformer with ``--text-encoder`` and
``--vae``) and optionally a Joint-Face adapter, generates the six faces jointly
(:class:`pano_core.jopano.pipeline.JoPanoPipeline`), blends them across the cube edges and
writes a 2:1 ERP with GPano XMP and the settings in its metadata. ``--view`` gives one face
(``--view-face``) or a perspective photo (``--fov``, ``--view-yaw``, ``--view-pitch``);
``--image``/``--mask`` keep part of an existing panorama. ``--prompts FILE`` runs a prompt list
(split across processes under ``accelerate launch``). Outputs are never overwritten without
``--force``; bad input exits with code 2 and a message naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import PanoInputError
from ..geometry import FACE_NAMES
from ..io import read_image
from . import _batch
from ._args import (
    add_device_args,
    add_force,
    angle,
    check_image_output,
    finite_float,
    nonneg_int,
    positive_int,
)

FACES = FACE_NAMES


def _face_prompt(text: str) -> tuple[str, str]:
    """``X=TEXT`` with X among F R B L U D."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected FACE=TEXT with FACE among {' '.join(FACES)}, got {text!r}")
    k, v = text.split("=", 1)
    k = k.strip().upper()
    if k not in FACES:
        raise argparse.ArgumentTypeError(f"face key {k!r} is not one of {' '.join(FACES)} (in {text!r})")
    if not v.strip():
        raise argparse.ArgumentTypeError(f"the prompt of face {k} is empty")
    return k, v.strip()


def _read_view(path: str):
    img = read_image(path, "--view")
    if img.shape[1] == 1:
        img = img.expand(-1, 3, -1, -1)
    return img[:, :3].contiguous()


def _check_args(args) -> None:
    """Cheap checks before anything is loaded."""
    from ..jopano.pipeline import default_mode

    if args.prompts is not None and (args.prompt is not None or args.face_prompt):
        raise PanoInputError("--prompts: a prompt list excludes --prompt and --face-prompt")
    if args.prompts is None and args.prompt is not None and not args.prompt.strip():
        raise PanoInputError("--prompt: expected a non-empty text")
    if args.view is None and (args.view_face or args.fov is not None or args.view_yaw or args.view_pitch):
        raise PanoInputError("--view-face/--fov/--view-yaw/--view-pitch: only meaningful with --view IMAGE")
    if args.view is not None:
        if args.view_face and args.fov is not None:
            raise PanoInputError("--view-face/--fov: the view is either one cube face or a photo with a fov, not both")
        if not args.view_face and args.fov is None:
            raise PanoInputError("--view: say where it goes: --view-face F|R|B|L|U|D or --fov D [--view-yaw --view-pitch]")
        if args.view_face and (args.view_yaw or args.view_pitch):
            raise PanoInputError("--view-yaw/--view-pitch: only with --fov (a face view has a fixed direction)")
        if args.fov is not None and not 0.0 < args.fov < 180.0:
            raise PanoInputError(f"--fov: expected a horizontal field of view between 0 and 180 degrees, got {args.fov}")
        if args.image is not None:
            raise PanoInputError("--view/--image: give a view or an ERP with a mask, not both")
    if (args.image is None) != (args.mask is None):
        raise PanoInputError("--image/--mask: an ERP to keep part of needs its mask (white = keep), and a mask needs --image")
    if args.mode is None:
        args.mode = default_mode(args.adapter)
    if "adapter" in args.mode and args.adapter is None:
        raise PanoInputError(f"--mode: {args.mode} needs --adapter FILE (a Joint-Face adapter); without one use sync")
    if args.adapter is not None and not Path(args.adapter).is_file():
        raise PanoInputError(f"--adapter: file not found: {args.adapter}")
    if args.adapter is not None and Path(args.adapter).suffix.lower() != ".safetensors":
        raise PanoInputError(f"--adapter: {Path(args.adapter).name} is not a .safetensors file")
    if args.lora is not None and not Path(args.lora).is_file():
        raise PanoInputError(f"--lora: file not found: {args.lora}")
    if args.face_prompt and args.view_face and args.view_face.upper() in dict(args.face_prompt):
        raise PanoInputError(f"--face-prompt: face {args.view_face.upper()} is the given view; it is not generated")


def _load(args):
    from ..jopano.pipeline import JoPanoPipeline
    from ._dit360 import quiet_loading_bars

    if args.quiet:
        quiet_loading_bars()
    pipe = JoPanoPipeline.from_pretrained(
        args.model, adapter=args.adapter, text_encoder=args.text_encoder, vae=args.vae,
        transformer_config=args.transformer_config, lora=args.lora, lora_scale=args.lora_scale,
        device=_batch.local_device(args.device),
        dtype=None if args.dtype == "auto" else args.dtype, offload=args.offload, vae_tiling=args.vae_tiling,
        local_files_only=True if args.local_files_only else None,
    )
    if args.quiet:
        pipe.sana.set_progress_bar_config(disable=True)
    return pipe


def _write_faces(folder: Path, faces, force: bool) -> None:
    from ..io import write_image

    for i, name in enumerate(FACES):
        write_image(folder / f"{name}.png", faces[i : i + 1], force=force)


def _check_faces_out(folder: Path | None, force: bool) -> None:
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise PanoInputError(f"--faces-out: {folder} is a file; expected a folder for F.png ... D.png")
    if not force:
        for name in FACES:
            if (folder / f"{name}.png").exists():
                raise PanoInputError(f"--faces-out: {folder / (name + '.png')} already exists; pass --force to overwrite it")


def _metrics_json(m: dict) -> dict:
    return {"raw": m["raw"], "blended": m["blended"]}


def cmd_jopano(args) -> int:
    _check_args(args)
    faces_out = Path(args.faces_out) if args.faces_out else None
    metrics_out = Path(args.metrics_out) if args.metrics_out else None
    if metrics_out is not None:
        if metrics_out.suffix.lower() != ".json":
            raise PanoInputError(f"--metrics-out: expected a .json file, got {metrics_out.name}")
        if metrics_out.exists() and not args.force:
            raise PanoInputError(f"--metrics-out: {metrics_out} already exists; pass --force to overwrite it")
    if args.prompts is not None:
        items = _batch.read_prompts_file(args.prompts, allow_faces=True)
        suffix = Path(args.format).suffix if args.format else ".png"
        mine = _batch.process_share(items)
        out_dir = _batch.check_batch_outputs(args.output, mine, suffix, args.force)
    else:
        fp = dict(args.face_prompt or [])
        items = [_batch.PromptItem(0, args.prompt, fp, args.negative_prompt, args.seed)]
        out = check_image_output(args.output, args.force)
        _check_faces_out(faces_out, args.force)
        mine = items
    view = _read_view(args.view) if args.view is not None else None
    image = mask = None
    if args.image is not None:
        image = read_image(args.image, "--image")
        mask = read_image(args.mask, "--mask")
    # which faces are given (not generated), known before loading: the face prompts are checked now
    from ..jopano import conditions as C
    from ..jopano.pipeline import resolve_face_prompts

    given = [args.view_face.upper()] if args.view_face else []
    if view is not None and args.fov is not None:
        given = C.view_condition(view, args.fov, args.view_yaw, args.view_pitch, face_size=args.face_size,
                                 name="--view").full_names
    elif image is not None:
        given = C.erp_condition(image, mask, face_size=args.face_size, name="--image", mask_name="--mask").full_names

    for it in items:
        resolve_face_prompts(it.prompt, it.faces or None, given,
                             name="--face-prompt" if args.prompts is None else f"--prompts line {it.index + 1}")

    t0 = time.time()
    pipe = _load(args)
    s = pipe.check_face_size(args.face_size)
    adapter_hash = _batch.file_hash(args.adapter)
    all_metrics = {}
    for it in mine:
        seed = it.seed if it.seed is not None else args.seed + it.index
        res = pipe(
            it.prompt, face_prompts=it.faces or None,
            negative_prompt=it.negative if it.negative is not None else args.negative_prompt,
            mode=args.mode, face_size=s, steps=args.steps, cfg=args.cfg, seed=seed,
            view=view, view_face=args.view_face, fov=args.fov, view_yaw=args.view_yaw, view_pitch=args.view_pitch,
            image=image, mask=mask, blend=args.blend, progress=not args.quiet,
        )
        settings = {
            "software": "Pano360 jopano", "prompt": it.prompt, "face_prompts": it.faces or None,
            "negative_prompt": res.settings["negative_prompt"], "seed": seed, "mode": args.mode,
            "model": str(args.model), "adapter": Path(args.adapter).name if args.adapter else None,
            "adapter_sha256": adapter_hash, "lora": Path(args.lora).name if args.lora else None,
            "lora_scale": args.lora_scale if args.lora else None, "face_size": s, "steps": args.steps, "cfg": args.cfg, "blend": args.blend,
            "view": Path(args.view).name if args.view else None, "view_face": args.view_face, "fov": args.fov,
            "view_yaw": args.view_yaw, "view_pitch": args.view_pitch,
        }
        if args.prompts is not None:
            target = out_dir / f"{it.stem}{suffix}"
            out_dir.mkdir(parents=True, exist_ok=True)
            fdir = faces_out / it.stem if faces_out is not None else None
        else:
            target = out
            fdir = faces_out
        _batch.write_panorama(target, res.erp[:1], settings, bits=args.bits, force=args.force)
        if fdir is not None:
            _write_faces(fdir, res.faces, args.force)
        all_metrics[it.stem] = _metrics_json(res.metrics[0])
        print(f"wrote {target} ({4 * s}x{2 * s}, {args.mode}, seed {seed}, {time.time() - t0:.1f} s)")
    if metrics_out is not None:
        data = all_metrics["00000"] if args.prompts is None else all_metrics
        if args.prompts is not None and _batch.process_share([0, 1]) != [0, 1]:  # one file per process
            import os

            metrics_out = metrics_out.with_name(f"{metrics_out.stem}.rank{os.environ.get('RANK', '0')}{metrics_out.suffix}")
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps(data, indent=2))
    return 0


def add_model_args(p: argparse.ArgumentParser) -> None:
    from ..jopano.loading import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"Sana diffusers folder, hub id, or a single-file transformer .safetensors (default {DEFAULT_MODEL})")
    p.add_argument("--text-encoder", default=None, help="with a single-file --model: a Sana folder or a Gemma-2 folder (+ tokenizer)")
    p.add_argument("--vae", default=None, help="with a single-file --model: a Sana folder or a DC-AE folder")
    p.add_argument("--transformer-config", default=None,
                   help="with a single-file --model of an unpublished size: a Sana folder or its transformer/config.json")
    add_device_args(p, vae_tiling_help="decode in tiles (less memory; decodes faces without the synced VAE)")


def register(subparsers) -> None:
    from ..jopano.pipeline import BLENDS, DEFAULTS, MODES

    p = subparsers.add_parser(
        "jopano",
        help="text/view-to-panorama with JoPano (Sana, six cube faces generated jointly)",
        description=(
            "Generate a 360° panorama as six cube faces generated jointly by Sana (JoPano): with a trained "
            "Joint-Face adapter (--adapter) or training-free joint-face sync (--mode sync, the default without an "
            "adapter). Writes a 2:1 ERP of width 4 x face size with GPano XMP and the settings in its metadata. "
            f"Defaults are Sana 1.5 1.6B's: {DEFAULTS['steps']} steps, cfg {DEFAULTS['cfg']}, 512 px faces."
        ),
    )
    p.add_argument("--prompt", default=None, help="text for every face")
    p.add_argument("--face-prompt", type=_face_prompt, action="append", default=None, metavar="F=TEXT",
                   help="text for one face (F R B L U D), overriding --prompt; repeatable")
    p.add_argument("--negative-prompt", default="", help="negative prompt (default empty, as Sana)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompt list: one per line, or JSON lines {\"prompt\", \"faces\": {\"F\": ...}, \"negative\", "
                        "\"seed\"}; -o is then a folder of 00000.png ...; split across processes under accelerate launch")
    p.add_argument("-o", "--output", required=True, help="output ERP (.png or .jpg), or a folder with --prompts")
    p.add_argument("--view", default=None, metavar="IMAGE", help="a given view: one cube face (--view-face) or a photo (--fov)")
    p.add_argument("--view-face", type=str.upper, choices=FACES, default=None, help="the view IS this cube face (square)")
    p.add_argument("--fov", type=finite_float, default=None, help="horizontal field of view of a --view photo, degrees")
    p.add_argument("--view-yaw", type=angle, default=0.0, help="where the photo looks: yaw in degrees (default 0)")
    p.add_argument("--view-pitch", type=angle, default=0.0, help="where the photo looks: pitch in degrees (default 0)")
    p.add_argument("--image", default=None, metavar="ERP", help="an existing 2:1 panorama to keep part of (with --mask)")
    p.add_argument("--mask", default=None, metavar="KEEP.png", help="white = keep (same size as --image)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="adapter, sync (training-free), adapter+sync or independent (default: adapter+sync with --adapter, else sync)")
    p.add_argument("--adapter", default=None, metavar="FILE", help="Joint-Face adapter (jopano_adapter.safetensors)")
    p.add_argument("--lora", default=None, metavar="FILE", help="a Sana LoRA (PEFT/diffusers .safetensors) beside the adapter")
    p.add_argument("--lora-scale", type=finite_float, default=1.0, help="LoRA strength (default 1.0)")
    p.add_argument("--face-size", type=positive_int, default=DEFAULTS["face_size"],
                   help=f"face size in pixels, a multiple of the VAE factor (default {DEFAULTS['face_size']}; ERP = 4x wide)")
    p.add_argument("--steps", type=positive_int, default=DEFAULTS["steps"], help=f"sampling steps (default {DEFAULTS['steps']})")
    p.add_argument("--cfg", type=finite_float, default=DEFAULTS["cfg"], help=f"guidance scale (default {DEFAULTS['cfg']})")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0; prompt i of --prompts uses seed + i)")
    p.add_argument("--blend", choices=BLENDS, default="exact",
                   help="cross-face blending: exact (default), gauss-seidel (JoPano's 200 sweeps) or none")
    p.add_argument("--faces-out", default=None, metavar="DIR", help="also write the six faces F.png ... D.png")
    p.add_argument("--metrics-out", default=None, metavar="FILE.json",
                   help='write {"raw": {...}, "blended": {...}} seam metrics (keys of pano360 seam-metrics)')
    p.add_argument("--format", choices=(".png", ".jpg"), default=None, help="file type of --prompts outputs (default .png)")
    add_model_args(p)
    p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub (cached/local files only)")
    add_force(p, help="overwrite existing outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_jopano)


if __name__ == "__main__":  # pragma: no cover
    from . import main

    sys.exit(main(["jopano", *sys.argv[1:]]))
