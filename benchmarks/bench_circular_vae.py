"""Circular VAE encode / decode against a perfectly circular reference, by wrapped columns.

Reference (:func:`pano_core.diffusion.circular.periodic_reference`): the panorama (or latent)
tiled three times side by side, encoded (decoded), middle third -- the opposite edge is then next
to both borders at a full receptive field's distance. For 0 (plain), 2, 4, 8, 12 wrapped latent
columns: the edge error (mean |x - reference| over the 2 latent / 16 pixel columns at each edge)
of the encode and the decode, and the latent seam (``wrap_seam_ratio`` of the encoded latent;
the reference's is the content's own).

VAEs: the tests' tiny ``AutoencoderKL`` (tests/tiny_diffusers.py) and a random-weight
``AutoencoderKL`` with FLUX.1's VAE architecture (16 latent channels, 128/256/512/512 blocks,
mid-block attention). Image: tests/assets/snow_village_erp.png (a DiT360 panorama) resized.

Run from the repository root:  python benchmarks/bench_circular_vae.py [--size 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pano_core.diffusion.circular import periodic_reference  # noqa: E402
from pano_core.diffusion.vae import vae_decode, vae_encode  # noqa: E402
from pano_core.io import read_image  # noqa: E402
from pano_core.seams.metrics import wrap_seam_ratio  # noqa: E402

COLS = (0, 2, 4, 8, 12)


def flux_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def tiny_vae():
    from tiny_diffusers import build_tiny_flux_pipeline

    return build_tiny_flux_pipeline(0).vae.eval()


def edge(x, ref, k):
    d = (x - ref).abs()
    return float(torch.cat([d[..., :k], d[..., -k:]], -1).mean())


@torch.no_grad()
def measure(name, vae, img):
    t0 = time.time()
    z_ref = periodic_reference(lambda x: vae_encode(vae, x).float(), img, scale=1 / 8)
    x_ref = periodic_reference(lambda z: vae_decode(vae, z), z_ref, scale=8)
    rows = []
    for c in COLS:
        z = vae_encode(vae, img, wrap_cols=c).float()
        x = vae_decode(vae, z_ref, wrap_cols=c)
        rows.append((c, edge(z, z_ref, 2), wrap_seam_ratio(z), edge(x, x_ref, 16)))
    print(f"\n{name} ({img.shape[-1]}x{img.shape[-2]} px, latent {z_ref.shape[-1]}x{z_ref.shape[-2]}; "
          f"reference latent seam {wrap_seam_ratio(z_ref):.2f}; {time.time() - t0:.0f} s)")
    print("| wrapped columns | encode edge error | latent seam | decode edge error |")
    print("| --- | --- | --- | --- |")
    for c, ee, seam, de in rows:
        print(f"| {c}{' (plain)' if c == 0 else ''} | {ee:.4f} | {seam:.2f} | {de:.4f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="panorama height in px (2:1, width = 2 x height)")
    args = ap.parse_args()
    img = read_image(ROOT / "tests" / "assets" / "snow_village_erp.png")[:, :3]
    img = torch.nn.functional.interpolate(img, size=(args.size, 2 * args.size), mode="area")
    torch.set_num_threads(2)
    measure("tests' tiny AutoencoderKL", tiny_vae(), img)
    measure("FLUX.1 VAE architecture (random weights)", flux_vae(), img)


if __name__ == "__main__":
    main()
