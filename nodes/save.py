"""Save panoramas as PNG or JPEG with Google Photo Sphere (GPano) XMP metadata.

Like ComfyUI's SaveImage: filename prefix + 5-digit counter in the output folder, never
overwriting, and the prompt/workflow kept (PNG ``tEXt`` chunks ``prompt``/``workflow`` that
ComfyUI can load back; JPEG: EXIF ``Model`` = ``prompt:<json>`` and ``Make`` =
``workflow:<json>``, the convention ComfyUI uses for WebP, limited by EXIF to 64 KB in total).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..pano_core.xmp import XMP_PNG_KEYWORD, build_xmp, jpeg_embed_xmp, panorama_gpano
from ._common import CAT_IO, log

_EXIF_LIMIT = 65000


def _disable_metadata() -> bool:
    try:
        from comfy.cli_args import args

        return bool(args.disable_metadata)
    except Exception:  # pragma: no cover - outside ComfyUI
        return False


def encode_png(img: Image.Image, xmp: str, texts: dict[str, str], compress_level: int = 4) -> bytes:
    info = PngInfo()
    for k, v in texts.items():
        info.add_text(k, v)
    info.add_itxt(XMP_PNG_KEYWORD, xmp, zip=False)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(
    img: Image.Image, xmp: str, texts: dict[str, str], quality: int = 95
) -> tuple[bytes, list[str]]:
    """JPEG bytes with EXIF prompt/workflow (dropped, with a note, when over the EXIF size limit)."""
    notes = []
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    kept = dict(texts)
    while True:
        exif = Image.Exif()
        if "prompt" in kept:
            exif[0x0110] = "prompt:" + kept["prompt"]
        if "workflow" in kept:
            exif[0x010F] = "workflow:" + kept["workflow"]
        raw = exif.tobytes()
        if len(raw) <= _EXIF_LIMIT or not kept:
            break
        drop = "workflow" if "workflow" in kept else next(iter(kept))
        kept.pop(drop)
        notes.append(f"{drop} metadata too large for JPEG EXIF (64 KB); not stored (save as PNG to keep it)")
    buf = io.BytesIO()
    kw = {"exif": raw} if kept else {}
    img.save(buf, format="JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2, **kw)
    return jpeg_embed_xmp(buf.getvalue(), xmp), notes


def write_new_file(folder: str, stem: str, counter: int, ext: str, data: bytes) -> tuple[str, int]:
    """Write ``data`` to ``{stem}_{counter:05}_.{ext}`` in ``folder``, bumping the counter until the
    name is free (exclusive create: never overwrites). Returns (file name, counter used)."""
    while True:
        name = f"{stem}_{counter:05}_.{ext}"
        try:
            with open(os.path.join(folder, name), "xb") as f:
                f.write(data)
            return name, counter
        except FileExistsError:
            counter += 1


class Pano360SavePanorama:
    """Save ERP panoramas (PNG or JPEG) with 360° metadata so photo apps open them as spheres."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Equirectangular panoramas (2:1) to save."}),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "Pano360",
                        "tooltip": "Prefix; may hold a subfolder and %date% variables like SaveImage.",
                    },
                ),
                "format": (["png", "jpeg"], {"default": "png"}),
                "jpeg_quality": ("INT", {"default": 95, "min": 1, "max": 100, "step": 1}),
                "write_heading": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Write GPano:PoseHeadingDegrees."},
                ),
                "heading_degrees": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": -360.0,
                        "max": 360.0,
                        "step": 0.1,
                        "tooltip": "Compass heading of the image centre.",
                    },
                ),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = CAT_IO
    DESCRIPTION = (
        "Saves panoramas to the output folder as PNG or JPEG with Google Photo Sphere (GPano) XMP "
        "metadata, keeping the prompt/workflow like SaveImage. Never overwrites."
    )

    def save(
        self,
        images,
        filename_prefix="Pano360",
        format="png",
        jpeg_quality=95,
        write_heading=False,
        heading_degrees=0.0,
        prompt=None,
        extra_pnginfo=None,
    ):
        import folder_paths

        output_dir = folder_paths.get_output_directory()
        h, w = int(images.shape[1]), int(images.shape[2])
        folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, output_dir, w, h
        )
        os.makedirs(folder, exist_ok=True)
        texts: dict[str, str] = {}
        if not _disable_metadata():
            if prompt is not None:
                texts["prompt"] = json.dumps(prompt)
            if extra_pnginfo is not None:
                for k, v in extra_pnginfo.items():
                    texts[k] = json.dumps(v)
        gp, warning = panorama_gpano(w, h, heading_degrees if write_heading else None)
        if warning:
            log.warning("Pano360SavePanorama: %s", warning)
        xmp = build_xmp(gp)
        results = []
        notes = [warning] if warning else []
        for b, image in enumerate(images):
            arr = np.clip(255.0 * image.cpu().numpy() + 0.5, 0, 255).astype(np.uint8)  # rounded
            if arr.shape[-1] == 1:
                arr = arr[..., 0]
            img = Image.fromarray(arr)
            stem_b = stem.replace("%batch_num%", str(b))
            if format == "jpeg":
                data, n = encode_jpeg(img, xmp, texts, jpeg_quality)
                notes += [x for x in n if x not in notes]
                ext = "jpg"
            else:
                data = encode_png(img, xmp, texts)
                ext = "png"
            name, counter = write_new_file(folder, stem_b, counter, ext, data)
            results.append({"filename": name, "subfolder": subfolder, "type": "output"})
            counter += 1
        for n in notes:
            log.warning("Pano360SavePanorama: %s", n)
        ui = {"images": results}
        if notes:
            ui["text"] = notes
        return {"ui": ui}


NODE_CLASS_MAPPINGS = {"Pano360SavePanorama": Pano360SavePanorama}
NODE_DISPLAY_NAME_MAPPINGS = {"Pano360SavePanorama": "Save Panorama (360° metadata)"}
