"""Training samples from a LeRobot dataset: one frame's observation plus the chunk of actions that follows it.

    reader = LeRobotDatasetReader("outputs/datasets/pick_cube")
    camera_map = check_features(reader, state_dim=6, action_dim=6,
                                camera_keys=["observation.images.front", "observation.images.wrist"])
    ds = ChunkDataset(reader, chunk_size=50, camera_map=camera_map)
    item = ds[0]
    item["observation.state"]          # (6,) float32
    item["observation.images.front"]   # (3, H, W) float32 in [0, 1]
    item["action"]                     # (50, 6) float32: actions at t, t + 1/fps, ..., t + 49/fps
    item["action_is_pad"]              # (50,) bool: True where t + k is past the episode's end
    item["task"]                       # str

This follows LeRobot's `delta_timestamps={"action": [k / fps for k in range(50)]}`: indices past the episode's
last frame repeat the last action and are flagged in `action_is_pad`, so the loss can ignore them.

Camera keys: a policy names its cameras (say `observation.images.front`), a dataset names its own (a real SO-101
recording may call them `observation.images.laptop` and `observation.images.phone`). `camera_map` maps policy
key -> dataset key explicitly; :func:`resolve_camera_map` checks it and lists what is available when it is wrong.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from smolvla_kit.errors import InputError, InputTypeError

from ..vocabulary import ACTION_KEY, STATE_KEY, CameraMismatch, match_cameras
from .layout import INFO_PATH, DatasetError
from .reader import DatasetMeta, LeRobotDatasetReader, require_finite
from .video import probe_video


def _meta(dataset: LeRobotDatasetReader | DatasetMeta) -> DatasetMeta:
    return dataset.meta if isinstance(dataset, LeRobotDatasetReader) else dataset


class CameraMapMismatch(CameraMismatch, DatasetError):
    """A dataset's camera map does not cover the policy's cameras (a camera mismatch and a dataset error)."""


def resolve_camera_map(
    dataset: LeRobotDatasetReader | DatasetMeta,
    camera_map: dict[str, str] | None,
    policy_camera_keys: list[str] | None = None,
) -> dict[str, str]:
    """Check a policy-key -> dataset-key camera map against the dataset (and the policy's cameras, if given).

    `camera_map=None` means "same names": the policy's cameras (or, without `policy_camera_keys`, all of the
    dataset's cameras) must exist in the dataset under those names.
    """
    meta = _meta(dataset)
    info = meta.root / INFO_PATH
    available = list(meta.camera_keys)
    if camera_map is None:
        wanted = list(policy_camera_keys) if policy_camera_keys is not None else available
        missing = [k for k in wanted if k not in available]
        if missing:
            raise DatasetError(
                f"{info}: the dataset has no camera {missing}. Its cameras are {available}; pass an explicit "
                f"camera_map={{policy camera key: dataset camera key}} covering {wanted}."
            )
        return {k: k for k in wanted}
    if not isinstance(camera_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in camera_map.items()
    ):
        raise InputTypeError(
            f"camera_map must be a dict of policy camera key -> dataset camera key, got {camera_map!r}."
        )
    unknown = {p: d for p, d in camera_map.items() if d not in available}
    if unknown:
        raise DatasetError(
            f"{info}: camera_map points to cameras the dataset does not have: {unknown}. The dataset's cameras are "
            f"{available}."
        )
    if policy_camera_keys is not None:
        match_cameras(policy_camera_keys, camera_map, given_by="camera_map maps", expected_by="the policy has",
                      hint=f"Map every policy camera to one of the dataset's cameras {available} ({info}).",
                      error=CameraMapMismatch)
    return dict(camera_map)


def check_features(
    dataset: LeRobotDatasetReader | DatasetMeta,
    state_dim: int,
    action_dim: int,
    camera_keys: list[str] | None = None,
    camera_map: dict[str, str] | None = None,
) -> dict[str, str]:
    """Check the dataset has what a policy needs; return the resolved camera map.

    Raises DatasetError naming meta/info.json and the key when `observation.state` or `action` is missing or has
    another size, or when a policy camera cannot be found.
    """
    meta = _meta(dataset)
    info = meta.root / INFO_PATH
    for key, dim in ((STATE_KEY, state_dim), (ACTION_KEY, action_dim)):
        if key not in meta.features:
            raise DatasetError(f"{info}: the dataset has no feature '{key}' (features: {sorted(meta.features)}).")
        shape = meta.shape(key)
        if shape != (int(dim),):
            names = meta.names(key)
            raise DatasetError(
                f"{info}: feature '{key}' has shape {shape}{' (' + ', '.join(names) + ')' if names else ''} but the "
                f"policy expects ({dim},). Use a policy configured for {shape[0]} values or another dataset."
            )
    return resolve_camera_map(meta, camera_map, camera_keys)


class ChunkDataset(torch.utils.data.Dataset):
    """(observation, action chunk) samples over every frame of the chosen episodes.

    Args:
        reader: an open :class:`LeRobotDatasetReader`.
        chunk_size: actions per sample (SmolVLA uses 50).
        camera_map: policy camera key -> dataset camera key (None: same names, all dataset cameras).
        episodes: episode indices to use (default: all), e.g. to hold some out for validation.
        policy_camera_keys: the policy's camera keys, to check that `camera_map` covers exactly them.
        check_videos: open every video file once up front, so a missing/truncated one fails now, not mid-epoch.
        grow_cache: when the frames do not fit the reader's cache, enlarge it if half the free RAM holds them.

    Frames: when all the frames the samples need fit the reader's cache (`cache_mb`, e.g. the kit's 128 px
    simulated datasets), each episode is decoded once and then served from memory (`preload()` does it up
    front). Otherwise (e.g. hours of 640x480 real-arm video) each sample seeks to its own frame.
    """

    def __init__(
        self,
        reader: LeRobotDatasetReader,
        chunk_size: int = 50,
        camera_map: dict[str, str] | None = None,
        episodes: list[int] | None = None,
        policy_camera_keys: list[str] | None = None,
        check_videos: bool = True,
        grow_cache: bool = False,
    ):
        if chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1, got {chunk_size}.")
        self.reader = reader
        self.chunk_size = int(chunk_size)
        meta = reader.meta
        for key in (STATE_KEY, ACTION_KEY):
            if key not in meta.features:
                raise DatasetError(
                    f"{meta.root / INFO_PATH}: the dataset has no feature '{key}' (features: {sorted(meta.features)})."
                )
        self.camera_map = resolve_camera_map(meta, camera_map, policy_camera_keys)
        self.episodes = list(meta.episode_indices if episodes is None else episodes)
        if not self.episodes:
            raise DatasetError(f"{meta.root}: no episodes to train on (the dataset holds {meta.episode_indices}).")
        self._states: list[np.ndarray] = []  # per episode (T, S) float32
        self._actions: list[np.ndarray] = []  # per episode (T, A) float32
        self._tasks: list[np.ndarray] = []  # per episode (T,) int64
        for ep in self.episodes:
            e = reader.episode(ep, with_frames=False)  # raises IndexError for an unknown episode
            where = meta.episode_info(ep).data_path
            require_finite(e.states, STATE_KEY, ep, where)
            require_finite(e.actions, ACTION_KEY, ep, where)
            self._states.append(e.states)
            self._actions.append(e.actions)
            self._tasks.append(e.task_index)
            if check_videos:
                info = meta.episode_info(ep)
                for dk in set(self.camera_map.values()):
                    if dk in info.videos:
                        probe_video(info.videos[dk].path)  # header only: catches missing/garbage/truncated files
        # Decoded frames of every episode a sample may touch; if they do not fit the reader's cache, random
        # samples would evict episodes before their other frames are used: then seek to single frames instead.
        self.frame_bytes = sum(
            meta.episode_info(ep).length * int(np.prod(meta.shape(dk)))
            for ep in self.episodes
            for dk in set(self.camera_map.values())
        )
        self._whole_episodes = self.frame_bytes <= reader.cache_bytes or (
            grow_cache and reader.grow_frame_cache(self.frame_bytes)
        )
        lengths = np.array([len(a) for a in self._actions])
        self._ep_of = np.repeat(np.arange(len(self.episodes)), lengths)  # (N,) position in self.episodes
        self._t_of = np.concatenate([np.arange(n) for n in lengths])  # (N,) frame within its episode

    def __len__(self) -> int:
        return len(self._t_of)

    def indices_before_frame(self, frames: int) -> np.ndarray:
        """Indices of the samples whose frame lies among the first `frames` of its episode."""
        return np.nonzero(self._t_of < frames)[0]

    def preload(self) -> None:
        """Decode every frame the samples need into the reader's cache, once.

        Call it before creating DataLoader workers: forked workers then share the decoded frames. The cache must
        be large enough (`LeRobotDatasetReader(root, cache_mb=...)`); a warning says when it is not.
        """
        if not self._whole_episodes:
            warnings.warn(
                f"preload: the frames need {self.frame_bytes / 2**20:.0f} MiB but the reader's cache holds "
                f"{self.reader.cache_bytes / 2**20:.0f} MiB; pass a larger cache_mb to LeRobotDatasetReader or "
                f"samples will seek into the videos frame by frame (slower).",
                stacklevel=2,
            )
            return
        for ep in self.episodes:
            for dk in set(self.camera_map.values()):
                self.reader.episode_frames(ep, dk)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i = int(i) % len(self)
        e, t = int(self._ep_of[i]), int(self._t_of[i])
        actions = self._actions[e]
        n = len(actions)
        idx = t + np.arange(self.chunk_size)  # (chunk,)
        is_pad = idx >= n
        idx = np.minimum(idx, n - 1)  # past the end: repeat the last action (and flag it)
        ep_index = self.episodes[e]
        item = {
            STATE_KEY: torch.from_numpy(self._states[e][t].copy()),  # (S,)
            ACTION_KEY: torch.from_numpy(actions[idx]),  # (chunk, A)
            "action_is_pad": torch.from_numpy(is_pad),  # (chunk,)
            "task": self.reader.task_of(int(self._tasks[e][t])),
            "episode_index": ep_index,
            "frame_index": t,
        }
        for policy_key, dataset_key in self.camera_map.items():
            img = self.reader.frame(ep_index, dataset_key, t, whole_episode=self._whole_episodes)  # (H, W, 3) uint8
            chw = img.transpose(2, 0, 1).astype(np.float32)  # (3, H, W), a fresh copy
            item[policy_key] = torch.from_numpy(np.divide(chw, 255.0, out=chw))  # in [0, 1]
        return item


__all__ = ["ChunkDataset", "check_features", "resolve_camera_map"]
