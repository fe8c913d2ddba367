// ComfyUI frontend extension: the Pano360Viewer node's interactive 360° widget.
//
// The node's ui output {"pano360": [{filename, subfolder, type, width, height}], "pano360_notes": [...]}
// names files in ComfyUI's temp folder; they are fetched through /view (never sent as base64).
// Dragging/zooming writes yaw/pitch/fov back into the node's widgets, so the next run renders
// the framed view (node output "view" and the yaw/pitch/fov FLOAT outputs).

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { PanoViewerWidget } from "./lib/pano360_widget.js";

const NODE_TYPE = "Pano360Viewer";
const VIEW_WIDGETS = ["yaw", "pitch", "fov"];

function viewUrl(item) {
  const q = new URLSearchParams({
    filename: item.filename,
    type: item.type || "temp",
    subfolder: item.subfolder || "",
  });
  return api.apiURL(`/view?${q.toString()}`);
}

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function readViewFromWidgets(node) {
  const v = VIEW_WIDGETS.map((n) => Number(findWidget(node, n)?.value));
  return { yaw: v[0], pitch: v[1], fov: v[2] };
}

function setupViewer(node) {
  let syncing = false;
  const viewer = new PanoViewerWidget({
    urlFor: viewUrl,
    onViewChange: (yaw, pitch, fov) => {
      syncing = true;
      try {
        const vals = { yaw, pitch, fov };
        for (const name of VIEW_WIDGETS) {
          const w = findWidget(node, name);
          if (!w) continue;
          const v = Math.round(vals[name] * 100) / 100;
          if (w.value !== v) {
            w.value = v;
            w.callback?.(v, app.canvas, node);
          }
        }
        node.setDirtyCanvas?.(true, false);
        node.graph?.change?.();
      } finally {
        syncing = false;
      }
    },
  });
  node.pano360Viewer = viewer;

  // Follow edits of the yaw/pitch/fov widgets made by hand.
  for (const name of VIEW_WIDGETS) {
    const w = findWidget(node, name);
    if (!w) continue;
    const orig = w.callback;
    w.callback = function (...args) {
      const r = orig?.apply(this, args);
      if (!syncing) {
        const v = readViewFromWidgets(node);
        viewer.setView(v.yaw, v.pitch, v.fov, false);
      }
      return r;
    };
  }

  const widget = node.addDOMWidget("pano360_viewer", "pano360viewer", viewer.element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => 280,
    getValue: () => undefined,
    setValue: () => {},
  });
  widget.serialize = false;
  const v = readViewFromWidgets(node);
  viewer.setView(v.yaw, v.pitch, v.fov, false);
  const sz = node.size || [0, 0];
  node.setSize?.([Math.max(sz[0], 480), Math.max(sz[1], 620)]);
  return viewer;
}

app.registerExtension({
  name: "Pano360.Viewer",
  // The frontend restores stored node outputs (e.g. when switching workflow tabs): show them
  // again in viewers that are still empty.
  onNodeOutputsUpdated(outputs) {
    try {
      for (const node of app.graph?.nodes || []) {
        const v = node.pano360Viewer;
        const out = outputs?.[String(node.id)];
        if (v && out?.pano360 && !v.items.length) v.setItems(out.pano360, out.pano360_notes || []);
      }
    } catch (e) {
      console.warn("Pano360 viewer: could not restore outputs", e);
    }
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const r = onNodeCreated?.apply(this, args);
      try {
        setupViewer(this);
      } catch (e) {
        console.error("Pano360 viewer: could not create the widget", e);
      }
      return r;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const r = onConfigure?.apply(this, args);
      const v = readViewFromWidgets(this);
      this.pano360Viewer?.setView(v.yaw, v.pitch, v.fov, false);
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message, ...rest) {
      const r = onExecuted?.apply(this, [message, ...rest]);
      const items = message?.pano360;
      if (items && this.pano360Viewer) {
        this.pano360Viewer.setItems(items, message?.pano360_notes || []);
      }
      return r;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function (...args) {
      this.pano360Viewer?.dispose();
      return onRemoved?.apply(this, args);
    };
  },
});
