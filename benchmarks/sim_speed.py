"""Simulator speed: env steps per second with both cameras, against the raw MuJoCo floor of the same scene.

The floor is what any wrapper must pay: `mj_step` for one control period (7 substeps) plus rendering the same two
cameras straight through `mujoco.Renderer`. The kit's overhead is `floor_rate / env_rate - 1`; the target is
under 20 %, and at least 40 env steps/s with two 128 px cameras on one core. The same floor loop also runs on
the scene drawn with the decimated meshes the collision hulls use (`SceneConfig(visual_grid_m=0)`), alternating
with the others, to measure what the visual meshes' own coarser copy saves (`visual_speedup`).

    python benchmarks/sim_speed.py            # full run (about a minute)
    python benchmarks/sim_speed.py --steps 50 # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from common import print_table, write_results  # noqa: E402


def _pin_one_core() -> None:
    # One core, as the target says; also keeps numpy/BLAS from spreading over both.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def measure(size: int, steps: int, repeats: int) -> dict:
    import mujoco

    from smolvla_kit.sim import SO101Env, ScriptedExpert
    from smolvla_kit.sim.scene import SceneConfig, build_model

    env = SO101Env(task="pick_place", image_size=size)
    expert = ScriptedExpert(env, seed=0)
    # Record a real expert trajectory first, so both loops do the same physics (contacts, a grasp, a carry).
    env.reset(seed=0)
    expert.reset()
    actions = []
    for _ in range(steps):
        actions.append(expert.act().label)
        _, _, done, truncated, _ = env.step(actions[-1])
        if done or truncated:
            env.reset(seed=len(actions))
            expert.reset()

    # Floor: the same scene, the same controls, MuJoCo alone.
    model, data = env.model, env.data
    renderer = mujoco.Renderer(model, size, size)
    from smolvla_kit.units import joints_to_radians

    controls = [joints_to_radians(a) for a in actions]
    coarse_model = build_model(SceneConfig(visual_grid_m=0.0))  # the same physics, the decimated meshes drawn
    coarse_data = mujoco.MjData(coarse_model)
    coarse_renderer = mujoco.Renderer(coarse_model, size, size)

    def floor(m: mujoco.MjModel, d: mujoco.MjData, r: mujoco.Renderer) -> float:
        env.reset(seed=0)  # both floors start from the env's scene
        for name in ("qpos", "qvel", "ctrl", "mocap_pos", "mocap_quat"):
            getattr(d, name)[:] = getattr(data, name)
        mujoco.mj_forward(m, d)
        t0 = time.perf_counter()
        for ctrl in controls:
            d.ctrl[:6] = ctrl
            mujoco.mj_step(m, d, nstep=env.n_substeps)
            for cam in ("front", "wrist"):
                r.update_scene(d, camera=cam)
                r.render()
        return time.perf_counter() - t0

    floor_times, coarse_times, env_times = [], [], []
    for _ in range(repeats):
        floor_times.append(floor(model, data, renderer))
        coarse_times.append(floor(coarse_model, coarse_data, coarse_renderer))

        env.reset(seed=0)
        t0 = time.perf_counter()
        for action in actions:
            env.step(action)
        env_times.append(time.perf_counter() - t0)
    renderer.close()
    coarse_renderer.close()
    env.close()
    floor_rate = steps / min(floor_times)
    env_rate = steps / min(env_times)
    return {
        "image_size": size,
        "cameras": 2,
        "steps": steps,
        "env_steps_per_s": env_rate,
        "floor_steps_per_s": floor_rate,
        "overhead_pct": 100.0 * (floor_rate / env_rate - 1.0),
        "env_ms_per_step": 1000.0 / env_rate,
        "floor_decimated_visuals_steps_per_s": steps / min(coarse_times),
        "visual_speedup": min(coarse_times) / min(floor_times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="control steps per timed loop")
    parser.add_argument("--repeats", type=int, default=3, help="timed loops per setting (the best counts)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 256])
    args = parser.parse_args()
    _pin_one_core()
    rows = [measure(size, args.steps, args.repeats) for size in args.sizes]
    print_table(rows, ["image_size", "env_steps_per_s", "floor_steps_per_s", "overhead_pct", "env_ms_per_step",
                       "floor_decimated_visuals_steps_per_s", "visual_speedup"])
    path = write_results("sim_speed", rows, note="one core (sched_setaffinity), best of repeats, pick_place task")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
