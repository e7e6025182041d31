"""The real SO-101 follower arm: observations and actions in the simulator's units, with safety rules.

    robot = SO101Follower("/dev/ttyACM0", calibration="my_arm", cameras={"front": 0, "wrist": 2})
    with robot:                                   # connect; torque off on any exception, Ctrl-C or exit
        obs = robot.get_observation()             # {"observation.state": (6,) float32, "observation.images.front": ...}
        sent = robot.send_action(action)          # (6,) degrees / gripper 0..100 -> what was actually sent

Safety, applied to every action before it reaches a motor:

1. A NaN/inf or wrong-shape action raises ValueError; nothing is sent.
2. Each joint is clamped to its calibrated range intersected with the arm's joint limits (`units.JOINT_LIMITS`).
3. Each joint moves at most `max_relative_target` (degrees, or gripper units) from where it is now
   (a scalar, or one value per joint), as LeRobot's `max_relative_target`.
4. A watchdog thread holds position (goal = present position) when no action arrives within
   `watchdog_timeout_s`, so a stalled policy never leaves the arm chasing an old goal.
5. Torque goes off on every motor when a bus error escapes, on Ctrl-C (SIGINT), when the `with` block exits, at
   interpreter exit (atexit) and on `disconnect()`. Emergency torque-off is one SYNC_WRITE that needs no reply,
   so it still works on a bus that is dropping or corrupting replies. After that the robot refuses further
   actions until it is disconnected and connected again. (A camera error raises `CameraError` without touching
   the motors: the watchdog holds the arm while the caller decides.)

On connect the driver does what LeRobot's does: check that the six servos answer as STS3215 (model 777), write the
calibration to the servos if they hold other values, then with torque off set Return_Delay_Time 0, acceleration
254, single-turn position feedback (Phase bit 4 clear), position mode and P=16, I=0, D=32, and halve the gripper's
torque and current limits (Max_Torque_Limit 500, Protection_Current 250, Overload_Torque 25).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from smolvla_kit.errors import InputError, KitError, exit_code
from smolvla_kit.robot.calibration import (
    Calibration,
    CalibrationError,
    CalibrationIO,
    calibrated_limits,
    default_calibration_path,
    find_calibration_file,
    load_calibration,
    motors_match,
    raw_to_units,
    run_calibration,
    units_to_raw,
    write_motor_calibration,
)
from smolvla_kit.robot.cameras import CameraConfig, OpenCVCamera
from smolvla_kit.robot.feetech import SO101_MOTORS, STS3215_MODEL_NUMBER, CommunicationError, FeetechBus
from smolvla_kit.units import JOINT_LIMITS, JOINT_NAMES, NUM_JOINTS, check_joint_vector
from smolvla_kit.vocabulary import IMAGE_PREFIX, STATE_KEY

log = logging.getLogger(__name__)



class RobotError(KitError, RuntimeError):
    """The robot is not in a state to do what was asked (not connected, stopped after a fault...)."""


def _per_joint(value: float | Sequence[float] | Mapping[str, float] | None, what: str) -> np.ndarray | None:
    """A scalar, a 6-sequence or a {motor: value} mapping -> (6,) float64, each finite and > 0."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        missing = [n for n in JOINT_NAMES if n not in value]
        extra = [k for k in value if k not in JOINT_NAMES]
        if missing or extra:
            raise InputError(
                f"{what} keys must be exactly {', '.join(JOINT_NAMES)}; missing {missing}, unexpected {extra}"
            )
        arr = np.array([float(value[n]) for n in JOINT_NAMES])
    else:
        arr = np.asarray(value, dtype=np.float64)
        arr = np.full(NUM_JOINTS, float(arr)) if arr.ndim == 0 else arr
        if arr.shape != (NUM_JOINTS,):
            raise InputError(
                f"{what} must be a number or {NUM_JOINTS} values ({', '.join(JOINT_NAMES)}); got shape {arr.shape}"
            )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"{what} must be finite and > 0 for every joint; got {arr.tolist()}")
    return arr


def apply_safety(
    goal: np.ndarray, present: np.ndarray, limits: np.ndarray, max_step: np.ndarray | None
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """The action that may be sent, and which joints each rule changed.

    goal, present: (6,) kit units; limits: (6, 2); max_step: (6,) or None.
    First clamp the goal to the limits, then cap its distance from `present`. The result never moves a joint
    by more than `max_step`, and lies inside the limits whenever the joint does (a joint pushed outside by hand
    is brought back towards its range, `max_step` at a time).
    """
    lo, hi = limits[:, 0], limits[:, 1]
    clamped = np.clip(goal, lo, hi)  # (6,)
    safe = clamped
    if max_step is not None:
        safe = np.clip(clamped, present - max_step, present + max_step)  # (6,)
    report = {
        "clamped": [n for n, a, b in zip(JOINT_NAMES, goal, clamped) if abs(a - b) > 1e-9],
        "capped": [n for n, a, b in zip(JOINT_NAMES, clamped, safe) if abs(a - b) > 1e-9],
    }
    return safe, report


class SO101Follower:
    """An SO-101 follower arm on a Feetech bus (a real one, or a :class:`VirtualSO101`'s pty)."""

    def __init__(
        self,
        port: str,
        calibration: str | os.PathLike = "so101",
        *,
        max_relative_target: float | Sequence[float] | Mapping[str, float] | None = 15.0,
        cameras: Mapping[str, OpenCVCamera | CameraConfig | int | str] | None = None,
        joint_limits: np.ndarray = JOINT_LIMITS,
        watchdog_timeout_s: float | None = 0.5,
        timeout_s: float = 0.05,
        retries: int = 3,
        pid: tuple[int, int, int] = (16, 0, 32),
        handle_sigint: bool = True,
    ) -> None:
        """
        Args:
            port: serial device of the arm's controller board (e.g. /dev/ttyACM0), or a virtual arm's pty.
            calibration: an arm id (file looked up in LeRobot's calibration directory) or a path to its JSON.
            max_relative_target: the largest move per action from the present position (degrees, gripper units),
                one number or one per joint; None disables the cap.
            cameras: name -> camera (`front`, `wrist` as in the simulator); an int/str is an OpenCV source.
            joint_limits: (6, 2) limits in kit units, intersected with the calibrated range.
            watchdog_timeout_s: hold position when no action arrives for this long; None disables it.
            timeout_s, retries: per-reply timeout and extra attempts of each bus exchange.
            pid: position P, I, D written to every servo on connect (LeRobot's 16, 0, 32).
            handle_sigint: turn torque off on Ctrl-C (installed only from the main thread).
        """
        self.port = port
        self.calibration_source = os.fspath(calibration)
        self.max_step = _per_joint(max_relative_target, "max_relative_target")  # (6,) or None
        self.joint_limits = np.asarray(joint_limits, dtype=np.float64)
        if self.joint_limits.shape != (NUM_JOINTS, 2):
            raise InputError(f"joint_limits must have shape ({NUM_JOINTS}, 2), got {self.joint_limits.shape}")
        if watchdog_timeout_s is not None and not watchdog_timeout_s > 0:
            raise InputError(f"watchdog_timeout_s must be > 0 or None, got {watchdog_timeout_s}")
        self.watchdog_timeout_s = watchdog_timeout_s
        self.pid = pid
        self.handle_sigint = handle_sigint
        self.bus = FeetechBus(port, SO101_MOTORS, timeout_s=timeout_s, retries=retries)
        self.cameras: dict[str, OpenCVCamera] = {}
        for name, cam in (cameras or {}).items():
            self.cameras[name] = cam if isinstance(cam, OpenCVCamera) else OpenCVCamera(cam, name=name)
        self.calibration: Calibration | None = None
        self.limits: np.ndarray | None = None  # (6, 2) effective limits once calibrated
        self.last_safety: dict[str, list[str]] = {"clamped": [], "capped": []}
        self.watchdog_trips = 0
        self._connected = False
        self._torque_on = False
        self._fault: BaseException | None = None
        self._ctl = threading.RLock()  # one control step at a time (the watchdog vs send_action)
        self._last_action_t = 0.0
        self._holding = False
        self._wd_stop = threading.Event()
        self._wd_thread: threading.Thread | None = None
        self._prev_sigint = None

    def __repr__(self) -> str:
        return f"SO101Follower(port={self.port!r}, calibration={self.calibration_source!r})"

    # -- calibration --------------------------------------------------------------------------------------------

    def calibration_path(self) -> Path:
        """Where this arm's calibration is read from, or will be saved to."""
        try:
            return find_calibration_file(self.calibration_source)
        except FileNotFoundError:
            src = self.calibration_source
            if src.endswith(".json") or os.sep in src:
                return Path(src).expanduser()
            return default_calibration_path(src)

    def calibrate(self, io: CalibrationIO | None = None) -> Calibration:
        """Run the interactive calibration (torque off; you move the joints) and save LeRobot's JSON."""
        if self._connected:
            raise RobotError(f"{self} is connected with torque on: disconnect() before calibrating")
        opened_here = not self.bus.is_open
        if opened_here:
            self.bus.open()
        try:
            self._check_motors()
            cal = run_calibration(self.bus, io, save_to=self.calibration_path())
        except BaseException:
            self.bus.emergency_torque_off()
            raise
        finally:
            if opened_here:
                self.bus.close()
        self._set_calibration(cal)
        return cal

    def _set_calibration(self, cal: Calibration) -> None:
        limits = calibrated_limits(cal)  # (6, 2)
        lo = np.maximum(limits[:, 0], self.joint_limits[:, 0])
        hi = np.minimum(limits[:, 1], self.joint_limits[:, 1])
        empty = [n for n, a, b in zip(JOINT_NAMES, lo, hi) if a >= b]
        if empty:
            raise CalibrationError(
                f"calibrated range of {', '.join(empty)} does not overlap the joint limits "
                f"{self.joint_limits.tolist()}; recalibrate (centre the joints first)"
            )
        self.calibration = cal
        self.limits = np.stack([lo, hi], axis=1)

    # -- connection ---------------------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = False, io: CalibrationIO | None = None) -> None:
        """Open the bus, check the servos, apply the calibration, configure, hold position and enable torque.

        Without a calibration file this raises FileNotFoundError, unless `calibrate=True` runs the interactive
        procedure first.
        """
        if self._connected:
            raise RobotError(f"{self} is already connected")
        self.bus.open()
        try:
            self._check_motors()
            try:
                cal = load_calibration(self.calibration_source)
            except FileNotFoundError:
                if not calibrate:
                    raise
                cal = run_calibration(self.bus, io, save_to=self.calibration_path())
            self._set_calibration(cal)
            if not motors_match(self.bus, cal):
                log.info(
                    "servos hold a different calibration than %s: writing the file's values", self.calibration_source
                )
                self.bus.disable_torque()
                write_motor_calibration(self.bus, cal)
            self._configure()
            self._hold_and_enable()
            for cam in self.cameras.values():
                cam.connect()
        except BaseException:
            self.bus.emergency_torque_off()
            self.bus.close()
            for cam in self.cameras.values():
                cam.disconnect()
            raise
        self._connected = True
        self._fault = None
        self._install_hooks()
        self._start_watchdog()

    def _check_motors(self) -> None:
        """Every servo answers and is an STS3215; otherwise one error naming all the missing/wrong ones."""
        missing, wrong = [], []
        for name in self.bus.motors:
            try:
                model = self.bus.read("Model_Number", name)
            except CommunicationError:
                missing.append(f"'{name}' (id {self.bus.motor_id(name)})")
                continue
            if model != STS3215_MODEL_NUMBER:
                wrong.append(f"'{name}' (id {self.bus.motor_id(name)}) reports model {model}")
        if missing or wrong:
            parts = []
            if missing:
                parts.append(f"no answer from {', '.join(missing)}")
            if wrong:
                parts.append(f"not an STS3215 (model {STS3215_MODEL_NUMBER}): {'; '.join(wrong)}")
            raise CommunicationError(
                f"SO-101 on '{self.port}': {'; '.join(parts)}. Check the servo power supply and the cables between "
                "the servos, and that each motor was given its ID (1..6) and 1 Mbaud during assembly."
            )

    def _configure(self) -> None:
        """LeRobot's connect-time settings (see the module docstring); torque stays off while writing EEPROM."""
        p, i, d = self.pid
        self.bus.disable_torque()
        for m in self.bus.motors:
            self.bus.write("Return_Delay_Time", m, 0)
            self.bus.write("Maximum_Acceleration", m, 254)
            self.bus.write("Acceleration", m, 254)
            phase = self.bus.read("Phase", m)
            if phase & 0x10:  # multi-turn feedback would let positions leave 0..4095
                self.bus.write("Phase", m, phase & ~0x10)
            self.bus.write("Operating_Mode", m, 0)
            self.bus.write("P_Coefficient", m, p)
            self.bus.write("I_Coefficient", m, i)
            self.bus.write("D_Coefficient", m, d)
        self.bus.write("Max_Torque_Limit", "gripper", 500)  # half torque: a closed gripper must not burn out
        self.bus.write("Protection_Current", "gripper", 250)  # half current
        self.bus.write("Overload_Torque", "gripper", 25)  # 25 % torque when overloaded

    def _hold_and_enable(self) -> None:
        """Goal = present before torque on, so enabling torque never makes the arm jump to a stale goal."""
        raw = self.bus.sync_read("Present_Position")
        self.bus.sync_write("Goal_Position", raw)
        self.bus.enable_torque()
        self._torque_on = True
        self._last_action_t = time.monotonic()
        self._holding = True

    def disconnect(self) -> None:
        """Stop the watchdog, torque off on every motor, close the port and the cameras."""
        self._stop_watchdog()
        self._remove_hooks()
        if self.bus.is_open:
            try:
                self.bus.disable_torque()
            except Exception:  # a broken bus: still try the no-reply torque-off, then close
                self.bus.emergency_torque_off()
            finally:
                self._torque_on = False
                self.bus.close()
        for cam in self.cameras.values():
            cam.disconnect()
        self._connected = False

    def __enter__(self) -> "SO101Follower":
        if not self._connected:
            self.connect()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.emergency_stop()
        self.disconnect()

    # -- safety plumbing ----------------------------------------------------------------------------------------

    def emergency_stop(self) -> None:
        """Torque off on every motor now (one unacknowledged SYNC_WRITE, sent twice). Never raises."""
        self.bus.emergency_torque_off()
        self._torque_on = False

    def _on_fault(self, err: BaseException) -> None:
        self._fault = err
        self.emergency_stop()

    def _guarded(self, fn):
        """Run a bus operation; any exception turns torque off and is re-raised."""
        try:
            return fn()
        except BaseException as e:
            self._on_fault(e)
            raise

    def _require_ready(self) -> None:
        if not self._connected:
            raise RobotError(f"{self} is not connected: call connect() (or use it in a `with` block) first")
        if self._fault is not None:
            raise RobotError(
                f"{self} stopped after an error and its torque is off: {self._fault!r}. Fix the cause, then "
                "disconnect() and connect() again."
            ) from self._fault
        if not self._torque_on:
            raise RobotError(f"{self}: torque is off (emergency stop); disconnect() and connect() again")

    def _install_hooks(self) -> None:
        atexit.register(self._atexit)
        if self.handle_sigint and threading.current_thread() is threading.main_thread():
            self._prev_sigint = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._on_sigint)

    def _remove_hooks(self) -> None:
        atexit.unregister(self._atexit)
        if self._prev_sigint is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) == self._on_sigint:
                signal.signal(signal.SIGINT, self._prev_sigint)
            self._prev_sigint = None

    def _atexit(self) -> None:
        if self._connected:
            self.disconnect()

    def _on_sigint(self, signum, frame) -> None:
        self._on_fault(KeyboardInterrupt("Ctrl-C"))
        prev = self._prev_sigint
        if callable(prev):
            prev(signum, frame)
        elif prev != signal.SIG_IGN:
            raise KeyboardInterrupt

    # -- the watchdog -------------------------------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        if self.watchdog_timeout_s is None:
            return
        self._wd_stop.clear()
        self._wd_thread = threading.Thread(target=self._watchdog, name="so101-watchdog", daemon=True)
        self._wd_thread.start()

    def _stop_watchdog(self) -> None:
        self._wd_stop.set()
        if self._wd_thread is not None and self._wd_thread is not threading.current_thread():
            self._wd_thread.join(timeout=2.0)
        self._wd_thread = None

    def _watchdog(self) -> None:
        period = max(0.005, self.watchdog_timeout_s / 5)
        while not self._wd_stop.wait(period):
            with self._ctl:
                if self._holding or not self._torque_on or self._fault is not None:
                    continue
                if time.monotonic() - self._last_action_t < self.watchdog_timeout_s:
                    continue
                try:
                    raw = self.bus.sync_read("Present_Position")
                    self.bus.sync_write("Goal_Position", raw)
                except BaseException as e:  # the bus failed: stop the arm rather than leave it moving
                    self._on_fault(e)
                    return
                self._holding = True
                self.watchdog_trips += 1
                log.warning("no action for %.2f s: holding position", self.watchdog_timeout_s)

    # -- observations and actions -------------------------------------------------------------------------------

    def read_state(self) -> np.ndarray:
        """(6,) float64 joint positions in kit units (degrees, gripper 0..100)."""
        self._require_ready()
        raw = self._guarded(lambda: self.bus.sync_read("Present_Position"))
        return raw_to_units(raw, self.calibration)

    def get_observation(self) -> dict[str, np.ndarray]:
        """{"observation.state": (6,) float32, "observation.images.<camera>": (H, W, 3) uint8 RGB}."""
        obs = {STATE_KEY: self.read_state().astype(np.float32)}
        for name, cam in self.cameras.items():
            obs[IMAGE_PREFIX + name] = cam.read()
        return obs

    def send_action(self, action: np.ndarray | Sequence[float]) -> np.ndarray:
        """Send a (6,) joint target after the safety rules; return the (6,) float32 target actually sent."""
        goal = check_joint_vector(action, "action")  # (6,); raises before anything reaches the bus
        with self._ctl:
            self._require_ready()
            present = self.read_state()  # (6,)
            safe, report = apply_safety(goal, present, self.limits, self.max_step)
            raw = units_to_raw(safe, self.calibration)
            self._guarded(lambda: self.bus.sync_write("Goal_Position", raw))
            self.last_safety = report
            self._last_action_t = time.monotonic()
            self._holding = False
        if report["clamped"] or report["capped"]:
            log.debug("action changed by safety rules: %s", report)
        return safe.astype(np.float32)


@dataclass
class CalibrateConfig:
    """Calibrate an SO-101 follower arm the way LeRobot does, writing LeRobot's calibration JSON."""

    port: str
    """Serial port of the arm (e.g. /dev/ttyACM0) or a virtual arm's pty."""
    id: str = "so101"
    """Arm id: the file is <LeRobot calibration dir>/robots/so101_follower/<id>.json (or give a path ending in
    .json)."""


def calibrate_arm(cfg: CalibrateConfig) -> int:
    """Calibrate interactively (Enter to go on) and print what was saved."""
    robot = SO101Follower(cfg.port, cfg.id, handle_sigint=False)
    print(f"Calibrating the SO-101 on {cfg.port}; torque is off while you move the joints.", flush=True)
    cal = robot.calibrate(CalibrationIO(live_table=False))
    print(f"Saved {robot.calibration_path()}:")
    for name, c in cal.items():
        print(f"  {name:<14} offset {c.homing_offset:>6}  range {c.range_min:>5} .. {c.range_max:<5}")
    return 0


def run_calibrate(argv: Sequence[str] | None = None) -> int:
    """Command line: `smolvla-kit calibrate --port PORT [--id ID]`."""
    import argparse

    from smolvla_kit.flags import add_dataclass_arguments, explicit_values

    ap = argparse.ArgumentParser(prog="smolvla-kit calibrate", description=CalibrateConfig.__doc__)
    add_dataclass_arguments(ap, CalibrateConfig)
    args = ap.parse_args(argv)
    return exit_code(lambda: calibrate_arm(CalibrateConfig(**explicit_values(args, CalibrateConfig))))


__all__ = ["CalibrateConfig", "RobotError", "SO101Follower", "apply_safety", "calibrate_arm", "run_calibrate"]
