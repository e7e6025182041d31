"""Matplotlib figures about action chunks and SmolVLA's insides.

* :func:`plot_denoising`: one chunk at every Euler step, noise turning into actions;
* :func:`plot_chunks_over_time`: the chunks a policy predicted during an episode, each drawn from the control step
  it was predicted at, against what the robot actually did (how chunking and `n_action_steps` look in time);
* :func:`plot_loss_curve`, :func:`save_figure`: training curves and saving;
* :func:`plot_attention_mask`: who-sees-whom among prefix and suffix tokens;
* :func:`plot_layer_interleave`: which layers are joint self-attention and which cross-attention.

Every function returns a matplotlib Figure; matplotlib is imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from smolvla_kit.errors import InputError
from smolvla_kit.units import JOINT_NAMES
from smolvla_kit.vocabulary import CONTROL_HZ


def _plt():
    # Imported on first use; with no display matplotlib falls back to its Agg backend by itself.
    import matplotlib.pyplot as plt

    return plt


def _joint_label(j: int, joint_names: Sequence[str]) -> str:
    if j >= len(joint_names):
        return f"dim {j}"
    unit = "0..100" if joint_names[j] == "gripper" else "deg"
    return f"{joint_names[j]} ({unit})"


def _joint_axes(dims: int, cols: int = 3, width: float = 4.2, height: float = 2.8):
    """A grid of one subplot per joint; surplus cells switched off."""
    plt = _plt()
    cols = min(cols, dims)
    rows = int(np.ceil(dims / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for k in range(dims, rows * cols):
        axes[k // cols][k % cols].axis("off")
    return fig, [axes[j // cols][j % cols] for j in range(dims)]


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
    if traj.ndim != 3:
        raise InputError(
            f"plot_denoising wants one trajectory (num_steps + 1, chunk, A); got shape {traj.shape}. "
            f"Pick one batch element, e.g. trajectory[:, 0]."
        )
    steps, chunk, dims = traj.shape
    fig, axes = _joint_axes(dims)
    cmap = plt.get_cmap("viridis")
    for j, ax in enumerate(axes):
        for s in range(steps):
            ax.plot(traj[s, :, j], color=cmap(s / max(1, steps - 1)), lw=2.0 if s == steps - 1 else 0.8,
                    alpha=1.0 if s == steps - 1 else 0.6)
        ax.set_title(_joint_label(j, joint_names), fontsize=9)
        ax.set_xlabel("action index in chunk", fontsize=8)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(vmin=1.0, vmax=0.0))
    fig.colorbar(sm, ax=fig.axes, label="flow time t (1 = noise, 0 = action)", shrink=0.8)
    fig.suptitle(title)
    return fig


def plot_chunks_over_time(
    chunks: Sequence[Any],
    starts: Sequence[int],
    executed: Any | None = None,
    n_action_steps: int | None = None,
    joint_names: Sequence[str] = JOINT_NAMES,
    fps: float = CONTROL_HZ,
    title: str = "Predicted chunks over an episode",
):
    """Each predicted chunk drawn from the control step it was predicted at.

    The part of a chunk the robot executed (its first `n_action_steps` actions) is solid, the rest (thrown away
    when the next chunk arrived) dotted. With `executed`, the actions actually sent are drawn in black on top.

    Args:
        chunks: K chunks, each (T, A) in robot units.
        starts: the control step at which each chunk was predicted (K integers).
        executed: (N, A) the actions sent, one per control step, or None.
        n_action_steps: actions executed per chunk; by default up to the next chunk's start.
        fps: control rate, for the time axis in seconds.
    """
    plt = _plt()
    chunks = [np.asarray(c, dtype=np.float64) for c in chunks]
    if not chunks:
        raise InputError("plot_chunks_over_time needs at least one chunk.")
    if len(starts) != len(chunks):
        raise InputError(f"{len(chunks)} chunks but {len(starts)} start steps; give one start per chunk.")
    dims = chunks[0].shape[-1]
    for k, c in enumerate(chunks):
        if c.ndim != 2 or c.shape[-1] != dims:
            raise InputError(f"chunk {k} has shape {c.shape}; every chunk must be (T, {dims}).")
    fig, axes = _joint_axes(dims)
    cmap = plt.get_cmap("tab10")
    for k, (chunk, start) in enumerate(zip(chunks, starts)):
        T = len(chunk)
        if n_action_steps is not None:
            used = min(T, n_action_steps)
        elif k + 1 < len(starts):
            used = int(np.clip(starts[k + 1] - start, 1, T))
        else:
            used = T
        t = (start + np.arange(T)) / fps
        color = cmap(k % 10)
        for j, ax in enumerate(axes):
            ax.plot(t[:used], chunk[:used, j], color=color, lw=1.6)
            if used < T:
                ax.plot(t[used - 1:], chunk[used - 1:, j], color=color, lw=1.0, ls=":")
            ax.axvline(start / fps, color=color, lw=0.5, alpha=0.5)
    if executed is not None:
        executed = np.asarray(executed, dtype=np.float64)
        t = np.arange(len(executed)) / fps
        for j, ax in enumerate(axes):
            ax.plot(t, executed[:, j], color="black", lw=0.9, label="executed" if j == 0 else None)
    for j, ax in enumerate(axes):
        ax.set_title(_joint_label(j, joint_names), fontsize=9)
        ax.set_xlabel("time (s)", fontsize=8)
    if executed is not None:
        axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title + " (solid: executed part of each chunk, dotted: discarded)")
    fig.tight_layout()
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


def plot_action_queue(runs: dict[str, Any], fps: float = CONTROL_HZ, title: str = "Action queue over an episode"):
    """Queue length against time for each run (e.g. {"sync": stats, "async": stats}), with the moments an
    observation was sent (triangles) and a chunk arrived (dots).

    Each value is a `smolvla_kit.deploy.client.EpisodeStats` (or anything with `queue_sizes`, `request_ticks` and
    `reply_ticks`). Where the line touches zero the arm had nothing to execute and stood waiting.
    """
    plt = _plt()
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.3 * len(runs)), sharex=True, squeeze=False)
    for ax, (name, stats) in zip(axes[:, 0], runs.items()):
        sizes = np.asarray(stats.queue_sizes, dtype=float)
        t = np.arange(len(sizes)) / fps
        ax.fill_between(t, sizes, step="post", alpha=0.3)
        ax.step(t, sizes, where="post", lw=1)
        for ticks, marker, label in ((stats.request_ticks, "v", "observation sent"), (stats.reply_ticks, "o", "chunk in")):
            ticks = [k for k in ticks if k < len(sizes)]
            ax.plot(np.asarray(ticks) / fps, sizes[ticks] if ticks else [], marker, ms=5, ls="none", label=label)
        idle = float(np.mean(sizes == 0)) if sizes.size else 0.0
        ax.set_ylabel("queued actions")
        ax.set_title(f"{name}: waiting {idle:.0%} of the time", fontsize=9)
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_attention_mask(
    mask: Any,
    segments: Sequence[tuple[str, int]] | None = None,
    title: str = "Attention mask (row = query token, column = key token)",
    ax: Any | None = None,
):
    """Who sees whom: a (N, N) boolean mask as a picture, with the token groups marked.

    Args:
        mask: (N, N) bool, True where query token i (row) may attend to key token j (column); e.g. one batch
            element of `smolvla.block_causal_mask`.
        segments: consecutive token groups [(name, count), ...] summing to N (e.g. `[("front", 64), ...]`); drawn
            as separating lines with their names along both axes.
    """
    plt = _plt()
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise InputError(f"mask must be square (N, N); got shape {m.shape}. Pick one batch element, e.g. mask[0].")
    n = m.shape[0]
    if segments is not None and sum(c for _, c in segments) != n:
        raise InputError(f"segments {list(segments)} cover {sum(c for _, c in segments)} tokens; the mask has {n}.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 6.5))
    else:
        fig = ax.figure
    from matplotlib.colors import ListedColormap

    ax.imshow(m, cmap=ListedColormap(["#f2f2f2", "#2b6cb0"]), vmin=0, vmax=1, interpolation="nearest")
    if segments:
        edges = np.cumsum([0] + [c for _, c in segments])
        for e in edges[1:-1]:
            ax.axhline(e - 0.5, color="#d62728", lw=0.8)
            ax.axvline(e - 0.5, color="#d62728", lw=0.8)
        centres = [(a + b - 1) / 2 for a, b in zip(edges[:-1], edges[1:])]
        names = [name for name, _ in segments]
        ax.set_xticks(centres, names, rotation=90, fontsize=8)
        ax.set_yticks(centres, names, fontsize=8)
    ax.set_xlabel("key: is seen")
    ax.set_ylabel("query: looks")
    ax.set_title(title, fontsize=10)
    return fig


def plot_layer_interleave(
    is_cross: Sequence[bool],
    expert_at: Sequence[int | None] | None = None,
    title: str = "VLM and expert layers side by side",
):
    """Two rows of boxes: the VLM's layers and, beside each, the expert layer that runs with it and how.

    Args:
        is_cross: per VLM layer, True if the expert cross-attends to that layer's keys/values, False if the two
            streams share one joint self-attention (`SmolVLMWithExpert.is_cross`).
        expert_at: per VLM layer, the index of the expert layer running beside it or None
            (`SmolVLMWithExpert.expert_at`); all layers have one when None.
    """
    plt = _plt()
    from matplotlib.patches import Patch, Rectangle

    n = len(is_cross)
    expert_at = list(expert_at) if expert_at is not None else list(range(n))
    if len(expert_at) != n:
        raise InputError(f"is_cross has {n} layers but expert_at has {len(expert_at)}.")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * n + 1.5), 2.4))
    self_c, cross_c, vlm_c = "#4c9f70", "#e6862a", "#7f8fa6"
    for i in range(n):
        ax.add_patch(Rectangle((i, 1.1), 0.9, 0.8, color=vlm_c))
        ax.text(i + 0.45, 1.5, str(i), ha="center", va="center", color="white", fontsize=8)
        if expert_at[i] is not None:
            ax.add_patch(Rectangle((i, 0.0), 0.9, 0.8, color=cross_c if is_cross[i] else self_c))
            ax.text(i + 0.45, 0.4, str(expert_at[i]), ha="center", va="center", color="white", fontsize=8)
            ax.annotate("", xy=(i + 0.45, 0.8), xytext=(i + 0.45, 1.1),
                        arrowprops=dict(arrowstyle="->" if is_cross[i] else "<->", lw=0.8))
    ax.set_xlim(-1.6, n + 0.1)
    ax.set_ylim(-0.1, 2.0)
    ax.text(-0.2, 1.5, "VLM", ha="right", va="center", fontsize=9)
    ax.text(-0.2, 0.4, "expert", ha="right", va="center", fontsize=9)
    ax.axis("off")
    ax.legend(handles=[Patch(color=self_c, label="joint self-attention (prefix + actions)"),
                       Patch(color=cross_c, label="cross-attention (actions -> VLM K/V)")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


__all__ = [
    "plot_attention_mask",
    "plot_chunks_over_time",
    "plot_denoising",
    "plot_layer_interleave",
    "plot_loss_curve",
    "save_figure",
]
