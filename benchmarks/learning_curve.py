"""Learning curve: success rate of `nano` on held-out seeds against training wall-clock time.

    python benchmarks/learning_curve.py                       # 200 episodes, 20 min of training, 5 evaluations
    python benchmarks/learning_curve.py --train-minutes 5 --episodes 60 --eval-episodes 5   # a quick look

1. Collects scripted pick-and-place demonstrations with distractor cubes (timed separately).
2. Trains `nano` (or another shape, `--variant`) for `--train-minutes`, pausing at evenly spaced times to checkpoint.
3. Evaluates every checkpoint on held-out seeds; each scene is played once per cube colour with the instruction
   naming it, so `success` needs the right cube and `wrong_cube` counts the other one landing in the bin (a
   policy that ignored the instruction would score about 50 % wrong).
4. Records how far the first chunk moves when the cameras show another scene and when the instruction names the
   other cube (`sensitivity_deg`): near 0 means the policy does not use that input yet.

Evaluation time is not counted as training time. Results go to `benchmarks/results/learning_curve.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import NANO_VARIANTS, nano_variant_overrides, print_table, write_results  # noqa: E402

COLUMNS = ["train_minutes", "steps", "samples_per_chunk", "success_rate", "grasp_rate", "wrong_cube_rate", "episodes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("outputs/learning_curve"), help="data and runs go here")
    parser.add_argument("--task", default="pick_place")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--train-minutes", type=float, default=20.0)
    parser.add_argument("--evaluations", type=int, default=5, help="checkpoints evaluated along the run")
    parser.add_argument("--eval-episodes", type=int, default=10, help="held-out scenes per evaluation")
    parser.add_argument("--steps", type=int, default=6000, help="schedule length (training stops at the time limit)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128, help="camera resolution of the recorded dataset")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training (0: cores - 1)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (the preset's when unset)")
    parser.add_argument("--start-share", type=float, default=0.0, help="share of each batch from episode starts")
    parser.add_argument("--camera-warmup-steps", type=int, default=0,
                        help="first steps on episode starts with the state hidden (TrainConfig.camera_warmup_steps)")
    parser.add_argument("--chunk-size", type=int, default=None, help="actions per predicted chunk (the preset's 50)")
    parser.add_argument("--noise-samples", type=int, default=1,
                        help="noise draws per frame in the loss (TrainConfig.noise_samples)")
    parser.add_argument("--ema-decay", type=float, default=0.0,
                        help="evaluate a moving average of the weights (TrainConfig.ema_decay; 0: off)")
    parser.add_argument("--played-weight", type=float, default=1.0,
                        help="loss weight of the actions played from each chunk (TrainConfig.played_weight)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="bfloat16 autocast in training (TrainConfig.mixed_precision)")
    parser.add_argument("--samples-per-chunk", type=int, nargs="+", default=[None],
                        help="evaluate each checkpoint with these numbers of averaged chunks, side by side "
                             "(default: the policy's setting)")
    parser.add_argument("--every-colour", action="store_true",
                        help="record each scene once per cube colour named (CollectConfig.every_colour)")
    parser.add_argument("--variant", default="nano", choices=["nano", *NANO_VARIANTS],
                        help="another nano shape (benchmarks/common.py); results go to learning_curve_<variant>.json")
    args = parser.parse_args()

    from smolvla_kit.collect import CollectConfig, collect
    from smolvla_kit.evaluate import EvalConfig, evaluate
    from smolvla_kit.train import TrainConfig, cpu_threads, latest_checkpoint, train

    data = args.work / "data"
    t0 = time.perf_counter()
    summary = collect(CollectConfig(out=data, task=args.task, episodes=args.episodes, image_size=args.image_size,
                                    every_colour=args.every_colour, progress=False))
    collect_s = time.perf_counter() - t0
    print(f"collected {summary['episodes']} episodes / {summary['frames']} frames in {collect_s / 60:.1f} min")

    rows = []
    run = args.work / "run"
    for k in range(1, args.evaluations + 1):
        minutes = args.train_minutes * k / args.evaluations
        result = train(TrainConfig(dataset=data, out=run, steps=args.steps, batch_size=args.batch_size,
                                   max_minutes=minutes, save_every=10**9, num_threads=args.threads,
                                   lr=args.lr, start_share=args.start_share,
                                   camera_warmup_steps=args.camera_warmup_steps, chunk_size=args.chunk_size,
                                   noise_samples=args.noise_samples, ema_decay=args.ema_decay,
                                   mixed_precision=args.mixed_precision, played_weight=args.played_weight,
                                   policy_overrides=nano_variant_overrides(args.variant), progress=False))
        checkpoint = latest_checkpoint(run)
        for samples in args.samples_per_chunk:
            name = f"eval_{k}" if samples is None else f"eval_{k}_samples{samples}"
            ev = evaluate(EvalConfig(checkpoint=checkpoint, out=args.work / name, task=args.task,
                                     episodes=args.eval_episodes, samples_per_chunk=samples, videos=1, trajectories=1,
                                     progress=False))
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
        if result["steps"] >= args.steps:
            break

    print()
    print_table(rows, COLUMNS)
    path = write_results(
        "learning_curve" if args.variant == "nano" else f"learning_curve_{args.variant}",
        rows,
        task=args.task,
        variant=args.variant,
        dataset={"episodes": summary["episodes"], "frames": summary["frames"], "image_size": args.image_size,
                 "collect_minutes": collect_s / 60, "resumed_at": summary["resumed_at"],
                 "every_colour": args.every_colour},
        train_threads=cpu_threads(args.threads),
        note="training wall-clock excludes evaluation; held-out seeds from 10,000,000; each scene played once per colour",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
