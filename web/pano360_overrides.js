// ComfyUI frontend extension: make input overrides visible on the projection nodes.
//
// ERP -> Perspective and Perspective -> ERP have optional FLOAT inputs yaw_in / pitch_in / fov_in
// that replace the yaw / pitch / fov widgets when connected (e.g. from the 360° viewer). While such
// an input is connected, its widget is disabled and labelled "yaw (from yaw_in)", so the value
// shown is not mistaken for the one used.

import { app } from "../../scripts/app.js";

const NODE_TYPES = new Set(["Pano360ERPToPerspective", "Pano360PerspectiveToERP"]);
const PAIRS = [["yaw_in", "yaw"], ["pitch_in", "pitch"], ["fov_in", "fov"]];

export function updateOverrides(node) {
  for (const [inName, wName] of PAIRS) {
    const w = node.widgets?.find((x) => x.name === wName);
    const inp = node.inputs?.find((x) => x.name === inName);
    if (!w || !inp) continue;
    const linked = inp.link != null;
    w.disabled = linked;
    w.label = linked ? `${wName} (from ${inName})` : wName;
    w.options = { ...(w.options || {}), pano360Overridden: linked };
  }
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "pano360.inputOverrides",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData?.name)) return;
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const r = onConnectionsChange?.apply(this, args);
      updateOverrides(this);
      return r;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const r = onConfigure?.apply(this, args);
      queueMicrotask(() => updateOverrides(this));
      return r;
    };
  },
});
