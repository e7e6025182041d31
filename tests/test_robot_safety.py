"""SO101Follower's safety rules, each triggered on purpose against the virtual arm over a real pty."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from smolvla_kit.robot.backends import FirstOrderServoBackend
from smolvla_kit.robot.calibration import default_calibration_path, raw_to_units, save_calibration, unit_to_raw
from smolvla_kit.robot.feetech import CommunicationError, PortError
from smolvla_kit.robot.so101 import RobotError, SO101Follower, apply_safety
from smolvla_kit.robot.virtual_arm import VirtualSO101
from smolvla_kit.units import JOINT_LIMITS, JOINT_NAMES

ALL_OFF = {n: False for n in JOINT_NAMES}
ALL_ON = {n: True for n in JOINT_NAMES}


@pytest.fixture(autouse=True)
def calibration_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path / "calibration"))


def _virtual(**backend_kwargs) -> VirtualSO101:
    arm = VirtualSO101(backend=FirstOrderServoBackend(**backend_kwargs)).start()
    save_calibration(arm.ideal_calibration(), default_calibration_path("virtual"))
    return arm


def _goal_units(arm: VirtualSO101, robot: SO101Follower) -> np.ndarray:
    """The Goal_Position registers the emulated servos hold, converted to kit units.

    SYNC_WRITE has no reply, so first PING a servo: its answer comes after the emulator has run the earlier packet.
    """
    robot.bus.ping("shoulder_pan")
    return raw_to_units({n: arm.register(n, "Goal_Position") for n in JOINT_NAMES}, robot.calibration)


def _eventually(condition, timeout_s: float = 1.0) -> bool:
    """Poll `condition` (for packets that get no reply, e.g. the emergency SYNC_WRITE on a broken bus)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


@pytest.fixture
def arm():
    a = _virtual()
    yield a
    a.close()


@pytest.fixture
def robot(arm):
    r = SO101Follower(arm.port, "virtual", max_relative_target=15.0, watchdog_timeout_s=None)
    r.connect()
    yield r
    r.disconnect()


def test_connect_enables_torque_holding_position_and_disconnect_turns_it_off(arm):
    arm.move_by_hand([20, -30, 40, 10, 0, 60])
    robot = SO101Follower(arm.port, "virtual", watchdog_timeout_s=None)
    robot.connect()
    assert arm.torque_enabled() == ALL_ON
    # Configured as LeRobot does.
    assert arm.register("elbow_flex", "P_Coefficient") == 16 and arm.register("elbow_flex", "D_Coefficient") == 32
    assert arm.register("gripper", "Max_Torque_Limit") == 500 and arm.register("gripper", "Protection_Current") == 250
    assert arm.register("wrist_roll", "Return_Delay_Time") == 0
    time.sleep(0.1)
    assert np.allclose(arm.joint_positions(), [20, -30, 40, 10, 0, 60], atol=0.2)  # no jump on torque-on
    robot.disconnect()
    assert arm.torque_enabled() == ALL_OFF


def test_nan_inf_and_wrong_shape_are_never_sent(robot, arm):
    goals_before = {n: arm.register(n, "Goal_Position") for n in JOINT_NAMES}
    for bad, message in [
        ([0, 0, float("nan"), 0, 0, 50], "NaN or infinity for elbow_flex"),
        ([0, 0, 0, 0, float("inf"), 50], "NaN or infinity for wrist_roll"),
        ([0, 0, 0, 0, 0], "shape"),
        (np.zeros((2, 6)), "shape"),
    ]:
        with pytest.raises(ValueError, match=message):
            robot.send_action(bad)
    assert {n: arm.register(n, "Goal_Position") for n in JOINT_NAMES} == goals_before
    assert arm.torque_enabled() == ALL_ON  # a rejected action is not a fault: the arm keeps holding


def test_goal_beyond_range_is_clamped(arm):
    robot = SO101Follower(arm.port, "virtual", max_relative_target=None, watchdog_timeout_s=None)
    with robot:
        sent = robot.send_action([500, -500, 0, 0, 0, 150])
        assert robot.last_safety["clamped"] == ["shoulder_pan", "shoulder_lift", "gripper"]
        # Within both the calibrated range and the model's joint limits.
        assert sent[0] <= JOINT_LIMITS[0, 1] + 1e-4 and sent[0] >= JOINT_LIMITS[0, 1] - 0.2
        assert sent[1] >= JOINT_LIMITS[1, 0] - 1e-4 and sent[5] == 100.0
        goal = _goal_units(arm, robot)
        assert np.allclose(goal, sent, atol=0.1)
        time.sleep(1.2)
        assert np.all(arm.joint_positions()[:2] * [1, -1] <= 110.1)


def test_big_jump_is_capped_scalar_and_per_joint(robot, arm):
    start = robot.read_state()
    sent = robot.send_action(start + np.array([40, -40, 5, 0, 0, -30]))
    assert robot.last_safety["capped"] == ["shoulder_pan", "shoulder_lift", "gripper"]
    assert np.allclose(sent - start, [15, -15, 5, 0, 0, -15], atol=1e-4)
    assert np.allclose(_goal_units(arm, robot), sent, atol=0.1)
    robot.disconnect()

    caps = {
        "shoulder_pan": 2.0,
        "shoulder_lift": 4.0,
        "elbow_flex": 6.0,
        "wrist_flex": 8.0,
        "wrist_roll": 10.0,
        "gripper": 12.0,
    }
    per_joint = SO101Follower(arm.port, "virtual", max_relative_target=caps, watchdog_timeout_s=None)
    with per_joint:
        time.sleep(0.2)
        start = per_joint.read_state()
        sent = per_joint.send_action(start + 50)
        assert np.allclose(sent - start, [2, 4, 6, 8, 10, 12], atol=1e-4)
    with pytest.raises(ValueError, match="max_relative_target keys"):
        SO101Follower(arm.port, "virtual", max_relative_target={"shoulder_pan": 1.0})
    with pytest.raises(ValueError, match="finite and > 0"):
        SO101Follower(arm.port, "virtual", max_relative_target=-1.0)


def test_apply_safety_brings_a_joint_outside_its_range_back_a_step_at_a_time():
    present = np.array([120.0, 0, 0, 0, 0, 50])  # pushed past the pan limit (110) by hand
    safe, report = apply_safety(np.array([130.0, 0, 0, 0, 0, 50]), present, JOINT_LIMITS, np.full(6, 5.0))
    assert safe[0] == 115.0 and report == {"clamped": ["shoulder_pan"], "capped": ["shoulder_pan"]}
    safe, _ = apply_safety(
        np.array([112.0, 0, 0, 0, 0, 50]), np.array([109.0, 0, 0, 0, 0, 50]), JOINT_LIMITS, np.full(6, 5.0)
    )
    assert safe[0] == 110.0  # inside the range, the clamp holds


def test_apply_safety_properties_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        present = rng.uniform(JOINT_LIMITS[:, 0] - 20, JOINT_LIMITS[:, 1] + 20)
        goal = rng.uniform(-400, 400, size=6)
        step = rng.uniform(0.1, 50, size=6)
        safe, _ = apply_safety(goal, present, JOINT_LIMITS, step)
        assert np.all(np.abs(safe - present) <= step + 1e-9)
        inside = (present >= JOINT_LIMITS[:, 0]) & (present <= JOINT_LIMITS[:, 1])
        assert np.all((safe >= JOINT_LIMITS[:, 0] - 1e-9)[inside]) and np.all(
            (safe <= JOINT_LIMITS[:, 1] + 1e-9)[inside]
        )
        # never further outside the range than the joint already is
        dist = lambda x: np.maximum(JOINT_LIMITS[:, 0] - x, 0) + np.maximum(x - JOINT_LIMITS[:, 1], 0)  # noqa: E731
        assert np.all(dist(safe) <= dist(present) + 1e-9)


def test_exception_in_with_block_turns_torque_off_on_all_six(arm):
    robot = SO101Follower(arm.port, "virtual", watchdog_timeout_s=None)
    with pytest.raises(ZeroDivisionError):
        with robot:
            robot.send_action(robot.read_state())
            assert arm.torque_enabled() == ALL_ON
            1 / 0  # the user's control loop crashes
    assert _eventually(lambda: arm.torque_enabled() == ALL_OFF)
    assert not robot.is_connected


def test_ctrl_c_turns_torque_off(robot, arm):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)  # the handler runs here
    assert _eventually(lambda: arm.torque_enabled() == ALL_OFF)
    with pytest.raises(RobotError, match="stopped after an error"):
        robot.send_action(np.zeros(6))


def test_watchdog_holds_position_when_the_policy_stalls():
    arm = _virtual(max_speed=np.full(6, 20.0))  # a slow arm, so the hold is visible mid-move
    try:
        robot = SO101Follower(arm.port, "virtual", max_relative_target=None, watchdog_timeout_s=0.15)
        with robot:
            start = robot.read_state()
            robot.send_action(start + [30, 0, 0, 0, 0, 0])  # then the policy stalls
            time.sleep(0.6)
            assert robot.watchdog_trips == 1
            moved = robot.read_state()[0] - start[0]
            assert 1.0 < moved < 10.0  # stopped early: 30 degrees at 20 deg/s would take 1.5 s
            # The goal is now where the arm was when the watchdog fired: it stays there.
            assert abs(_goal_units(arm, robot)[0] - robot.read_state()[0]) < 0.5
            # A new action resumes control.
            robot.send_action(robot.read_state() + [1, 0, 0, 0, 0, 0])
            assert robot.watchdog_trips == 1
    finally:
        arm.close()


def test_dead_motor_mid_run_is_a_clear_error_and_torque_goes_off(robot, arm):
    robot.send_action(robot.read_state())
    arm.set_faults(dead_ids={3})
    t0 = time.monotonic()
    with pytest.raises(CommunicationError) as e:
        robot.send_action(np.zeros(6))
    assert time.monotonic() - t0 < 1.0
    assert "'elbow_flex' (id 3)" in str(e.value)
    others_off = {n: False for n in JOINT_NAMES if n != "elbow_flex"}
    assert _eventually(lambda: {n: v for n, v in arm.torque_enabled().items() if n != "elbow_flex"} == others_off)
    with pytest.raises(RobotError, match="stopped after an error"):
        robot.get_observation()


def test_all_replies_lost_still_gets_torque_off(robot, arm):
    arm.set_faults(drop_reply_prob=1.0)
    with pytest.raises(CommunicationError, match="4 attempts"):
        robot.get_observation()
    assert _eventually(lambda: arm.torque_enabled() == ALL_OFF)  # the emergency stop needs no reply


def test_unplugged_mid_run_is_a_clear_error(robot, arm):
    arm.stop()  # the pty's other end closes, as a USB adapter does when pulled out
    with pytest.raises(CommunicationError) as e:
        robot.send_action(np.zeros(6))
    assert arm.port in str(e.value) and "unplugged" in str(e.value)
    robot.disconnect()  # still closes cleanly
    assert not robot.is_connected and not robot.bus.is_open


def test_connect_errors_name_what_to_check(arm, tmp_path):
    with pytest.raises(PortError, match="/dev/no-such-arm"):
        SO101Follower("/dev/no-such-arm", "virtual").connect()
    with pytest.raises(FileNotFoundError, match="no calibration for arm id 'uncalibrated'"):
        SO101Follower(arm.port, "uncalibrated").connect()
    arm.set_faults(dead_ids={5, 6})
    with pytest.raises(CommunicationError) as e:
        SO101Follower(arm.port, "virtual").connect()
    assert "'wrist_roll' (id 5)" in str(e.value) and "'gripper' (id 6)" in str(e.value)
    assert _eventually(lambda: not any(arm.torque_enabled().values()))


def test_interpreter_exit_turns_torque_off(arm):
    """A script that connects, moves and exits without disconnecting: atexit turns torque off."""
    script = textwrap.dedent(
        f"""
        import numpy as np
        from smolvla_kit.robot import SO101Follower
        robot = SO101Follower({arm.port!r}, "virtual")
        robot.connect()
        robot.send_action(robot.read_state() + 1.0)
        print("torque on, exiting")
        """
    )
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "torque on, exiting" in out.stdout
    assert arm.torque_enabled() == ALL_OFF
    # The raw goal really moved before the exit: the script did drive the arm.
    assert arm.register("shoulder_pan", "Goal_Position") != unit_to_raw(
        "shoulder_pan", 0.0, arm.ideal_calibration()["shoulder_pan"]
    )


def test_emergency_torque_off_is_repeated_until_every_servo_confirms(robot, arm, caplog):
    robot.send_action(robot.read_state())
    assert all(arm.torque_enabled().values())
    # The elbow misses the broadcast (its cable glitches) and is back 0.3 s later: it must still end up off.
    arm.set_faults(dead_ids={3})
    threading.Timer(0.3, lambda: arm.set_faults(dead_ids=frozenset())).start()
    assert robot.bus.emergency_torque_off(confirm_s=3.0) is True
    assert arm.torque_enabled() == ALL_OFF
    # A servo that never comes back: bounded, reported, and the others are off.
    robot.bus.enable_torque()
    arm.set_faults(dead_ids={3})
    t0 = time.monotonic()
    assert robot.bus.emergency_torque_off(confirm_s=0.5) is False
    assert time.monotonic() - t0 < 2.0
    assert "torque-off not confirmed by elbow_flex" in caplog.text
    assert {n: v for n, v in arm.torque_enabled().items() if n != "elbow_flex"} == {
        n: False for n in JOINT_NAMES if n != "elbow_flex"}
    arm.set_faults(dead_ids=frozenset())
