"""Camera streams as MP4 files, with PyAV (FFmpeg's libraries, bundled in the `av` wheel).

Writing: :class:`VideoStreamWriter` encodes frames as they arrive (so a long episode never sits in memory as raw
pixels) into H.264 (libx264) by default, or AV1 (libsvtav1, what `lerobot-record` uses) on request.

Reading: :func:`decode_video` decodes a whole file, or the span of one episode inside a file that holds several,
and returns the frames with their presentation times; :func:`match_frames` picks the frame for each wanted
timestamp, the way LeRobot pairs parquet rows with video frames (`from_timestamp + timestamp`).

Why these settings: at 128 px a frame is ~49 kB raw; libx264 at crf 20 with `tune=fastdecode` stores it in
~110 bytes with a mean absolute error under 2 grey levels (PSNR ~36 dB on rendered scenes) and decodes it in
about 0.1-0.2 ms on one CPU core (benchmarks/dataset_speed.py). A keyframe every 2 s (`gop = 2 * fps`) keeps
files small while a seek to any frame decodes at most 2 s of video; training decodes each episode once and
caches it, so seeks are rare.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from smolvla_kit.errors import InputError

from .layout import DatasetError

log = logging.getLogger(__name__)


def _av():
    """Import PyAV with a helpful error (it is the one video dependency)."""
    try:
        import av  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - av is a kit dependency
        raise ImportError("smolvla_kit.data needs PyAV for videos: pip install av") from exc
    return av


def _av_errors(av) -> tuple[type[BaseException], ...]:
    """PyAV's base exception (`FFmpegError`; `AVError` in older releases)."""
    return tuple(e for e in (getattr(av, "FFmpegError", None), getattr(av, "AVError", None)) if e is not None)


@dataclass
class VideoSettings:
    """How camera streams are encoded. Recorded in meta/info.json under each video feature's `info`."""

    codec: str = "libx264"  # FFmpeg encoder: "libx264" (H.264) or "libsvtav1" (AV1, smaller, slower to decode)
    crf: int = 20  # constant-rate factor: lower = better quality, bigger files (H.264: 18-23 is visually clean)
    gop: int | None = None  # keyframe interval in frames; None = 2 * fps
    preset: str | int | None = "fast"  # encoder speed/size trade-off ("fast" for x264; 0-13 for SVT-AV1)
    # LeRobot's `fast_decode`: x264 `tune=fastdecode` (no CABAC/deblocking; ~2x faster decoding at the same error
    # at 128 px), SVT-AV1 `fast-decode=N`. 0 turns it off.
    fast_decode: int = 1
    pix_fmt: str = "yuv420p"  # what every decoder (torchcodec, browsers, LeRobot) reads
    threads: int | None = 1  # encoder threads per camera; small frames gain nothing from more
    extra_options: dict[str, str] = field(default_factory=dict)  # passed to the encoder as-is

    def resolved_gop(self, fps: int) -> int:
        return int(self.gop) if self.gop else max(1, 2 * int(fps))

    def codec_options(self, fps: int) -> dict[str, str]:
        """The options handed to FFmpeg's encoder (all strings)."""
        opts: dict[str, str] = {"g": str(self.resolved_gop(fps)), "crf": str(self.crf)}
        if self.preset is not None:
            opts["preset"] = str(self.preset)
        if self.codec in ("libx264", "libx265"):
            if self.threads is not None:
                opts["threads"] = str(self.threads)
            if self.fast_decode:
                opts["tune"] = "fastdecode"
        elif self.codec == "libsvtav1" and self.fast_decode:
            opts["svtav1-params"] = f"fast-decode={max(0, min(2, int(self.fast_decode)))}"
        opts.update({k: str(v) for k, v in self.extra_options.items()})
        return opts

    def info(self, fps: int, height: int, width: int) -> dict[str, Any]:
        """The `info` block LeRobot keeps for a video feature (same keys as `lerobot-record` writes)."""
        av = _av()
        try:
            canonical = av.codec.Codec(self.codec, "w").canonical_name  # libx264 -> h264, libsvtav1 -> av1
        except Exception:  # noqa: BLE001 - unknown encoder: keep the name as given
            canonical = self.codec
        return {
            "video.height": int(height),
            "video.width": int(width),
            "video.codec": canonical,
            "video.pix_fmt": self.pix_fmt,
            "video.fps": int(fps),
            "video.channels": 3,
            "has_audio": False,
            "video.g": self.resolved_gop(fps),
            "video.crf": self.crf,
            "video.preset": self.preset,
            "video.fast_decode": int(self.fast_decode),
            "video.video_backend": "pyav",
            "video.extra_options": dict(self.extra_options),
            "is_depth_map": False,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_encoder(codec: str) -> None:
    """Fail early (before any episode is recorded) if this PyAV build lacks the encoder."""
    av = _av()
    try:
        av.codec.Codec(codec, "w")
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"Video encoder '{codec}' is not available in this PyAV build (av {av.__version__}). "
            f"Use VideoSettings(codec='libx264') (H.264, in every PyAV wheel)."
        ) from exc


class VideoStreamWriter:
    """Encode one camera's frames into an MP4 file, one frame at a time.

    Frame `i` gets presentation time `i / fps` exactly, so frame `i` of an episode sits at `timestamp = i / fps`
    as LeRobot expects. `close()` flushes the encoder; `abort()` closes without caring about the result.
    """

    def __init__(self, path: Path, fps: int, height: int, width: int, settings: VideoSettings):
        av = _av()
        self.path = Path(path)
        self.fps = int(fps)
        self.height, self.width = int(height), int(width)
        if self.height % 2 or self.width % 2:
            raise InputError(
                f"{settings.pix_fmt} video needs an even height and width; got {self.height}x{self.width} for "
                f"{self.path.name}. Crop or resize the camera image by one pixel."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if settings.codec == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints ~25 info lines per encoder otherwise
        # format="mp4" because the file is written under a temporary name that has no .mp4 ending.
        self._container = av.open(str(self.path), mode="w", format="mp4")
        self._stream = self._container.add_stream(settings.codec, rate=self.fps, options=settings.codec_options(fps))
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = settings.pix_fmt
        self._time_base = Fraction(1, self.fps)
        self._pix_fmt = settings.pix_fmt
        self._to_yuv = av.video.reformatter.VideoReformatter()  # reused: keeps FFmpeg's RGB->YUV converter alive
        self.num_frames = 0

    def add(self, image: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        av = _av()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame = self._to_yuv.reformat(frame, format=self._pix_fmt)
        frame.pts = self.num_frames
        frame.time_base = self._time_base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.num_frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the MP4 (writes the index atom that makes the file readable)."""
        if self._container is None:
            return
        for packet in self._stream.encode():  # flush delayed frames (B-frames, lookahead)
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def abort(self) -> None:
        if self._container is None:
            return
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the file is discarded anyway
            pass
        self._container = None


def encode_frames(path: Path, frames: np.ndarray, fps: int, settings: VideoSettings | None = None) -> None:
    """Encode a whole (T, H, W, 3) uint8 array into `path` (a convenience around VideoStreamWriter)."""
    frames = np.asarray(frames)
    writer = VideoStreamWriter(path, fps, frames.shape[1], frames.shape[2], settings or VideoSettings())
    try:
        for img in frames:
            writer.add(img)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def _video_error(path: Path, exc: Exception) -> DatasetError:
    return DatasetError(
        f"{path}: cannot decode this video ({type(exc).__name__}: {exc}). The file is truncated or corrupted. "
        f"Leave out the episodes that use it (ChunkDataset(..., episodes=[...])), restore it from a backup, or "
        f"record the dataset again."
    )


def decode_video(
    path: Path, start_s: float | None = None, end_s: float | None = None, threads: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the frames of `path` whose time lies in [start_s, end_s) (default: the whole file).

    Returns (frames (N, H, W, 3) uint8 RGB, times (N,) float64 seconds). To start mid-file it seeks to the
    keyframe at or before `start_s` and decodes forward, so the cost is the span plus at most one GOP.
    """
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: video file not found. Re-record the episodes that use it.")
    frames: list[np.ndarray] = []
    times: list[float] = []
    # One reformatter for the whole file keeps FFmpeg's YUV->RGB converter alive between frames; a bare
    # `frame.to_ndarray(format="rgb24")` rebuilds it every frame, which costs 5-10x more than decoding at 128 px.
    rgb = av.video.reformatter.VideoReformatter()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: the file holds no video stream. Re-record the episodes that use it.")
            stream = container.streams.video[0]
            if threads:
                stream.thread_type = "AUTO"  # frame + slice threading: ~10-20% faster on whole files
            tb = float(stream.time_base)
            half = 0.0
            if stream.average_rate:
                half = 0.5 / float(stream.average_rate)
            if start_s is not None and start_s > 0:
                # Seek slightly before the first wanted frame; `backward` lands on the keyframe before it.
                container.seek(max(0, int((start_s - half) / tb)), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = frame.pts * tb
                if start_s is not None and t < start_s - half:
                    continue
                if end_s is not None and t >= end_s - half:
                    break
                frames.append(rgb.reformat(frame, format="rgb24").to_ndarray())  # (H, W, 3) uint8
                times.append(t)
    except DatasetError:
        raise
    except (*_av_errors(av), OSError, ValueError, IndexError) as exc:
        raise _video_error(path, exc) from exc
    if not frames:
        span = f" between {start_s:.3f} s and {end_s:.3f} s" if start_s is not None and end_s is not None else ""
        raise DatasetError(
            f"{path}: no frame could be decoded{span}. The file is truncated or corrupted, or meta/episodes "
            f"points past its end. Re-record the episodes that use it."
        )
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def match_frames(path: Path, times: np.ndarray, wanted: np.ndarray, tolerance_s: float) -> np.ndarray:
    """Index into `times` of the decoded frame nearest to each wanted time; raise if one is too far off."""
    times = np.asarray(times, dtype=np.float64)
    wanted = np.asarray(wanted, dtype=np.float64)
    order = np.argsort(times)
    sorted_t = times[order]
    pos = (
        np.clip(np.searchsorted(sorted_t, wanted), 1, len(sorted_t) - 1)
        if len(sorted_t) > 1
        else np.zeros(len(wanted), dtype=np.int64)
    )
    if len(sorted_t) > 1:
        left, right = sorted_t[pos - 1], sorted_t[pos]
        pos = np.where(np.abs(wanted - left) <= np.abs(right - wanted), pos - 1, pos)
    err = np.abs(sorted_t[pos] - wanted)
    bad = np.flatnonzero(err > tolerance_s)
    if len(bad):
        i = int(bad[0])
        raise DatasetError(
            f"{path}: no frame at t={wanted[i]:.4f} s (nearest is {sorted_t[pos[i]]:.4f} s; {len(bad)} of "
            f"{len(wanted)} wanted frames are missing; the file holds {len(times)} frames from {sorted_t[0]:.3f} s "
            f"to {sorted_t[-1]:.3f} s). The video is truncated or does not match meta/episodes; re-record the "
            f"episode."
        )
    return order[pos]


def probe_video(path: Path) -> dict[str, Any]:
    """Open the container and read its header only: height, width, codec, fps, frame count, duration (s)."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: video file not found. Re-record the episodes that use it.")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: the file holds no video stream. Re-record the episodes that use it.")
            s = container.streams.video[0]
            duration = None
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            return {
                "height": s.height,
                "width": s.width,
                "codec": s.codec_context.name,
                "pix_fmt": s.pix_fmt,
                "fps": float(s.average_rate) if s.average_rate else None,
                "frames": int(s.frames or 0),
                "duration": duration,
            }
    except DatasetError:
        raise
    except (*_av_errors(av), OSError, ValueError) as exc:
        raise _video_error(path, exc) from exc


__all__ = ["VideoSettings", "VideoStreamWriter", "encode_frames", "decode_video", "match_frames", "probe_video"]
