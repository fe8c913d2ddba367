"""The DiT360 patch's per-step id rewrite is cached (issue 14, point 20): equal incoming ids reuse
the rewritten ids, different ones are rewritten again (never stale)."""

from __future__ import annotations

import importlib

import comfy_harness
import pytest
import torch

from pano_core.diffusion.tokens import TokenGrid

PACK = "pano360_pack_patch_overhead_under_test"


@pytest.fixture(scope="module")
def patch_mod(comfy_inprocess):
    comfy_harness.import_pack_inprocess(PACK)
    return importlib.import_module(f"{PACK}.nodes._dit360_patch")


def _ids(h: int, w: int, extra: int = 0, offset: float = 0.0) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ids = torch.stack([torch.zeros_like(r), r, c], -1).reshape(1, h * w, 3).float() + offset
    if extra:
        ids = torch.cat([ids, torch.full((1, extra, 3), 7.0)], 1)
    return ids


@pytest.mark.parametrize("mode", ["wrapped", "linear"])
def test_ids_rewrite_cached_and_exact(patch_mod, mode):
    h, w, p = 3, 8, 1
    cache: dict = {}
    ids = _ids(h, w + 2 * p, extra=2)
    img = torch.zeros(1, ids.shape[1], 4)
    grid = TokenGrid(h=h, w=w, p=p, id_mode=mode)
    first = patch_mod._IdsPatch(grid, cache)({"img": img, "img_ids": ids})["img_ids"]
    base = ids[:, : h * (w + 2 * p)].reshape(1, h, w + 2 * p, 3)[:, :, :w].reshape(1, h * w, 3)
    expect = torch.cat([grid.pad_ids(base), ids[:, h * (w + 2 * p):]], 1)
    assert torch.equal(first, expect)
    again = patch_mod._IdsPatch(grid, cache)({"img": img, "img_ids": ids.clone()})["img_ids"]
    assert again is first  # the next step reuses the rewritten ids
    other = _ids(h, w + 2 * p, extra=2, offset=1.0)  # e.g. another run with shifted ids
    third = patch_mod._IdsPatch(grid, cache)({"img": img, "img_ids": other})["img_ids"]
    base2 = other[:, : h * (w + 2 * p)].reshape(1, h, w + 2 * p, 3)[:, :, :w].reshape(1, h * w, 3)
    assert torch.equal(third[:, : h * (w + 2 * p)], grid.pad_ids(base2))
