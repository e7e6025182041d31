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


def test_load_and_current_come_from_the_simulated_forces():
    """Present_Load and Present_Current follow MuJoCo's actuator forces: a joint holding the arm against gravity
    reports a load and draws current; a limp one reports neither."""
    from smolvla_kit.robot.backends import MujocoBackend
    from smolvla_kit.robot.feetech import FeetechBus
    from smolvla_kit.robot.virtual_arm import VirtualSO101

    backend = MujocoBackend.from_sim(task="reach", cameras=())
    with VirtualSO101(backend=backend) as arm, FeetechBus(arm.port) as bus:
        bus.write("Torque_Enable", "shoulder_lift", 1)
        time.sleep(0.5)  # the joint settles, holding the upper arm's weight
        load = bus.read("Present_Load", "shoulder_lift")
        current = bus.read("Present_Current", "shoulder_lift")
        force = float(backend.data.actuator_force[backend.act_id[1]])
        assert abs(load) >= 10 and current >= 1  # at least 1 % of the stall torque, a few mA
        assert abs(abs(load) / 1000 - abs(force) / 3.35) < 0.05  # the reported share is MuJoCo's force
        bus.write("Torque_Enable", "shoulder_lift", 0)
        time.sleep(0.1)
        assert bus.read("Present_Load", "shoulder_lift") == 0 and bus.read("Present_Current", "shoulder_lift") == 0
