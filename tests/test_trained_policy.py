"""Behaviour that needs a trained policy, checked on the `nano` the kit ships (`kit:nano-pick-place`).

Language is used: on held-out scenes, the same policy told "red" goes for the red cube and told "green" goes for
the green one. The full figure (success and grasps per instruction, wrong-cube rate) is in
benchmarks/results/learning_curve.json.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from smolvla_kit.collect import HELD_OUT_SEED_START
from smolvla_kit.policy import SmolVLAPolicy
from smolvla_kit.sim import SO101Env
from smolvla_kit.trained import NANO_PICK_PLACE

STEPS = 100  # two chunks: the approach and the grasp


@pytest.fixture(scope="module")
def policy_and_env():
    torch.set_num_threads(1)
    policy = SmolVLAPolicy.from_pretrained(NANO_PICK_PLACE).eval()
    env = SO101Env(task="pick_place", image_size=96, cameras=("front", "wrist"))
    yield policy, env
    env.close()


def closest_approach(policy: SmolVLAPolicy, env: SO101Env, seed: int, color: str) -> dict[str, float]:
    """The fingertip's smallest distance (m) to each cube over the first STEPS steps, told to fetch `color`."""
    obs, _ = env.reset(seed=seed, options={"target_color": color})
    policy.reset()
    torch.manual_seed(seed)  # the sampler's noise
    nearest = {c: np.inf for c in env.colors}
    for _ in range(STEPS):
        obs, _, done, truncated, _ = env.step(policy.select_action(obs)[0].numpy())
        tip = env.fingertip_position()
        for c in env.colors:
            nearest[c] = min(nearest[c], float(np.linalg.norm(tip - env.cube_position(c))))
        if done or truncated:
            break
    return nearest


def test_the_instruction_decides_which_cube_the_arm_goes_for(policy_and_env):
    policy, env = policy_and_env
    outcomes = []
    for seed in range(HELD_OUT_SEED_START + 100, HELD_OUT_SEED_START + 104):  # scenes no training episode used
        for color in env.colors:
            nearest = closest_approach(policy, env, seed, color)
            other = min(d for c, d in nearest.items() if c != color)
            outcomes.append(nearest[color] < other)
    # Generous: the shipped policy grasped the named cube in every one of 50 held-out episodes and never the other.
    assert sum(outcomes) >= 6, f"went for the named cube in {sum(outcomes)} of {len(outcomes)} episodes"


def test_eval_can_run_the_policy_in_bfloat16(tmp_path):
    from smolvla_kit.evaluate import EvalConfig, evaluate

    # By its shipped name, as `smolvla-kit eval --checkpoint kit:nano-pick-place` takes it.
    summary = evaluate(EvalConfig(checkpoint="kit:nano-pick-place", out=tmp_path, episodes=2, max_steps=20,
                                  videos=0, trajectories=0, dtype="bfloat16", num_threads=1, progress=False))
    assert summary["episodes"] == 4 and summary["sensitivity_deg"]["language"] > 1.0  # it still listens
    # The sampler's settings can be changed for an evaluation, and the results say which were used.
    summary = evaluate(EvalConfig(checkpoint="kit:nano-pick-place", out=tmp_path / "coarse", episodes=1, max_steps=10,
                                  videos=0, trajectories=1, n_action_steps=5, num_steps=3, samples_per_chunk=4,
                                  num_threads=1, progress=False))
    assert (summary["n_action_steps"], summary["num_steps"], summary["samples_per_chunk"]) == (5, 3, 4)
    saved = json.loads((tmp_path / "coarse" / "eval.json").read_text())["summary"]
    assert (saved["n_action_steps"], saved["num_steps"], saved["samples_per_chunk"]) == (5, 3, 4)
    for bad in ({"n_action_steps": 0}, {"num_steps": 0}, {"samples_per_chunk": 0}):  # refused, not ignored
        with pytest.raises(ValueError, match=f"{next(iter(bad))}.*must be"):
            evaluate(EvalConfig(checkpoint="kit:nano-pick-place", out=tmp_path / "bad", episodes=1, progress=False,
                                **bad))
    trajectory = load_file(str(tmp_path / "coarse" / "denoising.safetensors"))
    assert trajectory["episode_00/trajectory"].shape[0] == 4  # x_1 and one x per Euler step
    with pytest.raises(ValueError, match="float16"):
        evaluate(EvalConfig(checkpoint="kit:nano-pick-place", out=tmp_path, dtype="float16", progress=False))


def test_an_evaluation_episode_replays_exactly(policy_and_env):
    from smolvla_kit.evaluate import run_episode

    policy, env = policy_and_env
    first = run_episode(policy, env, HELD_OUT_SEED_START + 7, "red", record_denoising=True)
    torch.randn(100)  # whatever ran in between must not change the sampler's noise
    again = run_episode(policy, env, HELD_OUT_SEED_START + 7, "red", record_denoising=True)
    assert torch.equal(first["denoising"]["trajectory"], again["denoising"]["trajectory"])
    assert (first["steps"], first["success"], first["grasped"]) == (again["steps"], again["success"], again["grasped"])


def test_parallel_evaluation_plays_the_same_episodes(tmp_path):
    from smolvla_kit.evaluate import EvalConfig, evaluate

    tables = {}
    for workers in (1, 2):
        evaluate(EvalConfig(checkpoint="kit:nano-pick-place", out=tmp_path / str(workers), episodes=2, max_steps=40,
                            videos=1, trajectories=1, workers=workers, num_threads=1, progress=False))
        tables[workers] = json.loads((tmp_path / str(workers) / "eval.json").read_text())
    assert tables[2]["summary"]["workers"] == 2
    assert tables[1]["episodes"] == tables[2]["episodes"]  # outcomes, steps and grasps, episode by episode
    assert (tmp_path / "2" / "rollout_00.mp4").stat().st_size > 0
    one, two = (load_file(str(tmp_path / w / "denoising.safetensors")) for w in ("1", "2"))
    assert torch.equal(one["episode_00/trajectory"], two["episode_00/trajectory"])


def test_an_evaluation_run_from_standard_input_plays_in_one_process(tmp_path):
    """A script piped into python has no file for worker processes to re-import: evaluate() plays its episodes
    itself instead of starting workers that cannot start."""
    import subprocess
    import sys

    script = (f"from smolvla_kit.evaluate import EvalConfig, evaluate\n"
              f"s = evaluate(EvalConfig(checkpoint='kit:nano-pick-place', out={str(tmp_path)!r}, episodes=2, "
              f"max_steps=5, videos=0, trajectories=0, workers=2, num_threads=1, progress=False))\n"
              f"print('workers', s['workers'], 'episodes', s['episodes'])\n")
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "workers 1 episodes 4" in done.stdout
