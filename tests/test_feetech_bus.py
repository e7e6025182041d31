"""The bus driver (pyserial) against the virtual arm's emulated STS3215s on a real pseudo-terminal."""

from __future__ import annotations

import time

import pytest

from smolvla_kit.robot.feetech import (
    SO101_MOTORS,
    STS3215_MODEL_NUMBER,
    CommunicationError,
    FeetechBus,
    MotorAlarmError,
    PortError,
)
from smolvla_kit.robot.virtual_arm import VirtualSO101


@pytest.fixture
def arm():
    with VirtualSO101() as a:
        yield a


@pytest.fixture
def bus(arm):
    b = FeetechBus(arm.port, timeout_s=0.02, retries=3)
    b.open()
    yield b
    b.close()


def test_ping_read_model_number_and_sync_read(bus, arm):
    for name in SO101_MOTORS:
        assert bus.ping(name) == 0
        assert bus.read("Model_Number", name) == STS3215_MODEL_NUMBER
    positions = bus.sync_read("Present_Position")
    assert list(positions) == list(SO101_MOTORS)
    assert positions == {n: arm.register(n, "Present_Position") for n in SO101_MOTORS}


def test_write_then_read_back_and_sync_write(bus, arm):
    bus.write("P_Coefficient", "elbow_flex", 16)
    assert bus.read("P_Coefficient", "elbow_flex") == 16
    assert arm.register("elbow_flex", "P_Coefficient") == 16
    bus.sync_write("Acceleration", {n: 254 for n in SO101_MOTORS})
    assert bus.sync_read("Acceleration") == {n: 254 for n in SO101_MOTORS}
    with pytest.raises(ValueError, match="read-only"):
        bus.write("Present_Position", "gripper", 5)


def test_homing_offset_is_applied_to_present_position(bus, arm):
    before = bus.read("Present_Position", "shoulder_lift")
    bus.disable_torque(["shoulder_lift"])
    bus.write("Homing_Offset", "shoulder_lift", -300)  # negative: sign bit 11 on the wire
    assert arm.register("shoulder_lift", "Homing_Offset") == -300
    assert bus.read("Homing_Offset", "shoulder_lift") == -300
    assert bus.read("Present_Position", "shoulder_lift") == (before + 300) % 4096


def test_torque_goal_limits_and_eeprom_lock(bus, arm):
    start = bus.read("Present_Position", "shoulder_pan")
    # Torque off: a goal is stored but the motor does not move.
    bus.write("Goal_Position", "shoulder_pan", start + 400)
    time.sleep(0.15)
    assert abs(bus.read("Present_Position", "shoulder_pan") - start) <= 1
    # Torque on: it goes there.
    bus.enable_torque(["shoulder_pan"])
    time.sleep(0.3)
    assert abs(bus.read("Present_Position", "shoulder_pan") - (start + 400)) <= 2
    # The position limit registers clamp goals, as the servo does.
    bus.disable_torque(["shoulder_pan"])
    bus.write("Max_Position_Limit", "shoulder_pan", start + 100)
    bus.enable_torque(["shoulder_pan"])
    bus.write("Goal_Position", "shoulder_pan", start + 1000)
    time.sleep(0.3)
    assert abs(bus.read("Present_Position", "shoulder_pan") - (start + 100)) <= 2
    # EEPROM written with Lock=0 (disable_torque unlocks) survives a power cycle; with Lock=1 it does not.
    bus.disable_torque(["gripper"])
    bus.write("Max_Torque_Limit", "gripper", 500)
    bus.write("Lock", "gripper", 1)
    bus.write("Protection_Current", "gripper", 123)
    arm.power_cycle()
    assert bus.read("Max_Torque_Limit", "gripper") == 500
    assert bus.read("Protection_Current", "gripper") == 500  # factory value came back
    assert bus.read("Torque_Enable", "shoulder_pan") == 0  # RAM lost at power-off


def test_transient_faults_are_retried(bus, arm):
    arm.set_faults(drop_next=2)
    assert bus.read("Model_Number", "wrist_roll") == STS3215_MODEL_NUMBER
    arm.set_faults(corrupt_next=2)
    assert len(bus.sync_read("Present_Position")) == 6
    assert arm.stats["dropped"] == 2 and arm.stats["corrupted"] == 2
    # 20 % of replies lost or corrupted (seeded, so repeatable): every exchange succeeds within its retries.
    arm.set_faults(drop_reply_prob=0.1, corrupt_reply_prob=0.1, seed=1)
    before = dict(arm.stats)
    for _ in range(50):
        assert bus.read("Present_Position", "gripper") >= 0
    assert arm.stats["dropped"] > before["dropped"] and arm.stats["corrupted"] > before["corrupted"]


def test_persistent_faults_give_clear_errors_in_bounded_time(bus, arm):
    arm.set_faults(drop_reply_prob=1.0)
    t0 = time.monotonic()
    with pytest.raises(CommunicationError) as e:
        bus.read("Present_Position", "elbow_flex")
    elapsed = time.monotonic() - t0
    assert elapsed < 4 * 0.02 + 0.5  # 1 + 3 attempts of 20 ms each, plus scheduling slack
    assert "'elbow_flex' (id 3)" in str(e.value) and arm.port in str(e.value) and "4 attempts" in str(e.value)

    arm.set_faults(drop_reply_prob=0.0, corrupt_reply_prob=1.0)
    with pytest.raises(CommunicationError, match="checksum"):
        bus.ping("gripper")

    arm.set_faults(corrupt_reply_prob=0.0, dead_ids={4})
    with pytest.raises(CommunicationError) as e:
        bus.sync_read("Present_Position")
    assert "'wrist_flex' (id 4)" in str(e.value)
    assert "shoulder_pan" not in str(e.value)  # only the silent motor is blamed


def test_alarm_bits_raise_motor_alarm_error(bus, arm):
    arm.set_faults(alarm_bits={2: 0x20 | 0x04})
    with pytest.raises(MotorAlarmError) as e:
        bus.ping("shoulder_lift")
    assert "overload" in str(e.value) and "overheating" in str(e.value) and "'shoulder_lift' (id 2)" in str(e.value)


def test_missing_port_names_the_port():
    with pytest.raises(PortError) as e:
        FeetechBus("/dev/definitely-not-an-arm").open()
    assert "/dev/definitely-not-an-arm" in str(e.value) and "USB" in str(e.value)
