"""Projection nodes: ERP <-> cubemap <-> perspective, rotations and seam/pole masks.

Thin adapters over :mod:`pano_core.geometry` (all math lives there). Cubemaps travel as a
6-image batch (faces F R B L U D per panorama, the ``stack`` layout) or as one layout image
(``horizon`` 6:1 or ``dice`` 4:3, oriented like py360convert).
"""

from __future__ import annotations

from ..pano_core.budget import check_bytes
from ..pano_core.errors import PanoInputError
from ..pano_core.geometry import (
    c2e,
    e2c,
    e2p,
    faces_to_layout,
    guess_layout,
    layout_to_faces,
    p2e,
    pole_mask,
    roll_erp,
    rotate_erp,
    seam_mask,
    yaw_to_pixels,
)
from ..pano_core.validate import check_bchw, check_choice, check_erp, check_mask_like
from ._common import CAT_GEOMETRY as CAT
from ._common import bchw_to_image, bchw_to_mask, image_to_bchw, mask_to_bchw

MODES = ["bilinear", "bicubic", "nearest"]
IMAGE_CHANNELS = (1, 3, 4)

ANGLE = {"default": 0.0, "min": -360.0, "max": 360.0, "step": 0.5}
FOV = {"default": 90.0, "min": 1.0, "max": 179.0, "step": 0.5}


def _image(image, name="image"):
    return check_bchw(image_to_bchw(image, name), name, IMAGE_CHANNELS)


def _mask(mask, name="mask", like=None):
    """A ComfyUI MASK as (B, 1, H, W); with ``like`` (the image it goes with) its size is checked."""
    m = check_bchw(mask_to_bchw(mask, name).float(), name, (1,))
    return m if like is None else check_mask_like(m, like, name)


def _override(value, override):
    return value if override is None else float(override)


class ERPToCubemap:
    """Equirectangular panorama (and optional mask) -> 6 cube faces + a layout image."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "equirectangular panorama (2:1)"}),
                "face_size": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                                      "tooltip": "face size in pixels; 0 = panorama width / 4"}),
                "layout": (["horizon", "dice"], {"default": "dice", "tooltip": "layout of the layout_image output"}),
                "mode": (MODES, {"default": "bilinear"}),
            },
            "optional": {"mask": ("MASK", {"tooltip": "ERP mask converted the same way"})},
        }

    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("faces", "layout_image", "face_masks")
    OUTPUT_TOOLTIPS = (
        "6-image batch per panorama: F R B L U D",
        "all faces in one image (horizon 6:1 or dice 4:3)",
        "the mask's faces (all ones without a mask input)",
    )
    FUNCTION = "run"
    CATEGORY = CAT
    DESCRIPTION = "ERP -> cubemap (faces oriented exactly like py360convert e2c)."

    def run(self, image, face_size, layout, mode, mask=None):
        x = _image(image)
        s = face_size or None
        if isinstance(s, int) and x.ndim == 4:  # all three outputs and their conversion, before allocating
            b, c = x.shape[:2]
            px = b * s * s * (6 * c + (12 if layout == "dice" else 6) * c * 2 + 6)
            check_bytes("face_size", px * x.element_size(), f"cube faces of {s}x{s} with a {layout} image")
        faces = e2c(x, s, mode, "stack")
        lay = faces_to_layout(faces, layout)
        if mask is not None:
            fm = e2c(check_erp(_mask(mask, like=x), "mask", (1,)), s, mode, "stack").clamp(0, 1)
        else:
            fm = faces.new_ones(faces.shape[0], 1, faces.shape[2], faces.shape[3])
        return (bchw_to_image(faces), bchw_to_image(lay), bchw_to_mask(fm))


class CubemapToERP:
    """Cube faces (a 6-image batch, or one horizon/dice image) -> equirectangular panorama."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "6-image batch F R B L U D, or a horizon/dice layout image"}),
                "input_layout": (["auto", "stack (6-image batch)", "horizon", "dice"], {"default": "auto"}),
                "width": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 2,
                                  "tooltip": "output width; 0 = 4 x face size"}),
                "mode": (MODES, {"default": "bilinear"}),
            },
            "optional": {"mask": ("MASK", {"tooltip": "mask in the same layout as the image"})},
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "run"
    CATEGORY = CAT
    DESCRIPTION = "Cubemap -> ERP (the exact inverse of the ERP -> cubemap geometry)."

    @staticmethod
    def _layout(x, input_layout):
        if input_layout == "stack (6-image batch)":
            return "stack"
        if input_layout != "auto":
            return input_layout
        b, _, h, w = x.shape
        guess = guess_layout(h, w, batch=b)
        if guess is not None:
            return guess
        raise PanoInputError(
            f"image: cannot tell the cubemap layout of a batch of {b} images of {w}x{h}; expected a batch of "
            "6 square faces, a horizon (6:1) or a dice (4:3) image"
        )

    def run(self, image, input_layout, width, mode, mask=None):
        x = _image(image)
        layout = self._layout(x, input_layout)
        faces = layout_to_faces(x, layout, "image")
        w = width or None
        if w is not None and w % 2:
            raise PanoInputError(f"width: an equirectangular output needs an even width, got {w}")
        h = None if w is None else w // 2
        out = c2e(faces, h, w, mode)
        if mask is not None:
            m = _mask(mask, like=x)
            mfaces = layout_to_faces(m, layout, "mask")
            mo = c2e(mfaces, h, w, mode).clamp(0, 1)
        else:
            mo = out.new_ones(out.shape[0], 1, out.shape[2], out.shape[3])
        return (bchw_to_image(out), bchw_to_mask(mo))


class ERPToPerspective:
    """A perspective (pinhole) view of an equirectangular panorama."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "equirectangular panorama (2:1)"}),
                "fov": ("FLOAT", {**FOV, "tooltip": "horizontal field of view, degrees"}),
                "yaw": ("FLOAT", {**ANGLE, "tooltip": "degrees; positive turns right"}),
                "pitch": ("FLOAT", {**ANGLE, "min": -90.0, "max": 90.0, "tooltip": "degrees; positive looks up"}),
                "roll": ("FLOAT", {**ANGLE, "tooltip": "degrees about the viewing axis"}),
                "width": ("INT", {"default": 768, "min": 8, "max": 8192, "step": 8}),
                "height": ("INT", {"default": 512, "min": 8, "max": 8192, "step": 8}),
                "mode": (MODES, {"default": "bilinear"}),
            },
            "optional": {
                "mask": ("MASK",),
                "yaw_in": ("FLOAT", {"forceInput": True, "tooltip": "overrides yaw (e.g. from the viewer); while "
                                      "connected, the yaw widget is disabled and labelled 'from yaw_in'"}),
                "pitch_in": ("FLOAT", {"forceInput": True, "tooltip": "overrides pitch"}),
                "fov_in": ("FLOAT", {"forceInput": True, "tooltip": "overrides fov"}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "run"
    CATEGORY = CAT
    DESCRIPTION = "ERP -> perspective view (same angles as py360convert e2p: u=yaw, v=pitch, in_rot=roll)."

    def run(self, image, fov, yaw, pitch, roll, width, height, mode, mask=None, yaw_in=None, pitch_in=None, fov_in=None):
        x = _image(image)
        fov, yaw, pitch = _override(fov, fov_in), _override(yaw, yaw_in), _override(pitch, pitch_in)
        out = e2p(x, fov, yaw, pitch, roll, (height, width), mode)
        if mask is not None:
            mo = e2p(check_erp(_mask(mask, like=x), "mask", (1,)), fov, yaw, pitch, roll, (height, width), mode).clamp(0, 1)
        else:
            mo = out.new_ones(out.shape[0], 1, height, width)
        return (bchw_to_image(out), bchw_to_mask(mo))


class PerspectiveToERP:
    """Project a perspective image back onto an equirectangular canvas (+ coverage mask)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "perspective image"}),
                "fov": ("FLOAT", {**FOV, "tooltip": "horizontal field of view of the image, degrees"}),
                "yaw": ("FLOAT", ANGLE),
                "pitch": ("FLOAT", {**ANGLE, "min": -90.0, "max": 90.0}),
                "roll": ("FLOAT", ANGLE),
                "erp_width": ("INT", {"default": 2048, "min": 8, "max": 16384, "step": 2}),
                "mode": (MODES, {"default": "bilinear"}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "multiplied into the coverage mask"}),
                "yaw_in": ("FLOAT", {"forceInput": True}),
                "pitch_in": ("FLOAT", {"forceInput": True}),
                "fov_in": ("FLOAT", {"forceInput": True}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "coverage")
    FUNCTION = "run"
    CATEGORY = CAT
    DESCRIPTION = "Perspective -> ERP: the view pasted on a black panorama and the mask of the pixels it covers."

    def run(self, image, fov, yaw, pitch, roll, erp_width, mode, mask=None, yaw_in=None, pitch_in=None, fov_in=None):
        x = _image(image)
        fov, yaw, pitch = _override(fov, fov_in), _override(yaw, yaw_in), _override(pitch, pitch_in)
        if erp_width % 2:
            raise PanoInputError(f"erp_width: an equirectangular output needs an even width, got {erp_width}")
        hw = (erp_width // 2, erp_width)
        out, cov = p2e(x, fov, yaw, pitch, roll, hw, mode)
        if mask is not None:
            m, _ = p2e(_mask(mask, like=x), fov, yaw, pitch, roll, hw, mode)
            cov = cov * m.clamp(0, 1)
        return (bchw_to_image(out), bchw_to_mask(cov))


class RotatePanorama:
    """Rotate an equirectangular panorama by yaw/pitch/roll (resampled)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "yaw": ("FLOAT", ANGLE),
                "pitch": ("FLOAT", ANGLE),
                "roll": ("FLOAT", ANGLE),
                "mode": (MODES, {"default": "bilinear"}),
            },
            "optional": {"mask": ("MASK",)},
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "run"
    CATEGORY = CAT
    DESCRIPTION = "Rotate a panorama: the new centre is where a camera turned by yaw/pitch/roll looks."

    def run(self, image, yaw, pitch, roll, mode, mask=None):
        x = _image(image)
        out = rotate_erp(x, yaw, pitch, roll, mode)
        if mask is not None:
            mo = rotate_erp(check_erp(_mask(mask, like=x), "mask", (1,)), yaw, pitch, roll, mode).clamp(0, 1)
        else:
            mo = out.new_ones(out.shape[0], 1, out.shape[2], out.shape[3])
        return (bchw_to_image(out), bchw_to_mask(mo))


class RollYaw:
    """Exact yaw rotation by whole pixels (no resampling; lossless and reversible)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "yaw": ("FLOAT", {**ANGLE, "tooltip": "degrees, rounded to whole pixels; positive turns right"}),
            },
            "optional": {"mask": ("MASK",)},
        }

    RETURN_TYPES = ("IMAGE", "MASK", "INT")
    RETURN_NAMES = ("image", "mask", "shift_px")
    FUNCTION = "run"
    CATEGORY = CAT
    DESCRIPTION = "Roll a panorama horizontally by whole pixels (exact yaw rotation)."

    def run(self, image, yaw, mask=None):
        x = _image(image)
        out = roll_erp(x, yaw)
        if mask is not None:
            mo = roll_erp(check_erp(_mask(mask, like=x), "mask", (1,)), yaw)
        else:
            mo = out.new_ones(out.shape[0], 1, out.shape[2], out.shape[3])
        return (bchw_to_image(out), bchw_to_mask(mo), yaw_to_pixels(yaw, x.shape[-1]))


class SeamPoleMask:
    """ERP masks of seams (0°/360° wrap, cube-face edges) or poles, feathered."""

    KINDS = ["wrap seam", "cube seams", "wrap + cube seams", "poles", "north pole", "south pole"]

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "kind": (cls.KINDS, {"default": "wrap seam"}),
                "width": ("INT", {"default": 2048, "min": 8, "max": 16384, "step": 2,
                                  "tooltip": "ERP width (ignored when an image is connected)"}),
                "band_px": ("FLOAT", {"default": 32.0, "min": 0.0, "max": 4096.0, "step": 1.0,
                                      "tooltip": "seam band width (ERP columns for the wrap, face pixels for cube seams)"}),
                "feather_px": ("FLOAT", {"default": 16.0, "min": 0.0, "max": 4096.0, "step": 1.0}),
                "pole_lat": ("FLOAT", {"default": 60.0, "min": 0.0, "max": 90.0, "step": 0.5,
                                       "tooltip": "poles: mask where |latitude| >= this"}),
                "pole_feather_deg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 90.0, "step": 0.5}),
                "face_size": ("INT", {"default": 0, "min": 0, "max": 8192,
                                      "tooltip": "cube seams: face size; 0 = width / 4"}),
            },
            "optional": {"image": ("IMAGE", {"tooltip": "take the size (and batch) from this ERP image"})},
        }

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    FUNCTION = "run"
    CATEGORY = CAT
    DESCRIPTION = "Seam bands (0°/360° wrap or cube-face edges) and pole caps as an ERP mask."

    def run(self, kind, width, band_px, feather_px, pole_lat, pole_feather_deg, face_size, image=None):
        check_choice(kind, "kind", self.KINDS)
        b = 1
        if image is not None:
            x = check_erp(_image(image), "image", IMAGE_CHANNELS)
            b, h, w = x.shape[0], x.shape[2], x.shape[3]
        else:
            if width % 2:
                raise PanoInputError(f"width: an equirectangular mask needs an even width, got {width}")
            h, w = width // 2, width
        if kind in ("poles", "north pole", "south pole"):
            pole = {"poles": "both", "north pole": "north", "south pole": "south"}[kind]
            m = pole_mask(h, w, pole_lat, pole_feather_deg, pole)
        else:
            sk = {"wrap seam": "wrap", "cube seams": "cube", "wrap + cube seams": "both"}[kind]
            m = seam_mask(h, w, sk, band_px, feather_px, face_size or None)
        return (bchw_to_mask(m.expand(b, 1, h, w)),)


NODE_CLASS_MAPPINGS = {
    "Pano360ERPToCubemap": ERPToCubemap,
    "Pano360CubemapToERP": CubemapToERP,
    "Pano360ERPToPerspective": ERPToPerspective,
    "Pano360PerspectiveToERP": PerspectiveToERP,
    "Pano360RotatePanorama": RotatePanorama,
    "Pano360RollYaw": RollYaw,
    "Pano360SeamPoleMask": SeamPoleMask,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "Pano360ERPToCubemap": "Pano360 ERP → Cubemap",
    "Pano360CubemapToERP": "Pano360 Cubemap → ERP",
    "Pano360ERPToPerspective": "Pano360 ERP → Perspective",
    "Pano360PerspectiveToERP": "Pano360 Perspective → ERP",
    "Pano360RotatePanorama": "Pano360 Rotate Panorama",
    "Pano360RollYaw": "Pano360 Roll Yaw (exact)",
    "Pano360SeamPoleMask": "Pano360 Seam / Pole Mask",
}
