"""Pictures of 2-D flows: vector fields, particle paths and point clouds.

Flow matching is easiest to see in two dimensions. These functions take plain numpy arrays (or a callable that
returns them), so the same pictures serve the toy in notebook 02 and any 2-D slice of a real policy's actions.

The kit follows SmolVLA's convention throughout: noise at t = 1, data at t = 0, and sampling runs Euler steps from
t = 1 *down* to 0 with dt = -1/n, so a particle moves by ``-v * |dt|`` each step. :func:`plot_vector_field`
therefore draws ``-v`` by default, the direction particles actually travel while sampling.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from smolvla_kit.errors import InputError

from .plots import _plt


def grid_points(lim: float | tuple[float, float, float, float] = 3.0, n: int = 21) -> np.ndarray:
    """An n x n grid of 2-D points, (n*n, 2), over [-lim, lim]^2 or over (xmin, xmax, ymin, ymax)."""
    xmin, xmax, ymin, ymax = _limits(lim)
    xs, ys = np.meshgrid(np.linspace(xmin, xmax, n), np.linspace(ymin, ymax, n))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _limits(lim: float | Sequence[float]) -> tuple[float, float, float, float]:
    if np.isscalar(lim):
        return (-float(lim), float(lim), -float(lim), float(lim))
    if len(lim) != 4:
        raise InputError(f"lim must be a number or (xmin, xmax, ymin, ymax); got {lim!r}.")
    return tuple(float(v) for v in lim)  # type: ignore[return-value]


def _check_points(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"{name} must be 2-D points of shape (N, 2); got shape {arr.shape}.")
    return arr


def plot_vector_field(
    velocity: Callable[[np.ndarray, float], np.ndarray],
    t: float,
    lim: float | tuple[float, float, float, float] = 3.0,
    n: int = 21,
    samples: Any | None = None,
    motion: bool = True,
    ax: Any | None = None,
    title: str | None = None,
):
    """A quiver plot of a 2-D velocity field at flow time t.

    Args:
        velocity: f(points (N, 2), t) -> velocities (N, 2), numpy in and out (wrap a torch model with `no_grad`).
        t: the flow time to draw the field at (1 = noise, 0 = data).
        lim: half width of the square drawn, or (xmin, xmax, ymin, ymax).
        n: arrows per side.
        samples: optional (M, 2) points drawn underneath, e.g. x_t of the probability path at the same t.
        motion: draw -v, where particles go when integrating from t=1 down to t=0 (True), or v itself (False).
    """
    plt = _plt()
    pts = grid_points(lim, n)
    v = np.asarray(velocity(pts, float(t)), dtype=np.float64)
    if v.shape != pts.shape:
        raise InputError(f"velocity(points, t) returned shape {v.shape}; expected {pts.shape} (one 2-D vector per point).")
    arrows = -v if motion else v
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    else:
        fig = ax.figure
    if samples is not None:
        s = _check_points(samples, "samples")
        ax.scatter(s[:, 0], s[:, 1], s=3, color="#9ab", alpha=0.5, lw=0)
    speed = np.linalg.norm(arrows, axis=1)
    ax.quiver(pts[:, 0], pts[:, 1], arrows[:, 0], arrows[:, 1], speed, cmap="magma_r", angles="xy", pivot="mid")
    xmin, xmax, ymin, ymax = _limits(lim)
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.set_aspect("equal")
    ax.set_title(title or f"{'-v' if motion else 'v'}(x, t={t:.2f})", fontsize=10)
    return fig


def plot_particle_paths(
    paths: Any,
    target: Any | None = None,
    max_paths: int = 200,
    lim: float | tuple[float, float, float, float] | None = None,
    ax: Any | None = None,
    title: str | None = None,
):
    """Particles integrated from noise to data: one line per particle, coloured from t=1 (light) to t=0 (dark).

    Args:
        paths: (S+1, N, 2) positions after each of S Euler steps, paths[0] the noise and paths[-1] the samples.
        target: optional (M, 2) samples of the data distribution, drawn underneath in grey.
        max_paths: draw at most this many paths (the first ones); every end point is still drawn.
    """
    plt = _plt()
    p = np.asarray(paths, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != 2 or p.shape[0] < 2:
        raise InputError(f"paths must be (steps + 1, N, 2) with at least one step; got shape {p.shape}.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    else:
        fig = ax.figure
    if target is not None:
        tgt = _check_points(target, "target")
        ax.scatter(tgt[:, 0], tgt[:, 1], s=3, color="#bbbbbb", lw=0, label="data")
    from matplotlib.collections import LineCollection

    cmap = plt.get_cmap("viridis_r")
    steps = p.shape[0] - 1
    shown = p[:, :max_paths]  # (S+1, K, 2)
    segments = np.stack([shown[:-1], shown[1:]], axis=2)  # (S, K, 2 ends, 2)
    colors = np.repeat([cmap(s / max(1, steps - 1)) for s in range(steps)], shown.shape[1], axis=0)
    ax.add_collection(LineCollection(segments.reshape(-1, 2, 2), colors=colors, linewidths=0.7, alpha=0.8))
    ax.scatter(p[0, :max_paths, 0], p[0, :max_paths, 1], s=6, color=cmap(0.0), lw=0, label="noise (t=1)")
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=6, color="#d62728", lw=0, label="samples (t=0)")
    if lim is not None:
        xmin, xmax, ymin, ymax = _limits(lim)
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
    else:
        ax.autoscale()
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper right", markerscale=2)
    ax.set_title(title or f"{steps} Euler step{'s' if steps != 1 else ''}", fontsize=10)
    return fig


def plot_point_clouds(
    clouds: Mapping[str, Any],
    reference: Any | None = None,
    lim: float | tuple[float, float, float, float] | None = None,
    ncols: int | None = None,
    title: str | None = None,
    size: float = 3.0,
):
    """Side-by-side scatter plots of named 2-D point sets (e.g. x_t along the probability path, or samples).

    Args:
        clouds: {panel title: (N, 2) points}.
        reference: optional (M, 2) points drawn in grey under every panel (the data, for comparison).
    """
    plt = _plt()
    if not clouds:
        raise InputError("plot_point_clouds needs at least one point cloud.")
    n = len(clouds)
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    ref = _check_points(reference, "reference") if reference is not None else None
    for k, (name, pts) in enumerate(clouds.items()):
        ax = axes[k // ncols][k % ncols]
        pts = _check_points(pts, f"clouds[{name!r}]")
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=2, color="#cccccc", lw=0)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, color="#1f77b4", lw=0)
        if lim is not None:
            xmin, xmax, ymin, ymax = _limits(lim)
            ax.set_xlim(xmin, xmax)
            ax.set_ylim(ymin, ymax)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=7)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ = ["grid_points", "plot_particle_paths", "plot_point_clouds", "plot_vector_field"]
