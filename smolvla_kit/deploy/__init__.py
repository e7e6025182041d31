"""Deploying a trained policy on an arm: synchronous and asynchronous inference, and `smolvla-kit deploy`.

Modules, in reading order:

* `protocol` - the wire format: framed msgpack with numpy arrays as raw bytes (never pickle), size limits.
* `actions`  - the timestamped action queue, the send threshold and the four aggregation functions.
* `service`  - what the policy server does with a message: handshake checks, similarity filter, inference;
               `ServeConfig`, which policy serves and how.
* `server`   - the TCP policy server (one client at a time, `ServerConfig`) and a helper that starts it as a
               process.
* `client`   - the robot client's control loop (sync and async on one code path) and its links to the policy.
* `robots`   - the simulator as a robot (benchmarks) and the virtual SO-101 with rendered cameras.
* `run`      - `smolvla-kit deploy`: `DeployConfig` and `deploy()`.
"""

from smolvla_kit.deploy.actions import AGGREGATORS, ActionQueue, should_send
from smolvla_kit.deploy.client import ClientConfig, LocalPolicy, PolicyServerError, RemotePolicy, RobotClient
from smolvla_kit.deploy.protocol import PROTOCOL_VERSION, ProtocolError
from smolvla_kit.deploy.run import DeployConfig, deploy
from smolvla_kit.deploy.service import PolicyService, ServeConfig

__all__ = [
    "AGGREGATORS",
    "ActionQueue",
    "ClientConfig",
    "DeployConfig",
    "LocalPolicy",
    "PROTOCOL_VERSION",
    "PolicyServerError",
    "PolicyService",
    "ProtocolError",
    "RemotePolicy",
    "RobotClient",
    "ServeConfig",
    "deploy",
    "should_send",
]
