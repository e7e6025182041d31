"""What the policy server does with each message, independent of the socket: the handshake, the observation
checks, the similarity filter and the inference.

The same :class:`PolicyService` answers a TCP client (`server.py`) and an in-process one (`client.LocalPolicy`),
so synchronous and asynchronous deployment run the very same checks and the same model call.

The similarity filter, out loud: an observation whose joint vector lies within `similarity_threshold` (L2,
degrees and gripper units) of the last observation the server *processed* is skipped, because the arm has barely
moved and the new chunk would repeat the old one. It is never skipped when the client says its queue is empty
(`must_go`), otherwise a robot standing still would wait forever. Every skip is answered with a "filtered"
message that says why, logged, and counted in the statistics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from smolvla_kit.deploy.protocol import PROTOCOL_VERSION, message
from smolvla_kit.errors import InputError, KitError
from smolvla_kit.vocabulary import STATE_KEY, CameraMismatch, camera_name, match_cameras

log = logging.getLogger("smolvla_kit.deploy.service")



@dataclass
class ServiceStats:
    """Counters the server keeps (sent to the client on request, printed when a client leaves)."""

    observations: int = 0  # observation messages received
    processed: int = 0  # observations the policy ran on
    filtered: int = 0  # skipped by the similarity filter
    must_go_bypass: int = 0  # within the threshold but processed anyway: the client's queue was empty
    errors: int = 0  # observations refused (bad shapes, NaN, ...)
    inference_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        inf = np.asarray(self.inference_ms, dtype=np.float64)
        return {
            "observations": self.observations,
            "processed": self.processed,
            "filtered": self.filtered,
            "must_go_bypass": self.must_go_bypass,
            "errors": self.errors,
            "inference_ms_mean": float(inf.mean()) if inf.size else None,
            "inference_ms_p95": float(np.percentile(inf, 95)) if inf.size else None,
        }


MAX_TASK_CHARS = 1000  # instructions are a sentence; the policy reads its first 48 tokens


class FeatureMismatch(KitError, ValueError):
    """The robot's observation does not fit the policy (cameras, state size)."""


class PolicyService:
    """The server's logic around one loaded policy.

    Args:
        policy: a `SmolVLAPolicy` (already loaded, in eval mode).
        checkpoint: where it came from (quoted in messages).
        similarity_threshold: skip observations closer than this (L2 over the joint vector, kit units) to the
            last processed one unless the client's queue is empty; 0 disables the filter.
        added_latency_ms: sleep this long after each inference (to study latency; real compute comes on top).
    """

    def __init__(self, policy: Any, checkpoint: str = "", similarity_threshold: float = 1.0,
                 added_latency_ms: float = 0.0) -> None:
        if similarity_threshold < 0:
            raise InputError(f"similarity_threshold must be >= 0, got {similarity_threshold}")
        if added_latency_ms < 0:
            raise InputError(f"added_latency_ms must be >= 0, got {added_latency_ms}")
        self.policy = policy
        self.checkpoint = checkpoint
        self.similarity_threshold = float(similarity_threshold)
        self.added_latency_ms = float(added_latency_ms)
        self.stats = ServiceStats()
        self.image_shapes: dict[str, tuple[int, ...]] | None = None  # set by a successful hello
        self._last_state: np.ndarray | None = None
        self._warned_filter = False

    # -- what the policy needs ------------------------------------------------------------------------------------

    def policy_info(self) -> dict[str, Any]:
        cfg = self.policy.config
        return {
            "checkpoint": self.checkpoint,
            "chunk_size": int(cfg.chunk_size),
            "n_action_steps": int(cfg.n_action_steps),
            "samples_per_chunk": int(cfg.samples_per_chunk),
            "state_dim": int(cfg.state_dim),
            "action_dim": int(cfg.action_dim),
            "image_keys": list(cfg.image_keys),
            "similarity_threshold": self.similarity_threshold,
            "added_latency_ms": self.added_latency_ms,
        }

    def check_features(self, features: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """Compare what the robot will send with what the policy was trained on; raise FeatureMismatch (or
        CameraMismatch for the cameras)."""
        cfg = self.policy.config
        where = f"the policy ({self.checkpoint})" if self.checkpoint else "the policy"
        state_dim = features.get("state_dim")
        if not isinstance(state_dim, int) or isinstance(state_dim, bool):
            raise FeatureMismatch(f"hello.features.state_dim must be an integer, got {state_dim!r}")
        if state_dim != cfg.state_dim:
            raise FeatureMismatch(
                f"the robot's state has {state_dim} values but {where} expects {cfg.state_dim} "
                f"(observation.state). Use a checkpoint trained on this robot."
            )
        shapes = features.get("image_shapes")
        if not isinstance(shapes, dict):
            raise FeatureMismatch("hello.features.image_shapes must be a map camera key -> [H, W, 3]")
        expected = list(cfg.image_keys)
        match_cameras(expected, shapes, given_by="the robot sends", expected_by=f"{where} was trained with",
                      hint=f"Name the robot's cameras after the policy's (e.g. `--cameras "
                           f"{','.join(f'{camera_name(k)}={i}' for i, k in enumerate(expected))}`).")
        out = {}
        for key, shape in shapes.items():
            if (
                not isinstance(shape, list)
                or len(shape) != 3
                or shape[2] != 3
                or not all(isinstance(s, int) and 0 < s <= 4096 for s in shape)
            ):
                raise FeatureMismatch(
                    f"camera {key!r}: image shape must be [H, W, 3] with 0 < H, W <= 4096, got {shape!r}"
                )
            out[key] = tuple(shape)
        return out

    # -- messages -------------------------------------------------------------------------------------------------

    def handle(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Answer one (already schema-checked) message; None when the message needs no answer."""
        kind = msg["type"]
        if kind == "hello":
            return self.hello(msg)
        if self.image_shapes is None:
            return message("error", code="no_hello", message=f"send 'hello' first (got '{kind}')")
        if kind == "observation":
            return self.observation(msg)
        if kind == "reset":
            self._last_state = None
            return None
        if kind == "stats":
            return message("stats_reply", stats=self.stats.summary())
        if kind == "bye":
            return None
        return message("error", code="unexpected", message=f"a server does not accept '{kind}' messages")

    def hello(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg["protocol"] != PROTOCOL_VERSION:
            return message(
                "error",
                code="version",
                message=f"protocol version mismatch: the client speaks {msg['protocol']}, this server "
                f"{PROTOCOL_VERSION}. Run the same smolvla-kit version on both sides.",
            )
        if msg["mode"] not in ("sync", "async"):
            return message("error", code="features", message=f"mode must be 'sync' or 'async', got {msg['mode']!r}")
        try:
            self.image_shapes = self.check_features(msg["features"])
        except (FeatureMismatch, CameraMismatch) as e:
            log.error("refusing client %s: %s", msg["client"], e)
            return message("error", code="features", message=str(e))
        self._last_state = None
        log.info("client %s connected (%s mode); policy chunk %d, similarity filter %s", msg["client"], msg["mode"],
                 self.policy.config.chunk_size,
                 f"{self.similarity_threshold:g} (L2, joint units)" if self.similarity_threshold > 0 else "off")
        return message("ready", protocol=PROTOCOL_VERSION, policy=self.policy_info())

    def _check_observation(self, msg: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        cfg = self.policy.config
        state = msg["state"]
        if state.shape != (cfg.state_dim,) or state.dtype.kind != "f" or not np.all(np.isfinite(state)):
            raise FeatureMismatch(
                f"observation.state must be ({cfg.state_dim},) finite floats; got shape {state.shape}, dtype "
                f"{state.dtype}, values {state.tolist() if state.size <= 32 else '...'}"
            )
        images = msg["images"]
        if set(images) != set(self.image_shapes):
            raise FeatureMismatch(
                f"observation images {sorted(images)} differ from the hello's {sorted(self.image_shapes)}"
            )
        for key, img in images.items():
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != self.image_shapes[key]:
                got = (img.dtype, img.shape) if isinstance(img, np.ndarray) else type(img).__name__
                raise FeatureMismatch(
                    f"image {key!r} must be uint8 {self.image_shapes[key]} (as in the hello), got {got}"
                )
        if not msg["task"].strip():
            raise FeatureMismatch("the task instruction is empty")
        if len(msg["task"]) > MAX_TASK_CHARS:  # refused before the tokenizer sees it (it would read it all)
            raise FeatureMismatch(
                f"the task instruction is {len(msg['task'])} characters long; at most {MAX_TASK_CHARS} are accepted"
            )
        return state.astype(np.float32), images

    def observation(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.stats.observations += 1
        t, stamp, episode = msg["timestep"], msg["timestamp"], msg["episode"]
        try:
            state, images = self._check_observation(msg)
        except FeatureMismatch as e:
            self.stats.errors += 1
            return message("error", code="bad_observation", message=str(e))

        if self._last_state is not None and self.similarity_threshold > 0:
            distance = float(np.linalg.norm(state.astype(np.float64) - self._last_state))
            if distance < self.similarity_threshold:
                if not msg["must_go"]:
                    return self._filtered(episode, t, stamp, distance)
                self.stats.must_go_bypass += 1
                log.info("observation t=%d is within %.2f of the last processed one, but the client's queue is empty: "
                         "processing it anyway", t, distance)

        start = time.perf_counter()
        obs = {STATE_KEY: state, **images, "task": msg["task"]}
        chunk = self.policy.predict_chunk(obs)  # (1, T, A) in robot units, a torch tensor
        if hasattr(chunk, "detach"):
            chunk = chunk.detach().cpu().numpy()
        actions = np.asarray(chunk, dtype=np.float32)[0]  # (T, A)
        inference_ms = (time.perf_counter() - start) * 1e3
        if self.added_latency_ms > 0:
            time.sleep(self.added_latency_ms / 1e3)
        if not np.all(np.isfinite(actions)):
            self.stats.errors += 1
            return message("error", code="bad_actions", message=f"the policy produced NaN/inf actions for t={t}")
        self._last_state = state.astype(np.float64)
        self.stats.processed += 1
        self.stats.inference_ms.append(inference_ms)
        return message("actions", episode=episode, timestep=t, timestamp=stamp, actions=actions,
                       inference_ms=inference_ms, added_latency_ms=self.added_latency_ms)

    def _filtered(self, episode: int, t: int, stamp: float, distance: float) -> dict[str, Any]:
        self.stats.filtered += 1
        reason = (
            f"observation t={t} skipped by the similarity filter: the joints moved {distance:.2f} (L2, degrees) since "
            f"the last processed observation, less than the threshold {self.similarity_threshold:g}. The client keeps "
            f"executing its queue; an observation is always processed once the queue runs empty "
            f"(server flag --similarity-threshold 0 turns the filter off)."
        )
        if not self._warned_filter:
            log.warning("%s (this message is shown once; later skips are logged at INFO level and counted)", reason)
            self._warned_filter = True
        else:
            log.info("filtered observation t=%d (moved %.2f < %g)", t, distance, self.similarity_threshold)
        return message("filtered", episode=episode, timestep=t, timestamp=stamp, distance=distance,
                       threshold=self.similarity_threshold, reason=reason)


@dataclass
class ServeConfig:
    """Which policy answers the robot, and how: the policy server's settings, and a synchronous deploy's."""

    checkpoint: str
    """A kit checkpoint folder, a run folder or its checkpoints/last file, `kit:NAME` or a Hub id."""
    similarity_threshold: float = 1.0
    """Skip observations whose joints moved less than this (L2, degrees) since the last processed one, unless the
    robot's queue is empty; 0 = off."""
    added_latency_ms: float = 0.0
    """Extra delay after each inference, to study latency."""
    n_action_steps: int | None = None
    """Actions the policy plays per chunk (the checkpoint's setting when unset)."""
    samples_per_chunk: int | None = None
    """Chunks drawn per observation and averaged (the checkpoint's setting when unset)."""
    num_threads: int = 0
    """torch CPU threads for the policy; 0 = cores - 1 (one core stays with the robot loop)."""
    device: str = "cpu"
    """torch device."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16 runs the VLM and expert in bfloat16: a base chunk 3x faster on CPUs with bf16 instructions."""
    seed: int | None = None
    """Seed torch's noise for repeatable chunks."""

    def service(self) -> PolicyService:
        """Load the policy (threads and seed set first) and put it behind a PolicyService."""
        import torch

        from smolvla_kit import runs

        torch.set_num_threads(runs.cpu_threads(self.num_threads))
        if self.seed is not None:
            torch.manual_seed(self.seed)
        policy = load_policy_for_serving(self.checkpoint, device=self.device, n_action_steps=self.n_action_steps,
                                         dtype=self.dtype, samples_per_chunk=self.samples_per_chunk)
        return PolicyService(policy, checkpoint=self.checkpoint, similarity_threshold=self.similarity_threshold,
                             added_latency_ms=self.added_latency_ms)


def load_policy_for_serving(
    checkpoint: str, device: str = "cpu", n_action_steps: int | None = None, dtype: str = "float32",
    samples_per_chunk: int | None = None,
) -> Any:
    """A checkpoint (anything `runs.resolve` takes) ready for inference, its VLM and expert in `dtype`;
    `n_action_steps` and `samples_per_chunk` override the checkpoint's settings when given."""
    from smolvla_kit import runs

    return runs.load(checkpoint, device=device, dtype=dtype, n_action_steps=n_action_steps,
                     samples_per_chunk=samples_per_chunk)


__all__ = ["FeatureMismatch", "PolicyService", "ServeConfig", "ServiceStats", "load_policy_for_serving"]
