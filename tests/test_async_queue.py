"""The action queue, the send threshold, the aggregation functions, the similarity filter, and the client loop's
timestep alignment in sync and async modes (through the real service, in process and over a TCP loopback).

The policy here is a *timeline policy*: from an observation whose state is "t actions executed" it predicts the
chunk t, t+1, ..., t+T-1. A correctly aligned client therefore executes exactly 0, 1, 2, ... whatever the latency,
the mode or the aggregation function, and any misalignment (a stale action executed, an action skipped or
repeated) shows up as a wrong number.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from smolvla_kit.deploy.actions import (
    AGGREGATORS,
    ActionQueue,
    average,
    conservative,
    get_aggregator,
    latest_only,
    should_send,
    weighted_average,
)
from smolvla_kit.deploy.client import ClientConfig, LocalPolicy, PolicyServerError, RemotePolicy, RobotClient
from smolvla_kit.deploy.protocol import PROTOCOL_VERSION, message
from smolvla_kit.deploy.server import PolicyServer
from smolvla_kit.deploy.service import PolicyService

FRONT = "observation.images.front"


# ----------------------------------------------------------------------------------------------------------------
# Aggregation, threshold, queue
# ----------------------------------------------------------------------------------------------------------------


def test_each_aggregation_function():
    old, new = np.array([10.0, 0.0, -4.0]), np.array([20.0, 10.0, 6.0])
    np.testing.assert_allclose(weighted_average(old, new), [17.0, 7.0, 3.0])  # 0.3 old + 0.7 new
    np.testing.assert_allclose(latest_only(old, new), new)
    np.testing.assert_allclose(average(old, new), [15.0, 5.0, 1.0])
    np.testing.assert_allclose(conservative(old, new), [13.0, 3.0, -1.0])  # 0.7 old + 0.3 new
    assert set(AGGREGATORS) == {"weighted_average", "latest_only", "average", "conservative"}
    assert get_aggregator("average") is average
    with pytest.raises(ValueError, match="weighted_average, latest_only, average, conservative"):
        get_aggregator("median")
    out = latest_only(old, new)
    out[0] = -1
    assert new[0] == 20.0  # never aliases the incoming chunk


def test_threshold_logic():
    # chunk 50, g = 0.7: ask again once 35 actions or fewer remain
    assert not should_send(36, 50, 0.7)
    assert should_send(35, 50, 0.7)
    assert should_send(0, 50, 0.7)
    # g = 0: only when empty (synchronous); g = 1: every step
    assert not should_send(1, 50, 0.0) and should_send(0, 50, 0.0)
    assert should_send(50, 50, 1.0)
    with pytest.raises(ValueError, match="chunk_size_threshold"):
        should_send(0, 50, 1.5)
    with pytest.raises(ValueError, match="chunk_size"):
        should_send(0, 0, 0.5)


def test_queue_drops_stale_merges_overlap_and_appends_by_timestep():
    q = ActionQueue("weighted_average")
    first = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # timesteps 0..4 -> 0..4
    rep = q.merge(0, first)
    assert (rep.stale, rep.merged, rep.appended) == (0, 0, 5)
    assert [q.pop()[0] for _ in range(3)] == [0, 1, 2]  # the robot executed 0, 1, 2
    # A chunk computed from the observation at timestep 1 arrives now: its rows are timesteps 1..6.
    second = np.full((6, 2), 100.0, np.float32)
    rep = q.merge(1, second)
    assert (rep.stale, rep.merged, rep.appended) == (2, 2, 2)  # 1,2 past; 3,4 overlap; 5,6 new
    assert q.timesteps() == [3, 4, 5, 6]
    t, a = q.pop()
    assert t == 3 and np.allclose(a, 0.3 * 3 + 0.7 * 100)
    t, a = q.pop()
    assert t == 4 and np.allclose(a, 0.3 * 4 + 0.7 * 100)
    assert q.pop()[0] == 5 and q.pop()[0] == 6 and q.pop() is None and q.next_timestep == 7
    q.reset()
    assert len(q) == 0 and q.next_timestep == 0
    with pytest.raises(ValueError, match=r"\(T, A\)"):
        q.merge(0, np.zeros(3))


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_queue_uses_the_chosen_aggregator(name):
    q = ActionQueue(name)
    q.merge(0, np.array([[10.0], [10.0]]))
    q.merge(0, np.array([[20.0], [20.0]]))
    expected = AGGREGATORS[name](np.array([10.0]), np.array([20.0]))
    assert np.allclose(q.pop()[1], expected)


# ----------------------------------------------------------------------------------------------------------------
# A timeline policy and robot for the loop tests
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Config:
    chunk_size: int = 10
    n_action_steps: int = 10
    samples_per_chunk: int = 1
    state_dim: int = 6
    action_dim: int = 6
    image_keys: list = field(default_factory=lambda: [FRONT])


class TimelinePolicy:
    """Predicts the actions t, t+1, ... from a state that says t (see the module docstring)."""

    def __init__(self, chunk_size: int = 10, n_action_steps: int = 10, offset: float = 0.0):
        self.config = _Config(chunk_size=chunk_size, n_action_steps=n_action_steps)
        self.offset = offset
        self.calls = 0

    def predict_chunk(self, obs):
        self.calls += 1
        t = float(obs["observation.state"][0])
        steps = t + np.arange(self.config.chunk_size, dtype=np.float32) + self.offset  # (T,)
        return np.repeat(steps[None, :, None], self.config.action_dim, axis=2)  # (1, T, A)


class TimelineRobot:
    """State = number of actions executed (in every joint); records what it executed."""

    def __init__(self):
        self.executed: list[float] = []
        self.holds = 0

    def get_observation(self):
        n = float(len(self.executed))
        return {"observation.state": np.full(6, n, np.float32), FRONT: np.zeros((8, 8, 3), np.uint8)}

    def send_action(self, action):
        assert np.allclose(action, action[0])
        self.executed.append(float(action[0]))
        return action

    def hold(self):
        self.holds += 1


@pytest.fixture
def tcp_server():
    servers = []

    def make(service, **options):
        server = PolicyServer(service, "127.0.0.1", 0, **options)
        th = threading.Thread(target=server.serve_forever, daemon=True)
        th.start()
        servers.append((server, th))
        return server

    yield make
    for server, th in servers:
        server.shutdown()
        th.join(2)


def _link(kind, service, tcp_server):
    if kind == "local":
        return LocalPolicy(service)
    server = tcp_server(service)
    return RemotePolicy(server.host, server.port)


@pytest.mark.parametrize("link_kind", ["local", "tcp"])
def test_async_and_sync_execute_every_timestep_once_in_order(link_kind, tcp_server):
    """80 ms of policy latency at 100 Hz (8 ticks), chunks of 20: both modes execute 0, 1, 2, ... exactly; the
    synchronous robot stands still for every chunk, the asynchronous one only for the first."""
    results = {}
    for mode in ("sync", "async"):
        service = PolicyService(TimelinePolicy(chunk_size=20, n_action_steps=20), added_latency_ms=80.0,
                                similarity_threshold=1.0)
        robot = TimelineRobot()
        client = RobotClient(robot, _link(link_kind, service, tcp_server),
                             ClientConfig(mode=mode, fps=100.0, chunk_size_threshold=0.7, aggregate="weighted_average"))
        info = client.connect()
        assert info["chunk_size"] == 20
        stats = client.run_episode("count", max_steps=60, max_seconds=20)
        client.close()
        assert stats.outcome == "max_steps"
        assert robot.executed == list(range(60)), robot.executed  # aligned: no stale, skipped or repeated action
        results[mode] = stats
    sync, asy = results["sync"], results["async"]
    assert sync.chunks == 3 and sync.stale_dropped == 0 and sync.merged == 0
    assert asy.chunks > 3 and asy.stale_dropped > 0 and asy.merged > 0
    assert asy.idle_ticks < 0.6 * sync.idle_ticks, (asy.idle_ticks, sync.idle_ticks)


def test_sync_executes_n_action_steps_per_chunk():
    policy = TimelinePolicy(chunk_size=10, n_action_steps=10)
    robot = TimelineRobot()
    client = RobotClient(robot, LocalPolicy(PolicyService(policy)), ClientConfig(mode="sync", fps=200.0,
                                                                                   n_action_steps=4))
    client.connect()
    assert client.actions_per_chunk() == 4
    stats = client.run_episode("count", max_steps=12, max_seconds=10)
    assert robot.executed == list(range(12))
    assert stats.chunks == 3 and policy.calls == 3


def test_replies_from_a_previous_episode_are_ignored():
    """An episode that ends with a request in flight: its late chunk must not leak into the next episode."""
    service = PolicyService(TimelinePolicy(offset=1000.0), added_latency_ms=150.0)
    robot = TimelineRobot()
    client = RobotClient(robot, LocalPolicy(service), ClientConfig(mode="async", fps=100.0))
    client.connect()
    client.run_episode("a", max_seconds=0.05)  # ends while the first request is still being computed
    robot.executed.clear()
    service.policy.offset = 0.0
    stats = client.run_episode("b", max_steps=5, max_seconds=10)
    assert robot.executed == [0.0, 1.0, 2.0, 3.0, 4.0]  # nothing of the 1000-offset chunk
    assert stats.late_replies == 1


def test_a_silent_server_stops_the_robot_with_a_clear_error():
    service = PolicyService(TimelinePolicy(), added_latency_ms=2000.0)
    robot = TimelineRobot()
    client = RobotClient(robot, LocalPolicy(service), ClientConfig(mode="async", fps=100.0, reply_timeout_s=0.3))
    client.connect()
    with pytest.raises(PolicyServerError, match="has not answered for 0.3 s"):
        client.run_episode("x", max_seconds=10)
    assert robot.holds == 1 and robot.executed == []


# ----------------------------------------------------------------------------------------------------------------
# The similarity filter (server side) and its bypass
# ----------------------------------------------------------------------------------------------------------------


def _hello(service, shape=(8, 8, 3)):
    reply = service.handle(message("hello", protocol=PROTOCOL_VERSION, client="test", mode="async", token="",
                                   features={"state_dim": 6, "image_keys": [FRONT], "image_shapes": {FRONT: list(shape)}}))
    assert reply["type"] == "ready", reply
    return reply


def _obs(state, t=0, must_go=False, episode=0):
    return message("observation", episode=episode, timestep=t, timestamp=0.0, state=np.asarray(state, np.float32),
                   images={FRONT: np.zeros((8, 8, 3), np.uint8)}, task="count", must_go=must_go)


def test_similarity_filter_skips_near_duplicates_loudly_and_is_bypassed_when_the_queue_is_empty(caplog):
    service = PolicyService(TimelinePolicy(), similarity_threshold=1.0)
    _hello(service)
    base = np.array([0, 10, 20, 30, 40, 50], np.float32)
    assert service.handle(_obs(base, t=0, must_go=True))["type"] == "actions"
    # 0.5 degrees of L2 motion: skipped, and the reply says why
    with caplog.at_level("INFO", logger="smolvla_kit.deploy.service"):
        r = service.handle(_obs(base + [0.5, 0, 0, 0, 0, 0], t=1))
    assert r["type"] == "filtered" and r["distance"] == pytest.approx(0.5) and r["threshold"] == 1.0
    assert "similarity filter" in r["reason"] and "queue runs empty" in r["reason"]
    assert any(rec.levelname == "WARNING" and "skipped by the similarity filter" in rec.message for rec in caplog.records)
    # same tiny motion, but the client's queue is empty: processed anyway (and counted as a bypass)
    r = service.handle(_obs(base + [0.5, 0, 0, 0, 0, 0], t=2, must_go=True))
    assert r["type"] == "actions"
    # a real move (L2 = 1.2 >= 1.0 from the last processed one): processed
    r = service.handle(_obs(base + [0.5, 0, 0, 0, 0, 0] + [0, 0.72, 0.96, 0, 0, 0], t=3))
    assert r["type"] == "actions"
    # a new episode forgets the last processed observation
    service.handle(message("reset"))
    assert service.handle(_obs(base, t=0))["type"] == "actions"
    s = service.stats.summary()
    assert (s["observations"], s["processed"], s["filtered"], s["must_go_bypass"]) == (5, 4, 1, 1)
    # threshold 0 turns the filter off
    off = PolicyService(TimelinePolicy(), similarity_threshold=0.0)
    _hello(off)
    assert off.handle(_obs(base, must_go=True))["type"] == "actions"
    assert off.handle(_obs(base))["type"] == "actions"


def test_filtered_observations_are_counted_by_the_client():
    """A robot that does not move while its queue is non-empty: the client's re-sends get filtered, visibly."""

    class StillRobot(TimelineRobot):
        def get_observation(self):
            return {"observation.state": np.zeros(6, np.float32), FRONT: np.zeros((8, 8, 3), np.uint8)}

    service = PolicyService(TimelinePolicy(chunk_size=10), similarity_threshold=1.0)
    client = RobotClient(StillRobot(), LocalPolicy(service), ClientConfig(mode="async", fps=100.0,
                                                                           chunk_size_threshold=1.0))
    client.connect()
    stats = client.run_episode("still", max_steps=15, max_seconds=10)
    # (the answer to the last request may arrive after the episode ended: the server counted it, the client not)
    assert stats.filtered > 0 and service.stats.filtered - 1 <= stats.filtered <= service.stats.filtered
    assert service.stats.must_go_bypass >= 1 or stats.chunks == 2  # the second chunk came through as must_go


# ----------------------------------------------------------------------------------------------------------------
# Handshake and observation checks
# ----------------------------------------------------------------------------------------------------------------


def test_handshake_refuses_wrong_version_cameras_and_state_size():
    service = PolicyService(TimelinePolicy(), checkpoint="ckpt/")

    def hello(**features):
        f = {"state_dim": 6, "image_keys": [FRONT], "image_shapes": {FRONT: [8, 8, 3]}}
        f.update(features)
        return message("hello", protocol=PROTOCOL_VERSION, client="t", mode="sync", features=f, token="")

    r = service.handle({**hello(), "protocol": PROTOCOL_VERSION + 1})
    assert r["type"] == "error" and r["code"] == "version" and "same smolvla-kit version" in r["message"]
    r = service.handle(hello(image_shapes={"observation.images.top": [8, 8, 3]}))
    assert r["code"] == "features"
    assert "missing ['observation.images.front']" in r["message"] and "unexpected ['observation.images.top']" in r["message"]
    assert "--cameras" in r["message"]
    r = service.handle(hello(state_dim=7))
    assert r["code"] == "features" and "7 values" in r["message"] and "expects 6" in r["message"]
    r = service.handle(hello(image_shapes={FRONT: [8, 8]}))
    assert r["code"] == "features" and "[H, W, 3]" in r["message"]
    assert service.handle(_obs(np.zeros(6)))["code"] == "no_hello"
    _hello(service)
    r = service.handle(_obs(np.zeros(5)))
    assert r["code"] == "bad_observation" and "(6,)" in r["message"]
    r = service.handle(_obs([0, 0, np.nan, 0, 0, 0]))
    assert r["code"] == "bad_observation"
    bad_img = {**_obs(np.zeros(6)), "images": {FRONT: np.zeros((9, 8, 3), np.uint8)}}
    assert service.handle(bad_img)["code"] == "bad_observation"
    r = service.handle({**_obs(np.zeros(6)), "task": "put the red cube in the bin " * 40_000})  # never tokenized
    assert r["code"] == "bad_observation" and "at most 1000 are accepted" in r["message"]


def test_client_reports_a_refused_handshake(tcp_server):
    service = PolicyService(TimelinePolicy(), checkpoint="my_ckpt")

    class WrongCameraRobot(TimelineRobot):
        def get_observation(self):
            return {"observation.state": np.zeros(6, np.float32), "observation.images.top": np.zeros((8, 8, 3), np.uint8)}

    server = tcp_server(service)
    client = RobotClient(WrongCameraRobot(), RemotePolicy(server.host, server.port), ClientConfig())
    with pytest.raises(PolicyServerError, match=r"refused this robot \(features\).*camera keys do not match"):
        client.connect()


def test_a_server_with_a_token_serves_only_clients_that_know_it(tcp_server, monkeypatch):
    server = tcp_server(PolicyService(TimelinePolicy(), checkpoint="ckpt"), token="s3cret")
    for token in ("", "wrong"):
        client = RobotClient(TimelineRobot(), RemotePolicy(server.host, server.port, token=token), ClientConfig())
        with pytest.raises(PolicyServerError, match=r"refused this robot \(auth\).*SMOLVLA_KIT_TOKEN"):
            client.connect()
    monkeypatch.setenv("SMOLVLA_KIT_TOKEN", "s3cret")  # the client's default comes from the environment
    client = RobotClient(TimelineRobot(), RemotePolicy(server.host, server.port), ClientConfig())
    assert client.connect()["chunk_size"] > 0
    client.close()


def test_client_cannot_reach_a_server():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    link = RemotePolicy("127.0.0.1", port, connect_timeout_s=1.0)
    client = RobotClient(TimelineRobot(), link, ClientConfig())
    t = time.monotonic()
    with pytest.raises(PolicyServerError, match="cannot reach the policy server"):
        client.connect()
    assert time.monotonic() - t < 5
