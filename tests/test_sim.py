"""The simulated SO-101: model, units, cameras, tasks, the scripted expert and bad actions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from smolvla_kit.sim import ENV_IDS, SO101Env, ScriptedExpert
from smolvla_kit.sim.scene import SceneConfig, build_model, grid_merged_mesh, read_binary_stl, upstream_arm_xml
from smolvla_kit.units import (
    GRIPPER_RANGE_RAD,
    JOINT_LIMITS,
    JOINT_NAMES,
    joints_to_radians,
    radians_to_joints,
)


@pytest.fixture(scope="module")
def model() -> mujoco.MjModel:
    return build_model(SceneConfig(num_cubes=4))


def test_model_loads_and_steps(model):
    data = mujoco.MjData(model)
    assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    assert round(1 / (30 * model.opt.timestep)) == 7, "seven physics steps per 30 Hz control period"
    assert model.vis.quality.offsamples == 0 and model.vis.quality.shadowsize == 0
    mujoco.mj_step(model, data, nstep=200)
    assert np.all(np.isfinite(data.qpos))
    for name in (*JOINT_NAMES, "red_cube_joint", "yellow_cube_joint"):
        assert model.joint(name) is not None
    assert {model.camera(i).name for i in range(model.ncam)} == {"front", "wrist"}


def test_visual_meshes_are_decimated(model):
    """Software rendering pays per triangle: the visual geoms draw far fewer than the upstream meshes have."""
    meshdir = upstream_arm_xml().parent / "assets"
    upstream = sum(len(read_binary_stl(p)[1]) for p in meshdir.glob("*.stl"))
    visual = {model.geom_dataid[g] for g in range(model.ngeom)
              if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH and model.geom_group[g] == 2}
    assert all(model.mesh(int(m)).name.endswith("_visual") for m in visual)
    assert sum(model.mesh_facenum[int(m)] for m in visual) < 0.1 * upstream


def test_visual_meshes_leave_the_physics_alone():
    """The visual copies change what the cameras draw, not one bit of the motion."""
    trajectories = []
    for grid in (0.0, 0.002):
        m = build_model(SceneConfig(visual_grid_m=grid))
        d = mujoco.MjData(m)
        mujoco.mj_resetDataKeyframe(m, d, 0) if m.nkey else mujoco.mj_resetData(m, d)
        qpos = []
        for t in range(150):  # shoulder and elbow swing down towards the table and back
            d.ctrl[:6] = joints_to_radians(np.array([20 * np.sin(t / 20), 40 * np.sin(t / 30), 60 * np.sin(t / 25),
                                                     30, 0, 50]))
            mujoco.mj_step(m, d, nstep=7)
            qpos.append(d.qpos.copy())
        trajectories.append(np.array(qpos))
    np.testing.assert_array_equal(trajectories[0], trajectories[1])


def test_grid_merged_mesh_merges_and_drops_collapsed_triangles():
    # A unit square in 4 x 4 cells (32 triangles) merged on a 0.5 grid: 3 x 3 vertices, 8 triangles.
    xs, ys = np.meshgrid(np.linspace(0, 1, 5), np.linspace(0, 1, 5))
    verts = np.stack([xs.ravel(), ys.ravel(), np.zeros(25)], 1)
    quads = [(5 * r + c, 5 * r + c + 1, 5 * (r + 1) + c + 1, 5 * (r + 1) + c) for r in range(4) for c in range(4)]
    faces = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    merged, tris = grid_merged_mesh(verts, faces, 0.49)
    assert len(merged) == 9 and len(tris) == 8
    assert np.all((tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2]))
    assert len(np.unique(np.sort(tris, axis=1), axis=0)) == len(tris)
    same, kept = grid_merged_mesh(verts, faces, 0.01)  # a cell finer than the mesh changes nothing
    assert len(same) == 25 and len(kept) == 32


def test_unit_constants_match_the_model(model):
    lo, hi = model.joint("gripper").range
    assert (lo, hi) == pytest.approx(GRIPPER_RANGE_RAD)
    for i, name in enumerate(JOINT_NAMES[:5]):
        assert np.degrees(model.joint(name).range) == pytest.approx(JOINT_LIMITS[i], abs=0.01)


def test_units_round_trip():
    rng = np.random.default_rng(0)
    joints = rng.uniform(JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1], size=(100, 6))
    assert radians_to_joints(joints_to_radians(joints)) == pytest.approx(joints, abs=1e-9)
    # Known points: zero degrees is zero radians; gripper 0 is closed, 100 fully open.
    q = joints_to_radians(np.array([0, 90, -45, 0, 0, 0.0]))
    assert q[:5] == pytest.approx([0, np.pi / 2, -np.pi / 4, 0, 0])
    assert q[5] == pytest.approx(GRIPPER_RANGE_RAD[0])
    assert joints_to_radians(np.array([0, 0, 0, 0, 0, 100.0]))[5] == pytest.approx(GRIPPER_RANGE_RAD[1])


def test_observation_keys_units_and_spaces():
    env = SO101Env(task="pick_place", image_size=64)
    obs, info = env.reset(seed=1)
    assert set(obs) == {"observation.state", "observation.images.front", "observation.images.wrist", "task"}
    assert obs["observation.state"].shape == (6,) and obs["observation.state"].dtype == np.float32
    assert obs["observation.images.front"].shape == (64, 64, 3) and obs["observation.images.front"].dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert obs["task"] == f"put the {info['target_color']} cube in the bin"
    # The state is in degrees / 0..100: the home pose, not radians.
    assert np.abs(obs["observation.state"][:5]).max() > 10
    env.close()


def test_registered_ids_make_environments():
    for task, env_id in ENV_IDS.items():
        env = gym.make(env_id, image_size=32)
        obs, _ = env.reset(seed=0)
        assert env.unwrapped.task_name == task
        assert obs["observation.images.wrist"].shape == (32, 32, 3)
        env.close()


def test_cameras_render_headless_with_no_display(tmp_path):
    """In a fresh process with no DISPLAY and no MUJOCO_GL, the kit picks EGL itself and both cameras render."""
    script = textwrap.dedent(
        """
        import os, numpy as np
        import mujoco  # imported before the kit on purpose: the kit must still pick a headless backend
        from smolvla_kit.sim import SO101Env
        env = SO101Env(task="pick_place", image_size=96)
        obs, _ = env.reset(seed=3)
        front, wrist = obs["observation.images.front"], obs["observation.images.wrist"]
        assert front.shape == wrist.shape == (96, 96, 3)
        assert front.std() > 10 and wrist.std() > 10, "blank image"
        assert np.abs(front.astype(int) - wrist.astype(int)).mean() > 10, "the two cameras show the same view"
        print("MUJOCO_GL", os.environ["MUJOCO_GL"])
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if sys.platform.startswith("linux"):
        assert "MUJOCO_GL egl" in result.stdout


def test_seeded_resets_are_reproducible_and_randomised():
    env = SO101Env(task="pick_place", image_size=32, cameras=("front",))
    a, _ = env.reset(seed=5)
    cubes_a = {c: env.cube_position(c) for c in env.colors}
    b, _ = env.reset(seed=5)
    assert np.array_equal(a["observation.images.front"], b["observation.images.front"])
    assert all(np.allclose(cubes_a[c], env.cube_position(c)) for c in env.colors)
    env.reset(seed=6)
    assert not all(np.allclose(cubes_a[c], env.cube_position(c)) for c in env.colors)


def test_domain_randomisation_changes_the_look_not_the_task():
    from smolvla_kit.sim import Randomization

    plain = SO101Env(task="reach", image_size=48, cameras=("front",))
    varied = SO101Env(task="reach", image_size=48, cameras=("front",), randomization=Randomization.all())
    images = []
    for seed in range(3):
        p, pi = plain.reset(seed=seed)
        v, vi = varied.reset(seed=seed)
        assert pi["target_color"] == vi["target_color"] and p["task"] == v["task"]
        images.append(np.abs(p["observation.images.front"].astype(int) - v["observation.images.front"]).mean())
    assert min(images) > 1.0


@pytest.mark.parametrize("task", ["reach", "pick_place"])
def test_expert_success_rate(task):
    """The scripted expert solves each task on at least 95 % of 20 seeds (with noise injection on)."""
    env = SO101Env(task=task, cameras=())
    expert = ScriptedExpert(env, noise_deg=2.0, seed=0)
    successes = 0
    for seed in range(20):
        env.reset(seed=1000 + seed)
        expert.reset()
        while True:
            _, _, done, truncated, info = env.step(expert.act().command)
            if done or truncated:
                break
        successes += info["is_success"]
    assert successes >= 19, f"{task}: expert solved {successes}/20"


def test_the_instruction_decides_which_cube_counts():
    """The same motions succeed for the named cube and fail when the instruction names the other one."""
    env = SO101Env(task="pick_place", cameras=())
    expert = ScriptedExpert(env)
    env.reset(seed=7, options={"target_color": "red"})
    expert.reset()
    actions = []
    while True:
        actions.append(expert.act().label)
        _, _, done, truncated, info = env.step(actions[-1])
        if done or truncated:
            break
    assert info["is_success"] and info["task"] == "put the red cube in the bin"

    _, info = env.reset(seed=7, options={"target_color": "green"})
    assert info["task"] == "put the green cube in the bin"
    for action in actions + [actions[-1]] * 30:
        _, _, done, _, info = env.step(action)
        assert not done
    assert not info["is_success"]
    assert env.is_success("red"), "the red cube went in the bin, but the instruction asked for green"


def test_invalid_actions_are_rejected_or_clipped():
    env = SO101Env(task="reach", image_size=32, cameras=("front",))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        env.step(np.zeros(5))
    with pytest.raises(ValueError, match="NaN or infinity for elbow_flex"):
        env.step([0, 0, np.nan, 0, 0, 0])
    with pytest.raises(ValueError, match="infinity"):
        env.step([0, 0, 0, 0, 0, np.inf])
    _, _, _, _, info = env.step([500.0, 0, 0, 0, 0, 150.0])
    assert info["action_clipped"]
    assert env.data.ctrl[0] == pytest.approx(np.radians(110.0))
    assert env.data.ctrl[5] == pytest.approx(GRIPPER_RANGE_RAD[1])
    _, _, _, _, info = env.step(env.joint_state())
    assert not info["action_clipped"]


def test_bad_configuration_gets_clear_errors():
    with pytest.raises(ValueError, match="Unknown camera.*'top'.*front"):
        SO101Env(cameras=("front", "top"))
    with pytest.raises(ValueError, match="Unknown task"):
        SO101Env(task="stack")
    env = SO101Env(task="reach", image_size=32, cameras=("front",))
    with pytest.raises(ValueError, match="not on the table"):
        env.reset(seed=0, options={"target_color": "purple"})


def test_joint_slider_panel_moves_the_arm():
    from smolvla_kit.sim.widgets import JointSliderPanel

    panel = JointSliderPanel(image_size=48)
    before = panel.update()["front"].copy()
    tip_before = panel.env.fingertip_position()
    panel.sliders[0].value = 60.0  # shoulder_pan: the observer fires and re-renders
    assert panel.env.joint_state()[0] == pytest.approx(60.0)
    assert not np.allclose(tip_before, panel.env.fingertip_position())
    assert np.abs(panel.update()["front"].astype(int) - before).mean() > 0.5
    assert "shoulder_pan" in panel.readout.value and "rad" in panel.readout.value


def test_every_package_is_listed_in_pyproject():
    """setuptools installs only the packages pyproject lists: a new sub-package must be added there."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "smolvla_kit").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
