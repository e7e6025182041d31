"""Named recipes and defaults: one source of truth for every run's settings, with explicit flags on top."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from smolvla_kit.collect import CollectConfig
from smolvla_kit.evaluate import EvalConfig
from smolvla_kit.policy import SmolVLAConfig
from smolvla_kit.recipes import RECIPES, recipe
from smolvla_kit.train import START_DEFAULTS, TrainConfig


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_names_real_fields_and_builds_runnable_settings(name):
    plan = recipe(name)
    for section, cls in ((plan.collect, CollectConfig), (plan.train, TrainConfig), (plan.evaluate, EvalConfig),
                         (plan.policy, SmolVLAConfig)):
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        assert not unknown, f"recipe {name} sets {unknown}, which {cls.__name__} does not have"
    train = plan.train_config().resolved()  # checked: a recipe that cannot run fails here
    assert train.recipe == name
    SmolVLAConfig.preset(train.preset, **train.policy_overrides)
    assert plan.collect_config().episodes >= 2 and plan.eval_config().episodes >= 1


def test_explicit_settings_win_over_the_recipe_and_policy_settings_merge():
    plan = recipe("quick")
    cfg = plan.train_config(steps=7, policy_overrides={"num_steps": 4})
    assert cfg.steps == 7 and cfg.batch_size == plan.train["batch_size"]
    assert cfg.policy_overrides["num_steps"] == 4
    assert plan.collect_config(episodes=9).episodes == 9
    assert plan.eval_config(episodes=3).episodes == 3 and plan.eval_config().max_steps == plan.evaluate["max_steps"]
    with pytest.raises(ValueError, match=r"No recipe called 'fast'; the kit has pick-place, .*quick"):
        recipe("fast")


def test_defaults_are_the_measured_best_and_depend_on_where_the_weights_start():
    scratch = TrainConfig().resolved()
    for name, value in START_DEFAULTS["scratch"].items():
        assert getattr(scratch, name) == value
    assert (scratch.noise_samples, scratch.played_weight, scratch.ema_decay) == (2, 3.0, 0.999)
    assert CollectConfig().every_colour and CollectConfig().image_size == 96
    fine_tune = TrainConfig(init_from="lerobot/smolvla_base").resolved()
    for name, value in START_DEFAULTS["init_from"].items():
        assert getattr(fine_tune, name) == value
    short = TrainConfig(steps=400).resolved()  # the derived budgets shrink with a short run
    assert short.camera_warmup_steps == 100 and short.warmup_steps == 40
    assert TrainConfig(lr=5e-4, camera_warmup_steps=0).resolved().lr == 5e-4
    with pytest.raises(ValueError, match=r"camera warm-up \(500 steps\) would take the whole run of 400 steps"):
        TrainConfig(steps=400, camera_warmup_steps=500).resolved()
    with pytest.raises(ValueError, match="steps and batch_size must be at least 1"):
        TrainConfig(steps=-5).resolved()
    # nano averages draws by default and carries that in its config; base keeps SmolVLA's single draw.
    assert SmolVLAConfig.preset("nano").samples_per_chunk > 1 and SmolVLAConfig.preset("base").samples_per_chunk == 1


def test_the_policy_config_holds_no_training_schedule():
    names = {f.name for f in dataclasses.fields(SmolVLAConfig)}
    assert not {n for n in names if n.startswith(("optimizer_", "scheduler_"))}
    # A config written with them (LeRobot's, or an older kit checkpoint) still loads, with them set aside.
    old = {**SmolVLAConfig.preset("nano").to_dict(), "optimizer_lr": 3e-4, "scheduler_decay_steps": 5000}
    assert SmolVLAConfig.from_dict(old) == SmolVLAConfig.preset("nano")
    with pytest.raises(ValueError, match="Unknown field"):
        SmolVLAConfig.from_dict({**old, "optimiser_lr": 1.0})


def test_cli_collect_and_train_take_a_recipe_and_record_the_resolved_settings(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    cli = [sys.executable, "-m", "smolvla_kit.cli"]
    done = subprocess.run([*cli, "collect", "--recipe", "quick", "--out", str(data), "--image-size", "32",
                           "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["episodes"] == recipe("quick").collect["episodes"]
    done = subprocess.run([*cli, "train", "--recipe", "quick", "--dataset", str(data), "--out", str(run), "--steps",
                           "6", "--num-threads", "1", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    state = json.loads((Path(summary["checkpoint"]) / "training_state.json").read_text())
    settings = state["train_config"]
    assert settings["recipe"] == "quick" and settings["steps"] == 6  # the flag won
    assert settings["batch_size"] == recipe("quick").train["batch_size"]  # the recipe filled the rest
    assert settings["lr"] == START_DEFAULTS["scratch"]["lr"] and settings["camera_warmup_steps"] == 1  # resolved
    assert isinstance(settings["mixed_precision"], bool)
    done = subprocess.run([*cli, "train", "--recipe", "nope", "--dataset", str(data)], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice: 'nope'" in done.stderr
