"""Every command's flags come from a settings dataclass, and a dataclass written back as flags parses to itself."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from smolvla_kit.deploy.client import ClientConfig
from smolvla_kit.deploy.run import DeployConfig
from smolvla_kit.deploy.run import build_parser as deploy_parser
from smolvla_kit.deploy.server import ServerConfig
from smolvla_kit.deploy.service import ServeConfig
from smolvla_kit.flags import add_dataclass_arguments, as_flags, explicit_values
from smolvla_kit.robot.virtual_arm import VirtualArmConfig
from smolvla_kit.train import TrainConfig

PACKAGE = Path(__file__).resolve().parents[1] / "smolvla_kit"


def parse(cls: type, argv: list[str]):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, cls)
    return cls(**explicit_values(parser.parse_args(argv), cls))


@pytest.mark.parametrize("config", [
    ServeConfig(checkpoint="kit:nano-pick-place", similarity_threshold=0.0, samples_per_chunk=4, dtype="bfloat16",
                seed=3),
    ServerConfig(host="0.0.0.0", port=0, hello_timeout_s=1.5, once=True),
    ClientConfig(mode="sync", fps=15.0, aggregate="latest_only", n_action_steps=10),
    DeployConfig(port="virtual", async_mode=True, task="put the red cube in the bin", sim_task="reach", seed=7),
    VirtualArmConfig(backend="mujoco", dead_motor=[3, 5], drop_rate=0.25),
    TrainConfig(dataset=Path("data"), steps=7, mixed_precision=False, policy_overrides={"chunk_size": 10},
                camera_map={"observation.images.front": "observation.images.top"}),
])
def test_a_config_written_as_flags_parses_back_to_itself(config):
    assert parse(type(config), as_flags(config)) == config


def test_defaults_and_repeated_flags():
    assert parse(VirtualArmConfig, []) == VirtualArmConfig()
    assert parse(VirtualArmConfig, ["--dead-motor", "3", "--dead-motor", "5"]).dead_motor == [3, 5]
    assert parse(VirtualArmConfig, []).dead_motor == []  # a fresh list each time, not argparse's shared default
    with pytest.raises(SystemExit):  # a required field is a required flag
        parse(ServeConfig, [])
    with pytest.raises(SystemExit):  # a Literal is a choice
        parse(ServeConfig, ["--checkpoint", "x", "--dtype", "float8"])


def test_deploy_takes_the_policy_and_client_settings_from_their_own_dataclasses():
    """`deploy` repeats no default: its flags are DeployConfig's, ServeConfig's and ClientConfig's fields."""
    flags = {a.dest: a.default for a in deploy_parser()._actions if a.dest != "help"}
    for cls, skip in ((DeployConfig, ()), (ServeConfig, ("n_action_steps", "seed")), (ClientConfig, ("mode",))):
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            assert f.name in flags, f.name
            if f.default is not dataclasses.MISSING:
                assert flags.pop(f.name) == f.default, f.name
            else:
                flags.pop(f.name)
    assert flags == {}


def test_a_deploy_flag_reaches_only_the_settings_it_belongs_to():
    """--seed is the scene's and --n-action-steps the client's: neither may also reach the served policy."""
    from smolvla_kit.deploy.run import parse_args

    cfg, serve, client = parse_args(["--port", "virtual", "--checkpoint", "kit:nano-pick-place", "--seed", "7",
                                     "--n-action-steps", "60", "--samples-per-chunk", "2", "--async"])
    assert (cfg.seed, client.n_action_steps, client.mode) == (7, 60, "async")
    assert (serve.seed, serve.n_action_steps, serve.samples_per_chunk) == (None, None, 2)


def test_no_command_writes_its_flags_by_hand():
    """add_argument is called in flags.py alone, and for the CLI's --recipe (a choice among recipes, not a field)."""
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
                calls.append(path.name)
    assert sorted(set(calls)) == ["cli.py", "flags.py"] and calls.count("cli.py") == 1
