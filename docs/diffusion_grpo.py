"""Draws docs/diffusion_grpo.png from the samples of `rlgen diffusion-grpo`, one run per
method, all from the same pretrained model (the untrained-by-RL samples of the first run
on the left):

    rlgen digits diffusion --out-dir runs/digits-diffusion
    for m in grpo grpo-fast nft draft refl dpo; do
      rlgen diffusion-grpo --pretrained runs/digits-diffusion --method $m \\
        --out-dir runs/diffusion-grpo-$m
    done
    python docs/diffusion_grpo.py runs
"""

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ("grpo", "grpo-fast", "nft", "draft", "refl", "dpo")


def canvas(images, rows=8, cols=6):
    out = np.full((rows * 9 + 1, cols * 9 + 1), 16.0)
    for i, image in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        out[1 + 9 * r : 9 + 9 * r, 1 + 9 * c : 9 + 9 * c] = image
    return out


def main(runs: Path, out: Path) -> None:
    fig, axes = plt.subplots(1, 1 + len(METHODS), figsize=(16, 3.6), dpi=80)
    first = runs / f"diffusion-grpo-{METHODS[0]}"
    panels = [("pretrained", np.load(first / "samples_before.npz")["images"], None)]
    for method in METHODS:
        folder = runs / f"diffusion-grpo-{method}"
        summary = json.loads((folder / "summary.json").read_text())
        panels.append((method, np.load(folder / "samples_after.npz")["images"], summary))
    for ax, (name, images, summary) in zip(axes, panels, strict=True):
        ax.imshow(16 - canvas(images), cmap="gray", vmin=0, vmax=16, interpolation="nearest")
        ax.set_axis_off()
        if summary is None:
            s = json.loads((first / "summary.json").read_text())
            title = f"pretrained\n3s: {s['target_share_before']:.0%}"
        else:
            title = (f"{name}\n3s: {summary['target_share_after']:.0%}, "
                     f"FD {summary['frechet_target_after']:.1f}")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"), Path(__file__).with_suffix(".png"))
