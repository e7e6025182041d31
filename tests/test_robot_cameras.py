"""Cameras: frames become the simulator's images (RGB, square, 128 px), and bad sources give clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from smolvla_kit.robot.cameras import CameraConfig, CameraError, OpenCVCamera, fit_frame


def test_fit_frame_crops_to_aspect_then_resizes():
    pytest.importorskip("cv2", reason="resizing uses OpenCV (pip install 'smolvla-kit[robot]')")
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :80] = 255  # a white band on the far left: cropped away by the centre crop
    frame[:, 80:560, 0] = 200  # the centre square is red
    out = fit_frame(frame, 128, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert np.all(out[..., 0] == 200) and np.all(out[..., 1:] == 0)
    tall = fit_frame(np.zeros((300, 100, 3), np.uint8), 64, 96)
    assert tall.shape == (64, 96, 3)
    same = np.arange(128 * 128 * 3, dtype=np.uint8).reshape(128, 128, 3)
    assert np.array_equal(fit_frame(same, 128, 128), same)  # already the right size: untouched


def _write_video(path, frames_bgr):
    import cv2

    h, w = frames_bgr[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (w, h))
    assert writer.isOpened()
    for f in frames_bgr:
        writer.write(f)
    writer.release()


def test_camera_reads_rgb_frames_at_the_configured_size(tmp_path):
    pytest.importorskip("cv2", reason="cameras need OpenCV (pip install 'smolvla-kit[robot]')")
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[..., 2] = 255  # BGR: pure red
    video = tmp_path / "cam.avi"
    _write_video(video, [frame] * 5)
    with OpenCVCamera(CameraConfig(str(video), width=128, height=128), name="front") as cam:
        img = cam.read()
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert img[..., 0].mean() > 240 and img[..., 1].mean() < 15 and img[..., 2].mean() < 15  # RGB order


def test_bad_sources_give_clear_errors(tmp_path):
    pytest.importorskip("cv2", reason="cameras need OpenCV (pip install 'smolvla-kit[robot]')")
    with pytest.raises(CameraError, match="camera 'wrist': OpenCV could not open 57") as e:
        OpenCVCamera(57, name="wrist").connect()
    assert "index 57" in str(e.value)
    with pytest.raises(CameraError, match="does not exist"):
        OpenCVCamera(str(tmp_path / "nope.avi"), name="front").connect()
    with pytest.raises(CameraError, match="not connected"):
        OpenCVCamera(0).read()


def test_missing_opencv_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'smolvla-kit\[robot\]'"):
        OpenCVCamera(0).connect()


def test_robot_observation_has_the_simulator_keys(tmp_path, monkeypatch):
    pytest.importorskip("cv2", reason="cameras need OpenCV (pip install 'smolvla-kit[robot]')")
    from smolvla_kit.robot.calibration import default_calibration_path, save_calibration
    from smolvla_kit.robot.so101 import SO101Follower
    from smolvla_kit.robot.virtual_arm import VirtualSO101

    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path / "cal"))
    front, wrist = tmp_path / "front.avi", tmp_path / "wrist.avi"
    _write_video(front, [np.full((480, 640, 3), 40, np.uint8)] * 3)
    _write_video(wrist, [np.full((480, 640, 3), 200, np.uint8)] * 3)
    with VirtualSO101() as arm:
        save_calibration(arm.ideal_calibration(), default_calibration_path("cam_arm"))
        robot = SO101Follower(
            arm.port, "cam_arm", cameras={"front": str(front), "wrist": str(wrist)}, watchdog_timeout_s=None
        )
        with robot:
            obs = robot.get_observation()
    assert set(obs) == {"observation.state", "observation.images.front", "observation.images.wrist"}
    assert obs["observation.state"].shape == (6,) and obs["observation.state"].dtype == np.float32
    for key in ("observation.images.front", "observation.images.wrist"):
        assert obs[key].shape == (128, 128, 3) and obs[key].dtype == np.uint8
    assert obs["observation.images.front"].mean() < obs["observation.images.wrist"].mean()
