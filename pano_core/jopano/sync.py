"""Training-free joint-face sync: stock Sana and DC-AE treat a panorama's six faces as one scene.

DreamCube's idea, reimplemented for diffusers' Sana: a batch of cube faces (B*6, F R B L U D per
panorama, contiguous) is made to act like one image of the sphere by

* **joint self-attention** -- every ``SanaTransformerBlock.attn1`` (linear attention) runs over the
  tokens of all six faces of a panorama: its processor is called on ``(B, 6N, C)`` instead of
  ``(B*6, N, C)``. Linear attention is a sum over tokens, so this is exactly attention over the
  whole cube; the projections and norms are per token and unchanged. Cross-attention stays per
  face (per-face prompts keep working);
* **cube padding** -- every spatial convolution (kernel > 1 with "same" zero padding: the 3x3
  depthwise conv of each ``GLUMBConv`` in the transformer; in the DC-AE decoder the 3x3 convs and
  the 5x5 depthwise convs of its multi-scale attention) reads its border from the neighbour faces
  (:func:`pano_core.geometry.cube_pad`, width = the conv's padding) and then runs unpadded. Sana
  has no positional embedding at 512/1024 px, so this conv is the transformer's only spatial
  signal and the zero padding is what makes independent faces disagree at their edges;
* **joint decoder attention** -- the DC-AE decoder's multi-scale linear attention sums over the
  pixels of all six faces.

Everything else in the decoder (RMSNorm, pixel shuffle, nearest upsampling) is per pixel. The
decoder decodes whole panoramas: tiling is off inside the context, and with slicing enabled it
decodes one panorama (6 faces) at a time instead of one face.

Non-destructive: :func:`joint_face_sync` swaps ``attn1`` processors, adds forward pre-hooks to the
padded convs (their ``padding`` set to 0 meanwhile; hooks, not replaced ``forward`` methods, so
accelerate's offload hooks keep working) and wraps the decoder attention's kernels on the
instances, and restores all of it on exit;
no weight, module or class changes, and the models are plain again after the ``with`` block (also
when it raises). Entering the context again on a model that is already synced leaves it as it is. With gradient
checkpointing the blocks are recomputed during ``backward()``: run the backward pass inside the
context too.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import PanoInputError
from ..geometry import CUBE_PAD_MODES, cube_pad
from ..validate import check_choice

__all__ = ["cube_padded_convs", "is_synced", "joint_face_sync"]

_SYNCED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _check_faces(bf: int, who: str) -> int:
    if bf % 6 or bf == 0:
        raise PanoInputError(
            f"{who}: joint-face sync needs whole panoramas in the batch (6 faces F R B L U D each, contiguous); got a batch of {bf}"
        )
    return bf // 6


def cube_padded_convs(module: nn.Module) -> list[nn.Conv2d]:
    """The convolutions of ``module`` that :func:`joint_face_sync` cube-pads: ``nn.Conv2d`` with a
    square kernel > 1, stride 1, no dilation, zero padding of ``kernel // 2`` (a "same" conv).
    Strided or unpadded convs (e.g. Sana's patch embedding) are left alone."""
    out = []
    for m in module.modules():
        if type(m) is not nn.Conv2d:  # plain convs only (a LoRA-wrapped conv's base layer is one)
            continue
        k = m.kernel_size
        if k[0] != k[1] or k[0] < 2 or m.padding != (k[0] // 2,) * 2 or k[0] // 2 < 1:
            continue
        if m.stride != (1, 1) or m.dilation != (1, 1) or m.padding_mode != "zeros":
            continue
        out.append(m)
    return out


class _Patches:
    """Instance attributes set on objects, restored (or removed) in reverse order."""

    def __init__(self) -> None:
        self._undo: list = []

    def set(self, obj, name: str, value) -> None:
        had = name in obj.__dict__
        old = obj.__dict__.get(name)
        object.__setattr__(obj, name, value) if isinstance(obj, nn.Module) else setattr(obj, name, value)
        self._undo.append((obj, name, had, old))

    def hook(self, handle) -> None:
        self._undo.append((handle, "", True, None))

    def processor(self, attn, proc) -> None:
        old = attn.processor
        attn.set_processor(proc)
        self._undo.append((attn, None, True, old))

    def undo(self) -> None:
        while self._undo:
            obj, name, had, old = self._undo.pop()
            if name is None:
                obj.set_processor(old)
            elif name == "":
                obj.remove()
            elif had:
                object.__setattr__(obj, name, old) if isinstance(obj, nn.Module) else setattr(obj, name, old)
            else:
                delattr(obj, name)


class _JointFacesProcessor:
    """Runs the wrapped (linear) self-attention processor on (B, 6N, C) instead of (B*6, N, C)."""

    def __init__(self, base) -> None:
        self.base = base

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise PanoInputError("joint-face sync: attn1 is self-attention without a mask in Sana; got encoder states or a mask")
        bf, n, c = hidden_states.shape
        b = _check_faces(bf, "transformer")
        out = self.base(attn, hidden_states.reshape(b, 6 * n, c), None, None, **kwargs)
        return out.reshape(bf, n, out.shape[-1])


def _cube_pad_hook(mode: str):
    """Forward pre-hook: cube-pad the input by the conv's original padding (then set to 0)."""

    def hook(conv: nn.Conv2d, args):
        x = args[0]
        _check_faces(x.shape[0], "convolution input")
        return (cube_pad(x, conv.kernel_size[0] // 2, mode), *args[1:])

    return hook


def _joint_tokens(fn):
    """Wrap a DC-AE attention kernel ``fn(q, k, v)`` on (B*6, H, d, N) tensors so that it sums over
    the 6N pixels of each panorama (tokens on the last dimension)."""

    def join(t: torch.Tensor) -> torch.Tensor:
        bf, h, d, n = t.shape
        return t.reshape(bf // 6, 6, h, d, n).permute(0, 2, 3, 1, 4).reshape(bf // 6, h, d, 6 * n)

    def joint(query, key, value):
        bf, h, _, n = query.shape
        _check_faces(bf, "VAE decoder attention")
        out = fn(join(query), join(key), join(value))
        return out.reshape(bf // 6, h, out.shape[2], 6, n).permute(0, 3, 1, 2, 4).reshape(bf, h, out.shape[2], n)

    return joint


def _decode_by_panorama(decode):
    """``vae.decode`` that decodes one panorama (6 faces) at a time (slicing by panorama)."""

    def wrapped(z, return_dict: bool = True):
        _check_faces(z.shape[0], "latents")
        if z.shape[0] == 6:
            return decode(z, return_dict=return_dict)
        parts = [decode(c, return_dict=True) for c in z.split(6)]
        sample = torch.cat([p.sample for p in parts])
        return type(parts[0])(sample=sample) if return_dict else (sample,)

    return wrapped


def _pad_convs(patches: _Patches, convs: list[nn.Conv2d], mode: str) -> None:
    """Cube-pad the input of each conv in a forward pre-hook and run the conv unpadded. A hook
    (not a replaced ``forward``) keeps accelerate's offload hooks and PEFT wrappers working."""
    hook = _cube_pad_hook(mode)
    for conv in convs:
        patches.set(conv, "padding", (0, 0))
        patches.hook(conv.register_forward_pre_hook(hook))


@contextmanager
def joint_face_sync(
    transformer: nn.Module | None = None,
    vae: nn.Module | None = None,
    *,
    attention: bool = True,
    padding: bool = True,
    padding_mode: str = "bilinear",
):
    """``with joint_face_sync(transformer, vae): ...`` -- training-free joint-face sync inside.

    ``transformer``: a diffusers ``SanaTransformer2DModel`` (its blocks' ``attn1`` joined over the
    faces, its GLUMBConv depthwise convs cube-padded); ``vae``: an ``AutoencoderDC`` (its decoder's
    convs cube-padded and attention joined; the encoder is left alone). Either may be None.
    ``attention`` / ``padding`` switch the two parts (both on by default; off for ablations).
    ``padding_mode``: ``"bilinear"`` or ``"nearest"`` resampling of the neighbour faces.
    Batches must hold whole panoramas (B*6 faces, F R B L U D contiguous); anything else raises
    :class:`PanoInputError`. Yields nothing useful; see the module docstring.
    """
    check_choice(padding_mode, "padding_mode", CUBE_PAD_MODES)
    patches = _Patches()
    entered: list[nn.Module] = []
    try:
        if transformer is not None and transformer not in _SYNCED:
            blocks = getattr(transformer, "transformer_blocks", None)
            if blocks is None:
                raise PanoInputError(f"transformer: expected a Sana transformer (diffusers SanaTransformer2DModel), got {type(transformer).__name__}")
            if attention:
                for blk in blocks:
                    patches.processor(blk.attn1, _JointFacesProcessor(blk.attn1.processor))
            if padding:
                _pad_convs(patches, cube_padded_convs(transformer), padding_mode)
            _SYNCED.add(transformer)
            entered.append(transformer)
        if vae is not None and vae not in _SYNCED:
            decoder = getattr(vae, "decoder", None)
            if decoder is None or not hasattr(vae, "use_tiling"):
                raise PanoInputError(f"vae: expected a DC-AE (diffusers AutoencoderDC), got {type(vae).__name__}")
            if padding:
                _pad_convs(patches, cube_padded_convs(decoder), padding_mode)
            if attention:
                for m in decoder.modules():
                    if hasattr(m, "apply_linear_attention") and hasattr(m, "apply_quadratic_attention"):
                        patches.set(m, "apply_linear_attention", _joint_tokens(m.apply_linear_attention))
                        patches.set(m, "apply_quadratic_attention", _joint_tokens(m.apply_quadratic_attention))
            patches.set(vae, "use_tiling", False)
            if getattr(vae, "use_slicing", False):
                patches.set(vae, "use_slicing", False)
                patches.set(vae, "decode", _decode_by_panorama(vae.decode))
            _SYNCED.add(vae)
            entered.append(vae)
        yield
    finally:
        patches.undo()
        for m in entered:
            _SYNCED.discard(m)


def is_synced(module: nn.Module) -> bool:
    """True while ``module`` is inside a :func:`joint_face_sync` context."""
    return module in _SYNCED
