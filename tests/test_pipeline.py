"""Collect -> train -> evaluate -> report, for real on tiny budgets, including kills and resumes."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from smolvla_kit.collect import CollectConfig, collect
from smolvla_kit.data import DatasetError, LeRobotDatasetReader
from smolvla_kit.runs import latest_checkpoint
from smolvla_kit.train import TrainConfig, lr_at, train
from smolvla_kit.units import JOINT_LIMITS


def _train_cfg(dataset: Path, out: Path, **kw) -> TrainConfig:
    values = dict(dataset=dataset, out=out, steps=6, batch_size=4, save_every=3, log_every=1, num_threads=1,
                  progress=False)
    values.update(kw)
    return TrainConfig(**values)


def test_collect_writes_a_lerobot_dataset(dataset):
    reader = LeRobotDatasetReader(dataset)
    assert reader.num_episodes == 2
    ep = reader.episode(0)
    assert ep.actions.shape[1] == 6 and ep.states.shape == ep.actions.shape
    assert np.all(ep.actions >= JOINT_LIMITS[:, 0] - 1e-4) and np.all(ep.actions <= JOINT_LIMITS[:, 1] + 1e-4)
    assert ep.task.startswith("put the ") and ep.task.endswith(" cube in the bin")
    info = json.loads((dataset / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 30 and info["robot_type"] == "so101_follower"
    assert info["features"]["observation.images.wrist"]["shape"][:2] == [64, 64]


def test_every_colour_records_each_scene_once_per_named_cube(tmp_path):
    root = tmp_path / "pairs"
    collect(CollectConfig(out=root, episodes=2, image_size=48, workers=1, every_colour=True, progress=False))
    reader = LeRobotDatasetReader(root)
    first, second = reader.episode(0), reader.episode(1)
    assert np.array_equal(first.states[0], second.states[0])  # the same scene (its random start pose) ...
    assert "red" in first.task and "green" in second.task  # ... fetched once per colour
    assert not np.allclose(first.actions[:40], second.actions[:40], atol=1.0)
    # Resuming with other settings would mix two kinds of episode: refused, naming the setting and the file.
    # It is refused before anything is written: the dataset's files stay as they were, byte for byte.
    (root / "meta" / "stats.json").write_text((root / "meta" / "stats.json").read_text() + " ")  # a user's edit
    files = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts}
    with pytest.raises(ValueError, match=r"every_colour=True \(now False\).*kit_collect\.json"):
        collect(CollectConfig(out=root, episodes=3, image_size=48, workers=1, every_colour=False, progress=False))
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts} == files
    assert LeRobotDatasetReader(root).num_episodes == 2
    (root / "meta" / "kit_collect.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"kit_collect\.json: unreadable"):
        collect(CollectConfig(out=root, episodes=3, image_size=48, workers=1, every_colour=True, progress=False))
    assert LeRobotDatasetReader(root).num_episodes == 2
    # The reach task names no cube: the setting does not apply, and the dataset records that it did not.
    collect(CollectConfig(out=tmp_path / "reach", task="reach", episodes=1, image_size=32, workers=1, progress=False))
    assert json.loads((tmp_path / "reach" / "meta" / "kit_collect.json").read_text())["every_colour"] is False
    # A dataset the kit's collect did not record is appended to only when asked.
    (root / "meta" / "kit_collect.json").unlink()
    with pytest.raises(ValueError, match=r"2 episodes that the kit's collect did not record.*--append-to-foreign"):
        collect(CollectConfig(out=root, episodes=3, image_size=48, workers=1, progress=False))
    assert LeRobotDatasetReader(root).num_episodes == 2
    collect(CollectConfig(out=root, episodes=3, image_size=48, workers=1, progress=False, append_to_foreign=True))
    assert LeRobotDatasetReader(root).num_episodes == 3 and (root / "meta" / "kit_collect.json").is_file()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def test_collection_killed_keeps_finished_episodes_and_resumes(tmp_path, dataset):
    root = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from smolvla_kit.collect import CollectConfig, collect
        collect(CollectConfig(out=Path({str(root)!r}), episodes=50, image_size=32, workers=1, progress=False))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            files = list((root / "meta" / "episodes").rglob("*.parquet")) if (root / "meta").exists() else []
            if files and LeRobotDatasetReader(root).num_episodes >= 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the collector never committed two episodes")
        workers = _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Its worker processes do not outlive it.
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert workers and not any(_alive(pid) for pid in workers)
    committed = LeRobotDatasetReader(root).num_episodes
    assert committed >= 2
    # Resume to a few more than were committed: numbering continues and every episode reads back whole.
    summary = collect(CollectConfig(out=root, episodes=committed + 1, image_size=32, workers=1, progress=False))
    assert summary["resumed_at"] == committed and summary["episodes"] == committed + 1
    reader = LeRobotDatasetReader(root)
    assert reader.num_episodes == committed + 1
    for i in range(committed + 1):
        ep = reader.episode(i)
        assert len(ep.frames["observation.images.front"]) == len(ep.actions) > 10
    # Episode k's seed depends on k alone, so the interrupted-and-resumed run recorded the same motions as the
    # uninterrupted fixture (whose cameras are larger; rendering does not touch the physics).
    reference = LeRobotDatasetReader(dataset)
    for i in range(2):
        assert np.array_equal(reader.episode(i, with_frames=False).actions, reference.episode(i, with_frames=False).actions)


def test_learning_rate_schedule():
    assert lr_at(0, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert 0.1 < lr_at(55, 1.0, 10, 100, 0.1) < 1.0


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9, "noise_samples": 2}], ids=["plain", "ema+noise2"])
def test_training_resume_is_exact(tmp_path, dataset, extra):
    """Six steps straight, or three steps then a resume to six: the same weights, bit for bit."""
    straight = train(_train_cfg(dataset, tmp_path / "straight", **extra))
    train(_train_cfg(dataset, tmp_path / "split", stop_at=3, **extra))
    resumed = train(_train_cfg(dataset, tmp_path / "split", **extra))
    assert resumed["resumed_from"] == 3 and resumed["steps"] == 6
    a = load_file(str(Path(straight["checkpoint"]) / "model.safetensors"))
    b = load_file(str(Path(resumed["checkpoint"]) / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "split" / "loss.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(s) for s in range(1, 7)]


def test_weight_average_is_saved_as_the_policy_and_the_raw_weights_kept_for_resuming(tmp_path, dataset):
    summary = train(_train_cfg(dataset, tmp_path / "run", steps=3, ema_decay=0.5))
    checkpoint = Path(summary["checkpoint"])
    saved = load_file(str(checkpoint / "model.safetensors"))
    raw = {k[len("raw."):]: v for k, v in load_file(str(checkpoint / "training_state.safetensors")).items()
           if k.startswith("raw.")}
    assert raw and all(k in saved for k in raw)
    # The share kept after steps 0, 1, 2 is min(0.5, n / (n + 10)): 0, 1/11, 1/6. The average trails the raw
    # weights, so every trained tensor differs.
    assert all(not torch.equal(saved[k], raw[k]) for k in raw)
    # The camera warm-up trains another objective: the average starts afresh on the first step after it.
    restarted = Path(train(_train_cfg(dataset, tmp_path / "warm", steps=4, camera_warmup_steps=3,
                                      ema_decay=0.5))["checkpoint"])
    saved = load_file(str(restarted / "model.safetensors"))
    raw = load_file(str(restarted / "training_state.safetensors"))
    assert all(torch.equal(saved[k[len("raw."):]], v) for k, v in raw.items() if k.startswith("raw."))
    with pytest.raises(ValueError, match=r"saved with ema_decay 0\.5; this run asks for 0\.999.*same ema_decay"):
        train(_train_cfg(dataset, tmp_path / "run", steps=4, resume=True))
    plain = tmp_path / "plain"
    train(_train_cfg(dataset, plain, steps=3, ema_decay=0.0))
    with pytest.raises(ValueError, match=r"saved with ema_decay 0\.0; this run asks for 0\.5"):
        train(_train_cfg(dataset, plain, steps=4, ema_decay=0.5, resume=True))
    with pytest.raises(ValueError, match=r"ema_decay must be in"):
        train(_train_cfg(dataset, tmp_path / "bad", ema_decay=1.0))
    with pytest.raises(ValueError, match=r"played_weight must be positive, got 0"):
        train(_train_cfg(dataset, tmp_path / "bad", played_weight=0.0))


def test_a_run_resumes_only_with_its_own_settings_unless_asked(tmp_path, dataset):
    run = tmp_path / "run"
    train(_train_cfg(dataset, run, stop_at=3))
    other = tmp_path / "other_data"
    shutil.copytree(dataset, other)
    stats_file = other / "meta" / "stats.json"
    stats = json.loads(stats_file.read_text())
    stats["action"]["mean"] = [m + 1.0 for m in stats["action"]["mean"]]
    stats_file.write_text(json.dumps(stats))
    with pytest.raises(ValueError) as refused:
        train(_train_cfg(dataset=other, out=run, lr=0.5))
    text = str(refused.value)
    assert f"{run} holds a run (at step_000003) that these settings would change" in text
    assert f"dataset: saved '{dataset}', now '{other}'" in text and "lr: saved 0.001, now 0.5" in text
    assert "the dataset's action mean changed" in text and "--resume" in text
    assert latest_checkpoint(run).name == "step_000003"  # nothing was trained
    assert train(_train_cfg(dataset, run))["resumed_from"] == 3  # its own settings: resumes
    summary = train(_train_cfg(dataset, run, steps=8, resume=True))  # asked for: continues with the change
    assert summary["resumed_from"] == 6 and summary["steps"] == 8


def test_chunk_size_shapes_a_fresh_policy_and_a_resume_must_keep_the_policy_settings(tmp_path, dataset):
    from smolvla_kit.policy import SmolVLAPolicy

    run = tmp_path / "run"
    first = SmolVLAPolicy.from_pretrained(train(_train_cfg(dataset, run, steps=3, chunk_size=20))["checkpoint"])
    assert first.config.chunk_size == 20 and first.config.n_action_steps == 10
    assert train(_train_cfg(dataset, run, steps=4, resume=True))["resumed_from"] == 3  # unset: the checkpoint's chunk
    asks = r"step_000004 was trained with {0}={1}; this run asks for {0}={2}"
    with pytest.raises(ValueError, match=asks.format("chunk_size", 20, 50)):
        train(_train_cfg(dataset, run, steps=5, chunk_size=50))
    with pytest.raises(ValueError, match=asks.format("n_action_steps", 10, 5)):
        train(_train_cfg(dataset, run, steps=5, policy_overrides={"n_action_steps": 5}))
    assert train(_train_cfg(dataset, run, steps=5, chunk_size=20, resume=True))["resumed_from"] == 4  # the same


def test_mixed_precision_trains_in_bfloat16_and_keeps_float32_weights(tmp_path, dataset):
    plain = load_file(str(Path(train(_train_cfg(dataset, tmp_path / "fp32", steps=3, mixed_precision=False))["checkpoint"])
                          / "model.safetensors"))
    run = train(_train_cfg(dataset, tmp_path / "bf16", steps=3, mixed_precision=True))
    mixed = load_file(str(Path(run["checkpoint"]) / "model.safetensors"))
    rows = (tmp_path / "bf16" / "loss.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 3 and all(np.isfinite(float(r.split(",")[1])) for r in rows)
    floats = [k for k, v in plain.items() if v.is_floating_point()]
    assert all(mixed[k].dtype == torch.float32 for k in floats)
    # bfloat16 products round differently, so the weights part a little, but only a little
    moved = [k for k in floats if not torch.equal(plain[k], mixed[k])]
    assert moved
    assert max((plain[k] - mixed[k]).abs().max().item() for k in moved) < 0.05


def test_training_killed_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path, dataset):
    run = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from smolvla_kit.train import TrainConfig, train
        train(TrainConfig(dataset=Path({str(dataset)!r}), out=Path({str(run)!r}), steps=10_000, batch_size=4,
                          save_every=2, log_every=1, num_threads=1, progress=False))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (run / "checkpoints" / "step_000004").exists():
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = latest_checkpoint(run)
    assert last is not None, "no checkpoint survived the kill"
    saved = int(last.name.split("_")[1])
    assert saved >= 4
    summary = train(_train_cfg(dataset, run, steps=saved + 2, resume=True))
    assert summary["resumed_from"] == saved and summary["steps"] == saved + 2


def test_training_refuses_mismatched_data_with_clear_errors(tmp_path, dataset):
    with pytest.raises(DatasetError, match=r"camera_map points to cameras the dataset does not have.*laptop"):
        train(_train_cfg(dataset, tmp_path / "a", camera_map={"observation.images.front": "observation.images.laptop",
                                                               "observation.images.wrist": "observation.images.wrist"}))
    with pytest.raises(DatasetError, match=r"info\.json.*'observation\.state'.*\(6,\).*\(7,\)"):
        train(_train_cfg(dataset, tmp_path / "b", policy_overrides={"state_dim": 7}))
    broken = tmp_path / "no_stats"
    import shutil

    shutil.copytree(dataset, broken)
    (broken / "meta" / "stats.json").unlink()
    with pytest.raises(DatasetError, match=r"stats\.json"):
        train(_train_cfg(broken, tmp_path / "c"))


def test_cli_demo_quick_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "smolvla_kit.cli", "demo", "--recipe", "quick", "--out", str(out),
                             "--workers", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "| **all** |" in report and "put the red cube in the bin" in report
    assert (out / "loss.png").exists() and (out / "denoising.png").exists()
    assert list((out / "eval").glob("rollout_*.mp4"))
    evaluation = json.loads((out / "eval" / "eval.json").read_text())
    assert evaluation["summary"]["episodes"] == 2
    assert {e["target_color"] for e in evaluation["episodes"]} == {"red", "green"}
    traces = load_file(str(out / "eval" / "denoising.safetensors"))
    trajectory = traces["episode_00/trajectory"]
    assert trajectory.shape == (11, 50, 6)  # noise + 10 Euler steps, the whole chunk, six joints
    assert "<video" in (out / "report.html").read_text()
    # The report records the recipe and every setting as each stage resolved it.
    settings = json.loads(report.split("```json", 1)[1].split("```", 1)[0])
    assert settings["recipe"] == "quick" and settings["train"]["recipe"] == "quick"
    assert settings["train"]["steps"] == 40 and settings["train"]["lr"] == 1e-3  # the recipe's, and the default's
    assert settings["collect"]["every_colour"] is True
    assert settings["sampler"]["samples_per_chunk"] == evaluation["summary"]["samples_per_chunk"] == 16


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    from smolvla_kit.evaluate import EvalConfig, evaluate

    with pytest.raises(FileNotFoundError, match=r"nope is not a checkpoint folder \(no config\.json\)"):
        evaluate(EvalConfig(checkpoint=tmp_path / "nope", out=tmp_path / "eval", progress=False))


def test_input_sensitivity_tells_which_inputs_the_policy_uses():
    from smolvla_kit.evaluate import input_sensitivity
    from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy
    from smolvla_kit.sim import SO101Env

    torch.manual_seed(0)
    stats = {k: {"mean": np.zeros(6), "std": np.full(6, 20.0)} for k in ("observation.state", "action")}
    policy = SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats=stats).eval()
    env = SO101Env(task="pick_place", image_size=96)
    seeds = [10_000_000, 10_000_001, 10_000_002]
    untrained = input_sensitivity(policy, env, seeds)
    assert untrained["images"] > 0.01 and untrained["language"] > 0.01  # both inputs reach the chunk
    with torch.no_grad():  # cut the images off: their tokens become constant
        policy.model.vlm_with_expert.vlm.model.connector.modality_projection.proj.weight.zero_()
    blind = input_sensitivity(policy, env, seeds)
    assert blind["images"] < 1e-4 and blind["language"] > 0.01
    env.close()


def test_an_episode_reports_whether_the_named_cube_was_grasped():
    from smolvla_kit.evaluate import run_episode, summarize
    from smolvla_kit.sim import ScriptedExpert, SO101Env

    class ExpertAsPolicy:
        """The scripted expert behind the policy interface the evaluator drives."""

        def __init__(self, env):
            self.env = env

        def reset(self):
            self.expert = ScriptedExpert(self.env, noise_deg=0.0, seed=0)

        def select_action(self, obs):
            return torch.as_tensor(self.expert.act().command)[None]

    class StandStill(ExpertAsPolicy):
        def select_action(self, obs):
            return torch.as_tensor(obs["observation.state"])[None]

    env = SO101Env(task="pick_place", image_size=32, max_episode_steps=150)
    seed = 10_000_000
    done = run_episode(ExpertAsPolicy(env), env, seed, "green")
    idle = run_episode(StandStill(env), env, seed, "green")
    env.close()
    assert done["success"] and done["grasped"] and not done["wrong_cube"]
    assert not idle["success"] and not idle["grasped"]
    summary = summarize([done, idle])
    assert summary["grasp_rate"] == 0.5 and summary["per_instruction"][0]["grasp_rate"] == 0.5


def test_batches_can_favour_episode_starts(tmp_path, dataset):
    from smolvla_kit.data import ChunkDataset, LeRobotDatasetReader
    from smolvla_kit.train import _batch_indices

    data = ChunkDataset(LeRobotDatasetReader(dataset), chunk_size=50)
    starts = data.indices_before_frame(5)
    assert len(starts) == 5 * data.reader.num_episodes and all(data[int(i)]["frame_index"] < 5 for i in starts)
    picks = [_batch_indices(0, step, len(data), 32, starts, 0.5) for step in range(20)]
    share = np.mean([np.isin(p.numpy(), starts).mean() for p in picks])
    uniform = np.mean([np.isin(_batch_indices(0, step, len(data), 32).numpy(), starts).mean() for step in range(20)])
    assert share >= 0.5 > uniform  # half the batch at least, against the starts' natural share
    assert torch.equal(picks[3], _batch_indices(0, 3, len(data), 32, starts, 0.5))  # resumable: a function of the step
    assert train(_train_cfg(dataset, tmp_path / "run", steps=2, start_share=0.5))["steps"] == 2
    with pytest.raises(ValueError, match="start_share"):
        train(_train_cfg(dataset, tmp_path / "bad", steps=2, start_share=1.5))


def test_camera_warmup_hides_the_state_on_episode_starts(tmp_path, dataset):
    from smolvla_kit.data import ChunkDataset, LeRobotDatasetReader
    from smolvla_kit.train import StepBatches, dataset_stats

    reader = LeRobotDatasetReader(dataset)
    data = ChunkDataset(reader, chunk_size=50)
    cfg = _train_cfg(dataset, tmp_path / "run", steps=4, camera_warmup_steps=2, camera_warmup_frames=3).resolved()
    mean = torch.as_tensor(dataset_stats(reader)["observation.state"]["mean"])
    pool = data.indices_before_frame(3)
    batches = StepBatches(data, cfg, warmup_pool=pool, mean_state=mean)
    for step, batch in enumerate(batches.loader(workers=1)):  # a worker process reads them, as on a GPU machine
        batch = batches.hide_state(batch, step)
        hidden = bool((batch["observation.state"] == mean).all())
        if step < 2:
            assert hidden and all(int(t) < 3 for t in batch["frame_index"])
        else:  # ordinary batches again: the true states, frames from anywhere in the episodes
            assert not hidden
    assert train(cfg)["steps"] == 4
    with pytest.raises(ValueError, match="camera_warmup_frames"):
        train(_train_cfg(dataset, tmp_path / "bad", steps=2, camera_warmup_steps=1, camera_warmup_frames=0))


def test_non_finite_data_and_unusable_stats_are_found_by_check_and_refused_by_train(tmp_path, dataset, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smolvla_kit.data.__main__ import main as data_cli

    bad = tmp_path / "nan_data"
    shutil.copytree(dataset, bad)
    data_file = sorted((bad / "data").glob("*/*.parquet"))[-1]
    table = pq.read_table(data_file)
    actions = table.column("action").to_pylist()
    actions[5][2] = float("nan")
    table = table.set_column(table.schema.get_field_index("action"), "action",
                             pa.array(actions, type=table.schema.field("action").type))
    pq.write_table(table, data_file)
    episode = int(table.column("episode_index")[5].as_py())
    frame = 5 - table.column("episode_index").to_pylist().index(episode)
    assert data_cli(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{data_file}: episode {episode} has a non-finite 'action' at frame {frame}" in err
    with pytest.raises(DatasetError, match=rf"episode {episode} has a non-finite 'action' at frame {frame}"):
        train(_train_cfg(bad, tmp_path / "run_nan"))
    assert not (tmp_path / "run_nan" / "checkpoints").exists()

    flat = tmp_path / "zero_std"
    shutil.copytree(dataset, flat)
    stats_file = flat / "meta" / "stats.json"
    stats = json.loads(stats_file.read_text())
    stats["observation.state"]["std"] = [0.0] * len(stats["observation.state"]["std"])
    stats_file.write_text(json.dumps(stats))
    assert data_cli(["check", str(flat)]) == 1
    assert "the statistics of 'observation.state' are unusable (std" in capsys.readouterr().err
    with pytest.raises(DatasetError, match=r"stats.json: the statistics of 'observation.state' are unusable"):
        train(_train_cfg(flat, tmp_path / "run_flat"))


def test_a_worker_ends_when_its_parent_is_killed(tmp_path):
    """The guard collect's and eval's workers install: a child busy for a minute still ends within about a second
    of its parent's SIGKILL (a worker blocked in rendering or in a long episode would otherwise live on)."""
    script = textwrap.dedent(
        """
        import multiprocessing as mp, sys, time

        def busy():
            from smolvla_kit.collect import exit_with_parent
            exit_with_parent()
            time.sleep(60)

        if __name__ == "__main__":
            child = mp.get_context("spawn").Process(target=busy)
            child.start()
            print(child.pid, flush=True)
            time.sleep(60)
        """
    )
    path = tmp_path / "parent.py"
    path.write_text(script)
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(3.0)  # the child has imported the kit and started its guard
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 3.0
    while time.time() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)


def test_a_diverging_run_stops_with_the_step_and_what_to_do(tmp_path, dataset, capsys):
    from smolvla_kit.cli import main

    args = ["train", "--dataset", str(dataset), "--out", str(tmp_path / "run"), "--steps", "6", "--batch-size", "4",
            "--save-every", "1", "--num-threads", "1", "--no-progress"]
    assert main([*args, "--lr", "inf"]) == 2
    assert "lr and grad_clip must be positive and finite" in capsys.readouterr().err
    assert main([*args, "--lr", "1e30", "--grad-clip", "1e30", "--warmup-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: The loss became (nan|inf) at step [1-5]\. The last checkpoint .* is intact; lower --lr", err)
    assert "Traceback" not in err
