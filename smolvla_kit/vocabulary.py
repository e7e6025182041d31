"""The names every part of the kit shares, defined once: observation and action keys, camera keys, the control rate.

The simulator, the datasets, the policy, the robot and the policy server all speak these (they are LeRobot's), so
this module imports nothing of the kit's but its error types, and everything may import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from smolvla_kit.errors import CameraMismatch

STATE_KEY = "observation.state"  # (state_dim,) joint positions: 5 arm joints in degrees, the gripper 0..100
ACTION_KEY = "action"  # (action_dim,) absolute joint targets in the same units; (T, action_dim) for a chunk
IMAGE_PREFIX = "observation.images."  # + a camera's name: (H, W, 3) uint8 or (3, H, W) float in [0, 1]
CONTROL_HZ = 30  # one action per control period: the simulator's step, the datasets' fps, the robot loop's rate


def camera_key(name: str) -> str:
    """A camera's observation key: "front" -> "observation.images.front"; a key that starts with "observation." is
    returned as it is."""
    return name if name.startswith("observation.") else IMAGE_PREFIX + name


def camera_name(key: str) -> str:
    """The inverse of `camera_key`: "observation.images.front" -> "front"."""
    return key[len(IMAGE_PREFIX):] if key.startswith(IMAGE_PREFIX) else key


def match_cameras(expected: Sequence[str], given: Iterable[str], *, given_by: str, expected_by: str,
                  hint: str = "", error: type[CameraMismatch] = CameraMismatch) -> None:
    """Raise CameraMismatch unless `given` holds exactly the camera keys `expected` (in any order), naming both
    sides, the missing and the unexpected keys, and `hint` (what to do). `error` may name a subclass that says
    more of where it happened (a dataset's camera map raises one that is also a DatasetError)."""
    given = list(given)
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing or unexpected:
        raise error(
            f"camera keys do not match: {given_by} {given}, {expected_by} {list(expected)} (missing {missing}, "
            f"unexpected {unexpected}). {hint}".rstrip()
        )


__all__ = [
    "ACTION_KEY", "CONTROL_HZ", "CameraMismatch", "IMAGE_PREFIX", "STATE_KEY", "camera_key", "camera_name",
    "match_cameras",
]
