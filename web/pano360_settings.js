// ComfyUI frontend extension: the Pano360 settings (Settings → Pano360).
//
// Size limit: the largest image a Pano360 node makes (cube faces, panoramas, views), in
// megapixels. The frontend stores settings on the server (user/default/comfy.settings.json);
// the nodes read the value from there when they run (nodes/_common.py), so it also applies to
// prompts queued through the API. 0 means "not set": PANO360_MAX_PIXELS or 134 Mpx
// (16384 × 8192) applies.

import { app } from "../../scripts/app.js";

export const SIZE_LIMIT_ID = "Pano360.SizeLimitMegapixels";

app.registerExtension({
  name: "pano360.settings",
  settings: [
    {
      id: SIZE_LIMIT_ID,
      category: ["Pano360", "Size limit", "Largest image"],
      name: "Largest image a Pano360 node makes (megapixels; 0 = PANO360_MAX_PIXELS or 134)",
      tooltip:
        "Cube faces, panoramas and views above this many megapixels (all images of a batch together) " +
        "are refused with a clear error before any memory is allocated. A float32 RGB image takes " +
        "12 MB per megapixel. 0 uses the environment variable PANO360_MAX_PIXELS, else 134 Mpx.",
      type: "number",
      defaultValue: 0,
      attrs: { min: 0, max: 100000, step: 1 },
    },
  ],
});
