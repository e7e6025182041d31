"""Robots the client can drive besides a real `SO101Follower`: the simulator directly, and the virtual arm.

* :class:`SimRobot` puts the kit's `SO101Env` behind the robot interface (`get_observation`, `send_action`,
  `idle`). One `send_action` or `idle` is one 1/30 s control period of physics. The benchmark uses it: the
  simulator computes faster than real time, and the client's loop paces it to the wall clock.
* :func:`virtual_follower` starts a :class:`VirtualSO101` with the MuJoCo backend and returns an `SO101Follower`
  talking to it over its pty, with :class:`VirtualCamera`s that render the simulator's views: the real driver,
  its safety rules and its watchdog, on a simulated arm.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from smolvla_kit.errors import InputError
from smolvla_kit.vocabulary import IMAGE_PREFIX, STATE_KEY, camera_name

SIM_CAMERAS = ("front", "wrist")


class SimRobot:
    """The simulator as a robot. `env` should be built with `cameras=()` so stepping does not render."""

    def __init__(self, env: Any, cameras: Sequence[str] = SIM_CAMERAS, image_size: int | None = None) -> None:
        self.env = env
        self.cameras = tuple(cameras)
        self.image_size = image_size
        self._last: np.ndarray | None = None  # last commanded target, held on idle ticks

    def reset(self, seed: int, target_color: str | None = None) -> str:
        """New episode; returns the instruction."""
        options = {"target_color": target_color} if target_color else None
        self.env.reset(seed=seed, options=options)
        self._last = None
        return self.env.instruction

    def get_observation(self) -> dict[str, np.ndarray]:
        obs = {STATE_KEY: self.env.joint_state().astype(np.float32)}
        for cam in self.cameras:
            obs[IMAGE_PREFIX + cam] = self.env.render_camera(cam, self.image_size)
        return obs

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._last = np.asarray(action, dtype=np.float64)
        self.env.step(self._last)
        return self._last.astype(np.float32)

    def idle(self) -> None:
        """A control period without a new action: the servos keep their last goal (or where they are)."""
        target = self._last if self._last is not None else self.env.joint_state()
        self.env.step(target)

    def hold(self) -> None:
        self._last = self.env.joint_state()

    def is_success(self) -> bool:
        return bool(self.env.is_success())


@dataclass
class VirtualRig:
    """A virtual arm, its MuJoCo backend and the driver connected to it (not yet connected)."""

    arm: Any  # VirtualSO101
    backend: Any  # MujocoBackend
    robot: Any  # SO101Follower
    calibration_dir: tempfile.TemporaryDirectory

    def close(self) -> None:
        try:
            if self.robot.is_connected:
                self.robot.disconnect()
        finally:
            self.arm.close()
            self.calibration_dir.cleanup()


def virtual_follower(camera_keys: Sequence[str], image_size: int = 128, sim_task: str = "pick_place", seed: int = 0,
                     max_relative_target: Any = 15.0, watchdog_timeout_s: float | None = 0.5,
                     handle_sigint: bool = True) -> VirtualRig:
    """Start a MuJoCo-backed `VirtualSO101` and build an `SO101Follower` for it with rendered cameras.

    `camera_keys` are the policy's (e.g. observation.images.front); the virtual arm has `front` and `wrist`.
    The arm's calibration (the one a careful person would record) goes to a temporary file.
    """
    from smolvla_kit.robot.backends import MujocoBackend
    from smolvla_kit.robot.calibration import save_calibration
    from smolvla_kit.robot.so101 import SO101Follower
    from smolvla_kit.robot.virtual_arm import VirtualCamera, VirtualSO101

    names = [camera_name(k) for k in camera_keys]
    unknown = [n for n in names if n not in SIM_CAMERAS]
    if unknown:
        raise InputError(
            f"the policy expects cameras {list(camera_keys)}, but the virtual arm only has {list(SIM_CAMERAS)} "
            f"(observation.images.front / .wrist): use a checkpoint trained in the kit's simulator"
        )
    backend = MujocoBackend.from_sim(task=sim_task, seed=seed, cameras=(), image_size=image_size)
    arm = VirtualSO101(backend=backend).start()
    tmp = tempfile.TemporaryDirectory(prefix="smolvla-virtual-arm-")
    try:
        calibration = arm.ideal_calibration()
        arm.store_calibration(calibration)  # in the servos, as on a calibrated arm, and in LeRobot's file
        cal = save_calibration(calibration, Path(tmp.name) / "virtual_so101.json")
        cameras = {n: VirtualCamera(arm, n, image_size) for n in names}
        robot = SO101Follower(arm.port, cal, max_relative_target=max_relative_target, cameras=cameras,
                              watchdog_timeout_s=watchdog_timeout_s, handle_sigint=handle_sigint)
    except BaseException:
        arm.close()
        tmp.cleanup()
        raise
    return VirtualRig(arm=arm, backend=backend, robot=robot, calibration_dir=tmp)


__all__ = ["SimRobot", "VirtualRig", "virtual_follower"]
