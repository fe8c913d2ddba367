"""Latent and text-embedding caches of a prepared set for one model (safetensors shards).

A cache lives in ``PREPARED/caches/<trainer>-<model slug>-<H>/`` with a ``cache.json`` that
records the model id, the size, the encode settings and a hash of the input (the prepared
manifest and every file's size and mtime); a cache whose record does not match is rebuilt, never
silently used.

Latents are the **circular** VAE encode (``encode_pad`` latent columns wrapped around both sides
before the encoder, cropped after), so a yaw roll by whole latent columns is, up to the
encoder's own seam error, the latent of the rolled image; that error is measured on the first
item when the cache is built (``roll_error`` in ``cache.json``, next to the same measurement for
a plain encode). A horizontal flip is a second cached encode of the flipped image (a flipped
latent is not the latent of the flipped image: ``flip_error`` records by how much).
Anything else that moves pixels (a yaw that is not whole columns) needs ``cache: false``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pano_core.errors import PanoInputError

__all__ = ["CACHE_VERSION", "cache_dir", "input_hash", "LatentCache", "TextCache"]

CACHE_VERSION = 1
SHARD = 64  # items per safetensors shard


def _slug(text: str) -> str:
    s = re.sub(r"[^\w.-]+", "_", str(text)).strip("._")[-48:] or "model"
    return s


def cache_dir(prepared: str | os.PathLike, trainer: str, model: str, resolution: int) -> Path:
    """``PREPARED/caches/<trainer>-<slug>-<hash8>-<H>`` for a model id or path."""
    h = hashlib.sha1(str(model).encode()).hexdigest()[:8]
    return Path(prepared) / "caches" / f"{trainer}-{_slug(Path(str(model)).name or model)}-{h}-{resolution}"


def input_hash(prepared: str | os.PathLike, manifest: dict, files: Sequence[str], extra: dict) -> str:
    """Hash of what a cache was built from: the manifest, each file's size and mtime, settings."""
    d = hashlib.sha256()
    d.update(json.dumps(manifest, sort_keys=True).encode())
    d.update(json.dumps(extra, sort_keys=True, default=str).encode())
    for rel in files:
        st = (Path(prepared) / rel).stat()
        d.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
    return d.hexdigest()[:24]


class _ShardedCache:
    """Tensors by key in safetensors shards with a JSON record (``kind``.json)."""

    kind = "cache"

    def __init__(self, folder: Path, record: dict):
        self.folder = folder
        self.record = record
        self._index: dict[str, tuple[str, str]] = record.get("index", {})
        self._loaded: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def record_path(cls, folder: Path) -> Path:
        return folder / f"{cls.kind}.json"

    @classmethod
    def open(cls, folder: Path, expect: dict):
        """The cache in ``folder`` when its record matches ``expect`` (all keys equal), else None."""
        p = cls.record_path(folder)
        if not p.is_file():
            return None
        try:
            record = json.loads(p.read_text())
        except json.JSONDecodeError:
            return None
        if any(record.get(k) != v for k, v in expect.items()):
            return None
        return cls(folder, record)

    @classmethod
    def write(cls, folder: Path, record: dict, items: Sequence[tuple[str, dict[str, torch.Tensor]]],
              progress: Callable | None = None):
        """Write ``items`` (key -> named tensors) in shards, then the record (last, atomically)."""
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"{cls.kind}-*.safetensors"):
            old.unlink()
        index: dict[str, tuple[str, str]] = {}
        shard: dict[str, torch.Tensor] = {}
        n = 0

        def flush():
            nonlocal shard, n
            if shard:
                save_file(shard, str(folder / f"{cls.kind}-{n:05d}.safetensors"))
                shard = {}
                n += 1

        count = 0
        for key, tensors in items:
            for name, t in tensors.items():
                tk = f"{key}::{name}"
                shard[tk] = t.detach().to("cpu").contiguous()
                index[tk] = (f"{cls.kind}-{n:05d}.safetensors", tk)
            count += 1
            if count % SHARD == 0:
                flush()
            if progress is not None:
                progress()
        flush()
        record = dict(record, index=index, items=count)
        tmp = cls.record_path(folder).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, cls.record_path(folder))
        return cls(folder, record)

    @classmethod
    def ensure(cls, folder: Path, expect: dict, items: Iterable[tuple[str, dict[str, torch.Tensor]]], *,
               total: int, desc: str, progress: bool):
        """The cache in ``folder`` when its record matches ``expect``, else ``items`` written there
        (``items`` is consumed only then: pass a generator so nothing is encoded for a valid cache)."""
        cache = cls.open(folder, expect)
        if cache is None:
            bar = progress_bar(total, desc, progress)
            cache = cls.write(folder, expect, items, progress=bar.update)
            bar.close()
        return cache

    def get(self, key: str, name: str) -> torch.Tensor:
        tk = f"{key}::{name}"
        if tk not in self._index:
            raise PanoInputError(f"cache: {self.folder} has no entry {tk}; delete the folder to rebuild it")
        fname, _ = self._index[tk]
        if fname not in self._loaded:
            self._loaded[fname] = load_file(str(self.folder / fname))
        return self._loaded[fname][tk]


class LatentCache(_ShardedCache):
    """``get(name, "latent")`` / ``get(name, "flip")``: (16, H/8, W/8) transformer-space latents."""

    kind = "latents"


class TextCache(_ShardedCache):
    """``get(caption_key, "prompt_embeds")`` (S, D) and ``get(caption_key, "pooled")`` (D,)."""

    kind = "text"


class _Bar:
    def __init__(self, bar=None):
        self.bar = bar

    def update(self, n: int = 1):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def progress_bar(total: int, desc: str, enabled: bool) -> _Bar:
    """A tqdm bar when ``enabled`` (rank 0), else a no-op with the same ``update``/``close``."""
    if not enabled:
        return _Bar()
    from tqdm.auto import tqdm

    return _Bar(tqdm(total=total, desc=desc, unit="it"))


def remove(folder: Path) -> None:
    """Remove a cache folder (used when its record does not match)."""
    if folder.is_dir():
        shutil.rmtree(folder)
