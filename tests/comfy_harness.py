"""Real-ComfyUI test harness for Pano360.

``ComfyServer`` starts a real ComfyUI (``main.py --cpu``, the workspace of
``scripts/workspace.py setup`` or ``$COMFYUI_PATH``) headless on a free loopback port with its
own base directory (custom_nodes/models/input/output/temp/user + sqlite db, one per test
session, never shared) holding symlinks to this repository (``comfyui-pano360``) and to the
test-only node pack ``tests/comfy_test_nodes`` (``pano360_test_nodes``). Start-up fails loudly
when either pack logs ``IMPORT FAILED`` or ``Pano360TestTinyFlux`` is missing; the server is
stopped by PID (process group; SIGTERM then SIGKILL; it also dies with the test process).

Writing a server test (fixture ``comfy`` from tests/conftest.py, session scope)::

    import pytest
    from comfy_harness import ASSETS_DIR, ComfyExecutionError

    @pytest.mark.comfy
    @pytest.mark.timeout(300)
    def test_my_node(comfy):
        name = comfy.add_input_file(ASSETS_DIR / "chalet_erp.png")   # -> input folder
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "Pano360Something", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t"}},
        }
        outputs = comfy.run(prompt, timeout=120)      # {node_id: ui dict}
        (img,) = comfy.images(outputs, "3")          # numpy HWC uint8 via /view
        with pytest.raises(ComfyExecutionError) as e:  # errors inside a node
            comfy.run(bad_prompt)
        assert e.value.exception_type.endswith("PanoInputError")

Tiny models for graphs that need a Flux: ``Pano360TestTinyFlux`` (MODEL; inputs seed, variant
dev|schnell|fill, depth, depth_single_blocks), ``Pano360TestTinyCLIP`` (CLIP; seed),
``Pano360TestTinyVAE`` (VAE; seed), ``Pano360TestTinyCheckpoint`` (MODEL, CLIP, VAE);
``comfy.add_tiny_lora(name)`` writes a DiT360-format LoRA for the tiny Flux into
``models/loras``. Keep latents small (e.g. 64x32 px) and steps at 1-2.

UI workflows: ``ui_to_api(ui, comfy.object_info(), DEFAULT_SUBSTITUTIONS, context={"server":
comfy})`` or ``comfy.run_ui_workflow(ui)``; ``check_outputs(comfy, api, outputs)`` asserts every
output node produced non-empty finite images.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"
TEST_NODES_DIR = TESTS_DIR / "comfy_test_nodes"
ASSETS_DIR = TESTS_DIR / "assets"
DEFAULT_COMFYUI_PATH = REPO_ROOT / ".comfy" / "ComfyUI"

PACK_LINK_NAME = "comfyui-pano360"
TEST_PACK_LINK_NAME = "pano360_test_nodes"
REQUIRED_TEST_NODE = "Pano360TestTinyFlux"

MODEL_FOLDERS = (
    "checkpoints", "loras", "vae", "vae_approx", "unet", "diffusion_models", "text_encoders", "clip",
    "clip_vision", "controlnet", "upscale_models", "embeddings", "diffusers", "model_patches",
)

SETUP_HINT = "run `python scripts/workspace.py setup` (or set COMFYUI_PATH to a ComfyUI folder)"


# --------------------------------------------------------------------------- errors


class ComfyHarnessError(RuntimeError):
    """The server could not be started / answered unexpectedly / died."""


class ComfyTimeout(ComfyHarnessError, TimeoutError):
    """A prompt or the start-up did not finish in time."""


class ComfyValidationError(ComfyHarnessError):
    """``POST /prompt`` answered HTTP 400 (prompt failed validation)."""

    def __init__(self, error: Any, node_errors: dict, status_code: int = 400, body: Any = None):
        self.error = error
        self.node_errors = node_errors or {}
        self.status_code = status_code
        self.body = body
        msg = error.get("message") if isinstance(error, dict) else str(error)
        details = []
        for nid, ne in self.node_errors.items():
            for e in ne.get("errors", []):
                details.append(f"  node {nid} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}")
        super().__init__(f"prompt rejected (HTTP {status_code}): {msg}\n" + "\n".join(details))


class ComfyExecutionError(ComfyHarnessError):
    """The prompt failed while executing (history status ``error`` / ``execution_error``)."""

    def __init__(self, node_id: str | None, node_type: str | None, exception_type: str | None,
                 exception_message: str | None, traceback: list[str] | None = None,
                 prompt_id: str | None = None, details: dict | None = None, log_tail: str = ""):
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback = traceback or []
        self.prompt_id = prompt_id
        self.details = details or {}
        tb = "".join(self.traceback[-6:])
        super().__init__(
            f"prompt {prompt_id} failed in node {node_id} ({node_type}): {exception_type}: {exception_message}\n"
            f"{tb}\n--- server log tail ---\n{log_tail}"
        )


# --------------------------------------------------------------------------- helpers


def import_pack_inprocess(name: str) -> types.ModuleType:
    """Import the repository root as a package called ``name``, the way ComfyUI loads a custom
    node pack (needs ComfyUI importable in this process: the ``comfy_inprocess`` fixture)."""
    import importlib.util

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def comfyui_path() -> Path:
    """The ComfyUI folder used by tests: env ``COMFYUI_PATH`` or ``<repo>/.comfy/ComfyUI``."""
    p = os.environ.get("COMFYUI_PATH")
    return Path(p).expanduser().resolve() if p else DEFAULT_COMFYUI_PATH


def check_comfyui(path: Path | None = None) -> Path:
    """Return the ComfyUI folder or raise ``ComfyHarnessError`` with the set-up hint."""
    path = Path(path) if path else comfyui_path()
    if not (path / "main.py").is_file():
        raise ComfyHarnessError(f"ComfyUI not found at {path} (no main.py): {SETUP_HINT}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_IMPORT_LINE = re.compile(r"^\s*[\d.]+ seconds( \(IMPORT FAILED\))?: (.+?)\s*$")


def custom_node_import_status(log_text: str) -> dict[str, bool]:
    """Parse ComfyUI's "Import times for custom nodes" summary: ``{folder name: imported ok}``."""
    status: dict[str, bool] = {}
    for line in log_text.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            status[os.path.basename(m.group(2).rstrip("/\\"))] = m.group(1) is None
    return status


def find_import_failures(log_text: str, pack_names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """For each pack folder name that did not import cleanly, return an explanation.

    A pack fails when the summary marks it ``(IMPORT FAILED)``, when ComfyUI logs
    ``Cannot import .../<name> module`` or ``IMPORT FAILED: .../<name>``, or when it is missing
    from the import summary altogether (it was not loaded at all).
    """
    status = custom_node_import_status(log_text)
    failures: dict[str, str] = {}
    lines = log_text.splitlines()
    for name in pack_names:
        pat = re.compile(r"(Cannot import|IMPORT FAILED|Skip)\b.*[/\\]" + re.escape(name) + r"\b")
        bad = [i for i, line in enumerate(lines) if pat.search(line)]
        if bad or status.get(name) is False:
            # include the traceback logged just before "Cannot import"
            start = bad[0] if bad else 0
            j = start
            while j > 0 and j > start - 40 and not lines[j - 1].startswith("Traceback"):
                j -= 1
            j = max(j - 1, 0) if j > 0 and lines[j - 1].startswith("Traceback") else start
            failures[name] = "IMPORT FAILED:\n" + "\n".join(lines[j:start + 1] if bad else [])
        elif name not in status:
            failures[name] = "not loaded (missing from ComfyUI's custom node import summary)"
    return failures


def _die_with_parent() -> None:
    """In the child (Linux): get SIGTERM when the test process dies, so no server is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _finite_check(arr) -> bool:
    import numpy as np

    return bool(np.isfinite(np.asarray(arr, dtype=np.float64)).all())


# --------------------------------------------------------------------------- server


class ComfyServer:
    """A real ComfyUI server in a subprocess with its own directories.

    Attributes: ``url``, ``port``, ``base_dir``, ``input_dir``, ``output_dir``, ``temp_dir``,
    ``user_dir``, ``models_dir``, ``custom_nodes_dir``, ``log_path``, ``pid``, ``comfyui_dir``.
    """

    def __init__(self, comfyui_dir: str | Path | None = None, base_dir: str | Path | None = None,
                 python: str | None = None, extra_args: list[str] | tuple[str, ...] = (),
                 startup_timeout: float = 180.0, required_nodes: tuple[str, ...] = (REQUIRED_TEST_NODE,),
                 packs: Mapping[str, str | Path] | None = None, env: Mapping[str, str] | None = None):
        self.comfyui_dir = check_comfyui(Path(comfyui_dir) if comfyui_dir else None)
        self.python = python or sys.executable
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="pano360-comfy-"))
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.required_nodes = tuple(required_nodes)
        self.packs = dict(packs) if packs is not None else {PACK_LINK_NAME: REPO_ROOT, TEST_PACK_LINK_NAME: TEST_NODES_DIR}
        self.env = dict(env) if env else {}
        self.custom_nodes_dir = self.base_dir / "custom_nodes"
        self.models_dir = self.base_dir / "models"
        self.input_dir = self.base_dir / "input"
        self.output_dir = self.base_dir / "output"
        self.temp_dir = self.base_dir / "temp"
        self.user_dir = self.base_dir / "user"
        self.log_path = self.base_dir / "comfyui.log"
        self.port: int | None = None
        self.url: str = ""
        self.proc: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex
        self._object_info: dict | None = None
        self._attached = False

    def attach(self, url: str) -> ComfyServer:
        """Use an already running harness server (e.g. from ``python tests/comfy_harness.py
        serve``) whose base directory is ``self.base_dir``; ``stop()`` then leaves it running."""
        self.url = url.rstrip("/")
        self.port = urllib.parse.urlparse(self.url).port
        self._attached = True
        self._own_base = False
        self._check_packs()
        return self

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _prepare_dirs(self) -> None:
        for d in (self.custom_nodes_dir, self.input_dir, self.output_dir, self.temp_dir, self.user_dir):
            d.mkdir(parents=True, exist_ok=True)
        for sub in MODEL_FOLDERS:
            (self.models_dir / sub).mkdir(parents=True, exist_ok=True)
        for name, target in self.packs.items():
            link = self.custom_nodes_dir / name
            if link.is_symlink() or link.exists():
                if link.is_symlink() and Path(os.readlink(link)) == Path(target):
                    continue
                if link.is_symlink():
                    link.unlink()
                else:
                    shutil.rmtree(link)
            link.symlink_to(Path(target), target_is_directory=True)
        # extra_model_paths config naming the same folders (for tools that read it)
        cfg = self.base_dir / "extra_model_paths.yaml"
        lines = ["pano360_tests:", f"  base_path: {self.base_dir}", "  custom_nodes: custom_nodes"]
        for sub in MODEL_FOLDERS:
            lines.append(f"  {sub}: models/{sub}")
        cfg.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--disable-api-nodes",
            "--base-directory", str(self.base_dir),
            "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
            "--temp-directory", str(self.temp_dir), "--user-directory", str(self.user_dir),
            "--database-url", f"sqlite:///{self.base_dir / 'comfyui.db'}",
            "--extra-model-paths-config", str(self.base_dir / "extra_model_paths.yaml"),
            *self.extra_args,
        ]

    def start(self) -> ComfyServer:
        self._prepare_dirs()
        last_err: Exception | None = None
        for _attempt in range(3):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            env = os.environ.copy()
            env.update(self.env)
            env.setdefault("PYTHONUNBUFFERED", "1")
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            with open(self.log_path, "ab") as log:
                log.write(f"\n=== pano360 harness: starting {' '.join(self.command())}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    self.command(), cwd=str(self.comfyui_dir), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=env, start_new_session=True, preexec_fn=_die_with_parent,
                )
            try:
                self._wait_ready()
                break
            except ComfyHarnessError as e:
                last_err = e
                port_clash = "address already in use" in self.log_text()[-3000:].lower()
                self.stop()
                if not port_clash:
                    raise
        else:
            raise last_err  # type: ignore[misc]
        self._check_packs()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyHarnessError(
                    f"ComfyUI exited with code {self.proc.returncode} during start-up\n--- log tail ---\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=5) as r:
                    if r.status == 200:
                        return
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        raise ComfyTimeout(
            f"ComfyUI did not answer /system_stats within {self.startup_timeout:.0f} s\n--- log tail ---\n{self.log_tail()}"
        )

    def _check_packs(self) -> None:
        failures = find_import_failures(self.log_text(), list(self.packs))
        if failures:
            msg = "\n".join(f"[{k}] {v}" for k, v in failures.items())
            self.stop()
            raise ComfyHarnessError(f"custom node pack(s) failed to load:\n{msg}\n--- log tail ---\n{self.log_tail()}")
        for node in self.required_nodes:
            if node not in self.object_info(refresh=True):
                self.stop()
                raise ComfyHarnessError(f"/object_info has no {node}\n--- log tail ---\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by PID (its process group): SIGTERM, then SIGKILL."""
        if self._attached:
            return
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        """Stop and delete the base directory if this object created it."""
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ComfyServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def is_running(self) -> bool:
        if self._attached:
            return True
        return self.proc is not None and self.proc.poll() is None

    # -- logs ------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, bytes]:
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
            state = "running" if self.is_running() else "NOT running"
            raise ComfyHarnessError(
                f"{method} {path} failed: {e} (server {state})\n--- log tail ---\n{self.log_tail()}"
            ) from e

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        code, raw = self._request("GET", path, timeout=timeout)
        if code != 200:
            raise ComfyHarnessError(f"GET {path} -> HTTP {code}: {raw[:500]!r}")
        return json.loads(raw)

    def post_json(self, path: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
        code, raw = self._request("POST", path, body, timeout=timeout)
        try:
            return code, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return code, raw.decode(errors="replace")

    def object_info(self, node_type: str | None = None, refresh: bool = False) -> dict:
        """All of ``/object_info`` (cached), or one node's entry (``KeyError`` if missing)."""
        if node_type is not None:
            info = self.get_json("/object_info/" + urllib.parse.quote(node_type))
            if node_type not in info:
                raise KeyError(f"node type {node_type!r} not registered in the server")
            return info[node_type]
        if self._object_info is None or refresh:
            self._object_info = self.get_json("/object_info", timeout=120)
        return self._object_info

    def queue(self, api_prompt: dict, client_id: str | None = None) -> str:
        """POST /prompt; returns the prompt id. Raises ComfyValidationError on HTTP 400."""
        code, body = self.post_json("/prompt", {"prompt": api_prompt, "client_id": client_id or self.client_id})
        if code == 200 and isinstance(body, dict) and "prompt_id" in body:
            if body.get("node_errors"):
                raise ComfyValidationError({"message": "node errors"}, body["node_errors"], code, body)
            return body["prompt_id"]
        if isinstance(body, dict):
            raise ComfyValidationError(body.get("error", body), body.get("node_errors", {}), code, body)
        raise ComfyValidationError(str(body), {}, code, body)

    def history(self, prompt_id: str) -> dict | None:
        h = self.get_json("/history/" + urllib.parse.quote(prompt_id))
        return h.get(prompt_id)

    def interrupt(self) -> None:
        self._request("POST", "/interrupt", {})

    def free(self, unload_models: bool = True) -> None:
        self._request("POST", "/free", {"unload_models": unload_models, "free_memory": True})

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict:
        """Poll ``/history/<id>`` until the prompt finished; returns the history entry.

        Raises ComfyExecutionError when it failed, ComfyTimeout (after interrupting it and
        removing it from the queue) when it did not finish within ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    self._raise_if_failed(prompt_id, entry)
                    return entry
            if not self.is_running():
                raise ComfyHarnessError(f"ComfyUI died while running prompt {prompt_id}\n--- log tail ---\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self._request("POST", "/queue", {"delete": [prompt_id]})
                self.interrupt()
                raise ComfyTimeout(f"prompt {prompt_id} did not finish within {timeout:.0f} s "
                                   f"(interrupted)\n--- log tail ---\n{self.log_tail()}")
            time.sleep(poll)
            poll = min(poll * 1.3, 0.5)

    def _raise_if_failed(self, prompt_id: str, entry: dict) -> None:
        status = entry.get("status") or {}
        msgs = status.get("messages") or []
        for ev, data in msgs:
            if ev == "execution_error":
                raise ComfyExecutionError(
                    str(data.get("node_id")), data.get("node_type"), data.get("exception_type"),
                    data.get("exception_message"), data.get("traceback"), prompt_id, data, self.log_tail(40),
                )
            if ev == "execution_interrupted":
                raise ComfyExecutionError(str(data.get("node_id")), data.get("node_type"), "Interrupted",
                                          "execution was interrupted", None, prompt_id, data, self.log_tail(40))
        if status.get("status_str") == "error":
            raise ComfyExecutionError(None, None, "UnknownError", f"status error: {msgs}", None, prompt_id,
                                      {}, self.log_tail(40))

    def run(self, api_prompt: dict, timeout: float = 120.0) -> dict:
        """Queue, wait, return the ``outputs`` dict of the history entry ({node_id: ui})."""
        return self.wait(self.queue(api_prompt), timeout=timeout).get("outputs", {})

    # -- files -----------------------------------------------------------------------------

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        code, raw = self._request("GET", "/view?" + q)
        if code != 200:
            raise ComfyHarnessError(f"/view {filename} ({type}/{subfolder}) -> HTTP {code}")
        return raw

    def images(self, outputs: dict, node_id: str | int) -> list:
        """Images a node produced (``outputs[node_id]['images']``), fetched through ``/view``,
        as numpy HWC arrays (uint8 for 8-bit files; 16-bit PNGs keep uint16)."""
        import numpy as np
        from PIL import Image

        node_out = outputs.get(str(node_id))
        if node_out is None:
            raise KeyError(f"node {node_id} produced no outputs (nodes with outputs: {sorted(outputs)})")
        result = []
        for im in node_out.get("images", []):
            raw = self.view(im["filename"], im.get("subfolder", ""), im.get("type", "output"))
            with Image.open(io.BytesIO(raw)) as pil:
                pil.load()
                if pil.mode in ("I;16", "I;16B", "I"):
                    arr = np.array(pil)
                else:
                    arr = np.array(pil.convert("RGBA" if "A" in pil.mode else "RGB"))
            result.append(arr)
        return result

    def add_input_file(self, src: str | Path, name: str | None = None) -> str:
        """Copy a file into the server's input folder; returns its name there."""
        src = Path(src)
        name = name or src.name
        dst = self.input_dir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return name

    def add_tiny_lora(self, name: str = "tiny_dit360_lora.safetensors", seed: int = 0, rank: int = 4) -> Path:
        """Write a tiny DiT360-format LoRA (for the tiny Flux) into ``models/loras/<name>``."""
        sys.path.insert(0, str(TEST_NODES_DIR))
        try:
            import tiny_models  # noqa: PLC0415
        finally:
            sys.path.remove(str(TEST_NODES_DIR))
        path = self.models_dir / "loras" / name
        if not path.exists():
            tiny_models.save_tiny_dit360_lora(path, seed=seed, rank=rank)
        return path

    # -- workflows -------------------------------------------------------------------------

    def run_ui_workflow(self, ui_workflow: dict, substitutions: Mapping | None = None,
                        timeout: float = 180.0) -> tuple[dict, dict]:
        """Convert a UI workflow (with ``DEFAULT_SUBSTITUTIONS`` unless given), run it,
        return ``(api_prompt, outputs)``."""
        subs = DEFAULT_SUBSTITUTIONS if substitutions is None else substitutions
        api = ui_to_api(ui_workflow, self.object_info(), subs, context={"server": self})
        return api, self.run(api, timeout=timeout)


# --------------------------------------------------------------------------- UI -> API

# node types that exist only in the frontend
VIRTUAL_NODE_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "Comfy.Note", "Comfy.MarkdownNote"}
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
_WIDGET_SCALARS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
_UPLOAD_OPTS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload", "upload")


class WorkflowConversionError(ValueError):
    pass


def _input_defs(info: dict) -> list[tuple[str, Any, dict]]:
    """(name, type, options) of a node's inputs in ``input_order`` (required, then optional)."""
    inputs = info.get("input", {})
    order = info.get("input_order") or {}
    out = []
    for section in ("required", "optional"):
        defs = inputs.get(section) or {}
        names = order.get(section) or list(defs)
        for name in names:
            if name not in defs:
                continue
            spec = defs[name]
            typ = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
            opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, typ, opts))
    return out


def _is_widget(typ: Any, opts: dict) -> bool:
    if isinstance(typ, list):
        return True
    if typ in _WIDGET_SCALARS:
        return not opts.get("forceInput", False)
    return False


def _has_control_after_generate(name: str, typ: Any, opts: dict) -> bool:
    if opts.get("control_after_generate"):
        return True
    return typ == "INT" and name in ("seed", "noise_seed")


def _widget_names(info: dict) -> list[tuple[str, str | None]]:
    """Widget slots in widgets_values order: (input name, None) or (input name, 'extra').

    Like the frontend: a control_after_generate widget follows its INT; the upload button of
    the first *required* input with an upload option (image/video/audio_upload) is an extra
    ``upload`` input the frontend adds to ``required`` (Comfy.UploadImage / Comfy.UploadAudio)
    and, not being in ``input_order``, orders after every other input. So LoadImage saves
    ``[image, "image"]`` and LoadImageMask ``[image, channel, "image"]``.
    """
    slots: list[tuple[str, str | None]] = []
    required = set((info.get("input") or {}).get("required") or {})
    upload: str | None = None
    for name, typ, opts in _input_defs(info):
        if not _is_widget(typ, opts):
            continue
        slots.append((name, None))
        if _has_control_after_generate(name, typ, opts):
            slots.append((name, "control_after_generate"))
        if upload is None and name in required and any(opts.get(k) for k in _UPLOAD_OPTS):
            upload = name
    if upload is not None:
        slots.append((upload, "upload"))
    return slots


def _map_widget_values(node: dict, info: dict) -> dict[str, Any]:
    wv = node.get("widgets_values")
    if wv is None:
        return {}
    if isinstance(wv, dict):
        return {k: v for k, v in wv.items() if k not in ("videopreview",)}
    slots = _widget_names(info)
    values: dict[str, Any] = {}
    if len(wv) >= len(slots):
        pairs = zip(slots, wv)
    else:
        # fewer values than slots: some extras were not serialised; fill main widgets in order,
        # skipping an extra slot only when a value looks like a control_after_generate choice
        pairs = []
        i = 0
        for slot in slots:
            if i >= len(wv):
                break
            name, kind = slot
            if kind == "control_after_generate" and not (isinstance(wv[i], str) and wv[i] in (
                    "fixed", "increment", "decrement", "randomize")):
                continue
            pairs.append((slot, wv[i]))
            i += 1
    for (name, kind), val in pairs:
        if kind is None:
            values[name] = val
    return values


def _links_table(ui: dict) -> dict[int, tuple[int, int, int, int, Any]]:
    table = {}
    for link in ui.get("links") or []:
        if isinstance(link, dict):
            lid = link["id"]
            table[lid] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link.get("type"))
        else:
            lid, o_id, o_slot, t_id, t_slot = link[:5]
            table[lid] = (o_id, o_slot, t_id, t_slot, link[5] if len(link) > 5 else None)
    return table


class _Graph:
    """One level of a UI workflow: the top graph, or a subgraph instance (ids prefixed
    ``"<instance id>:"`` like the frontend does)."""

    def __init__(self, nodes: list, links: dict, defs: dict, prefix: str = "",
                 parent: _Graph | None = None, instance: dict | None = None, sg: dict | None = None,
                 object_info: dict | None = None):
        self.nodes = {n["id"]: n for n in nodes}
        self.links = links
        self.defs = defs
        self.prefix = prefix
        self.parent = parent
        self.instance = instance
        self.sg = sg
        self.object_info = object_info or {}
        self.promoted: dict[str, Any] = {}
        self.proxy: dict[tuple[str, str], Any] = {}
        if instance is not None and sg is not None:
            self._map_promoted_widgets()

    def _map_promoted_widgets(self) -> None:
        wv = self.instance.get("widgets_values")
        proxies = (self.instance.get("properties") or {}).get("proxyWidgets")
        if isinstance(wv, dict):
            self.promoted.update(wv)
            return
        wv = list(wv or [])
        if proxies:  # newer frontends: [[inner node id, widget name], ...] in widgets_values order
            for (inner_id, wname), val in zip(proxies, wv):
                self.proxy[(str(inner_id), wname)] = val
            return
        i = 0
        for sin in self.sg.get("inputs") or []:
            if i >= len(wv):
                break
            if sin.get("type") in _WIDGET_SCALARS or isinstance(sin.get("type"), list):
                self.promoted[sin["name"]] = wv[i]
                i += 1
                if (sin.get("type") == "INT" and i < len(wv) and isinstance(wv[i], str)
                        and wv[i] in ("fixed", "increment", "decrement", "randomize")):
                    i += 1

    def child(self, inst: dict) -> _Graph:
        sg = self.defs[inst["type"]]
        return _Graph(sg.get("nodes") or [], _links_table(sg), self.defs, f"{self.prefix}{inst['id']}:",
                      self, inst, sg, self.object_info)

    def flat_id(self, nid) -> str:
        return f"{self.prefix}{nid}"

    def resolve(self, link_id, depth: int = 0):
        """Follow a link upstream through Reroute/PrimitiveNode/bypassed nodes and subgraph
        boundaries. Returns ("link", flat node id, slot) | ("value", v) | None (dropped)."""
        if depth > 500:
            raise WorkflowConversionError("link cycle through Reroute/bypassed nodes")
        if link_id is None or link_id not in self.links:
            return None
        o_id, o_slot, _t, _ts, ltype = self.links[link_id]
        if o_id == -10:  # subgraph input
            return self._resolve_subgraph_input(o_slot, depth)
        src = self.nodes.get(o_id)
        if src is None:
            return None
        stype = src.get("type")
        mode = src.get("mode", 0)
        if stype == "Reroute":
            ins = src.get("inputs") or []
            return self.resolve(ins[0].get("link") if ins else None, depth + 1)
        if stype == "PrimitiveNode":
            wv = src.get("widgets_values") or []
            return ("value", wv[0]) if wv else None
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            outs = src.get("outputs") or []
            otype = outs[o_slot].get("type") if o_slot < len(outs) else ltype
            ins = src.get("inputs") or []
            order = list(range(len(ins)))
            if o_slot < len(ins):  # prefer the same slot index
                order.remove(o_slot)
                order.insert(0, o_slot)
            for i in order:
                if ins[i].get("link") is not None and ins[i].get("type") == otype:
                    return self.resolve(ins[i]["link"], depth + 1)
            return None
        if stype in self.defs:  # output of a subgraph instance
            inner = self.child(src)
            for lid, (_o, _os, t_id, t_slot, _ty) in inner.links.items():
                if t_id == -20 and t_slot == o_slot:
                    return inner.resolve(lid, depth + 1)
            return None
        return ("link", self.flat_id(o_id), o_slot)

    def _resolve_subgraph_input(self, slot: int, depth: int):
        if self.parent is None or self.sg is None:
            return None
        sins = self.sg.get("inputs") or []
        if slot >= len(sins):
            return None
        name = sins[slot]["name"]
        for inp in self.instance.get("inputs") or []:
            if inp.get("name") == name and inp.get("link") is not None:
                return self.parent.resolve(inp["link"], depth + 1)
        if name in self.promoted:
            return ("value", self.promoted[name])
        return None


def ui_to_api(ui_workflow: dict, object_info: dict, substitutions: Mapping | None = None,
              context: dict | None = None) -> dict:
    """Convert a UI-format workflow (frontend save format) into an API prompt.

    Handles widget values (mapped by the node's ``input_order`` in ``object_info``, skipping the
    ``control_after_generate`` value after seed/noise_seed and upload-button values), widget
    inputs converted to links, Reroute, PrimitiveNode (value inlined), Note/MarkdownNote and
    groups (ignored), muted nodes (mode 2: dropped with their links), bypassed nodes (mode 4:
    outputs forwarded from the first input of the same type) and subgraphs
    (``definitions.subgraphs``; inner nodes get ids ``"<instance id>:<inner id>"``, promoted
    widget values and ``proxyWidgets`` applied).

    ``substitutions``: ``{node type: spec}`` where spec is a node type name, a dict
    ``{"class_type": T, "inputs": {...}, "outputs": {old_slot: new_slot}, "keep_inputs": True |
    [names]}`` (missing widget inputs of T get their defaults; ``keep_inputs`` copies the
    original node's inputs (default: only when T is the same type)), or a callable
    ``fn(api_node, ui_node, context) -> dict | None`` returning such a dict (or None to keep the
    node). The key ``"*"`` (callable or list of callables) is applied to every node afterwards.
    ``context`` is passed through to callables (e.g. ``{"server": ComfyServer}`` so they can
    place files; ``object_info`` is added). Node ids are kept.
    """
    if "nodes" not in ui_workflow:
        if all(isinstance(v, dict) and "class_type" in v for v in ui_workflow.values()):
            return copy.deepcopy(ui_workflow)  # already API format
        raise WorkflowConversionError("not a UI-format workflow (no 'nodes')")
    substitutions = substitutions or {}
    context = dict(context or {})
    context.setdefault("object_info", object_info)
    defs = {sg["id"]: sg for sg in (ui_workflow.get("definitions") or {}).get("subgraphs") or []}
    top = _Graph(ui_workflow["nodes"], _links_table(ui_workflow), defs, object_info=object_info)

    api: dict[str, dict] = {}
    output_maps: dict[str, dict[int, int]] = {}

    def emit(g: _Graph, depth: int = 0) -> None:
        if depth > 32:
            raise WorkflowConversionError("subgraphs nested too deeply (recursive definition?)")
        for nid, node in g.nodes.items():
            ntype = node.get("type")
            mode = node.get("mode", 0)
            if ntype in VIRTUAL_NODE_TYPES or mode in (MODE_NEVER, MODE_BYPASS):
                continue
            if ntype in defs:
                emit(g.child(node), depth + 1)
                continue
            fid = g.flat_id(nid)
            if ntype not in object_info:
                raise WorkflowConversionError(f"node {fid}: type {ntype!r} is not installed in the server")
            info = object_info[ntype]
            inputs: dict[str, Any] = dict(_map_widget_values(node, info))
            for (inner_id, wname), val in g.proxy.items():
                if inner_id == str(nid):
                    inputs[wname] = val
            for inp in node.get("inputs") or []:
                name = inp.get("name")
                wname = (inp.get("widget") or {}).get("name", name)
                if inp.get("link") is None:
                    continue
                r = g.resolve(inp["link"])
                if r is None:
                    continue  # dropped link: a widget keeps its own value
                inputs[wname] = r[1] if r[0] == "value" else [r[1], r[2]]
            entry = {"class_type": ntype, "inputs": inputs, "_meta": {"title": node.get("title") or ntype}}
            if ntype in substitutions:
                new = _apply_substitution(substitutions[ntype], entry, node, object_info, context)
                if new is not None:
                    output_maps[fid] = {int(k): int(v) for k, v in (new.pop("outputs", None) or {}).items()}
                    new.setdefault("_meta", {"title": f"{entry['_meta']['title']} (substituted)"})
                    entry = new
            for generic in _as_list(substitutions.get("*")):
                new = generic(copy.deepcopy(entry), node, context)
                if new is not None:
                    new.setdefault("_meta", entry.get("_meta", {}))
                    new.pop("outputs", None)
                    entry = new
            api[fid] = entry

    emit(top)

    # remap links into substituted nodes and drop links to nodes that were removed
    for entry in api.values():
        for k, v in list(entry["inputs"].items()):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int):
                if v[0] not in api:
                    del entry["inputs"][k]
                elif v[0] in output_maps and v[1] in output_maps[v[0]]:
                    entry["inputs"][k] = [v[0], output_maps[v[0]][v[1]]]
    return api


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _defaults(info: dict) -> dict[str, Any]:
    out = {}
    for name, typ, opts in _input_defs(info):
        if "default" in opts and _is_widget(typ, opts):
            out[name] = opts["default"]
        elif isinstance(typ, list) and typ:
            out[name] = typ[0]
    # only required ones matter for validation; optional defaults are harmless
    return out


def _apply_substitution(spec, entry: dict, ui_node: dict, object_info: dict, context: dict) -> dict | None:
    if callable(spec):
        spec = spec(copy.deepcopy(entry), ui_node, context)
        if spec is None:
            return None
    if isinstance(spec, str):
        spec = {"class_type": spec}
    if not isinstance(spec, dict) or "class_type" not in spec:
        raise WorkflowConversionError(f"bad substitution for {entry['class_type']}: {spec!r}")
    ctype = spec["class_type"]
    if ctype not in object_info:
        raise WorkflowConversionError(f"substitution node {ctype!r} is not installed in the server")
    new_inputs = _defaults(object_info[ctype])
    keep = spec.get("keep_inputs", ctype == entry["class_type"])
    if keep is True:
        new_inputs.update(entry["inputs"])
    elif keep:
        new_inputs.update({k: entry["inputs"][k] for k in keep if k in entry["inputs"]})
    new_inputs.update(spec.get("inputs") or {})
    out = {"class_type": ctype, "inputs": new_inputs, "outputs": spec.get("outputs") or {}}
    if "_meta" in spec:
        out["_meta"] = spec["_meta"]
    return out


# --------------------------------------------------------------------------- substitutions


def _flux_variant_from_name(name: str) -> str:
    n = (name or "").lower()
    if "fill" in n or "inpaint" in n:
        return "fill"
    if "schnell" in n:
        return "schnell"
    if "canny" in n or "depth" in n:
        return "control"
    return "dev"


def sub_unet_loader(node: dict, ui_node: dict, ctx: dict) -> dict:
    return {"class_type": "Pano360TestTinyFlux",
            "inputs": {"seed": 0, "variant": _flux_variant_from_name(node["inputs"].get("unet_name", ""))}}


def sub_checkpoint_loader(node: dict, ui_node: dict, ctx: dict) -> dict:
    return {"class_type": "Pano360TestTinyCheckpoint",
            "inputs": {"seed": 0, "variant": _flux_variant_from_name(node["inputs"].get("ckpt_name", ""))},
            "outputs": {0: 0, 1: 1, 2: 2}}


def sub_load_image(node: dict, ui_node: dict, ctx: dict) -> dict | None:
    """Copy the named image from tests/assets (or a default ERP asset) into the server's input."""
    server = ctx.get("server")
    name = node["inputs"].get("image", "")
    src = ASSETS_DIR / os.path.basename(str(name))
    if not src.is_file():
        src = ASSETS_DIR / ctx.get("default_image", "chalet_erp.png")
    if server is None:
        return {"class_type": node["class_type"], "inputs": {**node["inputs"], "image": src.name}}
    small = _small_copy(src, server.input_dir, ctx.get("max_image_side", 128))
    return {"class_type": node["class_type"], "inputs": {**node["inputs"], "image": small}}


def _small_copy(src: Path, dst_dir: Path, max_side: int) -> str:
    """Down-scaled copy of an image (keeps aspect ratio, keeps alpha); returns its file name."""
    from PIL import Image

    name = f"{src.stem}_{max_side}{src.suffix}"
    dst = Path(dst_dir) / name
    if not dst.exists():
        with Image.open(src) as im:
            s = max_side / max(im.size)
            if s < 1:
                im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
            tmp = dst.with_name(f".{uuid.uuid4().hex}{src.suffix}")
            im.save(tmp)
            os.replace(tmp, dst)
    return name


def sub_lora_loader(node: dict, ui_node: dict, ctx: dict) -> dict | None:
    """Keep the real LoRA loader; write a tiny DiT360-format LoRA under the requested name."""
    server = ctx.get("server")
    name = node["inputs"].get("lora_name")
    if server is not None and name:
        server.add_tiny_lora(name)
    return None


def sub_small_pads(node: dict, ui_node: dict, ctx: dict) -> dict | None:
    """ImagePadForOutpaint: literal pads clamped to ``ctx['max_pad']`` (32) px, feathering too."""
    inp = dict(node["inputs"])
    mp = ctx.get("max_pad", 32)
    for k in ("left", "top", "right", "bottom", "feathering"):
        if isinstance(inp.get(k), int):
            inp[k] = min(inp[k], mp)
    return {"class_type": node["class_type"], "inputs": inp}


def _tiny_size(w: int, h: int, max_side: int = 128, multiple: int = 16) -> tuple[int, int]:
    s = max_side / max(w, h)
    if s >= 1:
        return w, h
    return (max(multiple, int(round(w * s / multiple)) * multiple), max(multiple, int(round(h * s / multiple)) * multiple))


def sub_shrink_latent(node: dict, ui_node: dict, ctx: dict) -> dict | None:
    """Scale width/height literals down to at most ``ctx['max_side']`` (default 128) px."""
    inp = node["inputs"]
    w, h = inp.get("width"), inp.get("height")
    if not isinstance(w, int) or not isinstance(h, int):
        return None
    w2, h2 = _tiny_size(w, h, ctx.get("max_side", 128))
    return {"class_type": node["class_type"], "inputs": {**inp, "width": w2, "height": h2}}


def sub_few_steps(node: dict, ui_node: dict, ctx: dict) -> dict | None:
    """Clamp a literal ``steps`` input to ``ctx['max_steps']`` (default 2)."""
    inp = node["inputs"]
    steps = inp.get("steps")
    if not isinstance(steps, int):
        return None
    new = dict(inp)
    ms = ctx.get("max_steps", 2)
    new["steps"] = min(steps, ms)
    if "end_at_step" in new and isinstance(new["end_at_step"], int):
        new["end_at_step"] = min(new["end_at_step"], new["steps"])
    if "start_at_step" in new and isinstance(new["start_at_step"], int):
        new["start_at_step"] = min(new["start_at_step"], max(new["steps"] - 1, 0))
    return {"class_type": node["class_type"], "inputs": new}


def sub_tiny_generic(node: dict, ui_node: dict, ctx: dict) -> dict | None:
    """Applied to every node (key ``"*"``): literal ``steps`` clamped to ``ctx['max_steps']``
    (2); literal ``width``/``height`` pairs above ``ctx['max_side']`` (128) scaled down
    (aspect kept, multiples of 16); a ``size`` preset combo that offers ``custom`` is switched
    to ``custom`` with the scaled preset size."""
    inp = dict(node["inputs"])
    changed = False
    r = sub_few_steps({**node, "inputs": inp}, ui_node, ctx)
    if r is not None and r["inputs"] != inp:
        inp, changed = r["inputs"], True
    info = (ctx.get("object_info") or {}).get(node["class_type"], {})
    size = inp.get("size")
    if isinstance(size, str) and "custom" in _combo_options(info, "size") and size != "custom":
        m = re.match(r"\s*(\d+)\s*[x×]\s*(\d+)", size)
        if m and isinstance(inp.get("width"), int) and isinstance(inp.get("height"), int):
            inp["width"], inp["height"] = int(m.group(1)), int(m.group(2))
            inp["size"] = "custom"
            changed = True
    r = sub_shrink_latent({**node, "inputs": inp}, ui_node, ctx)
    if r is not None and r["inputs"] != inp:
        inp, changed = r["inputs"], True
    return {"class_type": node["class_type"], "inputs": inp} if changed else None


def _combo_options(info: dict, name: str) -> list:
    for n, typ, opts in _input_defs(info):
        if n == name:
            if isinstance(typ, list):
                return typ
            return list(opts.get("options") or [])
    return []


DEFAULT_SUBSTITUTIONS: dict[str, Any] = {
    "*": sub_tiny_generic,
    "UNETLoader": sub_unet_loader,
    "UnetLoaderGGUF": sub_unet_loader,
    "DualCLIPLoader": {"class_type": "Pano360TestTinyCLIP", "inputs": {"seed": 0}},
    "CLIPLoader": {"class_type": "Pano360TestTinyCLIP", "inputs": {"seed": 0}},
    "VAELoader": {"class_type": "Pano360TestTinyVAE", "inputs": {"seed": 0}},
    "CheckpointLoaderSimple": sub_checkpoint_loader,
    "LoadImage": sub_load_image,
    "LoadImageMask": sub_load_image,
    "LoraLoaderModelOnly": sub_lora_loader,
    "LoraLoader": sub_lora_loader,
    "Pano360DiT360LoraLoader": sub_lora_loader,
    "ImagePadForOutpaint": sub_small_pads,
    # Kontext's preferred resolutions are ~1 MP: scale to 128 px instead
    "FluxKontextImageScale": {"class_type": "ImageScaleToMaxDimension",
                              "inputs": {"upscale_method": "bilinear", "largest_size": 128}, "keep_inputs": ["image"]},
}


# --------------------------------------------------------------------------- output checks


def output_node_ids(api_prompt: dict, object_info: dict) -> list[str]:
    return [nid for nid, n in api_prompt.items() if object_info.get(n["class_type"], {}).get("output_node")]


def check_outputs(server: ComfyServer, api_prompt: dict, outputs: dict) -> dict[str, list]:
    """Assert every output node of ``api_prompt`` produced outputs; images non-empty and finite.
    Returns ``{node_id: [images]}``."""
    result = {}
    info = server.object_info()
    for nid in output_node_ids(api_prompt, info):
        ctype = api_prompt[nid]["class_type"]
        if nid not in outputs or not outputs[nid]:
            raise AssertionError(f"output node {nid} ({ctype}) produced no outputs; got outputs for {sorted(outputs)}")
        imgs = server.images(outputs, nid) if outputs[nid].get("images") else []
        for i, im in enumerate(imgs):
            if im.size == 0 or min(im.shape[:2]) == 0:
                raise AssertionError(f"output node {nid} ({ctype}) image {i} is empty: shape {im.shape}")
            if not _finite_check(im):
                raise AssertionError(f"output node {nid} ({ctype}) image {i} has non-finite values")
        result[nid] = imgs
    return result


__all__ = [
    "ComfyServer", "ComfyHarnessError", "ComfyTimeout", "ComfyValidationError", "ComfyExecutionError",
    "WorkflowConversionError", "ui_to_api", "DEFAULT_SUBSTITUTIONS", "check_outputs", "output_node_ids",
    "find_import_failures", "custom_node_import_status", "comfyui_path", "check_comfyui", "free_port",
    "sub_unet_loader", "sub_checkpoint_loader", "sub_load_image", "sub_lora_loader", "sub_shrink_latent",
    "sub_few_steps", "sub_tiny_generic", "sub_small_pads", "REPO_ROOT", "ASSETS_DIR", "TEST_NODES_DIR",
]


def _main(argv: list[str] | None = None) -> int:
    """``python tests/comfy_harness.py serve``: start a harness server and keep it running
    (Ctrl-C or SIGTERM stops it). Export the two printed variables and the ``comfy`` fixture reuses it."""
    import argparse

    ap = argparse.ArgumentParser(prog="comfy_harness.py")
    ap.add_argument("command", choices=["serve"])
    ap.add_argument("--base-dir", default=None)
    args = ap.parse_args(argv)
    def _term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    server = ComfyServer(base_dir=args.base_dir).start()
    print(f"export PANO360_COMFY_URL={server.url} PANO360_COMFY_BASE={server.base_dir}", flush=True)
    try:
        while server.is_running():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
