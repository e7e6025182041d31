"""Physics behind the virtual arm: what the six emulated servos move.

The emulated STS3215s (`virtual_arm.py`) speak the protocol and keep the registers; a backend owns the joints.
Its interface is in kit units (degrees for the arm joints, 0..100 for the gripper, `smolvla_kit.units`):

    set_goal(i, value)     servo i drives towards `value` while its torque is on
    set_torque(i, on)      torque off = the joint no longer tracks goals
    present() -> (6,)      where the joints are
    move_by_hand(i, value) a person moves a joint (calibration sweeps)
    advance(dt)            let `dt` seconds of physics pass

Two implementations:

* :class:`FirstOrderServoBackend`: each joint follows its goal with a first-order lag and a speed limit, stops at
  the joint limits, and stays put with torque off. Fast and deterministic: the protocol tests use it.
* :class:`MujocoBackend`: the kit's MuJoCo SO-101 (`smolvla_kit.sim`), stepped in real time. Goals go to the
  position actuators; torque off zeroes that actuator's gains so the joint hangs free under gravity.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from smolvla_kit.errors import InputError
from smolvla_kit.units import (
    GRIPPER_RANGE_RAD,
    JOINT_LIMITS,
    JOINT_NAMES,
    NUM_JOINTS,
    joints_to_radians,
    radians_to_joints,
)


class ServoBackend(Protocol):
    """What the virtual arm needs from a physics backend (all values in kit units)."""

    def set_goal(self, joint: int, value: float) -> None: ...

    def set_torque(self, joint: int, enabled: bool) -> None: ...

    def present(self) -> np.ndarray: ...

    def velocity(self) -> np.ndarray: ...

    def load(self) -> np.ndarray:
        """(6,) each motor's torque as a signed fraction of its maximum (what Present_Load reports)."""
        ...

    def move_by_hand(self, joint: int, value: float) -> None: ...

    def advance(self, dt: float) -> None: ...

    def close(self) -> None: ...


STALL_TORQUE_NM = 2.94  # STS3215 at 12 V

# STS3215 at 12 V: about 0.222 s per 60 degrees unloaded -> 270 deg/s. The gripper's 0..100 spans 110 degrees
# of jaw travel, so the same motor speed is 270 / 1.1 units/s.
_DEFAULT_MAX_SPEED = np.array([270.0, 270.0, 270.0, 270.0, 270.0, 270.0 / 1.1])


class FirstOrderServoBackend:
    """Each joint: x' = clip((goal - x) / tau, -v_max, v_max) with torque on, x' = 0 with torque off.

    Joints stop at `limits` (the mechanical end stops). Integrated in substeps of at most `max_substep` s.
    """

    def __init__(
        self,
        initial: np.ndarray | None = None,
        tau_s: float = 0.04,
        max_speed: np.ndarray = _DEFAULT_MAX_SPEED,
        limits: np.ndarray = JOINT_LIMITS,
        max_substep: float = 0.002,
    ) -> None:
        self.limits = np.asarray(limits, dtype=np.float64)  # (6, 2)
        # Default pose: every joint at zero, the gripper half open.
        start = np.r_[np.zeros(NUM_JOINTS - 1), 50.0] if initial is None else np.asarray(initial, dtype=np.float64)
        self.x = np.clip(start, self.limits[:, 0], self.limits[:, 1])  # (6,)
        self.v = np.zeros(NUM_JOINTS)  # (6,)
        self.goal = self.x.copy()  # (6,)
        self.torque = np.zeros(NUM_JOINTS, dtype=bool)
        self.tau_s = tau_s
        self.max_speed = np.asarray(max_speed, dtype=np.float64)
        self.max_substep = max_substep

    def set_goal(self, joint: int, value: float) -> None:
        self.goal[joint] = value

    def set_torque(self, joint: int, enabled: bool) -> None:
        self.torque[joint] = enabled

    def present(self) -> np.ndarray:
        return self.x.copy()

    def velocity(self) -> np.ndarray:
        return self.v.copy()

    def load(self) -> np.ndarray:
        return np.zeros(NUM_JOINTS)  # this model has no forces; the MuJoCo backend reports them

    def move_by_hand(self, joint: int, value: float) -> None:
        lo, hi = self.limits[joint]
        self.x[joint] = min(hi, max(lo, value))

    def advance(self, dt: float) -> None:
        remaining = max(0.0, dt)
        while remaining > 1e-12:
            h = min(self.max_substep, remaining)
            v = np.clip((self.goal - self.x) / self.tau_s, -self.max_speed, self.max_speed)
            v = np.where(self.torque, v, 0.0)
            x_new = np.clip(self.x + v * h, self.limits[:, 0], self.limits[:, 1])
            self.v = (x_new - self.x) / h
            self.x = x_new
            remaining -= h

    def close(self) -> None:
        pass


class MujocoBackend:
    """The six servos of a MuJoCo SO-101: joints and position actuators named like the motors.

    Build it from the kit's simulator (`MujocoBackend.from_sim(task=...)`, which calls
    `smolvla_kit.sim.make_env` and uses `env.unwrapped.model` / `env.unwrapped.data`), or from any
    `mujoco.MjModel`/`MjData` pair whose joints and actuators are called shoulder_pan ... gripper.

    Goals are written to the actuators' `ctrl` in radians; torque off sets that actuator's gain and bias to zero,
    so the joint is limp (it falls under gravity, as an unpowered real servo does). Physics advances with
    `mj_step` in the model's own timestep; no rendering happens here.
    """

    def __init__(self, model, data, env=None) -> None:
        import mujoco

        self._mj = mujoco
        self.model, self.data, self.env = model, data, env
        self.qpos_adr = np.zeros(NUM_JOINTS, dtype=np.int64)
        self.dof_adr = np.zeros(NUM_JOINTS, dtype=np.int64)
        self.act_id = np.zeros(NUM_JOINTS, dtype=np.int64)
        for i, name in enumerate(JOINT_NAMES):
            jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            aid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, name)
            if jid < 0 or aid < 0:
                raise InputError(
                    f"MuJoCo model has no {'joint' if jid < 0 else 'actuator'} named '{name}': the virtual arm needs "
                    f"joints and position actuators named {', '.join(JOINT_NAMES)}"
                )
            self.qpos_adr[i] = model.jnt_qposadr[jid]
            self.dof_adr[i] = model.jnt_dofadr[jid]
            self.act_id[i] = aid
        # Position actuator: force = gain * ctrl + bias1 * qpos + bias2 * qvel; keep them to restore torque.
        self._gain = model.actuator_gainprm[self.act_id, 0].copy()
        self._bias = model.actuator_biasprm[self.act_id, :3].copy()
        self.torque = np.ones(NUM_JOINTS, dtype=bool)
        self._acc = 0.0
        # Start with each actuator holding where its joint is.
        self.data.ctrl[self.act_id] = self.data.qpos[self.qpos_adr]
        for i in range(NUM_JOINTS):
            self.set_torque(i, False)

    @classmethod
    def from_sim(cls, task: str = "reach", seed: int = 0, **make_env_kwargs) -> "MujocoBackend":
        """Make the kit's simulator (`smolvla_kit.sim.make_env(task=..., **make_env_kwargs)`) and wrap it."""
        from smolvla_kit.sim import make_env

        env = make_env(task=task, **make_env_kwargs)
        env.reset(seed=seed)
        raw = env.unwrapped
        model = getattr(raw, "model", None)
        data = getattr(raw, "data", None)
        if model is None or data is None:
            raise AttributeError(
                "MujocoBackend needs the simulator env to expose its mujoco.MjModel and MjData as "
                "env.unwrapped.model and env.unwrapped.data"
            )
        return cls(model, data, env=env)

    @classmethod
    def from_xml(cls, path: str) -> "MujocoBackend":
        """Load any MJCF whose joints/actuators are named like the SO-101 motors."""
        import mujoco

        model = mujoco.MjModel.from_xml_path(str(path))
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        return cls(model, data)

    def set_goal(self, joint: int, value: float) -> None:
        q = np.zeros(NUM_JOINTS)
        q[joint] = value
        self.data.ctrl[self.act_id[joint]] = joints_to_radians(q)[joint]

    def set_torque(self, joint: int, enabled: bool) -> None:
        aid = self.act_id[joint]
        self.torque[joint] = enabled
        self.model.actuator_gainprm[aid, 0] = self._gain[joint] if enabled else 0.0
        self.model.actuator_biasprm[aid, :3] = self._bias[joint] if enabled else 0.0

    def present(self) -> np.ndarray:
        return radians_to_joints(self.data.qpos[self.qpos_adr].copy())

    def velocity(self) -> np.ndarray:
        qd = self.data.qvel[self.dof_adr].copy()
        out = np.degrees(qd)
        lo, hi = GRIPPER_RANGE_RAD
        out[5] = qd[5] / (hi - lo) * 100.0  # rad/s -> gripper units/s
        return out

    def load(self) -> np.ndarray:
        # The actuator's force over its force range, which the model sets to the servo's stall torque.
        aid = self.act_id
        limit = np.where(self.model.actuator_forcelimited[aid].astype(bool),
                         np.abs(self.model.actuator_forcerange[aid, 1]), STALL_TORQUE_NM)
        return np.clip(self.data.actuator_force[aid] / limit, -1.0, 1.0)

    def move_by_hand(self, joint: int, value: float) -> None:
        q = np.zeros(NUM_JOINTS)
        q[joint] = value
        self.data.qpos[self.qpos_adr[joint]] = joints_to_radians(q)[joint]
        self.data.qvel[self.dof_adr[joint]] = 0.0
        self._mj.mj_forward(self.model, self.data)

    def advance(self, dt: float) -> None:
        self._acc += max(0.0, dt)
        h = self.model.opt.timestep
        n = int(self._acc / h)
        if n:
            self._mj.mj_step(self.model, self.data, nstep=n)
            self._acc -= n * h

    # -- the simulator behind the arm (only when built with `from_sim`) -------------------------------------------

    def _require_env(self, what: str):
        if self.env is None:
            raise RuntimeError(f"{what} needs the kit's simulator: build the backend with MujocoBackend.from_sim()")
        return self.env.unwrapped

    def render_camera(self, camera: str, size: int | None = None) -> np.ndarray:
        """(size, size, 3) uint8 RGB from the simulator's camera `camera` ("front" or "wrist")."""
        return self._require_env("rendering a camera").render_camera(camera, size)

    def reset_scene(self, seed: int | None = None, options: dict | None = None) -> str:
        """Start a new simulator episode (new cube layout, arm at the ready pose); returns the instruction.

        Joints whose torque is on hold the ready pose (the reset sets their actuator targets there); limp joints
        stay limp.
        """
        env = self._require_env("resetting the scene")
        env.reset(seed=seed, options=options)
        self._acc = 0.0
        return env.instruction

    def is_success(self) -> bool:
        """The simulator's success criterion for the current instruction."""
        return bool(self._require_env("checking success").is_success())

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


__all__ = ["FirstOrderServoBackend", "MujocoBackend", "ServoBackend"]
