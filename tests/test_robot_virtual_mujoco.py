"""The virtual arm backed by the kit's MuJoCo SO-101: the real driver moves the simulated arm over a pty."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

if importlib.util.find_spec("smolvla_kit.sim") is None or importlib.util.find_spec("smolvla_kit.sim.env") is None:
    pytest.skip("the MuJoCo simulator (smolvla_kit.sim) is not in this checkout", allow_module_level=True)


def test_driver_moves_the_simulated_arm(tmp_path, monkeypatch):
    from smolvla_kit.robot.backends import MujocoBackend
    from smolvla_kit.robot.calibration import default_calibration_path, save_calibration
    from smolvla_kit.robot.so101 import SO101Follower
    from smolvla_kit.robot.virtual_arm import VirtualSO101

    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path / "cal"))
    backend = MujocoBackend.from_sim(task="reach")
    sim = backend.env.unwrapped
    arm = VirtualSO101(backend=backend).start()
    try:
        save_calibration(arm.ideal_calibration(), default_calibration_path("sim_arm"))
        with SO101Follower(arm.port, "sim_arm", max_relative_target=5.0, watchdog_timeout_s=None) as robot:
            # The driver's reading is the simulator's joint state, to one encoder tick.
            assert np.allclose(robot.read_state(), sim.joint_state(), atol=0.15)
            start = robot.read_state()
            target = start + np.array([20.0, 10.0, -10.0, 10.0, 30.0, 0.0])
            for _ in range(60):  # 2 s at 30 Hz, 5 degrees per step at most
                robot.send_action(target)
                time.sleep(1 / 30)
            time.sleep(0.3)
            state = robot.read_state()
            assert np.allclose(state, sim.joint_state(), atol=0.15)
            assert np.allclose(state, target, atol=1.0), (state, target)  # reached, up to the servo's sag
        # Torque off: the simulated joints go limp (the position actuators no longer push).
        assert not backend.torque.any()
    finally:
        arm.close()
