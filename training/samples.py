"""Training-time outputs: sample grids with seam metrics, the loss log and its plot.

* :func:`write_sample_grid` -- ERP images (N, 3, H, W) as one PNG (rows of ``cols`` images).
* :func:`append_metrics` -- each sample's wrap-seam and cube-seam metrics
  (``pano_core.seams.metrics.seam_metrics``) as JSONL lines.
* :class:`LossLog` -- one JSON line per optimizer step (total and every term); truncated to a
  checkpoint's step on resume so the log reads like one uninterrupted run.
* :func:`plot_losses` -- the loss curves (total and each term) as a PNG (matplotlib, Agg).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pano_core.io import write_image
from pano_core.seams.metrics import seam_metrics

__all__ = ["write_sample_grid", "sample_metrics", "append_metrics", "LossLog", "plot_losses"]

METRIC_KEYS = ("wrap_seam", "wrap_jump", "seam_ssim", "seam_sobel", "seam_jump", "pole_seam_ssim", "pole_seam_jump")


def write_sample_grid(path: str | os.PathLike, images: torch.Tensor, cols: int) -> Path:
    """Write (N, 3, H, W) images in 0..1 as a grid PNG with ``cols`` images per row (2 px gaps)."""
    n, c, h, w = images.shape
    cols = max(1, min(int(cols), n))
    rows = (n + cols - 1) // cols
    gap = 2
    grid = torch.ones(1, c, rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[0, :, r * (h + gap) : r * (h + gap) + h, k * (w + gap) : k * (w + gap) + w] = images[i].float().cpu()
    return write_image(path, grid.clamp(0, 1), force=True)


def sample_metrics(image: torch.Tensor) -> dict:
    """The wrap-seam and cube-seam metrics of one ERP image (1, 3, H, W)."""
    m = seam_metrics(image.float().cpu().clamp(0, 1), layout="erp", band=max(1, min(8, image.shape[-1] // 16)))
    return {k: float(m[k]) for k in METRIC_KEYS if k in m}


def append_metrics(path: str | os.PathLike, records: list[dict]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


class LossLog:
    """Per-step loss records in ``logs/losses.jsonl``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate(self, step: int) -> None:
        """Keep only records with ``step <= step`` (resuming from that step)."""
        if not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_losses(records: list[dict], path: str | os.PathLike) -> Path | None:
    """Plot ``loss`` and every ``loss/<term>`` against ``step`` into a PNG; None without records."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["loss"] + sorted({k for r in records for k in r if k.startswith("loss/")})
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [r["step"] for r in records]
    for k in keys:
        ys = [r.get(k, float("nan")) for r in records]
        ax.plot(steps, ys, label=k, linewidth=2.0 if k == "loss" else 1.0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if all(r.get("loss", 1) > 0 for r in records) else "linear")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, p)
    return p
