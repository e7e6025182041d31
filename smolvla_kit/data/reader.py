"""Read LeRobot datasets (v3.0, and v2.1/v2.0) from a local folder, without LeRobot.

    reader = LeRobotDatasetReader("outputs/datasets/pick_cube")
    reader.meta.fps, reader.meta.camera_keys, reader.meta.tasks, reader.meta.stats
    ep = reader.episode(0)              # states (T, 6), actions (T, 6), frames {key: (T, H, W, 3) uint8}, task
    frame = reader.frame(0, "observation.images.front", 17)   # one (H, W, 3) frame

`meta/episodes` (v3.0) or `meta/episodes.jsonl` (v2.1) is the source of truth: an episode exists when its row is
there, wherever its rows and frames live. Files that no committed episode points to (what an interrupted
recording can leave behind) are ignored.

Decoded frames are kept in an LRU cache (`cache_mb`): a small dataset is decoded once, then training reads
frames from memory.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smolvla_kit.errors import MissingKey

from .layout import (
    ACTION_KEY,
    EPISODES_DIR,
    INFO_PATH,
    LEGACY_EPISODES_PATH,
    LEGACY_EPISODES_STATS_PATH,
    LEGACY_TASKS_PATH,
    READABLE_VERSIONS,
    STATE_KEY,
    STATS_PATH,
    TASKS_PATH,
    DatasetError,
    camera_keys_of,
    load_json,
    load_jsonl,
    read_parquet,
    rel,
    video_keys_of,
)
from .stats import ImageHistogram, Stats, aggregate_stats, stats_from_columns, stats_from_json, vector_stats
from .video import decode_video, match_frames, probe_video

log = logging.getLogger(__name__)

REPAIR_HINT = "python -m smolvla_kit.data repair {root}"
RECOMPUTE_HINT = "python -m smolvla_kit.data recompute-stats {root}"


def require_finite(values: np.ndarray, name: str, episode: int, path: Path | str) -> None:
    """Raise DatasetError naming the file, episode, column and frame if `values` (T, ...) hold a NaN or inf."""
    if values.dtype.kind != "f" or np.isfinite(values).all():
        return
    frame = int(np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))[0])
    raise DatasetError(
        f"{path}: episode {episode} has a non-finite '{name}' at frame {frame} ({values[frame].tolist()}). Nothing "
        f"can be learnt from it: re-record that episode, or leave it out (train --episodes)."
    )


@dataclass
class VideoSpan:
    """Where one episode's frames of one camera live: a file and a time span inside it (seconds)."""

    path: Path
    from_s: float
    to_s: float


@dataclass
class EpisodeInfo:
    """One row of meta/episodes: how long the episode is and where its rows and frames are."""

    index: int
    length: int
    tasks: list[str]
    from_index: int  # global row index ("index" column) of its first frame
    to_index: int  # one past its last frame
    data_path: Path
    videos: dict[str, VideoSpan] = field(default_factory=dict)
    source: str = ""  # the metadata file that describes it (for error messages)


@dataclass
class Episode:
    """One episode, loaded: arrays over its T frames."""

    index: int
    task: str  # the task string of its first frame (episodes nearly always have one task)
    task_index: np.ndarray  # (T,) int64
    timestamps: np.ndarray  # (T,) float32, seconds from the episode start
    states: np.ndarray | None  # (T, S) float32, `observation.state`
    actions: np.ndarray | None  # (T, A) float32, `action`
    frames: dict[str, np.ndarray]  # camera key -> (T, H, W, 3) uint8
    columns: dict[str, np.ndarray]  # every other numeric column, e.g. "next.reward" -> (T,)

    def __len__(self) -> int:
        return len(self.timestamps)


class DatasetMeta:
    """Everything under meta/: fps, features, tasks, episodes, stats (loaded when first asked for)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_file = self.root / INFO_PATH
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset folder not found.")
        if not info_file.is_file():
            raise DatasetError(
                f"{info_file}: file not found. {self.root} is not a LeRobot dataset (every dataset has "
                f"meta/info.json); check the path."
            )
        info = load_json(info_file)
        if not isinstance(info, dict):
            raise DatasetError(f"{info_file}: expected a JSON object, got {type(info).__name__}. Corrupted file.")
        for key in ("codebase_version", "fps", "features"):
            if key not in info:
                raise DatasetError(
                    f"{info_file}: required field '{key}' is missing. The file is corrupted or was not written by "
                    f"LeRobot; restore it or re-record the dataset."
                )
        self.info: dict[str, Any] = info
        self.version = str(info["codebase_version"])
        if self.version not in READABLE_VERSIONS:
            raise DatasetError(
                f"{info_file}: codebase_version '{self.version}' is not supported (readable: "
                f"{', '.join(READABLE_VERSIONS)}). Convert the dataset with LeRobot's conversion scripts."
            )
        features = info["features"]
        if not isinstance(features, dict) or not all(isinstance(v, dict) and "dtype" in v for v in features.values()):
            raise DatasetError(f"{info_file}: 'features' must map each key to {{dtype, shape, names}}. Corrupted file.")
        for key, ft in features.items():
            if ft.get("shape") is None:
                raise DatasetError(f"{info_file}: feature '{key}' has no 'shape'.")
        try:
            self.fps = int(round(float(info["fps"])))
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{info_file}: 'fps' must be a number, got {info['fps']!r}.") from exc
        if self.fps <= 0:
            raise DatasetError(f"{info_file}: 'fps' must be positive, got {info['fps']!r}.")
        self.features: dict[str, dict[str, Any]] = features
        self.robot_type: str | None = info.get("robot_type")
        self.camera_keys: list[str] = camera_keys_of(features)
        self.video_keys: list[str] = video_keys_of(features)
        self.image_keys: list[str] = [k for k in self.camera_keys if k not in self.video_keys]
        self._stats: Stats | None = None
        self._episode_stats: dict[int, Stats] | None = None

        if self.version == "v3.0":
            self.tasks = self._load_tasks_v3()
            self.episodes = self._load_episodes_v3()
        else:
            self.tasks = self._load_tasks_v2()
            self.episodes = self._load_episodes_v2()
        self._by_index = {ep.index: i for i, ep in enumerate(self.episodes)}
        self._check_totals()

    # -- v3.0 --------------------------------------------------------------------------------------------------

    def _load_tasks_v3(self) -> list[str]:
        path = self.root / TASKS_PATH
        if not path.is_file():
            if int(self.info.get("total_tasks", 0) or 0) > 0:
                raise DatasetError(f"{path}: file not found but meta/info.json lists tasks. Re-record the dataset.")
            return []
        table = read_parquet(path, hint="Restore it or re-record the dataset.")
        cols = table.column_names
        task_col = "task" if "task" in cols else "__index_level_0__" if "__index_level_0__" in cols else None
        if task_col is None or "task_index" not in cols:
            raise DatasetError(f"{path}: expected columns 'task_index' and 'task', found {cols}.")
        idx = table.column("task_index").to_pylist()
        names = table.column(task_col).to_pylist()
        tasks: list[str] = [""] * (max(idx) + 1 if idx else 0)
        for i, name in zip(idx, names, strict=True):
            tasks[int(i)] = str(name)
        return tasks

    def _episode_files_v3(self) -> list[Path]:
        return sorted((self.root / EPISODES_DIR).glob("*/*.parquet"))

    def _load_episodes_v3(self) -> list[EpisodeInfo]:
        import pyarrow.parquet as pq

        files = self._episode_files_v3()
        self._check_templates()
        episodes: list[EpisodeInfo] = []
        for f in files:
            try:
                names = [n for n in pq.read_schema(f).names if not n.startswith("stats/")]
            except Exception as exc:  # noqa: BLE001 - any failure to read the footer means a broken file
                raise DatasetError(
                    f"{f}: cannot read this parquet file ({type(exc).__name__}: {exc}). The episode index is "
                    f"corrupted; restore it, or run `{REPAIR_HINT.format(root=self.root)}` if a recording was "
                    f"interrupted."
                ) from exc
            table = read_parquet(f, columns=names)
            need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
            need += [f"videos/{k}/{c}" for k in self.video_keys for c in ("chunk_index", "file_index")]
            missing = [c for c in need if c not in table.column_names]
            if missing:
                raise DatasetError(f"{f}: missing columns {missing} (found {table.column_names}).")
            for row in table.to_pylist():
                ep = int(row["episode_index"])
                length = int(row["length"])
                data_path = self._path_from_template(
                    "data_path", chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
                )
                videos = {}
                for k in self.video_keys:
                    from_s = float(row.get(f"videos/{k}/from_timestamp") or 0.0)
                    to_s = row.get(f"videos/{k}/to_timestamp")
                    videos[k] = VideoSpan(
                        path=self._path_from_template(
                            "video_path",
                            video_key=k,
                            chunk_index=int(row[f"videos/{k}/chunk_index"]),
                            file_index=int(row[f"videos/{k}/file_index"]),
                        ),
                        from_s=from_s,
                        to_s=float(to_s) if to_s is not None else from_s + length / self.fps,
                    )
                from_index = row.get("dataset_from_index")
                to_index = row.get("dataset_to_index")
                episodes.append(
                    EpisodeInfo(
                        index=ep,
                        length=length,
                        tasks=[str(t) for t in (row.get("tasks") or [])],
                        from_index=int(from_index) if from_index is not None else -1,
                        to_index=int(to_index) if to_index is not None else -1,
                        data_path=data_path,
                        videos=videos,
                        source=rel(self.root, f),
                    )
                )
        episodes.sort(key=lambda e: e.index)
        self._check_episode_list(episodes, EPISODES_DIR)
        return episodes

    # -- v2.1 / v2.0 -------------------------------------------------------------------------------------------

    def _load_tasks_v2(self) -> list[str]:
        rows = load_jsonl(self.root / LEGACY_TASKS_PATH)
        tasks: list[str] = [""] * (max((int(r["task_index"]) for r in rows), default=-1) + 1)
        for r in rows:
            tasks[int(r["task_index"])] = str(r["task"])
        return tasks

    def _load_episodes_v2(self) -> list[EpisodeInfo]:
        src = self.root / LEGACY_EPISODES_PATH
        rows = sorted(load_jsonl(src), key=lambda r: int(r["episode_index"]))
        chunks_size = int(self.info.get("chunks_size", 1000))
        self._check_templates()
        episodes: list[EpisodeInfo] = []
        start = 0
        for r in rows:
            ep, length = int(r["episode_index"]), int(r["length"])
            chunk = ep // chunks_size
            videos = {
                k: VideoSpan(
                    path=self._path_from_template("video_path", episode_chunk=chunk, video_key=k, episode_index=ep),
                    from_s=0.0,
                    to_s=length / self.fps,
                )
                for k in self.video_keys
            }
            episodes.append(
                EpisodeInfo(
                    index=ep,
                    length=length,
                    tasks=[str(t) for t in r.get("tasks", [])],
                    from_index=start,
                    to_index=start + length,
                    data_path=self._path_from_template("data_path", episode_chunk=chunk, episode_index=ep),
                    videos=videos,
                    source=LEGACY_EPISODES_PATH,
                )
            )
            start += length
        self._check_episode_list(episodes, LEGACY_EPISODES_PATH)
        return episodes

    # -- checks ------------------------------------------------------------------------------------------------

    def _check_templates(self) -> None:
        if not self.info.get("data_path"):
            raise DatasetError(f"{self.root / INFO_PATH}: 'data_path' template is missing.")
        if self.video_keys and not self.info.get("video_path"):
            raise DatasetError(f"{self.root / INFO_PATH}: features include videos but 'video_path' is missing.")

    def _path_from_template(self, key: str, **fields: Any) -> Path:
        """`info.json`'s path template `key` filled in with `fields`: a file inside the dataset's folder, or an error.

        A template is data from the dataset, not trusted: one that names an unknown field, or that leads outside
        the folder (an absolute path, `..`), is refused, so neither reading nor a writer's clean-up can reach files
        that are not the dataset's.
        """
        template = self.info.get(key)
        where = self.root / INFO_PATH
        try:
            relative = str(template).format(**fields)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise DatasetError(
                f"{where}: the {key!r} template {template!r} cannot be filled in ({type(exc).__name__}: {exc}); "
                f"it may use only {{{'}, {'.join(fields)}}}. Fix info.json."
            ) from exc
        path = Path(relative)
        if path.is_absolute() or path.drive or ".." in path.parts:
            raise DatasetError(
                f"{where}: the {key!r} template {template!r} gives {relative!r}, which is outside the dataset's "
                f"folder. Paths in a dataset's metadata must be relative to it, without '..'; fix info.json."
            )
        return self.root / path

    def _check_episode_list(self, episodes: list[EpisodeInfo], where: str) -> None:
        seen: set[int] = set()
        for ep in episodes:
            if ep.index in seen:
                raise DatasetError(f"{self.root / where}: episode {ep.index} is listed twice. Corrupted metadata.")
            seen.add(ep.index)
            if ep.length <= 0:
                raise DatasetError(f"{self.root / (ep.source or where)}: episode {ep.index} has length {ep.length}.")
            if ep.from_index >= 0 and ep.to_index >= 0 and ep.to_index - ep.from_index != ep.length:
                raise DatasetError(
                    f"{self.root / (ep.source or where)}: episode {ep.index} has length {ep.length} but spans rows "
                    f"{ep.from_index}..{ep.to_index}. Corrupted metadata."
                )

    def _check_totals(self) -> None:
        n_eps, n_frames = len(self.episodes), self.total_frames
        said_eps, said_frames = self.info.get("total_episodes"), self.info.get("total_frames")
        if said_eps is not None and (int(said_eps) != n_eps or int(said_frames or 0) != n_frames):
            warnings.warn(
                f"{self.root / INFO_PATH} says {said_eps} episodes / {said_frames} frames but the episode index "
                f"holds {n_eps} / {n_frames}: a recording was interrupted after saving its last episode. Using the "
                f"episode index; run `{REPAIR_HINT.format(root=self.root)}` to bring info.json and stats.json up "
                f"to date (LeRobot needs them to match).",
                stacklevel=3,
            )

    # -- accessors ---------------------------------------------------------------------------------------------

    @property
    def total_frames(self) -> int:
        return sum(ep.length for ep in self.episodes)

    @property
    def episode_indices(self) -> list[int]:
        return [ep.index for ep in self.episodes]

    def episode_info(self, ep_index: int) -> EpisodeInfo:
        try:
            return self.episodes[self._by_index[int(ep_index)]]
        except KeyError:
            raise IndexError(
                f"{self.root}: no episode {ep_index}; the dataset holds episodes {_ranges(self.episode_indices)}."
            ) from None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self.features[key]["shape"])

    def names(self, key: str) -> list[str] | None:
        names = self.features.get(key, {}).get("names")
        if isinstance(names, dict):  # older LeRobot: {"motors": [...]}
            names = next(iter(names.values()), None)
        return list(names) if names is not None else None

    @property
    def state_dim(self) -> int | None:
        return self.shape(STATE_KEY)[0] if STATE_KEY in self.features else None

    @property
    def action_dim(self) -> int | None:
        return self.shape(ACTION_KEY)[0] if ACTION_KEY in self.features else None

    @property
    def stats(self) -> Stats:
        """meta/stats.json as numpy arrays; a missing or malformed file raises DatasetError with the fix."""
        if self._stats is None:
            path = self.root / STATS_PATH
            if path.is_file():
                try:
                    self._stats = stats_from_json(load_json(path), source=str(path))
                except ValueError as exc:
                    raise DatasetError(f"{exc} Rebuild it with `{RECOMPUTE_HINT.format(root=self.root)}`.") from exc
            elif self.version != "v3.0" and (self.root / LEGACY_EPISODES_STATS_PATH).is_file():
                per_ep = self._load_episode_stats()
                self._stats = aggregate_stats([per_ep[i] for i in sorted(per_ep)])
            else:
                raise DatasetError(
                    f"{path}: file not found. Training needs the normalisation statistics; compute them with "
                    f"`{RECOMPUTE_HINT.format(root=self.root)}`."
                )
        return self._stats

    def require_stats(self, keys: list[str]) -> Stats:
        """The stats of `keys`, each with mean/std/min/max; raises DatasetError naming stats.json otherwise."""
        stats = self.stats
        for key in keys:
            if key not in stats or not {"mean", "std", "min", "max"} <= set(stats[key]):
                raise DatasetError(
                    f"{self.root / STATS_PATH}: no complete statistics for '{key}' (has: {sorted(stats)}). Rebuild "
                    f"them with `{RECOMPUTE_HINT.format(root=self.root)} --from-data`."
                )
        self.check_stat_values(keys)
        return stats

    def check_stat_values(self, keys: list[str] | None = None) -> None:
        """Refuse statistics a policy cannot normalise with: non-finite values, a negative std, or a std of 0 for
        a feature whose min and max differ (dividing by it would blow the inputs up)."""
        stats = self.stats
        for key in sorted(stats) if keys is None else keys:
            values = {name: np.asarray(v, np.float64) for name, v in stats.get(key, {}).items()}
            problem = next((f"{name} is not finite: {v.tolist()}" for name, v in values.items()
                            if v.dtype.kind == "f" and not np.isfinite(v).all()), None)
            if problem is None and "std" in values:
                std = values["std"]
                varies = (values["max"] > values["min"]) if {"min", "max"} <= set(values) else np.ones_like(std, bool)
                if (std < 0).any() or ((std == 0) & varies).any():
                    problem = f"std {std.tolist()} is negative or 0 where the values vary"
            if problem is not None:
                raise DatasetError(
                    f"{self.root / STATS_PATH}: the statistics of '{key}' are unusable ({problem}). Rebuild them "
                    f"with `{RECOMPUTE_HINT.format(root=self.root)} --from-data`."
                )

    def _load_episode_stats(self) -> dict[int, Stats]:
        if self._episode_stats is None:
            out: dict[int, Stats] = {}
            if self.version == "v3.0":
                import pyarrow.parquet as pq

                for f in self._episode_files_v3():
                    cols = ["episode_index"] + [n for n in pq.read_schema(f).names if n.startswith("stats/")]
                    for row in read_parquet(f, columns=cols).to_pylist():
                        out[int(row["episode_index"])] = stats_from_columns(row)
            elif (self.root / LEGACY_EPISODES_STATS_PATH).is_file():
                for row in load_jsonl(self.root / LEGACY_EPISODES_STATS_PATH):
                    out[int(row["episode_index"])] = stats_from_json(row["stats"], LEGACY_EPISODES_STATS_PATH)
            self._episode_stats = out
        return self._episode_stats

    def episode_stats(self, ep_index: int) -> Stats | None:
        """Per-episode stats as stored in the metadata (None if the dataset keeps none)."""
        return self._load_episode_stats().get(int(ep_index)) or None


def _ranges(ints: list[int]) -> str:
    if not ints:
        return "(none)"
    return f"{ints[0]}..{ints[-1]}" if ints == list(range(ints[0], ints[-1] + 1)) else str(ints)


def _nbytes(value: Any) -> int:
    if isinstance(value, dict):
        return sum(v.nbytes for v in value.values())
    return int(value.nbytes)


def available_memory_bytes() -> int | None:
    """RAM available to new allocations (Linux `MemAvailable`, else free pages), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


class _LRU:
    """A byte-budgeted LRU cache (numpy arrays, pyarrow tables, dicts of arrays)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key):
        arr = self.items.get(key)
        if arr is not None:
            self.items.move_to_end(key)
        return arr

    def put(self, key, arr: Any) -> None:
        size = _nbytes(arr)
        if size > self.max_bytes:
            return
        if key in self.items:
            self.bytes -= _nbytes(self.items.pop(key))
        self.items[key] = arr
        self.bytes += size
        while self.bytes > self.max_bytes and self.items:
            _, old = self.items.popitem(last=False)
            self.bytes -= _nbytes(old)


def _column_to_numpy(col, length: int, path: Path, key: str) -> np.ndarray:
    """A parquet column to numpy: scalars -> (T,), (fixed-size) lists -> (T, D)."""
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if len(flat) % max(length, 1):
            raise DatasetError(f"{path}: column '{key}' holds rows of different lengths. Corrupted file.")
        return flat.reshape(length, -1)
    return col.to_numpy(zero_copy_only=False)


class LeRobotDatasetReader:
    """Read a LeRobot dataset folder (v3.0 or v2.1).

    Args:
        root: the dataset folder (the one holding meta/, data/, videos/).
        cache_mb: memory budget for decoded frames (LRU over episode x camera). 0 disables the cache.
        tolerance_s: how far a decoded frame's time may be from `from_timestamp + timestamp`
            (default: a quarter of a frame period).
    """

    def __init__(self, root: str | Path, cache_mb: int = 2048, tolerance_s: float | None = None):
        self.root = Path(root)
        self.meta = DatasetMeta(self.root)
        self.tolerance_s = tolerance_s if tolerance_s is not None else 0.25 / self.meta.fps
        self._frames = _LRU(int(cache_mb) * 1024 * 1024)
        self._tables = _LRU(256 * 1024 * 1024)  # parquet tables (one per data file)
        self._cols = _LRU(256 * 1024 * 1024)  # numeric columns per episode

    # -- sizes -------------------------------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return len(self.meta.episodes)

    @property
    def cache_bytes(self) -> int:
        """The decoded-frame cache's budget in bytes (`cache_mb`)."""
        return self._frames.max_bytes

    def grow_frame_cache(self, nbytes: int, memory_fraction: float = 0.5) -> bool:
        """Raise the decoded-frame budget to `nbytes` if that stays within `memory_fraction` of the RAM now free.

        Returns whether the budget now holds `nbytes`. It never shrinks the budget.
        """
        if nbytes <= self._frames.max_bytes:
            return True
        free = available_memory_bytes()
        if free is None or nbytes > memory_fraction * free:
            return False
        self._frames.max_bytes = int(nbytes)
        return True

    def clear_cache(self) -> None:
        """Drop every decoded frame and table the reader holds (the budgets stay)."""
        for cache in (self._frames, self._tables, self._cols):
            cache.items.clear()
            cache.bytes = 0

    @property
    def num_frames(self) -> int:
        return self.meta.total_frames

    def __repr__(self) -> str:
        return (
            f"LeRobotDatasetReader({str(self.root)!r}, {self.meta.version}, {self.num_episodes} episodes, "
            f"{self.num_frames} frames at {self.meta.fps} fps, cameras={self.meta.camera_keys})"
        )

    # -- rows --------------------------------------------------------------------------------------------------

    def _hint(self, ep: EpisodeInfo) -> str:
        return (
            f"Episode {ep.index} (listed in {ep.source}) cannot be read: leave it out (ChunkDataset(..., "
            f"episodes=[...]) without {ep.index}), restore the file from a backup, or record the dataset again."
        )

    def _table(self, path: Path, ep: EpisodeInfo):
        key = ("table", str(path))
        table = self._tables.get(key)
        if table is None:
            table = read_parquet(path, hint=self._hint(ep))
            if "episode_index" not in table.column_names:
                raise DatasetError(f"{path}: no 'episode_index' column (columns: {table.column_names}).")
            self._tables.put(key, table)
        return table

    def _episode_rows(self, ep: EpisodeInfo):
        table = self._table(ep.data_path, ep)
        ep_col = _column_to_numpy(table.column("episode_index"), table.num_rows, ep.data_path, "episode_index")
        rows = np.flatnonzero(ep_col == ep.index)
        if len(rows) != ep.length or (len(rows) and rows[-1] - rows[0] + 1 != len(rows)):
            raise DatasetError(
                f"{ep.data_path}: holds {len(rows)} rows for episode {ep.index} but {ep.source} says {ep.length}. "
                f"The data file does not match the episode index; {self._hint(ep)}"
            )
        return table.slice(int(rows[0]), len(rows))

    def _numeric_columns(self, ep: EpisodeInfo) -> dict[str, np.ndarray]:
        cached = self._cols.get(ep.index)
        if cached is not None:
            return dict(cached)
        rows = self._episode_rows(ep)
        out = {}
        for name in rows.column_names:
            ft = self.meta.features.get(name)
            if ft is not None and ft["dtype"] in ("video", "image", "string", "language"):
                continue
            try:
                out[name] = _column_to_numpy(rows.column(name), rows.num_rows, ep.data_path, name)
            except DatasetError:
                raise
            except Exception:  # noqa: BLE001 - non-numeric extras (e.g. language annotations) are skipped
                continue
        for arr in out.values():
            arr.setflags(write=False)  # cached and shared: callers copy before changing
        self._cols.put(ep.index, out)
        return dict(out)

    def episode_arrays(self, ep_index: int) -> dict[str, np.ndarray]:
        """All numeric columns of one episode (no frames): {"observation.state": (T, S), "action": (T, A), ...}."""
        return self._numeric_columns(self.meta.episode_info(ep_index))

    # -- frames ------------------------------------------------------------------------------------------------

    def _timestamps(self, ep: EpisodeInfo) -> np.ndarray:
        cols = self._numeric_columns(ep)
        if "timestamp" in cols:
            return cols["timestamp"].astype(np.float64).reshape(-1)
        return np.arange(ep.length, dtype=np.float64) / self.meta.fps

    def episode_frames(self, ep_index: int, key: str) -> np.ndarray:
        """All frames of one camera in one episode, (T, H, W, 3) uint8 (decoded once, then cached)."""
        ep = self.meta.episode_info(ep_index)
        self._check_camera(key)
        cached = self._frames.get((ep.index, key))
        if cached is not None:
            return cached
        if key in self.meta.image_keys:
            frames = self._decode_image_column(ep, key)
        else:
            span = ep.videos[key]
            wanted = span.from_s + self._timestamps(ep)  # LeRobot's rule: frame time = from_timestamp + timestamp
            frames, times = decode_video(span.path, wanted.min(), wanted.max() + 1.0 / self.meta.fps)
            frames = frames[match_frames(span.path, times, wanted, self.tolerance_s)]
        frames.setflags(write=False)  # shared by every sample that uses it
        self._frames.put((ep.index, key), frames)
        return frames

    def frame(self, ep_index: int, key: str, t: int, whole_episode: bool | None = None) -> np.ndarray:
        """Frame `t` of one camera in one episode, (H, W, 3) uint8.

        From the cache if the episode is there. Otherwise `whole_episode=True` decodes (and caches) the whole
        episode, which pays off when its other frames will be read soon; `False` seeks to this one frame (right
        when the dataset is larger than the cache and samples are random). Default: whole episode if the
        cache is enabled.
        """
        ep = self.meta.episode_info(ep_index)
        cached = self._frames.get((ep.index, key))
        if cached is not None:
            return cached[t]
        if whole_episode is None:
            whole_episode = self._frames.max_bytes > 0
        if whole_episode:
            return self.episode_frames(ep_index, key)[t]
        self._check_camera(key)
        if key in self.meta.image_keys:
            return self._decode_image_column(ep, key)[t]
        span = ep.videos[key]
        want = span.from_s + float(self._timestamps(ep)[t])
        frames, times = decode_video(span.path, want, want + 1.0 / self.meta.fps)
        return frames[match_frames(span.path, times, np.array([want]), self.tolerance_s)[0]]

    def _check_camera(self, key: str) -> None:
        if key not in self.meta.camera_keys:
            raise MissingKey(f"{self.root / INFO_PATH}: no camera '{key}'; cameras: {self.meta.camera_keys}.")

    def _decode_image_column(self, ep: EpisodeInfo, key: str) -> np.ndarray:
        """Image features stored inside the parquet file (LeRobot `dtype: image`): PNG/JPEG bytes per row."""
        import io

        from PIL import Image

        rows = self._episode_rows(ep)
        out = []
        for i, cell in enumerate(rows.column(key).to_pylist()):
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            if not data:
                raise DatasetError(f"{ep.data_path}: image '{key}' of row {i} (episode {ep.index}) has no bytes.")
            try:
                out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            except Exception as exc:  # noqa: BLE001
                raise DatasetError(f"{ep.data_path}: image '{key}' of row {i} cannot be decoded ({exc}).") from exc
        return np.stack(out)

    # -- whole episodes ----------------------------------------------------------------------------------------

    def episode(self, ep_index: int, with_frames: bool = True) -> Episode:
        """Load one episode: states, actions, timestamps, task and (by default) every camera's frames."""
        ep = self.meta.episode_info(ep_index)
        cols = self._numeric_columns(ep)
        n = ep.length
        task_index = cols.pop("task_index", np.zeros(n, dtype=np.int64)).reshape(-1).astype(np.int64)
        timestamps = cols.pop("timestamp", np.arange(n) / self.meta.fps).reshape(-1).astype(np.float32)
        states = cols.pop(STATE_KEY, None)
        actions = cols.pop(ACTION_KEY, None)
        for name in ("frame_index", "episode_index", "index"):
            cols.pop(name, None)
        ti = int(task_index[0])
        task = self.meta.tasks[ti] if 0 <= ti < len(self.meta.tasks) else (ep.tasks[0] if ep.tasks else "")
        frames = {k: self.episode_frames(ep.index, k) for k in self.meta.camera_keys} if with_frames else {}
        return Episode(
            index=ep.index,
            task=task,
            task_index=task_index,
            timestamps=timestamps,
            states=None if states is None else states.astype(np.float32).reshape(n, -1),
            actions=None if actions is None else actions.astype(np.float32).reshape(n, -1),
            frames=frames,
            columns=cols,
        )

    def task_of(self, task_index: int) -> str:
        if not 0 <= task_index < len(self.meta.tasks):
            raise DatasetError(
                f"{self.root / (TASKS_PATH if self.meta.version == 'v3.0' else LEGACY_TASKS_PATH)}: no task "
                f"{task_index} (the file lists {len(self.meta.tasks)})."
            )
        return self.meta.tasks[task_index]

    # -- checks and tools --------------------------------------------------------------------------------------

    def verify(self, decode: bool = False) -> None:
        """Read every data file and open every video (decode=True: decode every frame too); raise on damage, on a
        non-finite number in the data and on unusable statistics."""
        self.meta.check_stat_values()
        for ep in self.meta.episodes:
            for name, values in self._numeric_columns(ep).items():
                require_finite(values, name, ep.index, ep.data_path)
            for key, span in ep.videos.items():
                if decode:
                    self.episode_frames(ep.index, key)
                    continue
                info = probe_video(span.path)
                if info["duration"] is not None and info["duration"] + 1.0 / self.meta.fps < span.to_s - 1e-3:
                    raise DatasetError(
                        f"{span.path}: the video lasts {info['duration']:.3f} s but episode {ep.index} ({ep.source}) "
                        f"needs it up to {span.to_s:.3f} s. The file is truncated; {self._hint(ep)}"
                    )

    def compute_episode_stats(self, ep_index: int) -> Stats:
        """Stats of one episode computed from its data (every numeric feature and camera)."""
        ep = self.meta.episode_info(ep_index)
        cols = self._numeric_columns(ep)
        out: Stats = {}
        for key, ft in self.meta.features.items():
            if key in cols:
                out[key] = vector_stats(cols[key])
            elif ft["dtype"] in ("video", "image"):
                hist = ImageHistogram()
                for img in self.episode_frames(ep.index, key):
                    hist.update(img)
                out[key] = hist.stats()
        return out


__all__ = ["LeRobotDatasetReader", "DatasetMeta", "Episode", "EpisodeInfo", "VideoSpan"]
