"""``pano360 tag IN -o OUT``: add Google Photo Sphere (GPano) XMP to an existing PNG or JPEG.

The pixels are not re-encoded: the XMP packet is inserted into (or replaces the one in) the
file's bytes, and every other chunk/segment (ComfyUI's ``prompt``/``workflow`` text, EXIF,
ICC profiles) is kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PanoInputError
from ..io import check_writable
from ..xmp import build_xmp, embed_xmp, gpano_for_image, image_size, read_gpano
from ._args import add_force, angle


def _run(args: argparse.Namespace) -> int:
    src = Path(args.input)
    if not src.is_file():
        raise PanoInputError(f"IN: file not found: {src}")
    out = Path(args.output)
    if out.suffix.lower() != src.suffix.lower() and not (
        {out.suffix.lower(), src.suffix.lower()} <= {".jpg", ".jpeg"}
    ):
        raise PanoInputError(
            f"-o: the output keeps the input's format; use a {src.suffix} name, not {out.name}"
        )
    data = src.read_bytes()
    width, height = image_size(data)
    gp = gpano_for_image(
        width,
        height,
        full_width=args.full_width,
        full_height=args.full_height,
        left=args.left,
        top=args.top,
        heading=args.heading,
    )
    tagged = embed_xmp(data, build_xmp(gp))
    check_writable(out, force=args.force, name="-o")
    out.write_bytes(tagged)
    if not args.quiet:
        back = read_gpano(tagged)
        print(
            f"{out}: GPano {back['ProjectionType']} {back['CroppedAreaImageWidthPixels']}x"
            f"{back['CroppedAreaImageHeightPixels']} of {back['FullPanoWidthPixels']}x{back['FullPanoHeightPixels']}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    src = Path(args.input)
    if not src.is_file():
        raise PanoInputError(f"IN: file not found: {src}")
    gp = read_gpano(src.read_bytes())
    if not gp:
        print(f"{src}: no GPano metadata")
        return 1
    for k, v in gp.items():
        print(f"{k}={v}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tag",
        help="add 360° (GPano XMP) metadata to a PNG/JPEG panorama",
        description="Write Google Photo Sphere XMP (ProjectionType equirectangular, full/cropped sizes) "
        "into a copy of a PNG or JPEG file without re-encoding it. Refuses to overwrite unless --force.",
    )
    p.add_argument("input", metavar="IN", help="PNG or JPEG file")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (same format as IN)")
    add_force(p, "overwrite OUT if it exists")
    p.add_argument(
        "--heading", type=angle, default=None, help="PoseHeadingDegrees (compass heading of the centre)"
    )
    p.add_argument(
        "--full-width", type=int, default=None, help="width of the full panorama when IN is only a crop of it"
    )
    p.add_argument(
        "--full-height", type=int, default=None, help="height of the full panorama (default width/2)"
    )
    p.add_argument(
        "--left", type=int, default=None, help="crop position in the full panorama (default centred)"
    )
    p.add_argument(
        "--top", type=int, default=None, help="crop position in the full panorama (default centred)"
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_run)

    s = subparsers.add_parser("tag-show", help="print the GPano XMP metadata of a PNG/JPEG file")
    s.add_argument("input", metavar="IN")
    s.set_defaults(func=_show)
