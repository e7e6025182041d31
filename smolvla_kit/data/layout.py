"""The on-disk layout of a LeRobot dataset (format v3.0, and v2.1 for reading), and small I/O helpers.

A v3.0 dataset folder, as `lerobot-record` writes it::

    meta/info.json                                   fps, robot type, features, totals, path templates
    meta/stats.json                                  mean/std/min/max/count/quantiles per feature
    meta/tasks.parquet                               one row per task string: task_index, task
    meta/episodes/chunk-000/file-000.parquet         one row per episode: where its rows/frames live + its stats
    data/chunk-000/file-000.parquet                  one row per frame (state, action, timestamp, indices)
    videos/<camera key>/chunk-000/file-000.mp4       one video stream per camera

A data or video file may hold several episodes back to back; `meta/episodes` says which file holds an episode
(`data/chunk_index`, `data/file_index`), which global rows (`dataset_from_index` .. `dataset_to_index`) and which
span of each video (`videos/<key>/from_timestamp` .. `to_timestamp`, in seconds).

The older v2.1 layout keeps one file per episode (`data/chunk-000/episode_000000.parquet`,
`videos/chunk-000/<key>/episode_000000.mp4`) and its metadata in JSON-lines files (`meta/episodes.jsonl`,
`meta/tasks.jsonl`, `meta/episodes_stats.jsonl`).

Everything that can go wrong with a file raises :class:`DatasetError`, whose message names the file and says
what to do about it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from smolvla_kit.errors import KitError
from smolvla_kit.units import JOINT_NAMES
from smolvla_kit.vocabulary import ACTION_KEY, IMAGE_PREFIX, STATE_KEY

# ----------------------------------------------------------------------------------------------------------------
# Names and templates (the values LeRobot 0.6 uses)

CODEBASE_VERSION = "v3.0"
READABLE_VERSIONS = ("v3.0", "v2.1", "v2.0")

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"

# v2.1 (read only)
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
LEGACY_TASKS_PATH = "meta/tasks.jsonl"
LEGACY_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"
LEGACY_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
LEGACY_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"

DEFAULT_CHUNKS_SIZE = 1000  # files per chunk folder
DEFAULT_DATA_FILES_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILES_SIZE_IN_MB = 200


# Columns every frame carries; the writer fills them in, so `add_frame` must not pass them.
INDEX_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}

# LeRobot's SO-100/SO-101 follower names every state/action entry "<motor>.pos"; using the same names makes a
# simulated dataset look exactly like one recorded on the real arm.
SO101_JOINT_FEATURE_NAMES: list[str] = [f"{name}.pos" for name in JOINT_NAMES]

# Scratch space inside the dataset root for files that are not committed yet (same filesystem, so a rename
# into place is atomic). LeRobot never looks inside it; resuming deletes it.
STAGING_DIR = ".staging"
TMP_SUFFIX = ".tmp"


class DatasetError(KitError, RuntimeError):
    """A dataset file is missing, corrupted or does not match what the caller needs.

    The message always names the file (or feature key) and what to do next.
    """


# ----------------------------------------------------------------------------------------------------------------
# Features


def so101_features(
    cameras: dict[str, tuple[int, int]] | None = None,
    joint_names: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Feature spec of an SO-101 dataset as `lerobot-record` writes it (without the index columns).

    Args:
        cameras: camera name -> (height, width); each becomes a video feature `observation.images.<name>`.
            Defaults to a 128x128 `front` and `wrist` camera (the kit's simulator).
        joint_names: names of the state/action entries; default `shoulder_pan.pos` ... `gripper.pos`.
    """
    if cameras is None:
        cameras = {"front": (128, 128), "wrist": (128, 128)}
    names = list(joint_names or SO101_JOINT_FEATURE_NAMES)
    features: dict[str, dict[str, Any]] = {
        ACTION_KEY: {"dtype": "float32", "shape": [len(names)], "names": names},
        STATE_KEY: {"dtype": "float32", "shape": [len(names)], "names": list(names)},
    }
    for cam, (h, w) in cameras.items():
        key = cam if cam.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + cam
        features[key] = {"dtype": "video", "shape": [int(h), int(w), 3], "names": ["height", "width", "channels"]}
    return features


def camera_keys_of(features: dict[str, dict[str, Any]]) -> list[str]:
    """Keys of the visual features (stored as video or as images inside the parquet files), in order."""
    return [k for k, ft in features.items() if ft.get("dtype") in ("video", "image")]


def video_keys_of(features: dict[str, dict[str, Any]]) -> list[str]:
    return [k for k, ft in features.items() if ft.get("dtype") == "video"]


def image_hw(feature: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of a visual feature; LeRobot stores the shape as (H, W, C) with names to say so."""
    shape = list(feature["shape"])
    names = feature.get("names") or []
    if list(names)[:3] == ["channels", "height", "width"]:
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


# ----------------------------------------------------------------------------------------------------------------
# Reading files with errors that name them


def rel(root: Path, path: Path) -> str:
    """`path` relative to the dataset root when possible (shorter, clearer messages)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def load_json(path: Path, what: str = "") -> Any:
    """Read a JSON file; a missing or malformed file raises DatasetError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found{' (' + what + ')' if what else ''}.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"{path}: not valid JSON ({exc}). The file is corrupted; restore it from a backup or re-record the dataset."
        ) from exc


def load_jsonl(path: Path) -> list[dict]:
    """Read a JSON-lines file (v2.1 metadata); errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (v2.1 datasets keep their metadata in meta/*.jsonl).")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}, line {lineno}: not valid JSON ({exc}). The file is corrupted.") from exc
    return rows


def read_parquet(path: Path, columns: list[str] | None = None, hint: str = ""):
    """Read a parquet file into a pyarrow Table; missing/truncated/garbage files raise DatasetError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found. {hint}".rstrip())
    try:
        # One open file: a writer replacing the file meanwhile (an atomic rename) cannot mix two versions.
        with open(path, "rb") as fh:
            return pq.read_table(fh, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(
            f"{path}: cannot read this parquet file ({type(exc).__name__}: {exc}). The file is truncated or "
            f"corrupted. {hint}".rstrip()
        ) from exc


# ----------------------------------------------------------------------------------------------------------------
# Durable writes: write a temporary file next to the target, fsync it, rename it over the target, fsync the folder.
# A reader (or a kill -9 at any moment) sees either the old file or the new one, never half of one.


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def tmp_path_for(path: Path) -> Path:
    """A temporary name next to `path` that no LeRobot glob (`*/*.parquet`, `*.mp4`) matches."""
    return path.with_name(path.name + TMP_SUFFIX)


def replace_durably(src: Path, dst: Path) -> None:
    """fsync `src`, rename it to `dst` (atomic on POSIX), fsync `dst`'s folder."""
    fsync_file(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    fsync_dir(dst.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=4, ensure_ascii=False) + "\n").encode("utf-8"))


def write_parquet_atomic(path: Path, table) -> None:
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    pq.write_table(table, tmp, compression="snappy")
    replace_durably(tmp, path)


__all__ = [
    "CODEBASE_VERSION",
    "DatasetError",
    "INFO_PATH",
    "STATS_PATH",
    "TASKS_PATH",
    "EPISODES_PATH",
    "DATA_PATH",
    "VIDEO_PATH",
    "STATE_KEY",
    "ACTION_KEY",
    "IMAGE_PREFIX",
    "INDEX_FEATURES",
    "SO101_JOINT_FEATURE_NAMES",
    "so101_features",
    "camera_keys_of",
    "video_keys_of",
]
