"""Helpers shared by the course notebooks: the CI switch, the course's recipe and which policy to study.

The notebooks run at full size on a laptop. In CI (`SMOLVLA_KIT_CI=1`, which `.ci/run` sets) they run the same
code on smaller budgets - fewer episodes, steps and pixels - so all of them finish in a few minutes. Budgets come
from named recipes (`smolvla_kit/recipes.py`): `course` on a laptop, `quick` in CI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def ci_mode() -> bool:
    """True when the notebooks should run their small CI budgets."""
    return os.environ.get("SMOLVLA_KIT_CI", "").strip() not in ("", "0", "false", "False")


def budget(full: T, ci: T) -> T:
    """`full` on a student's machine, `ci` under CI."""
    return ci if ci_mode() else full


def course_recipe():
    """The recipe notebooks 01 and 04 record and train with: `course`, or `quick` in CI."""
    from smolvla_kit.recipes import recipe

    return recipe(budget("course", "quick"))


def run_progress(run: Path) -> tuple[int, int] | None:
    """(steps done, steps planned) of the training run in `run`, from its last checkpoint; None if it has none."""
    from smolvla_kit.runs import latest_checkpoint

    last = latest_checkpoint(run)
    if last is None:
        return None
    state = json.loads((last / "training_state.json").read_text())
    return int(state["step"]), int(state["train_config"]["steps"])


def describe_run(run: Path, planned: int) -> str:
    """What a notebook about to train into `run` will do: start, or continue an earlier run - said, not silent."""
    progress = run_progress(run)
    if progress is None:
        return f"starting a new run in {run} ({planned} steps)"
    done, total = progress
    if total != planned:
        return (f"{run} holds a run planned for {total} steps, not {planned}: continuing it changes its learning-rate "
                f"schedule from step {done} on. Delete {run} to start over instead.")
    if done >= total:
        return f"{run} already holds the finished run ({done} steps): nothing to train. Delete it to train again."
    return (f"{run} holds an unfinished run, stopped at step {done} of {total} (an earlier session was interrupted): "
            f"continuing it exactly where it stopped. Delete {run} to start over instead.")


def policy_to_study(run: Path) -> Path:
    """Notebook 04's policy if its run finished, else the policy the kit ships; prints which, and why."""
    from smolvla_kit.runs import latest_checkpoint
    from smolvla_kit.trained import NANO_PICK_PLACE

    progress = run_progress(run)
    if progress is not None and progress[0] >= progress[1]:
        print(f"using notebook 04's policy: {latest_checkpoint(run)}")
        return latest_checkpoint(run)
    why = ("notebook 04 has not trained one yet" if progress is None else
           f"notebook 04's run stopped at step {progress[0]} of {progress[1]}; run 04 again to finish it")
    print(f"using the policy the kit ships, kit:nano-pick-place ({why})")
    return NANO_PICK_PLACE


__all__ = ["budget", "ci_mode", "course_recipe", "describe_run", "policy_to_study", "run_progress"]
