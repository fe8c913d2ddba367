"""``pano360 convert-lora``: rewrite a raw PEFT LoRA (``base_model.model.<module>`` keys) with the
``transformer.<module>`` keys DiT360's official conversion writes, so ComfyUI's plain
``LoraLoaderModelOnly`` maps it for Flux (it maps 0 modules of a ``base_model.model.`` file).
Safetensors in, safetensors out (metadata kept); the output is never overwritten without
``--force``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PanoInputError
from ._args import add_force


def cmd_convert_lora(args) -> int:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..diffusion.lora import peft_to_transformer_prefix
    from ..io import check_writable

    src, out = Path(args.input), Path(args.output)
    if not src.is_file():
        raise PanoInputError(f"INPUT: file not found: {src}")
    if src.suffix != ".safetensors" or out.suffix != ".safetensors":
        raise PanoInputError("INPUT/OUTPUT: only .safetensors files are read and written (no pickles)")
    if src.resolve() == out.resolve():
        raise PanoInputError("OUTPUT: must differ from INPUT (the input is never overwritten)")
    check_writable(out, args.force, name="OUTPUT")
    try:
        with safe_open(str(src), framework="pt") as f:
            meta = f.metadata()
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise PanoInputError(f"INPUT: cannot read {src} as safetensors: {e}") from e
    if not sd:
        raise PanoInputError(f"INPUT: {src} holds no tensors")
    new, renamed = peft_to_transformer_prefix(sd)
    save_file(new, str(out), metadata=meta)
    note = "" if renamed else " (no base_model.model. keys: written unchanged)"
    print(f"wrote {out}: {renamed} of {len(sd)} keys renamed base_model.model. -> transformer.{note}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-lora",
        help="rename a PEFT LoRA's base_model.model. keys to transformer. (for ComfyUI's LoraLoaderModelOnly)",
        description=(
            "Rewrite a LoRA saved by PEFT (keys base_model.model.<module>.lora_A.weight) with the keys DiT360's "
            "official conversion writes (transformer.<module>.lora_A.weight), which ComfyUI maps for Flux. "
            "Not needed for our 'DiT360 LoRA Loader (checked)' node or the pano360 commands (they accept both)."
        ),
    )
    p.add_argument("input", help="LoRA .safetensors with base_model.model. keys")
    p.add_argument("output", help="output .safetensors (never overwritten without --force)")
    add_force(p)
    p.set_defaults(func=cmd_convert_lora)
