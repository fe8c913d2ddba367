"""Seams: cross-face Poisson blending, ERP wrap blending, seam metrics.

Lives here: seam algorithms only -- ``poisson`` (cross-face blending, JoPano), ``wrap`` (ERP
0°/360° blending), ``metrics`` (Seam-SSIM, Seam-Sobel, the wrap-seam ratio), ``adjacency`` (cube
edges from the face geometry), ``solvers`` (DST-I and red-black Gauss-Seidel Poisson solvers).
Not here: circular padding of DiT tokens and latents (``pano_core.diffusion.tokens`` /
``.circular``). Import from the submodules (``from pano_core.seams.metrics import ...``).
"""
