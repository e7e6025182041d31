"""A scripted expert that solves the simulator's tasks from privileged state, to record demonstrations.

It plans in Cartesian space (fingertip position, gripper pointing straight down, jaws square to the cube) and
turns each waypoint into joint targets with damped least-squares inverse kinematics on `mj_jacSite`. It is closed
loop: every step it re-reads the scene, so a dropped cube sends it back to grasp again. With `noise_deg > 0` it
perturbs the commands it executes in short bursts while still labelling each frame with the clean command, so
recorded demonstrations show recoveries (DART-style noise injection).

    env = SO101Env(task="pick_place")
    expert = ScriptedExpert(env, seed=0)
    obs, info = env.reset(seed=0)
    while True:
        step = expert.act()
        obs, reward, done, truncated, info = env.step(step.command)  # record step.label as the action
        if done or truncated:
            break
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from smolvla_kit.sim.env import BIN_WALL_HEIGHT, CONTROL_HZ, SO101Env
from smolvla_kit.sim.scene import CUBE_HALF_SIZE, PAD_HALF_THICKNESS
from smolvla_kit.units import JOINT_LIMITS, joints_to_radians, radians_to_joints

GRIPPER_OPEN = 40.0  # 0..100: about 6 cm between the pads, wide enough for a 2.5 cm cube with room to spare
GRIPPER_CLOSED = 0.0
DOWN = np.array([0.0, 0.0, -1.0])
REACH_HOVER = np.array([0.0, 0.0, 0.07])  # fingertip above the cube before touching it
GRASP_HOVER = np.array([0.0, 0.0, 0.05])  # point between the jaws above the cube before descending


@dataclass
class ExpertAction:
    """One control step of the expert: `label` is the clean command to record, `command` the one to execute."""

    label: np.ndarray
    command: np.ndarray
    phase: str


class DampedLeastSquaresIK:
    """Inverse kinematics for the fingertip site: position plus a top-down orientation with a chosen jaw yaw.

    Works on a private `MjData`, so solving never disturbs the simulation.
    """

    def __init__(self, model: mujoco.MjModel, site: str = "gripperframe", damping: float = 0.02) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = model.site(site).id
        self.damping = damping
        self.dofs = np.arange(5)  # the arm joints; the jaw does not move the fingertip frame
        self.lo = model.jnt_range[:5, 0] + 1e-3
        self.hi = model.jnt_range[:5, 1] - 1e-3
        # The direction in which the jaws close, in the site frame, read off the model rather than assumed.
        d = self.data
        mujoco.mj_forward(model, d)
        gap = d.geom("fixed_jaw_pad").xpos - d.geom("moving_jaw_pad").xpos
        rot = d.site_xmat[self.site].reshape(3, 3)
        close = rot.T @ gap
        close[0] = 0.0  # keep it orthogonal to the approach axis (site +x)
        self.close_axis_site = close / np.linalg.norm(close)
        # The fingertip site sits on the fixed finger, not between the jaws: a held cube's centre lies off the fixed
        # pad towards the moving jaw. This is that point, in the site frame.
        fixed_pad = rot.T @ (d.geom("fixed_jaw_pad").xpos - d.site_xpos[self.site])
        self.hold_point_site = fixed_pad - self.close_axis_site * (PAD_HALF_THICKNESS + CUBE_HALF_SIZE)

    def target_rotation(self, close_dir_world: np.ndarray) -> np.ndarray:
        """Site orientation with +x pointing down and the jaws closing along `close_dir_world` (horizontal)."""
        c = close_dir_world / np.linalg.norm(close_dir_world)
        world = np.stack([DOWN, c, np.cross(DOWN, c)], axis=1)
        ex = np.array([1.0, 0.0, 0.0])
        site = np.stack([ex, self.close_axis_site, np.cross(ex, self.close_axis_site)], axis=1)
        return world @ site.T

    def solve(
        self,
        q_start: np.ndarray,
        position: np.ndarray,
        rotation: np.ndarray,
        iterations: int = 30,
        rot_weight: float = 0.08,
    ) -> np.ndarray:
        """Arm joint angles (5,) in radians that put the site at `position` with `rotation`, from `q_start`."""
        m, d = self.model, self.data
        q = np.clip(np.array(q_start[:5], dtype=np.float64), self.lo, self.hi)
        jp = np.zeros((3, m.nv))
        jr = np.zeros((3, m.nv))
        for _ in range(iterations):
            d.qpos[:5] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            err_p = position - d.site_xpos[self.site]
            r = d.site_xmat[self.site].reshape(3, 3)
            err_r = 0.5 * sum(np.cross(r[:, i], rotation[:, i]) for i in range(3))
            if np.linalg.norm(err_p) < 2e-4 and np.linalg.norm(err_r) < 2e-3:
                break
            mujoco.mj_jacSite(m, d, jp, jr, self.site)
            jac = np.vstack([jp[:, self.dofs], rot_weight * jr[:, self.dofs]])  # (6, 5)
            err = np.concatenate([err_p, rot_weight * err_r])  # (6,)
            dq = self._dls(jac, err)
            # A joint pinned at a limit drops out, so the others take up the position error (at the cost of
            # orientation) instead of the solver pushing into the stop forever.
            pinned = ((q <= self.lo) & (dq < 0)) | ((q >= self.hi) & (dq > 0))
            if pinned.any():
                dq = np.zeros(5)
                dq[~pinned] = self._dls(jac[:, ~pinned], err)
            q = np.clip(q + np.clip(dq, -0.3, 0.3), self.lo, self.hi)
        return q

    def _dls(self, jac: np.ndarray, err: np.ndarray) -> np.ndarray:
        """Damped least-squares step: J^T (J J^T + lambda^2 I)^-1 e."""
        return jac.T @ np.linalg.solve(jac @ jac.T + self.damping**2 * np.eye(jac.shape[0]), err)

    def site_target_for_hold_point(self, point: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """Where the fingertip site must go for the point between the jaws to be at `point`."""
        return point - rotation @ self.hold_point_site


class ScriptedExpert:
    """Solves reach and pick-and-place on `SO101Env` from the simulator's state.

    Args:
        env: the environment to act in (its unwrapped `SO101Env`).
        speed: fingertip speed along the plan, m/s.
        noise_deg: standard deviation of the perturbations added to executed arm targets (0 = none).
        noise_prob: chance per step that a perturbation burst starts.
        seed: seeds the noise.
    """

    def __init__(
        self,
        env: SO101Env,
        speed: float = 0.25,
        noise_deg: float = 0.0,
        noise_prob: float = 0.03,
        seed: int | None = None,
    ) -> None:
        self.env = env.unwrapped if hasattr(env, "unwrapped") else env
        self.ik = DampedLeastSquaresIK(self.env.model)
        self.step_size = speed / CONTROL_HZ
        self.noise_deg = noise_deg
        self.noise_prob = noise_prob
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """Forget the plan; call after every `env.reset`."""
        self.phase = "approach"
        self._phase_steps = 0
        self._reference: np.ndarray | None = None
        self._q_ik: np.ndarray | None = None
        self._close_dir: np.ndarray | None = None
        self._noise = np.zeros(6)
        self._noise_left = 0

    # ------------------------------------------------------------------------------------------------------------

    def act(self) -> ExpertAction:
        """The next command. Reads the environment's current state; does not step it."""
        env = self.env
        if self._reference is None:
            self._reference = self._tool_position()
            self._q_ik = joints_to_radians(env.joint_state())[:5]
        goal, gripper = self._plan()
        # Move the reference point towards the goal at the set speed, then solve IK for it.
        delta = goal - self._reference
        dist = np.linalg.norm(delta)
        if dist > self.step_size:
            self._reference = self._reference + delta * (self.step_size / dist)
        else:
            self._reference = goal.copy()
        rotation = self.ik.target_rotation(self._jaw_direction())
        site_target = self._reference
        if self._uses_hold_point:
            site_target = self.ik.site_target_for_hold_point(self._reference, rotation)
        self._q_ik = self.ik.solve(self._q_ik, site_target, rotation)
        label = radians_to_joints(np.append(self._q_ik, 0.0))
        label[5] = gripper
        label = np.clip(label, JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1])
        self._phase_steps += 1
        return ExpertAction(label=label, command=self._perturb(label), phase=self.phase)

    # ------------------------------------------------------------------------------------------------------------

    @property
    def _uses_hold_point(self) -> bool:
        """Pick-and-place steers the point between the jaws; reach steers the fingertip itself."""
        return self.env.task_name != "reach"

    def _tool_position(self) -> np.ndarray:
        """Where the steered point (fingertip or hold point) is now."""
        d = self.env.data
        tip = d.site_xpos[self.ik.site]
        if not self._uses_hold_point:
            return tip.copy()
        return tip + d.site_xmat[self.ik.site].reshape(3, 3) @ self.ik.hold_point_site

    def _reached(self, goal: np.ndarray, tol: float = 0.008) -> bool:
        return bool(np.allclose(self._reference, goal) and np.linalg.norm(self._tool_position() - goal) < tol)

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0

    def _plan(self) -> tuple[np.ndarray, float]:
        """Goal fingertip position and gripper opening for the current phase; advances the phase."""
        env = self.env
        cube = env.cube_position()
        if env.task_name == "reach":
            above_cube = cube + REACH_HOVER
            touch = cube + np.array([0.0, 0.0, CUBE_HALF_SIZE + 0.004])
            if self.phase == "approach" and self._reached(above_cube, tol=0.015):
                self._set_phase("touch")
            return (above_cube if self.phase == "approach" else touch), GRIPPER_CLOSED

        above_cube = cube + GRASP_HOVER
        grasp = cube + np.array([0.0, 0.0, 0.002])
        lift_z = 0.09
        if self.phase == "approach":
            if self._reached(above_cube, tol=0.012):
                self._close_dir = None
                self._set_phase("descend")
            return above_cube, GRIPPER_OPEN
        if self.phase == "descend":
            if self._reached(grasp, tol=0.006) or self._phase_steps > 60:
                self._set_phase("close")
            return grasp, GRIPPER_OPEN
        if self.phase == "close":
            if self._phase_steps >= 10:
                self._set_phase("lift")
            return self._reference.copy(), GRIPPER_CLOSED
        if self.phase == "lift":
            lifted = np.array([self._reference[0], self._reference[1], lift_z])
            if not env.cube_in_gripper() and self._phase_steps > 5:
                return self._retry()
            if self._reached(lifted, tol=0.015):
                self._set_phase("carry")
            return lifted, GRIPPER_CLOSED
        bin_pos = env.bin_position()
        above_bin = np.array([bin_pos[0], bin_pos[1], lift_z])
        if self.phase == "carry":
            if not env.cube_in_gripper():
                return self._retry()
            if self._reached(above_bin, tol=0.015):
                self._set_phase("lower")
            return above_bin, GRIPPER_CLOSED
        drop = np.array([bin_pos[0], bin_pos[1], BIN_WALL_HEIGHT + CUBE_HALF_SIZE + 0.015])
        if self.phase == "lower":
            if self._reached(drop, tol=0.012):
                self._set_phase("release")
            return drop, GRIPPER_CLOSED
        if self.phase == "release":
            if self._phase_steps >= 8:
                self._set_phase("retreat")
            return drop, GRIPPER_OPEN
        # retreat: rise and wait (the episode ends when the cube settles in the bin)
        return np.array([bin_pos[0], bin_pos[1], lift_z + 0.03]), GRIPPER_OPEN

    def _retry(self) -> tuple[np.ndarray, float]:
        self._set_phase("approach")
        cube = self.env.cube_position()
        return cube + GRASP_HOVER, GRIPPER_OPEN

    def _jaw_direction(self) -> np.ndarray:
        """Horizontal direction for the jaws to close along, frozen from the descent on (no spinning while held).

        With the wrist roll at zero the jaws close towards the base (fixed jaw inside, moving jaw outside). Of the
        cube's four face directions the expert takes the one nearest to that, so the wrist turns at most 45
        degrees and the roll varies smoothly with the cube's yaw - easy for a policy to imitate.
        """
        if self._close_dir is not None and self.phase != "approach":
            return self._close_dir
        inward = -np.array([self._reference[0], self._reference[1], 0.0])
        inward /= np.linalg.norm(inward)
        yaw = self.env.cube_yaw()
        faces = [np.array([np.cos(yaw + k * np.pi / 2), np.sin(yaw + k * np.pi / 2), 0.0]) for k in range(4)]
        self._close_dir = max(faces, key=lambda c: float(c @ inward))
        return self._close_dir

    def _perturb(self, label: np.ndarray) -> np.ndarray:
        if self.noise_deg <= 0.0:
            return label
        if self._noise_left == 0 and self.rng.random() < self.noise_prob:
            self._noise_left = int(self.rng.integers(4, 12))
            self._noise = np.append(self.rng.normal(0.0, self.noise_deg, 5), 0.0)
        if self._noise_left > 0:
            self._noise_left -= 1
            return np.clip(label + self._noise, JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1])
        return label


__all__ = ["DampedLeastSquaresIK", "ExpertAction", "GRIPPER_CLOSED", "GRIPPER_OPEN", "ScriptedExpert"]
