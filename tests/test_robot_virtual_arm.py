"""The emulator itself: protocol corner cases, the Phase register, and the `virtual-arm` command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from smolvla_kit.robot.calibration import CalibrationIO, load_calibration
from smolvla_kit.robot.feetech import (
    BROADCAST_ID,
    INST_PING,
    INST_READ,
    INST_SYNC_WRITE,
    INST_WRITE,
    FeetechBus,
    Packet,
    parse_status_packet,
)
from smolvla_kit.robot.so101 import SO101Follower
from smolvla_kit.robot.virtual_arm import VirtualSO101
from smolvla_kit.units import JOINT_LIMITS, JOINT_NAMES


def test_emulator_answers_like_six_servos():
    arm = VirtualSO101()  # no pty needed to call the instruction handler directly
    replies = [parse_status_packet(r) for r in arm.handle(Packet(BROADCAST_ID, INST_PING))]
    assert [r.id for r in replies] == [1, 2, 3, 4, 5, 6] and all(r.code == 0 for r in replies)
    model = parse_status_packet(arm.handle(Packet(4, INST_READ, bytes([3, 2])))[0])
    assert int.from_bytes(model.params, "little") == 777
    assert arm.handle(Packet(4, INST_READ, bytes([0, 255]))) == []  # an answer too long for one packet
    assert arm.handle(Packet(9, INST_PING)) == []  # nobody has ID 9
    # A SYNC_WRITE whose length does not divide into (id + data) chunks is ignored as a whole.
    arm.handle(Packet(BROADCAST_ID, INST_SYNC_WRITE, bytes([21, 1, 1, 5, 2])))
    assert arm.register(1, "P_Coefficient") == 32
    # Writes to read-only bytes are ignored; Response_Status_Level 0 silences WRITE acknowledgements.
    arm.handle(Packet(2, INST_WRITE, bytes([3, 0, 0])))
    assert arm.register(2, "Model_Number") == 777
    assert len(arm.handle(Packet(2, INST_WRITE, bytes([21, 9])))) == 1  # acknowledged
    arm.handle(Packet(2, INST_WRITE, bytes([8, 0])))  # Response_Status_Level = 0
    assert arm.handle(Packet(2, INST_WRITE, bytes([21, 7]))) == []
    assert len(arm.handle(Packet(2, INST_READ, bytes([21, 1])))) == 1  # READ is still answered
    assert arm.register(2, "P_Coefficient") == 7


def test_connect_clears_multi_turn_feedback(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path))
    with VirtualSO101(phase=0x10) as arm:
        with FeetechBus(arm.port) as bus:
            bus.write("Homing_Offset", "gripper", 2047)  # multi-turn feedback: the reading goes negative
            assert bus.read("Present_Position", "gripper") < 0
            bus.write("Homing_Offset", "gripper", 0)
        robot = SO101Follower(arm.port, "phase", watchdog_timeout_s=None)
        steps = iter([(j, v) for j in (0, 1, 2, 3, 5) for v in JOINT_LIMITS[j]] + [(0, 0.0)])

        def sweep_done():
            step = next(steps, None)
            if step is not None:
                arm.move_by_hand({JOINT_NAMES[step[0]]: step[1]})
            return step is None

        io = CalibrationIO(
            prompt=lambda m: arm.move_by_hand([0, 0, 0, 0, 0, 50]),
            sweep_done=sweep_done,
            show=lambda s: None,
            poll_s=0.0,
        )
        robot.connect(calibrate=True, io=io)  # no file yet: calibrates, saves, then connects
        try:
            assert all(arm.register(n, "Phase") & 0x10 == 0 for n in JOINT_NAMES)
            assert load_calibration(tmp_path / "robots" / "so101_follower" / "phase.json") == robot.calibration
            assert np.allclose(robot.read_state(), arm.joint_positions(), atol=0.15)
        finally:
            robot.disconnect()


def test_virtual_arm_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path))
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "smolvla_kit.robot.virtual_arm", "--write-calibration", "cli_arm"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/")
        assert (tmp_path / "robots" / "so101_follower" / "cli_arm.json").is_file()
        with FeetechBus(port) as bus:
            assert bus.read("Model_Number", "gripper") == 777
        robot = SO101Follower(port, "cli_arm", watchdog_timeout_s=None)
        with robot:
            assert robot.read_state().shape == (6,)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=20)
        finally:
            proc.kill()
    assert rc == 0


def test_stop_then_start_serves_again():
    arm = VirtualSO101()
    for _ in range(2):
        arm.start()
        with FeetechBus(arm.port) as bus:
            assert bus.ping("wrist_roll") == 0
        arm.stop()
        assert arm.port is not None and arm._thread is None


def test_calibrate_command_line_with_enter_on_stdin(tmp_path, monkeypatch):
    """`smolvla-kit calibrate` in a real subprocess: Enter (on its stdin) confirms each stage, as on a terminal."""
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path))
    with VirtualSO101() as arm:
        arm.move_by_hand([0, 0, 0, 0, 0, 50])  # centred before the prompt
        code = (
            f"from smolvla_kit.robot.so101 import run_calibrate; run_calibrate(['--port', {arm.port!r}, '--id', 'tty'])"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        try:
            assert "Calibrating" in proc.stdout.readline()
            proc.stdin.write("\n")  # "middle of the range ... press ENTER"
            proc.stdin.flush()
            time.sleep(0.5)  # it now records ranges: sweep every joint but wrist_roll
            for j in (0, 1, 2, 3, 5):
                for v in (*JOINT_LIMITS[j], 50.0 if j == 5 else 0.0):
                    arm.move_by_hand({JOINT_NAMES[j]: v})
                    time.sleep(0.15)  # long enough for its 20 ms polling to see each end
            proc.stdin.write("\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "Saved" in out
        assert load_calibration("tty") == arm.ideal_calibration()


def test_the_virtual_arm_holds_the_calibration_it_writes_like_a_calibrated_arm():
    """LeRobot's `connect(calibrate=False)` compares each servo's Homing_Offset and position limits with the
    calibration file; the virtual arm keeps them in EEPROM, over a power cycle, as a calibrated real arm does."""
    with VirtualSO101() as arm:
        cal = arm.ideal_calibration()
        with FeetechBus(arm.port) as bus:
            assert [bus.read("Homing_Offset", m) for m in cal] != [c.homing_offset for c in cal.values()]
            arm.store_calibration(cal)
            arm.power_cycle()
            for motor, c in cal.items():
                assert bus.read("Homing_Offset", motor) == c.homing_offset
                assert bus.read("Min_Position_Limit", motor) == c.range_min
                assert bus.read("Max_Position_Limit", motor) == c.range_max
            # and the reading is the calibrated one: the centre of each joint reads about mid-range
            arm.move_by_hand({"shoulder_pan": 0.0})
            time.sleep(0.1)
            assert abs(bus.read("Present_Position", "shoulder_pan") - 2047) < 30
