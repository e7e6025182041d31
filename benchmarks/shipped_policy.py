"""The policy the kit ships, played as a user plays it: `smolvla-kit eval --checkpoint kit:nano-pick-place` with
every setting at its default (the sampler settings its checkpoint carries).

    python benchmarks/shipped_policy.py                  # 25 scenes x 2 colours from seed 30,000,000
    python benchmarks/shipped_policy.py --episodes 5     # a quick look

The scenes come from a range that no benchmark, test or recipe choice has looked at (recipes are chosen on
10,000,000.., the demo and `eval` report from 20,000,000.., the tests use a few scenes there). Results go to
`benchmarks/results/shipped_policy.json`, with the checkpoint's fingerprint.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import write_results  # noqa: E402

SHIPPED_REPORT_SEED_START = 30_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="kit:nano-pick-place")
    parser.add_argument("--episodes", type=int, default=25, help="scenes, each played once per cube colour")
    parser.add_argument("--seed-start", type=int, default=SHIPPED_REPORT_SEED_START)
    parser.add_argument("--out", type=Path, default=Path("outputs/shipped_policy"))
    args = parser.parse_args()

    from smolvla_kit.evaluate import EvalConfig, evaluate, format_table
    from smolvla_kit import runs

    folder = runs.resolve(args.checkpoint)
    t0 = time.perf_counter()
    summary = evaluate(EvalConfig(checkpoint=args.checkpoint, out=args.out, episodes=args.episodes,
                                  seed_start=args.seed_start))
    minutes = (time.perf_counter() - t0) / 60
    print(format_table(summary))
    result = {
        "checkpoint": args.checkpoint,
        "model_sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
        "seed_start": args.seed_start,
        "seeds": [args.seed_start, args.seed_start + args.episodes - 1],
        "success_rate": summary["success_rate"],
        "grasp_rate": summary["grasp_rate"],
        "wrong_cube_rate": summary["wrong_cube_rate"],
        "episodes": summary["episodes"],
        "mean_success_seconds": summary["mean_success_seconds"],
        "sampler": {k: summary[k] for k in ("n_action_steps", "num_steps", "samples_per_chunk")},
        "per_instruction": summary["per_instruction"],
        "sensitivity_deg": summary["sensitivity_deg"],
        "eval_minutes": minutes,
    }
    path = write_results("shipped_policy", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
