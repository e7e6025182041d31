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
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Sequence

from smolvla_kit.errors import InputError, exit_code
from smolvla_kit.flags import add_dataclass_arguments, explicit_values

if TYPE_CHECKING:
    from smolvla_kit.deploy.client import ClientConfig
    from smolvla_kit.deploy.service import ServeConfig

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
            raise InputError(f"--cameras: {part!r} is not NAME=INDEX_OR_PATH (e.g. front=0,wrist=/dev/video2)")
        src = src.strip()
        cams[name.strip()] = CameraConfig(index_or_path=int(src) if src.isdigit() else src, width=image_size,
                                          height=image_size)
    return cams


def _parse_max_relative_target(text: str) -> float | list[float] | None:
    if text.lower() == "none":
        return None
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise InputError(f"--max-relative-target {text!r}: give degrees, one number or 6 comma-separated, or "
                         f"'none'") from None
    return parts[0] if len(parts) == 1 else parts


@dataclass
class DeployConfig:
    """Run a trained policy on an SO-101 follower (a real one on a serial port, or `--port virtual`)."""

    port: str
    """Serial port of the arm (/dev/ttyACM0), a virtual arm's pty, or 'virtual' for a simulated arm started here."""
    async_mode: bool = field(default=False, metadata={"flag": "--async"})
    """Asynchronous inference: a policy server process computes while the arm moves."""
    episodes: int = 1
    """Episodes to run."""
    task: str | None = None
    """Instruction, e.g. 'put the red cube in the bin' (required on a real arm; on the virtual arm it picks the cube
    by colour, else the simulator's own)."""
    max_relative_target: str = "15"
    """Largest move per action, degrees: one number, 6 comma-separated, or 'none'."""
    episode_time_s: float = 30.0
    """Episode time limit, seconds."""
    reset_time_s: float | None = None
    """Real arm: seconds to reset the scene between episodes (unset: wait for Enter)."""
    calibration: str = "so101"
    """Real arm: calibration id or JSON path."""
    cameras: str | None = None
    """Real arm: NAME=INDEX_OR_PATH,... named as the policy's cameras, e.g. front=0,wrist=2."""
    image_size: int | None = None
    """Camera image size (unset: the training data's, from the checkpoint, else 128)."""
    server: str | None = None
    """HOST:PORT of a running policy server (unset with --async: start one)."""
    sim_task: Literal["pick_place", "reach"] = "pick_place"
    """Virtual arm: simulator task."""
    seed: int | None = None
    """Virtual arm: first scene seed (unset: the held-out seeds)."""
    log_level: str = "INFO"
    """DEBUG, INFO or WARNING."""

    def check(self) -> None:
        if self.episodes < 1:
            raise InputError(f"--episodes must be >= 1, got {self.episodes}")
        if self.port != "virtual" and not self.task:
            raise InputError("--task is required on a real arm (the instruction the policy follows)")
        _parse_max_relative_target(self.max_relative_target)
        if self.server is not None and not self.server.rpartition(":")[2].isdigit():
            raise InputError(f"--server {self.server!r} is not HOST:PORT (e.g. 192.168.1.20:8765)")


# The policy's settings a deploy takes from ServeConfig: `seed` there would clash with the scene seed, and
# ClientConfig's n_action_steps already says how many actions of a chunk are played.
_SERVE_SKIP = ("n_action_steps", "seed")
# ClientConfig's mode is --async.
_CLIENT_SKIP = ("mode",)


def build_parser() -> argparse.ArgumentParser:
    """`smolvla-kit deploy`'s flags: the fields of DeployConfig, ServeConfig and ClientConfig."""
    from smolvla_kit.deploy.client import ClientConfig
    from smolvla_kit.deploy.service import ServeConfig

    ap = argparse.ArgumentParser(prog="smolvla-kit deploy", description=DeployConfig.__doc__,
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(ap.add_argument_group("the arm and the episodes"), DeployConfig)
    add_dataclass_arguments(ap.add_argument_group("the policy"), ServeConfig, skip=_SERVE_SKIP)
    add_dataclass_arguments(ap.add_argument_group("the robot loop"), ClientConfig, skip=_CLIENT_SKIP)
    return ap


def _color_from_task(task: str, colors: Sequence[str]) -> str:
    found = [c for c in colors if c in task.lower().split()]
    if len(found) != 1:
        raise InputError(f"--task {task!r} must name exactly one cube colour on the virtual table: {list(colors)}")
    return found[0]


def parse_args(argv: Sequence[str] | None = None) -> tuple[DeployConfig, ServeConfig, ClientConfig]:
    """`smolvla-kit deploy`'s flags -> the three settings objects `deploy` takes."""
    from smolvla_kit.deploy.client import ClientConfig
    from smolvla_kit.deploy.service import ServeConfig

    args = build_parser().parse_args(argv)
    cfg = DeployConfig(**explicit_values(args, DeployConfig))
    serve = ServeConfig(**explicit_values(args, ServeConfig, skip=_SERVE_SKIP))
    client = ClientConfig(mode="async" if cfg.async_mode else "sync",
                          **explicit_values(args, ClientConfig, skip=_CLIENT_SKIP))
    return cfg, serve, client


def main(argv: Sequence[str] | None = None) -> int:
    """`smolvla-kit deploy ...`; returns the exit code (0 done, 2 refused or stopped with the reason, 130 Ctrl-C)."""
    settings = parse_args(argv)
    return exit_code(lambda: deploy(*settings))


def deploy(cfg: DeployConfig, serve: ServeConfig, client_cfg: ClientConfig | None = None) -> int:
    """Run `cfg.episodes` episodes of `serve.checkpoint`'s policy on the arm; print how each went. The client runs
    as `client_cfg` says (its mode follows `cfg.async_mode`). Torque goes off at the end, on any error and on Ctrl-C."""
    from smolvla_kit import runs
    from smolvla_kit.collect import HELD_OUT_SEED_START
    from smolvla_kit.deploy.client import ClientConfig, LocalPolicy, RemotePolicy, RobotClient
    from smolvla_kit.deploy.robots import virtual_follower
    from smolvla_kit.deploy.server import start_server_process
    from smolvla_kit.robot.so101 import SO101Follower

    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg.check()
    client_cfg = replace(client_cfg or ClientConfig(), mode="async" if cfg.async_mode else "sync")
    client_cfg.validate()
    checkpoint = runs.resolve(serve.checkpoint)
    serve = replace(serve, checkpoint=str(checkpoint))
    image_size = cfg.image_size or runs.trained_image_size(checkpoint) or 128
    max_rel = _parse_max_relative_target(cfg.max_relative_target)
    virtual = cfg.port == "virtual"
    seed0 = HELD_OUT_SEED_START if cfg.seed is None else cfg.seed

    rig = None
    server = None
    link = None
    robot = None
    try:
        # -- the arm ----------------------------------------------------------------------------------------------
        if virtual:
            rig = virtual_follower(runs.camera_keys(checkpoint), image_size=image_size, sim_task=cfg.sim_task,
                                   seed=seed0, max_relative_target=max_rel)
            robot = rig.robot
            print(f"virtual SO-101 (MuJoCo, task {cfg.sim_task}) on {rig.arm.port}", file=sys.stderr)
        else:
            robot = SO101Follower(cfg.port, cfg.calibration, max_relative_target=max_rel,
                                  cameras=_parse_cameras(cfg.cameras, image_size))

        # -- the policy -------------------------------------------------------------------------------------------
        if cfg.server:
            host, _, port = cfg.server.rpartition(":")
            link = RemotePolicy(host or "127.0.0.1", int(port))
        elif cfg.async_mode:
            server = start_server_process(**asdict(serve), log_level=cfg.log_level)
            link = RemotePolicy(server.host, server.port)
            print(f"policy server started on {server.host}:{server.port} (pid {server.proc.pid})", file=sys.stderr)
        else:
            link = LocalPolicy(serve.service())

        # -- episodes ---------------------------------------------------------------------------------------------
        results = []
        with robot:  # torque on holding position; off on exit, error or Ctrl-C
            client = RobotClient(robot, link, client_cfg)
            info = client.connect()
            print(f"policy: chunk {info['chunk_size']}, {client_cfg.mode} mode"
                  + (f", threshold {client_cfg.chunk_size_threshold}, {client_cfg.aggregate}"
                     if client_cfg.mode == "async" else f", {client.actions_per_chunk()} actions per chunk"),
                  file=sys.stderr)
            for ep in range(cfg.episodes):
                if virtual:
                    env = rig.backend.env.unwrapped
                    color = _color_from_task(cfg.task, env.colors) if cfg.task else None
                    options = {"target_color": color} if color else {}
                    task = rig.arm.reset_scene(seed=seed0 + ep, **options)
                    is_done = rig.arm.scene_success
                else:
                    task = cfg.task
                    is_done = None
                    if ep > 0:
                        _wait_for_reset(cfg.reset_time_s)
                print(f"episode {ep + 1}/{cfg.episodes}: {task!r}", file=sys.stderr)
                stats = client.run_episode(task, max_seconds=cfg.episode_time_s, is_done=is_done)
                s = stats.summary()
                results.append(s)
                print(f"  {s['outcome']} after {s['seconds']:.1f} s: {s['actions']} actions, {s['chunks']} chunks, "
                      f"{s['filtered']} filtered, {s['idle_ticks']} idle ticks, "
                      f"round trip {_ms(s['round_trip_ms_mean'])}, {s['safety_limited']} actions clamped/capped by "
                      f"the safety rules", file=sys.stderr)
            server_stats = client.server_stats() if server is not None or cfg.server else None
        done = sum(r["outcome"] == "success" for r in results)
        if virtual:
            print(f"{done}/{len(results)} episodes succeeded")
        else:
            print(f"{len(results)} episodes run")
        if server_stats:
            print(f"policy server: {server_stats}")
        return 0
    except BaseException:
        if robot is not None:
            print("deploy stopped: torque is off.", file=sys.stderr)
        raise
    finally:
        if link is not None:
            link.close()
        if server is not None:
            server.stop()
        if rig is not None:
            rig.close()
        elif robot is not None and robot.is_connected:
            robot.disconnect()


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _wait_for_reset(reset_time_s: float | None) -> None:
    if reset_time_s is None:
        input("Reset the scene, then press Enter (the arm holds its position)... ")
    else:
        print(f"resetting: {reset_time_s:g} s", file=sys.stderr)
        time.sleep(reset_time_s)


__all__ = ["DeployConfig", "build_parser", "deploy", "main", "parse_args"]


if __name__ == "__main__":
    sys.exit(main())
