// Pano360 equirectangular renderer on plain WebGL2 (no libraries).
//
// One full-screen triangle; the fragment shader casts a ray per pixel through a pinhole
// camera turned by yaw/pitch and looks the ray's longitude/latitude up in the ERP texture.
// Frame (same as pano_core.geometry): x right, y up, z forward; lon = atan2(x, z) (0 at the
// image centre, positive to the right), lat = asin(y) (+90 at the top row). The camera
// rotation is R = Ry(yaw) Rx(-pitch), so yaw +90 looks at the cube face R and pitch +90 at U.
// This module has no ComfyUI dependency (it is also imported by the ComfyUI frontend as an
// extension module, which is harmless: it only defines exports).

const VERT = `#version 300 es
const vec2 P[3] = vec2[3](vec2(-1.0, -1.0), vec2(3.0, -1.0), vec2(-1.0, 3.0));
out vec2 vNdc;
void main() {
  vNdc = P[gl_VertexID];
  gl_Position = vec4(P[gl_VertexID], 0.0, 1.0);
}`;

const FRAG = `#version 300 es
precision highp float;
uniform sampler2D uTex;
uniform mat3 uRot;
uniform vec2 uTan;
in vec2 vNdc;
out vec4 outColor;
const float PI = 3.14159265358979;
void main() {
  vec3 d = normalize(uRot * vec3(vNdc.x * uTan.x, vNdc.y * uTan.y, 1.0));
  float lon = atan(d.x, d.z);
  float lat = asin(clamp(d.y, -1.0, 1.0));
  vec2 uv = vec2(lon / (2.0 * PI) + 0.5, 0.5 - lat / PI);
  // Mipmapped lookup with explicit gradients: where u wraps from 1 to 0 inside a pixel quad, the
  // screen derivative of u jumps by ~1 and would pick the coarsest mip level (a 1-2 px seam
  // line of the image's mean colour); the derivative of u shifted by half a turn is continuous
  // there, so the smaller of the two is the true one.
  vec2 dx = dFdx(uv), dy = dFdy(uv);
  float u2 = fract(uv.x + 0.5);
  float dx2 = dFdx(u2), dy2 = dFdy(u2);
  if (abs(dx2) + abs(dy2) < abs(dx.x) + abs(dy.x)) { dx.x = dx2; dy.x = dy2; }
  outColor = vec4(textureGrad(uTex, uv, dx, dy).rgb, 1.0);
}`;

export const DEG = Math.PI / 180;

/** Row-major 3x3 camera rotation (world <- camera) for yaw/pitch in degrees. */
export function rotationMatrix(yawDeg, pitchDeg) {
  const a = yawDeg * DEG;
  const p = -pitchDeg * DEG;
  const ca = Math.cos(a), sa = Math.sin(a), cp = Math.cos(p), sp = Math.sin(p);
  // Ry(a) * Rx(p)
  return new Float32Array([ca, sa * sp, sa * cp, 0, cp, -sp, -sa, ca * sp, ca * cp]);
}

/** Wrap an angle to -180..180. */
export function wrapYaw(y) {
  let v = ((((y + 180) % 360) + 360) % 360) - 180;
  if (v === -180 && y > 0) v = 180;
  return v;
}

export class WebGL2Unavailable extends Error {}

/** Number of mip levels of a w x h texture (down to 1 x 1). */
export function mipLevels(w, h) {
  return 1 + Math.floor(Math.log2(Math.max(1, w, h)));
}

function compile(gl, type, src) {
  const s = gl.createShader(type);
  gl.shaderSource(s, src);
  gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) {
    const log = gl.getShaderInfoLog(s);
    gl.deleteShader(s);
    throw new Error("Pano360 viewer: shader compile failed: " + log);
  }
  return s;
}

export class PanoRenderer {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.canvas = canvas;
    let gl = null;
    try {
      gl = canvas.getContext("webgl2", {
        preserveDrawingBuffer: true, // lets tests and screenshots read the pixels back
        antialias: false,
        alpha: false,
        premultipliedAlpha: false,
      });
    } catch (e) {
      gl = null;
    }
    if (!gl) throw new WebGL2Unavailable("WebGL2 is not available");
    this.gl = gl;
    const prog = gl.createProgram();
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VERT));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FRAG));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) {
      throw new Error("Pano360 viewer: program link failed: " + gl.getProgramInfoLog(prog));
    }
    this.prog = prog;
    this.uRot = gl.getUniformLocation(prog, "uRot");
    this.uTan = gl.getUniformLocation(prog, "uTan");
    this.uTex = gl.getUniformLocation(prog, "uTex");
    this.vao = gl.createVertexArray();
    this.tex = null;
    this.texSize = [0, 0];
    this.maxTextureSize = gl.getParameter(gl.MAX_TEXTURE_SIZE);
    /** Mipmapped textures (set before loading an image; false = one level, bilinear only). */
    this.mipmaps = true;
    this.anisoExt = gl.getExtension("EXT_texture_filter_anisotropic");
    this.anisotropy = this.anisoExt
      ? Math.min(8, gl.getParameter(this.anisoExt.MAX_TEXTURE_MAX_ANISOTROPY_EXT))
      : 1;
  }

  /** Upload an ImageBitmap / image / canvas as the panorama texture. */
  setImage(source) {
    const gl = this.gl;
    if (this.tex) gl.deleteTexture(this.tex);
    const tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, gl.RGBA, gl.UNSIGNED_BYTE, source);
    this._finishTexture();
    this.tex = tex;
    this.texSize = [source.width, source.height];
  }

  /**
   * Upload a large ImageBitmap in horizontal strips, one strip per animation frame, so the page
   * never blocks for the whole upload; the previous panorama stays on screen until the new one
   * is complete. Returns false when cancelled (isCancelled() became true).
   */
  async setImageInStrips(bitmap, { maxStripPixels = 2_000_000, isCancelled = () => false } = {}) {
    const gl = this.gl;
    const w = bitmap.width, h = bitmap.height;
    const rows = Math.max(16, Math.floor(maxStripPixels / w));
    this.lastStrips = { count: 0, rows: Math.min(rows, h), width: w, frames: 0 }; // what the last upload did
    if (rows >= h) {
      this.setImage(bitmap);
      this.lastStrips.count = 1;
      return true;
    }
    const tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.texStorage2D(gl.TEXTURE_2D, this.mipmaps ? mipLevels(w, h) : 1, gl.RGBA8, w, h);
    const opts = { premultiplyAlpha: "none", colorSpaceConversion: "none" };
    for (let y = 0; y < h; y += rows) {
      const sh = Math.min(rows, h - y);
      const strip = await createImageBitmap(bitmap, 0, y, w, sh, opts);
      await new Promise((r) => requestAnimationFrame(() => r()));
      this.lastStrips.frames += 1;
      if (isCancelled() || gl.isContextLost()) {
        strip.close();
        gl.deleteTexture(tex);
        return false;
      }
      gl.bindTexture(gl.TEXTURE_2D, tex);
      gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
      gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
      gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
      gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, y, w, sh, gl.RGBA, gl.UNSIGNED_BYTE, strip);
      this.lastStrips.count += 1;
      strip.close();
    }
    gl.bindTexture(gl.TEXTURE_2D, tex);
    this._finishTexture();
    if (this.tex) gl.deleteTexture(this.tex);
    this.tex = tex;
    this.texSize = [w, h];
    return true;
  }

  /** Sampling state of the bound texture: mipmaps (generated here) with trilinear and, where the
   * GPU offers it, anisotropic filtering, so wide views of big panoramas do not alias. */
  _finishTexture() {
    const gl = this.gl;
    if (this.mipmaps) gl.generateMipmap(gl.TEXTURE_2D);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, this.mipmaps ? gl.LINEAR_MIPMAP_LINEAR : gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.REPEAT);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    if (this.mipmaps && this.anisotropy > 1) {
      gl.texParameterf(gl.TEXTURE_2D, this.anisoExt.TEXTURE_MAX_ANISOTROPY_EXT, this.anisotropy);
    }
  }

  clearImage() {
    if (this.tex) this.gl.deleteTexture(this.tex);
    this.tex = null;
    this.texSize = [0, 0];
  }

  /** Resize the drawing buffer to the canvas' CSS size times the pixel ratio. */
  fit(pixelRatio = 1) {
    const c = this.canvas;
    const w = Math.max(1, Math.round(c.clientWidth * pixelRatio));
    const h = Math.max(1, Math.round(c.clientHeight * pixelRatio));
    if (c.width !== w || c.height !== h) {
      c.width = w;
      c.height = h;
    }
  }

  /** Draw the view. fov is the horizontal field of view in degrees. */
  render(yaw, pitch, fov) {
    const gl = this.gl;
    const w = this.canvas.width, h = this.canvas.height;
    gl.viewport(0, 0, w, h);
    gl.clearColor(0.08, 0.08, 0.08, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    if (!this.tex) return;
    const tx = Math.tan((fov * DEG) / 2);
    const ty = (tx * h) / w;
    gl.useProgram(this.prog);
    gl.bindVertexArray(this.vao);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.tex);
    gl.uniform1i(this.uTex, 0);
    gl.uniformMatrix3fv(this.uRot, true, rotationMatrix(yaw, pitch));
    gl.uniform2f(this.uTan, tx, ty);
    gl.drawArrays(gl.TRIANGLES, 0, 3);
  }

  /** RGBA of the drawing-buffer pixel (x, y) with y = 0 at the top. */
  readPixel(x, y) {
    const gl = this.gl;
    const out = new Uint8Array(4);
    gl.readPixels(Math.round(x), this.canvas.height - 1 - Math.round(y), 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, out);
    return Array.from(out);
  }

  dispose() {
    this.clearImage();
    const ext = this.gl.getExtension("WEBGL_lose_context");
    if (ext) ext.loseContext();
  }
}
