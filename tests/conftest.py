"""Shared pytest fixtures of Pano360.

- ``comfy`` (session): a real ComfyUI server (tests/comfy_harness.py ``ComfyServer``) with this
  pack and the test pack loaded; stopped (by PID) at the end of the session even on failure.
  If ComfyUI is missing, tests using it FAIL with the set-up hint (nothing is skipped).
  To reuse a running harness server across pytest runs: ``python tests/comfy_harness.py serve``
  and export the PANO360_COMFY_URL / PANO360_COMFY_BASE it prints.
  Its folder (``comfyui.log``, outputs) lives under pytest's basetemp (kept for the last runs).
- ``comfy_inprocess`` (session): ComfyUI importable in this process (folder on sys.path,
  ``--cpu``); returns the ComfyUI folder.
- ``tiny_models`` (session): tests/comfy_test_nodes/tiny_models.py imported in-process
  (implies ``comfy_inprocess``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_harness  # noqa: E402


def _shield_root_package() -> None:
    """The repo root has an ``__init__.py`` (the ComfyUI entry point, which imports ComfyUI
    modules), so pytest treats the root as a package and imports that file when setting up
    any test. Register a placeholder under the module name pytest uses, so tests that do not
    need ComfyUI never import the ComfyUI entry point (the server tests load it for real)."""
    import types

    root = comfy_harness.REPO_ROOT
    if not (root / "__init__.py").is_file():
        return
    top = root
    while (top.parent / "__init__.py").is_file():
        top = top.parent
    name = ".".join([top.name, *root.relative_to(top).parts])
    if name not in sys.modules:
        mod = types.ModuleType(name, "placeholder for the Pano360 ComfyUI entry point (see tests/conftest.py)")
        mod.__file__ = str(root / "__init__.py")
        mod.__path__ = [str(root)]
        sys.modules[name] = mod


_shield_root_package()


def _use_checkout_training_package() -> None:
    """Tests import this checkout's ``training/`` as ``pano360_training`` (the name pip installs
    it under), also when the installed copy is another checkout's (worktrees) or not installed."""
    import importlib.util

    root = (comfy_harness.REPO_ROOT / "training").resolve()
    spec = importlib.util.find_spec("pano360_training")
    if spec is not None and spec.origin and Path(spec.origin).resolve().parent == root:
        return
    spec = importlib.util.spec_from_file_location(
        "pano360_training", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pano360_training"] = mod
    spec.loader.exec_module(mod)


_use_checkout_training_package()


@pytest.fixture(scope="session")
def training_env(tmp_path_factory) -> dict:
    """Environment for subprocesses (``python -m pano360_training``, ``accelerate launch``) that
    resolves ``pano360_training`` and ``pano_core`` to this checkout."""
    d = tmp_path_factory.mktemp("training_path")
    (d / "pano360_training").symlink_to(comfy_harness.REPO_ROOT / "training", target_is_directory=True)
    env = dict(os.environ)
    parts = [str(d), str(comfy_harness.REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    try:
        comfy_harness.check_comfyui()
    except comfy_harness.ComfyHarnessError as e:
        pytest.fail(str(e), pytrace=False)
    url = os.environ.get("PANO360_COMFY_URL")
    if url:  # reuse a server from `python tests/comfy_harness.py serve`
        base = os.environ.get("PANO360_COMFY_BASE")
        if not base:
            pytest.fail("PANO360_COMFY_URL needs PANO360_COMFY_BASE (the server's base folder)", pytrace=False)
        try:
            yield comfy_harness.ComfyServer(base_dir=base).attach(url)
        except comfy_harness.ComfyHarnessError as e:
            pytest.fail(f"could not use the ComfyUI at {url}: {e}", pytrace=False)
        return
    base = tmp_path_factory.mktemp("comfy")
    server = comfy_harness.ComfyServer(base_dir=base)
    try:
        server.start()
    except comfy_harness.ComfyHarnessError as e:
        server.stop()
        pytest.fail(f"could not start ComfyUI: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def setup_comfy_inprocess() -> Path:
    """Make ComfyUI importable here (CPU mode). Idempotent; returns the ComfyUI folder."""
    path = comfy_harness.check_comfyui()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401

    return path


@pytest.fixture(scope="session")
def comfy_inprocess():
    try:
        return setup_comfy_inprocess()
    except comfy_harness.ComfyHarnessError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def tiny_models(comfy_inprocess):
    d = str(comfy_harness.TEST_NODES_DIR)
    if d not in sys.path:
        sys.path.insert(0, d)
    import tiny_models as tm

    return tm


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    """A tiny random FLUX.1 pipeline saved in diffusers layout (tests/tiny_diffusers.py)."""
    import tiny_diffusers as td

    return td.save_tiny_flux_pipeline(tmp_path_factory.mktemp("tiny_flux") / "flux", seed=0)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """A tiny prepared training set (tests/training_helpers.py)."""
    import training_helpers

    return training_helpers.make_prepared_set(tmp_path_factory.mktemp("train_data"))
