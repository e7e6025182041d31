"""The policy server: loads a checkpoint and answers one robot client at a time over TCP.

    smolvla-kit policy-server --checkpoint outputs/train/nano/checkpoints/last --port 8765

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
import dataclasses
import hmac
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from smolvla_kit.deploy.protocol import (
    DEFAULT_MAX_BYTES,
    TOKEN_ENV,
    ConnectionClosed,
    ProtocolError,
    message,
    recv_message,
    send_message,
)
from smolvla_kit.deploy.client import PolicyServerError
from smolvla_kit.deploy.service import PolicyService, ServeConfig
from smolvla_kit.errors import InputError, exit_code
from smolvla_kit.flags import add_dataclass_arguments, as_flags, explicit_values

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


def start_server_process(checkpoint: str, *, extra_args: Sequence[str] = (), startup_timeout_s: float = 120.0,
                         echo_stderr: bool = True, **settings: Any) -> ServerProcess:
    """Start `smolvla-kit policy-server` in a child process and wait until it listens; raise with its last words if
    it dies.

    `settings` are fields of :class:`ServeConfig` and :class:`ServerConfig` (it listens on a free port unless
    `port` is given); `extra_args` are more flags, as typed. The child's log lines are forwarded to this process's
    stderr (`echo_stderr`) and the last 50 are kept.
    """
    serve_fields = {f.name for f in dataclasses.fields(ServeConfig)}
    net_fields = {f.name for f in dataclasses.fields(ServerConfig)}
    unknown = set(settings) - serve_fields - net_fields
    if unknown:
        raise TypeError(f"start_server_process got unknown settings {sorted(unknown)}")
    serve = ServeConfig(checkpoint=str(checkpoint), **{k: v for k, v in settings.items() if k in serve_fields})
    net = ServerConfig(**{"port": 0, **{k: v for k, v in settings.items() if k in net_fields}})
    cmd = [sys.executable, "-m", "smolvla_kit.cli", "policy-server", *as_flags(serve), *as_flags(net), *extra_args]
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
        raise PolicyServerError(
            f"the policy server did not start (exit code {proc.returncode}); command: {' '.join(cmd)}\n"
            + "\n".join(tail)
        )
    _, got_host, got_port = result["line"].rsplit(" ", 2)
    return ServerProcess(proc=proc, host=got_host, port=int(got_port), stderr_tail=tail)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ServerConfig:
    """Where the policy server listens, and how patient it is."""

    host: str = "127.0.0.1"
    """Address to listen on (the default: this computer only). Set SMOLVLA_KIT_TOKEN before listening beyond it."""
    port: int = 8765
    """TCP port; 0 picks a free one (printed on stdout)."""
    max_message_mb: float = DEFAULT_MAX_BYTES / 2**20
    """Largest message accepted, MiB."""
    hello_timeout_s: float = HELLO_TIMEOUT_S
    """A connection's whole hello must arrive within this many seconds."""
    idle_timeout_s: float = IDLE_TIMEOUT_S
    """A client silent this long is taken for gone and its slot freed (the kit's client pings every few seconds)."""
    once: bool = False
    """Exit after the first client leaves."""
    log_level: str = "INFO"
    """DEBUG, INFO or WARNING."""

    def check(self) -> None:
        if not (self.hello_timeout_s > 0 and self.idle_timeout_s > 0 and self.max_message_mb > 0):
            raise InputError(f"hello_timeout_s, idle_timeout_s and max_message_mb must be positive, got "
                             f"{self.hello_timeout_s}, {self.idle_timeout_s} and {self.max_message_mb}")


def build_parser() -> argparse.ArgumentParser:
    """`smolvla-kit policy-server`'s flags: a ServeConfig's and a ServerConfig's fields."""
    ap = argparse.ArgumentParser(
        prog="smolvla-kit policy-server",
        description="Serve a trained SmolVLA policy to one robot client over TCP (asynchronous inference).",
    )
    add_dataclass_arguments(ap.add_argument_group("the policy"), ServeConfig)
    add_dataclass_arguments(ap.add_argument_group("the network"), ServerConfig)
    return ap


def serve(serve_cfg: ServeConfig, net: ServerConfig) -> int:
    """Load the policy, listen, and answer clients until Ctrl-C or SIGTERM (or, with `once`, the first client's
    end). Prints the ready line on stdout once it listens."""
    logging.basicConfig(level=net.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    net.check()
    token = os.environ.get(TOKEN_ENV, "")
    if net.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("listening on %s without a token: anyone who can reach this address can drive the robot's "
                    "policy. Set %s to a secret on both computers to require it.", net.host, TOKEN_ENV)
    service = serve_cfg.service()
    server = PolicyServer(service, net.host, net.port, max_bytes=int(net.max_message_mb * 2**20),
                          hello_timeout_s=net.hello_timeout_s, idle_timeout_s=net.idle_timeout_s, token=token)
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:  # stop cleanly (closing the socket) when terminated
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{READY_LINE} {server.host} {server.port}", flush=True)
    log.info("serving %s on %s:%d", serve_cfg.checkpoint, server.host, server.port)
    try:
        server.serve_forever(once=net.once)
    except KeyboardInterrupt:
        pass
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def run_server(argv: Sequence[str] | None = None) -> int:
    """Command line: `smolvla-kit policy-server --checkpoint CKPT [--port 8765]`."""
    args = build_parser().parse_args(argv)
    return exit_code(lambda: serve(ServeConfig(**explicit_values(args, ServeConfig)),
                                   ServerConfig(**explicit_values(args, ServerConfig))))


if __name__ == "__main__":
    sys.exit(run_server())
