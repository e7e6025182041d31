"""The policy server: loads a checkpoint and answers one robot client at a time over TCP.

    python -m smolvla_kit.deploy.server --checkpoint outputs/train/nano/checkpoints/last --port 8765

It listens on 127.0.0.1 by default (the robot computer itself). Once the model is loaded and the socket bound, it
prints one line on stdout, `SMOLVLA-KIT POLICY SERVER LISTENING <host> <port>`, so a parent process that asked for
`--port 0` (any free port) learns where to connect.

Per connection: the first message must be a `hello`, whose features (state size, camera keys and image shapes)
are checked against the policy; a mismatch is answered with an `error` naming what differs, then the connection
closes. Then each `observation` gets `actions` (the whole chunk, timestamped), `filtered` (the similarity
filter skipped it, with the reason) or `error`. A malformed or oversized frame gets an `error` and the connection
is closed. A second client while one is connected is told the server is busy.

Nothing a connection does can lock the server out: each connection is read on its own thread; its hello must
arrive whole within 10 s (however slowly it trickles in), and only then does it take the one client slot; after
it, a client silent for 15 s is taken for gone and its slot freed (the kit's client pings every 3 s when idle).
With `SMOLVLA_KIT_TOKEN` set, a hello must carry the same token (the kit's client sends its own
`SMOLVLA_KIT_TOKEN`); set it on both computers before listening beyond this one.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from smolvla_kit.deploy.protocol import (
    DEFAULT_MAX_BYTES,
    TOKEN_ENV,
    ConnectionClosed,
    ProtocolError,
    message,
    recv_message,
    send_message,
)
from smolvla_kit.deploy.service import PolicyService, load_policy_for_serving

log = logging.getLogger("smolvla_kit.deploy.server")

READY_LINE = "SMOLVLA-KIT POLICY SERVER LISTENING"
HELLO_TIMEOUT_S = 10.0  # a connection whose whole hello has not arrived within this is dropped
IDLE_TIMEOUT_S = 15.0  # a client silent this long after its hello is taken for gone (clients ping every few s)
BUSY_WAIT_S = 1.0  # a new connection waits this long for the previous client to finish before "busy"


class PolicyServer:
    """A TCP server around a :class:`PolicyService`; `serve_forever()` blocks, `shutdown()` stops it."""

    def __init__(self, service: PolicyService, host: str = "127.0.0.1", port: int = 0,
                 max_bytes: int = DEFAULT_MAX_BYTES, hello_timeout_s: float = HELLO_TIMEOUT_S,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, token: str = "") -> None:
        self.service = service
        self.token = token
        self.max_bytes = max_bytes
        self.hello_timeout_s = hello_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)  # lets serve_forever notice shutdown()
        self.host, self.port = self.sock.getsockname()[:2]
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self.clients_served = 0

    def shutdown(self) -> None:
        self._stop.set()

    def serve_forever(self, once: bool = False) -> None:
        """Accept clients until shutdown() (or, with `once`, until the first client has left)."""
        try:
            while not self._stop.is_set():
                try:
                    conn, addr = self.sock.accept()
                except socket.timeout:
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Each connection is read on its own thread, so slow or silent ones never hold up accept().
                th = threading.Thread(target=self._serve_connection, args=(conn, f"{addr[0]}:{addr[1]}"), daemon=True)
                th.start()
                if once:
                    th.join()
                    if self.clients_served:
                        break
        finally:
            self.sock.close()

    def _refuse(self, conn: socket.socket, code: str, text: str) -> None:
        try:
            send_message(conn, message("error", code=code, message=text), self.max_bytes)
        except OSError:
            pass
        conn.close()

    def _serve_connection(self, conn: socket.socket, peer: str) -> None:
        """One connection: its whole hello within the deadline, then the client slot, then its messages."""
        greeted = holds_slot = False
        try:
            first = recv_message(conn, self.max_bytes, deadline=time.monotonic() + self.hello_timeout_s)
            if first["type"] != "hello":
                self._refuse(conn, "no_hello", f"the first message must be 'hello', got '{first['type']}'")
                return
            if self.token and not hmac.compare_digest(first["token"].encode(), self.token.encode()):
                log.warning("client %s gave a wrong token; refused", peer)
                self._refuse(conn, "auth", f"wrong or missing token: set {TOKEN_ENV} to the server's token")
                return
            # The slot is taken only once a whole hello is in, so connections that never say it cannot hold it.
            # A client that just said goodbye may still be finishing on its thread: give it a moment.
            if not self._busy.acquire(timeout=BUSY_WAIT_S):
                self._refuse(conn, "busy", "the policy server already has a robot client; it serves one at a time")
                return
            holds_slot = True
            reply = self.service.handle(first)
            send_message(conn, reply, self.max_bytes)
            if reply["type"] != "ready":
                conn.close()
                return
            greeted = True
            conn.settimeout(self.idle_timeout_s)
            while not self._stop.is_set():
                msg = recv_message(conn, self.max_bytes)
                if msg["type"] == "bye":
                    break
                if msg["type"] == "ping":
                    continue
                try:
                    reply = self.service.handle(msg)
                except Exception as e:  # the policy failed on this input: tell the robot instead of vanishing
                    log.exception("the policy failed on a '%s' message", msg["type"])
                    reply = message("error", code="internal", message=f"the policy server failed: {e!r}")
                if reply is not None:
                    send_message(conn, reply, self.max_bytes)
        except ProtocolError as e:
            log.error("client %s sent a malformed message, closing the connection: %s", peer, e)
            self._refuse(conn, "protocol", f"malformed message: {e}")
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
            log.info("client %s disconnected", peer)
        except socket.timeout:
            if greeted:
                log.warning("client %s silent for %g s; taken for gone, its slot is free", peer, self.idle_timeout_s)
                self._refuse(conn, "idle", f"no message for {self.idle_timeout_s:g} s; connect again")
            else:
                self._refuse(conn, "no_hello", f"no complete hello within {self.hello_timeout_s:g} s")
        except OSError as e:
            log.warning("connection to client %s failed: %s", peer, e)
        except Exception as e:  # a bug: answer and close this connection, and keep serving others
            log.exception("handling client %s failed", peer)
            self._refuse(conn, "internal", f"the policy server failed: {e!r}")
        finally:
            try:
                conn.close()
            finally:
                if holds_slot:
                    self.clients_served += 1
                    log.info("client %s done; server stats: %s", peer, self.service.stats.summary())
                    self._busy.release()


# ----------------------------------------------------------------------------------------------------------------
# Running the server in a child process
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A policy server started by :func:`start_server_process`."""

    proc: subprocess.Popen
    host: str
    port: int
    stderr_tail: deque

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask it to stop (SIGTERM), then kill it if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_server_process(checkpoint: str, port: int = 0, host: str = "127.0.0.1", *, added_latency_ms: float = 0.0,
                         similarity_threshold: float = 1.0, num_threads: int = 1, seed: int | None = None,
                         extra_args: Sequence[str] = (), startup_timeout_s: float = 120.0,
                         echo_stderr: bool = True) -> ServerProcess:
    """Start `python -m smolvla_kit.deploy.server` and wait until it listens; raise with its last words if it dies.

    The child's log lines are forwarded to this process's stderr (`echo_stderr`) and the last 50 are kept.
    """
    cmd = [sys.executable, "-m", "smolvla_kit.deploy.server", "--checkpoint", str(checkpoint), "--host", host,
           "--port", str(port), "--added-latency-ms", str(added_latency_ms),
           "--similarity-threshold", str(similarity_threshold), "--num-threads", str(num_threads), *extra_args]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    tail: deque = deque(maxlen=50)

    def pump() -> None:
        for line in proc.stderr:
            tail.append(line.rstrip())
            if echo_stderr:
                sys.stderr.write("[policy server] " + line)
        proc.stderr.close()

    threading.Thread(target=pump, name="server-stderr", daemon=True).start()
    result: dict[str, str] = {}

    def read_ready() -> None:
        for line in proc.stdout:
            if line.startswith(READY_LINE):
                result["line"] = line
                return

    reader = threading.Thread(target=read_ready, daemon=True)
    reader.start()
    reader.join(startup_timeout_s)
    if "line" not in result:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        time.sleep(0.05)  # let the stderr pump catch the last lines
        raise RuntimeError(
            f"the policy server did not start (exit code {proc.returncode}); command: {' '.join(cmd)}\n"
            + "\n".join(tail)
        )
    _, got_host, got_port = result["line"].rsplit(" ", 2)
    return ServerProcess(proc=proc, host=got_host, port=int(got_port), stderr_tail=tail)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="smolvla-kit policy-server",
        description="Serve a trained SmolVLA policy to one robot client over TCP (asynchronous inference).",
    )
    ap.add_argument("--checkpoint", required=True, help="kit checkpoint folder, or a run's checkpoints/last file")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this computer only)")
    ap.add_argument("--port", type=int, default=8765, help="TCP port; 0 picks a free one (printed on stdout)")
    ap.add_argument("--similarity-threshold", type=float, default=1.0,
                    help="skip observations whose joints moved less than this (L2, degrees) since the last processed "
                    "one, unless the robot's queue is empty; 0 = off (default: 1.0)")
    ap.add_argument("--added-latency-ms", type=float, default=0.0,
                    help="extra delay after each inference, to study latency (default: 0)")
    ap.add_argument("--n-action-steps", type=int, default=None, help="override the policy's n_action_steps")
    ap.add_argument("--samples-per-chunk", type=int, default=None,
                    help="chunks drawn per observation and averaged; overrides the policy's samples_per_chunk")
    ap.add_argument("--num-threads", type=int, default=0, help="torch CPU threads; 0 = cores - 1 (default: 0)")
    ap.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="bfloat16 runs the VLM and expert in bfloat16: a base chunk 1.6x faster on CPUs with bf16 "
                    "instructions (default: float32)")
    ap.add_argument("--seed", type=int, default=None, help="seed torch's noise for repeatable chunks")
    ap.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20,
                    help="largest message accepted, MiB (default: 16)")
    ap.add_argument("--hello-timeout-s", type=float, default=HELLO_TIMEOUT_S,
                    help=f"a connection's whole hello must arrive within this (default: {HELLO_TIMEOUT_S:g})")
    ap.add_argument("--idle-timeout-s", type=float, default=IDLE_TIMEOUT_S,
                    help=f"a client silent this long is taken for gone and its slot freed (default: "
                    f"{IDLE_TIMEOUT_S:g}; the kit's client pings every few seconds)")
    ap.add_argument("--once", action="store_true", help="exit after the first client leaves")
    ap.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default: INFO)")
    return ap


def run_server(argv: Sequence[str] | None = None) -> int:
    """Command line: `smolvla-kit policy-server --checkpoint CKPT [--port 8765]`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from smolvla_kit.runs import cpu_threads

    torch.set_num_threads(cpu_threads(args.num_threads))
    if args.seed is not None:
        torch.manual_seed(args.seed)
    token = os.environ.get(TOKEN_ENV, "")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("listening on %s without a token: anyone who can reach this address can drive the robot's "
                    "policy. Set %s to a secret on both computers to require it.", args.host, TOKEN_ENV)
    policy = load_policy_for_serving(args.checkpoint, device=args.device, n_action_steps=args.n_action_steps,
                                     dtype=args.dtype, samples_per_chunk=args.samples_per_chunk)
    service = PolicyService(policy, checkpoint=str(args.checkpoint), similarity_threshold=args.similarity_threshold,
                            added_latency_ms=args.added_latency_ms)
    if not (args.hello_timeout_s > 0 and args.idle_timeout_s > 0):
        raise SystemExit("error: --hello-timeout-s and --idle-timeout-s must be positive")
    server = PolicyServer(service, args.host, args.port, max_bytes=int(args.max_message_mb * 2**20),
                          hello_timeout_s=args.hello_timeout_s, idle_timeout_s=args.idle_timeout_s, token=token)
    print(f"{READY_LINE} {server.host} {server.port}", flush=True)
    log.info("serving %s on %s:%d", args.checkpoint, server.host, server.port)
    try:
        server.serve_forever(once=args.once)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly (closing the socket) when terminated
    sys.exit(run_server())
