"""``pano360 e2c | c2e | e2p | p2e | rotate``: projection conversions of image files.

Images are read as PNG/JPEG (8- or 16-bit; 16-bit input gives 16-bit PNG output). Existing
outputs are never overwritten unless ``--force``. Bad input exits with code 2 and a message.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..budget import check_pixels
from ..errors import PanoInputError
from ..io import check_writable, image_bits, read_image, write_image
from ._args import add_force, angle, fov, positive_int, size_wh

MODES = ("nearest", "bilinear", "bicubic")
FORMATS = ("dict", "list", "horizon", "dice", "stack")


def _read_erp(path: str):
    from ..validate import check_erp

    img = read_image(path, "input panorama")
    check_erp(img, f"input panorama {path}")
    return img, image_bits(path)


def _common(p: argparse.ArgumentParser, mode: bool = True) -> None:
    if mode:
        p.add_argument("--mode", choices=MODES, default="bilinear", help="interpolation (default bilinear)")
    add_force(p, "overwrite existing output files")


def cmd_e2c(args) -> int:
    from ..geometry import check_cubemap_output, e2c, write_cubemap

    check_cubemap_output(args.output, args.format, args.force)
    img, bits = _read_erp(args.input)
    faces = e2c(img, args.face_size, args.mode, "stack")
    del img
    paths = write_cubemap(args.output, faces, args.format, bits=bits, force=args.force)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_c2e(args) -> int:
    from ..geometry import c2e, read_cubemap

    layout = args.format if args.format in ("horizon", "dice", "stack") else None
    if args.format in ("dict", "list") and not Path(args.input).is_dir():
        raise PanoInputError(f"input: --format {args.format} expects a folder of F R B L U D images, got {args.input}")
    check_writable(args.output, args.force)
    faces, bits = read_cubemap(args.input, layout, "input cubemap")
    width = args.width or 4 * faces.shape[-1]
    if width % 2:
        raise PanoInputError(f"--width: an equirectangular output needs an even width, got {width}")
    out = c2e(faces, width // 2, width, args.mode)
    del faces
    write_image(args.output, out, bits=bits, force=args.force)
    print(f"wrote {args.output}")
    return 0


def cmd_e2p(args) -> int:
    from ..geometry import e2p

    check_writable(args.output, args.force)
    img, bits = _read_erp(args.input)
    w, h = args.size
    out = e2p(img, args.fov, args.yaw, args.pitch, args.roll, (h, w), args.mode)
    write_image(args.output, out, bits=bits, force=args.force)
    print(f"wrote {args.output}")
    return 0


def cmd_p2e(args) -> int:
    from ..geometry import p2e

    check_writable(args.output, args.force)
    if args.mask_out:
        check_writable(args.mask_out, args.force, "mask output")
    img = read_image(args.input, "input image")
    bits = image_bits(args.input)
    w = img.shape[-1]
    width = args.width or 2 * max(2, round(w * 180.0 / args.fov / 2))
    if width % 2:
        raise PanoInputError(f"--width: an equirectangular output needs an even width, got {width}")
    check_pixels("--width" if args.width else "--width (from --fov and the image width)", width, width // 2,
                 "panorama")
    erp, mask = p2e(img, args.fov, args.yaw, args.pitch, args.roll, (width // 2, width), args.mode)
    write_image(args.output, erp, bits=bits, force=args.force)
    print(f"wrote {args.output}")
    if args.mask_out:
        write_image(args.mask_out, mask, bits=8, force=args.force)
        print(f"wrote {args.mask_out}")
    return 0


def cmd_rotate(args) -> int:
    from ..geometry import roll_erp, rotate_erp

    check_writable(args.output, args.force)
    img, bits = _read_erp(args.input)
    if args.exact:
        if args.pitch or args.roll:
            raise PanoInputError("--exact: only a yaw rotation can be exact (whole pixels); drop --pitch/--roll")
        out = roll_erp(img, args.yaw)
    else:
        out = rotate_erp(img, args.yaw, args.pitch, args.roll, args.mode)
    write_image(args.output, out, bits=bits, force=args.force)
    print(f"wrote {args.output}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "e2c",
        help="equirectangular panorama -> cubemap",
        description="Equirectangular (2:1) panorama -> cube faces F R B L U D (py360convert orientation). "
        "dict/list: folder OUT with F.png R.png B.png L.png U.png D.png; horizon: one 6S x S image; "
        "dice: one 4S x 3S cross; stack: one S x 6S image, faces F R B L U D from top to bottom.",
    )
    p.add_argument("input", help="ERP image (PNG/JPEG, 8/16-bit)")
    p.add_argument("--face-size", type=positive_int, default=None, help="face size in pixels (default width/4)")
    p.add_argument("--format", choices=FORMATS, default="dice", help="output layout (default dice)")
    p.add_argument("-o", "--output", required=True, help="output image, or folder for dict/list")
    _common(p)
    p.set_defaults(func=cmd_e2c)

    p = sub.add_parser(
        "c2e",
        help="cubemap -> equirectangular panorama",
        description="Cubemap -> equirectangular panorama. IN is a folder of F R B L U D images or one "
        "layout image (horizon 6:1, dice 4:3, stack 1:6; guessed from the shape unless --format is given).",
    )
    p.add_argument("input", help="folder with F.png ... D.png, or a layout image")
    p.add_argument("--format", choices=FORMATS, default=None, help="layout of IN (default: guess)")
    p.add_argument("--width", type=positive_int, default=None, help="output width (default 4 x face size)")
    p.add_argument("-o", "--output", required=True, help="output ERP image")
    _common(p)
    p.set_defaults(func=cmd_c2e)

    p = sub.add_parser("e2p", help="equirectangular panorama -> perspective view")
    p.add_argument("input", help="ERP image")
    p.add_argument("--fov", type=fov, default=90.0, help="horizontal field of view, degrees (0..180, default 90)")
    p.add_argument("--yaw", type=angle, default=0.0, help="degrees, positive turns right")
    p.add_argument("--pitch", type=angle, default=0.0, help="degrees, positive looks up")
    p.add_argument("--roll", type=angle, default=0.0, help="degrees about the viewing axis")
    p.add_argument("--size", type=size_wh, default=(512, 512), help="output WIDTHxHEIGHT (default 512x512)")
    p.add_argument("-o", "--output", required=True)
    _common(p)
    p.set_defaults(func=cmd_e2p)

    p = sub.add_parser("p2e", help="perspective view -> equirectangular panorama (+ coverage mask)")
    p.add_argument("input", help="perspective image")
    p.add_argument("--fov", type=fov, default=90.0, help="horizontal field of view of IN, degrees (0..180)")
    p.add_argument("--yaw", type=angle, default=0.0)
    p.add_argument("--pitch", type=angle, default=0.0)
    p.add_argument("--roll", type=angle, default=0.0)
    p.add_argument("--width", type=positive_int, default=None, help="output ERP width (default: about the input's resolution)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--mask-out", default=None, help="also write the coverage mask (white = covered)")
    _common(p)
    p.set_defaults(func=cmd_p2e)

    p = sub.add_parser("rotate", help="rotate an equirectangular panorama (yaw/pitch/roll)")
    p.add_argument("input", help="ERP image")
    p.add_argument("--yaw", type=angle, default=0.0)
    p.add_argument("--pitch", type=angle, default=0.0)
    p.add_argument("--roll", type=angle, default=0.0)
    p.add_argument("--exact", action="store_true", help="yaw only, by whole pixels without resampling")
    p.add_argument("-o", "--output", required=True)
    _common(p)
    p.set_defaults(func=cmd_rotate)
