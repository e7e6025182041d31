"""Evaluate a trained policy in simulation on held-out seeds: success per instruction, videos, denoising traces.

    smolvla-kit eval --checkpoint outputs/train/nano/checkpoints/last --task pick_place --episodes 20

Seeds start at `HELD_OUT_SEED_START`, a range the training data never reaches and no recipe was chosen on. Each
seed's scene is played once per cube colour, the instruction naming that colour, so the table shows whether the
policy follows the words:
`success` counts the named cube in the bin, `wrong_cube` counts another cube there instead. Each episode seeds the
sampler's noise with its scene's seed, so the same checkpoint and settings give the same table on the same machine.

Outputs in `--out`: `eval.json` (every episode and the summary), `rollout_XX.mp4` (front | wrist side by side),
and `denoising.safetensors` (the x_t of every Euler step of the first chunk of a few episodes, with the
observation they came from, for the notebooks' plots).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from smolvla_kit import runs
from smolvla_kit.collect import HELD_OUT_SEED_START, exit_with_parent
from smolvla_kit.errors import InputError
from smolvla_kit.vocabulary import CONTROL_HZ, IMAGE_PREFIX, STATE_KEY


@dataclass
class EvalConfig:
    """Settings of an evaluation."""

    checkpoint: Path = Path("outputs/train/nano/checkpoints/last")
    """A kit checkpoint folder, or a run's `checkpoints/last` pointer file."""
    out: Path = Path("outputs/eval")
    task: str = "pick_place"
    episodes: int = 20
    """Scenes (seeds); each is played once per colour on the table."""
    seed_start: int = HELD_OUT_SEED_START
    num_cubes: int | None = None
    max_steps: int | None = None
    """Episode limit (the task's default when None)."""
    videos: int = 2
    """Rollouts saved as mp4."""
    trajectories: int = 3
    """Episodes whose first chunk's denoising is saved."""
    n_action_steps: int | None = None
    """Actions executed per chunk (the policy's setting when None)."""
    num_steps: int | None = None
    """Euler steps from noise to a chunk (the policy's setting, 10, when None)."""
    samples_per_chunk: int | None = None
    """Chunks drawn per observation and averaged (the policy's setting when None)."""
    dtype: str = "float32"
    """"bfloat16" runs the VLM and the expert in bfloat16 (faster on CPUs with bf16 instructions)."""
    workers: int = 0
    """Processes that play episodes side by side, each with its own copy of the policy and simulator (1: all in
    this process; 0: one per core, at most one per 4 episodes, for a policy under 50 M parameters, else 1). The
    table is the same either way: each episode seeds its own noise."""
    num_threads: int = 0
    """Torch threads per process (0: cores - 1 in one process; cores / workers with several)."""
    progress: bool = True

    def check(self) -> None:
        """Refuse settings no evaluation can use, before the policy is loaded."""
        at_least = {"episodes": (self.episodes, 1), "seed_start": (self.seed_start, 0), "videos": (self.videos, 0),
                    "trajectories": (self.trajectories, 0), "workers": (self.workers, 0),
                    "num_threads": (self.num_threads, 0), "num_cubes": (self.num_cubes, 1),
                    "max_steps": (self.max_steps, 1), "n_action_steps": (self.n_action_steps, 1),
                    "num_steps": (self.num_steps, 1), "samples_per_chunk": (self.samples_per_chunk, 1)}
        for name, (value, lowest) in at_least.items():
            if value is not None and value < lowest:
                flag = "--" + name.replace("_", "-")
                raise InputError(f"{name} ({flag}) must be at least {lowest}, got {value}.")
        if self.dtype not in ("float32", "bfloat16"):
            raise InputError(f"dtype (--dtype) must be 'float32' or 'bfloat16', got {self.dtype!r}.")


def run_episode(
    policy: Any,
    env: Any,
    seed: int,
    target_color: str,
    record_video: bool = False,
    record_denoising: bool = False,
) -> dict[str, Any]:
    """Play one episode with the policy; return the outcome (and frames / denoising if asked)."""
    obs, info = env.reset(seed=seed, options={"target_color": target_color})
    policy.reset()
    torch.manual_seed(seed)  # the sampler's noise: an episode replays exactly, whatever ran before it
    frames: list[np.ndarray] = []
    denoising = None
    steps = 0
    grasped = False  # the named cube was held in both jaws at some point
    while True:
        if record_video:
            frames.append(np.concatenate([obs[k] for k in obs if k.startswith(IMAGE_PREFIX)], axis=1))
        if record_denoising and denoising is None:
            chunk, trajectory = policy.predict_chunk(obs, return_trajectory=True)
            denoising = {
                "trajectory": trajectory[:, 0].cpu(),  # (num_steps + 1, chunk, A)
                "state": torch.as_tensor(obs[STATE_KEY]),
                **{k: torch.as_tensor(v) for k, v in obs.items() if k.startswith(IMAGE_PREFIX)},
            }
        action = policy.select_action(obs)[0].cpu().numpy()  # (A,)
        obs, _, done, truncated, info = env.step(action)
        steps += 1
        grasped = grasped or (env.task_name == "pick_place" and env.cube_in_gripper(target_color))
        if done or truncated:
            break
    others = [c for c in env.colors if c != target_color]
    result = {
        "seed": seed,
        "target_color": target_color,
        "task": info["task"],
        "success": bool(info["is_success"]),
        "grasped": grasped,
        "wrong_cube": any(env.is_success(c) for c in others) if env.task_name == "pick_place" else False,
        "steps": steps,
        "seconds": steps / CONTROL_HZ,
    }
    if record_video:
        result["frames"] = frames
    if denoising is not None:
        result["denoising"] = denoising
    return result


@torch.no_grad()
def input_sensitivity(policy: Any, env: Any, seeds: list[int]) -> dict[str, float]:
    """Does the policy look and listen? How far its first chunk moves when one input is swapped.

    For each seed: the first chunk from the scene as it is, with the cameras showing the next seed's scene instead,
    and with the instruction naming another cube. All three use the same noise. Returned: the mean |change| of the
    arm joints over the chunk, in degrees, for `images` and `language`. A policy that ignores its cameras (it can
    replay a motion from its joint state alone) scores about 0 on `images`; one that ignores the words, about 0 on
    `language`. A policy that found the named cube scores roughly the joint distance between the two cubes.
    """
    if len(seeds) < 2 or len(env.colors) < 2:
        raise InputError("input_sensitivity needs at least two seeds and two cubes.")
    first = [env.reset(seed=s, options={"target_color": env.colors[0]})[0] for s in seeds]
    image_keys = [k for k in first[0] if k.startswith(IMAGE_PREFIX)]
    arm = slice(0, 5)  # the five arm joints; the gripper has its own units
    d_img, d_lang = [], []
    for i, s in enumerate(seeds):
        noise = torch.randn(policy.config.samples_per_chunk, policy.config.chunk_size, policy.config.max_action_dim,
                            generator=torch.Generator().manual_seed(s))
        base = policy.predict_chunk(first[i], noise=noise)[0, :, arm]
        swapped = dict(first[i], **{k: first[(i + 1) % len(seeds)][k] for k in image_keys})
        d_img.append((policy.predict_chunk(swapped, noise=noise)[0, :, arm] - base).abs().mean().item())
        other, _ = env.reset(seed=s, options={"target_color": env.colors[1]})  # same scene, other cube named
        d_lang.append((policy.predict_chunk(other, noise=noise)[0, :, arm] - base).abs().mean().item())
    return {"images": float(np.mean(d_img)), "language": float(np.mean(d_lang))}


def _load(cfg: EvalConfig, checkpoint: Path) -> tuple[Any, Any]:
    """The policy with the evaluation's sampler settings, and a simulator whose cameras match its training data."""
    from smolvla_kit.sim import SO101Env

    policy = runs.load(checkpoint, dtype=cfg.dtype, n_action_steps=cfg.n_action_steps, num_steps=cfg.num_steps,
                       samples_per_chunk=cfg.samples_per_chunk)
    cameras = tuple(k.rsplit(".", 1)[-1] for k in policy.config.image_keys)
    image_size = runs.trained_image_size(checkpoint) or policy.config.image_size
    env = SO101Env(task=cfg.task, image_size=image_size, cameras=cameras, num_cubes=cfg.num_cubes,
                   max_episode_steps=cfg.max_steps)
    return policy, env


# One (policy, simulator) pair per worker process, built once by its initializer.
_worker: dict[str, Any] = {}


def _init_worker(cfg: EvalConfig, checkpoint: Path, threads: int) -> None:
    exit_with_parent()
    torch.set_num_threads(threads)
    _worker["policy"], _worker["env"] = _load(cfg, checkpoint)


def _play(job: tuple[int, str, bool, bool]) -> dict[str, Any]:
    seed, color, video, denoising = job
    return run_episode(_worker["policy"], _worker["env"], seed, color, video, denoising)


def _episodes(cfg: EvalConfig, checkpoint: Path, policy: Any, env: Any, jobs: list[tuple[int, str, bool, bool]],
              workers: int) -> Iterator[dict[str, Any]]:
    """The outcome of each job, in order: in this process, or spread over `workers` fresh processes."""
    if workers <= 1:
        for seed, color, video, denoising in jobs:
            yield run_episode(policy, env, seed, color, video, denoising)
        return
    threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // workers)
    # Fresh interpreters (spawn): no inherited OpenGL context or torch thread pool. A worker that dies raises
    # BrokenProcessPool here rather than leaving the evaluation waiting.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(cfg, checkpoint, threads)) as pool:
        yield from pool.map(_play, jobs)


def _spawn_works() -> bool:
    """Whether fresh worker processes can start: spawn re-imports the main script, which a script read from
    standard input (`python - < script.py`) does not have as a file."""
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    return main_file is None or os.path.exists(main_file)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation; writes the outputs and returns the summary."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from smolvla_kit.data import encode_frames

    cfg.check()
    torch.set_num_threads(runs.cpu_threads(cfg.num_threads))
    checkpoint = runs.resolve(cfg.checkpoint)
    policy, env = _load(cfg, checkpoint)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    jobs = []
    for i in range(cfg.episodes):
        for color in env.colors:
            n = len(jobs)
            jobs.append((cfg.seed_start + i, color, n < cfg.videos, n < cfg.trajectories))
    workers = cfg.workers
    if workers == 0:
        small = sum(p.numel() for p in policy.parameters()) < 50_000_000
        workers = min(os.cpu_count() or 1, len(jobs) // 4) if small else 1  # a process takes seconds to start
    workers = max(1, min(workers, len(jobs))) if _spawn_works() else 1

    episodes: list[dict[str, Any]] = []
    denoising: dict[str, torch.Tensor] = {}
    with tqdm(total=len(jobs), desc=f"eval {cfg.task}", unit="ep", disable=not cfg.progress) as bar:
        for result in _episodes(cfg, checkpoint, policy, env, jobs, workers):
            n = len(episodes)
            if "frames" in result:
                path = out / f"rollout_{n:02d}.mp4"
                encode_frames(path, np.stack(result.pop("frames")), fps=CONTROL_HZ)
                result["video"] = path.name
            if "denoising" in result:
                for key, value in result.pop("denoising").items():
                    denoising[f"episode_{n:02d}/{key}"] = value.contiguous()
            episodes.append(result)
            bar.update(1)
            bar.set_postfix(success=f"{np.mean([e['success'] for e in episodes]):.2f}")
    sensitivity = input_sensitivity(policy, env, [cfg.seed_start + i for i in range(max(2, min(8, cfg.episodes)))])
    env.close()
    if denoising:
        save_file(denoising, str(out / "denoising.safetensors"))

    summary = summarize(episodes)
    summary.update({"checkpoint": str(checkpoint), "task": cfg.task, "seed_start": cfg.seed_start,
                    "n_action_steps": policy.config.n_action_steps, "num_steps": policy.config.num_steps,
                    "samples_per_chunk": policy.config.samples_per_chunk, "workers": workers,
                    "sensitivity_deg": sensitivity})
    (out / "eval.json").write_text(json.dumps({"summary": summary, "episodes": episodes}, indent=1))
    return summary


def summarize(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Success overall and per instruction, wrong-cube rate, mean time of successful episodes."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for e in episodes:
        by_task.setdefault(e["task"], []).append(e)
    rows = [
        {
            "task": task,
            "episodes": len(eps),
            "success_rate": float(np.mean([e["success"] for e in eps])),
            "grasp_rate": float(np.mean([e["grasped"] for e in eps])),
            "wrong_cube_rate": float(np.mean([e["wrong_cube"] for e in eps])),
        }
        for task, eps in sorted(by_task.items())
    ]
    wins = [e["seconds"] for e in episodes if e["success"]]
    return {
        "episodes": len(episodes),
        "success_rate": float(np.mean([e["success"] for e in episodes])) if episodes else 0.0,
        "grasp_rate": float(np.mean([e["grasped"] for e in episodes])) if episodes else 0.0,
        "wrong_cube_rate": float(np.mean([e["wrong_cube"] for e in episodes])) if episodes else 0.0,
        "mean_success_seconds": float(np.mean(wins)) if wins else None,
        "per_instruction": rows,
    }


def format_table(summary: dict[str, Any]) -> str:
    """The per-instruction results as a markdown table."""
    lines = ["| instruction | episodes | success | grasped the named cube | wrong cube |", "|---|---|---|---|---|"]
    for row in summary["per_instruction"]:
        lines.append(f"| {row['task']} | {row['episodes']} | {row['success_rate']:.0%} | "
                     f"{row['grasp_rate']:.0%} | {row['wrong_cube_rate']:.0%} |")
    lines.append(f"| **all** | {summary['episodes']} | **{summary['success_rate']:.0%}** | "
                 f"{summary['grasp_rate']:.0%} | {summary['wrong_cube_rate']:.0%} |")
    if "sensitivity_deg" in summary:
        sens = summary["sensitivity_deg"]
        lines.append("")
        lines.append(f"First chunk's change when the cameras show another scene: {sens['images']:.1f} deg; "
                     f"when the instruction names the other cube: {sens['language']:.1f} deg (about 0 = input unused).")
    return "\n".join(lines)


__all__ = [
    "EvalConfig",
    "evaluate",
    "format_table",
    "run_episode",
    "summarize",
]
