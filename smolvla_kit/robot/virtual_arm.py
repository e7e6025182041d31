"""A virtual SO-101 on a pseudo-terminal: six emulated STS3215 servos that speak the Feetech protocol byte for byte.

The real driver opens the pty's path with pyserial exactly as it opens /dev/ttyACM0, and cannot tell the two
apart: packets, checksums, status error bytes, sync read/write, the control table (EEPROM and RAM, the Lock flag,
the homing offset applied to Present_Position, the position limits clamping goals, torque enable) all behave as
on the servo. Behind the registers, a physics backend (`backends.py`) moves the joints.

Each servo's encoder is "mounted" at an arbitrary angle, as a real horn is: with every joint at 0 of the model, the
raw readings are not 2047. That is what calibration is for; :meth:`VirtualSO101.ideal_calibration` gives the
calibration a careful person would record, and running the interactive procedure against the virtual arm gives
(nearly) the same numbers.

With the MuJoCo backend the arm also has cameras: a pty carries no video, so :class:`VirtualCamera` renders the
simulator's `front`/`wrist` views through a Python call, and `SO101Follower(cameras={"front": VirtualCamera(arm,
"front")})` reads them like webcams. :meth:`VirtualSO101.reset_scene` starts a new simulator episode.

Faults can be injected at construction or while running (:class:`FaultConfig`, :meth:`VirtualSO101.set_faults`):
dropped replies, replies with a bad checksum, alarm bits in the error byte, and motors that stop answering.

Command line (the kit's `smolvla-kit virtual-arm` calls :func:`run_virtual_arm`):

    python -m smolvla_kit.robot.virtual_arm [--backend first-order|mujoco] [--write-calibration ID]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import select
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

from smolvla_kit.errors import exit_code
from smolvla_kit.flags import add_dataclass_arguments, explicit_values
from smolvla_kit.robot.backends import FirstOrderServoBackend, MujocoBackend, ServoBackend
from smolvla_kit.robot.calibration import HALF_TURN, MAX_RES, MotorCalibration, save_calibration
from smolvla_kit.robot.cameras import DEFAULT_IMAGE_SIZE, CameraConfig, CameraError, OpenCVCamera
from smolvla_kit.robot.feetech import (
    BROADCAST_ID,
    CONTROL_TABLE,
    CONTROL_TABLE_SIZE,
    INST_PING,
    INST_READ,
    INST_SYNC_READ,
    INST_SYNC_WRITE,
    INST_WRITE,
    MAX_PACKET_SIZE,
    MIN_PACKET_SIZE,
    SO101_MOTORS,
    STS3215_MODEL_NUMBER,
    STS3215_RESOLUTION,
    Packet,
    PacketError,
    PacketReader,
    build_packet,
    decode_value,
    encode_value,
)
from smolvla_kit.units import GRIPPER_RANGE_RAD, JOINT_LIMITS, JOINT_NAMES, NUM_JOINTS

TICKS_PER_DEGREE = STS3215_RESOLUTION / 360.0  # the physical encoder: 4096 steps per turn
MAX_READ = MAX_PACKET_SIZE - MIN_PACKET_SIZE  # most data bytes one status packet carries


# ----------------------------------------------------------------------------------------------------------------
# Encoder mounting: kit units <-> raw encoder ticks (before any homing offset)
# ----------------------------------------------------------------------------------------------------------------


def unit_to_angle_deg(joint: int, value: float) -> float:
    """Kit unit of joint `joint` -> the joint's mechanical angle in degrees (the gripper's 0..100 -> jaw angle)."""
    if joint != NUM_JOINTS - 1:
        return float(value)
    lo, hi = GRIPPER_RANGE_RAD
    return float(np.degrees(lo + value / 100.0 * (hi - lo)))


def angle_deg_to_unit(joint: int, angle: float) -> float:
    if joint != NUM_JOINTS - 1:
        return float(angle)
    lo, hi = GRIPPER_RANGE_RAD
    return float((np.radians(angle) - lo) / (hi - lo) * 100.0)


@dataclass(frozen=True)
class EncoderMount:
    """raw ticks = zero_tick + direction * angle_deg * 4096/360, read modulo 4096 (continuous before wrapping)."""

    zero_tick: float
    direction: int = 1

    def ticks(self, joint: int, unit: float) -> float:
        return self.zero_tick + self.direction * unit_to_angle_deg(joint, unit) * TICKS_PER_DEGREE

    def unit(self, joint: int, ticks: float) -> float:
        return angle_deg_to_unit(joint, (ticks - self.zero_tick) / (self.direction * TICKS_PER_DEGREE))


# Arbitrary horn positions (within a few hundred ticks of mid-range, as on an assembled arm).
DEFAULT_MOUNTS: tuple[EncoderMount, ...] = (
    EncoderMount(2047 + 183),
    EncoderMount(2047 - 312),
    EncoderMount(2047 + 95),
    EncoderMount(2047 - 241),
    EncoderMount(2047 + 402),
    EncoderMount(2047 - 517),
)


# ----------------------------------------------------------------------------------------------------------------
# One emulated STS3215
# ----------------------------------------------------------------------------------------------------------------

# Factory values of the registers the emulator gives meaning to (typical STS3215 values).
FACTORY_DEFAULTS: dict[str, int] = {
    "Firmware_Major_Version": 3,
    "Firmware_Minor_Version": 10,
    "Model_Number": STS3215_MODEL_NUMBER,
    "Baud_Rate": 0,  # 1 Mbaud
    "Return_Delay_Time": 250,  # 500 us; LeRobot sets it to 0
    "Response_Status_Level": 1,
    "Min_Position_Limit": 0,
    "Max_Position_Limit": MAX_RES,
    "Max_Temperature_Limit": 70,
    "Max_Voltage_Limit": 140,
    "Min_Voltage_Limit": 40,
    "Max_Torque_Limit": 1000,
    "Phase": 0,
    "P_Coefficient": 32,
    "D_Coefficient": 32,
    "I_Coefficient": 0,
    "Protection_Current": 500,
    "Homing_Offset": 0,
    "Operating_Mode": 0,
    "Overload_Torque": 80,
    "Maximum_Acceleration": 0,
}

_READ_ONLY_BYTES = frozenset(
    a for r in CONTROL_TABLE.values() if r.read_only for a in range(r.address, r.address + r.size)
)
_EEPROM_END = 40
STALL_CURRENT_MA = 2700.0  # STS3215 at 12 V, about; Present_Current counts in steps of 6.5 mA
CURRENT_STEP_MA = 6.5


class EmulatedSTS3215:
    """The control table and behaviour of one servo; the joint it drives lives in the shared backend."""

    def __init__(self, servo_id: int, joint: int, backend: ServoBackend, mount: EncoderMount, phase: int = 0) -> None:
        self.joint = joint
        self.backend = backend
        self.mount = mount
        self.mem = bytearray(CONTROL_TABLE_SIZE)
        for name, value in FACTORY_DEFAULTS.items():
            self._set(name, value)
        self._set("ID", servo_id)
        self._set("Phase", phase)
        self.flash = bytes(self.mem[:_EEPROM_END])  # what survives a power cycle
        self.alarm = 0  # error-byte bits this servo reports (fault injection)
        self._power_on()

    # -- raw register access ------------------------------------------------------------------------------------

    def _get(self, name: str) -> int:
        r = CONTROL_TABLE[name]
        return decode_value(r, bytes(self.mem[r.address : r.address + r.size]))

    def _set(self, name: str, value: int) -> None:
        r = CONTROL_TABLE[name]
        self.mem[r.address : r.address + r.size] = encode_value(r, value)

    @property
    def id(self) -> int:
        return self.mem[CONTROL_TABLE["ID"].address]

    @property
    def torque_enabled(self) -> bool:
        return self._get("Torque_Enable") == 1

    def get(self, name: str) -> int:
        """A register's current value (feedback registers refreshed from the physics first)."""
        self._refresh_feedback()
        return self._get(name)

    # -- power --------------------------------------------------------------------------------------------------

    def _power_on(self) -> None:
        self.mem[:_EEPROM_END] = self.flash
        self.mem[_EEPROM_END:] = bytes(CONTROL_TABLE_SIZE - _EEPROM_END)
        self._set("Maximum_Acceleration", FACTORY_DEFAULTS["Maximum_Acceleration"])
        self._set("Torque_Limit", self._get("Max_Torque_Limit"))
        self._set("Lock", 1)
        self.backend.set_torque(self.joint, False)
        self._refresh_feedback()
        self._set("Goal_Position", self._get("Present_Position"))

    def power_cycle(self) -> None:
        """Lose RAM and every EEPROM change made while Lock was 1, as a real servo does."""
        self._power_on()

    # -- positions ----------------------------------------------------------------------------------------------

    def _actual_ticks(self) -> float:
        """The encoder's continuous reading (no wrap, no homing offset)."""
        return self.mount.ticks(self.joint, float(self.backend.present()[self.joint]))

    def _reported(self, actual: float) -> int:
        """Present_Position = actual - Homing_Offset: single-turn 0..4095, or the full angle when Phase bit 4 is set."""
        value = int(round(actual)) - self._get("Homing_Offset")
        if self._get("Phase") & 0x10:
            return max(-32767, min(32767, value))
        return value % STS3215_RESOLUTION

    def _refresh_feedback(self) -> None:
        self._set("Present_Position", self._reported(self._actual_ticks()))
        speed_units = float(self.backend.velocity()[self.joint])
        speed_ticks = (
            (unit_to_angle_deg(self.joint, speed_units) - unit_to_angle_deg(self.joint, 0.0))
            * TICKS_PER_DEGREE
            * self.mount.direction
        )
        speed_ticks = int(max(-32767, min(32767, round(speed_ticks))))
        self._set("Present_Velocity", speed_ticks)
        self._set("Moving", int(abs(speed_ticks) > 20))
        # Load in 0.1 % of the maximum torque, signed like the position; current drawn in proportion to it.
        load = float(self.backend.load()[self.joint]) * self.mount.direction
        self._set("Present_Load", int(round(max(-1.0, min(1.0, load)) * 1000)))
        self._set("Present_Current", int(round(abs(load) * STALL_CURRENT_MA / CURRENT_STEP_MA)))
        self._set("Present_Voltage", 120)
        self._set("Present_Temperature", 32)
        self._set("Status", self.alarm & 0x2F)

    def _retarget(self) -> None:
        """Drive the joint to Goal_Position (clamped to the position limits), as the servo's loop does.

        A single-turn servo moves from its present reading to the goal reading without crossing 0/4095, so the
        joint target is the present angle plus (goal - present) ticks.
        """
        if not self.torque_enabled or self._get("Operating_Mode") != 0:
            return
        goal = self._get("Goal_Position")
        lo, hi = self._get("Min_Position_Limit"), self._get("Max_Position_Limit")
        if hi > lo:  # both 0 would mean multi-turn mode: no clamp
            goal = min(hi, max(lo, goal))
        actual = self._actual_ticks()
        target_ticks = actual + (goal - self._reported(actual))
        self.backend.set_goal(self.joint, self.mount.unit(self.joint, target_ticks))

    # -- the bus interface --------------------------------------------------------------------------------------

    def read(self, address: int, length: int) -> bytes:
        self._refresh_feedback()
        out = bytes(self.mem[address : address + length])
        return out + bytes(length - len(out))  # beyond the modelled table reads as zeros

    def write(self, address: int, data: bytes) -> None:
        """Apply a WRITE: read-only bytes are ignored; EEPROM bytes persist only while Lock is 0."""
        self._refresh_feedback()
        touched = set()
        for offset, byte in enumerate(data):
            a = address + offset
            if a >= CONTROL_TABLE_SIZE or a in _READ_ONLY_BYTES:
                continue
            self.mem[a] = byte
            touched.add(a)
        if self._get("Lock") == 0 and any(a < _EEPROM_END for a in touched):
            self.flash = bytes(self.mem[:_EEPROM_END])

        def hit(name: str) -> bool:
            r = CONTROL_TABLE[name]
            return any(r.address <= a < r.address + r.size for a in touched)

        if hit("Torque_Enable"):
            on = self.torque_enabled
            self.backend.set_torque(self.joint, on)
            if not on:
                # The servo goes limp: the joint stops where it is instead of coasting to an old target.
                self.backend.set_goal(self.joint, float(self.backend.present()[self.joint]))
        if any(
            hit(n)
            for n in ("Torque_Enable", "Goal_Position", "Homing_Offset", "Min_Position_Limit", "Max_Position_Limit")
        ):
            self._retarget()


# ----------------------------------------------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FaultConfig:
    """What goes wrong on the virtual bus. Probabilities use a seeded RNG, so a test run is repeatable."""

    drop_reply_prob: float = 0.0  # a status packet never arrives
    corrupt_reply_prob: float = 0.0  # a status packet arrives with a wrong checksum
    drop_next: int = 0  # drop exactly the next N status packets
    corrupt_next: int = 0  # corrupt exactly the next N status packets
    dead_ids: frozenset[int] = frozenset()  # servos that neither answer nor act (cable pulled)
    alarm_bits: Mapping[int, int] = field(default_factory=dict)  # id -> error byte they report
    seed: int = 0


# ----------------------------------------------------------------------------------------------------------------
# The arm
# ----------------------------------------------------------------------------------------------------------------


class VirtualSO101:
    """Six emulated STS3215 on one pseudo-terminal, backed by a physics backend.

    Use as a context manager (or call start()/stop()); `port` is the path to open with pyserial.
    """

    def __init__(
        self,
        backend: ServoBackend | None = None,
        faults: FaultConfig | None = None,
        mounts: Sequence[EncoderMount] = DEFAULT_MOUNTS,
        phase: int = 0,
        motors: Mapping[str, int] = SO101_MOTORS,
    ) -> None:
        self.backend = backend if backend is not None else FirstOrderServoBackend()
        self.motor_names = list(motors)
        self.servos = [
            EmulatedSTS3215(mid, JOINT_NAMES.index(name), self.backend, mounts[JOINT_NAMES.index(name)], phase)
            for name, mid in motors.items()
        ]
        self.faults = faults or FaultConfig()
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._master = self._slave = -1
        self.port: str | None = None
        self.stats = {"packets": 0, "bad_packets": 0, "replies": 0, "dropped": 0, "corrupted": 0}
        self.last_error: Exception | None = None
        self._apply_alarms()

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> "VirtualSO101":
        if self._thread is not None:
            return self
        import tty  # POSIX only: the virtual arm needs a pseudo-terminal (Linux, macOS)

        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: a byte is a byte
        tty.setraw(self._master)
        self.port = os.ttyname(self._slave)
        self._running.set()
        self._thread = threading.Thread(target=self._serve, name="virtual-so101", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1

    def close(self) -> None:
        self.stop()
        self.backend.close()

    def __enter__(self) -> "VirtualSO101":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the serving loop ---------------------------------------------------------------------------------------

    def _serve(self) -> None:
        reader = PacketReader()
        last = time.monotonic()
        while self._running.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.005)
            except (OSError, ValueError):
                break
            now = time.monotonic()
            with self._lock:
                self.backend.advance(min(now - last, 1.0))
            last = now
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                break
            reader.feed(data)
            out = bytearray()
            while True:
                try:
                    pkt = reader.next_packet()
                except PacketError:
                    self.stats["bad_packets"] += 1  # a servo ignores a corrupt instruction
                    continue
                if pkt is None:
                    break
                with self._lock:
                    try:
                        replies = self.handle(pkt)
                    except Exception as e:  # a servo never crashes on odd input: count it and carry on
                        self.stats["bad_packets"] += 1
                        self.last_error = e
                        replies = []
                    for reply in replies:
                        out += self._deliver(reply)
            if out:
                try:
                    os.write(self._master, bytes(out))
                except OSError:
                    break

    def _deliver(self, reply: bytes) -> bytes:
        """Apply the reply faults to one status packet."""
        f = self.faults
        self.stats["replies"] += 1
        if f.drop_next > 0 or (f.drop_reply_prob and self._rng.random() < f.drop_reply_prob):
            f.drop_next = max(0, f.drop_next - 1)
            self.stats["dropped"] += 1
            return b""
        if f.corrupt_next > 0 or (f.corrupt_reply_prob and self._rng.random() < f.corrupt_reply_prob):
            f.corrupt_next = max(0, f.corrupt_next - 1)
            self.stats["corrupted"] += 1
            return reply[:-1] + bytes([reply[-1] ^ 0x5A])
        return reply

    # -- the protocol -------------------------------------------------------------------------------------------

    def _alive(self) -> dict[int, EmulatedSTS3215]:
        return {s.id: s for s in self.servos if s.id not in self.faults.dead_ids}

    def _status(self, servo: EmulatedSTS3215, params: bytes = b"") -> bytes:
        return build_packet(servo.id, servo.alarm & 0x7F, params)

    def handle(self, pkt: Packet) -> list[bytes]:
        """Execute one instruction packet on the servos; return the status packets they send, in order."""
        self.stats["packets"] += 1
        servos = self._alive()
        p = pkt.params
        if pkt.code in (INST_READ, INST_SYNC_READ) and len(p) >= 2 and p[1] > MAX_READ:
            return []  # the answer would not fit one packet
        if pkt.id == BROADCAST_ID:
            if pkt.code == INST_PING:
                return [self._status(s) for _, s in sorted(servos.items())]
            if pkt.code == INST_WRITE and len(p) >= 2:
                for s in servos.values():
                    s.write(p[0], p[1:])
                return []
            if pkt.code == INST_SYNC_READ and len(p) >= 2:
                address, length = p[0], p[1]
                return [self._status(servos[i], servos[i].read(address, length)) for i in p[2:] if i in servos]
            if pkt.code == INST_SYNC_WRITE and len(p) >= 2:
                address, length = p[0], p[1]
                chunk = 1 + length
                if length == 0 or (len(p) - 2) % chunk:
                    self.stats["bad_packets"] += 1
                    return []
                for k in range(2, len(p), chunk):
                    s = servos.get(p[k])
                    if s is not None:
                        s.write(address, p[k + 1 : k + chunk])
                return []
            return []
        s = servos.get(pkt.id)
        if s is None:
            return []
        answer_all = s._get("Response_Status_Level") >= 1
        if pkt.code == INST_PING:
            return [self._status(s)]
        if pkt.code == INST_READ and len(p) == 2:
            return [self._status(s, s.read(p[0], p[1]))]
        if pkt.code == INST_WRITE and len(p) >= 2:
            s.write(p[0], p[1:])
            return [self._status(s)] if answer_all else []
        return []  # unknown or malformed instruction: a servo stays silent

    # -- controls for tests, demos and the CLI ------------------------------------------------------------------

    def set_faults(self, **changes) -> None:
        """Change faults while running, e.g. `set_faults(dead_ids={3})` or `set_faults(drop_next=2)`."""
        with self._lock:
            if "dead_ids" in changes:
                changes["dead_ids"] = frozenset(changes["dead_ids"])
            self.faults = dataclasses.replace(self.faults, **changes)
            if "seed" in changes:
                self._rng = random.Random(self.faults.seed)
            self._apply_alarms()

    def _apply_alarms(self) -> None:
        for s in self.servos:
            s.alarm = self.faults.alarm_bits.get(s.id, 0)

    def servo(self, motor: str | int) -> EmulatedSTS3215:
        idx = self.motor_names.index(motor) if isinstance(motor, str) else [s.id for s in self.servos].index(motor)
        return self.servos[idx]

    def register(self, motor: str | int, name: str) -> int:
        """Read a register straight from an emulated servo (bypassing the bus)."""
        with self._lock:
            return self.servo(motor).get(name)

    def torque_enabled(self) -> dict[str, bool]:
        with self._lock:
            return {n: s.torque_enabled for n, s in zip(self.motor_names, self.servos)}

    def joint_positions(self) -> np.ndarray:
        """Ground truth: where the backend's joints are, (6,) kit units."""
        with self._lock:
            return self.backend.present()

    def move_by_hand(self, positions: Mapping[str, float] | Sequence[float]) -> None:
        """Move joints as a person would (meant for limp joints; a torqued joint pulls back to its goal)."""
        with self._lock:
            items = positions.items() if isinstance(positions, Mapping) else zip(JOINT_NAMES, positions)
            for name, value in items:
                self.backend.move_by_hand(JOINT_NAMES.index(name), float(value))

    def power_cycle(self) -> None:
        with self._lock:
            for s in self.servos:
                s.power_cycle()

    def render_camera(self, camera: str, size: int | None = None) -> np.ndarray:
        """A camera frame from the MuJoCo backend, rendered between physics steps (a pty carries no video)."""
        render = getattr(self.backend, "render_camera", None)
        if render is None:
            raise RuntimeError(
                f"the {type(self.backend).__name__} backend has no cameras: use MujocoBackend.from_sim()"
            )
        with self._lock:
            return render(camera, size)

    def scene_success(self) -> bool:
        """Whether the simulated task is done (MuJoCo backend), read between physics steps."""
        check = getattr(self.backend, "is_success", None)
        if check is None:
            raise RuntimeError(f"the {type(self.backend).__name__} backend has no task: use MujocoBackend.from_sim()")
        with self._lock:
            return bool(check())

    def reset_scene(self, seed: int | None = None, **options) -> str:
        """New simulator episode (MuJoCo backend): cubes re-placed, arm at the ready pose; returns the instruction.

        Each servo's Goal_Position is set to where its joint now is, as a servo that was moved by hand would
        report, so a later torque-on does not pull a joint back to a goal from the previous episode.
        """
        reset = getattr(self.backend, "reset_scene", None)
        if reset is None:
            raise RuntimeError(f"the {type(self.backend).__name__} backend has no scene: use MujocoBackend.from_sim()")
        with self._lock:
            instruction = reset(seed=seed, options=options or None)
            for s in self.servos:
                s._set("Goal_Position", s._reported(s._actual_ticks()))
            return instruction

    def store_calibration(self, cal: Mapping[str, MotorCalibration]) -> None:
        """Hold `cal` in the servos' EEPROM (homing offset and position limits, kept over power cycles), as on a
        calibrated real arm, so a driver that compares the servos with its calibration file finds them equal."""
        with self._lock:
            for name, c in cal.items():
                s = self.servo(name)
                s._set("Homing_Offset", c.homing_offset)
                s._set("Min_Position_Limit", c.range_min)
                s._set("Max_Position_Limit", c.range_max)
                s.flash = bytes(s.mem[:_EEPROM_END])

    def ideal_calibration(self, limits: np.ndarray = JOINT_LIMITS) -> dict[str, MotorCalibration]:
        """The calibration a careful person would record: centred at 0 (gripper 50), swept over `limits`."""
        cal = {}
        for name, s in zip(self.motor_names, self.servos):
            j = s.joint
            centre = 50.0 if name == "gripper" else 0.0
            offset = int(round(s.mount.ticks(j, centre))) % STS3215_RESOLUTION - HALF_TURN
            if name == "wrist_roll":
                lo, hi = 0, MAX_RES
            else:
                ends = sorted(int(round(s.mount.ticks(j, v))) - offset for v in limits[j])
                lo, hi = ends
            cal[name] = MotorCalibration(id=s.id, drive_mode=0, homing_offset=offset, range_min=lo, range_max=hi)
        return cal


# ----------------------------------------------------------------------------------------------------------------
# Cameras of the virtual arm
# ----------------------------------------------------------------------------------------------------------------


class VirtualCamera(OpenCVCamera):
    """A camera of a :class:`VirtualSO101` with the MuJoCo backend, for `SO101Follower(cameras={...})`.

    The driver reads it like a webcam (`connect`, `read`, `disconnect`); frames are rendered by the simulator
    (`front` or `wrist`) at `size` x `size`, exactly the images the policy was trained on.
    """

    def __init__(self, arm: VirtualSO101, camera: str, size: int = DEFAULT_IMAGE_SIZE) -> None:
        super().__init__(CameraConfig(index_or_path=f"virtual:{camera}", width=size, height=size), name=camera)
        self.arm = arm
        self.camera = camera
        self.size = int(size)
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        try:
            self.arm.render_camera(self.camera, self.size)
        except (RuntimeError, ValueError) as e:
            raise CameraError(f"virtual camera '{self.camera}': {e}") from e
        self._connected = True

    def read(self) -> np.ndarray:
        if not self._connected:
            raise CameraError(f"camera '{self.name}' is not connected: call connect() first")
        return self.arm.render_camera(self.camera, self.size)

    def disconnect(self) -> None:
        self._connected = False


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class VirtualArmConfig:
    """Emulate an SO-101 follower (six Feetech STS3215 servos) on a pseudo-terminal."""

    backend: Literal["first-order", "mujoco"] = "first-order"
    """Physics behind the servos: a fast first-order servo model, or the kit's MuJoCo SO-101."""
    task: str = "reach"
    """Simulator task, for the mujoco backend."""
    write_calibration: str | None = None
    """Save the virtual arm's calibration as LeRobot JSON under this arm id, so SO101Follower(port, calibration=ID)
    connects without calibrating."""
    drop_rate: float = 0.0
    """Probability of dropping each reply."""
    corrupt_rate: float = 0.0
    """Probability of a bad checksum on each reply."""
    dead_motor: list[int] = field(default_factory=list, metadata={"repeat": True})
    """ID of a motor that never answers (repeat the flag for several)."""


def serve_virtual_arm(cfg: VirtualArmConfig) -> int:
    """Serve a virtual SO-101 on a pty until Ctrl-C; print the port path to open (the only line on stdout)."""
    backend = MujocoBackend.from_sim(task=cfg.task) if cfg.backend == "mujoco" else FirstOrderServoBackend()
    faults = FaultConfig(
        drop_reply_prob=cfg.drop_rate, corrupt_reply_prob=cfg.corrupt_rate, dead_ids=frozenset(cfg.dead_motor)
    )
    arm = VirtualSO101(backend=backend, faults=faults)
    if cfg.write_calibration:
        from smolvla_kit.robot.calibration import default_calibration_path

        calibration = arm.ideal_calibration()
        arm.store_calibration(calibration)  # in the servos, as on a calibrated arm, and in LeRobot's file
        path = save_calibration(calibration, default_calibration_path(cfg.write_calibration))
        print(f"calibration for id '{cfg.write_calibration}' written to {path}", file=sys.stderr, flush=True)
    arm.start()
    print(arm.port, flush=True)  # the only line on stdout: the path to open, for scripts
    print(f"virtual SO-101 ({cfg.backend} backend) serving on {arm.port}; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        arm.close()
    return 0


def run_virtual_arm(argv: Sequence[str] | None = None) -> int:
    """Command line: `smolvla-kit virtual-arm [--backend mujoco] [--write-calibration ID]`."""
    ap = argparse.ArgumentParser(prog="smolvla-kit virtual-arm", description=VirtualArmConfig.__doc__)
    add_dataclass_arguments(ap, VirtualArmConfig)
    args = ap.parse_args(argv)
    return exit_code(lambda: serve_virtual_arm(VirtualArmConfig(**explicit_values(args, VirtualArmConfig))))


if __name__ == "__main__":
    sys.exit(run_virtual_arm())
