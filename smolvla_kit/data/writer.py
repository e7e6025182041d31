"""Write LeRobot v3.0 datasets, one durable episode at a time.

    with LeRobotDatasetWriter("outputs/datasets/pick_cube", fps=30) as writer:   # creates, or resumes
        for _ in range(n_episodes):
            for step in episode:
                writer.add_frame({"observation.state": q, "action": a,
                                  "observation.images.front": front, "observation.images.wrist": wrist,
                                  "task": "pick up the red cube"})
            writer.save_episode()      # the episode is on disk, complete, before the next one starts

How an episode becomes durable (`save_episode`):

1. While frames arrive, each camera is encoded into `.staging/` (a scratch folder inside the dataset).
2. The episode's rows go to `.staging/` as a parquet file; its stats are computed.
3. New task strings are written to `meta/tasks.parquet` (temp file + rename).
4. The parquet and MP4 files are fsync'ed and renamed to their final names: one data file and one video per
   camera per episode (v3.0 allows it: `meta/episodes` maps each episode to its files).
5. **Commit point:** `meta/episodes/chunk-XXX/file-YYY.parquet` is rewritten with the new row (temp file,
   fsync, rename). Before this rename the episode does not exist for any reader; after it, it is complete.
6. `meta/info.json` totals and `meta/stats.json` are brought up to date.

A `kill -9` at any point loses at most the episode being recorded. Opening the folder again (resume) finds the
committed episodes in `meta/episodes`, deletes whatever they do not reference (staging files, files renamed in
step 4 but never committed, temp files), rewrites info.json and stats.json from the committed episodes, and
continues numbering after the last committed episode.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from smolvla_kit.errors import InputError, InputTypeError

from .layout import (
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_CHUNKS_SIZE,
    DEFAULT_DATA_FILES_SIZE_IN_MB,
    DEFAULT_VIDEO_FILES_SIZE_IN_MB,
    EPISODES_DIR,
    EPISODES_PATH,
    INDEX_FEATURES,
    INFO_PATH,
    STAGING_DIR,
    STATS_PATH,
    TASKS_PATH,
    TMP_SUFFIX,
    VIDEO_PATH,
    DatasetError,
    image_hw,
    read_parquet,
    rel,
    replace_durably,
    so101_features,
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
)
from .stats import (
    ImageHistogram,
    Stats,
    aggregate_stats,
    stats_from_columns,
    stats_to_columns,
    stats_to_json,
    vector_stats,
)
from .video import VideoSettings, VideoStreamWriter, check_encoder

log = logging.getLogger(__name__)

EPISODES_PER_META_FILE = 1000  # rows per meta/episodes file before starting the next one
PLACING_FILE = "placing.json"  # in the staging folder: the files a save is moving into place
_CHUNK_FILE_RE = re.compile(r"^chunk-(\d+)/file-(\d+)\.(parquet|mp4)$")


def _next_chunk_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: files fill a chunk folder up to `chunks_size`, then a new chunk starts."""
    file += 1
    if file >= chunks_size:
        return chunk + 1, 0
    return chunk, file


_ENCODER_FOR_CODEC = {"h264": "libx264", "av1": "libsvtav1", "hevc": "libx265"}


def settings_from_info(info: dict[str, Any], default: VideoSettings) -> VideoSettings:
    """The encoder settings a dataset recorded in a video feature's `info` (so appended episodes match)."""
    codec = _ENCODER_FOR_CODEC.get(str(info.get("video.codec")), default.codec)
    try:
        check_encoder(codec)
    except ValueError:
        log.warning(
            "The dataset's videos use %s, which this PyAV cannot encode; appending with %s.", codec, default.codec
        )
        return default
    if "video.preset" in info:
        preset = info["video.preset"]
    else:  # older datasets do not record it: the kit's preset fits only the kit's codec
        preset = default.preset if codec == default.codec else None
    return VideoSettings(
        codec=codec,
        crf=int(info["video.crf"]) if info.get("video.crf") is not None else default.crf,
        gop=int(info["video.g"]) if info.get("video.g") else default.gop,
        preset=preset,
        pix_fmt=str(info.get("video.pix_fmt") or default.pix_fmt),
        fast_decode=int(info.get("video.fast_decode") or 0) if "video.fast_decode" in info else default.fast_decode,
        threads=default.threads,
    )


def _hf_features_json(features: dict[str, dict]) -> bytes:
    """The `huggingface` schema metadata LeRobot's files carry (the HF `datasets` feature types)."""
    out = {}
    for key, ft in features.items():
        if ft["dtype"] in ("video", "image"):
            continue
        shape = list(ft["shape"])
        value = {"dtype": ft["dtype"], "_type": "Value"}
        out[key] = value if shape == [1] else {"feature": value, "length": int(shape[0]), "_type": "List"}
    return json.dumps({"info": {"features": out}}).encode()


class LeRobotDatasetWriter:
    """Create a LeRobot v3.0 dataset at `root`, or resume one that exists there.

    Args:
        root: dataset folder. If it holds `meta/info.json` the dataset is reopened for appending (pass
            `resume=False` to refuse that instead).
        fps: frames per second of the recording (a new dataset defaults to 30; an existing one keeps its own
            and a different value raises).
        robot_type: stored in info.json ("so101_follower" like `lerobot-record` with an SO-101).
        features: LeRobot feature spec of what `add_frame` receives (state, action, cameras); default:
            :func:`~smolvla_kit.data.layout.so101_features` (6 joints, 128x128 `front` and `wrist` cameras).
            When resuming, a given spec must match the dataset's.
        video: how cameras are encoded (:class:`~smolvla_kit.data.video.VideoSettings`).
        chunks_size: files per `chunk-XXX` folder (LeRobot's default 1000).
    """

    def __init__(
        self,
        root: str | Path,
        fps: int | None = None,
        robot_type: str | None = None,
        features: dict[str, dict] | None = None,
        video: VideoSettings | None = None,
        chunks_size: int = DEFAULT_CHUNKS_SIZE,
        resume: bool = True,
    ):
        self.root = Path(root)
        self.video = video or VideoSettings()  # when resuming without `video`, the dataset's own settings win
        self._video_given = video is not None
        check_encoder(self.video.codec)
        self._lock_fd: int | None = None
        self._closed = False
        self._broken = False
        exists = (self.root / INFO_PATH).is_file()
        if exists and not resume:
            raise FileExistsError(
                f"{self.root / INFO_PATH} exists: {self.root} already holds a dataset. Pick another folder, delete "
                f"it, or open it with resume=True to append episodes."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            if exists:
                self._open_existing(fps, robot_type, features)
            else:
                self._create(fps or 30, robot_type or "so101_follower", features, chunks_size)
        except BaseException:
            self._release_lock()
            raise
        self._reset_buffer()

    @classmethod
    def create(
        cls, root: str | Path, fps: int = 30, robot_type: str = "so101_follower", **kwargs
    ) -> LeRobotDatasetWriter:
        """Start a new dataset; raises if `root` already holds one."""
        return cls(root, fps=fps, robot_type=robot_type, resume=False, **kwargs)

    @classmethod
    def open(cls, root: str | Path, **kwargs) -> LeRobotDatasetWriter:
        """Reopen an existing dataset to append episodes (repairs what an interrupted run left)."""
        if not (Path(root) / INFO_PATH).is_file():
            raise DatasetError(f"{Path(root) / INFO_PATH}: file not found; there is no dataset to resume at {root}.")
        return cls(root, **kwargs)

    # -- setup -------------------------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        """One writer per dataset: an exclusive lock on .staging/writer.lock (released by the OS on kill -9)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return
        staging = self.root / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        fd = os.open(staging / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DatasetError(
                f"{self.root}: another process is writing to this dataset (it holds {staging / 'writer.lock'}). "
                f"Stop it first, or write to another folder."
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def _user_features(self, features: dict[str, dict]) -> dict[str, dict]:
        out = {}
        for key, ft in features.items():
            if key in INDEX_FEATURES:
                continue
            if "/" in key:
                raise InputError(f"Feature name '{key}' must not contain '/' (LeRobot uses it as a separator).")
            ft = dict(ft)
            ft["shape"] = [int(s) for s in ft["shape"]]
            if ft["dtype"] == "image":
                raise InputError(
                    f"Feature '{key}': dtype 'image' (frames stored inside parquet) is not written by the kit; use "
                    f"dtype 'video'."
                )
            if ft["dtype"] == "video":
                if len(ft["shape"]) != 3 or ft["shape"][2] != 3:
                    raise InputError(f"Video feature '{key}' must have shape [height, width, 3], got {ft['shape']}.")
                ft.setdefault("names", ["height", "width", "channels"])
            elif len(ft["shape"]) != 1:
                raise InputError(f"Feature '{key}': only 1-D vectors are supported, got shape {ft['shape']}.")
            else:
                np.dtype(ft["dtype"])  # raises TypeError for an unknown dtype
            out[key] = ft
        return out

    def _create(self, fps: int, robot_type: str, features: dict | None, chunks_size: int) -> None:
        if (self.root / EPISODES_DIR).exists() or (self.root / "data").exists():
            raise DatasetError(
                f"{self.root}: holds data/ or meta/episodes/ but no meta/info.json; this is not a dataset the kit "
                f"can resume. Use an empty folder."
            )
        user = self._user_features(features or so101_features())
        for ft in user.values():
            if ft["dtype"] == "video":
                h, w = image_hw(ft)
                ft["info"] = self.video.info(fps, h, w)
        self.info: dict[str, Any] = {
            "codebase_version": CODEBASE_VERSION,
            "fps": int(fps),
            "features": {**user, **{k: dict(v) for k, v in INDEX_FEATURES.items()}},
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": int(chunks_size),
            "data_files_size_in_mb": DEFAULT_DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": DEFAULT_VIDEO_FILES_SIZE_IN_MB,
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if any(f["dtype"] == "video" for f in user.values()) else None,
            "robot_type": robot_type,
            "splits": {},
        }
        self.tasks: list[str] = []
        self._stats: Stats | None = None  # aggregate over the committed episodes (what stats.json holds)
        self._lengths: list[int] = []
        self._next_data = (0, 0)
        self._next_video = {k: (0, 0) for k in self.video_keys}
        self._meta_file = (0, 0)
        self._meta_rows = None  # pyarrow Table of the current meta/episodes file
        self._first_index = 0  # global row index of the next frame
        self._write_info()

    def _open_existing(self, fps: int | None, robot_type: str | None, features: dict | None) -> None:
        from .reader import DatasetMeta

        info_file = self.root / INFO_PATH
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stale totals are expected after a kill; they are repaired below
            meta = DatasetMeta(self.root)
        if meta.version != CODEBASE_VERSION:
            raise DatasetError(
                f"{info_file}: codebase_version is {meta.version}; the kit appends only to v3.0 datasets. Convert it "
                f"with LeRobot (`python -m lerobot.scripts.convert_dataset_v21_to_v30`) or record into a new folder."
            )
        self.info = meta.info
        for key, ours in (("data_path", DATA_PATH), ("video_path", VIDEO_PATH)):
            theirs = self.info.get(key)
            if theirs not in (None, ours):  # the writer would put new files where info.json does not point
                raise DatasetError(
                    f"{info_file}: {key!r} is {theirs!r}; the kit appends only to datasets laid out as {ours!r} "
                    f"(LeRobot v3.0's layout). Record into a new folder."
                )
        if fps is not None and int(fps) != meta.fps:
            raise DatasetError(
                f"{info_file}: the dataset was recorded at {meta.fps} fps, not {fps}. Use fps={meta.fps}."
            )
        if robot_type is not None and meta.robot_type not in (None, robot_type):
            log.warning(
                "%s: robot_type is %r; appending episodes recorded as %r.", info_file, meta.robot_type, robot_type
            )
        try:
            user = self._user_features(self.info["features"])
        except (ValueError, TypeError) as exc:
            raise DatasetError(
                f"{info_file}: {exc} The kit cannot append to this dataset; record into a new folder."
            ) from exc
        if features is not None:
            self._check_same_features(self._user_features(features), user, info_file)
        if not self._video_given and self.video_keys:
            self.video = settings_from_info(self.features[self.video_keys[0]].get("info") or {}, self.video)
        self.tasks = list(meta.tasks)
        committed = meta.episodes
        if [ep.index for ep in committed] != list(range(len(committed))):
            raise DatasetError(
                f"{self.root / EPISODES_DIR}: episode indices are not 0..{len(committed) - 1} (episodes were deleted "
                f"without renumbering); LeRobot and the kit can only append after contiguous indices."
            )
        self._lengths = [ep.length for ep in committed]

        said = int(self.info.get("total_episodes") or 0)
        if not committed and said > 0:  # never "repair" a dataset whose episode index went missing
            raise DatasetError(
                f"{self.root / EPISODES_DIR}: no episode found, but {info_file} lists {said}. The episode index is "
                f"missing (incomplete copy?); restore meta/episodes/ before appending."
            )

        # Delete whatever no committed episode references: staged files, files renamed but never committed, temps.
        keep = {ep.data_path.resolve() for ep in committed}
        keep |= {span.path.resolve() for ep in committed for span in ep.videos.values()}
        left = self._remove_uncommitted(keep)

        # Continue after the highest (chunk, file) in use, per stream, like LeRobot does when it resumes.
        cs = int(self.info.get("chunks_size", DEFAULT_CHUNKS_SIZE))
        self._next_data = self._after_used([ep.data_path for ep in committed] + left, "data", cs)
        self._next_video = {
            k: self._after_used([ep.videos[k].path for ep in committed] + left, f"videos/{k}", cs)
            for k in self.video_keys
        }
        meta_files = sorted((self.root / EPISODES_DIR).glob("*/*.parquet"))
        self._meta_rows = None
        self._meta_file = (0, 0)
        if meta_files:
            last = meta_files[-1]
            m = _CHUNK_FILE_RE.match(rel(self.root / EPISODES_DIR, last))
            if m is None:
                raise DatasetError(
                    f"{last}: unexpected file name in {EPISODES_DIR}/ (expected chunk-XXX/file-YYY.parquet)."
                )
            self._meta_file = (int(m.group(1)), int(m.group(2)))
            table = read_parquet(last)
            if table.num_rows >= EPISODES_PER_META_FILE:
                self._meta_file = _next_chunk_file(*self._meta_file, cs)
            else:
                self._meta_rows = table
        # Per-episode stats from meta/episodes (computed from data for episodes that have none).
        from .reader import LeRobotDatasetReader

        per_episode = []
        reader = None
        for ep in committed:
            st = meta.episode_stats(ep.index)
            if not st:
                reader = reader or LeRobotDatasetReader(self.root, cache_mb=0)
                st = reader.compute_episode_stats(ep.index)
            per_episode.append(st)
        self._stats = aggregate_stats(per_episode) if per_episode else None
        self._first_index = committed[-1].to_index if committed and committed[-1].to_index >= 0 else sum(self._lengths)
        self._write_info()
        self._write_stats()
        if committed:
            log.info(
                "Resuming %s: %d committed episodes, next is episode %d.", self.root, len(committed), self.num_episodes
            )

    def _check_same_features(self, given: dict, stored: dict, info_file: Path) -> None:
        for key in sorted(set(given) | set(stored)):
            if key not in stored:
                raise DatasetError(f"{info_file}: the dataset has no feature '{key}' (it has {sorted(stored)}).")
            if key not in given:
                raise DatasetError(f"{info_file}: the dataset has feature '{key}', which the frames to append lack.")
            a, b = given[key], stored[key]
            if a["dtype"] != b["dtype"] or list(a["shape"]) != list(b["shape"]):
                raise DatasetError(
                    f"{info_file}: feature '{key}' is {b['dtype']} {list(b['shape'])} in the dataset but "
                    f"{a['dtype']} {list(a['shape'])} in the frames to append. Record into a new folder."
                )

    @staticmethod
    def _chunk_file(folder: Path, path: Path) -> tuple[int, int] | None:
        """(chunk, file) of `folder/chunk-XXX/file-YYY.ext`, None for any other name."""
        m = _CHUNK_FILE_RE.match(rel(folder, path))
        return (int(m.group(1)), int(m.group(2))) if m else None

    def _after_used(self, paths: list[Path], sub: str, chunks_size: int) -> tuple[int, int]:
        used = [cf for p in paths if (cf := self._chunk_file(self.root / sub, p)) is not None]
        return _next_chunk_file(*max(used), chunks_size) if used else (0, 0)

    def _remove_uncommitted(self, keep: set[Path]) -> list[Path]:
        """Delete what an interrupted save of this writer left: staged files, and files it was moving into place
        (listed in its placing manifest) that no episode references. Returns the unreferenced files it leaves."""
        staging = self.root / STAGING_DIR
        placing = set()
        try:
            placing = {(self.root / p).resolve() for p in json.loads((staging / PLACING_FILE).read_text())}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s is unreadable (%s); no file is removed as uncommitted", staging / PLACING_FILE, exc)
        left: list[Path] = []
        for p in staging.iterdir() if staging.is_dir() else []:
            if p.name != "writer.lock":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                log.info("Removed staged file of an interrupted episode: %s", rel(self.root, p))
        # Only a file this writer was placing is removed; any other unreferenced file is not ours to judge: it stays,
        # with a warning, and new files are numbered after it rather than over it.
        folders = [self.root / "data"] + [p for p in (self.root / "videos").glob("*") if p.is_dir()]
        for folder in folders:
            for p in sorted(folder.glob("*/*.mp4" if folder.parent.name == "videos" else "*/*.parquet")):
                if p.resolve() in keep:
                    continue
                if p.resolve() in placing:
                    p.unlink()
                    log.warning("Removed %s: written by an interrupted run, never committed.", rel(self.root, p))
                else:
                    left.append(p)
                    log.warning(
                        "%s is not used by any episode in %s; leaving it alone.", rel(self.root, p), EPISODES_DIR
                    )
        for p in (
            list(self.root.glob(f"meta/**/*{TMP_SUFFIX}"))
            + list(self.root.glob(f"data/**/*{TMP_SUFFIX}"))
            + list(self.root.glob(f"videos/**/*{TMP_SUFFIX}"))
        ):
            p.unlink()
            log.info("Removed temporary file %s", rel(self.root, p))
        return left

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def features(self) -> dict[str, dict]:
        return self.info["features"]

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "video"]

    @property
    def num_episodes(self) -> int:
        """Committed episodes; also the index the next saved episode gets."""
        return len(self._lengths)

    @property
    def num_frames(self) -> int:
        return sum(self._lengths)

    @property
    def pending_frames(self) -> int:
        """Frames added to the episode being recorded (not saved yet)."""
        return len(self._buf_task)

    def _reset_buffer(self) -> None:
        self._buf: dict[str, list[np.ndarray]] = {}
        self._buf_task: list[str] = []
        self._encoders: dict[str, VideoStreamWriter] = {}
        self._hists: dict[str, ImageHistogram] = {}

    # -- recording ---------------------------------------------------------------------------------------------

    def _staged(self, name: str) -> Path:
        return self.root / STAGING_DIR / f"episode_{self.num_episodes:06d}-{name}"

    def add_frame(self, frame: dict[str, Any]) -> None:
        """Append one frame to the current episode.

        `frame` holds every feature of the dataset (e.g. `observation.state` (6,) float32, `action` (6,) float32,
        `observation.images.front` (H, W, 3) uint8) plus `task` (a string). Torch tensors are accepted.
        """
        self._check_usable()
        if not isinstance(frame, dict):
            raise InputTypeError(f"add_frame expects a dict of features, got {type(frame).__name__}.")
        user = {k: ft for k, ft in self.features.items() if k not in INDEX_FEATURES}
        given = set(frame) - {"task"}
        if "task" not in frame or given != set(user):
            missing = sorted(set(user) - given) + ([] if "task" in frame else ["task"])
            extra = sorted(given - set(user))
            raise InputError(
                f"add_frame: the frame does not match the dataset's features ({self.root / INFO_PATH}). Missing: "
                f"{missing or 'none'}; unexpected: {extra or 'none'}. Expected keys: {sorted(user) + ['task']} "
                f"(timestamp, frame_index, episode_index, index and task_index are filled in by the writer)."
            )
        task = frame["task"]
        if not isinstance(task, str) or not task:
            raise InputError(f"add_frame: 'task' must be a non-empty string, got {task!r}.")
        values = {}
        for key, ft in user.items():  # validate everything before touching any state
            values[key] = (
                self._image(key, ft, frame[key]) if ft["dtype"] == "video" else self._vector(key, ft, frame[key])
            )
        if not self._buf_task:
            self._start_episode()
        for key, ft in user.items():
            if ft["dtype"] == "video":
                self._encoders[key].add(values[key])
                self._hists[key].update(values[key])
            else:
                self._buf.setdefault(key, []).append(values[key])
        self._buf_task.append(task)

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError(
                f"{self.root}: the writer is finalized; open a new LeRobotDatasetWriter to add episodes."
            )
        if self._broken:
            raise RuntimeError(
                f"{self.root}: a save_episode failed midway; open the folder again with LeRobotDatasetWriter (it "
                f"repairs the dataset from what was committed) before adding episodes."
            )

    def _start_episode(self) -> None:
        (self.root / STAGING_DIR).mkdir(parents=True, exist_ok=True)
        for key in self.video_keys:
            h, w = image_hw(self.features[key])
            self._encoders[key] = VideoStreamWriter(self._staged(key + ".mp4" + TMP_SUFFIX), self.fps, h, w, self.video)
            self._hists[key] = ImageHistogram()

    @staticmethod
    def _as_numpy(value: Any) -> np.ndarray:
        if hasattr(value, "detach"):  # torch tensor, without importing torch here
            value = value.detach().cpu().numpy()
        return np.asarray(value)

    def _vector(self, key: str, ft: dict, value: Any) -> np.ndarray:
        arr = self._as_numpy(value)
        shape = tuple(ft["shape"])
        if arr.shape != shape and not (shape == (1,) and arr.shape == ()):
            raise InputError(f"add_frame: '{key}' must have shape {shape}, got {arr.shape}.")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise InputError(f"add_frame: '{key}' contains NaN or infinity: {arr.tolist()}.")
        return arr.astype(ft["dtype"]).reshape(shape)

    def _image(self, key: str, ft: dict, value: Any) -> np.ndarray:
        arr = self._as_numpy(value)
        h, w = image_hw(ft)
        if arr.shape == (3, h, w):  # channel-first (torch convention) -> HWC
            arr = arr.transpose(1, 2, 0)
        if arr.shape != (h, w, 3):
            raise InputError(
                f"add_frame: '{key}' must be an image of shape ({h}, {w}, 3) (or (3, {h}, {w})), got {arr.shape}."
            )
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating) or arr.min() < 0.0 or arr.max() > 1.0:
                raise InputError(
                    f"add_frame: '{key}' must be uint8 0..255 or float 0..1, got {arr.dtype} in [{arr.min()}, {arr.max()}]."
                )
            arr = np.round(arr * 255.0).astype(np.uint8)
        return np.ascontiguousarray(arr)

    def clear_episode(self) -> None:
        """Discard the episode being recorded (its staged video files included)."""
        for enc in self._encoders.values():
            enc.abort()
        staging = self.root / STAGING_DIR
        for p in staging.glob(f"episode_{self.num_episodes:06d}-*"):
            p.unlink(missing_ok=True)
        self._reset_buffer()

    def save_episode(self) -> int:
        """Make the current episode durable (see the module docstring) and return its index."""
        import pyarrow as pa

        self._check_usable()
        n = len(self._buf_task)
        if n == 0:
            raise InputError("save_episode: no frame was added since the last save; call add_frame first.")
        ep_index = self.num_episodes
        first = self._first_index
        cs = int(self.info["chunks_size"])

        # 1. finish the videos (flush the encoders into the staged files)
        try:
            for enc in self._encoders.values():
                enc.close()
        except BaseException:
            self.clear_episode()
            raise

        # 2. the rows, in LeRobot's column order and types, and the episode's stats
        new_tasks = [t for t in dict.fromkeys(self._buf_task) if t not in self.tasks]
        task_ids = {t: i for i, t in enumerate(self.tasks + new_tasks)}
        columns: dict[str, np.ndarray] = {}
        for key, ft in self.features.items():
            if ft["dtype"] == "video" or key in INDEX_FEATURES:
                continue
            columns[key] = np.stack(self._buf[key])  # (T, D)
        columns["timestamp"] = (np.arange(n) / self.fps).astype(np.float32)
        columns["frame_index"] = np.arange(n, dtype=np.int64)
        columns["episode_index"] = np.full(n, ep_index, dtype=np.int64)
        columns["index"] = np.arange(first, first + n, dtype=np.int64)
        columns["task_index"] = np.array([task_ids[t] for t in self._buf_task], dtype=np.int64)
        arrays, fields = [], []
        for key, values in columns.items():
            ft = self.features[key]
            if list(ft["shape"]) == [1]:
                arr = pa.array(values.reshape(-1))
            else:
                arr = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), int(ft["shape"][0]))
            arrays.append(arr)
            fields.append(pa.field(key, arr.type))
        schema = pa.schema(fields, metadata={b"huggingface": _hf_features_json(self.features)})
        table = pa.Table.from_arrays(arrays, schema=schema)
        ep_stats: Stats = {key: vector_stats(values) for key, values in columns.items()}
        for key in self.video_keys:
            ep_stats[key] = self._hists[key].stats()
        staged_data = self._staged("data.parquet" + TMP_SUFFIX)
        import pyarrow.parquet as pq

        pq.write_table(table, staged_data, compression="snappy")

        # From here on files on disk change; if anything fails the in-memory state may no longer match the disk,
        # so the writer refuses further work until reopened (reopening derives everything from the disk).
        try:
            # 3. new task strings (harmless if we die before the commit: a task no episode uses)
            if new_tasks:
                self.tasks += new_tasks
                self._write_tasks()

            # 4. move the files into place, first noting where (a reopened writer removes only those)
            data_cf = self._next_data
            data_path = self.root / DATA_PATH.format(chunk_index=data_cf[0], file_index=data_cf[1])
            video_cf = dict(self._next_video)
            video_paths = {key: self.root / VIDEO_PATH.format(video_key=key, chunk_index=video_cf[key][0],
                                                             file_index=video_cf[key][1]) for key in self.video_keys}
            placing = self.root / STAGING_DIR / PLACING_FILE
            write_bytes_atomic(placing, json.dumps([rel(self.root, p) for p in (data_path, *video_paths.values())])
                               .encode())
            replace_durably(staged_data, data_path)
            for key, dst in video_paths.items():
                replace_durably(self._encoders[key].path, dst)

            # 5. commit: the episode's row in meta/episodes
            row: dict[str, Any] = {
                "episode_index": ep_index,
                "tasks": list(dict.fromkeys(self._buf_task)),
                "length": n,
                "data/chunk_index": data_cf[0],
                "data/file_index": data_cf[1],
                "dataset_from_index": first,
                "dataset_to_index": first + n,
            }
            for key in self.video_keys:
                row[f"videos/{key}/chunk_index"] = video_cf[key][0]
                row[f"videos/{key}/file_index"] = video_cf[key][1]
                row[f"videos/{key}/from_timestamp"] = 0.0
                row[f"videos/{key}/to_timestamp"] = n / self.fps
            row.update(stats_to_columns(ep_stats))
            row["meta/episodes/chunk_index"] = self._meta_file[0]
            row["meta/episodes/file_index"] = self._meta_file[1]
            self._commit_row(row)
            placing.unlink()  # committed: these files are the episode's now

            # 6. bookkeeping, then info.json and stats.json
            self._lengths.append(n)
            # Pooled mean/variance, min/max and count-weighted quantiles combine exactly pairwise: O(1) per episode.
            self._stats = ep_stats if self._stats is None else aggregate_stats([self._stats, ep_stats])
            self._first_index = first + n
            self._next_data = _next_chunk_file(*data_cf, cs)
            self._next_video = {k: _next_chunk_file(*video_cf[k], cs) for k in self.video_keys}
        except BaseException:
            self._broken = True
            raise
        self._reset_buffer()
        self._write_info()
        self._write_stats()
        return ep_index

    def _commit_row(self, row: dict[str, Any]) -> None:
        """Rewrite the current meta/episodes file with one more row: temp file, fsync, atomic rename."""
        import pyarrow as pa

        new = pa.Table.from_pylist([row])
        if self._meta_rows is not None and self._meta_rows.num_rows:
            names = list(self._meta_rows.column_names) + [
                c for c in new.column_names if c not in self._meta_rows.column_names
            ]
            table = pa.concat_tables([self._meta_rows, new], promote_options="permissive")
            table = table.select(names).combine_chunks()  # one chunk: writing 1 chunk/row would be ~10x slower
        else:
            table = new
        path = self.root / EPISODES_PATH.format(chunk_index=self._meta_file[0], file_index=self._meta_file[1])
        write_parquet_atomic(path, table)
        if table.num_rows >= EPISODES_PER_META_FILE:
            self._meta_file = _next_chunk_file(*self._meta_file, int(self.info["chunks_size"]))
            self._meta_rows = None
        else:
            self._meta_rows = table

    def _write_tasks(self) -> None:
        """meta/tasks.parquet with the pandas index metadata LeRobot's reader expects (`task` is the index)."""
        import pyarrow as pa

        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [
                {
                    "name": None,
                    "field_name": None,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": {"encoding": "UTF-8"},
                }
            ],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": "task",
                    "field_name": "task",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
            "attributes": {},
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.0",
        }
        schema = pa.schema(
            [("task_index", pa.int64()), ("task", pa.string())], metadata={b"pandas": json.dumps(pandas_meta).encode()}
        )
        table = pa.Table.from_arrays(
            [pa.array(range(len(self.tasks)), pa.int64()), pa.array(self.tasks, pa.string())], schema=schema
        )
        write_parquet_atomic(self.root / TASKS_PATH, table)

    def _write_info(self) -> None:
        self.info["total_episodes"] = self.num_episodes
        self.info["total_frames"] = self.num_frames
        self.info["total_tasks"] = len(self.tasks)
        self.info["splits"] = {"train": f"0:{self.num_episodes}"} if self.num_episodes else {}
        write_json_atomic(self.root / INFO_PATH, self.info)

    def _write_stats(self) -> None:
        if self._stats is not None:
            write_json_atomic(self.root / STATS_PATH, stats_to_json(self._stats))

    # -- closing -----------------------------------------------------------------------------------------------

    def finalize(self) -> None:
        """Write stats.json and info.json totals and release the dataset. An unsaved episode is discarded."""
        if self._closed:
            return
        if self._broken:  # the disk is the truth now; reopening repairs info.json and stats.json from it
            for enc in self._encoders.values():
                enc.abort()
            self._release_lock()
            self._closed = True
            return
        if self._buf_task:
            log.warning(
                "%s: discarding an unsaved episode of %d frames (call save_episode to keep it).",
                self.root,
                len(self._buf_task),
            )
            self.clear_episode()
        self._write_info()
        self._write_stats()
        staging = self.root / STAGING_DIR
        self._release_lock()
        shutil.rmtree(staging, ignore_errors=True)
        self._closed = True

    close = finalize

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.clear_episode()
        self.finalize()

    def __del__(self):  # a forgotten finalize still releases the lock; files are already durable
        try:
            if not self._closed:
                for enc in getattr(self, "_encoders", {}).values():
                    enc.abort()
                self._release_lock()
        except Exception:  # noqa: BLE001
            pass


def repair(root: str | Path) -> int:
    """Bring a dataset left by an interrupted recording up to date; returns its number of committed episodes.

    Deletes files no committed episode uses and rewrites info.json and stats.json from meta/episodes. Shell:
    `python -m smolvla_kit.data repair <dataset folder>`.
    """
    writer = LeRobotDatasetWriter.open(root)
    n = writer.num_episodes
    writer.finalize()
    return n


def episode_stats_of(root: str | Path) -> list[Stats]:
    """Per-episode stats of a v3.0 dataset, as stored in meta/episodes (used by tests and tools)."""
    out = []
    for f in sorted((Path(root) / EPISODES_DIR).glob("*/*.parquet")):
        out += [stats_from_columns(r) for r in read_parquet(f).to_pylist()]
    return out


def recompute_stats(root: str | Path, from_data: bool = False) -> Stats:
    """Rebuild `meta/stats.json` of a v3.0 dataset and return the stats.

    By default it aggregates the per-episode stats kept in `meta/episodes` (instant). With `from_data=True`
    (or when some episode has no per-episode stats) it reads every episode's rows and decodes every video.
    Run it from a shell with `python -m smolvla_kit.data recompute-stats <dataset folder>`.
    """
    from .reader import LeRobotDatasetReader

    reader = LeRobotDatasetReader(root)
    if reader.meta.version != "v3.0":
        raise InputError(
            f"{reader.root}: stats can only be rewritten for v3.0 datasets (this one is {reader.meta.version}); "
            f"convert it with LeRobot's `convert_dataset_v21_to_v30` first."
        )
    per_episode: list[Stats] = []
    for ep in reader.meta.episodes:
        st = None if from_data else reader.meta.episode_stats(ep.index)
        if not st:
            st = reader.compute_episode_stats(ep.index)
        per_episode.append(st)
    if not per_episode:
        raise InputError(f"{reader.root}: the dataset has no episode; there is nothing to compute stats from.")
    stats = aggregate_stats(per_episode)
    write_json_atomic(reader.root / STATS_PATH, stats_to_json(stats))
    return stats


__all__ = ["LeRobotDatasetWriter", "recompute_stats", "repair", "episode_stats_of"]
