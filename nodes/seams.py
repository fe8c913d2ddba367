"""Seam nodes: cross-face Poisson blending of cubemaps, ERP wrap blending, seam metrics."""

from __future__ import annotations

import json

from ..pano_core.geometry import faces_to_layout, layout_to_faces
from ..pano_core.seams.metrics import DEFAULT_BAND, format_metrics, seam_metrics
from ..pano_core.seams.poisson import METHODS, blend_cube_faces
from ..pano_core.seams.wrap import WRAP_METHODS, blend_erp_wrap
from ..pano_core.validate import check_faces
from ._common import CAT_SEAMS, bchw_to_image, image_to_bchw

CUBE_LAYOUTS = ("stack", "horizon", "dice")


class Pano360CubemapSeamBlend:
    """Make the six faces of each cubemap agree along the 12 cube edges (JoPano's cross-face
    blending): per face a Poisson equation with the face's own Laplacian as guidance and the
    average of the faces meeting at each edge pixel as boundary values."""

    CATEGORY = CAT_SEAMS
    FUNCTION = "blend"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("cubemap",)
    DESCRIPTION = __doc__

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "cubemap": ("IMAGE", {"tooltip": "Cube faces F R B L U D: a batch of 6 per panorama (stack), or horizon/dice layout images."}),
                "method": (list(METHODS), {"default": "gauss-seidel", "tooltip": "gauss-seidel: the paper's solver (local correction near the edges); exact: converged direct solve (smooth correction over the whole face)."}),
                "iterations": ("INT", {"default": 200, "min": 0, "max": 100000, "tooltip": "Red-black Gauss-Seidel sweeps (gauss-seidel only)."}),
                "layout": (list(CUBE_LAYOUTS), {"default": "stack", "tooltip": "How the cubemap is laid out; the output uses the same layout."}),
            },
            "optional": {
                "keep_faces": ("STRING", {"default": "", "tooltip": "Faces to keep unchanged, e.g. F for a given front view (letters of F R B L U D); their edges become the neighbours' boundary."}),
            },
        }

    def blend(self, cubemap, method, iterations, layout, keep_faces=""):
        x = image_to_bchw(cubemap, "cubemap").contiguous()
        faces = check_faces(layout_to_faces(x, layout, "cubemap"), "cubemap")
        keep = keep_faces.strip() or None
        out = blend_cube_faces(faces, method=method, iterations=int(iterations), keep=keep).clamp(0.0, 1.0)
        return (bchw_to_image(faces_to_layout(out, layout)),)


class Pano360ERPWrapBlend:
    """Remove a visible 0°/360° seam of an equirectangular panorama: Poisson (gradient-domain)
    or feathered blend over a band of columns on each side of the wrap; every other pixel stays
    exactly as it was."""

    CATEGORY = CAT_SEAMS
    FUNCTION = "blend"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("panorama",)
    DESCRIPTION = __doc__

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "panorama": ("IMAGE", {"tooltip": "Equirectangular panorama (width = 2 x height)."}),
                "method": (list(WRAP_METHODS), {"default": "poisson"}),
                "band": ("INT", {"default": 32, "min": 1, "max": 8192, "tooltip": "Columns changed on each side of the wrap."}),
            }
        }

    def blend(self, panorama, method, band):
        x = image_to_bchw(panorama, "panorama")
        out = blend_erp_wrap(x, band=int(band), method=method).clamp(0.0, 1.0)
        return (bchw_to_image(out),)


class Pano360SeamMetrics:
    """Seam metrics of a panorama (cubemap or ERP): Seam-SSIM and Seam-Sobel (JoPano), the mean
    value jump across cube edges, the pole-seam metrics and the ERP wrap-seam ratio. Passes the
    image through unchanged, so it can sit inside a chain."""

    CATEGORY = CAT_SEAMS
    FUNCTION = "measure"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "STRING", "STRING", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("image", "text", "json", "seam_ssim", "seam_sobel", "seam_jump", "wrap_seam", "pole_seam_jump")
    DESCRIPTION = __doc__

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "A cubemap (stack of 6 faces per panorama, horizon or dice) or an equirectangular panorama."}),
                "layout": (["stack", "erp", "horizon", "dice"], {"default": "stack", "tooltip": "erp: converted to a cubemap (faces W/4) first."}),
                "band": ("INT", {"default": DEFAULT_BAND, "min": 1, "max": 256, "tooltip": "Seam-SSIM band width in pixels on each side of an edge."}),
            }
        }

    def measure(self, image, layout, band):
        x = image_to_bchw(image, "image").contiguous()
        m = seam_metrics(x, layout=layout, band=int(band))
        text = format_metrics(m)
        result = (
            image,
            text,
            json.dumps(m),
            m["seam_ssim"],
            m["seam_sobel"],
            m["seam_jump"],
            m["wrap_seam"],
            m["pole_seam_jump"],
        )
        return {"ui": {"text": [text]}, "result": result}


NODE_CLASS_MAPPINGS = {
    "Pano360CubemapSeamBlend": Pano360CubemapSeamBlend,
    "Pano360ERPWrapBlend": Pano360ERPWrapBlend,
    "Pano360SeamMetrics": Pano360SeamMetrics,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "Pano360CubemapSeamBlend": "Pano360 Cubemap Seam Blend",
    "Pano360ERPWrapBlend": "Pano360 ERP Wrap Blend",
    "Pano360SeamMetrics": "Pano360 Seam Metrics",
}
