// Pano360 viewer widget: DOM, interaction (drag, wheel/pinch, keys, presets, fullscreen),
// image loading (fetch -> createImageBitmap, downscaled above MAX_TEXTURE_SIZE) and messages.
// No ComfyUI dependency: the extension (../pano360_viewer.js) wires it to a node.

import { PanoRenderer, WebGL2Unavailable, wrapYaw } from "./pano360_renderer.js";

export const PRESETS = [
  ["front", "F", 0, 0],
  ["right", "R", 90, 0],
  ["back", "B", 180, 0],
  ["left", "L", -90, 0],
  ["up", "U", 0, 90],
  ["down", "D", 0, -90],
];

export const FOV_MIN = 10;
export const FOV_MAX = 150;

export const NO_WEBGL2_MESSAGE =
  "WebGL2 is not available in this browser, so the 360° viewer cannot draw here. " +
  "Turn on hardware acceleration or use a browser with WebGL2. " +
  "The node still renders the view set by its yaw / pitch / fov values.";

const STYLE = `
.pano360-viewer { position: relative; display: flex; flex-direction: column; width: 100%; height: 100%;
  min-height: 280px; box-sizing: border-box; background: #141414; color: #ddd; font: 12px sans-serif;
  outline: none; border-radius: 4px; overflow: hidden; }
.pano360-viewer:focus-visible { box-shadow: 0 0 0 1px #5b9dd9 inset; }
.pano360-stage { position: relative; flex: 1 1 auto; min-height: 120px; }
.pano360-stage canvas { position: absolute; inset: 0; width: 100%; height: 100%; display: block;
  cursor: grab; touch-action: none; }
.pano360-stage canvas.dragging { cursor: grabbing; }
.pano360-msg { position: absolute; inset: 0; display: none; align-items: center; justify-content: center;
  padding: 16px; text-align: center; line-height: 1.4; color: #eee; background: #1b1b1b; }
.pano360-msg.show { display: flex; }
.pano360-msg.error { color: #ffb4a8; }
.pano360-notice { position: absolute; left: 6px; right: 6px; top: 6px; display: none; padding: 4px 6px;
  background: rgba(120, 80, 0, 0.85); color: #fff3d6; border-radius: 3px; pointer-events: none; }
.pano360-notice.show { display: block; }
.pano360-readout { position: absolute; left: 6px; bottom: 6px; padding: 2px 6px; background: rgba(0,0,0,.55);
  border-radius: 3px; font-family: monospace; pointer-events: none; }
.pano360-bar, .pano360-strip { display: flex; flex-wrap: wrap; gap: 3px; padding: 4px; flex: 0 0 auto;
  background: #202020; }
.pano360-strip:empty { display: none; }
.pano360-bar button, .pano360-strip button { background: #333; color: #ddd; border: 1px solid #444;
  border-radius: 3px; padding: 2px 7px; cursor: pointer; font: inherit; }
.pano360-bar button:hover, .pano360-strip button:hover { background: #444; }
.pano360-strip button.active { background: #3b6ea8; border-color: #5b9dd9; color: #fff; }
`;

function injectStyle() {
  if (document.getElementById("pano360-viewer-style")) return;
  const s = document.createElement("style");
  s.id = "pano360-viewer-style";
  s.textContent = STYLE;
  document.head.appendChild(s);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

const clamp = (v, a, b) => Math.min(b, Math.max(a, v));

export class PanoViewerWidget {
  /**
   * @param {object} opts
   * @param {(yaw:number, pitch:number, fov:number) => void} [opts.onViewChange]
   * @param {(item:object) => string} opts.urlFor  URL of an item {filename, subfolder, type}
   */
  constructor(opts) {
    injectStyle();
    this.opts = opts;
    this.yaw = 0;
    this.pitch = 0;
    this.fov = 90;
    this.items = [];
    this.index = 0;
    this.notes = [];
    this.state = "empty";
    this.loadSeq = 0;
    this.lastLoad = null; // {url, ms, width, height, texWidth, texHeight, downscaled, phases, strips}
    this.lastLoadAt = 0; // performance.now() when the last load finished (ok or not)

    const root = (this.element = el("div", "pano360-viewer"));
    root.tabIndex = 0;
    root.__pano360 = this;
    const stage = (this.stage = el("div", "pano360-stage"));
    this.canvas = el("canvas");
    this.msg = el("div", "pano360-msg");
    this.notice = el("div", "pano360-notice");
    this.readout = el("div", "pano360-readout");
    stage.append(this.canvas, this.msg, this.notice, this.readout);
    const bar = (this.bar = el("div", "pano360-bar"));
    for (const [name, label, y, p] of PRESETS) {
      const b = el("button", "pano360-preset", label);
      b.type = "button";
      b.title = `${name} (yaw ${y}°, pitch ${p}°)`;
      b.dataset.preset = name;
      b.addEventListener("click", (e) => {
        e.stopPropagation();
        this.setView(y, p, this.fov);
      });
      bar.appendChild(b);
    }
    const fs = el("button", "pano360-fullscreen", "Full");
    fs.type = "button";
    fs.title = "fullscreen (double-click the view)";
    fs.addEventListener("click", (e) => {
      e.stopPropagation();
      this.toggleFullscreen();
    });
    bar.appendChild(fs);
    this.strip = el("div", "pano360-strip");
    root.append(stage, bar, this.strip);

    try {
      this.renderer = new PanoRenderer(this.canvas);
      this.setMessage("Run the workflow to show the panorama here.");
    } catch (e) {
      this.renderer = null;
      this.state = "no-webgl2";
      this.setMessage(e instanceof WebGL2Unavailable ? NO_WEBGL2_MESSAGE : String(e.message || e), true);
      if (!(e instanceof WebGL2Unavailable)) console.warn("Pano360 viewer:", e);
    }
    root.dataset.state = this.state;
    this._bindEvents();
    this._updateReadout();
    if (typeof ResizeObserver !== "undefined") {
      this._ro = new ResizeObserver(() => this.requestRender());
      this._ro.observe(this.canvas);
    }
  }

  // ------------------------------------------------------------------ view state

  setView(yaw, pitch, fov, notify = true) {
    const y = wrapYaw(Number(yaw) || 0);
    const p = clamp(Number(pitch) || 0, -90, 90);
    const f = clamp(Number(fov) || 90, FOV_MIN, FOV_MAX);
    const changed = y !== this.yaw || p !== this.pitch || f !== this.fov;
    this.yaw = y;
    this.pitch = p;
    this.fov = f;
    this._updateReadout();
    this.requestRender();
    if (changed && notify && this.opts.onViewChange) this.opts.onViewChange(this.yaw, this.pitch, this.fov);
  }

  getView() {
    return { yaw: this.yaw, pitch: this.pitch, fov: this.fov };
  }

  _updateReadout() {
    this.readout.textContent = `yaw ${this.yaw.toFixed(1)}°  pitch ${this.pitch.toFixed(1)}°  fov ${this.fov.toFixed(1)}°`;
  }

  // ------------------------------------------------------------------ messages

  setMessage(text, isError = false) {
    this.msg.textContent = text || "";
    this.msg.classList.toggle("show", !!text);
    this.msg.classList.toggle("error", !!isError);
  }

  setNotice(lines) {
    const t = (lines || []).filter(Boolean).join(" · ");
    this.notice.textContent = t;
    this.notice.classList.toggle("show", !!t);
  }

  _setState(s) {
    this.state = s;
    this.element.dataset.state = s;
  }

  // ------------------------------------------------------------------ rendering

  requestRender() {
    if (!this.renderer || this._raf) return;
    this._raf = requestAnimationFrame(() => {
      this._raf = 0;
      this.renderNow();
    });
  }

  renderNow() {
    if (!this.renderer) return;
    const ratio = Math.min(window.devicePixelRatio || 1, 2);
    this.renderer.fit(ratio);
    this.renderer.render(this.yaw, this.pitch, this.fov);
  }

  /** Render now and read the drawing-buffer pixel at fractional position (fx, fy) of the view. */
  samplePixel(fx = 0.5, fy = 0.5) {
    if (!this.renderer) return null;
    this.renderNow();
    const c = this.canvas;
    return this.renderer.readPixel(clamp(fx * c.width, 0, c.width - 1), clamp(fy * c.height, 0, c.height - 1));
  }

  // ------------------------------------------------------------------ content

  /** Show the items of a run: [{filename, subfolder, type, width, height, source_layout}]. */
  setItems(items, notes = []) {
    this.items = Array.isArray(items) ? items : [];
    this.notes = Array.isArray(notes) ? notes : [];
    if (this.index >= this.items.length) this.index = 0;
    this._buildStrip();
    if (!this.items.length) {
      this._setState(this.renderer ? "empty" : this.state);
      if (this.renderer) this.setMessage("Nothing to show: the node received no image.");
      return Promise.resolve();
    }
    return this.select(this.index);
  }

  _buildStrip() {
    this.strip.replaceChildren();
    if (this.items.length < 2) return;
    this.items.forEach((it, i) => {
      const b = el("button", "pano360-strip-item", String(i + 1));
      b.type = "button";
      b.title = it.filename;
      b.classList.toggle("active", i === this.index);
      b.addEventListener("click", (e) => {
        e.stopPropagation();
        this.select(i);
      });
      this.strip.appendChild(b);
    });
  }

  async select(i) {
    this.index = i;
    [...this.strip.children].forEach((b, j) => b.classList.toggle("active", j === i));
    const item = this.items[i];
    if (!item || !this.renderer) return;
    const seq = ++this.loadSeq;
    const url = this.opts.urlFor(item);
    const t0 = performance.now();
    this._setState("loading");
    if (!this.renderer.tex) this.setMessage("Loading panorama…");
    const notes = [...this.notes];
    try {
      const res = await fetch(url, { cache: "no-store" });
      if (!res.ok) {
        const why = res.status === 404 ? "the file is missing (ComfyUI's temp folder is cleared on restart): run the workflow again" : res.statusText;
        throw Object.assign(new Error(`Cannot load panorama "${item.filename}" (HTTP ${res.status}): ${why}.`), { shown: true });
      }
      const blob = await res.blob();
      const tFetched = performance.now();
      if (seq !== this.loadSeq) return;
      // Decode off the main thread; first the size, then (if needed) a downscaled decode.
      let bmp;
      try {
        bmp = await createImageBitmap(blob, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
      } catch (e) {
        throw Object.assign(new Error(`Cannot decode "${item.filename}" as an image.`), { shown: true });
      }
      const max = Math.min(this.renderer.maxTextureSize, Number(window.PANO360_MAX_TEXTURE_SIZE) || Infinity);
      const w0 = bmp.width, h0 = bmp.height;
      let downscaled = false;
      if (w0 > max || h0 > max) {
        const s = max / Math.max(w0, h0);
        const rw = Math.max(1, Math.floor(w0 * s)), rh = Math.max(1, Math.floor(h0 * s));
        bmp.close();
        bmp = await createImageBitmap(blob, {
          resizeWidth: rw,
          resizeHeight: rh,
          resizeQuality: "high",
          premultiplyAlpha: "none",
          colorSpaceConversion: "none",
        });
        downscaled = true;
        notes.push(`${w0}×${h0} is larger than this GPU's texture limit (${max}): shown downscaled to ${rw}×${rh}`);
      }
      if (seq !== this.loadSeq) {
        bmp.close();
        return;
      }
      if (w0 !== 2 * h0 && !notes.some((n) => /not 2:1/.test(n))) {
        notes.push(`image is ${w0}×${h0}, not 2:1: shown stretched over the sphere`);
      }
      const tDecoded = performance.now();
      const done = await this.renderer.setImageInStrips(bmp, { isCancelled: () => seq !== this.loadSeq });
      const tw = bmp.width, th = bmp.height;
      bmp.close();
      if (!done) return;
      const tUploaded = performance.now();
      this.setMessage("");
      this.setNotice(notes);
      this.renderNow();
      const phases = { fetch: tFetched - t0, decode: tDecoded - tFetched, upload: tUploaded - tDecoded, draw: performance.now() - tUploaded };
      const strips = { ...this.renderer.lastStrips };
      this.lastLoad = { url, ms: performance.now() - t0, width: w0, height: h0, texWidth: tw, texHeight: th, downscaled, phases, strips };
      this.lastLoadAt = performance.now();
      this._setState("ready");
    } catch (e) {
      if (seq !== this.loadSeq) return;
      this.renderer.clearImage();
      this.renderNow();
      this.setNotice([]);
      this.setMessage(e.shown ? e.message : `Cannot load panorama "${item.filename}": ${e.message || e}`, true);
      this.lastLoadAt = performance.now();
      this._setState("error");
      if (!e.shown) console.warn("Pano360 viewer:", e);
    }
  }

  // ------------------------------------------------------------------ interaction

  toggleFullscreen() {
    if (document.fullscreenElement) {
      document.exitFullscreen?.();
    } else {
      this.element.requestFullscreen?.().catch(() => {});
    }
  }

  _bindEvents() {
    const c = this.canvas;
    const pointers = new Map();
    let pinch0 = null;
    const degPerPx = () => this.fov / Math.max(1, c.clientWidth);

    c.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 && e.pointerType === "mouse") return;
      e.preventDefault();
      e.stopPropagation();
      this.element.focus({ preventScroll: true });
      try {
        c.setPointerCapture(e.pointerId);
      } catch (_) {
        // synthetic or already-released pointers cannot be captured; dragging still works inside
      }
      pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
      c.classList.add("dragging");
      if (pointers.size === 2) {
        const [a, b] = [...pointers.values()];
        pinch0 = { d: Math.hypot(a.x - b.x, a.y - b.y), fov: this.fov };
      }
    });
    c.addEventListener("pointermove", (e) => {
      const prev = pointers.get(e.pointerId);
      if (!prev) return;
      e.preventDefault();
      e.stopPropagation();
      const cur = { x: e.clientX, y: e.clientY };
      pointers.set(e.pointerId, cur);
      if (pointers.size >= 2 && pinch0) {
        const [a, b] = [...pointers.values()];
        const d = Math.hypot(a.x - b.x, a.y - b.y);
        if (d > 0) this.setView(this.yaw, this.pitch, (pinch0.fov * pinch0.d) / d);
        return;
      }
      // grab-the-image: moving the pointer right turns the view left, down looks up
      const k = degPerPx();
      this.setView(this.yaw - (cur.x - prev.x) * k, this.pitch + (cur.y - prev.y) * k, this.fov);
    });
    const end = (e) => {
      if (!pointers.has(e.pointerId)) return;
      e.stopPropagation();
      pointers.delete(e.pointerId);
      if (pointers.size < 2) pinch0 = null;
      if (!pointers.size) c.classList.remove("dragging");
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        e.stopPropagation();
        const dy = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
        this.setView(this.yaw, this.pitch, this.fov * Math.exp(dy * 0.001));
      },
      { passive: false }
    );
    c.addEventListener("dblclick", (e) => {
      e.preventDefault();
      e.stopPropagation();
      this.toggleFullscreen();
    });
    this.element.addEventListener("keydown", (e) => {
      const step = e.shiftKey ? 15 : 5;
      let handled = true;
      switch (e.key) {
        case "ArrowLeft": this.setView(this.yaw - step, this.pitch, this.fov); break;
        case "ArrowRight": this.setView(this.yaw + step, this.pitch, this.fov); break;
        case "ArrowUp": this.setView(this.yaw, this.pitch + step, this.fov); break;
        case "ArrowDown": this.setView(this.yaw, this.pitch - step, this.fov); break;
        case "+": case "=": this.setView(this.yaw, this.pitch, this.fov / 1.1); break;
        case "-": case "_": this.setView(this.yaw, this.pitch, this.fov * 1.1); break;
        case "f": this.toggleFullscreen(); break;
        default: handled = false;
      }
      if (handled) {
        e.preventDefault();
        e.stopPropagation();
      }
    });
    document.addEventListener("fullscreenchange", () => this.requestRender());
  }

  dispose() {
    this._ro?.disconnect();
    this.renderer?.dispose();
    this.renderer = null;
  }
}
