"""Learning curve: success rate of a recipe's policy on held-out scenes against training wall-clock time.

    python benchmarks/learning_curve.py --recipe pick-place          # the demo's recipe, scored at 3 points
    python benchmarks/learning_curve.py --recipe quick --evaluations 1 --eval-episodes 1   # a smoke test

1. Collects the recipe's demonstrations (timed separately; `--collect-FIELD` overrides a CollectConfig field).
2. Trains for the recipe's budget (`--FIELD` overrides a TrainConfig field), pausing at evenly spaced times (or
   steps, for a recipe without a time limit) to checkpoint. Evaluation time is not counted as training time.
3. Scores every checkpoint on held-out scenes with each sampler setting in `--samples-per-chunk` (default: one
   draw, and the policy's own setting), side by side on the same episodes. Each scene is played once per cube
   colour with the instruction naming it, so `success` needs the right cube and `wrong_cube` counts the other one
   landing in the bin (a policy that ignored the instruction would score about 50 % wrong).
4. Records how far the first chunk moves when the cameras show another scene and when the instruction names the
   other cube (`sensitivity_deg`): near 0 means the policy does not use that input yet.

The held-out scenes start at `VALIDATION_SEED_START`, the range recipes are chosen on; the figures the README
reports come from other ranges (`benchmarks/README.md`). Results go to `benchmarks/results/learning_curve.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import NANO_VARIANTS, nano_variant_overrides, print_table, write_results  # noqa: E402

COLUMNS = ["train_minutes", "steps", "samples_per_chunk", "success_rate", "grasp_rate", "wrong_cube_rate", "episodes"]


def main() -> None:
    from smolvla_kit.cli import add_recipe_argument
    from smolvla_kit.collect import VALIDATION_SEED_START, CollectConfig, collect
    from smolvla_kit.evaluate import EvalConfig, evaluate
    from smolvla_kit.flags import add_dataclass_arguments, explicit_values
    from smolvla_kit.recipes import recipe
    from smolvla_kit.runs import latest_checkpoint
    from smolvla_kit.train import TrainConfig, train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_argument(parser, default="pick-place")
    parser.add_argument("--work", type=Path, default=Path("outputs/learning_curve"), help="data and runs go here")
    parser.add_argument("--evaluations", type=int, default=3, help="checkpoints scored along the run")
    parser.add_argument("--samples-per-chunk", type=int, nargs="+", default=[1, None],
                        help="score each checkpoint with these numbers of averaged draws (0: the policy's own)")
    parser.add_argument("--variant", default="nano", choices=["nano", *NANO_VARIANTS],
                        help="another nano shape (benchmarks/common.py); results go to learning_curve_<variant>.json")
    add_dataclass_arguments(parser, TrainConfig, skip=("dataset", "out", "recipe", "stop_at", "progress"),
                            keep_defaults=False)
    add_dataclass_arguments(parser, CollectConfig, skip=("out", "progress"), prefix="collect-", keep_defaults=False)
    add_dataclass_arguments(parser, EvalConfig, skip=("checkpoint", "out", "samples_per_chunk", "progress", "videos",
                                                      "trajectories", "seed_start"),
                            prefix="eval-", keep_defaults=False)
    args = parser.parse_args()
    plan = recipe(args.recipe)
    samples_settings = [s or None for s in args.samples_per_chunk]

    data = args.work / "data"
    collect_cfg = plan.collect_config(out=data, progress=False, **explicit_values(args, CollectConfig, "collect-"))
    t0 = time.perf_counter()
    summary = collect(collect_cfg)
    collect_s = time.perf_counter() - t0
    print(f"collected {summary['episodes']} episodes / {summary['frames']} frames in {collect_s / 60:.1f} min")

    train_explicit = explicit_values(args, TrainConfig)
    if args.variant != "nano":
        train_explicit["policy_overrides"] = {**nano_variant_overrides(args.variant),
                                              **train_explicit.get("policy_overrides", {})}
    base = plan.train_config(dataset=data, out=args.work / "run", progress=False, **train_explicit)
    rows, resolved = [], None
    for k in range(1, args.evaluations + 1):
        if base.max_minutes:  # pause at evenly spaced training times
            point = dataclasses.replace(base, max_minutes=base.max_minutes * k / args.evaluations, save_every=10**9)
        else:  # or steps
            point = dataclasses.replace(base, stop_at=base.steps * k // args.evaluations, save_every=10**9)
        result = train(point)
        checkpoint = latest_checkpoint(args.work / "run")
        resolved = (checkpoint / "training_state.json").read_text()
        for samples in samples_settings:
            name = f"eval_{k}" + (f"_samples{samples}" if samples else "")
            ev = evaluate(plan.eval_config(checkpoint=checkpoint, out=args.work / name, samples_per_chunk=samples,
                                           seed_start=VALIDATION_SEED_START, videos=1, trajectories=1, progress=False,
                                           **explicit_values(args, EvalConfig, "eval-")))
            row = {
                "train_minutes": result["train_seconds"] / 60,
                "steps": result["steps"],
                "samples_per_chunk": ev["samples_per_chunk"],
                "success_rate": ev["success_rate"],
                "grasp_rate": ev["grasp_rate"],
                "wrong_cube_rate": ev["wrong_cube_rate"],
                "episodes": ev["episodes"],
                "per_instruction": {r["task"]: r["success_rate"] for r in ev["per_instruction"]},
                "sensitivity_deg": ev["sensitivity_deg"],
            }
            rows.append(row)
            print_table([row], COLUMNS)
        if result["steps"] >= base.steps:
            break

    print()
    print_table(rows, COLUMNS)
    path = write_results(
        "learning_curve" if args.variant == "nano" else f"learning_curve_{args.variant}",
        rows,
        recipe=plan.name,
        variant=args.variant,
        dataset={"episodes": summary["episodes"], "frames": summary["frames"], "collect_minutes": collect_s / 60,
                 "resumed_at": summary["resumed_at"], **dataclasses.asdict(collect_cfg), "out": str(collect_cfg.out)},
        train_settings=json.loads(resolved)["train_config"] if resolved else None,
        held_out_seed_start=VALIDATION_SEED_START,
        note="training wall-clock excludes evaluation; each scene played once per colour; validation seeds",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
