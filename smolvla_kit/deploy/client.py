"""The robot client: a control loop at a fixed rate that executes queued actions and asks the policy for more.

    link = RemotePolicy("127.0.0.1", 8765)                     # or LocalPolicy(PolicyService(policy))
    client = RobotClient(robot, link, ClientConfig(mode="async"))
    client.connect()                                            # handshake: features checked by the server
    stats = client.run_episode("put the red cube in the bin", max_seconds=30)

Each tick (1 / fps seconds):

1. take in any reply from the policy: a chunk is merged into the action queue by timestep (`actions.py`),
   a "filtered" answer is counted and logged, an error stops the episode;
2. if no request is in flight and the queue has fallen to `chunk_size_threshold` x chunk, send the current
   observation (timestep = actions executed so far; `must_go` when the queue is empty);
3. execute the next queued action, or, when the queue is empty, stand still (the robot holds its last goal).

Synchronous and asynchronous inference are this same loop with two settings:

| mode  | send when the queue is          | actions kept per chunk | while the policy thinks      |
|-------|---------------------------------|------------------------|------------------------------|
| sync  | empty (threshold 0)             | n_action_steps         | the robot stands still       |
| async | <= threshold x chunk (0.7)      | the whole chunk        | the robot executes its queue |

If the server dies or stops answering, the client raises :class:`PolicyServerError` after making the robot hold
its position; whoever owns the robot then turns torque off (the `SO101Follower` context manager does).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from smolvla_kit.deploy.actions import ActionQueue, get_aggregator, should_send
from smolvla_kit.deploy.protocol import (
    DEFAULT_MAX_BYTES,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    ConnectionClosed,
    ProtocolError,
    message,
    recv_message,
    send_message,
)
from smolvla_kit.errors import InputError, KitError
from smolvla_kit.vocabulary import CONTROL_HZ, IMAGE_PREFIX, STATE_KEY

log = logging.getLogger("smolvla_kit.deploy.client")

PING_EVERY_S = 3.0  # an idle connection sends a ping this often, well inside the server's idle timeout


class PolicyServerError(KitError, RuntimeError):
    """The policy server refused us, died, or stopped answering; the message says which and what to do."""


class Robot(Protocol):
    """What the client drives: `SO101Follower`, or `SimRobot` for the simulator."""

    def get_observation(self) -> dict[str, np.ndarray]: ...

    def send_action(self, action: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------------------------
# Links to the policy: over TCP, or in this process
# ----------------------------------------------------------------------------------------------------------------


class RemotePolicy:
    """A connection to a policy server. Replies are read by a background thread and handed over by `poll()`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, connect_timeout_s: float = 10.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, ping_every_s: float = PING_EVERY_S,
                 token: str | None = None) -> None:
        self.host, self.port = host, port
        self.token = os.environ.get(TOKEN_ENV, "") if token is None else token
        self.ping_every_s = ping_every_s
        self.connect_timeout_s = connect_timeout_s
        self.max_bytes = max_bytes
        self.sock: socket.socket | None = None
        self._replies: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._closing = False
        self._send_lock = threading.Lock()  # the episode loop and the pinger share the socket
        self._last_send = time.monotonic()

    @property
    def where(self) -> str:
        return f"policy server at {self.host}:{self.port}"

    def hello(self, hello_msg: dict[str, Any]) -> dict[str, Any]:
        """Connect and shake hands; return the server's `ready` (or raise PolicyServerError)."""
        self._closing = False
        self._replies = queue.Queue()  # nothing from an earlier connection
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as e:
            raise PolicyServerError(
                f"cannot reach the {self.where}: {e}. Start it first (smolvla-kit policy-server --checkpoint CKPT "
                f"--port {self.port}) or check the address."
            ) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            send_message(self.sock, hello_msg, self.max_bytes)
            reply = recv_message(self.sock, self.max_bytes)
        except (OSError, ProtocolError, ConnectionClosed) as e:
            self.close()
            raise PolicyServerError(f"handshake with the {self.where} failed: {e}") from None
        if reply["type"] == "error":
            self.close()
            raise PolicyServerError(f"the {self.where} refused this robot ({reply['code']}): {reply['message']}")
        if reply["type"] != "ready":
            self.close()
            raise PolicyServerError(f"the {self.where} answered the hello with '{reply['type']}'")
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name="policy-replies", daemon=True)
        self._reader.start()
        threading.Thread(target=self._ping_loop, name="policy-ping", daemon=True).start()
        return reply

    def _ping_loop(self) -> None:
        # The server drops a client that stays silent (it may have vanished without closing); between episodes,
        # or while a person reads a prompt, this says the robot is still here.
        while not self._closing and self.sock is not None:
            time.sleep(min(0.25, self.ping_every_s / 4))
            if time.monotonic() - self._last_send >= self.ping_every_s:
                try:
                    self.send(message("ping"))
                except PolicyServerError:
                    return  # the reader reports the lost connection

    def _read_loop(self) -> None:
        sock, replies = self.sock, self._replies  # this connection's: a later one has its own
        try:
            while True:
                replies.put(recv_message(sock, self.max_bytes))
        except BaseException as e:  # noqa: BLE001 - every way of losing the server ends up as one error
            if not self._closing:
                replies.put(e)

    def send(self, msg: dict[str, Any]) -> None:
        if self.sock is None:
            raise PolicyServerError(f"not connected to the {self.where}")
        try:
            with self._send_lock:
                sock = self.sock
                if sock is None:
                    raise OSError("the connection was closed")
                send_message(sock, msg, self.max_bytes)
                self._last_send = time.monotonic()
        except OSError as e:
            raise PolicyServerError(f"lost the {self.where} while sending: {e}") from None

    def poll(self, timeout_s: float = 0.0) -> dict[str, Any] | None:
        """The next reply, or None if none arrives within `timeout_s`; raise if the connection is gone."""
        try:
            item = self._replies.get(timeout=timeout_s) if timeout_s > 0 else self._replies.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            self._replies.put(item)  # stays broken
            closed = isinstance(item, (ConnectionClosed, ConnectionResetError))
            what = "closed the connection" if closed else f"failed: {item!r}"
            raise PolicyServerError(f"the {self.where} {what} (did it crash or get stopped?)")
        return item

    def close(self) -> None:
        self._closing = True
        with self._send_lock:
            sock, self.sock = self.sock, None
        if sock is not None:
            try:
                send_message(sock, message("bye"), self.max_bytes)
            except OSError:
                pass
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class LocalPolicy:
    """The policy in this process, behind the same interface as :class:`RemotePolicy` (for synchronous deploys).

    Requests run on a worker thread, so the control loop keeps its rate while the model computes.
    """

    def __init__(self, service: Any) -> None:
        self.service = service
        self.where = "in-process policy"
        self._requests: queue.Queue = queue.Queue()
        self._replies: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None

    def hello(self, hello_msg: dict[str, Any]) -> dict[str, Any]:
        reply = self.service.handle(hello_msg)
        if reply["type"] == "error":
            raise PolicyServerError(f"the policy refused this robot ({reply['code']}): {reply['message']}")
        self._worker = threading.Thread(target=self._work, name="local-policy", daemon=True)
        self._worker.start()
        return reply

    def _work(self) -> None:
        while True:
            msg = self._requests.get()
            if msg is None:
                return
            try:
                reply = self.service.handle(msg)
            except BaseException as e:  # noqa: BLE001
                self._replies.put(e)
                return
            if reply is not None:
                self._replies.put(reply)

    def send(self, msg: dict[str, Any]) -> None:
        self._requests.put(msg)

    def poll(self, timeout_s: float = 0.0) -> dict[str, Any] | None:
        try:
            item = self._replies.get(timeout=timeout_s) if timeout_s > 0 else self._replies.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise PolicyServerError(f"the in-process policy failed: {item!r}") from item
        return item

    def close(self) -> None:
        self._requests.put(None)


# ----------------------------------------------------------------------------------------------------------------
# The control loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ClientConfig:
    """How the robot client runs."""

    mode: str = "async"
    """Either "async" (keep executing while the policy computes) or "sync" (wait for each chunk)."""
    fps: float = CONTROL_HZ
    """Control rate: one action per tick."""
    chunk_size_threshold: float = 0.7
    """async: send a new observation when the queue holds <= this x chunk_size actions (the paper's g)."""
    aggregate: str = "weighted_average"
    """How overlapping actions of two chunks merge: weighted_average, latest_only, average, conservative."""
    n_action_steps: int | None = None
    """sync: actions executed from each chunk (the policy's n_action_steps when None)."""
    reply_timeout_s: float = 10.0
    """A request unanswered for this long means the server is stuck: stop the robot and raise."""

    def validate(self) -> None:
        if self.mode not in ("sync", "async"):
            raise InputError(f"mode must be 'sync' or 'async', got {self.mode!r}")
        if not self.fps > 0:
            raise InputError(f"fps must be > 0, got {self.fps}")
        should_send(0, 1, self.chunk_size_threshold)  # range check
        get_aggregator(self.aggregate)
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise InputError(f"n_action_steps must be >= 1, got {self.n_action_steps}")


@dataclass
class EpisodeStats:
    """What happened in one episode (times in seconds, latencies in milliseconds)."""

    task: str = ""
    outcome: str = ""  # "success", "timeout", "max_steps", "stopped"
    seconds: float = 0.0
    ticks: int = 0
    actions: int = 0  # actions executed
    idle_ticks: int = 0  # ticks with no action to execute (waiting for the policy)
    requests: int = 0  # observations sent
    chunks: int = 0  # chunks received
    filtered: int = 0  # observations the server skipped (similarity filter)
    stale_dropped: int = 0  # chunk actions for timesteps already executed
    merged: int = 0  # chunk actions aggregated with queued ones
    overruns: int = 0  # ticks that started late (the loop could not keep the rate)
    late_replies: int = 0  # answers to the previous episode's last request (ignored)
    safety_limited: int = 0  # actions the robot's safety rules changed (joint limits, max relative target)
    round_trip_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    # The timeline, for plots: the queue length at each tick, and the ticks where requests left / replies came.
    queue_sizes: list[int] = field(default_factory=list)
    request_ticks: list[int] = field(default_factory=list)
    reply_ticks: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("queue_sizes", "request_ticks", "reply_ticks"):
            d.pop(key)
        for key in ("round_trip_ms", "inference_ms"):
            v = np.asarray(d.pop(key), dtype=np.float64)
            d[key + "_mean"] = float(v.mean()) if v.size else None
        return d


class RobotClient:
    """Drives a robot with a policy link (:class:`RemotePolicy` or :class:`LocalPolicy`).

    Args:
        robot: has `get_observation()` and `send_action(action)`; optional `idle()` is called on ticks without an
            action (the simulator advances time there; a real arm simply holds its goal) and `hold()` to stop.
        link: the policy.
        config: :class:`ClientConfig`.
        clock, sleep: the time source and the pacing function (the wall clock by default).
    """

    def __init__(self, robot: Any, link: Any, config: ClientConfig | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.robot = robot
        self.link = link
        self.config = config or ClientConfig()
        self.config.validate()
        self.clock, self.sleep = clock, sleep
        self.policy_info: dict[str, Any] | None = None
        self.queue = ActionQueue(self.config.aggregate)
        self.episode = -1  # episode counter sent with observations; replies for earlier episodes are ignored

    # -- handshake ----------------------------------------------------------------------------------------------

    def connect(self) -> dict[str, Any]:
        """Describe the robot's observation to the policy and get its settings back (raises on a mismatch)."""
        obs = self.robot.get_observation()
        state = np.asarray(obs[STATE_KEY])
        features = {
            "state_dim": int(state.shape[0]) if state.ndim == 1 else -1,
            "image_keys": [k for k in obs if k.startswith(IMAGE_PREFIX)],
            "image_shapes": {k: list(np.asarray(v).shape) for k, v in obs.items() if k.startswith(IMAGE_PREFIX)},
        }
        hello = message("hello", protocol=PROTOCOL_VERSION, client=f"robot-client pid {os.getpid()}",
                        features=features, mode=self.config.mode, token=getattr(self.link, "token", ""))
        ready = self.link.hello(hello)
        self.policy_info = ready["policy"]
        log.info("connected to %s: chunk %d, %s mode", getattr(self.link, "where", "policy"),
                 self.policy_info["chunk_size"], self.config.mode)
        return self.policy_info

    @property
    def chunk_size(self) -> int:
        return int(self.policy_info["chunk_size"])

    def actions_per_chunk(self) -> int:
        """Actions taken from each chunk: all of it (async), n_action_steps of it (sync)."""
        if self.config.mode == "async":
            return self.chunk_size
        n = self.config.n_action_steps or int(self.policy_info["n_action_steps"])
        return min(n, self.chunk_size)

    # -- one episode --------------------------------------------------------------------------------------------

    def _observation_message(self, obs: dict[str, Any], task: str, must_go: bool) -> dict[str, Any]:
        images = {k: np.ascontiguousarray(v, dtype=np.uint8) for k, v in obs.items() if k.startswith(IMAGE_PREFIX)}
        return message("observation", episode=self.episode, timestep=self.queue.next_timestep, timestamp=self.clock(),
                       state=np.asarray(obs[STATE_KEY], dtype=np.float32), images=images, task=task,
                       must_go=must_go)

    def _take_reply(self, reply: dict[str, Any], stats: EpisodeStats) -> bool:
        """Use one reply; False if it answered an earlier episode's request (ignored)."""
        kind = reply["type"]
        now = self.clock()
        if kind in ("actions", "filtered") and reply["episode"] != self.episode:
            stats.late_replies += 1
            return False
        if kind == "actions":
            chunk = reply["actions"]  # (T, A)
            if chunk.ndim != 2 or chunk.shape[0] < 1:
                raise PolicyServerError(f"the policy sent an action chunk of shape {chunk.shape}; expected (T, A)")
            report = self.queue.merge(reply["timestep"], chunk[: self.actions_per_chunk()])
            stats.chunks += 1
            stats.stale_dropped += report.stale
            stats.merged += report.merged
            stats.round_trip_ms.append((now - reply["timestamp"]) * 1e3)
            stats.inference_ms.append(float(reply["inference_ms"]))
            log.debug("chunk for t=%d: %d stale, %d merged, %d new; queue %d", reply["timestep"], report.stale,
                      report.merged, report.appended, len(self.queue))
        elif kind == "filtered":
            stats.filtered += 1
            if stats.filtered == 1:
                log.info("%s", reply["reason"])
            else:
                log.debug("observation t=%d filtered (moved %.2f)", reply["timestep"], reply["distance"])
        elif kind == "error":
            raise PolicyServerError(f"the {getattr(self.link, 'where', 'policy')} refused an observation "
                                    f"({reply['code']}): {reply['message']}")
        else:
            raise PolicyServerError(f"unexpected '{kind}' message from the {getattr(self.link, 'where', 'policy')}")
        return True

    def hold(self) -> None:
        """Make the robot stand where it is (goal = present position). Never raises."""
        try:
            if hasattr(self.robot, "hold"):
                self.robot.hold()
            elif hasattr(self.robot, "read_state"):
                self.robot.send_action(self.robot.read_state())
        except Exception as e:  # the caller is already handling a failure (torque may be off already)
            log.info("could not hold position (torque-off follows): %s", e)

    def _reconnect_if_dropped(self) -> None:
        """Between episodes: forget stale replies, and connect again if the server closed this connection (it was
        restarted, or a long silence made it take this client for gone). The arm is standing still meanwhile."""
        try:
            while (reply := self.link.poll()) is not None:
                if reply["type"] == "error":
                    raise PolicyServerError(f"the server said {reply['code']}: {reply['message']}")
        except PolicyServerError as e:
            if not isinstance(self.link, RemotePolicy):
                raise
            log.warning("lost the policy between episodes (%s); connecting again", e)
            self.link.close()
            self.connect()

    def run_episode(self, task: str, max_seconds: float | None = None, max_steps: int | None = None,
                    is_done: Callable[[], bool] | None = None) -> EpisodeStats:
        """Run until `is_done()`, `max_seconds` of wall time or `max_steps` actions; returns the statistics."""
        if self.policy_info is None:
            raise RuntimeError("call connect() before run_episode()")
        if max_seconds is None and max_steps is None and is_done is None:
            raise InputError("give run_episode a way to end: max_seconds, max_steps or is_done")
        cfg = self.config
        threshold = cfg.chunk_size_threshold if cfg.mode == "async" else 0.0
        period = 1.0 / cfg.fps
        stats = EpisodeStats(task=task)
        self.queue.reset()
        self.episode += 1
        self._reconnect_if_dropped()
        self.link.send(message("reset"))
        in_flight: float | None = None  # send time of the outstanding request
        start = self.clock()
        next_tick = start
        try:
            while True:
                now = self.clock()
                if max_seconds is not None and now - start >= max_seconds:
                    stats.outcome = "timeout"
                    break
                if max_steps is not None and stats.actions >= max_steps:
                    stats.outcome = "max_steps"
                    break
                # 1. replies
                while (reply := self.link.poll()) is not None:
                    if self._take_reply(reply, stats):
                        in_flight = None
                        stats.reply_ticks.append(stats.ticks)
                # 2. ask for more
                if in_flight is None and should_send(len(self.queue), self.chunk_size, threshold):
                    obs = self.robot.get_observation()
                    self.link.send(self._observation_message(obs, task, must_go=len(self.queue) == 0))
                    stats.requests += 1
                    stats.request_ticks.append(stats.ticks)
                    in_flight = self.clock()
                elif in_flight is not None and now - in_flight > cfg.reply_timeout_s:
                    raise PolicyServerError(
                        f"the {getattr(self.link, 'where', 'policy')} has not answered for {cfg.reply_timeout_s:g} s "
                        "(stuck or overloaded)"
                    )
                # 3. act
                stats.queue_sizes.append(len(self.queue))
                item = self.queue.pop()
                if item is not None:
                    sent = self.robot.send_action(item[1])
                    stats.actions += 1
                    if sent is not None and not np.allclose(sent, item[1], atol=1e-3):
                        stats.safety_limited += 1  # the driver clamped or capped it
                else:
                    stats.idle_ticks += 1
                    if hasattr(self.robot, "idle"):
                        self.robot.idle()
                stats.ticks += 1
                if is_done is not None and is_done():
                    stats.outcome = "success"
                    break
                # 4. keep the rate (late ticks are not made up: the robot never hurries)
                next_tick += period
                delay = next_tick - self.clock()
                if delay > 0:
                    self.sleep(delay)
                else:
                    stats.overruns += 1
                    next_tick = self.clock()
        except BaseException:
            self.hold()
            raise
        finally:
            stats.seconds = self.clock() - start
        # A request may still be in flight: its answer carries this episode's number and will be ignored.
        return stats

    def server_stats(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """Ask the server for its counters (call between episodes)."""
        self.link.send(message("stats"))
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            reply = self.link.poll(timeout_s=0.05)
            if reply is not None and reply["type"] == "stats_reply":
                return reply["stats"]
        return None

    def close(self) -> None:
        self.link.close()


__all__ = [
    "ClientConfig",
    "EpisodeStats",
    "LocalPolicy",
    "PolicyServerError",
    "RemotePolicy",
    "Robot",
    "RobotClient",
]
