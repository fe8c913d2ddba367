// ComfyUI frontend extension: the Pano360 Seam Metrics node shows its summary on the node.
//
// The node returns {"ui": {"text": [summary]}}; after each run the text is put into a read-only
// multiline widget "summary" on the node (created on first use, like core's Preview Any).

import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODE_TYPE = "Pano360SeamMetrics";
const WIDGET = "summary";

function showSummary(node, text) {
  let w = node.widgets?.find((x) => x.name === WIDGET);
  if (!w) {
    w = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
    w.serialize = false; // display only: not saved in the workflow ...
    w.options = { ...(w.options || {}), serialize: false }; // ... nor sent as an input
    if (w.inputEl) {
      w.inputEl.readOnly = true;
      w.inputEl.style.opacity = 0.85;
    }
  }
  w.value = text;
  if (w.inputEl) w.inputEl.value = text;
  const sz = node.computeSize();
  node.setSize([Math.max(node.size[0], sz[0]), Math.max(node.size[1], sz[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "pano360.seamMetrics",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message, ...rest) {
      const r = onExecuted?.apply(this, [message, ...rest]);
      const text = message?.text;
      if (text) showSummary(this, Array.isArray(text) ? text.join("\n") : String(text));
      return r;
    };
  },
});
