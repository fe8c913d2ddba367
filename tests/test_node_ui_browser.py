"""Frontend behaviour of the pack's nodes in headless Chromium against the real server (issue 14,
points 7 and 9): the Seam Metrics summary is shown on the node after a run, and the yaw/pitch/fov
widgets that connected inputs override are disabled and labelled as overridden."""

from __future__ import annotations

import json

import comfy_harness as ch
import pytest
from test_viewer_browser import Page, browser  # noqa: F401  (the module-scoped browser fixture)

pytestmark = [pytest.mark.browser, pytest.mark.comfy, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def page(comfy, browser):  # noqa: F811
    p = Page(comfy, browser)
    p.page.wait_for_function(
        "() => ['pano360.seamMetrics', 'pano360.inputOverrides'].every(n => app.extensions.some(e => e.name === n))",
        timeout=60_000)
    yield p
    p.close()


def test_seam_metrics_summary_on_the_node(comfy, page):
    ui = json.loads((ch.REPO_ROOT / "workflows" / "cubemap_seam_blend.json").read_text())
    comfy.add_input_file(ch.ASSETS_DIR / "seams_exposure_dice.png")
    page.page.evaluate("async (wf) => { await app.loadGraphData(wf); }", ui)
    page.queue_and_wait(node_ids=(4, 8))
    texts = page.page.evaluate(
        "() => [4, 8].map(id => app.graph.getNodeById(id).widgets.find(w => w.name === 'summary')?.value ?? null)")
    assert all(t and "Seam jump" in t and "Seam-SSIM" in t for t in texts), texts
    # display only: the summary is not sent as an input of the node
    prompt = page.page.evaluate("async () => (await app.graphToPrompt()).output")
    assert "summary" not in prompt["4"]["inputs"]
    assert not page.our_errors(), page.our_errors()


def test_overridden_view_widgets_are_marked(page):
    ui = json.loads((ch.REPO_ROOT / "workflows" / "viewer_perspective.json").read_text())
    page.page.evaluate("async (wf) => { await app.loadGraphData(wf); }", ui)
    state = page.page.evaluate(
        """() => { const n = app.graph.getNodeById(6);
             return ['yaw', 'pitch', 'fov', 'roll'].map(k => { const w = n.widgets.find(x => x.name === k);
                                                            return [k, !!w.disabled, w.label ?? null]; }); }""")
    assert state[:3] == [["yaw", True, "yaw (from yaw_in)"], ["pitch", True, "pitch (from pitch_in)"],
                         ["fov", True, "fov (from fov_in)"]], state
    assert state[3][:2] == ["roll", False] and state[3][2] in (None, "roll")
    # disconnecting an input gives the widget back
    state = page.page.evaluate(
        """() => { const n = app.graph.getNodeById(6); n.disconnectInput(n.findInputSlot('yaw_in'));
             const w = n.widgets.find(x => x.name === 'yaw'); return [!!w.disabled, w.label ?? null]; }""")
    assert state[0] is False and state[1] in (None, "yaw")


def test_size_limit_setting_is_registered_and_stored_on_the_server(comfy, page):
    """Settings → Pano360 → Size limit exists in the frontend, and a value set there lands in the
    server's settings, where the nodes read it (tests/test_first_contact_comfy.py runs a node under it)."""
    sid = "Pano360.SizeLimitMegapixels"
    page.page.wait_for_function("() => app.extensions.some(e => e.name === 'pano360.settings')", timeout=60_000)
    info = page.page.evaluate(
        """async (sid) => { const s = app.extensionManager.setting;
             const before = s.get(sid);
             await s.set(sid, 3);
             return [before, s.get(sid)]; }""", sid)
    try:
        assert info == [0, 3], info
        assert comfy.get_json(f"/settings/{sid}") == 3
    finally:
        page.page.evaluate("async (sid) => { await app.extensionManager.setting.set(sid, 0); }", sid)
    assert comfy.get_json(f"/settings/{sid}") == 0
    assert not page.our_errors(), page.our_errors()
