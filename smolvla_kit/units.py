"""Joint units shared by the simulator and the real arm.

LeRobot records every SO-101 dataset in these units, so the kit uses them everywhere a joint value crosses an
interface (observations, actions, datasets, the serial driver):

* the five arm joints in **degrees**, zero at the middle of the calibrated range;
* the gripper as **0..100** (0 = closed, 100 = fully open).

The MuJoCo model (`so101_new_calib`) measures joints in radians with zero at mid-range too, so an arm joint is a
plain degree/radian conversion; the gripper maps 0..100 linearly onto the model's jaw range (-10 deg .. 100 deg).
"""

from __future__ import annotations

import numpy as np

from smolvla_kit.errors import InputError

JOINT_NAMES: tuple[str, ...] = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
)
"""Motor order on the bus (IDs 1..6) and in every state/action vector."""

NUM_JOINTS = len(JOINT_NAMES)

# The jaw's hinge range in `so101_new_calib.xml` (radians); lower = closed. A test checks it against the model.
GRIPPER_RANGE_RAD: tuple[float, float] = (-0.17453297762778586, 1.7453291995659765)

# Joint limits of the model, in kit units (degrees, gripper 0..100). A test checks them against the model.
JOINT_LIMITS: np.ndarray = np.array(
    [
        [-110.0, 110.0],  # shoulder_pan
        [-100.0, 100.0],  # shoulder_lift
        [-96.83, 96.83],  # elbow_flex (1.69 rad)
        [-95.0, 95.0],  # wrist_flex
        [-157.21, 162.79],  # wrist_roll
        [0.0, 100.0],  # gripper
    ],
    dtype=np.float64,
)


def radians_to_joints(q: np.ndarray) -> np.ndarray:
    """Model joint angles (..., 6) in radians -> kit units (degrees for the arm, 0..100 for the gripper)."""
    q = np.asarray(q, dtype=np.float64)
    out = np.degrees(q)
    lo, hi = GRIPPER_RANGE_RAD
    out[..., 5] = (q[..., 5] - lo) / (hi - lo) * 100.0
    return out


def joints_to_radians(x: np.ndarray) -> np.ndarray:
    """Kit units (..., 6) -> model joint angles in radians; the inverse of :func:`radians_to_joints`."""
    x = np.asarray(x, dtype=np.float64)
    out = np.radians(x)
    lo, hi = GRIPPER_RANGE_RAD
    out[..., 5] = lo + x[..., 5] / 100.0 * (hi - lo)
    return out


def gripper_percent_to_radians(percent: float) -> float:
    """0..100 gripper opening -> jaw hinge angle in radians."""
    lo, hi = GRIPPER_RANGE_RAD
    return lo + percent / 100.0 * (hi - lo)


def check_joint_vector(x: object, name: str = "action") -> np.ndarray:
    """Return `x` as a float64 (6,) array, or raise a ValueError that says what was wrong.

    Rejects the wrong shape and any NaN or infinity: such a vector must never reach a motor or the simulator.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape != (NUM_JOINTS,):
        raise InputError(
            f"{name} must have shape ({NUM_JOINTS},) in the order {', '.join(JOINT_NAMES)} "
            f"(degrees, gripper 0..100); got shape {arr.shape}."
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        names = [JOINT_NAMES[i] for i in np.flatnonzero(bad)]
        raise InputError(f"{name} contains NaN or infinity for {', '.join(names)}: {arr.tolist()}.")
    return arr


__all__ = [
    "JOINT_NAMES",
    "NUM_JOINTS",
    "GRIPPER_RANGE_RAD",
    "JOINT_LIMITS",
    "radians_to_joints",
    "joints_to_radians",
    "gripper_percent_to_radians",
    "check_joint_vector",
]
