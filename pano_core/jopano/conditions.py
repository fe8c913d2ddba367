"""Condition switching for JoPano: what is known of the panorama, as cube faces and coverage.

Three kinds of input become one :class:`FaceConditions` (for one panorama, F R B L U D):

* :func:`face_condition`: one face **is** the given image (V2P; a square image resized to the face
  size if it differs, then kept exactly);
* :func:`view_condition`: a perspective photo of any field of view, yaw and pitch, projected onto
  the cube through the ERP (the shared view placement :func:`pano_core.diffusion.masks.place_view`,
  i.e. :func:`pano_core.geometry.p2e`, then :func:`~pano_core.geometry.e2c` of the photo and of
  its coverage mask);
* :func:`erp_condition`: an existing ERP with a mask of what to keep (in/outpainting).

The pipeline uses it in three places: faces with full coverage go on the clean-face path (their
clean latent at timestep 0 every step), partly covered faces keep the covered latent pixels by
replacement with the noised known latent (:func:`latent_keep_mask`), and after decoding the known
pixels are pasted back (:func:`paste_known`, with a feathered blend at the coverage border).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion.masks import place_view
from ..errors import PanoInputError
from ..geometry import FACE_NAMES, e2c
from ..validate import check_bchw, check_erp

__all__ = [
    "FULL",
    "FaceConditions",
    "face_condition",
    "view_condition",
    "erp_condition",
    "latent_keep_mask",
    "paste_weight",
    "paste_known",
    "face_index",
]

FULL = 0.999  # coverage at or above this counts as known


@dataclass
class FaceConditions:
    """Known content of one panorama's cube.

    ``faces``: (6, 3, S, S) known pixels in 0..1 (0 where unknown); ``coverage``: (6, 1, S, S) in
    0..1 (1 = known). ``full``: indices of faces known everywhere (clean-face path); ``partial``:
    faces with some but not full coverage (replacement path); ``exact``: True when the known
    pixels are the user's own (a given face), False when they come through a projection.
    """

    faces: torch.Tensor
    coverage: torch.Tensor
    exact: bool = False

    @property
    def face_size(self) -> int:
        return int(self.faces.shape[-1])

    @property
    def known(self) -> torch.Tensor:
        """(6, 1, S, S) bool: pixels counted as known."""
        return self.coverage >= FULL

    @property
    def full(self) -> list[int]:
        k = self.known.flatten(1)
        return [i for i in range(6) if bool(k[i].all())]

    @property
    def partial(self) -> list[int]:
        k = self.known.flatten(1)
        return [i for i in range(6) if bool(k[i].any()) and not bool(k[i].all())]

    @property
    def full_names(self) -> list[str]:
        return [FACE_NAMES[i] for i in self.full]

    @property
    def generated_names(self) -> list[str]:
        """Faces the model generates (all but the fully known ones)."""
        full = set(self.full)
        return [n for i, n in enumerate(FACE_NAMES) if i not in full]


def face_index(face: str, name: str = "view_face") -> int:
    """``"F"`` ... ``"D"`` (any case) -> 0..5."""
    key = str(face).strip().upper()
    if key not in FACE_NAMES:
        raise PanoInputError(f"{name}: expected one of {' '.join(FACE_NAMES)}, got {face!r}")
    return FACE_NAMES.index(key)


def _rgb(image: object, name: str) -> torch.Tensor:
    """(1, C, H, W) or (C, H, W) image with 1, 3 or 4 channels -> (1, 3, H, W) float32 in 0..1."""
    if isinstance(image, torch.Tensor) and image.ndim == 3:
        image = image.unsqueeze(0)
    x = check_bchw(image, name, channels=(1, 3, 4))
    if x.shape[0] != 1:
        raise PanoInputError(f"{name}: expected one image, got a batch of {x.shape[0]}")
    x = x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x[:, :3].clamp(0, 1).contiguous()


def face_condition(image: object, face: str, face_size: int, name: str = "view") -> FaceConditions:
    """V2P: ``image`` **is** face ``face`` (square; resized to ``face_size`` if it differs)."""
    idx = face_index(face)
    x = _rgb(image, name)
    h, w = x.shape[-2:]
    if h != w:
        raise PanoInputError(
            f"{name}: a cube face must be square, got {w}x{h}; for a photo that is not one face use a field "
            "of view (fov/yaw/pitch) instead"
        )
    if h != face_size:
        x = F.interpolate(x, size=(face_size, face_size), mode="bicubic", align_corners=False, antialias=h > face_size)
        x = x.clamp(0, 1)
    faces = torch.zeros(6, 3, face_size, face_size)
    cov = torch.zeros(6, 1, face_size, face_size)
    faces[idx] = x[0]
    cov[idx] = 1.0
    return FaceConditions(faces=faces, coverage=cov, exact=True)


def _erp_size(face_size: int) -> tuple[int, int]:
    # ERP twice as fine as the faces (4S x 8S) so that the second resampling (e2c) loses little
    return 2 * 2 * face_size, 2 * 4 * face_size


def view_condition(image: object, fov: float, yaw: float = 0.0, pitch: float = 0.0, *, face_size: int,
                   name: str = "view") -> FaceConditions:
    """A perspective photo (horizontal ``fov`` in degrees, ``yaw``/``pitch`` as in
    :func:`pano_core.geometry.e2p`) projected onto the cube, with its coverage."""
    x = _rgb(image, name)
    try:
        fov = float(fov)
    except (TypeError, ValueError):
        raise PanoInputError(f"fov: expected a number of degrees, got {fov!r}") from None
    if not 0.0 < fov < 180.0:
        raise PanoInputError(f"fov: expected a horizontal field of view between 0 and 180 degrees, got {fov}")
    canvas, generate = place_view(x, fov, float(yaw), float(pitch), height=_erp_size(face_size)[0])
    keep = 1.0 - generate
    return _from_erp(canvas * keep, keep, face_size)


def erp_condition(erp: object, mask: object, *, face_size: int, name: str = "image",
                  mask_name: str = "mask") -> FaceConditions:
    """An ERP (1, C, H, 2H) and a keep mask (1, 1, H, 2H) or (H, 2H), 1 = keep, same size."""
    if isinstance(erp, torch.Tensor) and erp.ndim == 3:
        erp = erp.unsqueeze(0)
    check_erp(erp, name, channels=(1, 3, 4))
    x = _rgb(erp, name)
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        mask = mask[None, None]
    elif isinstance(mask, torch.Tensor) and mask.ndim == 3:
        mask = mask.unsqueeze(0)
    m = check_bchw(mask, mask_name, channels=(1, 3, 4)).float()
    if m.shape[0] != 1:
        raise PanoInputError(f"{mask_name}: expected one mask, got a batch of {m.shape[0]}")
    if m.shape[1] > 1:
        m = m[:, :3].mean(1, keepdim=True)
    if m.shape[-2:] != x.shape[-2:]:
        raise PanoInputError(
            f"{mask_name}: must have the size of {name} ({x.shape[-1]}x{x.shape[-2]}), got {m.shape[-1]}x{m.shape[-2]}"
        )
    keep = (m > 0.5).float()
    return _from_erp(x * keep, keep, face_size)


def _from_erp(erp: torch.Tensor, cov: torch.Tensor, face_size: int) -> FaceConditions:
    faces = e2c(erp.float().contiguous(), face_size=face_size)  # (6, 3, S, S)
    c = e2c(cov.float().contiguous(), face_size=face_size).clamp(0, 1)
    # known pixels: exactly the sampled photo (a bilinear tap that reached outside the photo leaves
    # coverage < FULL there, and such pixels count as unknown)
    known = (c >= FULL).float()
    return FaceConditions(faces=(faces * known).clamp(0, 1), coverage=c, exact=False)


def latent_keep_mask(cond: FaceConditions, factor: int) -> torch.Tensor:
    """(6, 1, S/f, S/f) float mask of latent pixels whose whole f x f pixel block is known."""
    k = cond.known.float()
    if k.shape[-1] % factor:
        raise PanoInputError(f"face_size: {k.shape[-1]} is not a multiple of the VAE's downscale factor {factor}")
    return -F.max_pool2d(-k, factor)


def paste_weight(cond: FaceConditions, feather: int) -> torch.Tensor:
    """(6, 1, S, S) weight of the known pixels when pasted back: 1 on the known region except a
    ``feather``-pixel band inside its border, where it ramps down to 0 (0 outside). Face borders
    are not coverage borders (the photo continues on the neighbour face): the mask is extended
    by replication there."""
    k = cond.known.float()
    if feather <= 0:
        return k
    r = int(feather)
    # erode by r, then a box blur of radius r: 1 deep inside, ramps to ~0 at the coverage border
    pad = F.pad(k, (r, r, r, r), mode="replicate")
    eroded = -F.max_pool2d(-pad, 2 * r + 1, stride=1)
    pad2 = F.pad(eroded, (r, r, r, r), mode="replicate")
    w = F.avg_pool2d(pad2, 2 * r + 1, stride=1)
    return (w * k).clamp(0, 1)


def paste_known(faces: torch.Tensor, cond: FaceConditions, feather: int = 0) -> torch.Tensor:
    """Paste the known pixels of ``cond`` into generated faces (B*6, 3, S, S) (every panorama).

    Fully known faces of an exact condition (a given face) are copied exactly; elsewhere the
    known pixels are blended in with :func:`paste_weight`."""
    n = faces.shape[0] // 6
    kf = cond.faces.to(faces.device, faces.dtype).repeat(n, 1, 1, 1)
    if cond.exact:
        w = cond.known.to(faces.device, faces.dtype).repeat(n, 1, 1, 1)
    else:
        w = paste_weight(cond, feather).to(faces.device, faces.dtype).repeat(n, 1, 1, 1)
    out = faces * (1 - w) + kf * w
    full = cond.full
    if full:
        idx = torch.tensor([b * 6 + i for b in range(n) for i in full], device=faces.device)
        w_full = w[idx].flatten(1).amin(1)
        exact = idx[w_full >= 1.0]
        out[exact] = kf[exact]
    return out
