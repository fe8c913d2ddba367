"""GPano XMP: build/parse, PNG/JPEG embedding, independent readers (Pillow, raw XML), `pano360 tag`."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pano_core.cli import main as cli_main
from pano_core.errors import PanoInputError
from pano_core.xmp import (
    GPANO_NS,
    XMP_PNG_KEYWORD,
    build_xmp,
    embed_xmp,
    gpano_for_image,
    image_size,
    jpeg_read_xmp,
    panorama_gpano,
    parse_gpano,
    png_set_text,
    png_text,
    read_gpano,
    read_xmp,
)

ASSETS = Path(__file__).parent / "assets"


def _png_bytes(w=64, h=32, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue(), arr


def _jpeg_bytes(w=64, h=32, seed=0, exif=False):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    kw = {}
    if exif:
        ex = im.getexif()
        ex[0x010F] = "test-make"
        kw["exif"] = ex
    im.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def test_build_parse_roundtrip_values():
    gp = gpano_for_image(3000, 1000, full_width=4000, left=500, top=250, heading=-30)
    back = parse_gpano(build_xmp(gp))
    assert back == {
        "FullPanoWidthPixels": 4000,
        "FullPanoHeightPixels": 2000,
        "CroppedAreaImageWidthPixels": 3000,
        "CroppedAreaImageHeightPixels": 1000,
        "CroppedAreaLeftPixels": 500,
        "CroppedAreaTopPixels": 250,
        "ProjectionType": "equirectangular",
        "UsePanoramaViewer": True,
        "PoseHeadingDegrees": 330.0,
    }


def test_parse_element_form_and_no_gpano():
    xmp = (
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:GPano="{GPANO_NS}"><GPano:FullPanoWidthPixels>512</GPano:FullPanoWidthPixels>'
        "<GPano:UsePanoramaViewer>False</GPano:UsePanoramaViewer></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    assert parse_gpano(xmp) == {"FullPanoWidthPixels": 512, "UsePanoramaViewer": False}
    assert parse_gpano('<x:xmpmeta xmlns:x="adobe:ns:meta/"/>') == {}
    with pytest.raises(PanoInputError, match="xmp"):
        parse_gpano("<not xml")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(width=300, height=100), "2:1"),
        (dict(width=300, height=100, full_width=200), "larger"),
        (dict(width=100, height=50, full_width=400, left=350), "left"),
        (dict(width=100, height=50, full_width=400, full_height=300), "2:1"),
        (dict(width=100, height=50, top=3), "full_width"),
    ],
)
def test_gpano_for_image_rejects(kwargs, match):
    with pytest.raises(PanoInputError, match=match):
        gpano_for_image(**kwargs)


def test_png_embed_keeps_text_and_pixels_and_pillow_reads_it():
    data, arr = _png_bytes()
    data = png_set_text(data, {"prompt": json.dumps({"1": {"class_type": "X"}}), "workflow": '{"nodes": []}'})
    gp = gpano_for_image(64, 32, heading=12.5)
    tagged = embed_xmp(data, build_xmp(gp))
    # re-embedding replaces, never duplicates
    tagged = embed_xmp(tagged, build_xmp(gp))
    assert tagged.count(XMP_PNG_KEYWORD.encode()) == 1
    assert read_gpano(tagged) == {**gp.as_dict(), "PoseHeadingDegrees": 12.5}
    texts = png_text(tagged)
    assert json.loads(texts["prompt"]) == {"1": {"class_type": "X"}}
    assert texts["workflow"] == '{"nodes": []}'
    im = Image.open(io.BytesIO(tagged))
    im.load()
    np.testing.assert_array_equal(np.asarray(im), arr)
    # independent reader 1: Pillow's own chunk parser + plain ElementTree
    raw = im.info[XMP_PNG_KEYWORD]
    root = ET.fromstring(raw.split("?>", 1)[1].rsplit("<?xpacket", 1)[0])
    desc = next(root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description"))
    assert desc.attrib[f"{{{GPANO_NS}}}ProjectionType"] == "equirectangular"
    assert desc.attrib[f"{{{GPANO_NS}}}FullPanoWidthPixels"] == "64"
    assert im.info["prompt"].startswith("{")


def test_pillow_getxmp_sees_gpano():
    import defusedxml  # noqa: F401  (Pillow's getxmp returns {} without it)
    data, _ = _png_bytes(80, 40)
    tagged = embed_xmp(data, build_xmp(gpano_for_image(80, 40)))
    x = Image.open(io.BytesIO(tagged)).getxmp()
    desc = x["xmpmeta"]["RDF"]["Description"]
    assert desc["ProjectionType"] == "equirectangular"
    assert desc["CroppedAreaImageWidthPixels"] == "80"
    jt = embed_xmp(_jpeg_bytes(80, 40), build_xmp(gpano_for_image(80, 40)))
    desc = Image.open(io.BytesIO(jt)).getxmp()["xmpmeta"]["RDF"]["Description"]
    assert desc["FullPanoHeightPixels"] == "40"
    assert desc["UsePanoramaViewer"] == "True"


@pytest.mark.parametrize("exif", [False, True])
def test_jpeg_embed_is_lossless_and_readable(exif):
    data = _jpeg_bytes(exif=exif)
    gp = gpano_for_image(64, 32)
    tagged = embed_xmp(embed_xmp(data, build_xmp(gp)), build_xmp(gp))
    assert tagged.count(b"http://ns.adobe.com/xap/1.0/\x00") == 1
    # entropy-coded data is byte-identical: no re-encode
    sos = data.index(b"\xff\xda")
    assert tagged.endswith(data[sos:])
    assert read_gpano(tagged) == {k: v for k, v in gp.as_dict().items() if v is not None}
    im = Image.open(io.BytesIO(tagged))
    assert "GPano:ProjectionType" in im.info["xmp"].decode()
    np.testing.assert_array_equal(np.asarray(im), np.asarray(Image.open(io.BytesIO(data))))
    if exif:
        assert im.getexif()[0x010F] == "test-make"
        # EXIF APP1 must stay the first APP1 (readers expect it there)
        assert tagged.index(b"Exif\x00") < tagged.index(b"http://ns.adobe.com/xap/1.0/")
    assert image_size(tagged) == (64, 32)


def test_not_an_image():
    with pytest.raises(PanoInputError, match="PNG or JPEG"):
        read_xmp(b"GIF89a....")
    with pytest.raises(PanoInputError, match="truncated"):
        read_xmp(_png_bytes()[0][:60])
    assert jpeg_read_xmp(_jpeg_bytes()) is None


def test_cli_tag_png_and_jpeg(tmp_path, capsys):
    src = ASSETS / "labeled_cube_erp.png"
    out = tmp_path / "tagged.png"
    assert cli_main(["tag", str(src), "-o", str(out), "--heading", "90"]) == 0
    w, h = Image.open(src).size
    gp = read_gpano(out.read_bytes())
    assert gp["FullPanoWidthPixels"] == w and gp["FullPanoHeightPixels"] == h
    assert gp["PoseHeadingDegrees"] == 90.0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(src)))
    # refuses to overwrite without --force
    assert cli_main(["tag", str(src), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["tag", str(src), "-o", str(out), "--force", "--heading", "10"]) == 0
    assert read_gpano(out.read_bytes())["PoseHeadingDegrees"] == 10.0
    assert cli_main(["tag-show", str(out)]) == 0
    assert "ProjectionType=equirectangular" in capsys.readouterr().out

    jsrc = tmp_path / "in.jpg"
    jsrc.write_bytes(_jpeg_bytes(120, 40))
    jout = tmp_path / "out.jpg"
    # 3:1 crop of a 240x120 panorama
    assert cli_main(["tag", str(jsrc), "-o", str(jout), "--full-width", "240", "--top", "10"]) == 0
    gp = read_gpano(jout.read_bytes())
    assert (gp["CroppedAreaLeftPixels"], gp["CroppedAreaTopPixels"], gp["FullPanoHeightPixels"]) == (
        60,
        10,
        120,
    )


def test_cli_tag_bad_inputs(tmp_path, capsys):
    jsrc = tmp_path / "wide.jpg"
    jsrc.write_bytes(_jpeg_bytes(90, 30))
    assert cli_main(["tag", str(jsrc), "-o", str(tmp_path / "o.jpg")]) == 2
    assert "2:1" in capsys.readouterr().err
    assert not (tmp_path / "o.jpg").exists()
    assert cli_main(["tag", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli_main(["tag", str(jsrc), "-o", str(tmp_path / "o.png")]) == 2
    assert "format" in capsys.readouterr().err


def test_panorama_gpano_full_or_partial():
    gp, warning = panorama_gpano(200, 100, heading=370.0)
    assert warning == "" and gp.FullPanoWidthPixels == 200 and gp.PoseHeadingDegrees == 10.0
    gp, warning = panorama_gpano(300, 100)
    assert "not 2:1" in warning and (gp.FullPanoWidthPixels, gp.FullPanoHeightPixels) == (300, 150)
    assert (gp.CroppedAreaLeftPixels, gp.CroppedAreaTopPixels) == (0, 25)
    gp, _ = panorama_gpano(100, 100)
    assert (gp.FullPanoWidthPixels, gp.CroppedAreaLeftPixels) == (200, 50)
