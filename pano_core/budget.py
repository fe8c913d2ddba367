"""Size budget: refuse work that would not fit before allocating it.

* :func:`max_pixels` -- the largest image (input file or output) accepted, in pixels. Default
  16384 x 8192 (134 Mpx; a float32 RGB image of that size is 1.5 GiB). Set it with the CLI's
  ``--max-pixels``, the environment variable ``PANO360_MAX_PIXELS`` (read by the ComfyUI nodes
  and the CLI), :func:`set_max_pixels`, or for one block of work :func:`pixel_limit` (the
  ComfyUI nodes use it for the *Pano360 › Size limit* setting).
* :func:`check_pixels` -- refuse a size above the limit, naming the input.
* :func:`check_bytes` -- refuse an estimated allocation larger than the memory available now.
* :func:`guard_alloc` -- turn an allocation failure (``MemoryError``, torch's "can't allocate")
  into a :class:`PanoInputError` naming the input.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

from .errors import PanoInputError

__all__ = ["DEFAULT_MAX_PIXELS", "max_pixels", "set_max_pixels", "pixel_limit", "check_pixels", "check_bytes",
           "guard_alloc", "available_bytes"]

DEFAULT_MAX_PIXELS = 16384 * 8192
_DEFAULT_HINT = "--max-pixels, PANO360_MAX_PIXELS"
_override: int | None = None
# (limit, how to raise it) for the work running in this context (pixel_limit)
_scoped: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar("pano360_pixel_limit", default=None)


def _parse(text: str, name: str) -> int:
    try:
        v = int(float(text))
    except (TypeError, ValueError):
        raise PanoInputError(f"{name}: expected a number of pixels, got {text!r}") from None
    if v < 1:
        raise PanoInputError(f"{name}: expected a positive number of pixels, got {text!r}")
    return v


def max_pixels() -> int:
    """The current pixel limit (pixel_limit > set_max_pixels > $PANO360_MAX_PIXELS > the default)."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped[0]
    if _override is not None:
        return _override
    env = os.environ.get("PANO360_MAX_PIXELS")
    return _parse(env, "PANO360_MAX_PIXELS") if env else DEFAULT_MAX_PIXELS


def set_max_pixels(value: int | None) -> None:
    """Set the pixel limit for this process (``None``: back to the environment/default)."""
    global _override
    _override = None if value is None else _parse(value, "max_pixels")


@contextlib.contextmanager
def pixel_limit(value: int | None, hint: str = _DEFAULT_HINT):
    """``with pixel_limit(50_000_000, "the Size limit setting"): ...``: the pixel limit for the work
    in this block (this thread/context only); ``hint`` says in error messages how to raise it.
    ``None`` leaves the limit as it is."""
    if value is None:
        yield
        return
    token = _scoped.set((_parse(value, "max_pixels"), hint))
    try:
        yield
    finally:
        _scoped.reset(token)


def _mpx(n: int) -> str:
    return f"{n / 1e6:.1f} Mpx" if n < 1e9 else f"{n / 1e9:.2f} Gpx"


def check_pixels(name: str, width: int, height: int, what: str = "image", count: int = 1,
                 limit: int | None = None) -> None:
    """Raise when ``count`` images of ``width x height`` exceed the pixel limit."""
    lim = max_pixels() if limit is None else limit
    n = int(width) * int(height) * int(count)
    if n > lim:
        many = f"{count} x " if count != 1 else ""
        raise PanoInputError(
            f"{name}: {what} of {many}{width}x{height} pixels ({_mpx(n)}) is above the limit of {_mpx(lim)}; "
            f"choose a smaller size, or raise the limit ({_hint()}) if you have the memory"
        )


def _hint() -> str:
    scoped = _scoped.get()
    return scoped[1] if scoped is not None else _DEFAULT_HINT


def available_bytes() -> int | None:
    """Memory available now (Linux MemAvailable, else physical pages available), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_bytes(name: str, nbytes: int, what: str) -> None:
    """Raise when an estimated allocation of ``nbytes`` is more than the memory available."""
    avail = available_bytes()
    if avail is not None and nbytes > avail:
        raise PanoInputError(
            f"{name}: {what} needs about {nbytes / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB of memory "
            "is available; choose a smaller size"
        )


def _is_alloc_failure(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and (
        "can't allocate memory" in msg or "out of memory" in msg.lower() or "not enough memory" in msg.lower()
    )


@contextlib.contextmanager
def guard_alloc(name: str):
    """``with guard_alloc("--face-size 100000"): ...``: allocation failures -> PanoInputError."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not _is_alloc_failure(e):
            raise
        raise PanoInputError(f"{name}: not enough memory for this size ({str(e).splitlines()[0][:200]})") from None


# bytes per output pixel a geometry operation needs besides the output itself (float32 sampling
# maps, map-building temporaries, the plan cache): a generous estimate
PLAN_BYTES_PER_PIXEL = 48


def check_output_size(name: str, width: int, height: int, count: int = 1, channels: int = 3,
                      element_bytes: int = 4, what: str = "output") -> None:
    """Pixel limit and memory estimate for an output of ``count`` images of ``width x height``."""
    check_pixels(name, width, height, what, count=count)
    n = int(width) * int(height) * int(count)
    check_bytes(name, n * (int(channels) * int(element_bytes) + PLAN_BYTES_PER_PIXEL), f"an {what} of {width}x{height}"
                + (f" x {count}" if count != 1 else ""))
