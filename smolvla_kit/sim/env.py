"""Gymnasium environments for the simulated SO-101: reach a named cube, or put it in the bin.

Observations and actions use LeRobot's SO-101 keys and units, so a policy trained here reads a real arm's data
unchanged:

* `observation.state`: (6,) float32, arm joints in degrees (zero at mid-range), gripper 0..100 (0 = closed);
* `observation.images.front`, `observation.images.wrist`: (H, W, 3) uint8, H = W = `image_size` (128 default);
* `task`: the instruction, e.g. "put the red cube in the bin";
* action: (6,) absolute joint targets in the same units, applied for one 30 Hz control period.

Several coloured cubes lie on the table and the instruction names one, so the instruction decides which action is
right: a policy that ignores language picks the wrong cube about half the time with the default two cubes.

Success (`info["is_success"]`, which also ends the episode):

* reach: the fingertip (site `gripperframe`) comes within `REACH_DISTANCE` of the named cube's centre;
* pick-and-place: the named cube rests inside the bin's walls, below their top, and the jaws no longer touch it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from smolvla_kit.errors import InputError
from smolvla_kit.sim.scene import CUBE_COLORS, CUBE_HALF_SIZE, SceneConfig, build_model
from smolvla_kit.units import JOINT_LIMITS, JOINT_NAMES, check_joint_vector, joints_to_radians, radians_to_joints
from smolvla_kit.vocabulary import CONTROL_HZ, IMAGE_PREFIX, STATE_KEY

CAMERAS = ("front", "wrist")
REACH_DISTANCE = 0.025  # m, fingertip to cube centre: the cube's half size plus about a centimetre
BIN_INNER_HALF = 0.045  # m, inside half width of the bin
BIN_WALL_HEIGHT = 0.03  # m

# A ready pose above the table (degrees, gripper 0..100): the gripper points down over the workspace.
HOME_POSE = np.array([0.0, -30.0, 30.0, 75.0, 0.0, 10.0])


@dataclass(frozen=True)
class TaskSpec:
    """A task: which scene it needs, how long it may run and how its instructions read."""

    name: str
    num_cubes: int
    with_bin: bool
    max_episode_steps: int
    templates: tuple[str, ...]


TASKS: dict[str, TaskSpec] = {
    "reach": TaskSpec(
        name="reach",
        num_cubes=2,
        with_bin=False,
        max_episode_steps=150,
        templates=("touch the {color} cube",),
    ),
    "pick_place": TaskSpec(
        name="pick_place",
        num_cubes=2,
        with_bin=True,
        max_episode_steps=300,
        templates=("put the {color} cube in the bin",),
    ),
}


@dataclass
class Randomization:
    """Domain randomisation applied at every reset (all off by default; `Randomization.all()` turns all on)."""

    light: bool = False
    """Scale and tilt the lights."""
    colors: bool = False
    """Jitter cube and bin shades (each cube keeps its colour name) ."""
    camera: bool = False
    """Move the front camera by up to `camera_shift` m and `camera_tilt_deg` degrees."""
    table: bool = False
    """Pick one of the table finishes at random."""
    camera_shift: float = 0.015
    camera_tilt_deg: float = 2.0

    @classmethod
    def all(cls) -> "Randomization":
        return cls(light=True, colors=True, camera=True, table=True)


@dataclass
class Layout:
    """Where things are at reset: the sampling region of cubes and the bin (metres, arm base at the origin)."""

    cube_x: tuple[float, float] = (0.15, 0.26)
    cube_y: tuple[float, float] = (-0.14, 0.08)
    min_cube_spacing: float = 0.06
    cube_yaw_deg: float = 20.0
    bin_center: tuple[float, float] = (0.14, 0.20)
    bin_jitter: float = 0.015
    home_jitter_deg: float = 3.0


class SO101Env(gym.Env):
    """The simulated SO-101 on a table with coloured cubes (and a bin for pick-and-place).

    Args:
        task: "reach" or "pick_place".
        image_size: side of the square camera images in pixels.
        cameras: which of `CAMERAS` to render into the observation (a wrong name raises a ValueError); an empty
            tuple gives state-only observations, which run the physics alone at thousands of steps a second.
        num_cubes: cubes on the table (2..4); the task's default when None.
        max_episode_steps: truncation limit; the task's default when None.
        randomization: domain randomisation settings; none by default.
        render_mode: "rgb_array" lets `render()` return the front camera.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        task: str = "pick_place",
        image_size: int = 128,
        cameras: tuple[str, ...] | list[str] = CAMERAS,
        num_cubes: int | None = None,
        max_episode_steps: int | None = None,
        randomization: Randomization | None = None,
        layout: Layout | None = None,
        render_mode: str | None = None,
    ) -> None:
        if task not in TASKS:
            raise InputError(f"Unknown task {task!r}; choose one of {sorted(TASKS)}.")
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise InputError(f"Unknown camera(s) {unknown}; the simulator has {list(CAMERAS)}.")
        if render_mode not in (None, "rgb_array"):
            raise InputError(f"render_mode must be None or 'rgb_array', got {render_mode!r}.")
        self.spec_task = TASKS[task]
        self.task_name = task
        self.num_cubes = num_cubes or self.spec_task.num_cubes
        if not 2 <= self.num_cubes <= len(CUBE_COLORS):
            raise InputError(f"num_cubes must be 2..{len(CUBE_COLORS)} so the instruction matters, got {num_cubes}.")
        self.colors = tuple(CUBE_COLORS)[: self.num_cubes]
        self.image_size = int(image_size)
        self.cameras = tuple(cameras)
        self.max_episode_steps = max_episode_steps or self.spec_task.max_episode_steps
        self.randomization = randomization or Randomization()
        self.layout = layout or Layout()
        self.render_mode = render_mode

        self.model = build_model(SceneConfig(num_cubes=self.num_cubes, with_bin=self.spec_task.with_bin))
        self.data = mujoco.MjData(self.model)
        # One control period is a whole number of physics steps (7 x 1/210 s).
        self.n_substeps = max(1, round(1.0 / (CONTROL_HZ * self.model.opt.timestep)))
        self._renderer: mujoco.Renderer | None = None

        m = self.model
        self._arm_qpos = np.array([m.joint(n).qposadr[0] for n in JOINT_NAMES])
        self._arm_dof = np.array([m.joint(n).dofadr[0] for n in JOINT_NAMES])
        self._cube_qpos = {c: m.joint(f"{c}_cube_joint").qposadr[0] for c in self.colors}
        self._cube_geom = {c: m.geom(f"{c}_cube").id for c in self.colors}
        self._pad_geoms = {m.geom("fixed_jaw_pad").id, m.geom("moving_jaw_pad").id}
        self._tip_site = m.site("gripperframe").id
        self._bin_mocap = m.body("bin").mocapid[0] if self.spec_task.with_bin else -1
        self._nominal = {
            "light_diffuse": m.light_diffuse.copy(),
            "light_dir": m.light_dir.copy(),
            "geom_rgba": m.geom_rgba.copy(),
            "cam_pos": m.cam_pos.copy(),
            "cam_quat": m.cam_quat.copy(),
        }
        self._front_cam = m.camera("front").id
        self._table_geom = m.geom("table").id
        self._table_materials = [m.material(n).id for n in ("table_plain", "table_wood", "table_grid", "table_dark")]

        low = JOINT_LIMITS[:, 0].astype(np.float32)
        high = JOINT_LIMITS[:, 1].astype(np.float32)
        self.action_space = gym.spaces.Box(low=low, high=high, dtype=np.float32)
        # Measured joints can overshoot a limit slightly (soft constraints), so the state space has a margin.
        spaces: dict[str, gym.Space] = {
            STATE_KEY: gym.spaces.Box(low=low - 10.0, high=high + 10.0, dtype=np.float32),
        }
        for cam in self.cameras:
            spaces[IMAGE_PREFIX + cam] = gym.spaces.Box(
                0, 255, (self.image_size, self.image_size, 3), dtype=np.uint8
            )
        spaces["task"] = gym.spaces.Text(max_length=256, charset=string.printable)
        self.observation_space = gym.spaces.Dict(spaces)

        self.target_color: str = self.colors[0]
        self.instruction: str = ""
        self._steps = 0

    # ------------------------------------------------------------------------------------------------------------
    # Gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode. `options` may set `target_color` (a colour on the table) to choose the named cube."""
        super().reset(seed=seed)
        rng = self.np_random
        options = options or {}
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._randomize_appearance(rng)

        home = HOME_POSE + rng.uniform(-1, 1, size=6) * self.layout.home_jitter_deg
        home[5] = HOME_POSE[5]
        q_home = joints_to_radians(home)
        d.qpos[self._arm_qpos] = q_home
        d.ctrl[:6] = q_home

        if self._bin_mocap >= 0:
            bx, by = self.layout.bin_center
            d.mocap_pos[self._bin_mocap] = [
                bx + rng.uniform(-1, 1) * self.layout.bin_jitter,
                by + rng.uniform(-1, 1) * self.layout.bin_jitter,
                0.0,
            ]
        for color, xy in zip(self.colors, self._sample_cube_positions(rng)):
            adr = self._cube_qpos[color]
            yaw = np.radians(rng.uniform(-1, 1) * self.layout.cube_yaw_deg)
            d.qpos[adr : adr + 3] = [xy[0], xy[1], CUBE_HALF_SIZE]
            d.qpos[adr + 3 : adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

        target = options.get("target_color")
        if target is None:
            target = self.colors[int(rng.integers(len(self.colors)))]
        if target not in self.colors:
            raise InputError(f"target_color {target!r} is not on the table; the cubes are {list(self.colors)}.")
        self.target_color = target
        template = self.spec_task.templates[int(rng.integers(len(self.spec_task.templates)))]
        self.instruction = template.format(color=target)

        mujoco.mj_forward(m, d)
        # Let the cubes settle on the table before the first frame.
        mujoco.mj_step(m, d, nstep=self.n_substeps)
        self._steps = 0
        return self._observation(), self._info(success=False, clipped=False)

    def step(self, action: Any):
        """Apply (6,) absolute joint targets for one control period.

        A wrong shape, NaN or infinity raises a ValueError. Targets outside the joint limits are clipped to them
        (`info["action_clipped"]` says when), as the real arm's driver does.
        """
        target = check_joint_vector(action, "action")
        clipped_target = np.clip(target, JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1])
        clipped = bool(np.any(clipped_target != target))
        self.data.ctrl[:6] = joints_to_radians(clipped_target)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self._steps += 1
        success = self.is_success()
        truncated = self._steps >= self.max_episode_steps
        reward = 1.0 if success else 0.0
        return self._observation(), reward, success, truncated, self._info(success=success, clipped=clipped)

    def render(self) -> np.ndarray | None:
        """The front camera at the observation size, when `render_mode` is "rgb_array"."""
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera("front")

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------------------------------------------------
    # State the expert, tests and notebooks read

    def joint_state(self) -> np.ndarray:
        """(6,) joint positions in kit units."""
        return radians_to_joints(self.data.qpos[self._arm_qpos])

    def set_joint_state(self, joints: Any) -> None:
        """Pose the arm kinematically (no physics): positions and servo targets become `joints` (kit units)."""
        q = joints_to_radians(check_joint_vector(joints, "joints"))
        self.data.qpos[self._arm_qpos] = q
        self.data.qvel[self._arm_dof] = 0.0
        self.data.ctrl[:6] = q
        mujoco.mj_forward(self.model, self.data)

    def cube_position(self, color: str | None = None) -> np.ndarray:
        """World position (3,) of a cube's centre (the named cube by default)."""
        adr = self._cube_qpos[color or self.target_color]
        return self.data.qpos[adr : adr + 3].copy()

    def cube_yaw(self, color: str | None = None) -> float:
        adr = self._cube_qpos[color or self.target_color]
        w, x, y, z = self.data.qpos[adr + 3 : adr + 7]
        return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    def bin_position(self) -> np.ndarray:
        if self._bin_mocap < 0:
            raise InputError(f"The {self.task_name} task has no bin.")
        return self.data.mocap_pos[self._bin_mocap].copy()

    def fingertip_position(self) -> np.ndarray:
        return self.data.site_xpos[self._tip_site].copy()

    def cube_in_gripper(self, color: str | None = None) -> bool:
        """True when both jaw pads touch the cube."""
        return len(self._pads_touching(self._cube_geom[color or self.target_color])) == 2

    def _pads_touching(self, geom: int) -> set[int]:
        """The jaw pads in contact with `geom`."""
        touching = set()
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            if c.geom1 == geom and c.geom2 in self._pad_geoms:
                touching.add(c.geom2)
            elif c.geom2 == geom and c.geom1 in self._pad_geoms:
                touching.add(c.geom1)
        return touching

    def is_success(self, color: str | None = None) -> bool:
        """The stated success criterion for the named cube (or `color`)."""
        color = color or self.target_color
        cube = self.cube_position(color)
        if self.task_name == "reach":
            return bool(np.linalg.norm(self.fingertip_position() - cube) < REACH_DISTANCE)
        offset = cube[:2] - self.bin_position()[:2]
        inside = bool(np.all(np.abs(offset) < BIN_INNER_HALF - CUBE_HALF_SIZE * 0.5))
        low = cube[2] < BIN_WALL_HEIGHT
        return inside and low and not self._pads_touching(self._cube_geom[color])

    # ------------------------------------------------------------------------------------------------------------
    # Rendering

    def render_camera(self, camera: str, size: int | None = None) -> np.ndarray:
        """Render one camera to a (size, size, 3) uint8 array (the observation size by default)."""
        if camera not in CAMERAS:
            raise InputError(f"Unknown camera {camera!r}; the simulator has {list(CAMERAS)}.")
        size = size or self.image_size
        renderer = self._get_renderer(size)
        renderer.update_scene(self.data, camera=camera)
        return renderer.render()

    def _get_renderer(self, size: int) -> mujoco.Renderer:
        if self._renderer is None or self._renderer.height != size:
            if self._renderer is not None:
                self._renderer.close()
            self._renderer = mujoco.Renderer(self.model, size, size)
        return self._renderer

    # ------------------------------------------------------------------------------------------------------------
    # Internals

    def _observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {STATE_KEY: self.joint_state().astype(np.float32)}
        for cam in self.cameras:
            obs[IMAGE_PREFIX + cam] = self.render_camera(cam)
        obs["task"] = self.instruction
        return obs

    def _info(self, success: bool, clipped: bool) -> dict[str, Any]:
        return {
            "is_success": success,
            "action_clipped": clipped,
            "task": self.instruction,
            "target_color": self.target_color,
            "step": self._steps,
        }

    def _sample_cube_positions(self, rng: np.random.Generator) -> list[np.ndarray]:
        lay = self.layout
        for _ in range(1000):
            xy = np.stack(
                [rng.uniform(*lay.cube_x, size=self.num_cubes), rng.uniform(*lay.cube_y, size=self.num_cubes)], 1
            )
            gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(self.num_cubes)
            if gaps.min() >= lay.min_cube_spacing:
                return list(xy)
        raise RuntimeError("Could not place the cubes apart from one another; widen Layout.cube_x/cube_y.")

    def _randomize_appearance(self, rng: np.random.Generator) -> None:
        m, nom, r = self.model, self._nominal, self.randomization
        m.light_diffuse[:] = nom["light_diffuse"]
        m.light_dir[:] = nom["light_dir"]
        m.geom_rgba[:] = nom["geom_rgba"]
        m.cam_pos[:] = nom["cam_pos"]
        m.cam_quat[:] = nom["cam_quat"]
        m.geom_matid[self._table_geom] = self._table_materials[0]
        if r.light:
            m.light_diffuse[:] *= rng.uniform(0.6, 1.4)
            m.light_dir[:] += rng.uniform(-0.25, 0.25, size=m.light_dir.shape)
        if r.colors:
            for geom in self._cube_geom.values():
                m.geom_rgba[geom, :3] = np.clip(m.geom_rgba[geom, :3] + rng.uniform(-0.08, 0.08, 3), 0, 1)
        if r.table:
            m.geom_matid[self._table_geom] = self._table_materials[int(rng.integers(len(self._table_materials)))]
        if r.camera:
            cam = self._front_cam
            m.cam_pos[cam] += rng.uniform(-1, 1, 3) * r.camera_shift
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            angle = np.radians(rng.uniform(-1, 1) * r.camera_tilt_deg)
            tilt = np.zeros(4)
            mujoco.mju_axisAngle2Quat(tilt, axis, angle)
            out = np.zeros(4)
            mujoco.mju_mulQuat(out, tilt, m.cam_quat[cam].copy())
            m.cam_quat[cam] = out


def make_env(task: str = "pick_place", **kwargs: Any) -> SO101Env:
    """Build an `SO101Env` directly (the same as `gymnasium.make` with the task's id, minus the wrappers)."""
    return SO101Env(task=task, **kwargs)


__all__ = ["CAMERAS", "CONTROL_HZ", "HOME_POSE", "Layout", "Randomization", "SO101Env", "TASKS", "TaskSpec", "make_env"]
