"""The 360° viewer widget in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright against the real ComfyUI server of the ``comfy`` fixture.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python
package; WebGL2 runs on SwiftShader (software). Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.comfy]

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "tests" / "assets"
ARTIFACTS = REPO / "test-artifacts"
WORKFLOW = REPO / "workflows" / "viewer_perspective.json"
CHROMIUM = os.environ.get("PANO360_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-unsafe-swiftshader",  # WebGL2 on the software rasteriser without a deprecation warning
]
VIEWER_ID = 2  # node id of the viewer in workflows/viewer_perspective.json
NO_WEBGL2_INIT = """
(() => {
  const orig = HTMLCanvasElement.prototype.getContext;
  HTMLCanvasElement.prototype.getContext = function (type, ...rest) {
    if (type === "webgl2") return null;
    return orig.call(this, type, ...rest);
  };
})();
"""


# ------------------------------------------------------------------------------ colours


@pytest.fixture(scope="module")
def face_colours():
    """Reference colour of each cube face of labeled_cube_erp.png: the per-channel median of
    the face as cut by pano_core.geometry.e2c (the face labels are a minority of the pixels)."""
    import torch

    from pano_core.geometry import e2c

    arr = np.asarray(Image.open(ASSETS / "labeled_cube_erp.png").convert("RGB"), dtype=np.float32) / 255
    faces = e2c(torch.from_numpy(arr).permute(2, 0, 1)[None], face_size=128, mode="nearest", layout="dict")
    return {k: np.median(v[0].reshape(3, -1).numpy(), axis=1) * 255 for k, v in faces.items()}


def classify(rgb, refs, max_dist=60.0):
    rgb = np.asarray(rgb[:3], dtype=np.float32)
    dists = {k: float(np.linalg.norm(rgb - v)) for k, v in refs.items()}
    best = min(dists, key=dists.get)
    return (
        best if dists[best] <= max_dist else f"none (nearest {best}, {dists[best]:.0f}; rgb {rgb.tolist()})"
    )


def dominant_face(pixels, refs):
    """Most frequent face among sampled pixels (robust to the white face labels)."""
    names = [classify(p, refs) for p in pixels]
    return max(set(names), key=names.count)


# ------------------------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)", pytrace=False
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A ComfyUI page with console/page-error capture and helpers around the viewer node."""

    def __init__(self, comfy, browser, init_script: str | None = None, settings: dict | None = None):
        self.comfy = comfy
        for key, value in {"Comfy.TutorialCompleted": True, **(settings or {})}.items():
            code, _ = comfy.post_json(f"/api/settings/{key}", value)
            assert code == 200
        self.context = browser.new_context(viewport={"width": 1400, "height": 950})
        if init_script:
            self.context.add_init_script(init_script)
        self.page = self.context.new_page()
        self.console: list[dict] = []
        self.page.on(
            "console",
            lambda m: self.console.append(
                {"type": m.type, "text": m.text, "url": (m.location or {}).get("url", "")}
            ),
        )
        self.page.on(
            "pageerror",
            lambda e: self.console.append({"type": "pageerror", "text": f"{e}\n{e.stack}", "url": ""}),
        )
        self.page.goto(comfy.url)
        self.page.wait_for_function(
            "() => window.app?.graph && window.app.extensions?.some(e => e.name === 'Pano360.Viewer')",
            timeout=90_000,
        )
        self.page.evaluate(
            """() => { window.__p360 = {executed: [], errors: []};
               const api = window.comfyAPI.api.api;
               api.addEventListener('executed', e => window.__p360.executed.push(e.detail));
               api.addEventListener('execution_error', e => window.__p360.errors.push(e.detail)); }"""
        )

    def close(self):
        self.context.close()

    def our_errors(self) -> list[dict]:
        """Console errors / uncaught exceptions caused by this pack (the offline frontend logs
        unrelated errors itself, e.g. CSP-blocked requests to api.comfy.org)."""
        bad = []
        for m in self.console:
            text, url = m["text"], m["url"]
            if "api.comfy.org" in text:
                continue
            ours = "pano360" in (text + url).lower() or "comfyui-pano360" in text
            gl = re.search(r"GL_INVALID|WebGL: INVALID|WebGL: CONTEXT_LOST", text)
            if (m["type"] in ("error", "pageerror") and ours) or gl:
                bad.append(m)
        return bad

    def load_graph(self, workflow: dict, image: str, viewer_id: int = VIEWER_ID):
        self.page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
        self.page.evaluate(
            """([image, vid]) => {
                 for (const n of app.graph.nodes) if (n.type === 'LoadImage') n.widgets.find(w => w.name === 'image').value = image;
                 const v = app.graph.getNodeById(vid);
                 app.canvas.ds.scale = 1;
                 app.canvas.ds.offset = [260 - v.pos[0], 130 - v.pos[1]];
                 app.canvas.setDirty(true, true);
               }""",
            [image, viewer_id],
        )

    def queue_and_wait(self, node_ids=(VIEWER_ID,), timeout=300) -> list[dict]:
        """Queue the graph from the UI (app.queuePrompt) and wait for the 'executed' events of node_ids.

        An execution error of the queued prompt fails at once with its message (instead of a
        time-out); the time-out is generous because CI runs on 2 busy cores.
        """
        n0, e0 = self.page.evaluate("() => [window.__p360.executed.length, window.__p360.errors.length]")
        self.page.evaluate("async () => { await app.queuePrompt(0, 1); }")
        want = [str(i) for i in node_ids]
        self.page.wait_for_function(
            """([n0, e0, want]) => { if (window.__p360.errors.length > e0) return true;
                                 const got = window.__p360.executed.slice(n0).map(d => String(d.node ?? d.display_node));
                                 return want.every(w => got.includes(w)); }""",
            arg=[n0, e0, want],
            timeout=timeout * 1000,
        )
        errors = self.page.evaluate("(e0) => window.__p360.errors.slice(e0)", e0)
        assert not errors, f"the queued prompt failed: {errors}\n{self.comfy.log_tail(40)}"
        return self.page.evaluate("(n0) => window.__p360.executed.slice(n0)", n0)

    def wait_ready(self, viewer_id=VIEWER_ID, since: float = 0, timeout=60):
        self.page.wait_for_function(
            """([vid, since]) => { const v = app.graph.getNodeById(vid)?.pano360Viewer;
                 return v && (v.state === 'ready' || v.state === 'error') && v.lastLoadAt > since; }""",
            arg=[viewer_id, since],
            timeout=timeout * 1000,
        )
        return self.viewer_eval(
            "v => ({state: v.state, lastLoad: v.lastLoad, msg: v.msg.textContent, notice: v.notice.textContent})"
        )

    def viewer_eval(self, fn: str, arg=None, viewer_id=VIEWER_ID):
        return self.page.evaluate(
            f"([vid, arg]) => {{ const v = app.graph.getNodeById(vid).pano360Viewer; return ({fn})(v, arg); }}",
            [viewer_id, arg],
        )

    def now(self) -> float:
        return self.page.evaluate("() => performance.now()")

    def centre_pixels(self, viewer_id=VIEWER_ID):
        """Pixels on a small grid around the view centre (drawing buffer read back with readPixels)."""
        return self.viewer_eval(
            "v => { const out = []; for (const fx of [0.44, 0.5, 0.56]) for (const fy of [0.42, 0.5, 0.58]) out.push(v.samplePixel(fx, fy)); return out; }",
            viewer_id=viewer_id,
        )

    def widget_values(self, viewer_id=VIEWER_ID):
        return self.page.evaluate(
            "(vid) => Object.fromEntries(app.graph.getNodeById(vid).widgets.filter(w => ['yaw','pitch','fov'].includes(w.name)).map(w => [w.name, w.value]))",
            viewer_id,
        )

    def canvas_box(self, viewer_id=VIEWER_ID):
        return self.viewer_eval(
            "v => { const r = v.canvas.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height, cw: v.canvas.clientWidth}; }",
            viewer_id=viewer_id,
        )

    def screenshot(self, name: str, viewer_id=VIEWER_ID):
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}_page.png"))
        el = self.page.evaluate_handle(f"() => app.graph.getNodeById({viewer_id}).pano360Viewer.element")
        el.as_element().screenshot(path=str(ARTIFACTS / f"{name}_widget.png"))


@pytest.fixture
def page_factory(comfy, browser):
    pages = []

    def make(**kw):
        p = Page(comfy, browser, **kw)
        pages.append(p)
        return p

    yield make
    for p in pages:
        p.close()


def _viewer_only_graph(image: str = "panorama.png", layout: str = "auto") -> dict:
    """UI workflow: LoadImage -> Pano360Viewer."""
    return {
        "last_node_id": 2,
        "last_link_id": 1,
        "nodes": [
            {
                "id": 1,
                "type": "LoadImage",
                "pos": [40, 80],
                "size": [300, 330],
                "flags": {},
                "order": 0,
                "mode": 0,
                "inputs": [],
                "outputs": [
                    {"name": "IMAGE", "type": "IMAGE", "links": [1]},
                    {"name": "MASK", "type": "MASK", "links": None},
                ],
                "properties": {},
                "widgets_values": [image, "image"],
            },
            {
                "id": 2,
                "type": "Pano360Viewer",
                "pos": [380, 80],
                "size": [520, 700],
                "flags": {},
                "order": 1,
                "mode": 0,
                "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
                "outputs": [
                    {"name": "view", "type": "IMAGE", "links": None},
                    {"name": "yaw", "type": "FLOAT", "links": None},
                    {"name": "pitch", "type": "FLOAT", "links": None},
                    {"name": "fov", "type": "FLOAT", "links": None},
                ],
                "properties": {},
                "widgets_values": [layout, 0, 0, 90, 256, 256],
            },
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def _input_image(comfy, name: str, make) -> str:
    path = Path(comfy.input_dir) / name
    if not path.exists():
        make().save(path, compress_level=1)
    return name


def _saved_view_face(comfy, events, node_id, refs):
    """Face seen at the centre of the image a SaveImage node wrote in this run."""
    ev = next(e for e in events if str(e.get("node")) == str(node_id))
    imgs = comfy.images({str(node_id): ev["output"]}, node_id)
    a = imgs[0]
    h, w = a.shape[:2]
    pts = [a[int(h * fy), int(w * fx)] for fx in (0.44, 0.5, 0.56) for fy in (0.42, 0.5, 0.58)]
    return dominant_face(pts, refs)


# ------------------------------------------------------------------------------ tests


def test_viewer_front_drag_up_and_view_back_to_graph(comfy, page_factory, face_colours):
    comfy.add_input_file(ASSETS / "labeled_cube_erp.png")
    pg = page_factory()
    pg.load_graph(json.loads(WORKFLOW.read_text()), "labeled_cube_erp.png")
    assert pg.viewer_eval("v => v.state") == "empty"
    t0 = pg.now()
    events = pg.queue_and_wait(node_ids=(VIEWER_ID, 3, 4))
    info = pg.wait_ready(since=t0)
    assert info["state"] == "ready", info
    assert info["lastLoad"]["url"].startswith("/api/view?") and "type=temp" in info["lastLoad"]["url"]
    # the websocket message carries file names only, never pixels
    viewer_ev = next(e for e in events if str(e["node"]) == str(VIEWER_ID))
    assert len(json.dumps(viewer_ev)) < 4000
    assert viewer_ev["output"]["pano360"][0]["type"] == "temp"

    assert dominant_face(pg.centre_pixels(), face_colours) == "F"
    pg.screenshot("viewer_front")

    # drag by 90 degrees to the right: grab-the-image, so the pointer moves left by 90/fov of the width
    box = pg.canvas_box()
    fov = pg.viewer_eval("v => v.fov")
    dx = box["cw"] * 90.0 / fov
    x0, y0 = box["x"] + box["w"] * 0.95, box["y"] + box["h"] * 0.5
    mouse = pg.page.mouse
    mouse.move(x0, y0)
    mouse.down()
    mouse.move(x0 - dx / 2, y0, steps=8)
    mouse.move(x0 - dx, y0, steps=8)
    mouse.up()
    view = pg.viewer_eval("v => v.getView()")
    assert view["yaw"] == pytest.approx(90, abs=2), view
    assert view["pitch"] == pytest.approx(0, abs=1), view
    assert dominant_face(pg.centre_pixels(), face_colours) == "R"
    assert "yaw 9" in pg.viewer_eval("v => v.readout.textContent")
    # the widget values of the node follow the view
    wv = pg.widget_values()
    assert wv["yaw"] == pytest.approx(view["yaw"], abs=0.01) and wv["fov"] == pytest.approx(fov)
    pg.screenshot("viewer_right_after_drag")

    # the workflow as the frontend saves it carries the view (and converts to an API prompt)
    import comfy_harness as ch

    saved = pg.page.evaluate("() => app.graph.serialize()")
    api = ch.ui_to_api(saved, comfy.object_info())
    assert api[str(VIEWER_ID)]["inputs"]["yaw"] == pytest.approx(view["yaw"], abs=0.01)
    assert api[str(VIEWER_ID)]["inputs"]["fov"] == pytest.approx(fov)

    # second run: the framed view comes out of the node (saved by node 3)
    t1 = pg.now()
    events = pg.queue_and_wait(node_ids=(VIEWER_ID, 3))
    pg.wait_ready(since=t1)
    ev = next(e for e in events if str(e["node"]) == str(VIEWER_ID))
    assert ev["output"]["pano360_view"][0]["yaw"] == pytest.approx(view["yaw"], abs=0.01)
    assert _saved_view_face(comfy, events, 3, face_colours) == "R"
    # the view survived the run
    assert pg.viewer_eval("v => v.getView()")["yaw"] == pytest.approx(view["yaw"], abs=0.01)

    # "up" preset button
    pg.page.evaluate(
        f"() => app.graph.getNodeById({VIEWER_ID}).pano360Viewer.element.querySelector('[data-preset=up]').click()"
    )
    assert dominant_face(pg.centre_pixels(), face_colours) == "U"
    assert pg.widget_values()["pitch"] == pytest.approx(90)
    pg.screenshot("viewer_up")

    # arrow keys and wheel zoom
    pg.viewer_eval("v => v.setView(0, 0, 90)")
    pg.viewer_eval("v => v.element.focus()")
    pg.page.keyboard.press("ArrowRight")
    assert pg.viewer_eval("v => v.yaw") == pytest.approx(5)
    box = pg.canvas_box()
    mouse.move(box["x"] + box["w"] / 2, box["y"] + box["h"] / 2)
    mouse.wheel(0, -300)
    pg.page.wait_for_timeout(100)
    assert pg.viewer_eval("v => v.fov") < 90
    # pinch (two touch pointers moving apart) zooms in
    pg.viewer_eval("v => v.setView(0, 0, 90)")
    fov_after = pg.viewer_eval(
        """v => { const c = v.canvas, r = c.getBoundingClientRect(), cx = r.x + r.width / 2, cy = r.y + r.height / 2;
                  const ev = (type, id, x) => c.dispatchEvent(new PointerEvent(type, {pointerId: id, pointerType: 'touch',
                      clientX: x, clientY: cy, bubbles: true, cancelable: true, isPrimary: id === 11}));
                  ev('pointerdown', 11, cx - 20); ev('pointerdown', 12, cx + 20);
                  ev('pointermove', 11, cx - 40); ev('pointermove', 12, cx + 40);
                  ev('pointerup', 11, cx - 40); ev('pointerup', 12, cx + 40);
                  return v.fov; }"""
    )
    assert fov_after == pytest.approx(90 * 40 / 80, rel=0.05)
    # double-click: fullscreen on the widget, double-click again to leave
    pg.viewer_eval("v => v.setView(0, 0, 90)")
    box = pg.canvas_box()
    mouse.dblclick(box["x"] + box["w"] / 2, box["y"] + box["h"] / 2)
    pg.page.wait_for_function(
        f"() => document.fullscreenElement === app.graph.getNodeById({VIEWER_ID}).pano360Viewer.element",
        timeout=5000,
    )
    assert dominant_face(pg.centre_pixels(), face_colours) == "F"
    pg.page.evaluate("() => document.exitFullscreen()")
    pg.page.wait_for_function("() => !document.fullscreenElement", timeout=5000)
    assert pg.our_errors() == []


def test_big_panorama_uploads_in_strips_and_downscales_with_notice(comfy, page_factory, face_colours):
    name = _input_image(
        comfy,
        "labeled_cube_8192x4096.png",
        lambda: (
            Image.open(ASSETS / "labeled_cube_erp.png").convert("RGB").resize((8192, 4096), Image.NEAREST)
        ),
    )
    pg = page_factory()
    pg.load_graph(_viewer_only_graph(), name)
    # watch the main thread: longest gap between animation frames while the image loads
    pg.page.evaluate(
        """() => { window.__p360.maxGap = 0; let last = performance.now();
                   const tick = (t) => { window.__p360.maxGap = Math.max(window.__p360.maxGap, t - last); last = t;
                                         if (!window.__p360.stopTick) requestAnimationFrame(tick); };
                   requestAnimationFrame(tick); }"""
    )
    t0 = pg.now()
    pg.queue_and_wait(timeout=180)
    info = pg.wait_ready(since=t0)
    pg.page.evaluate("() => { window.__p360.stopTick = true; }")
    max_gap = pg.page.evaluate("() => window.__p360.maxGap")
    load = info["lastLoad"]
    assert info["state"] == "ready", info
    assert (load["width"], load["height"]) == (8192, 4096)
    print(
        f"8192x4096: fetch+decode+upload {load['ms']:.0f} ms, longest frame gap {max_gap:.0f} ms, texture {load['texWidth']}"
    )
    # the page is never blocked for the whole upload (one 8192x4096 upload in one go blocks ~1.3 s on
    # SwiftShader): it goes up in strips of at most 2 M pixels, one per animation frame (timings
    # above are printed, not asserted: speed targets live in benchmarks/)
    strips = load["strips"]
    tex_w, tex_h = load["texWidth"], load["texHeight"]
    assert strips["width"] == tex_w and strips["rows"] * tex_w <= 2_000_000, strips
    assert strips["count"] == -(-tex_h // strips["rows"]) >= 8 and strips["frames"] == strips["count"], strips
    assert dominant_face(pg.centre_pixels(), face_colours) == "F"
    max_tex = pg.viewer_eval("v => v.renderer.maxTextureSize")
    if max_tex < 8192:
        assert load["downscaled"] and "downscaled" in info["notice"]
    # pretend the GPU allows only 2048-pixel textures: downscaled in the browser, with a notice
    pg.page.evaluate("() => { window.PANO360_MAX_TEXTURE_SIZE = 2048; }")
    t1 = pg.now()
    pg.viewer_eval("v => { v.select(0); }")
    info = pg.wait_ready(since=t1)
    assert info["lastLoad"]["downscaled"] is True
    assert (info["lastLoad"]["texWidth"], info["lastLoad"]["texHeight"]) == (2048, 1024)
    assert "downscaled" in info["notice"] and "2048" in info["notice"]
    assert (
        pg.page.evaluate(
            f"() => getComputedStyle(app.graph.getNodeById({VIEWER_ID}).pano360Viewer.notice).display"
        )
        != "none"
    )
    assert dominant_face(pg.centre_pixels(), face_colours) == "F"
    pg.screenshot("viewer_downscaled_notice")
    assert pg.our_errors() == []


READ_BLOCK = """([fx, fy, half]) => {
  const v = app.graph.getNodeById(VIEWER_ID).pano360Viewer; v.renderNow();
  const gl = v.renderer.gl, c = v.canvas;
  const x = Math.round(fx * c.width) - half, y = c.height - 1 - Math.round(fy * c.height) - half;
  const out = new Uint8Array(4 * 2 * half * 2 * half);
  gl.readPixels(x, y, 2 * half, 2 * half, gl.RGBA, gl.UNSIGNED_BYTE, out);
  return {px: Array.from(out), w: c.width};
}""".replace("VIEWER_ID", str(VIEWER_ID))


def _block(pg, fx=0.5, fy=0.5, half=12) -> tuple[np.ndarray, int]:
    """(2 half, 2 half, 3) pixels of the drawing buffer around (fx, fy), and the buffer width."""
    r = pg.page.evaluate(READ_BLOCK, [fx, fy, half])
    return np.asarray(r["px"], dtype=np.float32).reshape(2 * half, 2 * half, 4)[..., :3], r["w"]


def _reload(pg, mipmaps: bool) -> None:
    t = pg.now()
    pg.viewer_eval("(v, m) => { v.renderer.mipmaps = m; v.select(0); }", mipmaps)
    assert pg.wait_ready(since=t)["state"] == "ready"


def test_mipmaps_wide_view_does_not_alias_and_the_wrap_has_no_seam_line(comfy, page_factory):
    # a 1-texel black/white checkerboard: seen with several texels per screen pixel, a filtered
    # view is an even grey; sampling level 0 only (no mipmaps) gives moire
    w = 4096
    name = _input_image(
        comfy, "checker_4096.png",
        lambda: Image.fromarray(np.repeat(((np.indices((w // 2, w)).sum(0) % 2) * 255).astype(np.uint8)[..., None], 3, -1)),
    )
    pg = page_factory()
    pg.load_graph(_viewer_only_graph(), name)
    t0 = pg.now()
    pg.queue_and_wait(timeout=180)
    assert pg.wait_ready(since=t0)["state"] == "ready"
    cw = pg.viewer_eval("v => v.canvas.width")
    fov = min(150.0, 3.0 * cw * 360.0 / w)  # about 3 texels per screen pixel at the centre
    pg.viewer_eval("(v, f) => v.setView(0, 0, f)", fov)
    grey, _ = _block(pg)
    stats = {"mipmapped": (float(grey.mean()), float(grey.std()))}
    _reload(pg, mipmaps=False)
    pg.viewer_eval("(v, f) => v.setView(0, 0, f)", fov)
    aliased, _ = _block(pg)
    stats["level 0 only"] = (float(aliased.mean()), float(aliased.std()))
    print(f"checkerboard at {w * fov / 360 / cw:.1f} texels/px (mean, std): {stats}")
    assert abs(grey.mean() - 127.5) < 20 and grey.std() < 12, stats
    assert aliased.std() > 3 * max(grey.std(), 4.0), stats  # the check above can fail

    # the 0/360 wrap: a red band around it, blue elsewhere; looking straight at it (yaw 180) the
    # centre columns must be red (a naive mipmapped lookup draws a 1-2 px line of the mean colour)
    name = _input_image(comfy, "wrap_band_2048.png", lambda: _wrap_band(2048))
    _reload(pg, mipmaps=True)
    pg.load_graph(_viewer_only_graph(), name)
    t1 = pg.now()
    pg.queue_and_wait(timeout=180)
    assert pg.wait_ready(since=t1)["state"] == "ready"
    cw = pg.viewer_eval("v => v.canvas.width")
    for shift_px in (0, 1):  # the seam falls between two 2x2 pixel quads or inside one
        pg.viewer_eval("(v, y) => v.setView(y, 0, 90)", 180 + shift_px * 90 / cw)
        band, _ = _block(pg, half=6)
        assert (band[..., 0] > 200).all() and (band[..., 2] < 60).all(), (shift_px, band[6].tolist())
    pg.screenshot("viewer_wrap_no_seam")
    assert pg.our_errors() == []


def _wrap_band(w: int) -> Image.Image:
    a = np.zeros((w // 2, w, 3), np.uint8)
    a[..., 2] = 255
    band = w // 20
    a[:, :band] = (255, 0, 0)
    a[:, -band:] = (255, 0, 0)
    return Image.fromarray(a)


def test_cubemap_horizon_input(comfy, page_factory, face_colours):
    import torch

    from pano_core.geometry import e2c

    def make():
        arr = np.asarray(Image.open(ASSETS / "labeled_cube_erp.png").convert("RGB"), dtype=np.float32) / 255
        hz = e2c(torch.from_numpy(arr).permute(2, 0, 1)[None], face_size=128, layout="horizon")
        return Image.fromarray((hz[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))

    name = _input_image(comfy, "labeled_cube_horizon.png", make)
    pg = page_factory()
    pg.load_graph(_viewer_only_graph(), name)
    t0 = pg.now()
    events = pg.queue_and_wait()
    info = pg.wait_ready(since=t0)
    assert info["state"] == "ready"
    assert events[-1]["output"]["pano360"][0]["source_layout"] == "horizon"
    assert (info["lastLoad"]["width"], info["lastLoad"]["height"]) == (512, 256)
    assert dominant_face(pg.centre_pixels(), face_colours) == "F"
    pg.viewer_eval("v => v.setView(-90, 0, 90)")
    assert dominant_face(pg.centre_pixels(), face_colours) == "L"
    # outputs restored by the frontend (as when switching workflow tabs) refill a fresh viewer
    t1 = pg.now()
    restored = pg.page.evaluate(
        f"""async () => {{ const outs = {{...app.nodeOutputs}};
                 await app.loadGraphData(app.graph.serialize());
                 const fresh = app.graph.getNodeById({VIEWER_ID}).pano360Viewer.items.length;
                 app.nodeOutputs = outs;
                 return [fresh, !!outs['{VIEWER_ID}']?.pano360]; }}"""
    )
    assert restored == [0, True]  # a fresh, empty viewer; the frontend had stored the outputs
    pg.wait_ready(since=t1)
    pg.viewer_eval("v => v.setView(0, 0, 90)")
    assert dominant_face(pg.centre_pixels(), face_colours) == "F"
    # the shader's camera rotation is the one of pano_core.geometry
    from pano_core.geometry import rotation_matrix

    angles = [(0, 0), (90, 0), (-35, 20), (170, -80), (12.5, 45)]
    import comfy_harness as ch

    mats = pg.page.evaluate(
        """async ([url, angles]) => {
             const m = await import(url);
             return angles.map(([y, p]) => Array.from(m.rotationMatrix(y, p)));
           }""",
        [f"/extensions/{ch.PACK_LINK_NAME}/lib/pano360_renderer.js", angles],
    )
    for (yaw, pitch), m in zip(angles, mats):
        np.testing.assert_allclose(np.array(m).reshape(3, 3), rotation_matrix(yaw, pitch).numpy(), atol=1e-5)
    assert pg.our_errors() == []


def test_non_2to1_warns_and_missing_file_message(comfy, page_factory, face_colours):
    name = _input_image(
        comfy,
        "labeled_cube_3to1.png",
        lambda: Image.open(ASSETS / "labeled_cube_erp.png").convert("RGB").crop((0, 85, 1024, 427)),
    )
    pg = page_factory()
    pg.load_graph(_viewer_only_graph(), name)
    t0 = pg.now()
    events = pg.queue_and_wait()
    info = pg.wait_ready(since=t0)
    assert info["state"] == "ready", info
    assert "not 2:1" in info["notice"]
    assert "not 2:1" in " ".join(events[-1]["output"]["pano360_notes"])
    assert (
        pg.page.evaluate(
            f"() => getComputedStyle(app.graph.getNodeById({VIEWER_ID}).pano360Viewer.notice).display"
        )
        != "none"
    )
    assert dominant_face(pg.centre_pixels(), face_colours) == "F"
    pg.screenshot("viewer_not_2to1")
    assert pg.our_errors() == []

    # the temp file disappears (e.g. ComfyUI restarted): a clear message instead of a blank box
    item = events[-1]["output"]["pano360"][0]
    # (ComfyUI puts its temp folder in <--temp-directory>/temp)
    found = [p for p in Path(comfy.temp_dir).rglob(item["filename"]) if p.parent.name == item["subfolder"]]
    assert len(found) == 1, found
    found[0].unlink()
    t1 = pg.now()
    pg.viewer_eval("v => { v.select(0); }")
    info = pg.wait_ready(since=t1)
    assert info["state"] == "error"
    assert "404" in info["msg"] and "missing" in info["msg"] and item["filename"] in info["msg"]
    assert (
        pg.page.evaluate(
            f"() => getComputedStyle(app.graph.getNodeById({VIEWER_ID}).pano360Viewer.msg).display"
        )
        == "flex"
    )
    pg.screenshot("viewer_missing_file")


def test_no_webgl2_shows_message(comfy, page_factory):
    comfy.add_input_file(ASSETS / "labeled_cube_erp.png")
    pg = page_factory(init_script=NO_WEBGL2_INIT)
    pg.load_graph(_viewer_only_graph(), "labeled_cube_erp.png")
    st = pg.viewer_eval(
        "v => ({state: v.state, msg: v.msg.textContent, shown: getComputedStyle(v.msg).display})"
    )
    assert st["state"] == "no-webgl2"
    assert "WebGL2 is not available" in st["msg"] and st["shown"] == "flex"
    # running the graph still works and keeps the message
    pg.queue_and_wait()
    pg.page.wait_for_timeout(300)
    assert pg.viewer_eval("v => v.state") == "no-webgl2"
    assert "WebGL2" in pg.viewer_eval("v => v.msg.textContent")
    pg.screenshot("viewer_no_webgl2")
    assert [m for m in pg.our_errors() if m["type"] == "pageerror"] == []


def test_batch_strip_selects_panorama(comfy, page_factory, face_colours):
    comfy.add_input_file(ASSETS / "labeled_cube_erp.png")
    flipped = _input_image(
        comfy,
        "labeled_cube_rolled.png",
        lambda: Image.fromarray(
            np.roll(np.asarray(Image.open(ASSETS / "labeled_cube_erp.png").convert("RGB")), 256, axis=1)
        ),
    )
    wf = _viewer_only_graph()
    wf["nodes"].insert(
        1,
        {
            "id": 3,
            "type": "LoadImage",
            "pos": [40, 460],
            "size": [300, 330],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [],
            "outputs": [
                {"name": "IMAGE", "type": "IMAGE", "links": [3]},
                {"name": "MASK", "type": "MASK", "links": None},
            ],
            "properties": {},
            "widgets_values": [flipped, "image"],
        },
    )
    wf["nodes"].append(
        {
            "id": 4,
            "type": "ImageBatch",
            "pos": [200, 800],
            "size": [200, 60],
            "flags": {},
            "order": 1,
            "mode": 0,
            "inputs": [
                {"name": "image1", "type": "IMAGE", "link": 2},
                {"name": "image2", "type": "IMAGE", "link": 3},
            ],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
            "properties": {},
            "widgets_values": [],
        }
    )
    wf["nodes"][0]["outputs"][0]["links"] = [2]
    wf["links"] = [[1, 4, 0, 2, 0, "IMAGE"], [2, 1, 0, 4, 0, "IMAGE"], [3, 3, 0, 4, 1, "IMAGE"]]
    wf["last_node_id"], wf["last_link_id"] = 4, 3
    pg = page_factory()
    pg.load_graph(wf, "labeled_cube_erp.png")
    pg.page.evaluate(
        f"() => app.graph.getNodeById(3).widgets.find(w => w.name === 'image').value = '{flipped}'"
    )
    t0 = pg.now()
    pg.queue_and_wait()
    pg.wait_ready(since=t0)
    assert pg.viewer_eval("v => v.strip.children.length") == 2
    assert dominant_face(pg.centre_pixels(), face_colours) == "F"
    t1 = pg.now()
    pg.viewer_eval("v => { v.strip.children[1].click(); }")
    pg.wait_ready(since=t1)
    # the second panorama is rolled by 90 degrees: Left is now in front
    assert dominant_face(pg.centre_pixels(), face_colours) == "L"
    assert pg.viewer_eval("v => v.strip.children[1].classList.contains('active')")
    assert pg.our_errors() == []


def test_vue_node_renderer(comfy, page_factory, face_colours):
    """The same widget inside the newer Vue node renderer ("Nodes 2.0")."""
    comfy.add_input_file(ASSETS / "labeled_cube_erp.png")
    pg = page_factory(settings={"Comfy.VueNodes.Enabled": True})
    try:
        assert pg.page.evaluate("() => app.extensionManager.setting.get('Comfy.VueNodes.Enabled')") is True
        pg.load_graph(json.loads(WORKFLOW.read_text()), "labeled_cube_erp.png")
        pg.page.wait_for_timeout(500)
        t0 = pg.now()
        pg.queue_and_wait(node_ids=(VIEWER_ID,))
        info = pg.wait_ready(since=t0)
        assert info["state"] == "ready"
        # the widget is mounted in the page and visible
        assert pg.viewer_eval(
            "v => v.element.isConnected && v.canvas.clientWidth > 50 && v.canvas.clientHeight > 50"
        )
        assert dominant_face(pg.centre_pixels(), face_colours) == "F"
        pg.page.evaluate(
            f"() => app.graph.getNodeById({VIEWER_ID}).pano360Viewer.element.querySelector('[data-preset=right]').click()"
        )
        assert dominant_face(pg.centre_pixels(), face_colours) == "R"
        assert pg.widget_values()["yaw"] == pytest.approx(90)
        pg.screenshot("viewer_vue_nodes")
        assert pg.our_errors() == []
    finally:
        comfy.post_json("/api/settings/Comfy.VueNodes.Enabled", False)
