"""``pano360-train prepare``: check a raw panorama set and write the model-independent prepared set.

Raw input (never written to):

* a folder of ERP images (2:1) with same-name ``.txt`` captions and optional masks
  (``masks/NAME.png`` or ``NAME_mask.png``; white where supervised), or
* DiT360's jsonl: one ``{"image": PATH, "caption": TEXT or [TEXTS], "mask": PATH or null}`` per
  line, paths relative to the jsonl file (a list of captions -> the longest);
* optionally a folder of perspective photos with same-name ``.txt`` captions (perspective guidance).

Optional per-face captions for the Joint-Face trainer: ``NAME.F.txt`` ... ``NAME.D.txt`` beside
``NAME.txt`` (or ``"face_captions": {"F": TEXT, ...}`` in a jsonl line) are copied as
``captions/NAME.F.txt`` ... and listed under ``extra["face_captions"]``.

Every file is checked first (readable, 2:1, caption present, mask readable and 2:1) and all
problems are reported together. The prepared set (``--output``) holds::

    manifest.json                 format, resolution, items, refinement, photos
    images/NAME.png               the panorama at H x 2H
    captions/NAME.txt
    masks/NAME.png                (when the raw item had one)
    refined/NAME.png              pole-refined copy (--refine-poles opencv | diffusers:PATH)
    perspective/images/NAME.png   a photo placed as a random side face on an ERP canvas (p2e)
    perspective/masks/NAME.png    its coverage
    perspective/captions/NAME.txt
    caches/                       built by each trainer for its model on first use

Caption dropout and the trigger word are trainer settings, not baked in here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from pano_core.errors import PanoInputError
from pano_core.io import IMAGE_SUFFIXES, read_image, write_image

from .randomness import derive_seed

__all__ = [
    "MANIFEST",
    "FORMAT",
    "SIDE_YAWS",
    "RawItem",
    "PreparedItem",
    "DataCheckError",
    "collect_panoramas",
    "collect_photos",
    "prepare_dataset",
    "read_manifest",
]

MANIFEST = "manifest.json"
FORMAT = "pano360-prepared"
VERSION = 1
SIDE_YAWS = (0.0, 90.0, 180.0, 270.0)


class DataCheckError(PanoInputError):
    """The raw set has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str], what: str = "data"):
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{what}: {len(self.problems)} problem(s) found:\n  {shown}{more}")


@dataclass
class RawItem:
    name: str
    image: Path
    caption: str
    mask: Path | None = None
    face_captions: dict = field(default_factory=dict)  # {"F": text, ...} (Joint-Face trainer)


FACE_KEYS = ("F", "R", "B", "L", "U", "D")


@dataclass
class PreparedItem:
    name: str
    image: str
    caption: str
    mask: str | None = None
    refined: str | None = None
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------- collection


def _image_size(path: Path) -> tuple[int, int] | None:
    data = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if arr is None:
        return None
    return int(arr.shape[0]), int(arr.shape[1])


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES


def _check_image(path: Path, what: str, problems: list[str], erp: bool = True) -> None:
    if not path.is_file():
        problems.append(f"{what}: file not found: {path}")
        return
    hw = _image_size(path)
    if hw is None:
        problems.append(f"{what}: cannot read {path} as an image")
    elif erp and hw[1] != 2 * hw[0]:
        problems.append(f"{what}: {path.name} is {hw[1]}x{hw[0]}, expected an equirectangular 2:1 image")


def _read_caption(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    return text or None


def _unique(name: str, used: set[str]) -> str:
    base = re.sub(r"[^\w.-]+", "_", name) or "item"
    out, i = base, 1
    while out in used:
        i += 1
        out = f"{base}_{i}"
    used.add(out)
    return out


def _folder_items(folder: Path, problems: list[str], what: str, masks: bool) -> list[RawItem]:
    items, used = [], set()
    files = sorted(p for p in folder.iterdir() if _is_image(p) and not p.stem.endswith("_mask"))
    for p in files:
        caption = _read_caption(p.with_suffix(".txt"))
        if caption is None:
            problems.append(f"{what}: {p.name} has no caption (expected a non-empty {p.with_suffix('.txt').name})")
        mask = None
        if masks:
            for cand in [folder / "masks" / f"{p.stem}{s}" for s in IMAGE_SUFFIXES] + [
                folder / f"{p.stem}_mask{s}" for s in IMAGE_SUFFIXES
            ]:
                if cand.is_file():
                    mask = cand
                    break
        faces = {k: t for k in FACE_KEYS if (t := _read_caption(p.parent / f"{p.stem}.{k}.txt")) is not None}
        items.append(RawItem(_unique(p.stem, used), p, caption or "", mask, faces))
    return items


def _jsonl_items(path: Path, problems: list[str]) -> list[RawItem]:
    items, used = [], set()
    base = path.parent
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"data: {path.name} line {n}: not JSON ({e.msg})")
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
            problems.append(f"data: {path.name} line {n}: expected an object with an \"image\" path")
            continue
        cap = rec.get("caption")
        if isinstance(cap, list):
            caps = [c.strip() for c in cap if isinstance(c, str) and c.strip()]
            cap = max(caps, key=len) if caps else None
        cap = cap.strip() if isinstance(cap, str) else None
        if not cap:
            problems.append(f"data: {path.name} line {n}: no caption for {rec['image']}")
        img = (base / rec["image"]).expanduser()
        mask = rec.get("mask")
        mask = (base / mask).expanduser() if isinstance(mask, str) and mask else None
        fc = rec.get("face_captions") or {}
        if not isinstance(fc, dict) or any(k not in FACE_KEYS or not isinstance(v, str) for k, v in fc.items()):
            problems.append(f"data: {path.name} line {n}: face_captions must map faces {' '.join(FACE_KEYS)} to texts")
            fc = {}
        fc = {k: v.strip() for k, v in fc.items() if v.strip()}
        items.append(RawItem(_unique(Path(rec["image"]).stem, used), img, cap or "", mask, fc))
    return items


def collect_panoramas(data: str | os.PathLike) -> tuple[list[RawItem], list[str]]:
    """The raw panoramas of a folder or jsonl file and every problem found (not raised)."""
    src = Path(data).expanduser()
    problems: list[str] = []
    if src.is_dir():
        items = _folder_items(src, problems, "data", masks=True)
    elif src.is_file() and src.suffix.lower() == ".jsonl":
        items = _jsonl_items(src, problems)
    else:
        raise PanoInputError(f"data: {src} is neither a folder of panoramas nor a .jsonl file")
    if not items and not problems:
        problems.append(f"data: {src} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for it in items:
        _check_image(it.image, "data", problems)
        if it.mask is not None:
            _check_image(it.mask, "data (mask)", problems)
    return items, problems


def collect_photos(photos: str | os.PathLike) -> tuple[list[RawItem], list[str]]:
    """The perspective photos of a folder (any aspect; same-name .txt captions) and problems."""
    src = Path(photos).expanduser()
    if not src.is_dir():
        raise PanoInputError(f"photos: {src} is not a folder of perspective photos")
    problems: list[str] = []
    items = _folder_items(src, problems, "photos", masks=False)
    if not items:
        problems.append(f"photos: {src} holds no images")
    for it in items:
        _check_image(it.image, "photos", problems, erp=False)
    return items, problems


# ----------------------------------------------------------------------------------- writing


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    arr = img[0].permute(1, 2, 0).numpy()
    interp = cv2.INTER_AREA if arr.shape[0] > h else cv2.INTER_CUBIC
    out = cv2.resize(arr, (w, h), interpolation=interp)
    if out.ndim == 2:
        out = out[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None].clamp(0, 1)


def _rgb(img: torch.Tensor) -> torch.Tensor:
    c = img.shape[1]
    if c == 1 or c == 2:
        return img[:, :1].expand(-1, 3, -1, -1).contiguous()
    return img[:, :3].contiguous()


def _grey(img: torch.Tensor) -> torch.Tensor:
    return img[:, :3].mean(dim=1, keepdim=True) if img.shape[1] >= 3 else img[:, :1]


def _check_output(output: Path, sources: list[Path]) -> None:
    out = output.resolve()
    for folder in sources:
        folder = folder.resolve()
        if out == folder or folder in out.parents:
            raise PanoInputError(f"output: {output} is inside the raw data folder {folder}; choose a separate folder")
    if out.exists():
        if not out.is_dir():
            raise PanoInputError(f"output: {output} exists and is not a folder")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise PanoInputError(
                f"output: {output} is not empty and is not a prepared set (no {MANIFEST}); "
                "choose an empty or new folder (nothing there is overwritten)"
            )


def _progress(it, total: int, desc: str, enabled: bool):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit="img")


def prepare_dataset(
    data: str | os.PathLike,
    output: str | os.PathLike,
    resolution: int = 1024,
    refine_poles: str = "none",
    photos: str | os.PathLike | None = None,
    fov: float = 90.0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Check the raw set (all problems at once, :class:`DataCheckError`) and write the prepared set.

    ``refine_poles``: ``none``, ``opencv`` (``opencv-ns``) or ``diffusers:PATH_OR_ID`` (the pole
    inpainters of ``pano_core.poles``); refined copies go to ``refined/``. ``photos``: perspective
    photos, each centre-cropped to a square and placed as a cube side face (``fov`` degrees,
    yaw drawn per photo from 0/90/180/270 with ``seed``) on an ERP canvas with its coverage mask.
    Returns the manifest.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 16 or resolution % 16:
        raise PanoInputError(f"resolution: expected the ERP height, a multiple of 16 (>= 16), got {resolution!r}")
    spec = (refine_poles or "none").strip()
    if spec.lower() != "none" and not (spec.lower().startswith(("opencv", "diffusers:"))):
        raise PanoInputError(f"refine_poles: expected none, opencv, opencv-ns or diffusers:PATH, got {refine_poles!r}")
    if not (0 < float(fov) < 180):
        raise PanoInputError(f"fov: expected a field of view in degrees between 0 and 180, got {fov}")
    items, problems = collect_panoramas(data)
    photo_items: list[RawItem] = []
    if photos is not None:
        photo_items, p2 = collect_photos(photos)
        problems += p2
    if problems:
        raise DataCheckError(problems)
    out = Path(output).expanduser()
    raw_folders = {it.image.parent for it in items} | {it.mask.parent for it in items if it.mask is not None}
    if Path(data).is_dir():
        raw_folders.add(Path(data))
    if photos is not None:
        raw_folders.add(Path(photos))
    _check_output(out, sorted(raw_folders))
    h, w = resolution, 2 * resolution
    for sub in ("images", "captions", "masks", "refined", "perspective/images", "perspective/masks", "perspective/captions"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    inpainter = None
    if spec.lower() != "none":
        from pano_core.poles import make_inpainter

        inpainter = make_inpainter(spec)

    prepared: list[PreparedItem] = []
    for it in _progress(items, len(items), "prepare panoramas", progress):
        img = _rgb(_resize(read_image(it.image, name="data"), h, w))
        rel = f"images/{it.name}.png"
        write_image(out / rel, img, force=True)
        (out / "captions" / f"{it.name}.txt").write_text(it.caption + "\n", encoding="utf-8")
        entry = PreparedItem(it.name, rel, f"captions/{it.name}.txt")
        if it.face_captions:
            entry.extra["face_captions"] = {}
            for k, text in it.face_captions.items():
                (out / "captions" / f"{it.name}.{k}.txt").write_text(text + "\n", encoding="utf-8")
                entry.extra["face_captions"][k] = f"captions/{it.name}.{k}.txt"
        if it.mask is not None:
            m = (_resize(_grey(read_image(it.mask, name="mask")), h, w) > 0.5).float()
            entry.mask = f"masks/{it.name}.png"
            write_image(out / entry.mask, m, force=True)
        if inpainter is not None:
            from pano_core.poles import refine_poles as _refine

            entry.refined = f"refined/{it.name}.png"
            write_image(out / entry.refined, _refine(img, inpainter).clamp(0, 1), force=True)
        prepared.append(entry)

    persp: list[PreparedItem] = []
    if photo_items:
        from pano_core.geometry import p2e

        for it in _progress(photo_items, len(photo_items), "perspective canvases", progress):
            img = _rgb(read_image(it.image, name="photos"))
            ph, pw = img.shape[-2:]
            s = min(ph, pw)
            img = img[..., (ph - s) // 2 : (ph - s) // 2 + s, (pw - s) // 2 : (pw - s) // 2 + s]
            side = max(16, min(s, int(round(w * float(fov) / 360.0 * 1.5))))
            img = _resize(img, side, side)
            g = torch.Generator().manual_seed(derive_seed(int(seed), it.name, "side"))
            yaw = SIDE_YAWS[int(torch.randint(0, 4, (1,), generator=g))]
            canvas, cover = p2e(img, float(fov), yaw=yaw, pitch=0.0, erp_hw=(h, w))
            entry = PreparedItem(
                it.name, f"perspective/images/{it.name}.png", f"perspective/captions/{it.name}.txt",
                mask=f"perspective/masks/{it.name}.png", extra={"yaw": yaw, "fov": float(fov)},
            )
            write_image(out / entry.image, canvas.clamp(0, 1), force=True)
            write_image(out / entry.mask, (cover > 0.5).float(), force=True)
            (out / entry.caption).write_text(it.caption + "\n", encoding="utf-8")
            persp.append(entry)

    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "resolution": resolution,
        "width": w,
        "source": str(Path(data).expanduser().resolve()),
        "photos": str(Path(photos).expanduser().resolve()) if photos is not None else None,
        "refine_poles": spec,
        "fov": float(fov),
        "seed": int(seed),
        "items": [asdict(p) for p in prepared],
        "perspective": [asdict(p) for p in persp],
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a prepared set, with clear errors for a folder that is not one or is empty."""
    p = Path(folder).expanduser()
    m = p / MANIFEST
    if not m.is_file():
        raise PanoInputError(
            f"data: {p} is not a prepared set (no {MANIFEST}); run `pano360-train prepare --data RAW --output {p}` first"
        )
    try:
        manifest = json.loads(m.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PanoInputError(f"data: {m} is damaged ({e.msg}); run prepare again") from e
    if manifest.get("format") != FORMAT:
        raise PanoInputError(f"data: {m} is not a Pano360 prepared-set manifest")
    if not manifest.get("items"):
        raise PanoInputError(f"data: the prepared set {p} is empty (no panoramas); prepare it from a folder with images")
    return manifest
