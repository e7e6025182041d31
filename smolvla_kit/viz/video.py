"""Videos inside notebooks: an mp4 file or a stack of frames -> an HTML5 video embedded in the output.

    show_video("outputs/demo/eval/rollout_00.mp4")
    show_video(frames, fps=30)           # (T, H, W, 3) uint8, e.g. collected from env.render_camera

The video is embedded (base64), so the notebook shows it without a server and it survives being saved or exported
to HTML. Frames are encoded with the kit's own H.264 writer (`smolvla_kit.data.encode_frames`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from smolvla_kit.errors import InputError, MissingFile

# An embedded video lives in the notebook file; refuse sizes that would make the notebook unpleasant to open.
MAX_EMBED_BYTES = 50 * 2**20


def frames_to_mp4(frames: Any, fps: float = 30) -> bytes:
    """(T, H, W, 3) uint8 frames -> the bytes of an H.264 mp4.

    yuv420p video needs an even width and height, so an odd-sized frame gets one black row/column appended.
    """
    from smolvla_kit.data import encode_frames

    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"frames must be (T, H, W, 3); got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        raise InputError(f"frames must be uint8 0..255 (as the simulator renders them); got dtype {arr.dtype}.")
    if len(arr) == 0:
        raise InputError("frames is empty: nothing to make a video of.")
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    if fps <= 0 or int(round(fps)) != fps:
        raise InputError(f"fps must be a positive whole number; got {fps}.")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        encode_frames(path, arr, fps=int(fps))
        return path.read_bytes()


def show_video(video: str | Path | Any, fps: float = 30, width: int | None = None, loop: bool = True):
    """An embedded HTML5 video for a notebook cell (display it by making it the cell's last expression).

    Args:
        video: the path of an mp4 file, or frames (T, H, W, 3) uint8 (an array or a list of images).
        fps: frame rate used when encoding frames (ignored for a file).
        width: display width in pixels (the video's own size when None).
        loop: play in a loop.
    Returns:
        an `IPython.display.Video` with the mp4 embedded as base64.
    """
    from IPython.display import Video

    if isinstance(video, (str, Path)):
        path = Path(video)
        if not path.is_file():
            raise MissingFile(f"No video file at {path}; pass an existing .mp4 or a (T, H, W, 3) frame array.")
        data = path.read_bytes()
    else:
        data = frames_to_mp4(video, fps)
    if len(data) > MAX_EMBED_BYTES:
        raise InputError(
            f"The video is {len(data) / 2**20:.0f} MiB, too big to embed in a notebook (limit "
            f"{MAX_EMBED_BYTES / 2**20:.0f} MiB); show fewer or smaller frames."
        )
    attributes = "controls autoplay muted playsinline" + (" loop" if loop else "")
    return Video(data=data, embed=True, mimetype="video/mp4", width=width, html_attributes=attributes)


__all__ = ["frames_to_mp4", "show_video"]
