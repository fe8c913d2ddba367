"""The shared argparse helpers of the ``pano360`` subcommands (pano_core/cli/_args.py)."""

from __future__ import annotations

import argparse

import pytest

from pano_core.cli import _args, build_parser, main
from pano_core.errors import PanoInputError


@pytest.mark.parametrize(
    "fn, good, bad",
    [
        (_args.positive_int, [("1", 1), ("2048", 2048)], ["0", "-3", "1.5", "x", ""]),
        (_args.nonneg_int, [("0", 0), ("7", 7)], ["-1", "2.0", "nan"]),
        (_args.finite_float, [("2.8", 2.8), ("-1e3", -1000.0)], ["nan", "inf", "-inf", "abc"]),
        (_args.fraction, [("0", 0.0), ("1", 1.0), ("0.25", 0.25)], ["1.01", "-0.1", "nan"]),
        (_args.angle, [("-90", -90.0), ("720", 720.0)], ["nan", "inf", "north"]),
        (_args.size_wh, [("640x480", (640, 480)), (" 16 X 8 ", (16, 8))], ["0x10", "10x0", "640", "axb", "-1x2"]),
    ],
)
def test_argument_types(fn, good, bad):
    for text, value in good:
        assert fn(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            fn(text)


def test_check_image_output(tmp_path):
    out = tmp_path / "a.png"
    assert _args.check_image_output(str(out), False) == out
    with pytest.raises(PanoInputError, match="unsupported file type '.txt'"):
        _args.check_image_output(str(tmp_path / "a.txt"), True)
    out.write_bytes(b"x")
    with pytest.raises(PanoInputError, match="already exists; pass --force"):
        _args.check_image_output(str(out), False)
    assert _args.check_image_output(str(out), True) == out
    assert not (tmp_path / "sub").exists()
    _args.check_image_output(str(tmp_path / "sub" / "b.png"), False)
    assert not (tmp_path / "sub").exists()  # a check creates nothing


def test_check_not_input(tmp_path):
    src = tmp_path / "in.png"
    with pytest.raises(PanoInputError, match="is the input"):
        _args.check_not_input(str(src), str(tmp_path / "." / "in.png"), False)
    assert _args.check_not_input(str(src), str(src), True) == src
    assert _args.check_not_input(str(src), str(tmp_path / "out.png"), False) == tmp_path / "out.png"


def test_subcommands_use_the_shared_types(capsys):
    """A bad value is an argparse usage error (exit 2) with the shared message in every subcommand."""
    cases = [
        (["generate", "--prompt", "p", "-o", "x.png", "--steps", "0"], "expected a positive integer"),
        (["generate", "--prompt", "p", "-o", "x.png", "--view-yaw", "nan"], "expected a finite angle"),
        (["edit", "--mode", "inpaint", "--image", "a", "--mask", "b", "--prompt", "p", "-o", "x.png",
          "--tau", "2"], "expected a number in [0, 1]"),
        (["edit", "--mode", "inpaint", "--image", "a", "--mask", "b", "--prompt", "p", "-o", "x.png",
          "--lora-scale", "inf"], "expected a finite number"),
        (["e2p", "in.png", "-o", "x.png", "--yaw", "inf"], "expected a finite angle"),
        (["e2p", "in.png", "-o", "x.png", "--size", "0x5"], "WIDTHxHEIGHT"),
        (["e2c", "in.png", "-o", "x.png", "--face-size", "-2"], "expected a positive integer"),
        (["tag", "in.png", "-o", "x.png", "--heading", "nan"], "expected a finite angle"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_private_modules_are_not_subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert not any(name.startswith("_") for name in sub.choices)
    for name in ("generate", "edit", "e2c", "c2e", "e2p", "p2e", "rotate", "blend-seams", "blend-wrap", "tag"):
        assert name in sub.choices
