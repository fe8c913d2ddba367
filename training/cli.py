"""``pano360-train``: prepare data, train a DiT360 LoRA, render samples from a run.

::

    pano360-train prepare --data RAW_DIR_OR.jsonl --output PREPARED [--resolution 1024]
                          [--refine-poles none|opencv|diffusers:PATH] [--photos DIR] [--model PATH_OR_ID]
    pano360-train dit360  --data PREPARED --output RUN [--config dit360_lora] [--model PATH_OR_ID]
                          [--max-steps N] [--resolution H] [--seed S] [--resume [CHECKPOINT]]
                          [--set key.sub=value ...]
    pano360-train jopano  --data PREPARED --output RUN [--config jopano_adapter] [--model PATH_OR_ID]
                          [--max-steps N] [--face-size S] [--seed S] [--resume [CHECKPOINT]]
                          [--set key.sub=value ...]
    pano360-train sample  --run RUN [--step N] --prompts FILE [--output DIR]

Several GPUs: ``accelerate launch --config_file training/configs/accelerate/ddp.yaml -m
pano360_training dit360 ...`` runs the same code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pano_core.errors import PanoInputError

__all__ = ["build_parser", "main", "trainer_config"]

log = logging.getLogger("pano360")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _add_trainer_flags(p: argparse.ArgumentParser, default_config: str, face_size: bool = False) -> None:
    p.add_argument("--config", default=default_config,
                   help=f"YAML config file or shipped config name (default: {default_config})")
    p.add_argument("--model", help="base model: a diffusers folder or hub id (overrides model.path)")
    p.add_argument("--data", help="the prepared folder (pano360-train prepare --output)")
    p.add_argument("--output", help="run folder (config.yaml, checkpoints/, samples/, logs/, the LoRA)")
    p.add_argument("--max-steps", type=_positive_int, help="optimizer steps (overrides train.max_steps)")
    if face_size:
        p.add_argument("--face-size", type=_positive_int, help="cube face size in pixels (overrides data.face_size)")
    else:
        p.add_argument("--resolution", type=_positive_int, help="ERP height in pixels; width is 2 x height")
    p.add_argument("--seed", type=_int, help="seed of every random draw (overrides train.seed)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="resume from a checkpoint folder; without a value: the latest in --output")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by its dotted key, e.g. --set optimizer.lr=1e-4 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pano360-train",
        description="Train panorama adapters (DiT360 LoRA for FLUX.1, Joint-Face adapter for Sana) that ComfyUI and Pano360 load.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="check a raw panorama set and write the prepared set")
    p.add_argument("--data", required=True, help="raw set: a folder of 2:1 images with .txt captions, or a .jsonl")
    p.add_argument("--output", required=True, help="prepared folder to write (never the raw folder)")
    p.add_argument("--resolution", type=_positive_int, default=1024, help="ERP height (default 1024; width 2x)")
    p.add_argument("--refine-poles", default="none", metavar="none|opencv|diffusers:PATH",
                   help="pole refinement written as refined copies (default: none)")
    p.add_argument("--photos", help="folder of perspective photos with .txt captions (perspective guidance)")
    p.add_argument("--fov", type=float, default=90.0, help="field of view of a placed photo (default 90: a cube face)")
    p.add_argument("--seed", type=_int, default=0, help="seed of the photos' side-face choice")
    p.add_argument("--model", help="also build this model's latent/text caches (DiT360: a FLUX.1 folder or hub id)")
    p.add_argument("--config", default="dit360_lora", help="trainer config used for the caches (with --model): dit360_lora, jopano_adapter or a file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("dit360", help="train a DiT360 LoRA for FLUX.1 (circular padding, yaw/cube/perspective losses)")
    _add_trainer_flags(p, "dit360_lora")

    p = sub.add_parser("jopano", help="train a Joint-Face adapter for Sana (JoPano: T2P/V2P condition switching)")
    _add_trainer_flags(p, "jopano_adapter", face_size=True)

    p = sub.add_parser("sample", help="render the configured sample prompts from a run's checkpoint")
    p.add_argument("--run", required=True, help="run folder written by pano360-train dit360 or jopano")
    p.add_argument("--step", type=_int, help="checkpoint step (default: the latest)")
    p.add_argument("--prompts", required=True, help="text file with one prompt per line")
    p.add_argument("--output", help="folder for the images (default: RUN/samples/manual-step-N)")
    p.add_argument("--seed", type=_int, default=0, help="seed of the first image (then +1 per image)")
    p.add_argument("--model", help="base model (default: the run's model.path)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def trainer_config(args: argparse.Namespace) -> dict:
    """The resolved config of a trainer command: the config file, then ``--set``, then flags."""
    from .config import apply_overrides, load_config, set_value

    cfg = apply_overrides(load_config(args.config), args.overrides)
    flags = {
        "model.path": args.model,
        "data.dir": args.data,
        "train.max_steps": args.max_steps,
        "data.resolution": getattr(args, "resolution", None),
        "data.face_size": getattr(args, "face_size", None),
        "train.seed": args.seed,
    }
    for key, value in flags.items():
        if value is not None:
            set_value(cfg, key, value)
    cfg["output"] = args.output
    return cfg


def _run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.command == "prepare":
        from .prepare import prepare_dataset

        manifest = prepare_dataset(
            args.data, args.output, resolution=args.resolution, refine_poles=args.refine_poles,
            photos=args.photos, fov=args.fov, seed=args.seed, progress=progress,
        )
        print(
            f"prepared {len(manifest['items'])} panoramas and {len(manifest['perspective'])} perspective canvases "
            f"at {manifest['width']}x{manifest['resolution']} in {args.output}"
        )
        if args.model:
            from .config import load_config, set_value

            cfg = load_config(args.config)
            set_value(cfg, "model.path", args.model)
            set_value(cfg, "data.dir", args.output)
            if "condition" in cfg:  # a Joint-Face (jopano) config: face latents at data.face_size
                from .jopano import build_caches
            else:
                from .dit360 import build_caches

                set_value(cfg, "data.resolution", args.resolution)
            info = build_caches(cfg, progress=progress)
            print(f"caches for {args.model}: {info}")
        return 0
    if args.command in ("dit360", "jopano"):
        if not args.data:
            raise PanoInputError("--data: the prepared folder is required (pano360-train prepare --output DIR)")
        if not args.output:
            raise PanoInputError("--output: a run folder is required")
        if args.command == "dit360":
            from .dit360 import train

            key, what = "lora", "LoRA"
        else:
            from .jopano import train

            key, what = "adapter", "Joint-Face adapter"
        result = train(trainer_config(args), resume=args.resume, progress=progress)
        if result.get(key):
            print(f"{what} written to {result[key]}")
        return 0
    if args.command == "sample":
        from .config import load_config
        from .dit360 import sample_from_run
        from .jopano import is_jopano_run

        run_cfg = args.run and (Path(args.run) / "config.yaml")
        if run_cfg and run_cfg.is_file() and is_jopano_run(load_config(run_cfg)):
            from .jopano import sample_from_run
        written = sample_from_run(args.run, args.prompts, step=args.step, output=args.output, seed=args.seed,
                                  model=args.model, progress=progress)
        print(f"{len(written)} sample(s) written to {written[0].parent if written else args.output}")
        return 0
    raise PanoInputError(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO, format="[pano360-train] %(message)s")
    try:
        return _run(args)
    except PanoInputError as e:
        print(f"pano360-train {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pano360-train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
