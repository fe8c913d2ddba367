"""The viewer deletes its node's previous preview files (issue 14, point 16): they no longer pile
up in ComfyUI's temp folder; other nodes' files stay."""

from __future__ import annotations

import importlib

import comfy_harness as ch
import torch

PACK = "pano360_pack_viewer_temp_under_test"


def test_previous_previews_of_the_node_are_deleted(comfy_inprocess, tmp_path, monkeypatch):
    import folder_paths

    ch.import_pack_inprocess(PACK)
    viewer = importlib.import_module(f"{PACK}.nodes.viewer")
    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path))
    node = viewer.Pano360Viewer()
    img = torch.rand(2, 16, 32, 3)
    folder = tmp_path / "pano360"

    def run(uid):
        out = node.view(img, view_width=16, view_height=16, unique_id=uid)
        return {i["filename"] for i in out["ui"]["pano360"]}

    first = run("7")
    other = run("17")
    assert {p.name for p in folder.iterdir()} == first | other
    second = run("7")
    assert second.isdisjoint(first)
    assert {p.name for p in folder.iterdir()} == second | other  # node 7's first run is gone, 17's kept
