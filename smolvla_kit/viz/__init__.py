"""Plots shared by the notebooks, `smolvla-kit eval` and the demo report.

Every function returns a matplotlib Figure; matplotlib is imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from smolvla_kit.units import JOINT_NAMES


def _plt():
    # Imported on first use; with no display matplotlib falls back to its Agg backend by itself.
    import matplotlib.pyplot as plt

    return plt


def plot_denoising(
    trajectory: Any,
    joint_names: Sequence[str] = JOINT_NAMES,
    title: str = "Denoising one action chunk",
):
    """Every joint's chunk at every Euler step: noise (light) turning into the final actions (dark).

    Args:
        trajectory: (num_steps + 1, chunk, A) in robot units, x_t for t = 1 (noise) ... 0 (actions), as
            `policy.predict_chunk(..., return_trajectory=True)` returns per batch element.
    """
    plt = _plt()
    traj = np.asarray(trajectory)
    steps, chunk, dims = traj.shape
    cols = min(3, dims)
    rows = int(np.ceil(dims / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for j in range(dims):
        ax = axes[j // cols][j % cols]
        for s in range(steps):
            ax.plot(traj[s, :, j], color=cmap(s / max(1, steps - 1)), lw=2.0 if s == steps - 1 else 0.8,
                    alpha=1.0 if s == steps - 1 else 0.6)
        unit = "0..100" if j < len(joint_names) and joint_names[j] == "gripper" else "deg"
        ax.set_title(f"{joint_names[j] if j < len(joint_names) else f'dim {j}'} ({unit})", fontsize=9)
        ax.set_xlabel("action index in chunk", fontsize=8)
    for k in range(dims, rows * cols):
        axes[k // cols][k % cols].axis("off")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(vmin=1.0, vmax=0.0))
    fig.colorbar(sm, ax=axes, label="flow time t (1 = noise, 0 = action)", shrink=0.8)
    fig.suptitle(title)
    return fig


def plot_loss_curve(steps: Sequence[float], losses: Sequence[float], title: str = "Training loss"):
    """Flow-matching loss against optimiser steps, log scale."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save and close a figure."""
    plt = _plt()
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["plot_denoising", "plot_loss_curve", "save_figure"]
