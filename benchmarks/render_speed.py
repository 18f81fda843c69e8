"""Milliseconds per overlay PNG for a 128³ volume: compose (numpy + one small text figure) and atomic write.

Run: `.venv/bin/python benchmarks/render_speed.py [--repeats N] [--size S]`. It prints the median and the
split between composing the picture and encoding/writing the PNG, and, for comparison, a plain matplotlib
figure of the same content (subplots with imshow and a colour bar), the way a simple script would do it.

Measured on the 2-core development machine (CPU only, load average ~3.5 from other jobs), 128³ at 1 mm,
noisy head with a speckled relevance blob, 788x892 px picture, median of 10-20 repeats over three runs:
overlay 89-162 ms (compose 55-98 ms, PNG 32-64 ms); the plain matplotlib figure took 186-473 ms in the same
runs (1.9-5.3x slower). Composing was about 11 ms colour mapping, 25 ms header text, 5 ms percentiles.
Since then (header text by Pillow, colours by a blend table, PNG by ISA-L; see benchmarks/PIPELINE.md), one
thread's CPU per overlay of a 128³ scan: compose ~37 ms, PNG ~4 ms (load 5-10, `pipeline_speed.py --costs`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mri_lrp.render import compose_overlay, render_overlay, write_png


def make_volume(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy ellipsoid head with a signed, speckled relevance blob on its left-anterior side."""
    rng = np.random.default_rng(0)
    axis = np.arange(size) - size / 2
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    r = size * 0.43
    head = ((x ** 2 + 1.2 * y ** 2 + 1.4 * z ** 2) < r ** 2) * 100.0 + rng.random((size,) * 3) * 10.0
    envelope = np.exp(-((x + size / 5) ** 2 + (y - size / 6) ** 2 + (z - size / 8) ** 2) / (size * 3.0))
    relevance = rng.standard_normal((size,) * 3) * envelope + 0.5 * envelope
    affine = np.eye(4)
    affine[:3, 3] = -size / 2
    return head.astype(np.float32), relevance.astype(np.float32), affine


def plain_matplotlib(path: Path, scan: np.ndarray, relevance: np.ndarray) -> None:
    """The usual way: a pyplot-free figure with 15 imshow panels and a colour bar, saved with savefig."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vmax = float(np.percentile(np.abs(relevance), 99.5))
    fig = Figure(figsize=(8, 9), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 4)
    slices = np.linspace(0, scan.shape[2] - 1, 15).astype(int)
    image = None
    for ax, k in zip(axes.flat, slices, strict=False):
        ax.imshow(scan[:, :, k].T, cmap="gray", origin="lower")
        image = ax.imshow(relevance[:, :, k].T, cmap="bwr", vmin=-vmax, vmax=vmax, alpha=0.6, origin="lower")
        ax.set_axis_off()
    axes.flat[-1].set_axis_off()
    fig.colorbar(image, ax=axes.flat[-1])
    fig.suptitle("predicted glioma (p=0.93)")
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    scan, relevance, affine = make_volume(args.size)
    kwargs = {"title": "sample: predicted glioma (p=0.93)",
              "subtitle": "relevance for glioma (p=0.93) · alphabeta α=2 β=1"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overlay.png"
        render_overlay(path, scan, relevance, affine, **kwargs)  # warm-up: imports, fonts, glyph cache
        total, compose, write = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            overlay = compose_overlay(scan, relevance, affine, **kwargs)
            t1 = time.perf_counter()
            write_png(path, overlay.rgb)
            t2 = time.perf_counter()
            compose.append(t1 - t0)
            write.append(t2 - t1)
            total.append(t2 - t0)
        plain = []
        plain_matplotlib(Path(tmp) / "plain.png", scan, relevance)
        for _ in range(max(1, args.repeats // 3)):
            t0 = time.perf_counter()
            plain_matplotlib(Path(tmp) / "plain.png", scan, relevance)
            plain.append(time.perf_counter() - t0)
    h, w = overlay.rgb.shape[:2]
    ms = statistics.median
    print(f"volume {args.size}^3, picture {w}x{h} px, {args.repeats} repeats (median)")
    print(f"overlay: {ms(total) * 1e3:.0f} ms  (compose {ms(compose) * 1e3:.0f} ms, "
          f"PNG {ms(write) * 1e3:.0f} ms)")
    print(f"plain matplotlib figure: {ms(plain) * 1e3:.0f} ms ({ms(plain) / ms(total):.1f}x slower)")


if __name__ == "__main__":
    main()
