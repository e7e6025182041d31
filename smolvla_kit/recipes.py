"""Named recipes: each says, in one place, everything about a run that differs from the kit's defaults.

A recipe has four parts: the demonstrations to record (`CollectConfig` fields), the training (`TrainConfig`
fields), the policy's own settings for a fresh preset (`SmolVLAConfig` fields such as the sampler's
`n_action_steps`, `samples_per_chunk` and `num_steps`; they travel in the checkpoint, so `eval`, `policy-server`
and `deploy` use them without flags) and the evaluation (`EvalConfig` fields). Whatever a recipe does not name is
the dataclass default, and the defaults are the best settings the kit has measured; the recipes mostly set
budgets. Every command that runs one takes its name, and explicit flags still win:

    smolvla-kit demo                                    # the `pick-place` recipe: collect, train, evaluate, report
    smolvla-kit collect --recipe pick-place --out data  # only its demonstrations
    smolvla-kit train --recipe pick-place --dataset data --out run --max-minutes 10   # its training, shorter
    python benchmarks/learning_curve.py --recipe pick-place

A training run records the recipe's name and every resolved setting in its checkpoints
(`training_state.json`). The figures quoted below come from `benchmarks/results/` (`benchmarks/README.md`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from smolvla_kit.collect import CollectConfig
from smolvla_kit.errors import InputError
from smolvla_kit.evaluate import EvalConfig
from smolvla_kit.train import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """Settings that differ from the defaults, per stage; see the module docstring."""

    name: str
    about: str
    """What it is for and what it costs, in a line or two (`smolvla-kit demo --help` lists them)."""
    collect: dict[str, Any] = field(default_factory=dict)
    """CollectConfig fields."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields."""
    policy: dict[str, Any] = field(default_factory=dict)
    """SmolVLAConfig fields of a fresh policy (joined to `TrainConfig.policy_overrides`)."""
    evaluate: dict[str, Any] = field(default_factory=dict)
    """EvalConfig fields."""

    def collect_config(self, **explicit: Any) -> CollectConfig:
        """The recording this recipe asks for; `explicit` fields (an output folder, flags) win."""
        return CollectConfig(**{**self.collect, **explicit})

    def train_config(self, **explicit: Any) -> TrainConfig:
        """The training this recipe asks for; `explicit` fields win, and policy overrides are merged."""
        overrides = {**self.policy, **self.train.get("policy_overrides", {}), **explicit.pop("policy_overrides", {})}
        return TrainConfig(**{**self.train, "recipe": self.name, **explicit, "policy_overrides": overrides})

    def eval_config(self, **explicit: Any) -> EvalConfig:
        """The evaluation this recipe asks for (on the task it records); `explicit` fields win."""
        task = {"task": self.collect["task"]} if "task" in self.collect else {}
        return EvalConfig(**{**task, **self.evaluate, **explicit})


PICK_PLACE = Recipe(
    name="pick-place",
    about="The demo: 1,000 demonstrations (500 scenes, each once per cube colour; 8 min on 2 cores), 25 minutes of "
          "training, 50 held-out episodes.",
    collect={"episodes": 1000},
    train={"max_minutes": 25.0},
    evaluate={"episodes": 25},
)

SHIPPED = replace(
    PICK_PLACE,  # the same demonstrations and evaluation; a step count instead of a clock
    name="shipped",
    about="How kit:nano-pick-place was trained: the demo's 1,000 demonstrations and 10,000 steps of the default "
          "13,500-step schedule, however long they take (22 minutes on 2 cores).",
    train={"stop_at": 10_000},
)

COURSE = Recipe(
    name="course",
    about="Notebooks 01 and 04: 100 demonstrations (1 min) and 3,000 steps (7 min on 2 cores) - a policy that moves "
          "with purpose but seldom finishes the task; notebook 05 compares it with the shipped one.",
    collect={"episodes": 100},
    train={"steps": 3000, "save_every": 500},
    evaluate={"episodes": 5},
)

QUICK = Recipe(
    name="quick",
    about="Every stage on tiny budgets, about a minute in all: what CI and the notebooks' CI mode run. It checks "
          "that the pipeline works, not that the policy learns.",
    collect={"episodes": 4},
    train={"steps": 40, "batch_size": 8, "save_every": 20, "log_every": 2},
    evaluate={"episodes": 1, "max_steps": 60, "videos": 1, "trajectories": 1},
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (PICK_PLACE, SHIPPED, COURSE, QUICK)}


def recipe(name: str) -> Recipe:
    """The recipe called `name`, or an error that lists the others."""
    if name not in RECIPES:
        raise InputError(f"No recipe called {name!r}; the kit has {', '.join(RECIPES)} (smolvla_kit/recipes.py).")
    return RECIPES[name]


__all__ = ["RECIPES", "Recipe", "recipe"]
