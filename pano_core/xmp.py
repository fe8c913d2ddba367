"""Google Photo Sphere (GPano) XMP metadata: build, parse, and embed in PNG and JPEG files.

360° viewers (Google Photos, Facebook, Flickr, Kuula, Momento360, ...) recognise an
equirectangular panorama by the GPano XMP properties (namespace
``http://ns.google.com/photos/1.0/panorama/``): ``ProjectionType = equirectangular``,
``UsePanoramaViewer``, the full panorama size (``FullPanoWidthPixels``/``HeightPixels``) and
the cropped area the file actually holds (``CroppedAreaImageWidthPixels``/``HeightPixels``,
``CroppedAreaLeftPixels``/``TopPixels``), optionally ``PoseHeadingDegrees``.

Where the packet goes:

* PNG: an ``iTXt`` chunk with keyword ``XML:com.adobe.xmp`` (uncompressed, as the XMP
  specification recommends), placed before the first ``IDAT``.
* JPEG: an ``APP1`` segment starting with ``http://ns.adobe.com/xap/1.0/\\0``, placed after
  ``SOI`` and any ``APP0`` (JFIF) / EXIF ``APP1`` segments. Its payload is limited to 65 502
  bytes (a GPano packet is about 1 KB).

Everything works on bytes, so tagging an existing JPEG never re-encodes its pixels. Pure
Python (``zlib`` and ``xml.etree``); no ComfyUI import.
"""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
import zlib
from dataclasses import asdict, dataclass, fields

from .errors import PanoInputError

GPANO_NS = "http://ns.google.com/photos/1.0/panorama/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
X_NS = "adobe:ns:meta/"
XMP_PNG_KEYWORD = "XML:com.adobe.xmp"
XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_MAX_SEGMENT_PAYLOAD = 65533  # segment length field (2 bytes) counts itself

_INT_FIELDS = (
    "FullPanoWidthPixels",
    "FullPanoHeightPixels",
    "CroppedAreaImageWidthPixels",
    "CroppedAreaImageHeightPixels",
    "CroppedAreaLeftPixels",
    "CroppedAreaTopPixels",
)


@dataclass(frozen=True)
class GPano:
    """The GPano properties Pano360 writes (names as in Google's specification)."""

    FullPanoWidthPixels: int
    FullPanoHeightPixels: int
    CroppedAreaImageWidthPixels: int
    CroppedAreaImageHeightPixels: int
    CroppedAreaLeftPixels: int = 0
    CroppedAreaTopPixels: int = 0
    ProjectionType: str = "equirectangular"
    UsePanoramaViewer: bool = True
    PoseHeadingDegrees: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def gpano_for_image(
    width: int,
    height: int,
    full_width: int | None = None,
    full_height: int | None = None,
    left: int | None = None,
    top: int | None = None,
    heading: float | None = None,
) -> GPano:
    """GPano values for an image of ``width`` x ``height`` pixels.

    Without ``full_width`` the image must be a complete 2:1 panorama. With it, the image is a
    crop of a larger panorama (``full_height`` defaults to ``full_width // 2``; ``left``/``top``
    default to centring the crop). Raises :class:`PanoInputError` for impossible values.
    """
    if width <= 0 or height <= 0:
        raise PanoInputError(f"image: expected a positive size, got {width}x{height}")
    if full_width is None:
        if full_height is not None or left is not None or top is not None:
            raise PanoInputError("full_width: needed when full_height, left or top is given")
        if width != 2 * height:
            raise PanoInputError(
                f"image: a full equirectangular panorama must be 2:1 (width = 2 x height), got {width}x{height}; "
                "for a partial panorama give the full panorama width (--full-width)"
            )
        full_width, full_height = width, height
    if full_height is None:
        full_height = full_width // 2
    if full_width != 2 * full_height:
        raise PanoInputError(
            f"full_width/full_height: the full panorama must be 2:1, got {full_width}x{full_height}"
        )
    if width > full_width or height > full_height:
        raise PanoInputError(
            f"full_width: the image ({width}x{height}) is larger than the full panorama ({full_width}x{full_height})"
        )
    if left is None:
        left = (full_width - width) // 2
    if top is None:
        top = (full_height - height) // 2
    if not (0 <= left <= full_width - width):
        raise PanoInputError(f"left: expected 0..{full_width - width}, got {left}")
    if not (0 <= top <= full_height - height):
        raise PanoInputError(f"top: expected 0..{full_height - height}, got {top}")
    if heading is not None:
        heading = float(heading) % 360.0
    return GPano(
        FullPanoWidthPixels=int(full_width),
        FullPanoHeightPixels=int(full_height),
        CroppedAreaImageWidthPixels=int(width),
        CroppedAreaImageHeightPixels=int(height),
        CroppedAreaLeftPixels=int(left),
        CroppedAreaTopPixels=int(top),
        PoseHeadingDegrees=heading,
    )


def panorama_gpano(width: int, height: int, heading: float | None = None) -> tuple[GPano, str]:
    """GPano values for a saved image of any shape, and a warning text (empty for 2:1): a full 2:1
    panorama, or a centred crop of the smallest 2:1 panorama containing it (tagged partial)."""
    if width == 2 * height:
        return gpano_for_image(width, height, heading=heading), ""
    full_w = max(width, 2 * height)
    warning = (
        f"image is {width}x{height}, not 2:1: tagged as a partial panorama (crop of {full_w}x{full_w // 2})"
    )
    return gpano_for_image(width, height, full_width=full_w, heading=heading), warning


def build_xmp(gpano: GPano) -> str:
    """A complete XMP packet (``<?xpacket ...?>`` wrapped) holding the GPano properties."""
    props = []
    for f in fields(gpano):
        value = getattr(gpano, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "True" if value else "False"
        elif isinstance(value, float):
            text = f"{value:.6g}"
        else:
            text = str(value)
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
        props.append(f'   GPano:{f.name}="{text}"')
    attrs = "\n".join(props)
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="{X_NS}" x:xmptk="Pano360">\n'
        f' <rdf:RDF xmlns:rdf="{RDF_NS}">\n'
        '  <rdf:Description rdf:about=""\n'
        f'   xmlns:GPano="{GPANO_NS}"\n'
        f"{attrs}/>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )


def parse_gpano(xmp: str | bytes) -> dict:
    """Read the GPano properties from an XMP packet into a dict (ints, floats, bools typed).

    Accepts both attribute form (``GPano:X="1"``) and element form (``<GPano:X>1</GPano:X>``).
    Returns an empty dict when the packet has no GPano properties.
    """
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", errors="replace")
    xmp = xmp.lstrip("\ufeff")
    # ElementTree does not accept processing instructions before the root element; cut them.
    body = re.sub(r"<\?xpacket[^>]*\?>", "", xmp).strip()
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise PanoInputError(f"xmp: not a valid XMP packet ({e})") from e
    out: dict = {}
    prefix = "{" + GPANO_NS + "}"
    for el in root.iter():
        for k, v in el.attrib.items():
            if k.startswith(prefix):
                out[k[len(prefix) :]] = v
        if el.tag.startswith(prefix) and el.text is not None:
            out[el.tag[len(prefix) :]] = el.text.strip()
    typed: dict = {}
    for k, v in out.items():
        if k in _INT_FIELDS:
            try:
                typed[k] = int(float(v))
            except ValueError as e:
                raise PanoInputError(f"xmp: GPano:{k} is not a number: {v!r}") from e
        elif k == "UsePanoramaViewer":
            typed[k] = v.strip().lower() == "true"
        elif k.endswith("Degrees"):
            typed[k] = float(v)
        else:
            typed[k] = v
    return typed


# ----------------------------------------------------------------------------------------- PNG


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data.startswith(PNG_SIGNATURE):
        raise PanoInputError("image: not a PNG file (bad signature)")
    chunks = []
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        if pos + 12 + length > len(data):
            raise PanoInputError("image: truncated PNG file")
        chunks.append((ctype, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if ctype == b"IEND":
            break
    if not chunks or chunks[-1][0] != b"IEND":
        raise PanoInputError("image: truncated PNG file (no IEND chunk)")
    return chunks


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(ctype + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


def _png_text_keyword(ctype: bytes, payload: bytes) -> str | None:
    if ctype in (b"tEXt", b"iTXt", b"zTXt"):
        return payload.split(b"\x00", 1)[0].decode("latin-1")
    return None


def _itxt_payload(keyword: str, text: str, compress: bool = False) -> bytes:
    body = text.encode("utf-8")
    if compress:
        body = zlib.compress(body)
    return keyword.encode("latin-1") + b"\x00" + bytes([1 if compress else 0, 0]) + b"\x00\x00" + body


def _decode_text_chunk(ctype: bytes, payload: bytes) -> tuple[str, str]:
    key, rest = payload.split(b"\x00", 1)
    if ctype == b"tEXt":
        return key.decode("latin-1"), rest.decode("latin-1")
    if ctype == b"zTXt":
        return key.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
    comp_flag, _method = rest[0], rest[1]
    rest = rest[2:]
    _lang, rest = rest.split(b"\x00", 1)
    _tkey, text = rest.split(b"\x00", 1)
    if comp_flag:
        text = zlib.decompress(text)
    return key.decode("latin-1"), text.decode("utf-8")


def png_text(data: bytes) -> dict[str, str]:
    """All text chunks (tEXt, zTXt, iTXt) of a PNG file as {keyword: text}."""
    out = {}
    for ctype, payload in _png_chunks(data):
        if ctype in (b"tEXt", b"iTXt", b"zTXt"):
            k, v = _decode_text_chunk(ctype, payload)
            out[k] = v
    return out


def png_set_text(data: bytes, texts: dict[str, str], itxt: bool = False) -> bytes:
    """Return the PNG with text chunks set (replacing same-keyword chunks), before the first IDAT.

    ``itxt`` writes UTF-8 ``iTXt`` chunks; otherwise Latin-1 ``tEXt`` (what ComfyUI's SaveImage
    writes for ``prompt`` and ``workflow``; JSON from ``json.dumps`` is ASCII).
    """
    chunks = _png_chunks(data)
    keep = [(t, p) for t, p in chunks if _png_text_keyword(t, p) not in texts]
    new = []
    for k, v in texts.items():
        if itxt:
            new.append((b"iTXt", _itxt_payload(k, v)))
        else:
            new.append((b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1")))
    idat = next(i for i, (t, _) in enumerate(keep) if t == b"IDAT")
    keep[idat:idat] = new
    return PNG_SIGNATURE + b"".join(_png_chunk(t, p) for t, p in keep)


def png_embed_xmp(data: bytes, xmp: str) -> bytes:
    """Return the PNG with its XMP packet (iTXt ``XML:com.adobe.xmp``) replaced by ``xmp``."""
    return png_set_text(data, {XMP_PNG_KEYWORD: xmp}, itxt=True)


def png_read_xmp(data: bytes) -> str | None:
    return png_text(data).get(XMP_PNG_KEYWORD)


# ---------------------------------------------------------------------------------------- JPEG


def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split a JPEG into its header segments [(marker, payload)] and the rest (from SOS on)."""
    if not data.startswith(b"\xff\xd8"):
        raise PanoInputError("image: not a JPEG file (no SOI marker)")
    segs = []
    pos = 2
    while True:
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise PanoInputError("image: damaged JPEG header")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # SOS or EOI: the rest is entropy-coded data
            return segs, data[pos:]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2 or pos + 2 + length > len(data):
            raise PanoInputError("image: truncated JPEG segment")
        segs.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length


def _jpeg_join(segs: list[tuple[int, bytes]], rest: bytes) -> bytes:
    out = [b"\xff\xd8"]
    for marker, payload in segs:
        if len(payload) + 2 > 0xFFFF:
            raise PanoInputError(f"image: JPEG segment 0x{marker:02X} too large ({len(payload)} bytes)")
        out.append(bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload)
    out.append(rest)
    return b"".join(out)


def jpeg_embed_xmp(data: bytes, xmp: str) -> bytes:
    """Return the JPEG with its XMP APP1 segment replaced by ``xmp`` (pixels untouched)."""
    payload = XMP_JPEG_HEADER + xmp.encode("utf-8")
    if len(payload) > _JPEG_MAX_SEGMENT_PAYLOAD:
        raise PanoInputError(f"xmp: packet too large for one JPEG APP1 segment ({len(payload)} bytes)")
    segs, rest = _jpeg_segments(data)
    segs = [(m, p) for m, p in segs if not (m == 0xE1 and p.startswith(XMP_JPEG_HEADER))]
    at = 0
    while at < len(segs) and (
        segs[at][0] == 0xE0 or (segs[at][0] == 0xE1 and segs[at][1].startswith(b"Exif\x00"))
    ):
        at += 1
    segs.insert(at, (0xE1, payload))
    return _jpeg_join(segs, rest)


def jpeg_read_xmp(data: bytes) -> str | None:
    segs, _ = _jpeg_segments(data)
    for m, p in segs:
        if m == 0xE1 and p.startswith(XMP_JPEG_HEADER):
            return p[len(XMP_JPEG_HEADER) :].decode("utf-8", errors="replace")
    return None


def jpeg_comments(data: bytes) -> list[str]:
    """The COM segments of a JPEG, decoded as UTF-8."""
    segs, _ = _jpeg_segments(data)
    return [p.decode("utf-8", errors="replace") for m, p in segs if m == 0xFE]


# ------------------------------------------------------------------------------------- generic


def image_kind(data: bytes) -> str:
    """'png' or 'jpeg' from the file's magic bytes (raises otherwise)."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    raise PanoInputError("image: expected a PNG or JPEG file (GPano XMP can be written to these only)")


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the PNG IHDR or the JPEG SOFn header."""
    kind = image_kind(data)
    if kind == "png":
        ctype, ihdr = _png_chunks(data)[0]
        if ctype != b"IHDR":
            raise PanoInputError("image: PNG without IHDR")
        w, h = struct.unpack(">II", ihdr[:8])
        return int(w), int(h)
    segs, _ = _jpeg_segments(data)
    for m, p in segs:
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", p[1:5])
            return int(w), int(h)
    raise PanoInputError("image: JPEG without a frame header (SOF)")


def embed_xmp(data: bytes, xmp: str) -> bytes:
    """Embed (replace) the XMP packet of a PNG or JPEG file given as bytes."""
    return png_embed_xmp(data, xmp) if image_kind(data) == "png" else jpeg_embed_xmp(data, xmp)


def read_xmp(data: bytes) -> str | None:
    """The XMP packet of a PNG or JPEG file given as bytes, or None."""
    return png_read_xmp(data) if image_kind(data) == "png" else jpeg_read_xmp(data)


def read_gpano(data: bytes) -> dict:
    """The GPano properties of a PNG or JPEG file given as bytes ({} when none)."""
    xmp = read_xmp(data)
    return parse_gpano(xmp) if xmp else {}
