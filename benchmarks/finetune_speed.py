"""Training throughput, one process against several (torchrun, DistributedDataParallel), `nano` and `base`.

    python benchmarks/finetune_speed.py                          # this machine's CPU: 1 vs 2 processes
    python benchmarks/finetune_speed.py --device cuda --processes 1 2 4 8   # on a GPU machine (adds CUDA rows)

Each row runs `smolvla-kit train` as a user would (through torchrun when processes > 1) on a simulated dataset the
script records first, for a few steps into a fresh run folder, and reads the run's own loss log: steps per second
between the first logged step and the last (so start-up and the first step's warm-up are left out), and samples per
second = steps/s x the batch. `batch_size` is the whole step's batch in every row (each process takes its share), so
the rows train the same run and compare like with like.

* `nano`: trained from scratch, batch 32, the kit's defaults (two noise draws, bfloat16 autocast where fast).
* `base`: smolvla_base's shape (450M parameters, random weights: no Hub here) fine-tuned as `--init-from` would:
  the SmolVLM backbone frozen, the expert trained, batch 8; on CUDA with the backbone held in bfloat16.
CPU rows use every core, shared among the processes. Results: benchmarks/results/finetune_speed.json (rows of
another device are kept).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS_DIR, print_table, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    "nano": {"batch": 32, "steps": 40, "args": ["--preset", "nano"]},
    "base": {"batch": 8, "steps": 6, "args": [
        "--preset", "base", "--camera-warmup-steps", "0", "--start-share", "0", "--lr", "1e-4",
        # The base preset's tokenizer is SmolVLM2's, from the Hub; the kit's own stands in (ids only index the table).
        "--policy-overrides", json.dumps({"tokenizer_name": "kit:nano", "train_expert_only": True,
                                          "freeze_vision_encoder": True}),
    ]},
}


def record_dataset(root: Path, episodes: int) -> None:
    sys.path.insert(0, str(REPO))
    from smolvla_kit.collect import CollectConfig, collect

    collect(CollectConfig(out=root, episodes=episodes, image_size=96, progress=False))


def run(model: str, processes: int, device: str, dataset: Path, out: Path) -> dict:
    spec = MODELS[model]
    args = ["-m", "smolvla_kit.cli", "train", "--dataset", str(dataset), "--out", str(out), *spec["args"],
            "--steps", str(spec["steps"]), "--batch-size", str(spec["batch"]), "--save-every", "100000",
            "--log-every", "1", "--no-progress", "--device", device]
    if device == "cuda" and model == "base":
        args += ["--mixed-precision", "--frozen-dtype", "bfloat16", "--loader-workers", "4"]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *args]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{model} x{processes} failed:\n{proc.stderr[-4000:]}")
    with open(out / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    first, last = rows[0], rows[-1]
    steps = int(last["step"]) - int(first["step"])
    rate = steps / (float(last["elapsed_s"]) - float(first["elapsed_s"]))
    state = json.loads((out / "checkpoints" / f"step_{int(last['step']):06d}" / "training_state.json").read_text())
    return {"model": model, "device": device, "processes": processes, "batch": spec["batch"],
            "batch_per_process": state["launch"]["batch_per_process"],
            "mixed_precision": state["train_config"]["mixed_precision"],
            "steps_timed": steps, "steps_per_s": rate, "samples_per_s": rate * spec["batch"], "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--episodes", type=int, default=8, help="episodes to record for the runs")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "data"
        record_dataset(dataset, args.episodes)
        for model in args.models:
            for n in args.processes:
                rows.append(run(model, n, args.device, dataset, Path(tmp) / f"{model}-{n}"))
                print(f"{model} x{n}: {rows[-1]['steps_per_s']:.3g} steps/s", flush=True)
    for model in args.models:  # each row against one process of the same model, measured in this run
        one = next((r for r in rows if r["model"] == model and r["processes"] == 1), None)
        for r in rows:
            if one and r["model"] == model:
                r["speedup_vs_1_process"] = r["steps_per_s"] / one["steps_per_s"]
    print_table(rows, ["model", "device", "processes", "batch", "steps_per_s", "samples_per_s",
                       "speedup_vs_1_process", "mixed_precision"])
    old = RESULTS_DIR / "finetune_speed.json"
    kept = [r for r in json.loads(old.read_text())["results"] if r["device"] != args.device] if old.is_file() else []
    path = write_results("finetune_speed", kept + rows, note=(
        "steps/s from the run's own loss log between its first and last logged step; batch is the whole step's "
        "batch, shared among the processes; on this 2-core CPU machine one process uses both cores and two use one "
        "each, so the CPU rows show what the launch costs, not a gain."))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
