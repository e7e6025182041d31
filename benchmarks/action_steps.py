"""Success against a sampler setting: `n_action_steps` (default) or `samples_per_chunk` (`--setting`).

    python benchmarks/action_steps.py --checkpoint outputs/learning_curve/run/checkpoints/last
    python benchmarks/action_steps.py --checkpoint RUN_A/checkpoints/last RUN_B/checkpoints/last --labels A B
    python benchmarks/action_steps.py --checkpoint kit:nano-pick-place --values 50 10 --episodes 5   # a quick look
    python benchmarks/action_steps.py --setting samples_per_chunk --values 1 32 --checkpoint RUN/checkpoints/last

`n_action_steps`: a chunk is 50 actions (1.7 s at 30 Hz). Playing all of it open-loop is cheapest; replanning sooner
lets the policy correct its own drift from what it sees, at one chunk prediction per `n_action_steps` actions.
`samples_per_chunk`: how many chunks the sampler draws from different noise and averages into the one it plays.
Each checkpoint is evaluated on the same held-out scenes (each played once per cube colour) for every value, with
the same seeded noise at the start of each episode; trajectories part as soon as the chunks differ, so small
differences are within the spread of 2 x `--episodes` episodes.
Results go to `benchmarks/results/action_steps.json` or `benchmarks/results/samples_per_chunk.json`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import print_table, write_results  # noqa: E402


SETTINGS = {"n_action_steps": [50, 25, 10, 5, 2], "samples_per_chunk": [1, 8, 32]}  # EvalConfig fields, defaults


def _evaluate_one(job: tuple[str, str, str, int, Path, int, int]) -> dict[str, Any]:
    from smolvla_kit.evaluate import EvalConfig, evaluate

    label, checkpoint, setting, n, out, episodes, seed_start = job
    t0 = time.perf_counter()
    summary = evaluate(EvalConfig(checkpoint=checkpoint, out=out, episodes=episodes, seed_start=seed_start,
                                  videos=0, trajectories=0, workers=1, num_threads=1, progress=False, **{setting: n}))
    return {
        "checkpoint": label,
        setting: n,
        "success_rate": summary["success_rate"],
        "grasp_rate": summary["grasp_rate"],
        "wrong_cube_rate": summary["wrong_cube_rate"],
        "episodes": summary["episodes"],
        "mean_success_seconds": summary["mean_success_seconds"],
        "eval_minutes": (time.perf_counter() - t0) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="checkpoint folders, checkpoints/last files, or kit:<name>")
    parser.add_argument("--labels", nargs="+", default=None, help="a name for each checkpoint in the table")
    parser.add_argument("--setting", choices=list(SETTINGS), default="n_action_steps", help="the setting varied")
    parser.add_argument("--values", type=int, nargs="+", default=None,
                        help=f"values of the setting (default: {SETTINGS})")
    parser.add_argument("--episodes", type=int, default=25, help="held-out scenes, each played once per colour")
    parser.add_argument("--seed-start", type=int, default=10_000_100)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="values evaluated at once")
    parser.add_argument("--out", type=Path, default=Path("outputs/action_steps"))
    args = parser.parse_args()
    values = args.values or SETTINGS[args.setting]

    from smolvla_kit import runs

    labels = args.labels or args.checkpoint
    if len(labels) != len(args.checkpoint):
        parser.error(f"--labels names {len(labels)} checkpoints, --checkpoint gives {len(args.checkpoint)}")
    jobs = [(label, str(runs.resolve(c)), args.setting, n, args.out / f"{k}_{args.setting}{n}", args.episodes,
             args.seed_start) for k, (label, c) in enumerate(zip(labels, args.checkpoint)) for n in values]
    if args.workers > 1:
        with mp.get_context("spawn").Pool(min(args.workers, len(jobs))) as pool:  # one torch thread each
            rows = pool.map(_evaluate_one, jobs)
    else:
        rows = [_evaluate_one(job) for job in jobs]

    columns = ["checkpoint", args.setting, "success_rate", "grasp_rate", "wrong_cube_rate", "episodes",
               "eval_minutes"]
    print_table(rows, columns)
    name = "action_steps" if args.setting == "n_action_steps" else args.setting
    path = write_results(name, rows, seed_start=args.seed_start,
                         note="each checkpoint on the same held-out scenes for every value, each scene played once "
                              "per colour")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
