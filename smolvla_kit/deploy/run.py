"""`smolvla-kit deploy`: run a trained policy on an SO-101, real or virtual, synchronously or asynchronously.

    smolvla-kit deploy --port /dev/ttyACM0 --checkpoint CKPT --cameras front=0,wrist=2 \\
        --task "put the red cube in the bin" --episodes 5
    smolvla-kit deploy --port virtual --checkpoint CKPT --async --episodes 3      # the simulated arm

* `--port virtual` starts a :class:`VirtualSO101` with the MuJoCo backend in this process: the real driver talks
  to it over a pty, its cameras are rendered by the simulator, and success is read from the simulator.
* Without `--async` the policy runs in this process and the robot waits for each chunk (synchronous).
  With `--async` a policy server process is started (or `--server HOST:PORT` is used) and the robot keeps
  executing while the server computes the next chunk.
* All the driver's safety rules stay on (joint limits, `--max-relative-target` per action, the watchdog); torque
  goes off at the end, on any error, and on Ctrl-C. If the policy server dies, the arm holds position and torque
  goes off.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from smolvla_kit.vocabulary import CONTROL_HZ

log = logging.getLogger("smolvla_kit.deploy")


def _parse_cameras(text: str | None, image_size: int) -> dict[str, Any]:
    """"front=0,wrist=/dev/video2" -> {name: CameraConfig}."""
    from smolvla_kit.robot.cameras import CameraConfig

    cams: dict[str, Any] = {}
    if not text:
        return cams
    for part in text.split(","):
        name, sep, src = part.partition("=")
        if not sep or not name.strip() or not src.strip():
            raise ValueError(f"--cameras: {part!r} is not NAME=INDEX_OR_PATH (e.g. front=0,wrist=/dev/video2)")
        src = src.strip()
        cams[name.strip()] = CameraConfig(index_or_path=int(src) if src.isdigit() else src, width=image_size,
                                          height=image_size)
    return cams


def _parse_max_relative_target(text: str) -> float | list[float] | None:
    if text.lower() == "none":
        return None
    parts = [float(p) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else parts


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="smolvla-kit deploy",
        description="Run a trained policy on an SO-101 follower (a real one on a serial port, or `--port virtual`).",
    )
    ap.add_argument("--port", required=True, help="serial port of the arm (/dev/ttyACM0), a virtual arm's pty, or "
                    "'virtual' for a simulated arm started here")
    ap.add_argument("--checkpoint", required=True, type=Path, help="kit checkpoint folder or a run's checkpoints/last")
    ap.add_argument("--async", dest="async_mode", action="store_true",
                    help="asynchronous inference: a policy server process computes while the arm moves")
    ap.add_argument("--episodes", type=int, default=1, help="episodes to run (default: 1)")
    ap.add_argument("--task", default=None, help="instruction, e.g. 'put the red cube in the bin' (required on a real "
                    "arm; on the virtual arm it picks the cube by colour, default: the simulator's own)")
    ap.add_argument("--fps", type=float, default=CONTROL_HZ, help=f"control rate (default: {CONTROL_HZ}, as in training)")
    ap.add_argument("--max-relative-target", default="15",
                    help="largest move per action, degrees: one number, 6 comma-separated, or 'none' (default: 15)")
    ap.add_argument("--episode-time-s", type=float, default=30.0, help="episode time limit, seconds (default: 30)")
    ap.add_argument("--reset-time-s", type=float, default=None,
                    help="real arm: seconds to reset the scene between episodes (default: wait for Enter)")
    ap.add_argument("--calibration", default="so101", help="real arm: calibration id or JSON path (default: so101)")
    ap.add_argument("--cameras", default=None, help="real arm: NAME=INDEX_OR_PATH,... named as the policy's cameras, "
                    "e.g. front=0,wrist=2")
    ap.add_argument("--image-size", type=int, default=None,
                    help="camera image size (default: the training data's, from the checkpoint, else 128)")
    ap.add_argument("--server", default=None, help="HOST:PORT of a running policy server (default: start one)")
    ap.add_argument("--chunk-size-threshold", type=float, default=0.7,
                    help="async: ask for a new chunk when the queue is down to this fraction (default: 0.7)")
    ap.add_argument("--aggregate", default="weighted_average",
                    choices=["weighted_average", "latest_only", "average", "conservative"],
                    help="async: how overlapping actions merge (default: weighted_average)")
    ap.add_argument("--n-action-steps", type=int, default=None,
                    help="sync: actions executed per chunk (default: the policy's)")
    ap.add_argument("--samples-per-chunk", type=int, default=None,
                    help="chunks drawn per observation and averaged (default: the policy's)")
    ap.add_argument("--similarity-threshold", type=float, default=1.0,
                    help="server skips observations within this joint distance (degrees) of the last processed one "
                    "unless the queue is empty; 0 = off (default: 1.0)")
    ap.add_argument("--sim-task", default="pick_place", choices=["pick_place", "reach"],
                    help="virtual arm: simulator task (default: pick_place)")
    ap.add_argument("--seed", type=int, default=None, help="virtual arm: first scene seed (default: held-out seeds)")
    ap.add_argument("--num-threads", type=int, default=1, help="torch threads for the policy (default: 1)")
    ap.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default: INFO)")
    return ap


def _color_from_task(task: str, colors: Sequence[str]) -> str:
    found = [c for c in colors if c in task.lower().split()]
    if len(found) != 1:
        raise ValueError(f"--task {task!r} must name exactly one cube colour on the virtual table: {list(colors)}")
    return found[0]


def main(argv: Sequence[str] | None = None) -> int:
    """`smolvla-kit deploy ...`; returns the exit code (0 ok, 1 error, 130 Ctrl-C)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _deploy(args)
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C): torque is off.", file=sys.stderr)
        return 130
    except Exception as e:  # a clear one-line reason rather than a traceback for the expected failures
        from smolvla_kit.deploy.client import PolicyServerError
        from smolvla_kit.robot.cameras import CameraError
        from smolvla_kit.robot.feetech import FeetechError
        from smolvla_kit.robot.so101 import RobotError

        if isinstance(e, (PolicyServerError, RobotError, FeetechError, CameraError, FileNotFoundError, ValueError)):
            print(f"deploy stopped: {e}\nTorque is off.",
                  file=sys.stderr)
            return 1
        raise


def _deploy(args: argparse.Namespace) -> int:
    import torch

    from smolvla_kit import runs
    from smolvla_kit.collect import HELD_OUT_SEED_START
    from smolvla_kit.deploy.client import ClientConfig, LocalPolicy, RemotePolicy, RobotClient
    from smolvla_kit.deploy.robots import virtual_follower
    from smolvla_kit.deploy.server import start_server_process
    from smolvla_kit.deploy.service import PolicyService, load_policy_for_serving
    from smolvla_kit.robot.so101 import SO101Follower

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    checkpoint = runs.resolve(args.checkpoint)
    image_size = args.image_size or runs.trained_image_size(checkpoint) or 128
    max_rel = _parse_max_relative_target(args.max_relative_target)
    virtual = args.port == "virtual"
    seed0 = HELD_OUT_SEED_START if args.seed is None else args.seed
    if not virtual and not args.task:
        raise ValueError("--task is required on a real arm (the instruction the policy follows)")

    rig = None
    server = None
    link = None
    try:
        # -- the arm ----------------------------------------------------------------------------------------------
        if virtual:
            rig = virtual_follower(runs.camera_keys(checkpoint), image_size=image_size, sim_task=args.sim_task,
                                   seed=seed0, max_relative_target=max_rel)
            robot = rig.robot
            print(f"virtual SO-101 (MuJoCo, task {args.sim_task}) on {rig.arm.port}", file=sys.stderr)
        else:
            robot = SO101Follower(args.port, args.calibration, max_relative_target=max_rel,
                                  cameras=_parse_cameras(args.cameras, image_size))

        # -- the policy -------------------------------------------------------------------------------------------
        if args.server:
            host, _, port = args.server.rpartition(":")
            link = RemotePolicy(host or "127.0.0.1", int(port))
        elif args.async_mode:
            extra = [] if args.samples_per_chunk is None else ["--samples-per-chunk", str(args.samples_per_chunk)]
            server = start_server_process(str(checkpoint), port=0, similarity_threshold=args.similarity_threshold,
                                          num_threads=args.num_threads, extra_args=extra)
            link = RemotePolicy(server.host, server.port)
            print(f"policy server started on {server.host}:{server.port} (pid {server.proc.pid})", file=sys.stderr)
        else:
            torch.set_num_threads(args.num_threads)
            policy = load_policy_for_serving(str(checkpoint), samples_per_chunk=args.samples_per_chunk)
            link = LocalPolicy(PolicyService(policy, checkpoint=str(checkpoint),
                                             similarity_threshold=args.similarity_threshold))
        cfg = ClientConfig(mode="async" if args.async_mode else "sync", fps=args.fps,
                           chunk_size_threshold=args.chunk_size_threshold, aggregate=args.aggregate,
                           n_action_steps=args.n_action_steps)

        # -- episodes ---------------------------------------------------------------------------------------------
        results = []
        with robot:  # torque on holding position; off on exit, error or Ctrl-C
            client = RobotClient(robot, link, cfg)
            info = client.connect()
            print(f"policy: chunk {info['chunk_size']}, {cfg.mode} mode"
                  + (f", threshold {cfg.chunk_size_threshold}, {cfg.aggregate}" if cfg.mode == "async" else
                     f", {client.actions_per_chunk()} actions per chunk"), file=sys.stderr)
            for ep in range(args.episodes):
                if virtual:
                    env = rig.backend.env.unwrapped
                    color = _color_from_task(args.task, env.colors) if args.task else None
                    options = {"target_color": color} if color else {}
                    task = rig.arm.reset_scene(seed=seed0 + ep, **options)
                    is_done = rig.arm.scene_success
                else:
                    task = args.task
                    is_done = None
                    if ep > 0:
                        _wait_for_reset(args.reset_time_s)
                print(f"episode {ep + 1}/{args.episodes}: {task!r}", file=sys.stderr)
                stats = client.run_episode(task, max_seconds=args.episode_time_s, is_done=is_done)
                s = stats.summary()
                results.append(s)
                print(f"  {s['outcome']} after {s['seconds']:.1f} s: {s['actions']} actions, {s['chunks']} chunks, "
                      f"{s['filtered']} filtered, {s['idle_ticks']} idle ticks, "
                      f"round trip {_ms(s['round_trip_ms_mean'])}, {s['safety_limited']} actions clamped/capped by "
                      f"the safety rules", file=sys.stderr)
            server_stats = client.server_stats() if server is not None or args.server else None
        done = sum(r["outcome"] == "success" for r in results)
        if virtual:
            print(f"{done}/{len(results)} episodes succeeded")
        else:
            print(f"{len(results)} episodes run")
        if server_stats:
            print(f"policy server: {server_stats}")
        return 0
    finally:
        if link is not None:
            link.close()
        if server is not None:
            server.stop()
        if rig is not None:
            rig.close()
        elif "robot" in locals() and robot.is_connected:
            robot.disconnect()


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _wait_for_reset(reset_time_s: float | None) -> None:
    if reset_time_s is None:
        input("Reset the scene, then press Enter (the arm holds its position)... ")
    else:
        print(f"resetting: {reset_time_s:g} s", file=sys.stderr)
        time.sleep(reset_time_s)


__all__ = ["build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
