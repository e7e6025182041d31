"""SO-101 calibration: LeRobot's JSON file, the tick <-> unit conversion, and the interactive procedure.

What calibration means for an STS3215 arm (the same procedure and file format as LeRobot, so an arm already
calibrated with LeRobot works here at once, and one calibrated here works in LeRobot):

1. With torque off, the user puts every joint in the middle of its range. Each servo's `Homing_Offset` register
   is set to `present - 2047`; the servo then reports `Present_Position = actual - Homing_Offset`, i.e. 2047 in
   that pose, half a turn from the wrap-around at 0/4095, so no joint crosses it while moving.
2. The user sweeps every joint except `wrist_roll` through its full range while the positions are recorded;
   `range_min`/`range_max` are the extremes seen. `wrist_roll` turns freely and takes the whole turn, 0..4095.
3. Offsets and ranges are written to the servos (the range also goes into the Min/Max_Position_Limit registers,
   so the servo itself refuses goals outside it) and saved as JSON, one object per motor:
   `{"id", "drive_mode", "homing_offset", "range_min", "range_max"}`.

Units (LeRobot's `degrees` mode for the arm, `range_0_100` for the gripper; the constants are LeRobot's):

    arm joint:  deg = (raw - mid) * 360 / 4095,    mid = (range_min + range_max) / 2
                raw = int(deg * 4095 / 360 + mid)                          (int() truncates, as LeRobot does)
    gripper:    pct = (clip(raw, min, max) - min) / (max - min) * 100      (100 - pct when drive_mode is 1)
                raw = int(clip(pct, 0, 100) / 100 * (max - min) + min)     (pct -> 100 - pct first if inverted)

Where the file lives (as LeRobot computes it): `$HF_LEROBOT_CALIBRATION`, else `$HF_LEROBOT_HOME/calibration`, else
`$HF_HOME/lerobot/calibration` (HF_HOME defaulting to `$XDG_CACHE_HOME/huggingface` or `~/.cache/huggingface`),
then `robots/<robot type>/<id>.json`. LeRobot up to 0.3 named the type `so101_follower`; from 0.4 it is
`so_follower`. The kit writes `so101_follower` and reads either.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from smolvla_kit.errors import KitError, MissingFile
from smolvla_kit.robot.feetech import STS3215_RESOLUTION, FeetechBus
from smolvla_kit.units import JOINT_NAMES

MAX_RES = STS3215_RESOLUTION - 1  # 4095: LeRobot's `max_res`, used in the degree conversion
HALF_TURN = MAX_RES // 2  # 2047: where the homing offset puts the centred pose
FULL_TURN_MOTOR = "wrist_roll"  # turns without a stop: takes the whole encoder range
GRIPPER = "gripper"
ROBOT_TYPE = "so101_follower"
ROBOT_TYPES_READ = ("so101_follower", "so_follower")  # LeRobot <= 0.3, LeRobot >= 0.4
MIN_SWEEP_TICKS = 100  # a recorded range narrower than this (about 9 degrees) means the joint was not swept

# How each motor's raw value becomes a kit unit (LeRobot's MotorNormMode for the SO-101 follower).
NORM_MODES: dict[str, str] = {name: "degrees" for name in JOINT_NAMES[:5]} | {GRIPPER: "range_0_100"}


class CalibrationError(KitError, ValueError):
    """A calibration file or procedure that cannot be used; the message names the file/motor/key."""


@dataclass
class MotorCalibration:
    """One motor's entry in LeRobot's calibration JSON."""

    id: int
    drive_mode: int  # 0 normal, 1 inverted (LeRobot applies it only to the gripper's 0..100 mode)
    homing_offset: int  # written to the servo's Homing_Offset register (sign-magnitude, |v| <= 2047)
    range_min: int  # raw ticks (after the homing offset), also written to Min_Position_Limit
    range_max: int  # raw ticks, also written to Max_Position_Limit


Calibration = dict[str, MotorCalibration]


# ----------------------------------------------------------------------------------------------------------------
# Where the file lives
# ----------------------------------------------------------------------------------------------------------------


def calibration_root() -> Path:
    """LeRobot's calibration directory, honouring the same environment variables as LeRobot."""
    if os.environ.get("HF_LEROBOT_CALIBRATION"):
        return Path(os.environ["HF_LEROBOT_CALIBRATION"]).expanduser()
    if os.environ.get("HF_LEROBOT_HOME"):
        return Path(os.environ["HF_LEROBOT_HOME"]).expanduser() / "calibration"
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(hf_home).expanduser() / "lerobot" / "calibration"


def default_calibration_path(robot_id: str, robot_type: str = ROBOT_TYPE) -> Path:
    """Where the kit saves the calibration of the arm called `robot_id`."""
    return calibration_root() / "robots" / robot_type / f"{robot_id}.json"


def find_calibration_file(id_or_path: str | os.PathLike) -> Path:
    """A path to an existing file, or an arm id looked up in LeRobot's directories (new and old type names)."""
    text = os.fspath(id_or_path)
    as_path = Path(text).expanduser()
    if as_path.suffix == ".json" or os.sep in text or as_path.is_file():
        if not as_path.is_file():
            raise MissingFile(f"calibration file '{as_path}' does not exist")
        return as_path
    tried = [default_calibration_path(text, t) for t in ROBOT_TYPES_READ]
    for p in tried:
        if p.is_file():
            return p
    raise MissingFile(
        f"no calibration for arm id '{text}': looked for {' and '.join(map(str, tried))}. Calibrate the arm first "
        "(smolvla_kit.robot.SO101Follower(port, calibration=...).calibrate(), or LeRobot's lerobot-calibrate), "
        "or pass the path of an existing calibration JSON."
    )


# ----------------------------------------------------------------------------------------------------------------
# Reading and writing the JSON
# ----------------------------------------------------------------------------------------------------------------

_FIELDS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")


def validate_calibration(cal: Mapping[str, MotorCalibration], source: str = "calibration") -> None:
    """Raise :class:`CalibrationError` unless `cal` is a usable SO-101 calibration."""
    from smolvla_kit.robot.feetech import SO101_MOTORS

    missing = [m for m in SO101_MOTORS if m not in cal]
    extra = [m for m in cal if m not in SO101_MOTORS]
    if missing or extra:
        raise CalibrationError(
            f"{source}: motors must be exactly {', '.join(SO101_MOTORS)}; "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    for name, c in cal.items():
        where = f"{source}: motor '{name}'"
        if c.id != SO101_MOTORS[name]:
            raise CalibrationError(f"{where}: id is {c.id}, the SO-101 has '{name}' at id {SO101_MOTORS[name]}")
        if c.drive_mode not in (0, 1):
            raise CalibrationError(f"{where}: drive_mode must be 0 or 1, got {c.drive_mode}")
        if abs(c.homing_offset) > 2047:
            raise CalibrationError(f"{where}: homing_offset {c.homing_offset} is outside -2047..2047")
        if not (0 <= c.range_min < c.range_max <= MAX_RES):
            raise CalibrationError(
                f"{where}: need 0 <= range_min < range_max <= {MAX_RES}, got range_min={c.range_min}, "
                f"range_max={c.range_max}; recalibrate and sweep this joint through its whole range"
            )


def calibration_from_dict(data: object, source: str = "calibration") -> Calibration:
    """Parse the JSON object LeRobot writes into MotorCalibration entries, checking every key and type."""
    if not isinstance(data, dict):
        raise CalibrationError(f"{source}: expected a JSON object of motors, got {type(data).__name__}")
    cal: Calibration = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise CalibrationError(f"{source}: motor '{name}' must be an object with keys {', '.join(_FIELDS)}")
        missing = [k for k in _FIELDS if k not in entry]
        if missing:
            raise CalibrationError(f"{source}: motor '{name}' lacks key(s) {', '.join(missing)}")
        values = {}
        for k in _FIELDS:
            v = entry[k]
            if isinstance(v, bool) or not isinstance(v, int):
                raise CalibrationError(f"{source}: motor '{name}' key '{k}' must be an integer, got {v!r}")
            values[k] = v
        cal[name] = MotorCalibration(**values)
    validate_calibration(cal, source)
    # Keep the bus order whatever order the file had.
    from smolvla_kit.robot.feetech import SO101_MOTORS

    return {m: cal[m] for m in SO101_MOTORS}


def load_calibration(id_or_path: str | os.PathLike) -> Calibration:
    """Read a LeRobot calibration JSON (a path, or an arm id looked up with :func:`find_calibration_file`)."""
    path = find_calibration_file(id_or_path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CalibrationError(f"calibration file '{path}' is not valid JSON: {e}") from e
    return calibration_from_dict(data, source=f"calibration file '{path}'")


def save_calibration(cal: Mapping[str, MotorCalibration], path: str | os.PathLike) -> Path:
    """Write `cal` as LeRobot's JSON (4-space indent), atomically (a crash never leaves half a file)."""
    validate_calibration(cal, source=f"calibration for '{path}'")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    from smolvla_kit.data.layout import write_bytes_atomic

    write_bytes_atomic(path, (json.dumps({m: asdict(c) for m, c in cal.items()}, indent=4) + "\n").encode())
    return path


# ----------------------------------------------------------------------------------------------------------------
# Raw ticks <-> kit units
# ----------------------------------------------------------------------------------------------------------------


def raw_to_unit(name: str, raw: float, c: MotorCalibration) -> float:
    """One motor's raw Present/Goal_Position -> degrees (arm) or 0..100 (gripper), exactly as LeRobot."""
    lo, hi = c.range_min, c.range_max
    if NORM_MODES[name] == "degrees":
        return (raw - (lo + hi) / 2) * 360 / MAX_RES
    pct = (min(hi, max(lo, raw)) - lo) / (hi - lo) * 100
    return 100 - pct if c.drive_mode else pct


def unit_to_raw(name: str, value: float, c: MotorCalibration) -> int:
    """Inverse of :func:`raw_to_unit`, truncating with int() like LeRobot (so the same goals reach the servo)."""
    lo, hi = c.range_min, c.range_max
    if NORM_MODES[name] == "degrees":
        return int(value * MAX_RES / 360 + (lo + hi) / 2)
    value = 100 - value if c.drive_mode else value
    return int(min(100.0, max(0.0, value)) / 100 * (hi - lo) + lo)


def raw_to_units(raw: Mapping[str, int], cal: Mapping[str, MotorCalibration]) -> np.ndarray:
    """{motor: ticks} -> (6,) float64 kit units in JOINT_NAMES order."""
    return np.array([raw_to_unit(n, raw[n], cal[n]) for n in JOINT_NAMES], dtype=np.float64)


def units_to_raw(units: np.ndarray, cal: Mapping[str, MotorCalibration]) -> dict[str, int]:
    """(6,) kit units in JOINT_NAMES order -> {motor: ticks}."""
    return {n: unit_to_raw(n, float(v), cal[n]) for n, v in zip(JOINT_NAMES, units)}


def calibrated_limits(cal: Mapping[str, MotorCalibration]) -> np.ndarray:
    """(6, 2) [low, high] of each joint's calibrated range in kit units."""
    out = np.empty((len(JOINT_NAMES), 2))
    for i, n in enumerate(JOINT_NAMES):
        a, b = raw_to_unit(n, cal[n].range_min, cal[n]), raw_to_unit(n, cal[n].range_max, cal[n])
        out[i] = min(a, b), max(a, b)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Reading and writing the calibration registers of the servos
# ----------------------------------------------------------------------------------------------------------------


def read_motor_calibration(bus: FeetechBus) -> Calibration:
    """What the servos hold now (drive_mode is not stored in the servo; reported as 0, as LeRobot does)."""
    return {
        m: MotorCalibration(
            id=bus.motor_id(m),
            drive_mode=0,
            homing_offset=bus.read("Homing_Offset", m),
            range_min=bus.read("Min_Position_Limit", m),
            range_max=bus.read("Max_Position_Limit", m),
        )
        for m in bus.motors
    }


def motors_match(bus: FeetechBus, cal: Mapping[str, MotorCalibration]) -> bool:
    """True when every servo already holds `cal`'s homing offset and range."""
    held = read_motor_calibration(bus)
    return all(
        (held[m].homing_offset, held[m].range_min, held[m].range_max)
        == (cal[m].homing_offset, cal[m].range_min, cal[m].range_max)
        for m in bus.motors
    )


def write_motor_calibration(bus: FeetechBus, cal: Mapping[str, MotorCalibration]) -> None:
    """Write offsets and limits to the servos. Torque must be off (Lock=0), as for any EEPROM write."""
    for m, c in cal.items():
        bus.write("Homing_Offset", m, c.homing_offset)
        bus.write("Min_Position_Limit", m, c.range_min)
        bus.write("Max_Position_Limit", m, c.range_max)


# ----------------------------------------------------------------------------------------------------------------
# The interactive procedure
# ----------------------------------------------------------------------------------------------------------------


def enter_pressed() -> bool:
    """Non-blocking: has the user pressed Enter on the terminal? (consumes the line)"""
    if os.name == "nt":  # pragma: no cover - Windows console
        import msvcrt

        return msvcrt.kbhit() and msvcrt.getwch() in ("\r", "\n")
    import select

    ready, _, _ = select.select([sys.stdin], [], [], 0)
    if ready:
        sys.stdin.readline()
        return True
    return False


@dataclass
class CalibrationIO:
    """How the procedure talks to the person at the arm; replace the callables to drive it from code or tests."""

    prompt: Callable[[str], object] = input  # show a message, return when the user confirms (Enter)
    sweep_done: Callable[[], bool] = enter_pressed  # polled while ranges are recorded; True ends the sweep
    show: Callable[[str], None] = print  # progress and the live table
    poll_s: float = 0.02  # pause between position reads while sweeping
    live_table: bool = True  # print the min/position/max table while sweeping


def _table(mins: dict, pos: dict, maxs: dict) -> str:
    lines = [f"{'motor':<14} {'min':>6} {'pos':>6} {'max':>6}"]
    lines += [f"{m:<14} {mins[m]:>6} {pos[m]:>6} {maxs[m]:>6}" for m in mins]
    return "\n".join(lines)


def run_calibration(
    bus: FeetechBus,
    io: CalibrationIO | None = None,
    save_to: str | os.PathLike | None = None,
) -> Calibration:
    """Calibrate the arm on `bus` interactively (see the module docstring); write the servos and the JSON.

    The bus must be open. Torque is turned off for the whole procedure (the user moves the joints by hand).
    Returns the new calibration; saves it to `save_to` when given.
    """
    io = io or CalibrationIO()
    motors = list(bus.motors)
    bus.disable_torque()
    for m in motors:
        bus.write("Operating_Mode", m, 0)  # position mode

    io.prompt("Move the arm to the middle of its range of motion (every joint centred), then press ENTER...")
    # Start from the factory state so the offsets are computed on the true encoder readings.
    for m in motors:
        bus.write("Homing_Offset", m, 0)
        bus.write("Min_Position_Limit", m, 0)
        bus.write("Max_Position_Limit", m, MAX_RES)
    actual = bus.sync_read("Present_Position", motors)
    offsets = {}
    for m in motors:
        offsets[m] = actual[m] - HALF_TURN
        if abs(offsets[m]) > 2047:
            raise CalibrationError(
                f"motor '{m}' reads {actual[m]}, giving a homing offset of {offsets[m]} (the servo holds -2047..2047); "
                "move the joint a little away from the encoder's wrap point and calibrate again"
            )
        bus.write("Homing_Offset", m, offsets[m])

    swept = [m for m in motors if m != FULL_TURN_MOTOR]
    io.show(
        f"Move every joint except '{FULL_TURN_MOTOR}' through its entire range of motion, one after the other. "
        "Recording positions; press ENTER to stop..."
    )
    pos = bus.sync_read("Present_Position", swept)
    mins, maxs = dict(pos), dict(pos)
    while True:
        pos = bus.sync_read("Present_Position", swept)
        for m in swept:
            mins[m] = min(mins[m], pos[m])
            maxs[m] = max(maxs[m], pos[m])
        if io.live_table:
            io.show(_table(mins, pos, maxs))
        if io.sweep_done():
            break
        time.sleep(io.poll_s)
    mins[FULL_TURN_MOTOR], maxs[FULL_TURN_MOTOR] = 0, MAX_RES

    narrow = [f"'{m}' ({maxs[m] - mins[m]} ticks)" for m in swept if maxs[m] - mins[m] < MIN_SWEEP_TICKS]
    if narrow:
        raise CalibrationError(
            f"these joints barely moved while recording: {', '.join(narrow)}; run the calibration again and sweep "
            f"each joint from one end stop to the other (at least {MIN_SWEEP_TICKS} ticks, about "
            f"{MIN_SWEEP_TICKS * 360 / MAX_RES:.0f} degrees)"
        )

    cal = {
        m: MotorCalibration(
            id=bus.motor_id(m), drive_mode=0, homing_offset=offsets[m], range_min=mins[m], range_max=maxs[m]
        )
        for m in motors
    }
    write_motor_calibration(bus, cal)
    if save_to is not None:
        path = save_calibration(cal, save_to)
        io.show(f"Calibration saved to {path}")
    return cal


__all__ = [
    "Calibration",
    "CalibrationError",
    "CalibrationIO",
    "MotorCalibration",
    "NORM_MODES",
    "calibrated_limits",
    "calibration_from_dict",
    "calibration_root",
    "default_calibration_path",
    "enter_pressed",
    "find_calibration_file",
    "load_calibration",
    "motors_match",
    "raw_to_unit",
    "raw_to_units",
    "read_motor_calibration",
    "run_calibration",
    "save_calibration",
    "unit_to_raw",
    "units_to_raw",
    "validate_calibration",
]
