"""The MuJoCo SO-101: scene, Gymnasium environments, scripted expert and joint-slider widget.

Importing this package chooses a headless OpenGL backend when there is no display (EGL, which Mesa's llvmpipe
provides on a CPU-only machine), before MuJoCo is imported anywhere, so rendering works on a server or in CI
without the user setting `MUJOCO_GL` themselves.
"""

from __future__ import annotations

import os
import sys


def _choose_gl_backend() -> None:
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if "MUJOCO_GL" not in os.environ and headless:
        os.environ["MUJOCO_GL"] = "egl"
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")  # PyOpenGL reads this one; keep the two in step
    if headless and os.environ.get("MUJOCO_GL") == "egl" and "mujoco" in sys.modules:
        # MuJoCo was imported before the kit and picked its backend then (GLFW, which needs a display).
        from mujoco.rendering.classic import gl_context

        if getattr(gl_context, "_MUJOCO_GL", "egl") != "egl":
            from mujoco.egl import GLContext

            gl_context.GLContext = GLContext
            gl_context._MUJOCO_GL = "egl"


_choose_gl_backend()

from smolvla_kit.sim.env import CAMERAS, TASKS, Layout, Randomization, SO101Env, make_env  # noqa: E402
from smolvla_kit.sim.expert import ScriptedExpert  # noqa: E402

ENV_IDS = {
    "reach": "smolvla_kit/SO101Reach-v0",
    "pick_place": "smolvla_kit/SO101PickPlace-v0",
}


def _register() -> None:
    import gymnasium as gym

    for task, env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="smolvla_kit.sim.env:SO101Env", kwargs={"task": task})


_register()

__all__ = ["CAMERAS", "ENV_IDS", "TASKS", "Layout", "Randomization", "SO101Env", "ScriptedExpert", "make_env"]
