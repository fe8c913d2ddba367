"""``pano360 blend-seams``, ``pano360 blend-wrap`` and ``pano360 seam-metrics``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import PanoInputError
from ._args import add_force, check_not_input, nonneg_int, positive_int

IN_FORMATS = ("auto", "erp", "horizon", "dice", "stack", "dict")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "blend-seams",
        help="cross-face Poisson blending of a cubemap (JoPano) so the faces agree along all edges",
        description=(
            "Blend the six faces of a cubemap along the 12 cube edges: per face a Poisson equation "
            "with the face's own Laplacian as guidance and the average of the faces meeting at each "
            "edge pixel as boundary. IN is a folder of F R B L U D images, a layout image "
            "(horizon 6:1, dice 4:3, stack 1:6) or an equirectangular panorama (2:1; converted to a "
            "cubemap, blended and converted back, which resamples it twice). The output has the "
            "input's form unless --out-format says otherwise."
        ),
    )
    p.add_argument("input", help="cubemap folder, cubemap layout image or ERP image")
    p.add_argument("-o", "--output", required=True, help="output file (or folder for dict/list)")
    p.add_argument("--method", choices=("gauss-seidel", "exact"), default="gauss-seidel",
                   help="gauss-seidel (the paper's solver, default) or exact (direct DST-I solve)")
    p.add_argument("--iterations", type=nonneg_int, default=200, help="Gauss-Seidel sweeps (200)")
    p.add_argument("--format", choices=IN_FORMATS, default="auto", help="input form (auto: from the file)")
    p.add_argument("--out-format", choices=("same", "erp", "horizon", "dice", "stack", "dict"), default="same",
                   help="output form (same as the input by default)")
    p.add_argument("--keep", default=None, help="faces to keep unchanged, e.g. F or F,U (their edges become the boundary)")
    p.add_argument("--face-size", type=nonneg_int, default=0, help="face size for an ERP input (0: width / 4)")
    p.add_argument("--bits", type=int, choices=(8, 16), default=None, help="output bit depth (default: input's)")
    add_force(p, "overwrite existing output files")
    p.set_defaults(func=run_blend)

    w = subparsers.add_parser(
        "blend-wrap",
        help="remove a visible 0/360 degree seam of an equirectangular panorama",
        description=(
            "Blend an ERP across its left/right wrap (Poisson or feathered) over BAND columns on "
            "each side; all other pixels stay bit-identical."
        ),
    )
    w.add_argument("input", help="equirectangular panorama (2:1 image)")
    w.add_argument("-o", "--output", required=True, help="output image file")
    w.add_argument("--method", choices=("poisson", "feather"), default="poisson")
    w.add_argument("--band", type=positive_int, default=32, help="columns changed on each side of the wrap (32)")
    w.add_argument("--bits", type=int, choices=(8, 16), default=None, help="output bit depth (default: input's)")
    add_force(w, "overwrite the output if it exists")
    w.set_defaults(func=run_wrap)

    m = subparsers.add_parser(
        "seam-metrics",
        help="Seam-SSIM, Seam-Sobel, seam jump, pole and wrap-seam metrics as JSON",
        description=(
            "Print seam metrics of a panorama as JSON: seam_ssim (higher is better), seam_sobel and "
            "seam_jump (lower is better; means over the 12 cube edges), pole_seam_jump / "
            "pole_seam_ssim (the 8 edges of the U and D faces), wrap_seam (about 1 = seamless), "
            "and per-edge values under 'edges'. An ERP is converted to a cubemap first."
        ),
    )
    m.add_argument("input", help="ERP image, cubemap layout image or folder of F R B L U D images")
    m.add_argument("--format", choices=IN_FORMATS, default="auto", help="input form (auto: from the file)")
    m.add_argument("--band", type=positive_int, default=8, help="Seam-SSIM band width in pixels (8)")
    m.add_argument("--face-size", type=nonneg_int, default=0, help="face size for an ERP input (0: width / 4)")
    m.add_argument("--indent", type=nonneg_int, default=2, help="JSON indent (2; 0 for one line)")
    m.set_defaults(func=run_metrics)


def _read_any(path: str, fmt: str):
    """-> (kind 'erp' or a cubemap layout, tensor, bits). ERP: (1, C, H, W); cubemap: (6, C, S, S)."""
    from ..geometry import guess_layout, read_cubemap
    from ..io import image_bits, read_image
    from ..validate import check_erp

    p = Path(path)
    if not p.exists():
        raise PanoInputError(f"input: {p} not found")
    if p.is_dir():
        if fmt not in ("auto", "dict"):
            raise PanoInputError(f"input: {p} is a folder, which holds a dict cubemap (F.png ... D.png), not {fmt}")
        faces, bits = read_cubemap(p, "dict", "input")
        return "dict", faces, bits
    if fmt == "dict":
        raise PanoInputError(f"input: --format dict expects a folder of F R B L U D images, got the file {p}")
    img = read_image(p, "input")
    h, w = img.shape[-2:]
    if fmt == "erp" or (fmt == "auto" and w == 2 * h):
        return "erp", check_erp(img, "input"), image_bits(p)
    layout = fmt if fmt != "auto" else guess_layout(h, w)
    if layout is None:
        raise PanoInputError(
            f"input: cannot tell the form of a {w}x{h} image; expected an ERP (2:1) or a cubemap layout "
            "(horizon 6:1, dice 4:3, stack 1:6), or pass --format"
        )
    faces, bits = read_cubemap(p, layout, "input")
    return layout, faces, bits


def run_blend(args: argparse.Namespace) -> int:
    from ..geometry import c2e, check_cubemap_output, e2c, write_cubemap
    from ..io import check_writable, write_image
    from ..seams.poisson import blend_cube_faces

    out = check_not_input(args.input, args.output, args.force)
    out_fmt = args.out_format
    kind = _input_kind(args.input, args.format)
    target = kind if out_fmt == "same" else out_fmt
    if target == "erp":  # check the output before reading and computing anything
        check_writable(out, args.force)
    else:
        check_cubemap_output(out, target, args.force)
    kind, x, bits = _read_any(args.input, args.format)
    bits = args.bits or bits
    if kind == "erp":
        h, w = x.shape[-2:]
        faces = e2c(x, face_size=args.face_size or None)
    else:
        faces = x
    del x
    blended = blend_cube_faces(faces, method=args.method, iterations=args.iterations, keep=args.keep)
    del faces
    blended.clamp_(0, 1)
    if target == "erp":
        res = c2e(blended, height=h, width=w) if kind == "erp" else c2e(blended)
        del blended
        write_image(out, res, bits=bits, force=args.force)
    else:
        write_cubemap(out, blended, target, bits=bits, force=args.force)
    print(f"blend-seams: {args.method} -> {out}", file=sys.stderr)
    return 0


def _input_kind(path: str, fmt: str) -> str:
    """The form of the input from the header only (erp or a cubemap layout), as _read_any decides."""
    from ..geometry import guess_layout
    from ..io import probe_image

    p = Path(path)
    if not p.exists():
        raise PanoInputError(f"input: {p} not found")
    if p.is_dir():
        return "dict"
    if fmt not in ("auto", "dict"):
        return fmt
    if fmt == "dict":
        return "dict"  # _read_any explains the error
    w, h, _, orient = probe_image(p, "input")
    if orient >= 5:
        w, h = h, w
    return "erp" if w == 2 * h else (guess_layout(h, w) or "erp")


def run_wrap(args: argparse.Namespace) -> int:
    from ..io import check_writable, image_bits, read_image, write_image
    from ..seams.wrap import blend_erp_wrap

    out = check_not_input(args.input, args.output, args.force)
    check_writable(out, args.force)
    erp = read_image(args.input, "input")
    res = blend_erp_wrap(erp, band=args.band, method=args.method)
    write_image(out, res, bits=args.bits or image_bits(args.input), force=args.force)
    print(f"blend-wrap: {args.method}, band {args.band} -> {out}", file=sys.stderr)
    return 0


def run_metrics(args: argparse.Namespace) -> int:
    from ..seams.metrics import seam_metrics

    kind, x, _ = _read_any(args.input, args.format)
    if kind == "erp":
        m = seam_metrics(x, "erp", band=args.band, face_size=args.face_size or None)
    else:
        m = seam_metrics(x, "stack", band=args.band)
        m["input"] = kind
    print(json.dumps(m, indent=args.indent or None))
    return 0
