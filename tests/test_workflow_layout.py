"""No two node boxes of a shipped workflow overlap (issue 14, point 6): a note must not hide a
widget, a node must not sit on another. A box is the node's body plus its title bar (LiteGraph's
NODE_TITLE_HEIGHT = 30 above ``pos``); collapsed nodes count as their title bar. The frontend
grows a node that is stored smaller than its content, so the body is at least the height LiteGraph
computes: the taller of the input and output slot columns (20 px a slot) plus 24 px per widget
(its stored widget values) plus a margin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
TITLE_H = 30


def boxes(ui: dict) -> dict:
    out = {}
    for n in ui["nodes"]:
        x, y = n["pos"][:2] if isinstance(n["pos"], list) else (n["pos"]["0"], n["pos"]["1"])
        w, h = n["size"][:2] if isinstance(n["size"], list) else (n["size"]["0"], n["size"]["1"])
        n_in = sum(1 for i in n.get("inputs") or [] if not i.get("widget"))
        n_out = len(n.get("outputs") or [])
        vals = n.get("widgets_values")
        n_w = len(vals) if isinstance(vals, list) else len(vals or {})
        if n["type"] not in ("Note", "MarkdownNote"):
            h = max(h, max(n_in, n_out) * 20 + n_w * 24 + 10)
        if (n.get("flags") or {}).get("collapsed"):
            h = 0
        out[f"{n['id']} {n['type']}"] = (x, y - TITLE_H, x + w, y + h)
    return out


def overlaps(ui: dict) -> list[tuple[str, str]]:
    b = boxes(ui)
    names = sorted(b)
    bad = []
    for i, a in enumerate(names):
        for c in names[i + 1:]:
            (ax0, ay0, ax1, ay1), (cx0, cy0, cx1, cy1) = b[a], b[c]
            if ax0 < cx1 and cx0 < ax1 and ay0 < cy1 and cy0 < ay1:
                bad.append((a, c))
    return bad


def test_overlap_detection():
    ui = {"nodes": [{"id": 1, "type": "A", "pos": [0, 0], "size": [100, 100]},
                    {"id": 2, "type": "B", "pos": [50, 110], "size": [100, 100]},  # title bar overlaps A
                    {"id": 3, "type": "C", "pos": [200, 0], "size": [10, 10]}]}
    assert overlaps(ui) == [("1 A", "2 B")]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_no_two_nodes_overlap(path):
    assert overlaps(json.loads(path.read_text())) == []
