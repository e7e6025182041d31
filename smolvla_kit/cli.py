"""The `smolvla-kit` command: each sub-command is one settings dataclass turned into flags.

    smolvla-kit demo [--recipe NAME]    collect -> train -> evaluate -> report (a recipe sets the budgets)
    smolvla-kit collect [--recipe NAME] record scripted demonstrations (LeRobot v3.0)
    smolvla-kit train --dataset DIR [--recipe NAME]   train a policy (resumes when re-run)
    smolvla-kit eval --checkpoint DIR   success rate on held-out seeds, videos, denoising traces
    smolvla-kit virtual-arm             a simulated SO-101 on a pseudo-terminal that speaks the Feetech protocol
    smolvla-kit calibrate --port PORT   calibrate a real arm (writes LeRobot's calibration JSON)
    smolvla-kit deploy --port PORT --checkpoint CKPT [--async]   run a policy on a real or virtual arm
    smolvla-kit policy-server --checkpoint CKPT   serve a policy for asynchronous inference
    smolvla-kit data info|check|recompute-stats|repair ROOT   look after a dataset

A flag's help text is the docstring written under the dataclass field it sets. With `--recipe NAME`, the named
recipe (smolvla_kit/recipes.py) fills every field the command line does not set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from smolvla_kit.errors import exit_code
from smolvla_kit.flags import add_dataclass_arguments, explicit_values


def add_recipe_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """`--recipe NAME`, with the kit's recipes listed at the end of --help."""
    from smolvla_kit.recipes import RECIPES

    parser.add_argument("--recipe", choices=list(RECIPES), default=default,
                        help="fill every setting not given on the command line from this named recipe "
                             f"(default: {default or 'none: the defaults shown'})")
    listing = "\n".join(f"  {r.name:<16} {r.about}" for r in RECIPES.values())
    parser.epilog = f"recipes (smolvla_kit/recipes.py):\n{listing}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


# ----------------------------------------------------------------------------------------------------------------


def _cmd_collect(args: argparse.Namespace) -> int:
    from smolvla_kit.collect import CollectConfig, collect
    from smolvla_kit.recipes import recipe

    explicit = explicit_values(args, CollectConfig)
    summary = collect(recipe(args.recipe).collect_config(**explicit) if args.recipe else CollectConfig(**explicit))
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from smolvla_kit.recipes import recipe
    from smolvla_kit.train import TrainConfig, train

    explicit = explicit_values(args, TrainConfig)
    summary = train(recipe(args.recipe).train_config(**explicit) if args.recipe else TrainConfig(**explicit))
    if os.environ.get("RANK", "0") == "0":  # one summary for a torchrun launch
        print(json.dumps(summary, indent=1))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from smolvla_kit.evaluate import EvalConfig, evaluate, format_table

    summary = evaluate(EvalConfig(**explicit_values(args, EvalConfig)))
    print(format_table(summary))
    print(f"results in {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from smolvla_kit.demo import DemoConfig, run_demo

    report = run_demo(DemoConfig(**explicit_values(args, DemoConfig)))
    print(f"report: {report}")
    return 0


def _cmd_virtual_arm(argv: list[str]) -> int:
    from smolvla_kit.robot.virtual_arm import run_virtual_arm

    return int(run_virtual_arm(argv) or 0)


def _cmd_calibrate(argv: list[str]) -> int:
    from smolvla_kit.robot.so101 import run_calibrate

    return int(run_calibrate(argv) or 0)


def _cmd_deploy(argv: list[str]) -> int:
    from smolvla_kit.deploy.run import main as deploy_main

    return int(deploy_main(argv) or 0)


def _cmd_policy_server(argv: list[str]) -> int:
    from smolvla_kit.deploy.server import run_server

    return int(run_server(argv) or 0)


def _cmd_data(argv: list[str]) -> int:
    from smolvla_kit.data.__main__ import main as data_main

    return int(data_main(argv) or 0)


# Commands whose parsers live beside their code (built from its dataclasses), so that the module, a notebook and
# `smolvla-kit` run the same entry point.
_PASSTHROUGH = {
    "virtual-arm": _cmd_virtual_arm,
    "calibrate": _cmd_calibrate,
    "deploy": _cmd_deploy,
    "policy-server": _cmd_policy_server,
    "data": _cmd_data,
}


def build_parser() -> argparse.ArgumentParser:
    from smolvla_kit.collect import CollectConfig
    from smolvla_kit.demo import DemoConfig
    from smolvla_kit.evaluate import EvalConfig
    from smolvla_kit.train import TrainConfig

    parser = argparse.ArgumentParser(prog="smolvla-kit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls, func, help_text in (
        ("demo", DemoConfig, _cmd_demo, "collect -> train nano -> evaluate -> report"),
        ("collect", CollectConfig, _cmd_collect, "record scripted demonstrations as a LeRobot v3.0 dataset"),
        ("train", TrainConfig, _cmd_train, "train a policy on a LeRobot dataset (re-run to resume)"),
        ("eval", EvalConfig, _cmd_eval, "evaluate a checkpoint in simulation on held-out seeds"),
    ):
        p = sub.add_parser(name, help=help_text, description=(cls.__doc__ or help_text))
        if name in ("collect", "train"):  # a recipe fills what the flags leave unset
            add_recipe_argument(p)
            add_dataclass_arguments(p, cls, skip=("recipe",), keep_defaults=False)
        elif name == "demo":
            add_recipe_argument(p, default=DemoConfig.recipe)
            add_dataclass_arguments(p, cls, skip=("recipe",))
        else:
            add_dataclass_arguments(p, cls)
        p.set_defaults(func=func)
    sub.add_parser("virtual-arm", help="a simulated SO-101 behind a pseudo-terminal (see its --help)", add_help=False)
    sub.add_parser("calibrate", help="calibrate a real SO-101 follower, LeRobot-compatible (see its --help)",
                   add_help=False)
    sub.add_parser("deploy", help="run a trained policy on a real or virtual SO-101, sync or async (see its --help)",
                   add_help=False)
    sub.add_parser("policy-server", help="serve a checkpoint to robot clients over TCP, for --async (see its --help)",
                   add_help=False)
    sub.add_parser("data", help="dataset maintenance: info, check, recompute-stats, repair (see its --help)",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`smolvla-kit ...`; returns the exit code (0 done, 2 a refused input with its message, 130 Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def dispatch() -> int:
        if argv and argv[0] in _PASSTHROUGH:
            return _PASSTHROUGH[argv[0]](argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)

    return exit_code(dispatch)


if __name__ == "__main__":
    sys.exit(main())
