"""Normalisation statistics in LeRobot's layout.

Each feature gets `min, max, mean, std, count, q01, q10, q50, q90, q99`. Vectors (state, action, the index
columns) get one value per entry, shape (D,); `count` is the number of frames. Camera features get one value per
colour channel, shape (3, 1, 1), in [0, 1] (pixel / 255), so they broadcast over a (3, H, W) image.

Per episode the writer keeps the stats in `meta/episodes` (columns `stats/<feature>/<stat>`); `meta/stats.json`
is their aggregate: count-weighted mean, pooled variance, overall min/max, and (as LeRobot does) count-weighted
averages of the per-episode quantiles. Because the per-episode stats survive any crash, `stats.json` can always
be rebuilt from them (`writer.recompute_stats`).

Image stats are exact: a camera frame is uint8, so a 256-bin histogram per channel holds everything needed for
mean, std, min, max and quantiles, at the cost of one `np.bincount` per frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smolvla_kit.errors import InputError

QUANTILES: tuple[float, ...] = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS: tuple[str, ...] = tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES)
STAT_KEYS: tuple[str, ...] = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)

Stats = dict[str, dict[str, np.ndarray]]


class ImageHistogram:
    """Per-channel histogram of uint8 RGB frames: exact image stats in O(1) memory per camera."""

    def __init__(self) -> None:
        self.hist = np.zeros((3, 256), dtype=np.int64)  # (C, 256)
        self.frames = 0

    def update(self, image: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 frame."""
        flat = image.reshape(-1, 3).astype(np.int64) + np.array([0, 256, 512])  # channel c -> bins [256c, 256c+256)
        self.hist += np.bincount(flat.ravel(), minlength=768).reshape(3, 256)
        self.frames += 1

    def stats(self) -> dict[str, np.ndarray]:
        return image_stats_from_histogram(self.hist, self.frames)


def image_stats_from_histogram(hist: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """Stats of shape (3, 1, 1) in [0, 1] from a (3, 256) pixel histogram over `frames` frames."""
    values = np.arange(256, dtype=np.float64) / 255.0
    total = hist.sum(axis=1, keepdims=True).astype(np.float64)  # (3, 1)
    total = np.maximum(total, 1.0)
    mean = (hist * values).sum(axis=1) / total[:, 0]  # (3,)
    var = (hist * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total[:, 0]
    nonzero = hist > 0
    vmin = np.array([values[np.argmax(nz)] if nz.any() else 0.0 for nz in nonzero])
    vmax = np.array([values[255 - np.argmax(nz[::-1])] if nz.any() else 0.0 for nz in nonzero])
    cdf = np.cumsum(hist, axis=1) / total  # (3, 256)
    out = {"min": vmin, "max": vmax, "mean": mean, "std": np.sqrt(var)}
    for q, key in zip(QUANTILES, QUANTILE_KEYS, strict=True):
        out[key] = values[np.argmax(cdf >= q - 1e-12, axis=1)]
    out = {k: v.reshape(3, 1, 1) for k, v in out.items()}
    out["count"] = np.array([frames], dtype=np.int64)
    return out


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of a (T,) or (T, D) array over its frames: each stat has shape (D,) (or (1,) for a scalar column)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]  # (T, 1): scalar columns keep a length-1 axis, as in LeRobot
    arr = arr.reshape(arr.shape[0], -1)  # (T, D)
    out = {
        "min": arr.min(axis=0),
        "max": arr.max(axis=0),
        "mean": arr.mean(axis=0),
        "std": arr.std(axis=0),
        "count": np.array([arr.shape[0]], dtype=np.int64),
    }
    qs = np.quantile(arr, QUANTILES, axis=0)  # (Q, D)
    for key, qv in zip(QUANTILE_KEYS, qs, strict=True):
        out[key] = qv
    return out


def aggregate_stats(per_episode: list[Stats]) -> Stats:
    """Combine per-episode stats into dataset stats (pooled mean/variance, count-weighted quantiles)."""
    keys: list[str] = []
    for st in per_episode:
        keys += [k for k in st if k not in keys]
    out: Stats = {}
    for key in keys:
        items = [st[key] for st in per_episode if key in st]
        counts = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in items])  # (E,)
        total = counts.sum()
        w = (counts / max(total, 1.0)).reshape((-1,) + (1,) * np.asarray(items[0]["mean"]).ndim)  # (E, 1, ...)
        means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in items])  # (E, ...)
        stds = np.stack([np.asarray(s["std"], dtype=np.float64) for s in items])
        mean = (w * means).sum(axis=0)
        var = (w * (stds**2 + (means - mean) ** 2)).sum(axis=0)  # parallel-variance formula
        agg = {
            "min": np.min(np.stack([np.asarray(s["min"], dtype=np.float64) for s in items]), axis=0),
            "max": np.max(np.stack([np.asarray(s["max"], dtype=np.float64) for s in items]), axis=0),
            "mean": mean,
            "std": np.sqrt(np.maximum(var, 0.0)),
            "count": np.array([int(total)], dtype=np.int64),
        }
        for qk in QUANTILE_KEYS:
            if all(qk in s for s in items):
                agg[qk] = (w * np.stack([np.asarray(s[qk], dtype=np.float64) for s in items])).sum(axis=0)
        out[key] = agg
    return out


# ----------------------------------------------------------------------------------------------------------------
# Serialisation: stats.json and the `stats/<feature>/<stat>` columns of meta/episodes


def stats_to_json(stats: Stats) -> dict[str, dict[str, Any]]:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(obj: dict, source: str = "stats.json") -> Stats:
    out: Stats = {}
    if not isinstance(obj, dict):
        raise InputError(f"{source}: expected a JSON object of features, got {type(obj).__name__}.")
    for key, d in obj.items():
        if not isinstance(d, dict):
            raise InputError(f"{source}: stats of '{key}' must be an object with mean/std/..., got {d!r:.80}.")
        out[key] = {
            s: np.atleast_1d(np.asarray(v, dtype=np.int64 if s == "count" else np.float64)) for s, v in d.items()
        }
    return out


def stats_to_columns(stats: Stats) -> dict[str, Any]:
    """{"stats/<feature>/<stat>": nested list} for one row of meta/episodes."""
    return {f"stats/{k}/{s}": np.asarray(v).tolist() for k, d in stats.items() for s, v in d.items()}


def stats_from_columns(row: dict[str, Any]) -> Stats:
    """Inverse of :func:`stats_to_columns` (skips null cells, e.g. stats LeRobot did not compute)."""
    out: Stats = {}
    for col, val in row.items():
        if not col.startswith("stats/") or val is None:
            continue
        feature, _, stat = col[len("stats/") :].rpartition("/")
        out.setdefault(feature, {})[stat] = np.asarray(val, dtype=np.int64 if stat == "count" else np.float64)
    return out


def check_finite(stats: Stats, source: str) -> None:
    for key, d in stats.items():
        for s, v in d.items():
            if not np.all(np.isfinite(np.asarray(v, dtype=np.float64))):
                raise InputError(f"{source}: stats '{key}/{s}' contains NaN or infinity.")


__all__ = [
    "QUANTILES",
    "STAT_KEYS",
    "ImageHistogram",
    "vector_stats",
    "aggregate_stats",
    "stats_to_json",
    "stats_from_json",
]
