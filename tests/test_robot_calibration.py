"""Calibration: LeRobot's JSON, its unit conversion, and the interactive procedure run against the virtual arm."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from smolvla_kit.robot.calibration import (
    CalibrationError,
    CalibrationIO,
    MotorCalibration,
    calibration_root,
    default_calibration_path,
    find_calibration_file,
    load_calibration,
    raw_to_unit,
    read_motor_calibration,
    run_calibration,
    save_calibration,
    unit_to_raw,
)
from smolvla_kit.robot.feetech import FeetechBus
from smolvla_kit.robot.so101 import SO101Follower
from smolvla_kit.robot.virtual_arm import VirtualSO101
from smolvla_kit.units import JOINT_LIMITS, JOINT_NAMES

# A file as LeRobot writes it (draccus, indent 4), for an arm calibrated with LeRobot.
LEROBOT_FILE = """{
    "shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1454, "range_min": 757, "range_max": 3300},
    "shoulder_lift": {"id": 2, "drive_mode": 0, "homing_offset": 1052, "range_min": 827, "range_max": 3245},
    "elbow_flex": {"id": 3, "drive_mode": 0, "homing_offset": -1191, "range_min": 860, "range_max": 3082},
    "wrist_flex": {"id": 4, "drive_mode": 0, "homing_offset": 1040, "range_min": 879, "range_max": 3219},
    "wrist_roll": {"id": 5, "drive_mode": 0, "homing_offset": -1472, "range_min": 0, "range_max": 4095},
    "gripper": {"id": 6, "drive_mode": 0, "homing_offset": 1417, "range_min": 2013, "range_max": 3478}
}"""


@pytest.fixture(autouse=True)
def calibration_dir(tmp_path, monkeypatch):
    """Never touch the user's real ~/.cache: point LeRobot's variable at a temporary directory."""
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path / "calibration"))
    return tmp_path / "calibration"


def _cal(name: str, lo: int, hi: int, drive_mode: int = 0) -> MotorCalibration:
    return MotorCalibration(
        id=JOINT_NAMES.index(name) + 1, drive_mode=drive_mode, homing_offset=0, range_min=lo, range_max=hi
    )


def test_conversions_are_lerobots_formulas():
    c = _cal("elbow_flex", 1000, 3000)  # mid 2000
    assert raw_to_unit("elbow_flex", 2000, c) == 0.0
    assert raw_to_unit("elbow_flex", 3000, c) == pytest.approx(1000 * 360 / 4095)
    assert raw_to_unit("elbow_flex", 4000, c) == pytest.approx(2000 * 360 / 4095)  # degrees are not clamped
    assert unit_to_raw("elbow_flex", 90.0, c) == int(90 * 4095 / 360 + 2000)
    assert unit_to_raw("elbow_flex", -90.0, c) == int(-90 * 4095 / 360 + 2000)
    g = _cal("gripper", 2013, 3478)
    assert raw_to_unit("gripper", 2013, g) == 0.0 and raw_to_unit("gripper", 3478, g) == 100.0
    assert raw_to_unit("gripper", 5000, g) == 100.0  # the 0..100 mode clamps the raw value first
    assert unit_to_raw("gripper", 50.0, g) == int(0.5 * (3478 - 2013) + 2013)
    assert unit_to_raw("gripper", 150.0, g) == 3478
    inv = _cal("gripper", 2013, 3478, drive_mode=1)
    assert raw_to_unit("gripper", 2013, inv) == 100.0
    assert unit_to_raw("gripper", 100.0, inv) == 2013


def test_raw_units_round_trip():
    for lo, hi in [(0, 4095), (757, 3300), (1001, 3100), (1421, 2673)]:
        c = _cal("shoulder_pan", lo, hi)
        for raw in range(0, 4096):  # degrees: exact both ways for every tick
            assert unit_to_raw("shoulder_pan", raw_to_unit("shoulder_pan", raw, c), c) == raw
        g = _cal("gripper", lo, hi)
        for raw in range(lo, hi + 1):  # 0..100: LeRobot's int() truncation may lose one tick, never more
            back = unit_to_raw("gripper", raw_to_unit("gripper", raw, g), g)
            assert raw - 1 <= back <= raw
        for pct in np.linspace(0, 100, 1001):
            again = raw_to_unit("gripper", unit_to_raw("gripper", pct, g), g)
            assert abs(again - pct) <= 100 / (hi - lo) + 1e-9


def test_lerobot_file_loads_and_saves_identically(calibration_dir):
    path = calibration_dir / "robots" / "so101_follower" / "lab_arm.json"
    path.parent.mkdir(parents=True)
    path.write_text(LEROBOT_FILE)
    cal = load_calibration("lab_arm")  # found by id in LeRobot's directory
    assert cal["shoulder_pan"] == MotorCalibration(1, 0, -1454, 757, 3300)
    assert cal["gripper"].range_max == 3478
    out = save_calibration(cal, calibration_dir / "copy.json")
    assert json.loads(out.read_text()) == json.loads(LEROBOT_FILE)  # same keys, same values
    assert load_calibration(out) == cal


def test_paths_follow_lerobots_environment_variables(monkeypatch, tmp_path, calibration_dir):
    assert default_calibration_path("a") == calibration_dir / "robots" / "so101_follower" / "a.json"
    monkeypatch.delenv("HF_LEROBOT_CALIBRATION")
    monkeypatch.delenv("HF_LEROBOT_HOME", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert calibration_root() == tmp_path / "hf" / "lerobot" / "calibration"
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lr"))
    assert calibration_root() == tmp_path / "lr" / "calibration"
    # LeRobot >= 0.4 saves under robots/so_follower: found too.
    newer = tmp_path / "lr" / "calibration" / "robots" / "so_follower" / "b.json"
    newer.parent.mkdir(parents=True)
    newer.write_text(LEROBOT_FILE)
    assert find_calibration_file("b") == newer
    with pytest.raises(FileNotFoundError, match="no calibration for arm id 'nope'"):
        find_calibration_file("nope")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("gripper"), "missing \\['gripper'\\]"),
        (lambda d: d["elbow_flex"].pop("range_min"), "'elbow_flex' lacks key\\(s\\) range_min"),
        (lambda d: d["wrist_flex"].update(range_min=3500), "'wrist_flex': need 0 <= range_min < range_max"),
        (lambda d: d["shoulder_pan"].update(homing_offset=3000), "'shoulder_pan': homing_offset 3000"),
        (lambda d: d["gripper"].update(id=9), "'gripper': id is 9"),
        (lambda d: d["gripper"].update(drive_mode="0"), "'gripper' key 'drive_mode' must be an integer"),
    ],
)
def test_bad_files_are_rejected_with_the_motor_and_key(tmp_path, mutate, message):
    data = json.loads(LEROBOT_FILE)
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=message) as e:
        load_calibration(path)
    assert str(path) in str(e.value)


def test_not_json_is_a_clear_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        load_calibration(path)


def _sweeping_io(arm: VirtualSO101, limits=JOINT_LIMITS, joints=(0, 1, 2, 3, 5)) -> CalibrationIO:
    """A person at the virtual arm: centres it when asked, then sweeps each joint end to end."""
    moves = []
    for j in joints:
        moves += [(j, v) for v in np.linspace(limits[j, 0], limits[j, 1], 7)]
        moves.append((j, 50.0 if j == 5 else 0.0))
    it = iter(moves)
    prompts = []

    def prompt(message: str) -> None:
        prompts.append(message)
        arm.move_by_hand([0, 0, 0, 0, 0, 50])

    def sweep_done() -> bool:
        step = next(it, None)
        if step is None:
            return True
        arm.move_by_hand({JOINT_NAMES[step[0]]: step[1]})
        return False

    io = CalibrationIO(prompt=prompt, sweep_done=sweep_done, show=lambda s: None, poll_s=0.0)
    io.prompts = prompts
    return io


def test_interactive_procedure_on_the_virtual_arm(calibration_dir):
    with VirtualSO101() as arm:
        robot = SO101Follower(arm.port, "virtual_arm", watchdog_timeout_s=None)
        io = _sweeping_io(arm)
        cal = robot.calibrate(io)
        assert "middle of its range" in io.prompts[0]
        # What a careful person gets by hand is what the virtual arm's geometry says.
        assert cal == arm.ideal_calibration()
        assert cal["wrist_roll"].range_min == 0 and cal["wrist_roll"].range_max == 4095
        # Saved where LeRobot looks, in LeRobot's format, and written into the servos.
        path = calibration_dir / "robots" / "so101_follower" / "virtual_arm.json"
        assert load_calibration(path) == cal
        with FeetechBus(arm.port) as bus:
            held = read_motor_calibration(bus)
        for name in JOINT_NAMES:
            assert (held[name].homing_offset, held[name].range_min, held[name].range_max) == (
                cal[name].homing_offset,
                cal[name].range_min,
                cal[name].range_max,
            )
        # With that calibration the driver reports the simulator's units.
        arm.move_by_hand([35.0, -42.0, 60.0, -20.0, 100.0, 30.0])
        with robot:
            state = robot.get_observation()["observation.state"]
        assert np.allclose(state, arm.joint_positions(), atol=0.15), (state, arm.joint_positions())


def test_a_joint_not_swept_is_a_clear_error():
    with VirtualSO101() as arm, FeetechBus(arm.port) as bus:
        io = _sweeping_io(arm, joints=(0, 1, 2, 5))  # forgot wrist_flex
        with pytest.raises(CalibrationError, match="'wrist_flex'"):
            run_calibration(bus, io)


def test_file_calibration_is_written_to_servos_that_differ(calibration_dir):
    with VirtualSO101() as arm:
        cal = arm.ideal_calibration()
        save_calibration(cal, default_calibration_path("arm2"))
        with FeetechBus(arm.port) as bus:  # the servos come from the factory: offsets 0, range 0..4095
            assert read_motor_calibration(bus)["elbow_flex"].homing_offset == 0
        robot = SO101Follower(arm.port, "arm2", watchdog_timeout_s=None)
        robot.connect()
        try:
            assert arm.register("elbow_flex", "Homing_Offset") == cal["elbow_flex"].homing_offset
            assert arm.register("gripper", "Max_Position_Limit") == cal["gripper"].range_max
            time.sleep(0.05)
            assert np.allclose(robot.read_state(), arm.joint_positions(), atol=0.15)
        finally:
            robot.disconnect()
