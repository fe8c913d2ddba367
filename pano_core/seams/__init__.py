"""Seams: circular padding of Flux tokens/ids, cross-face Poisson blending, ERP wrap blending,
seam metrics.

Submodules: ``circular`` (token-level circular padding, DiT360), ``poisson`` (cross-face
blending, JoPano), ``wrap`` (ERP 0°/360° blending), ``metrics`` (Seam-SSIM, Seam-Sobel, ...),
``adjacency`` (cube edges derived from the face geometry), ``solvers`` (DST-I and red-black
Gauss-Seidel Poisson solvers on rectangles).
Import from the submodules (``from pano_core.seams.circular import ...``).
"""
