"""Interactive 360° viewer node (the widget itself lives in ``web/pano360_viewer.js``).

The node saves each panorama of its input (cubemaps converted to ERP first) to ComfyUI's temp
folder and sends only the file names in its ui output; the browser loads them through
``/view?type=temp`` and renders them with WebGL2. The widget writes the current view into the
node's ``yaw``/``pitch``/``fov`` widgets, so the next run outputs that view as an IMAGE
(perspective render via :func:`pano_core.geometry.e2p`) and as three FLOATs that can feed any
ERP → perspective node.
"""

from __future__ import annotations

import os
import secrets

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..pano_core.errors import PanoInputError
from ..pano_core.validate import check_choice
from ._common import CAT_VIEW, bchw_to_image, image_to_bchw, log

LAYOUTS = ["auto", "erp", "cubemap stack", "horizon", "dice"]
MAX_STRIP = 32  # panoramas of a batch saved for the viewer's strip
PNG_MAX_PIXELS = 4096 * 2048  # above this the preview file is a JPEG (q 95): much faster to write


def detect_layout(x: torch.Tensor, layout: str = "auto") -> str:
    """The layout of a BCHW batch: 'erp', 'cubemap stack', 'horizon' or 'dice'."""
    check_choice(layout, "input_layout", LAYOUTS)
    if layout != "auto":
        return layout
    from ..pano_core.geometry import guess_layout

    b, _, h, w = x.shape
    guess = guess_layout(h, w, batch=b)
    return {"stack": "cubemap stack", None: "erp"}.get(guess, guess)


def to_erp(x: torch.Tensor, layout: str = "auto") -> tuple[torch.Tensor, str, str]:
    """BCHW batch in any supported layout -> (ERP batch, detected layout, warning text or '')."""
    from ..pano_core.geometry import c2e, layout_to_faces

    src = detect_layout(x, layout)
    if src == "erp":
        h, w = x.shape[-2:]
        warning = ""
        if w != 2 * h:
            warning = (
                f"image is {w}x{h}, not 2:1 (equirectangular panoramas are twice as wide as high): "
                "shown stretched over the sphere"
            )
        return x, src, warning
    if src == "cubemap stack":
        if x.shape[0] % 6 != 0:
            raise PanoInputError(
                f"images: a cubemap stack needs 6 faces per panorama (F R B L U D), got a batch of {x.shape[0]}"
            )
        faces = x
    else:
        faces = layout_to_faces(x, src, name="images")
    return c2e(faces, layout="stack"), src, ""


def _save_preview(img: torch.Tensor, folder: str, stem: str) -> tuple[str, int, int]:
    """Save one (C, H, W) image as PNG (or JPEG when large); returns (file name, width, height)."""
    arr = (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[2] < 3:
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif arr.shape[2] > 4:
        arr = arr[:, :, :3]
    h, w = arr.shape[:2]
    pil = Image.fromarray(np.ascontiguousarray(arr))
    if h * w > PNG_MAX_PIXELS:
        name = stem + ".jpg"
        pil.convert("RGB").save(os.path.join(folder, name), quality=95)
    else:
        name = stem + ".png"
        pil.save(os.path.join(folder, name), compress_level=1)
    return name, w, h


def _remove_previous(folder: str, prefix: str) -> None:
    """Delete this node's preview files of earlier runs (they would pile up in ComfyUI's temp)."""
    for name in os.listdir(folder):
        if name.startswith(prefix) and name.endswith((".png", ".jpg")):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:  # already gone, or in use elsewhere: not worth failing the run
                pass


class Pano360Viewer:
    """Look around panoramas inside the node; outputs the framed view on the next run."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": (
                    "IMAGE",
                    {"tooltip": "ERP panoramas (2:1) or cubemaps (6-face batch, horizon or dice)."},
                ),
                "input_layout": (LAYOUTS, {"default": "auto"}),
                "yaw": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": -180.0,
                        "max": 180.0,
                        "step": 0.1,
                        "tooltip": "Set by dragging in the viewer.",
                    },
                ),
                "pitch": ("FLOAT", {"default": 0.0, "min": -90.0, "max": 90.0, "step": 0.1}),
                "fov": (
                    "FLOAT",
                    {
                        "default": 90.0,
                        "min": 10.0,
                        "max": 150.0,
                        "step": 0.1,
                        "tooltip": "Horizontal field of view.",
                    },
                ),
                "view_width": ("INT", {"default": 768, "min": 16, "max": 8192, "step": 8}),
                "view_height": ("INT", {"default": 512, "min": 16, "max": 8192, "step": 8}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("view", "yaw", "pitch", "fov")
    FUNCTION = "view"
    OUTPUT_NODE = True
    CATEGORY = CAT_VIEW
    DESCRIPTION = (
        "Interactive 360° viewer: drag to look, wheel to zoom, double-click for fullscreen. The view you frame "
        "is stored in yaw/pitch/fov and rendered to the 'view' output on the next run."
    )

    def view(
        self,
        images,
        input_layout="auto",
        yaw=0.0,
        pitch=0.0,
        fov=90.0,
        view_width=768,
        view_height=512,
        unique_id=None,
    ):
        import folder_paths

        from ..pano_core.geometry import e2p

        x = image_to_bchw(images, "images")
        erp, src, warning = to_erp(x, input_layout)
        if warning:
            log.warning("Pano360Viewer: %s", warning)

        temp = folder_paths.get_temp_directory()
        sub = "pano360"
        folder = os.path.join(temp, sub)
        os.makedirs(folder, exist_ok=True)
        token = secrets.token_hex(4)
        node = "".join(c for c in str(unique_id or "x") if c.isalnum() or c in "-_")[:32]
        _remove_previous(folder, f"viewer_{node}_")
        items = []
        n = erp.shape[0]
        for i in range(min(n, MAX_STRIP)):
            name, w, h = _save_preview(erp[i], folder, f"viewer_{node}_{token}_{i:03d}")
            items.append(
                {
                    "filename": name,
                    "subfolder": sub,
                    "type": "temp",
                    "width": w,
                    "height": h,
                    "source_layout": src,
                }
            )
        notes = [warning] if warning else []
        if n > MAX_STRIP:
            notes.append(f"batch of {n} panoramas: the viewer shows the first {MAX_STRIP}")

        pano = erp
        if pano.shape[-1] != 2 * pano.shape[-2]:
            h = pano.shape[-2]
            pano = F.interpolate(pano, size=(h, 2 * h), mode="bilinear", align_corners=False)
        view = e2p(
            pano, float(fov), yaw=float(yaw), pitch=float(pitch), out_hw=(int(view_height), int(view_width))
        )
        ui = {
            "pano360": items,
            "pano360_notes": notes,
            "pano360_view": [{"yaw": float(yaw), "pitch": float(pitch), "fov": float(fov)}],
        }
        return {"ui": ui, "result": (bchw_to_image(view.clamp(0, 1)), float(yaw), float(pitch), float(fov))}


NODE_CLASS_MAPPINGS = {"Pano360Viewer": Pano360Viewer}
NODE_DISPLAY_NAME_MAPPINGS = {"Pano360Viewer": "360° Panorama Viewer"}
