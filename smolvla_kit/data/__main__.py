"""Dataset maintenance from a shell: `smolvla-kit data <command> <dataset folder>`.

info             what the dataset holds (version, fps, features, episodes, tasks)
check            read every data file and open every video (--decode: decode every frame too); exit 1 on a problem
recompute-stats  rebuild meta/stats.json (from per-episode stats; --from-data: from the data itself)
repair           after an interrupted recording: drop uncommitted files, rewrite info.json and stats.json
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from smolvla_kit.errors import exit_code
from smolvla_kit.flags import add_dataclass_arguments, explicit_values

from .layout import DatasetError


@dataclass
class DatasetFolder:
    """Summarise a dataset."""

    root: Path = field(metadata={"positional": True})
    """Dataset folder (holds meta/info.json)."""


@dataclass
class CheckConfig(DatasetFolder):
    """Read every file of a dataset; exit 1 if one is missing or damaged."""

    decode: bool = False
    """Decode every video frame too."""


@dataclass
class RecomputeStatsConfig(DatasetFolder):
    """Rebuild meta/stats.json."""

    from_data: bool = False
    """Recompute from the rows and videos instead of the per-episode statistics."""


@dataclass
class RepairConfig(DatasetFolder):
    """Clean up after an interrupted recording."""


def info(cfg: DatasetFolder) -> int:
    from .reader import LeRobotDatasetReader

    r = LeRobotDatasetReader(cfg.root, cache_mb=0)
    m = r.meta
    print(f"{r.root}: LeRobot {m.version}, robot {m.robot_type}, {m.fps} fps")
    print(f"  {r.num_episodes} episodes, {r.num_frames} frames, {len(m.tasks)} tasks")
    for key, ft in m.features.items():
        print(f"  {key:32s} {ft['dtype']:8s} {list(ft['shape'])}")
    for i, t in enumerate(m.tasks[:10]):
        print(f"  task {i}: {t}")
    return 0


def check(cfg: CheckConfig) -> int:
    """0 when every file reads, 1 (with the problem on stderr) when one does not: the check's answer, not an error."""
    from .reader import LeRobotDatasetReader

    try:
        r = LeRobotDatasetReader(cfg.root, cache_mb=0)
        r.verify(decode=cfg.decode)
        r.meta.stats  # noqa: B018 - raises if missing or malformed
    except DatasetError as exc:
        print(f"{cfg.root}: PROBLEM: {exc}", file=sys.stderr)
        return 1
    print(f"{r.root}: OK ({r.num_episodes} episodes, {r.num_frames} frames)")
    return 0


def recompute(cfg: RecomputeStatsConfig) -> int:
    from .writer import recompute_stats

    stats = recompute_stats(cfg.root, from_data=cfg.from_data)
    print(f"{cfg.root}: wrote meta/stats.json ({len(stats)} features)")
    return 0


def repair_dataset(cfg: RepairConfig) -> int:
    from .writer import repair

    n = repair(cfg.root)
    print(f"{cfg.root}: {n} committed episodes; info.json and stats.json are up to date")
    return 0


COMMANDS: dict[str, tuple[type, Callable[..., int]]] = {
    "info": (DatasetFolder, info),
    "check": (CheckConfig, check),
    "recompute-stats": (RecomputeStatsConfig, recompute),
    "repair": (RepairConfig, repair_dataset),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smolvla-kit data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _) in COMMANDS.items():
        add_dataclass_arguments(sub.add_parser(name, help=cls.__doc__, description=cls.__doc__), cls)
    args = parser.parse_args(argv)
    cls, command = COMMANDS[args.command]
    return exit_code(lambda: command(cls(**explicit_values(args, cls))))


if __name__ == "__main__":
    sys.exit(main())
