"""Architecture and shared-rule checks: pano_core never imports ComfyUI (DESIGN.md section 1); one
set of int/choice checks (pano_core.validate).

Every module of ``pano_core`` is imported in a fresh interpreter in which a meta-path finder
raises on ``comfy``, ``folder_paths``, ``server`` and ``nodes`` (and their submodules), so a
module that imports one of them -- at import time -- fails here with the module's name.
``training`` (when present) must not import ``nodes`` either.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHECK = textwrap.dedent(
    '''
    import importlib, pkgutil, sys

    BLOCKED = {blocked!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"boundary: {{name}} must not be imported here")
            return None

    sys.meta_path.insert(0, Block())
    pkg = importlib.import_module({package!r})
    names = [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                              if not m.name.endswith(".__main__")]  # __main__ runs the command
    bad = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            if "boundary:" in str(e):
                bad.append(f"{{name}}: {{e}}")
            else:
                raise
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(len(names), "modules")
    assert not bad and not leaked, (bad, leaked)
    '''
)


def _run(package: str, blocked: set[str]) -> str:
    code = _CHECK.format(package=package, blocked=sorted(blocked))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_pano_core_imports_without_comfyui():
    out = _run("pano_core", {"comfy", "comfy_extras", "folder_paths", "server", "nodes", "node_helpers"})
    n = int(out.split()[0])
    assert n > 40  # every module was walked (the package has about 60)


def test_training_imports_without_comfyui_or_nodes():
    """The training package (installed as pano360_training) imports pano_core, never the nodes."""
    out = _run("training", {"comfy", "comfy_extras", "folder_paths", "server", "nodes", "node_helpers"})
    assert int(out.split()[0]) > 10


def test_the_blocker_catches_a_comfy_import(tmp_path):
    """The check itself can fail: a throwaway package importing ``folder_paths`` is reported."""
    pkg = tmp_path / "leaky"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("import folder_paths\n")
    code = _CHECK.format(package="leaky", blocked=["folder_paths"])
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "leaky.bad" in r.stderr


def test_shared_int_and_choice_checks_name_the_input():
    import pytest

    from pano_core.errors import PanoInputError
    from pano_core.validate import check_choice, check_int

    assert check_int(3, "steps", 1) == 3 and check_choice("a", "mode", ("a", "b")) == "a"
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(PanoInputError, match=r"steps: expected an integer >= 1"):
            check_int(bad, "steps", 1)
    with pytest.raises(PanoInputError, match=r"band: expected an integer >= 1 and <= 8, got 9"):
        check_int(9, "band", 1, 8)
    with pytest.raises(PanoInputError, match=r"mode: expected one of a, b, got 'c'"):
        check_choice("c", "mode", ("a", "b"))
