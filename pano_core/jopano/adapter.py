"""The Joint-Face Adapter: full attention over all six faces of a panorama in every Sana block.

One :class:`JointFaceAdapter` per ``SanaTransformerBlock`` (JoPano, section 3.1): the block's
hidden states of a panorama's six faces ``(B*6, N, C)`` are joined to ``(B, 6N, C)``, normalised
by one LayerNorm shared across the faces, projected to Q/K/V, Q and K rotated by
:class:`~.sphere_rope.SphereRoPE` on each token's unit-sphere direction, attended with SDPA over
all ``6N`` tokens and projected back by a **zero-initialised** output projection (an untrained
adapter is the identity). The adapter runs after the block's linear self-attention and before
its cross-attention.

**Insertion without touching the model.** In diffusers' ``SanaTransformerBlock`` the
cross-attention is ``h = attn2(h, text) + h``. :func:`attach_adapters` gives each ``attn2`` an
attention processor that computes ``d = adapter(h)`` and returns ``cross(h + d) + d``; the block
then yields ``(h + d) + cross(h + d)``, exactly "``h += adapter(h)`` before cross-attention". The
transformer's weights and modules are not changed, the same transformer runs with and without
adapters (:func:`detach_adapters` restores the previous processors), and LoRAs loaded into the
transformer (diffusers/PEFT) keep working beside the adapter: the wrapped processor still calls
``attn2``'s own (possibly LoRA-wrapped) projections.

**Gradient checkpointing** recomputes blocks during ``backward()``: keep the adapters attached
until then (``adapter_set(transformer, ...)`` attaches and stays attached; a ``with
adapters_attached(...)`` block must enclose the backward pass too).

**Batches.** A batch holds whole panoramas: 6 faces F R B L U D per panorama, contiguous
(classifier-free guidance doubles the batch, which keeps that). Faces are square token grids.
Each face may carry its own timestep (Sana's timestep is per batch element).

**File format** (shared with the trainer): one ``.safetensors`` file (``jopano_adapter.safetensors``
by convention) with tensors ``blocks.<i>.<norm|q|k|v|out>.<weight|bias>`` and the
:class:`JointFaceAdapterConfig` as JSON under the metadata key ``pano360_jopano``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PanoInputError
from ..validate import check_int
from .sphere_rope import DEFAULT_ROPE_BASE, DEFAULT_ROPE_SCALE, SphereRoPE, positive

__all__ = [
    "ADAPTER_FILE_NAME",
    "ADAPTER_METADATA_KEY",
    "AdapterHandle",
    "JointFaceAdapter",
    "JointFaceAdapterConfig",
    "JointFaceAdapterSet",
    "adapters_attached",
    "attach_adapters",
    "attached_adapters",
    "check_adapter_fits",
    "detach_adapters",
    "load_adapter_set",
    "read_adapter_config",
    "save_adapter_set",
    "transformer_dims",
]

ADAPTER_METADATA_KEY = "pano360_jopano"
ADAPTER_FILE_NAME = "jopano_adapter.safetensors"
FORMAT_VERSION = 1
_TARGET_HEAD_DIM = 64


def _default_heads(inner_dim: int) -> int:
    """Heads for ``inner_dim``: the head dimension dividing it that is closest to 64, preferring
    multiples of 8 (fast SDPA kernels), then even ones (RoPE pairs). 1120 -> 20 heads of 56."""
    divisors = [d for d in range(2, inner_dim + 1, 2) if inner_dim % d == 0 and d >= 6]
    if not divisors:
        raise PanoInputError(f"inner_dim: expected a width with an even divisor >= 6 (a head dimension for sphere RoPE), got {inner_dim}")
    pool = [d for d in divisors if d % 8 == 0] or divisors
    best = min(pool, key=lambda d: (abs(d - _TARGET_HEAD_DIM), -d))
    return inner_dim // best


@dataclass
class JointFaceAdapterConfig:
    """Configuration of a Joint-Face adapter set (stored in the adapter file's metadata).

    ``num_layers``: blocks of the Sana transformer (one adapter each); ``model_dim``: its width
    (heads x head dim, 2240 for Sana 1.6B); ``inner_dim``: the adapter's attention width (default
    ``model_dim // 2``: the paper gives none; half width keeps a step near 1.17x of plain Sana,
    full width costs about 1.33x); ``heads``: attention heads (default: head dim closest to 64,
    see :func:`_default_heads`); ``rope_scale``/``rope_base``: sphere RoPE position scale and
    frequency base (:mod:`.sphere_rope`); ``face_size``: the face size in pixels the adapter was
    trained at (information); ``base_model``: the Sana model id/path it was trained on;
    ``norm_eps``: the shared LayerNorm's epsilon.
    """

    num_layers: int
    model_dim: int
    inner_dim: int | None = None
    heads: int | None = None
    rope_scale: float = DEFAULT_ROPE_SCALE
    rope_base: float = DEFAULT_ROPE_BASE
    face_size: int = 512
    base_model: str = ""
    norm_eps: float = 1e-6
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in ("num_layers", "model_dim", "face_size"):
            check_int(getattr(self, name), name, 1)
        if self.inner_dim is None:
            self.inner_dim = self.model_dim // 2
        check_int(self.inner_dim, "inner_dim", 1)
        if self.heads is None:
            self.heads = _default_heads(self.inner_dim)
        check_int(self.heads, "heads", 1)
        if self.inner_dim % self.heads:
            raise PanoInputError(f"heads: inner_dim {self.inner_dim} is not divisible by {self.heads} heads")
        for name in ("rope_scale", "rope_base", "norm_eps"):
            setattr(self, name, positive(getattr(self, name), name))
        if not isinstance(self.base_model, str):
            raise PanoInputError(f"base_model: expected a model id or path string, got {self.base_model!r}")
        check_int(self.format_version, "format_version", 1)
        if self.format_version > FORMAT_VERSION:
            raise PanoInputError(
                f"format_version: this adapter file has format {self.format_version}; this Pano360 reads up to {FORMAT_VERSION} (update Pano360)"
            )
        SphereRoPE(self.head_dim, self.rope_scale, self.rope_base)  # validates the head dim

    @property
    def head_dim(self) -> int:
        return self.inner_dim // self.heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> JointFaceAdapterConfig:
        """Build from a dict (unknown keys are ignored for forward compatibility)."""
        if not isinstance(data, dict):
            raise PanoInputError(f"{source}: expected a JSON object with the adapter configuration, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        missing = [k for k in ("num_layers", "model_dim") if k not in data]
        if missing:
            raise PanoInputError(f"{source}: adapter configuration lacks {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as e:
            raise PanoInputError(f"{source}: bad adapter configuration: {e}") from None

    @classmethod
    def for_transformer(cls, transformer: nn.Module, **overrides) -> JointFaceAdapterConfig:
        """The configuration that fits ``transformer`` (a diffusers ``SanaTransformer2DModel``):
        its block count and width; ``base_model`` from its ``_name_or_path``; overrides win."""
        model_dim, num_layers = transformer_dims(transformer)
        kw = {"num_layers": num_layers, "model_dim": model_dim, "base_model": str(getattr(transformer.config, "_name_or_path", "") or "")}
        kw.update(overrides)
        return cls(**kw)


class JointFaceAdapter(nn.Module):
    """The adapter of one block: shared LayerNorm -> Q, K, V -> sphere RoPE on Q, K -> SDPA over
    the 6N tokens of each panorama -> ``out`` (zero-initialised). Parameters: ``norm``, ``q``,
    ``k``, ``v``, ``out`` (each with weight and bias)."""

    def __init__(self, model_dim: int, inner_dim: int, heads: int, rope: SphereRoPE, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.heads = heads
        self.rope = rope
        self.norm = nn.LayerNorm(model_dim, eps=norm_eps)
        self.q = nn.Linear(model_dim, inner_dim)
        self.k = nn.Linear(model_dim, inner_dim)
        self.v = nn.Linear(model_dim, inner_dim)
        self.out = nn.Linear(inner_dim, model_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden_states: torch.Tensor, token_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``hidden_states`` (B*6, N, C) -> the adapter's update (B*6, N, C) in the adapter's dtype.

        ``token_hw``: the faces' token grid (h, w), square; ``None`` infers ``h = w = sqrt(N)``.
        """
        bf, n, c = hidden_states.shape
        side = _face_side(bf, n, token_hw, "adapter")
        b = bf // 6
        x = self.norm(hidden_states.to(self.norm.weight.dtype))
        hd = self.q.out_features // self.heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B*6, N, inner) -> (B, heads, 6N, hd)
            return t.reshape(b, 6 * n, self.heads, hd).transpose(1, 2)

        cos, sin = self.rope.face_cos_sin(side, x.device)
        q = self.rope.apply(heads(self.q(x)), cos, sin)
        k = self.rope.apply(heads(self.k(x)), cos, sin)
        o = F.scaled_dot_product_attention(q, k, heads(self.v(x)))
        return self.out(o.transpose(1, 2).reshape(bf, n, -1))


class JointFaceAdapterSet(nn.Module):
    """All blocks' adapters (``blocks``, an ``nn.ModuleList``) and their ``config``; its
    ``state_dict`` keys are the file's tensor names ``blocks.<i>.<norm|q|k|v|out>.<weight|bias>``."""

    def __init__(self, config: JointFaceAdapterConfig) -> None:
        super().__init__()
        if not isinstance(config, JointFaceAdapterConfig):
            raise PanoInputError(f"config: expected a JointFaceAdapterConfig, got {type(config).__name__}")
        self.config = config
        rope = SphereRoPE(config.head_dim, config.rope_scale, config.rope_base)
        self.blocks = nn.ModuleList(
            JointFaceAdapter(config.model_dim, config.inner_dim, config.heads, rope, config.norm_eps) for _ in range(config.num_layers)
        )

    @classmethod
    def for_transformer(cls, transformer: nn.Module, **overrides) -> JointFaceAdapterSet:
        """A fresh (identity) adapter set that fits ``transformer``, on its device."""
        s = cls(JointFaceAdapterConfig.for_transformer(transformer, **overrides))
        return s.to(next(transformer.parameters()).device)

    def forward(self, transformer: nn.Module, *args, **kwargs):
        """``transformer(*args, **kwargs)`` with this set attached (attaching it, and leaving it
        attached, when it is not). Running the transformer *through* the adapter set lets DDP /
        accelerate wrap the set, the only trained module, and see its forward; leaving it attached
        keeps gradient checkpointing right (blocks are recomputed during ``backward``)."""
        if attached_adapters(transformer) is not self:
            attach_adapters(transformer, self)
        return transformer(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> JointFaceAdapter:
        return self.blocks[i]

    def __iter__(self):
        return iter(self.blocks)


def _face_side(bf: int, n: int, token_hw, who: str) -> int:
    if bf % 6 or bf == 0:
        raise PanoInputError(
            f"{who}: the batch must hold whole panoramas (6 faces F R B L U D each, contiguous); got a batch of {bf}"
        )
    if token_hw is not None:
        h, w = (int(v) for v in token_hw)
        if h != w or h * w != n:
            raise PanoInputError(f"{who}: expected square face token grids with {n} tokens, got {h}x{w}")
        return h
    side = math.isqrt(n)
    if side * side != n:
        raise PanoInputError(f"{who}: expected square face token grids, got {n} tokens per face")
    return side


# ----------------------------------------------------------------------------------- attach


def transformer_dims(transformer: nn.Module) -> tuple[int, int]:
    """(model_dim, num_layers) of a diffusers ``SanaTransformer2DModel`` (or a compatible model)."""
    blocks = getattr(transformer, "transformer_blocks", None)
    cfg = getattr(transformer, "config", None)
    if blocks is None or cfg is None or not hasattr(cfg, "num_attention_heads"):
        raise PanoInputError(f"transformer: expected a Sana transformer (diffusers SanaTransformer2DModel), got {type(transformer).__name__}")
    return int(cfg.num_attention_heads) * int(cfg.attention_head_dim), len(blocks)


def check_adapter_fits(config: JointFaceAdapterConfig, transformer: nn.Module, name: str = "adapter") -> None:
    """Raise :class:`PanoInputError` naming both when ``config`` does not fit ``transformer``."""
    dim, layers = transformer_dims(transformer)
    if (config.model_dim, config.num_layers) != (dim, layers):
        model = str(getattr(transformer.config, "_name_or_path", "") or type(transformer).__name__)
        raise PanoInputError(
            f"{name}: made for a Sana transformer of width {config.model_dim} with {config.num_layers} blocks "
            f"(base model {config.base_model or 'unknown'}); the loaded transformer {model} has width {dim} "
            f"with {layers} blocks"
        )
    missing = [i for i, blk in enumerate(transformer.transformer_blocks) if getattr(blk, "attn2", None) is None]
    if missing:
        raise PanoInputError(f"transformer: blocks {missing[:5]} have no cross-attention (attn2); the Joint-Face adapter needs it")


class _AdapterProcessor:
    """attn2 processor: ``d = adapter(h)``; returns ``base(h + d) + d`` (see the module docstring)."""

    def __init__(self, base, adapter: JointFaceAdapter) -> None:
        self.base = base
        self.adapter = adapter

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        a = self.adapter
        p = a.norm.weight
        if p.device != hidden_states.device:  # e.g. the transformer was moved or offloaded
            a.to(hidden_states.device)
        d = a(hidden_states).to(hidden_states.dtype)
        out = self.base(attn, hidden_states + d, encoder_hidden_states, attention_mask, **kwargs)
        return out + d


_ATTACHED: weakref.WeakKeyDictionary[nn.Module, AdapterHandle] = weakref.WeakKeyDictionary()


class AdapterHandle:
    """What :func:`attach_adapters` returns: ``detach()`` (idempotent) or use as a context manager."""

    def __init__(self, transformer: nn.Module, adapter_set: JointFaceAdapterSet, originals: list) -> None:
        self._transformer = weakref.ref(transformer)
        self.adapter_set = adapter_set
        self._originals = originals
        self._procs: list[_AdapterProcessor] = []
        self.attached = True

    def detach(self) -> None:
        if not self.attached:
            return
        t = self._transformer()
        if t is not None:
            for blk, orig, proc in zip(t.transformer_blocks, self._originals, self._procs):
                if blk.attn2.processor is proc:  # leave a processor someone else set since
                    blk.attn2.set_processor(orig)
            if _ATTACHED.get(t) is self:
                del _ATTACHED[t]
        self.attached = False

    def __enter__(self) -> AdapterHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_adapters(transformer: nn.Module, adapter_set: JointFaceAdapterSet) -> AdapterHandle:
    """Run ``adapter_set`` inside ``transformer`` (block ``i`` gets ``adapter_set[i]``) until
    :func:`detach_adapters`. Only ``attn2``'s processor is swapped; no weight or module of the
    transformer changes. Adapters already attached to it are detached first. The adapters compute
    in their own dtype (e.g. float32 beside a bf16 transformer) and follow the transformer's
    device on first use."""
    if not isinstance(adapter_set, JointFaceAdapterSet):
        raise PanoInputError(f"adapter_set: expected a JointFaceAdapterSet, got {type(adapter_set).__name__}")
    check_adapter_fits(adapter_set.config, transformer)
    detach_adapters(transformer)
    blocks = transformer.transformer_blocks
    handle = AdapterHandle(transformer, adapter_set, [blk.attn2.processor for blk in blocks])
    for blk, adapter, orig in zip(blocks, adapter_set.blocks, handle._originals):
        proc = _AdapterProcessor(orig, adapter)
        blk.attn2.set_processor(proc)
        handle._procs.append(proc)
    _ATTACHED[transformer] = handle
    return handle


def detach_adapters(transformer: nn.Module) -> None:
    """Remove the adapters :func:`attach_adapters` put into ``transformer`` (no-op when none)."""
    h = _ATTACHED.get(transformer)
    if h is not None:
        h.detach()


def attached_adapters(transformer: nn.Module) -> JointFaceAdapterSet | None:
    """The adapter set attached to ``transformer``, or None."""
    h = _ATTACHED.get(transformer)
    return h.adapter_set if h is not None else None


@contextmanager
def adapters_attached(transformer: nn.Module, adapter_set: JointFaceAdapterSet | None):
    """``with adapters_attached(transformer, adapters): ...`` -- attached inside, plain after.
    ``adapter_set=None`` attaches nothing (convenient for the ``sync`` and ``independent`` modes)."""
    if adapter_set is None:
        yield None
        return
    h = attach_adapters(transformer, adapter_set)
    try:
        yield h
    finally:
        h.detach()


# ------------------------------------------------------------------------------- save / load


def save_adapter_set(path: str | os.PathLike, adapter_set: JointFaceAdapterSet, overwrite: bool = False) -> Path:
    """Write ``adapter_set`` as one ``.safetensors`` file (the format in the module docstring).

    Refuses to replace an existing file unless ``overwrite``; the file is written to a temporary
    name next to it and moved into place, so a failed save never leaves half a file."""
    from safetensors.torch import save_file

    if not isinstance(adapter_set, JointFaceAdapterSet):
        raise PanoInputError(f"adapter_set: expected a JointFaceAdapterSet, got {type(adapter_set).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise PanoInputError(f"path: adapters are saved as .safetensors files, got {str(path)!r}")
    if path.exists() and not overwrite:
        raise PanoInputError(f"path: {str(path)!r} exists; pass overwrite=True to replace it")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter_set.state_dict().items()}
    meta = {ADAPTER_METADATA_KEY: json.dumps(adapter_set.config.to_dict(), sort_keys=True), "format": "pt"}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_adapter_config(path: str | os.PathLike) -> JointFaceAdapterConfig:
    """The :class:`JointFaceAdapterConfig` stored in an adapter file (reads only the header)."""
    return _open(Path(path))[1]


def _open(path: Path):
    from safetensors import safe_open

    name = f"adapter {str(path)!r}"
    if not path.is_file():
        raise PanoInputError(f"{name}: file not found")
    if path.suffix.lower() != ".safetensors":
        raise PanoInputError(f"{name}: expected a .safetensors file (weights load only from safetensors)")
    try:
        f = safe_open(str(path), framework="pt")
        meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for broken headers
        raise PanoInputError(f"{name}: not a readable .safetensors file ({e})") from None
    raw = meta.get(ADAPTER_METADATA_KEY)
    if raw is None:
        raise PanoInputError(f"{name}: no {ADAPTER_METADATA_KEY!r} configuration in its metadata (not a Joint-Face adapter file)")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise PanoInputError(f"{name}: the {ADAPTER_METADATA_KEY!r} metadata is not valid JSON ({e})") from None
    return f, JointFaceAdapterConfig.from_dict(data, name), name


def load_adapter_set(
    path: str | os.PathLike, transformer: nn.Module | None = None, device=None, dtype: torch.dtype | None = None
) -> JointFaceAdapterSet:
    """Load an adapter file written by :func:`save_adapter_set` (or the trainer).

    With ``transformer`` the file must fit it (width and block count; the error names both).
    ``device``/``dtype``: where to put the adapters (default: the transformer's device, CPU without
    one; the file's dtype). Every tensor of the file must match a parameter and vice versa."""
    f, config, name = _open(Path(path))
    if transformer is not None:
        check_adapter_fits(config, transformer, name)
        if device is None:
            device = next(transformer.parameters()).device
    with torch.device("meta"):
        adapters = JointFaceAdapterSet(config)
    want = adapters.state_dict()
    have = set(f.keys())
    missing = sorted(set(want) - have)
    extra = sorted(have - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
        if extra:
            parts.append(f"{len(extra)} unexpected tensors ({', '.join(extra[:4])}{', ...' if len(extra) > 4 else ''})")
        raise PanoInputError(f"{name}: tensors do not match its configuration: {'; '.join(parts)}")
    state = {}
    for k, ref in want.items():
        t = f.get_tensor(k)
        if tuple(t.shape) != tuple(ref.shape):
            raise PanoInputError(f"{name}: tensor {k} has shape {tuple(t.shape)}, the configuration expects {tuple(ref.shape)}")
        if not t.is_floating_point():
            raise PanoInputError(f"{name}: tensor {k} is {t.dtype}, expected a float tensor")
        state[k] = t.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else t
    adapters.load_state_dict(state, assign=True)
    return adapters
