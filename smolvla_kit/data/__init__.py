"""LeRobot-format datasets (v3.0 read/write, v2.1 read), without depending on LeRobot.

* :class:`LeRobotDatasetWriter` records episodes durably (each one complete on disk before the next starts;
  an interrupted run resumes).
* :class:`LeRobotDatasetReader` reads v3.0 and v2.1 folders, including LeRobot's multi-episode files.
* :class:`ChunkDataset` turns a reader into (observation, 50-action chunk) training samples;
  :func:`check_features` / :func:`resolve_camera_map` check a dataset against a policy.
* :func:`recompute_stats`, :func:`repair`: maintenance (also `python -m smolvla_kit.data --help`).

The torch-based parts load lazily, so recording does not import torch.
"""

from .layout import (
    ACTION_KEY,
    CODEBASE_VERSION,
    SO101_JOINT_FEATURE_NAMES,
    STATE_KEY,
    DatasetError,
    so101_features,
)
from .reader import DatasetMeta, Episode, EpisodeInfo, LeRobotDatasetReader
from .stats import aggregate_stats
from .video import VideoSettings, decode_video, encode_frames
from .writer import LeRobotDatasetWriter, recompute_stats, repair

_LAZY = {"ChunkDataset", "check_features", "resolve_camera_map"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import torch_dataset

        return getattr(torch_dataset, name)
    raise AttributeError(f"module 'smolvla_kit.data' has no attribute '{name}'")


__all__ = [
    "ACTION_KEY",
    "CODEBASE_VERSION",
    "SO101_JOINT_FEATURE_NAMES",
    "STATE_KEY",
    "ChunkDataset",
    "DatasetError",
    "DatasetMeta",
    "Episode",
    "EpisodeInfo",
    "LeRobotDatasetReader",
    "LeRobotDatasetWriter",
    "VideoSettings",
    "aggregate_stats",
    "check_features",
    "decode_video",
    "encode_frames",
    "recompute_stats",
    "repair",
    "resolve_camera_map",
    "so101_features",
]
