"""Prompt lists (``--prompts FILE``), their split across processes, and panorama files with
metadata, shared by ``pano360 generate`` and ``pano360 jopano``.

Private module (leading underscore): not a subcommand module.

``--prompts FILE``: one prompt per line (blank lines and lines starting with ``#`` skipped), or
JSON Lines ``{"prompt": ..., "faces": {"F": ...}, "negative": ..., "seed": ...}`` (every key
optional except that a line needs a prompt or, where faces are allowed, face prompts). A file
whose first non-blank line starts with ``{`` is JSON Lines. Output ``-o`` is then a folder of
``00000.png``, ``00001.png`` ... (the line's index among the prompts). Under ``accelerate launch``
(or ``torchrun``: environment ``WORLD_SIZE``/``RANK``) process ``r`` of ``n`` takes the prompts
``i`` with ``i % n == r``; no process group is needed since the panoramas are independent.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PanoInputError

__all__ = ["PromptItem", "read_prompts_file", "process_share", "local_device", "write_panorama", "file_hash",
           "check_batch_outputs"]

_KEYS = {"prompt", "faces", "negative", "seed"}


@dataclass
class PromptItem:
    """One line of a prompts file (``index``: its position among the prompts)."""

    index: int
    prompt: str | None
    faces: dict[str, str] = field(default_factory=dict)
    negative: str | None = None
    seed: int | None = None

    @property
    def stem(self) -> str:
        return f"{self.index:05d}"


def read_prompts_file(path: str | os.PathLike, allow_faces: bool = True, allow_negative: bool = True,
                      name: str = "--prompts") -> list[PromptItem]:
    """Parse a prompts file (see the module docstring); every bad line is an error naming it."""
    p = Path(path)
    if not p.is_file():
        raise PanoInputError(f"{name}: file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PanoInputError(f"{name}: cannot read {p} as UTF-8 text: {e}") from e
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines())]
    lines = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise PanoInputError(f"{name}: {p} holds no prompts")
    jsonl = lines[0][1].startswith("{")
    items = []
    for n, ln in lines:
        where = f"{name}: {p.name} line {n}"
        if not jsonl:
            if ln.startswith("{"):
                raise PanoInputError(f"{where}: a JSON line in a plain-text prompts file (use one format throughout)")
            items.append(PromptItem(len(items), ln))
            continue
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as e:
            raise PanoInputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise PanoInputError(f"{where}: expected a JSON object like {{\"prompt\": ...}}, got {type(obj).__name__}")
        extra = set(obj) - _KEYS
        if extra:
            raise PanoInputError(f"{where}: unknown keys {sorted(extra)}; expected among {sorted(_KEYS)}")
        prompt = obj.get("prompt")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise PanoInputError(f"{where}: \"prompt\" must be a non-empty text")
        faces = obj.get("faces") or {}
        if faces and not allow_faces:
            raise PanoInputError(f"{where}: \"faces\" (per-face prompts) is a JoPano option; this command takes "
                                 "one prompt per panorama")
        if not isinstance(faces, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in faces.items()):
            raise PanoInputError(f"{where}: \"faces\" must map face letters (F R B L U D) to texts")
        from ..geometry import FACE_NAMES

        bad = [k for k in faces if k.strip().upper() not in FACE_NAMES]
        if bad:
            raise PanoInputError(f"{where}: face key {bad[0]!r} is not one of {' '.join(FACE_NAMES)}")
        if prompt is None and not faces:
            raise PanoInputError(f"{where}: needs a \"prompt\"" + (" or \"faces\"" if allow_faces else ""))
        neg = obj.get("negative")
        if neg is not None and not allow_negative:
            raise PanoInputError(f"{where}: \"negative\" is not an option of this command")
        if neg is not None and not isinstance(neg, str):
            raise PanoInputError(f"{where}: \"negative\" must be a text")
        seed = obj.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise PanoInputError(f"{where}: \"seed\" must be an integer >= 0, got {seed!r}")
        items.append(PromptItem(len(items), prompt.strip() if prompt else None,
                                {k.strip().upper(): v for k, v in faces.items()}, neg, seed))
    return items


def process_share(items: list, env: dict | None = None) -> list:
    """The items of this process under ``accelerate launch``/``torchrun`` (all of them otherwise)."""
    env = os.environ if env is None else env
    try:
        n = int(env.get("WORLD_SIZE", "1"))
        r = int(env.get("RANK", "0"))
    except ValueError:
        return list(items)
    if n <= 1:
        return list(items)
    return [it for i, it in enumerate(items) if i % n == r]


def local_device(device: str) -> str:
    """``auto`` under several processes: this process's GPU (``LOCAL_RANK``) when CUDA is there."""
    if device != "auto" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return device


def check_batch_outputs(folder: str | os.PathLike, items: list[PromptItem], suffix: str, force: bool,
                        name: str = "-o/--output") -> Path:
    """``-o`` as a folder for a prompt list: not a file, and none of the outputs exist (unless force)."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise PanoInputError(f"{name}: with --prompts, -o is a folder for 00000{suffix} ...; {out} is a file")
    if out.suffix.lower() in (".png", ".jpg", ".jpeg") and not out.exists():
        raise PanoInputError(f"{name}: with --prompts, -o is a folder (got {out}, which looks like an image file)")
    if not force:
        for it in items:
            f = out / f"{it.stem}{suffix}"
            if f.exists():
                raise PanoInputError(f"output: {f} already exists; pass --force to overwrite it")
    return out


def file_hash(path: str | os.PathLike | None) -> str | None:
    """First 16 hex digits of a file's SHA-256 (None for None or a non-file)."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def write_panorama(path: str | os.PathLike, erp, settings: dict, bits: int = 8, force: bool = False) -> Path:
    """Write an ERP (1, 3, H, 2H) with GPano XMP (photo viewers open it as a sphere) and the
    ``settings`` as JSON (PNG: a ``pano360`` text chunk; JPEG: a comment segment)."""
    from ..io import write_image
    from ..xmp import (
        _jpeg_join,
        _jpeg_segments,
        build_xmp,
        embed_xmp,
        gpano_for_image,
        image_kind,
        png_set_text,
    )

    p = write_image(path, erp, bits=bits, force=force)
    data = p.read_bytes()
    h, w = erp.shape[-2:]
    data = embed_xmp(data, build_xmp(gpano_for_image(int(w), int(h))))
    text = json.dumps(settings, ensure_ascii=False, default=str)
    if image_kind(data) == "png":
        data = png_set_text(data, {"pano360": text}, itxt=True)
    else:
        segs, rest = _jpeg_segments(data)
        segs.append((0xFE, ("pano360:" + text).encode("utf-8")[:65000]))
        data = _jpeg_join(segs, rest)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return p
