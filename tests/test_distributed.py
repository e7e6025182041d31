"""`smolvla-kit train` under torchrun: two CPU processes (gloo) train the one-process run, write once, resume anywhere."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smolvla_kit.runs import latest_checkpoint

# Deterministic settings that exercise what a launch must keep equal: the camera warm-up, two noise draws per frame,
# the weight average, start-of-episode batches.
COMMON = ["--steps", "6", "--batch-size", "4", "--save-every", "3", "--log-every", "1", "--num-threads", "1",
          "--no-progress", "--no-mixed-precision", "--ema-decay", "0.9", "--noise-samples", "2",
          "--camera-warmup-steps", "2", "--start-share", "0.5"]


def launch(processes: int, dataset: Path, out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`smolvla-kit train` in one process, or under torchrun with `processes` processes."""
    args = ["-m", "smolvla_kit.cli", "train", "--dataset", str(dataset), "--out", str(out), *COMMON, *extra]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *args]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def assert_same_run(a: Path, b: Path, first_step: int = 1) -> None:
    rows_a = {r["step"]: r for r in log_rows(a)}
    rows_b = {r["step"]: r for r in log_rows(b)}
    for step in map(str, range(first_step, 7)):
        for column in ("loss", "grad_norm", "lr"):
            assert float(rows_b[step][column]) == pytest.approx(float(rows_a[step][column]), rel=1e-4), (step, column)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_two_processes_train_the_one_process_run_and_rank_0_alone_writes(tmp_path, dataset):
    one = launch(1, dataset, tmp_path / "one")
    two = launch(2, dataset, tmp_path / "two")
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    # Written once: one log row per step, the two checkpoints and nothing half-written, one summary printed.
    assert [r["step"] for r in log_rows(tmp_path / "two")] == [str(s) for s in range(1, 7)]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["last", "step_000003", "step_000006"]
    assert two.stdout.count('"checkpoint"') == 1
    state = json.loads((latest_checkpoint(tmp_path / "two") / "training_state.json").read_text())
    assert state["launch"] == {"processes": 2, "batch_per_process": 2, "device": "cpu"}
    assert state["train_config"]["batch_size"] == 4  # the whole step's batch, as in one process


def test_a_two_process_checkpoint_resumes_in_one_process_on_the_same_schedule(tmp_path, dataset):
    assert launch(1, dataset, tmp_path / "straight").returncode == 0
    first = launch(2, dataset, tmp_path / "split", "--stop-at", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(1, dataset, tmp_path / "split")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["resumed_from"] == 3
    assert_same_run(tmp_path / "straight", tmp_path / "split")


def test_a_batch_that_does_not_split_among_the_processes_is_refused(tmp_path, dataset):
    result = launch(2, dataset, tmp_path / "run", "--batch-size", "3")
    assert result.returncode != 0
    assert "batch_size 3 does not split evenly among 2 processes" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_processes_started_with_different_settings_are_refused(tmp_path, dataset):
    """Two processes joined by hand (as a multi-node launch would), one given another learning rate."""
    port = str(free_port())
    procs = []
    for rank, lr in ((0, "1e-3"), (1, "2e-3")):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        args = [sys.executable, "-m", "smolvla_kit.cli", "train", "--dataset", str(dataset), "--out",
                str(tmp_path / "run"), *COMMON, "--lr", lr]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 2, err[-3000:]
        assert "do not agree on the run's settings or data: ranks [1] differ from rank 0" in err


def test_a_process_that_dies_stops_the_others_with_a_message(tmp_path, dataset):
    run = tmp_path / "run"
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "smolvla_kit.cli", "train",
            "--dataset", str(dataset), "--out", str(run), *COMMON, "--steps", "2000", "--save-every", "2"]
    launcher = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not ((run / "loss.csv").exists() and len(log_rows(run)) >= 4):
            time.sleep(0.5)
        rank1 = [pid for pid in _descendants(launcher.pid) if _environ(pid).get("RANK") == "1"]
        assert rank1, "no rank 1 process found"
        os.kill(rank1[0], signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)  # the others stop; nothing hangs
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    # Rank 0 either sees the lost connection first or is stopped by torchrun; either way it says what happened.
    assert "rank 0: another process of this launch stopped" in err
    assert "run the same command again to resume" in err
    assert (latest_checkpoint(run) / "model.safetensors").is_file()  # what was saved is intact


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    parent = {int(c): int(p) for c, p in zip(out[::2], out[1::2])}
    found, frontier = [], {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier}
        found += frontier
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_more_processes_than_frames_is_refused(tmp_path, dataset):
    from smolvla_kit.train import Processes, TrainConfig, _train

    many = Processes(rank=0, world=100_000)
    cfg = TrainConfig(dataset=dataset, out=tmp_path / "run", steps=2, batch_size=100_000, num_threads=1, progress=False)
    with pytest.raises(ValueError, match="fewer than the 100000 processes launched"):
        _train(cfg, many, torch.device("cpu"), None)
