"""DiT360: Flux + LoRA panorama generation and editing (diffusers path).

Submodules: ``pipeline`` (text-to-panorama), ``editing`` (inversion-based inpaint/outpaint,
view-to-panorama). Import from the submodules.
"""
