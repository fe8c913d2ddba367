"""Every UI-format workflow in workflows/ runs in the real ComfyUI server with tiny test models.

Each file is converted with ``ui_to_api`` and ``DEFAULT_SUBSTITUTIONS`` (real loaders -> tiny
models, LoRA files written, LoadImage served from tests/assets, sizes <= 128 px, steps <= 2), run,
and every output node must have produced outputs (images non-empty and finite).

tests/data/ui_smoke.json is always run too (it exercises the mechanism: Reroute, PrimitiveNode,
bypassed and muted nodes, notes, groups, LoRA and LoadImage).

Extra substitutions for a helper's own nodes (e.g. a loader of ours that names real weights):
put ``SUBSTITUTIONS = {node type: spec}`` (spec as in ``comfy_harness.ui_to_api``) in a file
``tests/substitutions_<area>.py`` you own; all such files are merged here.
"""

from __future__ import annotations

import json
from pathlib import Path

import comfy_harness as ch
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
SMOKE = Path(__file__).parent / "data" / "ui_smoke.json"



def _extra_substitutions() -> dict:
    import importlib.util

    extra: dict = {}
    for f in sorted(Path(__file__).parent.glob("substitutions_*.py")):
        spec = importlib.util.spec_from_file_location(f"pano360_{f.stem}", f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        extra.update(getattr(mod, "SUBSTITUTIONS", {}))
    return extra


EXTRA_SUBSTITUTIONS: dict = _extra_substitutions()


def _run_workflow(comfy, path: Path):
    ui = json.loads(path.read_text())
    subs = {**ch.DEFAULT_SUBSTITUTIONS, **EXTRA_SUBSTITUTIONS}
    api = ch.ui_to_api(ui, comfy.object_info(), subs, context={"server": comfy})
    outs = ch.output_node_ids(api, comfy.object_info())
    assert outs, f"{path.name}: workflow has no output node"
    outputs = comfy.run(api, timeout=300)
    return api, ch.check_outputs(comfy, api, outputs)


@pytest.mark.comfy
@pytest.mark.timeout(400)
def test_ui_smoke_workflow(comfy):
    api, images = _run_workflow(comfy, SMOKE)
    assert set(images) == {"12", "18"}
    (save,) = images["12"]
    assert save.shape == (64, 128, 3)  # EmptySD3LatentImage 2048x1024 shrunk to 128x64
    assert save.std() > 1.0
    (preview,) = images["18"]  # LoadImage (asset shrunk to 128 px wide) scaled by 0.5
    assert preview.shape == (32, 64, 3)


@pytest.mark.comfy
@pytest.mark.timeout(400)
@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs(comfy, path):
    _run_workflow(comfy, path)
