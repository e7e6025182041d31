"""The robot's action queue: timestamped actions, the send threshold, and how overlapping chunks are merged.

Every action carries a **timestep**: the index, counted from the start of the episode, of the control step at
which it is to be executed. An observation taken when the robot has executed `t` actions gets timestep `t`, and
the chunk the policy predicts from it holds the actions for timesteps t, t+1, ..., t+chunk-1.

With asynchronous inference the robot keeps executing while the server thinks, so when the chunk arrives the
robot has moved on to some t' > t:

    queue (old chunk):        t'  t'+1 ... t'+k-1
    new chunk:         t ... t'  t'+1 ... t'+k-1  t'+k ... t+chunk-1
                       ^^^^^ stale: dropped     merged with `aggregate`     appended

Actions for timesteps already executed are dropped (they belong to the past), actions for timesteps the queue
still holds are merged with the queued ones by an aggregation function, and the rest are appended.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from smolvla_kit.errors import InputError

Aggregator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def weighted_average(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """0.3 old + 0.7 new: follow the fresher prediction, smoothed by the older one (the paper's choice)."""
    return 0.3 * old + 0.7 * new


def latest_only(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The fresher prediction alone (can jump where two chunks disagree)."""
    return new.copy()


def average(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """0.5 old + 0.5 new."""
    return 0.5 * (old + new)


def conservative(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """0.7 old + 0.3 new: stick to the plan, let the new chunk nudge it."""
    return 0.7 * old + 0.3 * new


AGGREGATORS: dict[str, Aggregator] = {
    "weighted_average": weighted_average,
    "latest_only": latest_only,
    "average": average,
    "conservative": conservative,
}


def get_aggregator(name: str) -> Aggregator:
    try:
        return AGGREGATORS[name]
    except KeyError:
        raise InputError(f"unknown aggregate function {name!r}; choose one of {', '.join(AGGREGATORS)}") from None


@dataclass
class MergeReport:
    """What one `ActionQueue.merge` did, for logs and statistics."""

    stale: int = 0  # actions for timesteps already executed (dropped)
    merged: int = 0  # actions combined with a queued one
    appended: int = 0  # actions for timesteps the queue did not hold


class ActionQueue:
    """Actions keyed by timestep, popped in order; the next timestep to execute is `next_timestep`.

    Args:
        aggregate: name in `AGGREGATORS` (or a function old, new -> merged) for overlapping timesteps.
    """

    def __init__(self, aggregate: str | Aggregator = "weighted_average") -> None:
        self.aggregate = get_aggregator(aggregate) if isinstance(aggregate, str) else aggregate
        self._actions: OrderedDict[int, np.ndarray] = OrderedDict()  # timestep -> (A,), increasing timesteps
        self.next_timestep = 0  # the timestep of the next action to execute (= actions executed so far)

    def __len__(self) -> int:
        return len(self._actions)

    def reset(self) -> None:
        self._actions.clear()
        self.next_timestep = 0

    def timesteps(self) -> list[int]:
        return list(self._actions)

    def merge(self, first_timestep: int, chunk: np.ndarray) -> MergeReport:
        """Put a chunk (T, A) whose row i is the action for timestep `first_timestep + i` into the queue."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2:
            raise ValueError(f"an action chunk must be (T, A), got shape {chunk.shape}")
        report = MergeReport()
        for i, action in enumerate(chunk):
            t = first_timestep + i
            if t < self.next_timestep:
                report.stale += 1
            elif t in self._actions:
                self._actions[t] = self.aggregate(self._actions[t], action).astype(np.float32)
                report.merged += 1
            else:
                self._actions[t] = action.copy()
                report.appended += 1
        return report

    def pop(self) -> tuple[int, np.ndarray] | None:
        """The action for `next_timestep` (and advance), or None when the queue holds nothing for it."""
        if not self._actions:
            return None
        t, action = next(iter(self._actions.items()))
        if t != self.next_timestep:
            # A chunk always starts at or before the robot's timestep (its observation was taken earlier), so the
            # queue is contiguous from next_timestep; a gap would be a bug: fail rather than act out of order.
            raise RuntimeError(f"action queue out of step: next action is for timestep {t}, robot is at "
                               f"{self.next_timestep}")
        del self._actions[t]
        self.next_timestep += 1
        return t, action


def should_send(queue_len: int, chunk_size: int, threshold: float) -> bool:
    """Send a new observation once the queue has fallen to `threshold` x chunk_size actions (or fewer).

    threshold 0 waits until the queue is empty (synchronous behaviour); 1 sends at every step.
    """
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"chunk_size_threshold must be in [0, 1], got {threshold}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    return queue_len / chunk_size <= threshold


__all__ = [
    "AGGREGATORS",
    "ActionQueue",
    "MergeReport",
    "average",
    "conservative",
    "get_aggregator",
    "latest_only",
    "should_send",
    "weighted_average",
]
