"""Joint sliders for the notebooks: move the simulated SO-101 by hand and see both cameras and the units.

    from smolvla_kit.sim.widgets import JointSliderPanel
    panel = JointSliderPanel()
    panel.widget  # display it in Jupyter

Each slider is one motor in the kit's (and LeRobot's) units: degrees for the arm, 0..100 for the gripper. The panel
poses the arm kinematically (no physics), renders the front and wrist cameras, and prints the same pose in the
model's radians and the fingertip position, so students see how the numbers relate.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from smolvla_kit.sim.env import HOME_POSE, SO101Env
from smolvla_kit.units import JOINT_LIMITS, JOINT_NAMES, joints_to_radians


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class JointSliderPanel:
    """An ipywidgets panel with six joint sliders and the two camera views.

    Args:
        env: the environment to pose (a new pick-and-place one when None).
        image_size: pixels per camera view.
        seed: the reset seed, which places the cubes.
    """

    def __init__(self, env: SO101Env | None = None, image_size: int = 256, seed: int = 0) -> None:
        import ipywidgets as widgets

        self.env = env or SO101Env(task="pick_place", image_size=image_size)
        self.image_size = image_size
        self.env.reset(seed=seed)
        self.sliders = [
            widgets.FloatSlider(
                value=float(HOME_POSE[i]),
                min=float(JOINT_LIMITS[i, 0]),
                max=float(JOINT_LIMITS[i, 1]),
                step=0.5,
                description=name,
                continuous_update=False,
                readout_format=".1f",
                style={"description_width": "110px"},
                layout=widgets.Layout(width="420px"),
            )
            for i, name in enumerate(JOINT_NAMES)
        ]
        self.views = {cam: widgets.Image(format="png", width=image_size, height=image_size) for cam in ("front", "wrist")}
        self.readout = widgets.HTML()
        for slider in self.sliders:
            slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([widgets.VBox(self.sliders), self.readout]),
                widgets.HBox(list(self.views.values())),
            ]
        )
        self.update()

    @property
    def joints(self) -> np.ndarray:
        """The slider values, (6,) in kit units."""
        return np.array([s.value for s in self.sliders])

    def set_joints(self, joints: np.ndarray | list[float]) -> None:
        """Move the sliders (and so the arm) to `joints`, in kit units."""
        for slider, value in zip(self.sliders, joints):
            slider.value = float(value)
        self.update()

    def update(self) -> dict[str, np.ndarray]:
        """Pose the arm from the sliders, re-render both views and return the images."""
        env = self.env
        env.set_joint_state(self.joints)
        q = joints_to_radians(self.joints)
        images = {cam: env.render_camera(cam, self.image_size) for cam in self.views}
        for cam, image in images.items():
            self.views[cam].value = _png(image)
        tip = env.fingertip_position()
        rows = "".join(
            f"<tr><td>{n}</td><td>{v:7.1f} {'%' if n == 'gripper' else 'deg'}</td><td>{r:+.3f} rad</td></tr>"
            for n, v, r in zip(JOINT_NAMES, self.joints, q)
        )
        self.readout.value = (
            "<table><tr><th>motor</th><th>kit / LeRobot units</th><th>MuJoCo</th></tr>"
            f"{rows}</table><p>fingertip (m): x={tip[0]:.3f} y={tip[1]:.3f} z={tip[2]:.3f}</p>"
        )
        return images

    def _on_change(self, change: Any) -> None:
        self.update()


__all__ = ["JointSliderPanel"]
