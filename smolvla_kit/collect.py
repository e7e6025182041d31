"""Record scripted-expert demonstrations in simulation as a LeRobot v3.0 dataset.

    smolvla-kit collect --task pick_place --episodes 200 --out outputs/data/pick_place

Episodes run in worker processes (one per core by default); the main process writes each finished episode to
disk, in episode order, before it takes the next one, so a killed run keeps every episode it finished. Running
the same command again resumes: the writer drops any half-written episode and numbering continues. The settings
that decide what an episode holds are kept in `meta/kit_collect.json`; resuming with different ones is refused,
since the dataset would silently mix two kinds of episode.

Seeds: episode k is recorded from seed `seed + 1000 * k + r`, where r counts the expert's failed attempts at that
episode (failed attempts are not recorded); with `every_colour`, from `seed + 1000 * (k // colours) + r`. The
sequence depends only on k, so a resumed run records exactly what an uninterrupted one would have. Held-out
scenes come from ranges training data never reaches (fewer than 10,000 scenes): recipes and settings are chosen on
`VALIDATION_SEED_START` upwards, and figures are reported from `HELD_OUT_SEED_START` upwards (`smolvla-kit eval`'s
default), where no choice was made by looking.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smolvla_kit.errors import InputError
from smolvla_kit.vocabulary import ACTION_KEY, CONTROL_HZ, IMAGE_PREFIX, STATE_KEY

VALIDATION_SEED_START = 10_000_000
HELD_OUT_SEED_START = 20_000_000
SEEDS_PER_EPISODE = 1000
SETTINGS_FILE = "meta/kit_collect.json"


@dataclass
class CollectConfig:
    """Settings of a demonstration recording."""

    out: Path = Path("outputs/data/pick_place")
    """Dataset folder (created, or resumed when it already holds a dataset)."""
    task: str = "pick_place"
    """Simulator task: "reach" or "pick_place"."""
    episodes: int = 100
    """Episodes the dataset should hold when done (a resumed run records only the missing ones)."""
    image_size: int = 96
    """Camera images are image_size x image_size (nano looks at 96 x 96)."""
    num_cubes: int | None = None
    """Cubes on the table (task default when None)."""
    noise_deg: float = 2.0
    """Expert noise injection (degrees); the recorded action stays the clean one, so data shows recoveries."""
    randomize: bool = False
    """Domain randomisation of light, colours, table and front camera."""
    seed: int = 0
    """Base of the seed sequence (see the module docstring)."""
    every_colour: bool = True
    """pick_place: record each scene once per cube colour, the instruction naming each in turn (episodes 2k and
    2k+1 share scene k with two cubes). The images alone then cannot tell which cube to fetch, so a policy must
    learn the words; with one random colour per scene, a few hundred scenes can be memorised instead. The reach
    task names no cube and ignores it."""
    workers: int = 0
    """Worker processes; 0 = one per CPU core."""
    max_attempts: int = 20
    """Give up on an episode after this many failed expert attempts."""
    append_to_foreign: bool = False
    """Add simulated episodes to a dataset the kit's collect did not record (its episodes are kept); without it,
    such a dataset is refused."""
    progress: bool = True
    """Show a progress bar."""

    def check(self) -> None:
        """Refuse settings no recording can use, before anything is written."""
        from smolvla_kit.sim import TASKS

        if self.task not in TASKS:
            raise InputError(f"task {self.task!r} is not a simulator task; choose one of {sorted(TASKS)}.")
        if self.episodes < 1:
            raise InputError(f"episodes (--episodes) must be at least 1, got {self.episodes}.")
        if not 16 <= self.image_size <= 1024:
            raise InputError(f"image_size (--image-size) must be between 16 and 1024 pixels, got {self.image_size}.")
        if self.num_cubes is not None and self.num_cubes < 1:
            raise InputError(f"num_cubes (--num-cubes) must be at least 1, got {self.num_cubes}.")
        if not 0.0 <= self.noise_deg <= 45.0:  # also refuses NaN
            raise InputError(f"noise_deg (--noise-deg) must be between 0 and 45 degrees, got {self.noise_deg}.")
        if self.workers < 0 or self.max_attempts < 1:
            raise InputError(
                f"workers must be >= 0 and max_attempts >= 1, got {self.workers} and {self.max_attempts}."
            )


@dataclass
class EpisodeRecording:
    """One expert episode, as a worker returns it."""

    index: int
    seed: int
    task: str
    states: np.ndarray  # (T, 6) float32
    actions: np.ndarray  # (T, 6) float32, the expert's clean command at each frame
    images: dict[str, np.ndarray]  # camera key -> (T, H, W, 3) uint8
    attempts: int


_worker_env: Any = None
_worker_cfg: CollectConfig | None = None


def exit_with_parent() -> None:
    """In a worker process: end it as soon as its parent is gone, even killed with SIGKILL (which runs no clean-up
    in the parent), instead of living on as an orphan that holds CPUs and memory."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # an orphan is adopted by another process
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(cfg: CollectConfig) -> None:
    global _worker_env, _worker_cfg
    from smolvla_kit.sim import Randomization, SO101Env

    exit_with_parent()

    _worker_cfg = cfg
    _worker_env = SO101Env(
        task=cfg.task,
        image_size=cfg.image_size,
        num_cubes=cfg.num_cubes,
        randomization=Randomization.all() if cfg.randomize else None,
    )


def record_episode(
    env: Any, seed: int, noise_deg: float, target_color: str | None = None
) -> tuple[dict[str, Any], bool]:
    """Run the scripted expert for one episode from `seed` (fetching `target_color` if given, else the scene's
    random pick); returns the frames and whether it succeeded."""
    from smolvla_kit.sim import ScriptedExpert

    expert = ScriptedExpert(env, noise_deg=noise_deg, seed=seed)
    obs, info = env.reset(seed=seed, options={"target_color": target_color} if target_color else None)
    image_keys = [k for k in obs if k.startswith(IMAGE_PREFIX)]
    states, actions, images = [], [], {k: [] for k in image_keys}
    while True:
        step = expert.act()
        states.append(obs[STATE_KEY])
        actions.append(step.label.astype(np.float32))
        for key in image_keys:
            images[key].append(obs[key])
        obs, _, done, truncated, info = env.step(step.command)
        if done or truncated:
            break
    frames = {
        "task": info["task"],
        "states": np.stack(states).astype(np.float32),
        "actions": np.stack(actions),
        "images": {k: np.stack(v) for k, v in images.items()},
    }
    return frames, bool(info["is_success"])


def _run_episode(index: int) -> EpisodeRecording | None:
    cfg = _worker_cfg
    assert cfg is not None and _worker_env is not None
    scene, color = index, None
    if _pairs(cfg):
        colors = _worker_env.colors
        scene, color = index // len(colors), colors[index % len(colors)]
    for attempt in range(cfg.max_attempts):
        seed = cfg.seed + SEEDS_PER_EPISODE * scene + attempt
        frames, success = record_episode(_worker_env, seed, cfg.noise_deg, color)
        if success:
            return EpisodeRecording(
                index=index,
                seed=seed,
                task=frames["task"],
                states=frames["states"],
                actions=frames["actions"],
                images=frames["images"],
                attempts=attempt + 1,
            )
    return None


def _pairs(cfg: CollectConfig) -> bool:
    """Whether each scene is recorded once per cube colour."""
    return cfg.every_colour and cfg.task == "pick_place"


def _episode_settings(cfg: CollectConfig) -> dict[str, Any]:
    """The settings that decide what episode k holds (the worker count and the progress bar do not)."""
    return {"task": cfg.task, "image_size": cfg.image_size, "num_cubes": cfg.num_cubes, "noise_deg": cfg.noise_deg,
            "randomize": cfg.randomize, "seed": cfg.seed, "every_colour": _pairs(cfg)}


def _check_settings(root: Path, cfg: CollectConfig) -> None:
    """Before anything is written: refuse to append to a dataset recorded with other settings, or to one the kit's
    `collect` did not record unless `append_to_foreign` says so. Nothing in `root` changes here."""
    import warnings

    from smolvla_kit.data import DatasetMeta

    if not (root / "meta" / "info.json").is_file():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stale totals after a kill are the writer's to repair
        committed = len(DatasetMeta(root).episodes)
    path = root / SETTINGS_FILE
    if not committed:
        return
    if not path.exists():
        if cfg.append_to_foreign:
            return
        raise InputError(
            f"{root} holds {committed} episodes that the kit's collect did not record (no {SETTINGS_FILE}). Record "
            f"into a new --out folder, or pass --append-to-foreign to add simulated episodes after them."
        )
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable ({err}); delete it to resume with the current settings.") from err
    settings = _episode_settings(cfg)
    differ = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    if differ:
        changes = ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in differ.items())
        raise InputError(
            f"{root} holds {committed} episodes recorded with {changes} ({path}). Resume with the same "
            "settings, or record into a new --out folder."
        )


def _record_settings(root: Path, cfg: CollectConfig) -> None:
    """Write down what decides episode k's content, once, so a later run can resume only with the same."""
    from smolvla_kit.data.layout import write_bytes_atomic

    path = root / SETTINGS_FILE
    if not path.exists():
        write_bytes_atomic(path, (json.dumps(_episode_settings(cfg), indent=2) + "\n").encode())


def collect(cfg: CollectConfig) -> dict[str, Any]:
    """Record until the dataset at `cfg.out` holds `cfg.episodes` episodes. Returns a summary."""
    from tqdm.auto import tqdm

    from smolvla_kit.data import LeRobotDatasetWriter, so101_features

    cfg.check()
    _check_settings(Path(cfg.out), cfg)
    features = so101_features(cameras={"front": (cfg.image_size,) * 2, "wrist": (cfg.image_size,) * 2})
    writer = LeRobotDatasetWriter(cfg.out, fps=CONTROL_HZ, robot_type="so101_follower", features=features)
    start = writer.num_episodes
    todo = list(range(start, cfg.episodes))
    summary: dict[str, Any] = {"dataset": str(cfg.out), "resumed_at": start, "recorded": 0, "failed_attempts": 0}
    workers = cfg.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(todo) or 1))
    try:
        _record_settings(Path(cfg.out), cfg)
        if todo:
            ctx = mp.get_context("spawn")  # fresh interpreters: no inherited OpenGL contexts or torch threads
            with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool, tqdm(
                total=cfg.episodes, initial=start, desc=f"collect {cfg.task}", unit="ep", disable=not cfg.progress
            ) as bar:
                for rec in pool.imap(_run_episode, todo, chunksize=1):
                    if rec is None:
                        raise InputError(
                            f"The scripted expert failed {cfg.max_attempts} times in a row on one episode; "
                            f"the task settings (task={cfg.task}, num_cubes={cfg.num_cubes}) may be unsolvable."
                        )
                    for t in range(len(rec.actions)):
                        frame = {STATE_KEY: rec.states[t], ACTION_KEY: rec.actions[t], "task": rec.task}
                        for key, frames in rec.images.items():
                            frame[key] = frames[t]
                        writer.add_frame(frame)
                    writer.save_episode()
                    summary["recorded"] += 1
                    summary["failed_attempts"] += rec.attempts - 1
                    bar.update(1)
                    bar.set_postfix(frames=writer.num_frames)
    finally:
        writer.finalize()
    summary["episodes"] = writer.num_episodes
    summary["frames"] = writer.num_frames
    return summary


__all__ = ["CollectConfig", "EpisodeRecording", "HELD_OUT_SEED_START", "VALIDATION_SEED_START", "collect",
           "record_episode"]
