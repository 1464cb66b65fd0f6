"""Draws docs/digits_families.png from the samples of the five `rlgen digits FAMILY` runs.

    for f in vae gan diffusion flow energy; do rlgen digits $f --out-dir runs/digits-$f; done
    python docs/digits_families.py runs
"""

import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FAMILIES = ("vae", "gan", "diffusion", "flow", "energy")


def main(runs: Path, out: Path) -> None:
    fig, axes = plt.subplots(1, len(FAMILIES), figsize=(15, 3.4), dpi=80)
    for ax, family in zip(axes, FAMILIES, strict=True):
        saved = np.load(runs / f"digits-{family}" / "samples.npz")
        images = saved["images"]
        if "labels" in saved:  # one row per class
            rows = [images[saved["labels"] == c][:8] for c in range(10)]
        else:
            rows = [images[8 * i : 8 * (i + 1)] for i in range(10)]
        canvas = np.full((10 * 9 + 1, 8 * 9 + 1), 16.0)
        for r, row in enumerate(rows):
            for c, image in enumerate(row):
                canvas[1 + 9 * r : 9 + 9 * r, 1 + 9 * c : 9 + 9 * c] = image
        ax.imshow(16 - canvas, cmap="gray", vmin=0, vmax=16, interpolation="nearest")
        ax.set_axis_off()
        suffix = " (one row per class)" if "labels" in saved else ""
        ax.set_title(f"rlgen digits {family}{suffix}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"), Path(__file__).with_suffix(".png"))
