"""DiT360: Flux + LoRA panorama generation and editing (diffusers path).

Lives here: only what is Flux/DiT360-specific -- ``pipeline`` (``DiT360Pipeline``: Flux loading,
text encoding, the transformer call, ``__call__``), ``editing`` (inversion-based inpaint /
outpaint, view-to-panorama), ``attention`` (feature replacement hooks on Flux blocks),
``loading`` (FLUX.1 and DiT360 LoRA defaults). Not here: anything another generator or the
trainer needs (token grid, schedules, sampling loop, RF-inversion, VAE, loading, LoRA keys,
masks) -- that is ``pano_core.diffusion``. Import from the submodules.
"""
