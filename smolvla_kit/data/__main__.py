"""Dataset maintenance from a shell: `python -m smolvla_kit.data <command> <dataset folder>`.

info             what the dataset holds (version, fps, features, episodes, tasks)
check            read every data file and open every video (--decode: decode every frame too)
recompute-stats  rebuild meta/stats.json (from per-episode stats; --from-data: from the data itself)
repair           after an interrupted recording: drop uncommitted files, rewrite info.json and stats.json
"""

from __future__ import annotations

import argparse
import sys

from .layout import DatasetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smolvla-kit data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("info", "summarise a dataset"),
        ("check", "read every file of a dataset"),
        ("recompute-stats", "rebuild meta/stats.json"),
        ("repair", "clean up after an interrupted recording"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("root", help="dataset folder (holds meta/info.json)")
        if name == "check":
            p.add_argument("--decode", action="store_true", help="decode every video frame too")
        if name == "recompute-stats":
            p.add_argument("--from-data", action="store_true", help="recompute from the rows and videos")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            from .reader import LeRobotDatasetReader

            r = LeRobotDatasetReader(args.root, cache_mb=0)
            m = r.meta
            print(f"{r.root}: LeRobot {m.version}, robot {m.robot_type}, {m.fps} fps")
            print(f"  {r.num_episodes} episodes, {r.num_frames} frames, {len(m.tasks)} tasks")
            for key, ft in m.features.items():
                print(f"  {key:32s} {ft['dtype']:8s} {list(ft['shape'])}")
            for i, t in enumerate(m.tasks[:10]):
                print(f"  task {i}: {t}")
        elif args.command == "check":
            from .reader import LeRobotDatasetReader

            r = LeRobotDatasetReader(args.root, cache_mb=0)
            r.verify(decode=args.decode)
            r.meta.stats  # noqa: B018 - raises if missing or malformed
            print(f"{r.root}: OK ({r.num_episodes} episodes, {r.num_frames} frames)")
        elif args.command == "recompute-stats":
            from .writer import recompute_stats

            stats = recompute_stats(args.root, from_data=args.from_data)
            print(f"{args.root}: wrote meta/stats.json ({len(stats)} features)")
        elif args.command == "repair":
            from .writer import repair

            n = repair(args.root)
            print(f"{args.root}: {n} committed episodes; info.json and stats.json are up to date")
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
