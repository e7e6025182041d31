"""Synchronous vs asynchronous inference, in simulation at real time, with added inference latency.

    python benchmarks/async_vs_sync.py --checkpoint outputs/train/nano/checkpoints/last --latency-ms 0 100 300

For each added latency a policy server process is started (`smolvla-kit policy-server`, one torch thread), and
the robot client drives the simulator (`SimRobot`) through the same loop `smolvla-kit deploy` uses, paced to the
wall clock at 30 Hz: a tick without an action (waiting for the policy) still lets 1/30 s of physics pass with the
arm holding its goal, as a real arm stands still. The latency the robot sees is the policy's real compute plus
the added delay (the server sleeps after each inference) plus the loopback transport.

Each (latency, mode) runs `--repeats` windows of `--duration-s` (60) wall-clock seconds, sync and async
alternating window by window; within a window episodes run back to back (episode i of window r uses seed
`seed_start + 1000 r + i`, the same seeds for both modes), each ending on success or after `--episode-time-s`.
Reported per (latency, mode): tasks completed per window (mean +- std), success rate over finished episodes,
mean completion time of successful episodes (and over the seeds both modes solved: a paired comparison),
executed actions per second, the share of ticks the arm stood waiting for the policy, the observation-to-chunk
round trip, the policy's compute, and loop overruns (ticks the 30 Hz loop started late, e.g. on a loaded machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402


def run_window(task: str, mode: str, server, image_size: int, duration_s: float, episode_time_s: float,
               seed_start: int, fps: float, threshold: float, aggregate: str) -> dict:
    """Episodes back to back for `duration_s` of wall clock in one mode against a running policy server."""
    from smolvla_kit.deploy.client import ClientConfig, RemotePolicy, RobotClient
    from smolvla_kit.deploy.robots import SimRobot
    from smolvla_kit.sim import make_env

    env = make_env(task, cameras=(), image_size=image_size, max_episode_steps=10**9)
    robot = SimRobot(env, image_size=image_size)
    robot.reset(seed=seed_start)
    client = RobotClient(robot, RemotePolicy(server.host, server.port),
                         ClientConfig(mode=mode, fps=fps, chunk_size_threshold=threshold, aggregate=aggregate))
    client.connect()
    episodes: list[dict[str, Any]] = []
    start = time.monotonic()
    i = 0
    while True:
        left = duration_s - (time.monotonic() - start)
        if left <= 0.5:
            break
        instruction = robot.reset(seed=seed_start + i)
        stats = client.run_episode(instruction, max_seconds=min(episode_time_s, left), is_done=robot.is_success)
        s = stats.summary()
        # an episode cut short by the end of the window (not by its own time limit) is unfinished
        s["finished"] = s["outcome"] == "success" or s["seconds"] >= episode_time_s - 1e-6
        s["seed"] = seed_start + i
        episodes.append(s)
        i += 1
    wall = time.monotonic() - start
    client.close()
    env.close()
    return {"wall_s": wall, "episodes": episodes}


def summarize(mode: str, latency: float, windows: list[dict]) -> dict:
    """One (latency, mode) condition over its windows."""
    episodes = [e for w in windows for e in w["episodes"]]
    finished = [e for e in episodes if e["finished"]]
    wins = [e for e in episodes if e["outcome"] == "success"]
    done = [sum(e["outcome"] == "success" for e in w["episodes"]) for w in windows]
    ticks = sum(e["ticks"] for e in episodes)
    return {
        "mode": mode,
        "added_latency_ms": latency,
        "windows": len(windows),
        "completed_per_window": done,
        "completed_per_window_mean": float(np.mean(done)),
        "completed_per_window_std": float(np.std(done)),
        "episodes": len(episodes),
        "finished": len(finished),
        "successes": len(wins),
        "success_rate": len(wins) / len(finished) if finished else None,
        "mean_completion_s": float(np.mean([e["seconds"] for e in wins])) if wins else None,
        "actions_per_s": sum(e["actions"] for e in episodes) / sum(w["wall_s"] for w in windows),
        "idle_share": sum(e["idle_ticks"] for e in episodes) / ticks if ticks else None,
        "overrun_share": sum(e["overruns"] for e in episodes) / ticks if ticks else None,
        "filtered": sum(e["filtered"] for e in episodes),
        "chunks": sum(e["chunks"] for e in episodes),
        "round_trip_ms_mean": _mean([e["round_trip_ms_mean"] for e in episodes]),
        "inference_ms_mean": _mean([e["inference_ms_mean"] for e in episodes]),
        "per_episode": [{k: e[k] for k in ("seed", "outcome", "seconds", "actions", "idle_ticks", "chunks",
                                           "filtered", "overruns", "finished")} for e in episodes],
    }


def _policy_settings(checkpoint: Path) -> dict:
    """Chunk settings and size of the checkpoint's policy (from its config.json)."""
    import json

    cfg = json.loads((checkpoint / "config.json").read_text()).get("config", {})
    return {k: cfg.get(k) for k in ("chunk_size", "n_action_steps", "num_steps", "image_size", "camera_names")}


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def paired_times(a: dict, b: dict) -> tuple[float | None, float | None, int]:
    """Mean completion time of the seeds both runs solved."""
    sa = {e["seed"]: e["seconds"] for e in a["per_episode"] if e["outcome"] == "success"}
    sb = {e["seed"]: e["seconds"] for e in b["per_episode"] if e["outcome"] == "success"}
    both = sorted(set(sa) & set(sb))
    if not both:
        return None, None, 0
    return float(np.mean([sa[s] for s in both])), float(np.mean([sb[s] for s in both])), len(both)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, type=Path, help="trained kit checkpoint (nano)")
    ap.add_argument("--task", default="pick_place", choices=["pick_place", "reach"], help="simulator task")
    ap.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 100.0, 300.0],
                    help="added inference latencies to compare (default: 0 100 300)")
    ap.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    ap.add_argument("--duration-s", type=float, default=60.0, help="wall clock of one window (default: 60)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="windows per (latency, mode), alternating modes (default: 1)")
    ap.add_argument("--episode-time-s", type=float, default=20.0, help="episode time limit (default: 20)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--chunk-size-threshold", type=float, default=0.7)
    ap.add_argument("--aggregate", default="weighted_average")
    ap.add_argument("--seed-start", type=int, default=None, help="first scene seed (default: held-out seeds)")
    ap.add_argument("--image-size", type=int, default=None, help="camera size (default: the training data's)")
    ap.add_argument("--server-threads", type=int, default=1, help="torch threads of the policy server")
    ap.add_argument("--note", default="", help="free text saved with the results (e.g. how the checkpoint was trained)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write the results file")
    args = ap.parse_args(argv)

    from smolvla_kit.collect import HELD_OUT_SEED_START
    from smolvla_kit.deploy.server import start_server_process
    from smolvla_kit import runs

    checkpoint = runs.resolve(args.checkpoint)
    image_size = args.image_size or runs.trained_image_size(checkpoint) or 128
    seed_start = HELD_OUT_SEED_START if args.seed_start is None else args.seed_start
    load_before = os.getloadavg()
    rows, results = [], []
    for latency in args.latency_ms:
        server = start_server_process(str(checkpoint), added_latency_ms=latency, num_threads=args.server_threads,
                                      seed=0, echo_stderr=False, extra_args=["--log-level", "WARNING"])
        windows: dict[str, list[dict]] = {m: [] for m in args.modes}
        try:
            for r in range(args.repeats):  # modes alternate window by window, on the same seeds
                for mode in args.modes:
                    print(f"latency +{latency:g} ms, {mode}, window {r + 1}/{args.repeats}: {args.duration_s:g} s",
                          file=sys.stderr, flush=True)
                    windows[mode].append(run_window(args.task, mode, server, image_size, args.duration_s,
                                                    args.episode_time_s, seed_start + 1000 * r, args.fps,
                                                    args.chunk_size_threshold, args.aggregate))
        finally:
            server.stop()
        by_mode = {m: summarize(m, latency, w) for m, w in windows.items()}
        results.extend(by_mode.values())
        if "sync" in by_mode and "async" in by_mode:
            ps, pa, n = paired_times(by_mode["sync"], by_mode["async"])
            by_mode["sync"]["paired_completion_s"], by_mode["async"]["paired_completion_s"] = ps, pa
            by_mode["sync"]["paired_n"] = by_mode["async"]["paired_n"] = n
        for mode, r in by_mode.items():
            rows.append({
                "latency+ms": latency,
                "mode": mode,
                f"done_per_{args.duration_s:g}s": (f"{r['completed_per_window_mean']:.1f} "
                                                   f"+- {r['completed_per_window_std']:.1f}"),
                "success": f"{r['success_rate']:.0%} of {r['finished']}" if r["success_rate"] is not None else "-",
                "mean_time_s": r["mean_completion_s"] if r["mean_completion_s"] is not None else "-",
                "paired_time_s": (f"{r['paired_completion_s']:.2f} (n={r['paired_n']})"
                                  if r.get("paired_completion_s") is not None else "-"),
                "actions/s": r["actions_per_s"],
                "idle": f"{r['idle_share']:.0%}" if r["idle_share"] is not None else "-",
                "rtt_ms": r["round_trip_ms_mean"] if r["round_trip_ms_mean"] is not None else "-",
                "infer_ms": r["inference_ms_mean"] if r["inference_ms_mean"] is not None else "-",
                "overruns": f"{r['overrun_share']:.1%}" if r["overrun_share"] is not None else "-",
            })
    load_after = os.getloadavg()
    print_table(rows, list(rows[0]))
    if not args.no_write:
        path = write_results(
            "async_vs_sync",
            results,
            table=rows,
            settings={
                "checkpoint": str(checkpoint),
                "task": args.task,
                "fps": args.fps,
                "duration_s": args.duration_s,
                "repeats": args.repeats,
                "episode_time_s": args.episode_time_s,
                "chunk_size_threshold": args.chunk_size_threshold,
                "aggregate": args.aggregate,
                "seed_start": seed_start,
                "image_size": image_size,
                "server_threads": args.server_threads,
                "policy": _policy_settings(checkpoint),
                "note": args.note,
            },
            load_average_before_after=[list(load_before), list(load_after)],
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
