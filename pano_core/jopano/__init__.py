"""JoPano: Sana with joint cube faces (sphere RoPE, Joint-Face Adapter, training-free sync).

Model pieces (this file lists them; the pipeline adds its own names below):

* :mod:`.sphere_rope` -- :func:`face_token_directions`, :class:`SphereRoPE`;
* :mod:`.adapter` -- :class:`JointFaceAdapterConfig`, :class:`JointFaceAdapter`,
  :class:`JointFaceAdapterSet`, :func:`attach_adapters` / :func:`detach_adapters` /
  :func:`adapters_attached`, :func:`save_adapter_set` / :func:`load_adapter_set`;
* :mod:`.sync` -- :func:`joint_face_sync` (training-free joint-face sync of Sana and DC-AE).

Cube padding itself is :func:`pano_core.geometry.cube_pad`.

Pipeline (generation on diffusers' Sana):

* :mod:`.pipeline` -- :class:`JoPanoPipeline` (modes adapter / sync / adapter+sync / independent,
  T2P and V2P, multi-text, cross-face blending, ERP), :class:`JoPanoOutput`;
* :mod:`.conditions` -- a given face, a perspective photo or an ERP + keep mask as cube faces with
  coverage (:class:`FaceConditions`);
* :mod:`.loading` -- Sana from diffusers folders, hub ids or a single-file transformer.
"""

from .adapter import (
    ADAPTER_FILE_NAME,
    ADAPTER_METADATA_KEY,
    AdapterHandle,
    JointFaceAdapter,
    JointFaceAdapterConfig,
    JointFaceAdapterSet,
    adapters_attached,
    attach_adapters,
    attached_adapters,
    check_adapter_fits,
    detach_adapters,
    load_adapter_set,
    read_adapter_config,
    save_adapter_set,
    transformer_dims,
)
from .conditions import FaceConditions, erp_condition, face_condition, view_condition
from .loading import load_sana_pipeline
from .pipeline import (
    DEFAULTS,
    MODES,
    GenerationInterrupted,
    JoPanoOutput,
    JoPanoPipeline,
    resolve_face_prompts,
)
from .sphere_rope import DEFAULT_ROPE_BASE, DEFAULT_ROPE_SCALE, SphereRoPE, face_token_directions
from .sync import cube_padded_convs, is_synced, joint_face_sync

__all__ = [
    "ADAPTER_FILE_NAME",
    "ADAPTER_METADATA_KEY",
    "AdapterHandle",
    "DEFAULT_ROPE_BASE",
    "DEFAULT_ROPE_SCALE",
    "JointFaceAdapter",
    "JointFaceAdapterConfig",
    "JointFaceAdapterSet",
    "SphereRoPE",
    "adapters_attached",
    "attach_adapters",
    "attached_adapters",
    "check_adapter_fits",
    "cube_padded_convs",
    "detach_adapters",
    "face_token_directions",
    "is_synced",
    "joint_face_sync",
    "load_adapter_set",
    "read_adapter_config",
    "save_adapter_set",
    "transformer_dims",
    # pipeline
    "DEFAULTS",
    "MODES",
    "FaceConditions",
    "GenerationInterrupted",
    "JoPanoOutput",
    "JoPanoPipeline",
    "erp_condition",
    "face_condition",
    "load_sana_pipeline",
    "resolve_face_prompts",
    "view_condition",
]
