"""A dependency-free line chart (PIL only) for loss curves and benchmark figures."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, title: str = "",
              xlabel: str = "", ylabel: str = "", size: tuple[int, int] = (720, 420)) -> Path:
    """Draw named (x, y) series on shared axes and save a PNG; returns the path."""
    W, H = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    xs = [x for sx, _ in series.values() for x in sx]
    ys = [y for _, sy in series.values() for y in sy]
    if not xs:
        raise ValueError("nothing to plot")
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (W - left - right), H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for i in range(5):  # ticks
        yv = y0 + (y1 - y0) * i / 4
        _, yp = px(x0, yv)
        d.line([left - 4, yp, left, yp], fill=(0, 0, 0))
        d.text((4, yp - 6), f"{yv:.3g}", fill=(0, 0, 0))
        xv = x0 + (x1 - x0) * i / 4
        xp, _ = px(xv, y0)
        d.line([xp, H - bottom, xp, H - bottom + 4], fill=(0, 0, 0))
        d.text((xp - 10, H - bottom + 8), f"{xv:.4g}", fill=(0, 0, 0))
    for k, (name, (sx, sy)) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        pts = [px(x, y) for x, y in zip(sx, sy)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        d.text((left + 10, top + 8 + 14 * k), name, fill=colour)
    d.text((left, 12), title, fill=(0, 0, 0))
    d.text(((W - len(xlabel) * 6) // 2, H - 20), xlabel, fill=(0, 0, 0))
    d.text((4, top - 16), ylabel, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
