"""Asynchronous inference in two processes: a policy server (a real nano SmolVLA checkpoint) and this test as the
robot client over a loopback TCP socket, driving the simulator; and, last, a server that dies while it drives the
virtual SO-101 through the real driver (the arm holds, then torque goes off)."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from smolvla_kit.deploy.client import ClientConfig, PolicyServerError, RemotePolicy, RobotClient
from smolvla_kit.deploy.protocol import MAGIC, PROTOCOL_VERSION, message, pack, recv_message, send_message
from smolvla_kit.deploy.robots import SimRobot, virtual_follower
from smolvla_kit.deploy.server import start_server_process
from smolvla_kit.robot.calibration import raw_to_units
from smolvla_kit.units import JOINT_NAMES

IMAGE = 64  # small renders; the nano policy resizes to its 96 px


def make_nano_checkpoint(path):
    """An untrained nano SmolVLA with plausible statistics: real code path, meaningless actions."""
    import torch

    from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy

    torch.manual_seed(0)
    stats = {
        "observation.state": {"mean": np.zeros(6), "std": np.full(6, 30.0)},
        "action": {"mean": np.array([0.0, -30.0, 30.0, 75.0, 0.0, 10.0]), "std": np.full(6, 2.0)},
    }
    SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats=stats).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_nano_checkpoint(tmp_path_factory.mktemp("nano") / "ckpt")


@pytest.fixture(scope="module")
def servers(checkpoint):
    """One server process for the module (starting one costs seconds); restarted if a test killed it."""
    started = []

    def get():
        if not started or not started[-1].alive():
            started.append(start_server_process(str(checkpoint), num_threads=1, seed=0, echo_stderr=False))
        return started[-1]

    yield get
    for srv in started:
        srv.stop()


@pytest.fixture
def server(servers):
    return servers()


@pytest.fixture(scope="module")
def sim_robot():
    from smolvla_kit.sim import make_env

    env = make_env("reach", cameras=(), image_size=IMAGE, max_episode_steps=10_000)
    yield SimRobot(env, image_size=IMAGE)
    env.close()


def test_async_then_sync_episode_over_loopback(server, sim_robot):
    assert server.alive() and server.host == "127.0.0.1"
    for mode, steps in (("async", 40), ("sync", 20)):
        task = sim_robot.reset(seed=1)
        client = RobotClient(sim_robot, RemotePolicy(server.host, server.port), ClientConfig(mode=mode, fps=30.0))
        info = client.connect()
        assert info["chunk_size"] == 50 and info["image_keys"] == ["observation.images.front", "observation.images.wrist"]
        stats = client.run_episode(task, max_steps=steps, max_seconds=30)
        server_stats = client.server_stats()
        client.close()
        assert stats.outcome == "max_steps" and stats.actions == steps
        assert np.all(np.isfinite(sim_robot.env.joint_state()))
        if mode == "async":
            # 0.7 x 50 = 35: a second observation goes out after 15 actions, while the robot keeps moving
            assert stats.requests >= 2 and stats.chunks >= 2
            assert stats.idle_ticks <= stats.ticks - stats.actions
        else:
            # sync plays n_action_steps of each chunk (10 for nano), then asks again and waits
            asked = -(-steps // info["n_action_steps"])
            assert stats.requests == asked and stats.chunks == asked and stats.merged == 0
        assert server_stats["processed"] + server_stats["filtered"] >= stats.chunks + stats.filtered
        assert server_stats["inference_ms_mean"] > 0


def test_a_server_started_with_samples_per_chunk_serves_averaged_chunks(checkpoint, sim_robot):
    """`policy-server --samples-per-chunk N` reaches the served policy: it reports N and plays chunks with it."""
    srv = start_server_process(str(checkpoint), num_threads=1, seed=0, echo_stderr=False,
                               extra_args=["--samples-per-chunk", "3"])
    try:
        task = sim_robot.reset(seed=2)
        client = RobotClient(sim_robot, RemotePolicy(srv.host, srv.port), ClientConfig(mode="sync", fps=30.0))
        assert client.connect()["samples_per_chunk"] == 3
        stats = client.run_episode(task, max_steps=10, max_seconds=30)
        client.close()
        assert stats.outcome == "max_steps" and stats.actions == 10 and stats.chunks == 1
        assert np.all(np.isfinite(sim_robot.env.joint_state()))
    finally:
        srv.stop()


class _Robot:
    def __init__(self, obs):
        self.obs = obs

    def get_observation(self):
        return self.obs

    def send_action(self, a):
        return a


def test_server_refuses_wrong_cameras_and_state_size_with_a_clear_message(server):
    img = np.zeros((IMAGE, IMAGE, 3), np.uint8)
    wrong_cams = _Robot({"observation.state": np.zeros(6, np.float32), "observation.images.top": img,
                         "observation.images.wrist": img})
    with pytest.raises(PolicyServerError) as e:
        RobotClient(wrong_cams, RemotePolicy(server.host, server.port)).connect()
    text = str(e.value)
    assert "camera keys do not match" in text and "missing ['observation.images.front']" in text
    assert "unexpected ['observation.images.top']" in text
    wrong_state = _Robot({"observation.state": np.zeros(7, np.float32), "observation.images.front": img,
                          "observation.images.wrist": img})
    with pytest.raises(PolicyServerError, match="state has 7 values but the policy .* expects 6"):
        RobotClient(wrong_state, RemotePolicy(server.host, server.port)).connect()


def _raw(server):
    s = socket.create_connection((server.host, server.port), timeout=5)
    return s


def _expect_error_then_close(s, code):
    reply = recv_message(s)
    assert reply["type"] == "error" and reply["code"] == code, reply
    try:  # the server closed the connection (a reset when our unread bytes were still in its buffer)
        assert s.recv(1) == b""
    except ConnectionResetError:
        pass
    s.close()
    return reply


def test_server_refuses_malformed_oversized_and_foreign_input_and_keeps_serving(server):
    s = _raw(server)
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert "not a smolvla-kit message" in _expect_error_then_close(s, "protocol")["message"]

    s = _raw(server)
    s.sendall(struct.pack(">4sI", MAGIC, 1 << 30))  # announces 1 GiB
    assert "over the" in _expect_error_then_close(s, "protocol")["message"]

    s = _raw(server)
    body = b"\xc1" * 10  # 0xc1 is never valid msgpack
    s.sendall(struct.pack(">4sI", MAGIC, len(body)) + body)
    _expect_error_then_close(s, "protocol")

    s = _raw(server)
    body = pack({"type": "hello", "protocol": PROTOCOL_VERSION})  # fields missing
    s.sendall(struct.pack(">4sI", MAGIC, len(body)) + body)
    assert "missing fields" in _expect_error_then_close(s, "protocol")["message"]

    s = _raw(server)
    send_message(s, message("hello", protocol=PROTOCOL_VERSION + 7, client="old", mode="async", token="",
                            features={"state_dim": 6, "image_keys": [], "image_shapes": {}}))
    assert "protocol version mismatch" in _expect_error_then_close(s, "version")["message"]

    s = _raw(server)
    send_message(s, message("stats"))
    _expect_error_then_close(s, "no_hello")

    # after all that, a proper client is still served
    img = np.zeros((IMAGE, IMAGE, 3), np.uint8)
    good = _Robot({"observation.state": np.zeros(6, np.float32), "observation.images.front": img,
                   "observation.images.wrist": img})
    client = RobotClient(good, RemotePolicy(server.host, server.port))
    assert client.connect()["chunk_size"] == 50
    client.close()


def test_a_second_client_is_told_the_server_is_busy(server):
    img = np.zeros((IMAGE, IMAGE, 3), np.uint8)
    robot = _Robot({"observation.state": np.zeros(6, np.float32), "observation.images.front": img,
                    "observation.images.wrist": img})
    first = RobotClient(robot, RemotePolicy(server.host, server.port))
    first.connect()
    try:
        with pytest.raises(PolicyServerError, match=r"refused this robot \(busy\)"):
            RobotClient(robot, RemotePolicy(server.host, server.port)).connect()
    finally:
        first.close()


def test_server_death_makes_the_arm_hold_then_torque_off(server):
    """Last in this module: it kills the shared server (a later test would get a fresh one)."""
    rig = virtual_follower(["observation.images.front", "observation.images.wrist"], image_size=IMAGE,
                           sim_task="reach", seed=3, max_relative_target=5.0, handle_sigint=False)
    try:
        with rig.robot as robot:
            task = rig.arm.reset_scene(seed=3)
            client = RobotClient(robot, RemotePolicy(server.host, server.port), ClientConfig(mode="async", fps=30))
            client.connect()
            killer = threading.Timer(1.0, server.proc.kill)  # SIGKILL: no goodbye, the socket just closes
            killer.start()
            t0 = time.monotonic()
            with pytest.raises(PolicyServerError, match="closed the connection") as e:
                client.run_episode(task, max_seconds=20)
            assert "policy server at 127.0.0.1" in str(e.value)
            assert time.monotonic() - t0 < 5  # noticed at once, not after the reply timeout
            # The client made the arm hold: its goal is where it stands, torque still on until we leave.
            robot.bus.ping("shoulder_pan")  # the hold's SYNC_WRITE has been handled once this answers
            goal = raw_to_units({n: rig.arm.register(n, "Goal_Position") for n in JOINT_NAMES}, robot.calibration)
            assert np.allclose(goal, robot.read_state(), atol=3.0), (goal, robot.read_state())
            assert all(rig.arm.torque_enabled().values())
            client.close()
        assert not any(rig.arm.torque_enabled().values())  # leaving the `with` turned torque off
    finally:
        rig.close()


@pytest.fixture(scope="module")
def impatient_server(checkpoint):
    """A server with short hello and idle limits, so lock-out attempts can be timed in a test."""
    srv = start_server_process(str(checkpoint), num_threads=1, seed=0, echo_stderr=False,
                               extra_args=["--hello-timeout-s", "1.5", "--idle-timeout-s", "2"])
    yield srv
    srv.stop()


def _good_client(server):
    img = np.zeros((IMAGE, IMAGE, 3), np.uint8)
    robot = _Robot({"observation.state": np.zeros(6, np.float32), "observation.images.front": img,
                    "observation.images.wrist": img})
    return RobotClient(robot, RemotePolicy(server.host, server.port))


def test_no_connection_can_lock_the_server_out(impatient_server):
    server = impatient_server
    # 40 connections that never speak, and one that trickles a hello a byte at a time: none takes the slot,
    # and accept() is not held up by them - an honest client is served at once.
    silent = [_raw(server) for _ in range(40)]
    trickle = _raw(server)
    frame = struct.pack(">4sI", MAGIC, 200)
    trickle.sendall(frame[:1])
    t0 = time.monotonic()
    client = _good_client(server)
    client.connect()
    assert time.monotonic() - t0 < 1.0
    client.close()
    # the trickler is cut off by the hello deadline, not after its last byte
    for byte in frame[1:]:
        time.sleep(0.3)
        try:
            trickle.sendall(bytes([byte]))
        except OSError:
            break
    reply = recv_message(trickle)
    assert reply["type"] == "error" and reply["code"] == "no_hello" and "within 1.5 s" in reply["message"]
    assert time.monotonic() - t0 < 4.0
    for s in [trickle, *silent]:
        s.close()

    # A client that said hello and vanished without closing frees the slot after the idle limit.
    ghost = _raw(server)
    cameras = ["observation.images.front", "observation.images.wrist"]
    send_message(ghost, message("hello", protocol=PROTOCOL_VERSION, client="ghost", mode="async", token="", features={
        "state_dim": 6, "image_keys": cameras, "image_shapes": {k: [IMAGE, IMAGE, 3] for k in cameras}}))
    assert recv_message(ghost)["type"] == "ready"
    with pytest.raises(PolicyServerError, match=r"\(busy\)"):
        _good_client(server).connect()
    reply = recv_message(ghost)  # after 2 s of silence
    assert reply["type"] == "error" and reply["code"] == "idle"
    ghost.close()
    img = np.zeros((IMAGE, IMAGE, 3), np.uint8)
    late = RobotClient(_Robot({"observation.state": np.zeros(6, np.float32), "observation.images.front": img,
                               "observation.images.wrist": img}),
                       RemotePolicy(server.host, server.port, ping_every_s=0.5))
    late.connect()
    # ... while the kit's own client, idle for longer than the limit, keeps its connection by pinging
    time.sleep(4.0)
    assert late.server_stats() is not None
    late.close()


def test_the_robot_client_connects_again_when_dropped_between_episodes(impatient_server):
    img = np.zeros((IMAGE, IMAGE, 3), np.uint8)
    robot = _Robot({"observation.state": np.zeros(6, np.float32), "observation.images.front": img,
                    "observation.images.wrist": img})
    link = RemotePolicy(impatient_server.host, impatient_server.port, ping_every_s=1e9)  # never pings
    client = RobotClient(robot, link)
    client.connect()
    first = link.sock
    time.sleep(3.0)  # past the server's 2 s idle limit: it drops this connection
    stats = client.run_episode("put the red cube in the bin", max_steps=3)
    assert stats.actions == 3 and stats.chunks >= 1 and link.sock is not first
    client.close()
