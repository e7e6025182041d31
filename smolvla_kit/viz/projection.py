"""Where would the gripper go? Action chunks drawn as end-effector paths inside the camera images.

An action is six joint targets. To see a chunk in the picture the policy looked at, each action goes through
forward kinematics (the arm posed at those joints in a *copy* of the simulator state, `mj_kinematics`, then the
fingertip site `gripperframe` read off) and each 3-D fingertip point through the camera's pinhole model:

    p_cam = R^T (p_world - cam_pos)          R's columns: camera right (x), up (y), backwards (z)
    depth = -p_cam.z                         MuJoCo cameras look down their -z axis
    f     = (H / 2) / tan(fovy / 2)          fovy: the camera's vertical field of view
    col   = W / 2 + f * p_cam.x / depth - 0.5
    row   = H / 2 - f * p_cam.y / depth - 0.5

(`- 0.5` because pixel centres sit at integer coordinates in numpy and matplotlib: pixel (r, c) covers
[c - 0.5, c + 0.5) on screen, so `image[round(row), round(col)]` is the pixel a point lands on.)

    model, data = env.model, env.data
    pix = project_chunk(model, data, trajectory, "front", 256)   # (steps + 1, 50, 2)
    draw_denoising_paths(env.render_camera("front", 256), pix)

The wrist camera rides on the arm, so its pose depends on the arm's *current* joints: the functions read camera
poses from `data` as it is (which is also what MuJoCo's renderer draws from), and only the copy used for forward
kinematics gets the action's joints. For stored observations, :func:`data_at_state` rebuilds a `data` whose arm
is at a given joint state.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from smolvla_kit.errors import InputError
from smolvla_kit.units import JOINT_NAMES, joints_to_radians

from .plots import _plt

TIP_SITE = "gripperframe"


@dataclass(frozen=True)
class CameraView:
    """A camera's pinhole model for an image of `width` x `height` pixels."""

    position: np.ndarray  # (3,) world position of the optical centre
    rotation: np.ndarray  # (3, 3) world-from-camera; columns: right, up, backwards
    fovy_deg: float  # vertical field of view
    width: int
    height: int

    @property
    def focal_px(self) -> float:
        """Focal length in pixels (square pixels, so the same horizontally and vertically)."""
        return (self.height / 2.0) / np.tan(np.radians(self.fovy_deg) / 2.0)

    def project(self, points: Any) -> np.ndarray:
        """World points (..., 3) -> pixel coordinates (..., 2) as (column, row); NaN for points behind the camera."""
        p = np.asarray(points, dtype=np.float64)
        if p.shape[-1] != 3:
            raise InputError(f"points must have 3 coordinates in the last axis (x, y, z in metres); got shape {p.shape}.")
        cam = (p - self.position) @ self.rotation  # (..., 3): R^T (p - c), row-vector form
        depth = -cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            col = self.width / 2.0 + self.focal_px * cam[..., 0] / depth - 0.5
            row = self.height / 2.0 - self.focal_px * cam[..., 1] / depth - 0.5
        out = np.stack([col, row], axis=-1)
        out[depth <= 1e-9] = np.nan  # behind (or at) the camera: not in the picture
        return out


def _camera_id(model: Any, camera: str | int) -> int:
    import mujoco

    if isinstance(camera, (int, np.integer)):
        if not 0 <= int(camera) < model.ncam:
            raise InputError(f"Camera index {camera} out of range; the model has {model.ncam} cameras.")
        return int(camera)
    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam_id < 0:
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        raise InputError(f"Unknown camera {camera!r}; the model has {names}.")
    return cam_id


def camera_view(model: Any, data: Any, camera: str | int, width: int, height: int | None = None) -> CameraView:
    """The pinhole model of `camera` as posed in `data` (run `mj_forward`/`mj_kinematics` on it first).

    Args:
        width, height: the size of the rendered image in pixels (square when height is None), as passed to
            `env.render_camera(name, size)` or `mujoco.Renderer(model, height, width)`.
    """
    cam = _camera_id(model, camera)
    if int(model.cam_projection[cam]) != 0:
        raise InputError(f"Camera {camera!r} is orthographic; project_points handles perspective cameras only.")
    if np.any(model.cam_sensorsize[cam] > 0):
        raise InputError(
            f"Camera {camera!r} is defined by sensor size and focal length (intrinsic parameters), which this "
            f"projection does not model; define it with fovy instead."
        )
    return CameraView(
        position=np.array(data.cam_xpos[cam], dtype=np.float64),
        rotation=np.array(data.cam_xmat[cam], dtype=np.float64).reshape(3, 3),
        fovy_deg=float(model.cam_fovy[cam]),
        width=int(width),
        height=int(height if height is not None else width),
    )


def project_points(model: Any, data: Any, camera: str | int, points: Any, width: int, height: int | None = None) -> np.ndarray:
    """World points (..., 3) -> (column, row) pixel coordinates (..., 2) in the image `camera` renders from `data`.

    Pixel centres are at integer coordinates (numpy/matplotlib convention); points behind the camera give NaN.
    Points outside the field of view get coordinates outside [0, width) x [0, height).
    """
    return camera_view(model, data, camera, width, height).project(points)


def _arm_qpos_addresses(model: Any) -> np.ndarray:
    return np.array([model.joint(name).qposadr[0] for name in JOINT_NAMES])


def end_effector_positions(model: Any, data: Any, joints: Any, site: str = TIP_SITE) -> np.ndarray:
    """Forward kinematics: joint vectors (..., 6) in kit units -> world positions (..., 3) of `site`.

    Each joint vector is set into a copy of `data` (everything else - cubes, bin - stays as it is) and MuJoCo's
    `mj_kinematics` places the bodies; `data` itself is not touched.
    """
    import mujoco

    q = np.asarray(joints, dtype=np.float64)
    if q.shape[-1] != len(JOINT_NAMES):
        raise InputError(
            f"joints must end in {len(JOINT_NAMES)} values ({', '.join(JOINT_NAMES)}, degrees and gripper 0..100); "
            f"got shape {q.shape}. Crop padded action dims first."
        )
    site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site)
    if site_id < 0:
        raise InputError(f"Unknown site {site!r} in the model (the SO-101's fingertip is {TIP_SITE!r}).")
    scratch = mujoco.MjData(model)
    scratch.qpos[:] = data.qpos
    scratch.mocap_pos[:] = data.mocap_pos
    scratch.mocap_quat[:] = data.mocap_quat
    adr = _arm_qpos_addresses(model)
    flat = joints_to_radians(q.reshape(-1, q.shape[-1]))  # (K, 6) radians
    out = np.empty((flat.shape[0], 3))
    for k, qk in enumerate(flat):
        scratch.qpos[adr] = qk
        mujoco.mj_kinematics(model, scratch)
        out[k] = scratch.site_xpos[site_id]
    return out.reshape(q.shape[:-1] + (3,))


def project_chunk(
    model: Any, data: Any, actions: Any, camera: str | int, width: int, height: int | None = None,
    site: str = TIP_SITE,
) -> np.ndarray:
    """Actions (..., T, 6) in kit units -> pixel paths (..., T, 2) of the fingertip in `camera`'s image.

    Works on one chunk (T, 6), a denoising trajectory (steps + 1, T, 6), or any stack of them. The camera pose is
    read from `data` as it is (the arm's current pose for the wrist camera).
    """
    positions = end_effector_positions(model, data, actions, site=site)
    return project_points(model, data, camera, positions, width, height)


def data_at_state(model: Any, state: Any) -> Any:
    """A fresh `MjData` with the arm at `state` (6,) in kit units and kinematics computed (cubes at defaults).

    Use it to project into an image stored with its joint state (e.g. `eval`'s denoising traces), where the wrist
    camera's pose must match the arm's pose when the image was taken.
    """
    import mujoco

    d = mujoco.MjData(model)
    state = np.asarray(state, dtype=np.float64)
    if state.shape != (len(JOINT_NAMES),):
        raise InputError(f"state must be ({len(JOINT_NAMES)},) in kit units; got shape {state.shape}.")
    d.qpos[_arm_qpos_addresses(model)] = joints_to_radians(state)
    mujoco.mj_forward(model, d)  # bodies, sites and camera poses (cam_xpos / cam_xmat)
    return d


# ------------------------------------------------------------------------------------------------------------------
# Drawing


def _check_paths(pixel_paths: Any) -> np.ndarray:
    p = np.asarray(pixel_paths, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[-1] != 2:
        raise InputError(
            f"pixel_paths must be (steps + 1, T, 2) (or one path (T, 2)) as project_chunk returns; got shape {p.shape}."
        )
    return p


def _step_colors(n: int) -> list[tuple[float, float, float, float]]:
    plt = _plt()
    cmap = plt.get_cmap("viridis_r")  # light = noise (t=1), dark = the final chunk (t=0)
    return [cmap(s / max(1, n - 1)) for s in range(n)]


def draw_denoising_paths(
    image: Any,
    pixel_paths: Any,
    step: int | None = None,
    ax: Any | None = None,
    title: str | None = None,
):
    """The camera image with the fingertip path of every intermediate chunk of a denoising trajectory.

    Args:
        image: (H, W, 3) uint8, the image the paths were projected into.
        pixel_paths: (steps + 1, T, 2) from :func:`project_chunk`; index 0 is the pure-noise chunk (t = 1), the last
            the final actions (t = 0).
        step: highlight this denoising step (0..steps) and fade the others; all drawn alike when None.
    Returns:
        the Figure.
    """
    plt = _plt()
    img = np.asarray(image)
    paths = _check_paths(pixel_paths)
    n = paths.shape[0]
    if step is not None and not 0 <= step < n:
        raise InputError(f"step must be in 0..{n - 1} for a trajectory of {n - 1} Euler steps; got {step}.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 5))
    else:
        fig = ax.figure
    ax.imshow(img)
    colors = _step_colors(n)
    for s in range(n):
        focus = step is None or s == step
        lw = 2.2 if (s == step or (step is None and s == n - 1)) else 1.0
        ax.plot(paths[s, :, 0], paths[s, :, 1], color=colors[s], lw=lw, alpha=1.0 if focus else 0.25)
        if s == step:
            ax.scatter(paths[s, :, 0], paths[s, :, 1], s=8, color=colors[s], zorder=3)
    final = paths[-1]
    ax.scatter(final[:1, 0], final[:1, 1], marker="o", s=40, facecolors="none", edgecolors="white", zorder=4,
               label="first action")
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)
    ax.axis("off")
    if title is None:
        steps = n - 1
        title = (f"fingertip paths of all {n} chunks (t = 1 -> 0)" if step is None
                 else f"denoising step {step}/{steps}: t = {1 - step / max(1, steps):.2f}")
    ax.set_title(title, fontsize=10)
    return fig


def overlay_paths(
    image: Any,
    pixel_paths: Any,
    colors: Sequence[Any] | None = None,
    scale: int = 1,
    width: int = 2,
) -> np.ndarray:
    """Paths burnt into a copy of the image, (H*scale, W*scale, 3) uint8: for videos and fast widgets.

    Args:
        pixel_paths: (K, T, 2) or (T, 2) pixel coordinates (column, row) in the image's own resolution.
        colors: one matplotlib colour per path; light-to-dark viridis (noise to actions) when None.
        scale: upsample the image first (nearest neighbour) so thin lines stay readable on small images.
    """
    from matplotlib.colors import to_rgb
    from PIL import Image, ImageDraw

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"image must be (H, W, 3) uint8; got shape {img.shape} and dtype {img.dtype}.")
    paths = _check_paths(pixel_paths)
    colors = list(colors) if colors is not None else _step_colors(paths.shape[0])
    if len(colors) != paths.shape[0]:
        raise InputError(f"{len(colors)} colours for {paths.shape[0]} paths.")
    canvas = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for path, color in zip(paths, colors):
        rgb = tuple(int(round(255 * c)) for c in to_rgb(color))
        # Pixel centres sit at integers in PIL as in numpy: centre c of the original is (c + 0.5) * scale - 0.5.
        xy = [((c + 0.5) * scale - 0.5, (r + 0.5) * scale - 0.5) for c, r in path if np.isfinite(c) and np.isfinite(r)]
        if len(xy) >= 2:
            draw.line(xy, fill=rgb, width=width, joint="curve")
    return np.asarray(canvas)


class DenoisingPathsExplorer:
    """A slider over the denoising step, showing that step's chunk as a fingertip path in the camera image.

        explorer = DenoisingPathsExplorer(image, project_chunk(model, data, trajectory, "front", 256))
        explorer.widget   # display it in Jupyter

    Frames are drawn with :func:`overlay_paths` on first view and cached, so dragging the slider is instant.
    """

    def __init__(self, image: Any, pixel_paths: Any, scale: int | None = None) -> None:
        import ipywidgets as widgets

        self.image = np.asarray(image)
        self.paths = _check_paths(pixel_paths)
        self.steps = self.paths.shape[0] - 1
        self.scale = scale or max(1, int(np.ceil(384 / self.image.shape[1])))
        self._colors = _step_colors(self.paths.shape[0])
        self._frames: dict[int, bytes] = {}
        side = self.image.shape[1] * self.scale
        self.slider = widgets.IntSlider(value=self.steps, min=0, max=self.steps, description="Euler step",
                                        continuous_update=True)
        self.view = widgets.Image(format="png", width=side)
        self.caption = widgets.HTML()
        self.slider.observe(lambda change: self.show(change["new"]), names="value")
        self.widget = widgets.VBox([self.slider, self.view, self.caption])
        self.show(self.steps)

    def frame(self, step: int) -> np.ndarray:
        """The image with all paths faint and `step`'s path drawn bold, (H*scale, W*scale, 3) uint8."""
        faint = [tuple(0.55 + 0.45 * np.array(c[:3])) for c in self._colors]  # washed-out versions
        others = [s for s in range(self.paths.shape[0]) if s != step]
        img = overlay_paths(self.image, self.paths[others], [faint[s] for s in others], scale=self.scale, width=1)
        # Bold on top; overlay_paths upsamples, so draw on the already scaled image with scale 1 and scaled paths.
        scaled = (self.paths[step : step + 1] + 0.5) * self.scale - 0.5
        return overlay_paths(img, scaled, [self._colors[step]], scale=1, width=3)

    def show(self, step: int) -> None:
        """Move to `step` (0 = pure noise, steps = final chunk)."""
        if not 0 <= step <= self.steps:
            raise InputError(f"step must be in 0..{self.steps}; got {step}.")
        if step not in self._frames:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(self.frame(step)).save(buffer, format="PNG")
            self._frames[step] = buffer.getvalue()
        self.view.value = self._frames[step]
        self.caption.value = f"step {step}/{self.steps}: t = {1 - step / max(1, self.steps):.2f}"
        if self.slider.value != step:
            self.slider.value = step


__all__ = [
    "TIP_SITE",
    "CameraView",
    "DenoisingPathsExplorer",
    "camera_view",
    "data_at_state",
    "draw_denoising_paths",
    "end_effector_positions",
    "overlay_paths",
    "project_chunk",
    "project_points",
]
