"""Real cameras through OpenCV, giving the same images the simulator renders.

The simulator renders square RGB images (`front` and `wrist`, 128 px by default). A webcam gives, say, 640x480
BGR. :class:`OpenCVCamera` turns each frame into what the policy saw in simulation: converted to RGB, centre-cropped
to the target aspect ratio (never stretched), then resized with area averaging to `height` x `width`, uint8.

OpenCV is optional for the kit: `pip install "smolvla-kit[robot]"` (or `opencv-python-headless`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from smolvla_kit.errors import KitError

DEFAULT_IMAGE_SIZE = 128  # the simulator's default camera resolution


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            "Real cameras need OpenCV, which is not installed: pip install 'smolvla-kit[robot]' "
            "(or pip install opencv-python-headless)."
        ) from e
    return cv2


class CameraError(KitError, RuntimeError):
    """A camera that cannot be opened or stopped giving frames; the message names it."""


@dataclass
class CameraConfig:
    """One camera: where it is and the image size the policy expects."""

    index_or_path: int | str  # device index (0 = /dev/video0), a device path, or a video file / stream URL
    width: int = DEFAULT_IMAGE_SIZE  # output image size (after crop and resize)
    height: int = DEFAULT_IMAGE_SIZE
    capture_width: int | None = None  # ask the device for this capture mode (None: the device's default)
    capture_height: int | None = None
    fps: float | None = None  # ask the device for this frame rate (None: the device's default)
    warmup_frames: int = 1  # frames read and discarded on connect (auto exposure settles; also checks reading)


def fit_frame(frame_rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8: centre crop to the target aspect, then area resize."""
    h, w = frame_rgb.shape[:2]
    target = width / height
    if w / h > target:  # too wide: crop the sides
        new_w = max(1, int(round(h * target)))
        x0 = (w - new_w) // 2
        frame_rgb = frame_rgb[:, x0 : x0 + new_w]
    elif w / h < target:  # too tall: crop top and bottom
        new_h = max(1, int(round(w / target)))
        y0 = (h - new_h) // 2
        frame_rgb = frame_rgb[y0 : y0 + new_h]
    if frame_rgb.shape[:2] != (height, width):
        cv2 = _cv2()
        frame_rgb = cv2.resize(frame_rgb, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame_rgb, dtype=np.uint8)


class OpenCVCamera:
    """A camera read with `cv2.VideoCapture`; `read()` returns (height, width, 3) uint8 RGB."""

    def __init__(self, config: CameraConfig | int | str, name: str = "camera") -> None:
        self.config = config if isinstance(config, CameraConfig) else CameraConfig(index_or_path=config)
        self.name = name
        self._cap = None

    def __repr__(self) -> str:
        return f"OpenCVCamera({self.name!r}, {self.config.index_or_path!r}, {self.config.height}x{self.config.width})"

    @property
    def is_connected(self) -> bool:
        return self._cap is not None

    def _hint(self) -> str:
        src = self.config.index_or_path
        if isinstance(src, int):
            devices = sorted(p for p in os.listdir("/dev") if p.startswith("video")) if os.path.isdir("/dev") else []
            seen = ", ".join("/dev/" + d for d in devices) if devices else "none"
            extra = (
                " (on Linux index N is /dev/videoN; video devices present: " + seen + ")"
                if sys.platform.startswith("linux")
                else ""
            )
            return (
                f"Check that the camera is plugged in, that index {src} is the right one{extra}, and that no other "
                "program (another notebook, a video call) is using it."
            )
        return f"Check that '{src}' exists and is a camera device, video file or stream OpenCV can open."

    def connect(self) -> None:
        cv2 = _cv2()
        cfg = self.config
        src = cfg.index_or_path
        if isinstance(src, str) and not os.path.exists(src) and "://" not in src:
            raise CameraError(f"camera '{self.name}': '{src}' does not exist. {self._hint()}")
        cap = cv2.VideoCapture(src)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"camera '{self.name}': OpenCV could not open {src!r}. {self._hint()}")
        if cfg.capture_width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.capture_width)
        if cfg.capture_height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.capture_height)
        if cfg.fps:
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        self._cap = cap
        try:
            for _ in range(max(1, cfg.warmup_frames)):
                self.read()
        except CameraError:
            self.disconnect()
            raise

    def read(self) -> np.ndarray:
        """The next frame as (height, width, 3) uint8 RGB."""
        if self._cap is None:
            raise CameraError(f"camera '{self.name}' is not connected: call connect() first")
        cv2 = _cv2()
        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise CameraError(f"camera '{self.name}' ({self.config.index_or_path!r}) returned no frame. {self._hint()}")
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        else:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return fit_frame(frame, self.config.height, self.config.width)

    def disconnect(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> "OpenCVCamera":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()


__all__ = ["CameraConfig", "CameraError", "DEFAULT_IMAGE_SIZE", "OpenCVCamera", "fit_frame"]
