"""A LoRA loader that says how much of the LoRA matched the model (instead of only logging).

ComfyUI's ``LoraLoaderModelOnly`` logs ``lora key not loaded`` for keys that do not match the
model and carries on, so a LoRA for another model silently does nothing. This node loads the
same way (``comfy.utils.load_torch_file`` -> ``comfy.lora_convert.convert_lora`` ->
``comfy.lora.load_lora`` with ``model_lora_keys_unet`` -> ``clone`` + ``add_patches``), counts
the LoRA modules that matched (:mod:`pano_core.diffusion.lora`) and raises a clear error (or
warns) when some did not. Keys of a raw PEFT file (``base_model.model.<module>``), which ComfyUI
does not map for Flux, are read as ``transformer.<module>`` (DiT360's official form). Weights are
read from ``.safetensors`` files only.
"""

from __future__ import annotations

import os

import comfy.lora
import comfy.lora_convert
import comfy.utils
import folder_paths

from ..pano_core.diffusion.lora import lora_shape_problem, match_lora_modules, peft_to_transformer_prefix
from ..pano_core.errors import PanoInputError
from ..pano_core.validate import check_choice
from ._common import CAT_DIT360 as CATEGORY
from ._common import log

ON_MISMATCH = ("error", "warn")

class Pano360DiT360LoraLoader:
    """LoraLoaderModelOnly with a check: errors (or warns) when LoRA modules do not match the model."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "lora_name": (folder_paths.get_filename_list("loras"), {
                    "tooltip": "LoRA in models/loras (.safetensors only), e.g. DiT360's panorama LoRA."}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
                "on_mismatch": (list(ON_MISMATCH), {"default": "error", "tooltip":
                    "error: stop with a message saying how many LoRA modules matched the model when not all "
                    "do; warn: log that message and apply the modules that matched."}),
            }
        }

    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "summary")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads a LoRA onto the diffusion model exactly like LoraLoaderModelOnly, but counts how many of the "
        "LoRA's modules match the model and stops with a clear error (or warns) when some do not, instead of "
        "silently ignoring them. Reads .safetensors files only."
    )

    def __init__(self):
        self._cache: tuple[tuple[str, float, int], dict] | None = None

    def _read(self, path: str, lora_name: str) -> dict:
        if not path.lower().endswith(".safetensors"):
            raise PanoInputError(
                f"lora_name: {lora_name} is not a .safetensors file; this loader reads weights only from "
                "safetensors (.ckpt/.pt/.bin files are pickles that can run code): convert it first"
            )
        st = os.stat(path)
        stamp = (path, st.st_mtime, st.st_size)
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        try:
            sd = comfy.utils.load_torch_file(path, safe_load=True)
        except Exception as e:  # safetensors' SafetensorError and friends do not name the file
            raise PanoInputError(
                f"lora_name: {lora_name} ({path}) is not a readable .safetensors file: {type(e).__name__}: {e}"
            ) from None
        self._cache = (stamp, sd)
        return sd

    def load(self, model, lora_name, strength_model, on_mismatch="error"):
        check_choice(on_mismatch, "on_mismatch", ON_MISMATCH)
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise PanoInputError(f"lora_name: {lora_name} not found in the loras folder(s)")
        # raw PEFT files (base_model.model.<m>) -> transformer.<m>, which ComfyUI maps for Flux
        sd, renamed = peft_to_transformer_prefix(self._read(path, lora_name))
        if renamed:
            log.info("Pano360 LoRA loader: %s: %d base_model.model. keys read as transformer.", lora_name, renamed)
        lora = comfy.lora_convert.convert_lora(sd)
        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        loaded = comfy.lora.load_lora(lora, key_map, log_missing=False)
        bad = _shape_mismatches(model.model, loaded)
        for target in bad:  # would fail in the sampler ("shapes cannot be multiplied"): not applied
            loaded.pop(target)
        report = match_lora_modules(lora.keys(), key_map, loaded.keys(), source=lora_name)
        summary = report.summary()
        if not report.complete:
            message = report.mismatch_message("lora_name")
            if bad:
                (t, why), = list(bad.items())[:1]
                name = t[0] if isinstance(t, tuple) else t
                message += f" ({len(bad)} with shapes that do not fit the model, e.g. {name}: {why})"
            if on_mismatch == "error":
                raise PanoInputError(message)
            log.warning("Pano360 LoRA loader: %s", message)
            summary = message
        else:
            log.info("Pano360 LoRA loader: %s", summary)
        if strength_model == 0:
            return (model, summary)
        out = model.clone()
        out.add_patches(loaded, strength_model)
        return (out, summary)


def _patch_shapes(patch):
    """(kind, shapes) of a ComfyUI LoRA patch: a LoRA adapter (up, down) or a ("diff"/"set", (t,)) tuple."""
    if isinstance(patch, tuple) and len(patch) == 2 and patch[0] in ("diff", "set"):
        return patch[0], (tuple(patch[1][0].shape),)
    weights = getattr(patch, "weights", None)
    if getattr(patch, "name", "") == "lora" and weights and weights[0] is not None and weights[1] is not None:
        return "lora", (tuple(weights[0].shape), tuple(weights[1].shape))
    return None, ()


def _shape_mismatches(diffusion, loaded: dict) -> dict:
    """{target: reason} for the patches whose shapes do not fit the model weight they target."""
    out = {}
    for target, patch in loaded.items():
        name, sl = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
        try:
            shape = list(comfy.utils.get_attr(diffusion, name).shape)
        except AttributeError:
            continue
        if sl is not None:  # (dim, start, length): a slice of a fused weight
            shape[sl[0]] = sl[2]
        kind, shapes = _patch_shapes(patch)
        if kind is None:
            continue
        why = lora_shape_problem(shape, kind, shapes)
        if why is not None:
            out[target] = why
    return out


NODE_CLASS_MAPPINGS = {"Pano360DiT360LoraLoader": Pano360DiT360LoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"Pano360DiT360LoraLoader": "DiT360 LoRA Loader (checked)"}
