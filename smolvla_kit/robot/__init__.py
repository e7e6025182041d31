"""The real SO-101: Feetech bus driver, LeRobot-compatible calibration, safety, cameras, and a virtual arm.

* `feetech`      - the STS3215 serial protocol (packets, checksum, control table) and a pyserial bus driver.
* `calibration`  - LeRobot's calibration JSON, tick <-> degree conversion, the interactive procedure.
* `so101`        - :class:`SO101Follower`: observations/actions in the simulator's units, with safety rules.
* `cameras`      - :class:`OpenCVCamera`: webcam frames at the simulator's image size (needs OpenCV).
* `virtual_arm`  - :class:`VirtualSO101`: six emulated servos on a pseudo-terminal, for tests and rehearsal.
* `backends`     - the physics behind the virtual arm (a first-order servo model, or the MuJoCo simulator).
"""

from smolvla_kit.robot.backends import FirstOrderServoBackend, MujocoBackend
from smolvla_kit.robot.calibration import (
    CalibrationError,
    CalibrationIO,
    MotorCalibration,
    default_calibration_path,
    load_calibration,
    raw_to_units,
    run_calibration,
    save_calibration,
    units_to_raw,
)
from smolvla_kit.robot.cameras import CameraConfig, CameraError, OpenCVCamera
from smolvla_kit.robot.feetech import (
    CommunicationError,
    FeetechBus,
    FeetechError,
    MotorAlarmError,
    PacketError,
    PortError,
)
from smolvla_kit.robot.so101 import RobotError, SO101Follower
from smolvla_kit.robot.virtual_arm import FaultConfig, VirtualSO101, run_virtual_arm

__all__ = [
    "CalibrationError",
    "CalibrationIO",
    "CameraConfig",
    "CameraError",
    "CommunicationError",
    "FaultConfig",
    "FeetechBus",
    "FeetechError",
    "FirstOrderServoBackend",
    "MotorAlarmError",
    "MotorCalibration",
    "MujocoBackend",
    "OpenCVCamera",
    "PacketError",
    "PortError",
    "RobotError",
    "SO101Follower",
    "VirtualSO101",
    "default_calibration_path",
    "load_calibration",
    "raw_to_units",
    "run_calibration",
    "run_virtual_arm",
    "save_calibration",
    "units_to_raw",
]
