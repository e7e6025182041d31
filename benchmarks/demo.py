"""The README's first command, timed whole: `smolvla-kit demo` from an empty folder, as a new user runs it.

    python benchmarks/demo.py                      # the `pick-place` recipe (about 35 minutes on 2 cores)
    python benchmarks/demo.py --recipe quick       # a one-minute smoke test (writes demo_quick.json)

Runs the command in a subprocess, records the wall-clock time of the whole, the minutes of each stage, the
recipe, the training steps reached and the held-out success with the policy's default sampler (the demo's own
`report.json`). The success figure is on the demo's held-out scenes (`HELD_OUT_SEED_START` upwards), which no
recipe was chosen on. Results go to `benchmarks/results/demo.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import RESULTS_DIR, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="pick-place")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo_benchmark"),
                        help="emptied first: the demo must run from nothing")
    args = parser.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "smolvla_kit.cli", "demo", "--recipe", args.recipe, "--out", str(args.out)],
                   check=True)
    wall_minutes = (time.perf_counter() - t0) / 60
    report = json.loads((args.out / "report.json").read_text())
    evaluation = report["evaluation"]
    name = "demo" if args.recipe == "pick-place" else f"demo_{args.recipe}"
    earlier = []
    previous = RESULTS_DIR / f"{name}.json"
    if previous.exists():  # keep the history of this file's runs
        old = json.loads(previous.read_text())
        earlier = old.get("earlier_runs", [])
        if "results" in old:  # a run of this script
            earlier.append({key: old[key] for key in ("date", "command", "machine", "results") if key in old})
        else:  # the file's older layout: a list of runs
            earlier.extend(old.get("runs", []))
    result = {
        "recipe": report["recipe"],
        "wall_minutes": wall_minutes,
        "minutes": report["minutes"],
        "episodes_recorded": report["data"]["episodes"],
        "frames": report["data"]["frames"],
        "training_steps": report["training_steps"],
        "final_loss": report["final_loss"],
        "success_rate": evaluation["success_rate"],
        "grasp_rate": evaluation["grasp_rate"],
        "wrong_cube_rate": evaluation["wrong_cube_rate"],
        "episodes": evaluation["episodes"],
        "seed_start": evaluation["seed_start"],
        "sampler": report["settings"]["sampler"],
        "sensitivity_deg": evaluation["sensitivity_deg"],
        "per_instruction": evaluation["per_instruction"],
        "settings": report["settings"],
    }
    print(f"{report['recipe']}: {wall_minutes:.1f} min in all (collect {report['minutes']['collect']:.1f}, train "
          f"{report['minutes']['train_stage']:.1f}, evaluate {report['minutes']['eval']:.1f}); "
          f"{report['training_steps']} steps; success {evaluation['success_rate']:.0%} of {evaluation['episodes']} "
          f"held-out episodes (grasped {evaluation['grasp_rate']:.0%}, wrong cube {evaluation['wrong_cube_rate']:.0%})")
    path = write_results(name, result, earlier_runs=earlier)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
