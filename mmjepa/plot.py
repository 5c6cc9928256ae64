"""Line charts (loss curves, benchmark figures) with matplotlib, written as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, title: str = "",
              xlabel: str = "", ylabel: str = "", size: tuple[float, float] = (7.2, 4.2), log_y: bool = False) -> Path:
    """Draw named (x, y) series on shared axes (``log_y``: a logarithmic y axis) and save a PNG;
    returns the path."""
    if not any(len(x) for x, _ in series.values()):
        raise ValueError("nothing to plot")
    fig, ax = plt.subplots(figsize=size, dpi=100)
    for name, (x, y) in series.items():
        ax.plot(list(x), list(y), label=name, linewidth=1.8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
