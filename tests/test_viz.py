"""smolvla_kit.viz: the projection agrees with MuJoCo's own rendering, and every figure, widget and video builds."""

from __future__ import annotations

import base64
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from smolvla_kit.sim import SO101Env  # noqa: E402
from smolvla_kit.sim.env import HOME_POSE  # noqa: E402
from smolvla_kit.units import JOINT_LIMITS  # noqa: E402
from smolvla_kit import viz  # noqa: E402


@pytest.fixture(scope="module")
def env():
    env = SO101Env(task="reach", image_size=96)
    env.reset(seed=3)
    yield env
    env.close()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------------------------------------------------------
# Projection


def _segmentation(model, data, camera: str, width: int, height: int) -> np.ndarray:
    """Per-pixel (object id, object type) from MuJoCo's segmentation rendering."""
    renderer = mujoco.Renderer(model, height, width)
    try:
        renderer.enable_segmentation_rendering()
        renderer.update_scene(data, camera=camera)
        return renderer.render()
    finally:
        renderer.close()


def _place_cube(env, color: str, position: np.ndarray) -> int:
    """Move a cube (kinematically, unrotated) to `position`; returns its geom id."""
    adr = env.model.joint(f"{color}_cube_joint").qposadr[0]
    env.data.qpos[adr : adr + 3] = position
    env.data.qpos[adr + 3 : adr + 7] = [np.cos(0.3), 0.0, 0.0, np.sin(0.3)]  # a yaw, so the test is not symmetric
    mujoco.mj_forward(env.model, env.data)
    return env.model.geom(f"{color}_cube").id


def _assert_projection_matches_pixels(env, geom: int, camera: str, width: int, height: int):
    """The projected corners of a box bound exactly the pixels MuJoCo draws for it.

    A pixel is drawn when its centre lies inside the box's silhouette, so with pixel centres at integer coordinates
    the drawn pixels span ceil(min) .. floor(max) of the projected corners. A half-pixel or larger error anywhere in
    the camera model (pose, fovy, aspect, pixel convention) breaks this on some side.
    """
    model, data = env.model, env.data
    seg = _segmentation(model, data, camera, width, height)
    drawn = (seg[..., 0] == geom) & (seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM))
    assert drawn.sum() > 30, f"the box should be clearly visible in {camera}, got {drawn.sum()} pixels"
    rows, cols = np.nonzero(drawn)
    assert 0 < rows.min() and rows.max() < height - 1 and 0 < cols.min() and cols.max() < width - 1, "box clipped"
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
    corners = data.geom_xpos[geom] + (signs * model.geom_size[geom]) @ data.geom_xmat[geom].reshape(3, 3).T
    pix = viz.project_points(model, data, camera, corners, width, height)  # (8, 2) (col, row)
    tol = 0.3  # rasterisation at silhouette edges is not exact to the last fraction of a pixel
    for drawn_lo, drawn_hi, proj in ((cols.min(), cols.max(), pix[:, 0]), (rows.min(), rows.max(), pix[:, 1])):
        assert proj.min() - tol <= drawn_lo <= proj.min() + 1 + tol, (camera, drawn_lo, proj.min())
        assert proj.max() - 1 - tol <= drawn_hi <= proj.max() + tol, (camera, drawn_hi, proj.max())
    centre = viz.project_points(model, data, camera, data.geom_xpos[geom], width, height)
    assert drawn[int(round(centre[1])), int(round(centre[0]))], "the box's centre projects onto the box"


def test_projection_matches_mujoco_rendering_front(env):
    env.reset(seed=3)
    env.set_joint_state(HOME_POSE)
    geom = _place_cube(env, env.colors[0], np.array([0.22, -0.05, 0.09]))  # in the air: no table occlusion
    _assert_projection_matches_pixels(env, geom, "front", 160, 160)
    _assert_projection_matches_pixels(env, geom, "front", 200, 120)  # fovy is vertical: wide images too


def test_projection_matches_mujoco_rendering_wrist(env):
    env.reset(seed=3)  # cubes back on the table, out of the way
    env.set_joint_state(HOME_POSE + np.array([25.0, 10.0, -15.0, 5.0, 30.0, 0.0]))
    view = viz.camera_view(env.model, env.data, "wrist", 160)
    # A point 12 cm in front of the wrist camera, below the jaws in the picture (camera frame: x right, y up, -z ahead).
    target = view.position + view.rotation @ np.array([0.01, -0.03, -0.12])
    geom = _place_cube(env, env.colors[1], target)
    _assert_projection_matches_pixels(env, geom, "wrist", 160, 160)


def test_points_behind_the_camera_are_nan(env):
    view = viz.camera_view(env.model, env.data, "front", 64)
    behind = view.position + view.rotation @ np.array([0.0, 0.0, 0.5])  # +z is behind a MuJoCo camera
    ahead = view.position + view.rotation @ np.array([0.0, 0.0, -0.5])
    pix = view.project(np.stack([behind, ahead]))
    assert np.isnan(pix[0]).all()
    assert pix[1] == pytest.approx([31.5, 31.5])  # on the optical axis: the image centre


def test_forward_kinematics_matches_the_simulator_and_leaves_data_alone(env):
    rng = np.random.default_rng(0)
    joints = rng.uniform(JOINT_LIMITS[:, 0] * 0.6, JOINT_LIMITS[:, 1] * 0.6, size=(5, 6))
    env.set_joint_state(HOME_POSE)
    before = env.data.qpos.copy()
    positions = viz.end_effector_positions(env.model, env.data, joints)
    assert positions.shape == (5, 3)
    assert np.array_equal(env.data.qpos, before), "FK must work on a copy"
    for q, p in zip(joints, positions):
        env.set_joint_state(q)
        assert p == pytest.approx(env.fingertip_position(), abs=1e-9)


def test_project_chunk_handles_trajectories(env):
    env.set_joint_state(HOME_POSE)
    rng = np.random.default_rng(1)
    traj = HOME_POSE + rng.normal(0, 5, size=(4, 7, 6))  # (steps + 1, T, A)
    pix = viz.project_chunk(env.model, env.data, traj, "front", 128)
    assert pix.shape == (4, 7, 2)
    again = viz.project_points(env.model, env.data, "front", viz.end_effector_positions(env.model, env.data, traj), 128)
    assert np.array_equal(pix, again)
    assert np.all((pix > 0) & (pix < 128)), "the fingertip near home is inside the front view"


def test_data_at_state_reproduces_the_wrist_camera(env):
    pose = HOME_POSE + np.array([-20.0, 5.0, 10.0, -5.0, 15.0, 20.0])
    env.set_joint_state(pose)
    rebuilt = viz.data_at_state(env.model, pose)
    a = viz.camera_view(env.model, env.data, "wrist", 64)
    b = viz.camera_view(env.model, rebuilt, "wrist", 64)
    assert a.position == pytest.approx(b.position, abs=1e-9) and a.rotation == pytest.approx(b.rotation, abs=1e-9)


def test_projection_errors_are_clear(env):
    with pytest.raises(ValueError, match="Unknown camera 'top'"):
        viz.project_points(env.model, env.data, "top", np.zeros(3), 64)
    with pytest.raises(ValueError, match="must end in 6 values"):
        viz.end_effector_positions(env.model, env.data, np.zeros((50, 32)))
    with pytest.raises(ValueError, match="Unknown site"):
        viz.end_effector_positions(env.model, env.data, np.zeros(6), site="nose")
    with pytest.raises(ValueError, match="3 coordinates"):
        viz.project_points(env.model, env.data, "front", np.zeros((4, 2)), 64)


# ---------------------------------------------------------------------------------------------------------------
# Drawing paths


def test_draw_denoising_paths_draws_every_step(env):
    env.set_joint_state(HOME_POSE)
    rng = np.random.default_rng(2)
    traj = HOME_POSE + rng.normal(0, 5, size=(11, 50, 6))
    pix = viz.project_chunk(env.model, env.data, traj, "front", 96)
    image = env.render_camera("front", 96)
    fig = viz.draw_denoising_paths(image, pix, step=4)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 11
    assert np.allclose(lines[4].get_xydata(), pix[4]) and lines[4].get_linewidth() > lines[0].get_linewidth()
    assert "step 4/10" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="step must be in 0..10"):
        viz.draw_denoising_paths(image, pix, step=11)


def test_overlay_paths_burns_lines_into_a_copy():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    path = np.array([[[2.0, 10.0], [27.0, 10.0]]])  # a horizontal line along row 10
    out = viz.overlay_paths(image, path, colors=["#ff0000"], scale=2, width=2)
    assert out.shape == (40, 60, 3) and image.max() == 0
    assert (out[20:22, 10:50, 0] == 255).all() and out[:15].max() == 0


def test_denoising_explorer_slider_changes_the_picture():
    image = np.full((32, 32, 3), 200, dtype=np.uint8)
    paths = np.stack([np.stack([np.linspace(2, 29, 10), np.full(10, 4.0 + 2.5 * s)], 1) for s in range(11)])
    explorer = viz.DenoisingPathsExplorer(image, paths)
    last = explorer.view.value
    assert explorer.slider.max == 10 and "t = 0.00" in explorer.caption.value
    explorer.slider.value = 0  # what a student's drag does
    assert explorer.view.value != last and "t = 1.00" in explorer.caption.value
    frame = explorer.frame(0)
    assert frame.shape[0] == 32 * explorer.scale


# ---------------------------------------------------------------------------------------------------------------
# Figures


def test_chunk_and_training_figures_build(tmp_path):
    rng = np.random.default_rng(0)
    fig = viz.plot_denoising(rng.normal(size=(11, 50, 6)))
    assert len(fig.axes[0].get_lines()) == 11
    chunks = [rng.normal(size=(50, 6)) for _ in range(3)]
    fig = viz.plot_chunks_over_time(chunks, [0, 25, 50], executed=rng.normal(size=(75, 6)), n_action_steps=25)
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="one start per chunk"):
        viz.plot_chunks_over_time(chunks, [0, 25])
    path = viz.save_figure(viz.plot_loss_curve([1, 2, 3], [1.0, 0.5, 0.2]), tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_mask_picture_shows_the_library_mask():
    from smolvla_kit.policy.smolvla import block_causal_mask

    flags = torch.tensor([[0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    mask = block_causal_mask(torch.ones_like(flags), flags)[0]
    fig = viz.plot_attention_mask(mask, [("prefix", 3), ("state", 1), ("actions", 2)])
    shown = fig.axes[0].get_images()[0].get_array()
    assert np.array_equal(np.asarray(shown).astype(bool), mask.numpy())
    with pytest.raises(ValueError, match="cover 5 tokens"):
        viz.plot_attention_mask(mask, [("prefix", 3), ("state", 2)])


def test_layer_interleave_figure():
    fig = viz.plot_layer_interleave([False, True, False, True])
    assert len(fig.axes[0].patches) == 8


def test_flow_figures_build():
    field = lambda x, t: x * t  # noqa: E731 - an analytic field: v = t x
    fig = viz.plot_vector_field(field, 0.5, lim=2.0, n=5)
    quiver = fig.axes[0].collections[-1]
    pts = viz.grid_points(2.0, 5)
    assert np.allclose(quiver.U, -0.5 * pts[:, 0]) and np.allclose(quiver.V, -0.5 * pts[:, 1])  # draws -v
    with pytest.raises(ValueError, match="returned shape"):
        viz.plot_vector_field(lambda x, t: x[:, :1], 0.5)
    paths = np.cumsum(np.random.default_rng(0).normal(size=(6, 40, 2)), axis=0)
    fig = viz.plot_particle_paths(paths, target=np.zeros((5, 2)))
    assert len(fig.axes[0].collections[1].get_segments()) == 5 * 40  # one segment per step and particle
    fig = viz.plot_point_clouds({"a": paths[0], "b": paths[-1]}, reference=paths[0], ncols=2)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        viz.plot_point_clouds({"bad": np.zeros((4, 3))})


# ---------------------------------------------------------------------------------------------------------------
# Videos


def _embedded_mp4(video) -> bytes:
    html = video._repr_html_()
    assert "<video" in html
    match = re.search(r'src="data:video/mp4;base64,([^"]+)"', html)
    assert match, html[:200]
    return base64.b64decode(match.group(1))


def test_show_video_embeds_a_playable_mp4(tmp_path):
    from smolvla_kit.data import decode_video

    frames = np.zeros((12, 33, 47, 3), dtype=np.uint8)  # odd sizes: padded to even for yuv420p
    frames[:, :, :, 0] = np.arange(12)[:, None, None] * 20
    video = viz.show_video(frames, fps=10)
    data = _embedded_mp4(video)
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    decoded, times = decode_video(path)
    assert decoded.shape == (12, 34, 48, 3)
    assert times[1] == pytest.approx(0.1)
    assert abs(int(decoded[-1, 10, 10, 0]) - 220) < 8  # the red ramp survived encoding
    again = viz.show_video(path, width=200)
    assert _embedded_mp4(again) == data and 'width="200"' in again._repr_html_()


def test_show_video_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="No video file"):
        viz.show_video(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="uint8"):
        viz.show_video(np.zeros((3, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        viz.show_video(np.zeros((8, 8, 3), dtype=np.uint8))
