"""Train a SmolVLA policy on a LeRobot dataset (the simulator's or a real SO-101's).

    smolvla-kit train --dataset outputs/data/pick_place --out outputs/train/nano
    smolvla-kit train --recipe pick-place --dataset outputs/demo/data --out outputs/train/nano   # a named recipe

What happens, step by step:

1. The settings are resolved (a recipe's, then explicit flags, then `START_DEFAULTS` for what is still unset)
   and checked; the checkpoints record them. The dataset is checked against the policy (state and action sizes,
   an explicit camera map) and its mean/std statistics are read from `meta/stats.json` into the policy, which
   normalises inside itself.
2. AdamW with linear warm-up then cosine decay, gradient clipping, on CUDA or MPS when present and otherwise on
   every CPU core. `noise_samples` draws several noise levels per frame over one pass of the VLM.
3. Every `save_every` steps a checkpoint goes to `out/checkpoints/step_XXXXXX/` (safetensors + JSON, written to a
   temporary folder and renamed, so a kill never leaves half a checkpoint) and `out/checkpoints/last` names it.
   With `ema_decay` its policy is a moving average of the weights; the raw weights stay in its training state.
4. Running the same command again resumes exactly: weights, optimiser moments, the schedule and every random
   draw continue as if the run had never stopped (each step's batch and noise derive from the seed and the step).
5. `out/loss.csv` gets a row per logged step; `out/loss.png` is redrawn at each checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from smolvla_kit.errors import InputError, KitError, NonFinite
from smolvla_kit.runs import CHECKPOINTS, LAST, latest_checkpoint
from smolvla_kit.vocabulary import ACTION_KEY, STATE_KEY

log = logging.getLogger(__name__)



# Settings whose best value depends on where the weights start; a TrainConfig field left at None takes it from here.
START_DEFAULTS: dict[str, dict[str, Any]] = {
    # A preset trained from nothing (`nano` on a CPU): the kit's measured best (benchmarks/README.md).
    "scratch": {"lr": 1e-3, "warmup_steps": 100, "start_share": 0.5, "camera_warmup_steps": 3000},
    # Fine-tuning trained weights (`--init-from`, e.g. lerobot/smolvla_base): SmolVLA's published recipe.
    "init_from": {"lr": 1e-4, "warmup_steps": 1000, "start_share": 0.0, "camera_warmup_steps": 0},
}


@dataclass
class TrainConfig:
    """Settings of a training run. The defaults are the best measured for `nano` trained from scratch on the
    simulator; a field left at None is filled in by where the weights start (`START_DEFAULTS`)."""

    dataset: Path = Path("outputs/data/pick_place")
    """LeRobot dataset folder (v3.0 or v2.1)."""
    out: Path = Path("outputs/train/nano")
    """Run folder: checkpoints, loss log and plot. Re-running with the same folder resumes."""
    recipe: str | None = None
    """The named recipe (smolvla_kit/recipes.py) the other fields were filled from; recorded with the run."""
    preset: str = "nano"
    """Policy preset: "nano" (trains from scratch on a CPU) or "base" (smolvla_base's shape)."""
    init_from: str | None = None
    """Start from these weights (a kit checkpoint, a LeRobot SmolVLA folder or a Hub id) instead of a preset."""
    steps: int = 13_500
    """Optimiser steps: the length of the learning-rate schedule (`max_minutes` or `stop_at` can end a run
    sooner: the `pick-place` recipe stops after 25 minutes, near 11,000 steps on 2 cores, with the rate still at a
    tenth of its peak)."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) once training has run this long; None = no limit."""
    stop_at: int | None = None
    """Pause after this step (with a checkpoint); re-running without it continues the same schedule."""
    batch_size: int = 32
    """Frames per optimiser step in all: under torchrun with N processes each takes batch_size / N of them, so the
    same settings train the same run on any number of processes."""
    chunk_size: int | None = None
    """Actions predicted per chunk (None: the preset's or checkpoint's, 50). The policy plays only the first
    `n_action_steps` (nano: 10) before it looks again."""
    lr: float | None = None
    """Peak learning rate (None: 1e-3 from scratch, 1e-4 with `init_from`)."""
    warmup_steps: int | None = None
    """Linear warm-up of the learning rate (None: 100 from scratch, 1,000 with `init_from`; at most a tenth of
    `steps`)."""
    min_lr_ratio: float = 0.025
    """Cosine decay ends at this fraction of the peak (SmolVLA: 2.5e-6 / 1e-4)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's moment decay rates (SmolVLA's)."""
    adam_eps: float = 1e-8
    weight_decay: float = 1e-10
    """AdamW's decoupled weight decay (SmolVLA's 1e-10: practically none)."""
    grad_clip: float = 10.0
    """Gradients are clipped to this global norm."""
    save_every: int = 500
    log_every: int = 25
    start_share: float | None = None
    """Share of each batch drawn from the first `start_frames` frames of the episodes (None: 0.5 from scratch,
    0 with `init_from`; 0 draws every frame equally). There the arm has not moved yet, so only the cameras say
    where the named cube is."""
    start_frames: int = 20
    camera_warmup_steps: int | None = None
    """Train the first N steps on episode starts only (the first `camera_warmup_frames` frames) with the joint
    state replaced by its dataset mean (None: 3,000 or a quarter of `steps`, whichever is less, from scratch; 0
    with `init_from`). A model trained from scratch otherwise learns to continue the motion the state shows and
    never starts reading its cameras; with the state hidden and the arm at home, only the cameras and the
    instruction say where to go. Ordinary batches (and `start_share`) follow."""
    camera_warmup_frames: int = 3
    noise_samples: int = 2
    """Noise draws per frame in the flow-matching loss. The VLM runs once per frame and only the small expert
    runs for each draw, so K > 1 gives each step K times as many targets for a little more compute."""
    played_weight: float = 3.0
    """Loss weight of the first `n_action_steps` actions of each chunk (those the policy plays before it looks
    again) against the rest of the chunk (1: all alike)."""
    ema_decay: float = 0.999
    """Keep an exponential moving average of the weights (0: off; 0.999 averages over about 1,000 steps) and
    save it as the checkpoint's policy, as Diffusion Policy does. The raw weights go in the training state, for
    resuming. The average starts again when the camera warm-up ends: its steps train another objective (the state
    hidden). A run must keep the setting it started with."""
    mixed_precision: bool | None = None
    """Run the forward pass under bfloat16 autocast: matrix products in bfloat16; attention, weights, optimiser,
    the moving average and the loss in float32. None: on where it is fast (a CUDA GPU with bfloat16, a CPU with
    AVX512-BF16 or AMX: 1.28-1.35x the steps per second on one thread, benchmarks/results/policy_speed.json), off
    elsewhere (slower on CPUs without those instructions; Apple's MPS)."""
    frozen_dtype: str = "float32"
    """Hold the policy's frozen weights (with `init_from` and SmolVLA's `train_expert_only`, the whole SmolVLM
    backbone) in "bfloat16": half their memory and no casting each step. Needs `mixed_precision`; for GPUs."""
    gradient_checkpointing: bool = False
    """Recompute each layer's MLP activations in the backward pass instead of keeping them: less memory (a larger
    batch on a GPU) for some more compute; the gradients are the same."""
    compile: bool = False
    """Compile the training step's model with torch.compile (for GPUs; on the kit's CPUs eager was faster)."""
    loader_workers: int = 0
    """Processes that read and decode the coming steps' frames while a step trains (DataLoader workers, with pinned
    memory on CUDA). 0: the training loop reads them itself, which suits data whose decoded frames fit in memory
    (the kit's simulated datasets); a real-arm recording too large for that wants 4-8 on a GPU machine."""
    seed: int = 0
    num_threads: int = 0
    """CPU threads for torch; 0 = every core (training is the machine's only job), shared out among the processes
    of a torchrun launch on this machine."""
    device: str = "auto"
    """"auto" picks CUDA, then MPS, then the CPU."""
    camera_map: dict[str, str] | None = None
    """Policy camera key -> dataset camera key; None = the same names."""
    episodes: list[int] | None = None
    """Train on these episodes only (default: all)."""
    policy_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra SmolVLAConfig fields for a fresh preset (e.g. {"samples_per_chunk": 8}); carried in its checkpoints."""
    resume: bool = False
    """Continue the run in `out` even where these settings differ from the ones it was saved with (each difference
    is printed). Without it, re-running into a run resumes it only with its own settings, and says what differs."""
    progress: bool = True

    def resolved(self, device: torch.device | None = None) -> "TrainConfig":
        """A copy with every None filled in (`START_DEFAULTS`, mixed precision for `device`) and the settings
        checked, naming the field that is wrong. This is what a run records."""
        start = START_DEFAULTS["init_from" if self.init_from else "scratch"]
        values = {name: start[name] if getattr(self, name) is None else getattr(self, name) for name in start}
        if self.camera_warmup_steps is None and not self.init_from:
            values["camera_warmup_steps"] = min(start["camera_warmup_steps"], self.steps // 4)
        if self.warmup_steps is None:
            values["warmup_steps"] = min(start["warmup_steps"], self.steps // 10)
        values["warmup_steps"] = max(1, values["warmup_steps"])
        if self.mixed_precision is None:
            values["mixed_precision"] = bfloat16_is_fast(device or pick_device(self.device))
        cfg = replace(self, **values)
        cfg.adam_betas = tuple(cfg.adam_betas)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Refuse settings a run cannot train with (on a resolved config)."""
        if self.steps < 1 or self.batch_size < 1:
            raise InputError(f"steps and batch_size must be at least 1, got {self.steps} and {self.batch_size}.")
        if not (math.isfinite(self.lr) and self.lr > 0 and self.grad_clip > 0 and self.weight_decay >= 0):
            raise InputError(
                f"lr and grad_clip must be positive and finite, weight_decay >= 0; got {self.lr}, {self.grad_clip} and "
                f"{self.weight_decay}."
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0 or self.warmup_steps < 0:
            raise InputError(f"min_lr_ratio must be in [0, 1] and warmup_steps >= 0, got {self.min_lr_ratio} and "
                             f"{self.warmup_steps}.")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise InputError(f"max_minutes must be positive, got {self.max_minutes}.")
        if not 0.0 <= self.start_share <= 1.0:
            raise InputError(f"start_share must be between 0 and 1, got {self.start_share}.")
        if self.played_weight <= 0:
            raise InputError(f"played_weight must be positive, got {self.played_weight}.")
        if self.noise_samples < 1:
            raise InputError(f"noise_samples must be at least 1, got {self.noise_samples}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay must be in [0, 1), got {self.ema_decay}.")
        if self.camera_warmup_steps < 0 or self.camera_warmup_frames < 1:
            raise InputError(
                f"camera_warmup_steps must be >= 0 and camera_warmup_frames >= 1, got "
                f"{self.camera_warmup_steps} and {self.camera_warmup_frames}."
            )
        if self.frozen_dtype not in ("float32", "bfloat16"):
            raise InputError(f"frozen_dtype must be 'float32' or 'bfloat16', got {self.frozen_dtype!r}.")
        if self.frozen_dtype == "bfloat16" and not self.mixed_precision:
            raise InputError("frozen_dtype bfloat16 needs mixed_precision (bfloat16 autocast): pass --mixed-precision.")
        if self.loader_workers < 0:
            raise InputError(f"loader_workers must be >= 0, got {self.loader_workers}.")
        if self.camera_warmup_steps and self.camera_warmup_steps >= self.steps:
            raise InputError(
                f"The camera warm-up ({self.camera_warmup_steps} steps) would take the whole run of {self.steps} "
                f"steps; lower --camera-warmup-steps or raise --steps."
            )


def bfloat16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 autocast speeds training up on `device` (native bfloat16 arithmetic)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(probe() for probe in probes if probe is not None)
    return False


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class LaunchError(KitError, RuntimeError):
    """Another process of a torchrun launch failed, so this one stopped (its checkpoints are intact)."""


@dataclass(frozen=True)
class Processes:
    """This process's place in a data-parallel run. torchrun (and accelerate launch) start one process per device and
    tell each its RANK among WORLD_SIZE processes, and its LOCAL_RANK on this machine; a plain run is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints, the loss log, the plot and progress."""
        return self.rank == 0


def start_processes(device_name: str) -> tuple[Processes, torch.device]:
    """Join the launch's process group (gloo on CPUs, NCCL on CUDA GPUs) when there is one; pick this process's device."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        return Processes(), device
    import datetime

    import torch.distributed as dist

    procs = Processes(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")), int(env.get("LOCAL_WORLD_SIZE", "1")))
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # A process that dies closes its connections and the others fail at once; the timeout bounds a hung one.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=10))
    return procs, device


def _all_sum(value: torch.Tensor, procs: Processes) -> torch.Tensor:
    """The sum of `value` over the processes (itself in a plain run)."""
    if procs.world == 1:
        return value
    import torch.distributed as dist

    value = value.clone()
    dist.all_reduce(value)
    return value


def _check_same_everywhere(procs: Processes, settings: dict[str, Any], device: torch.device) -> None:
    """Refuse a launch whose processes were given different settings (or see different data), naming the ranks."""
    if procs.world == 1:
        return
    import hashlib

    import torch.distributed as dist

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).digest()
    mine = torch.tensor([int.from_bytes(digest[:7], "big")], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(procs.world)]
    dist.all_gather(every, mine)
    differ = [r for r, h in enumerate(every) if int(h) != int(every[0])]
    if differ:
        raise InputError(
            f"The processes of this launch do not agree on the run's settings or data: ranks {differ} differ from "
            f"rank 0. Start every process with the same command, on the same dataset and run folder."
        )


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to `peak * min_ratio` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def dataset_stats(reader: Any) -> dict[str, dict[str, np.ndarray]]:
    """Mean/std of state and action from the dataset's `meta/stats.json` (a clear error naming it if missing)."""
    stats = reader.meta.require_stats([STATE_KEY, ACTION_KEY])
    return {
        key: {"mean": np.asarray(stats[key]["mean"], np.float32), "std": np.asarray(stats[key]["std"], np.float32)}
        for key in (STATE_KEY, ACTION_KEY)
    }


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split the optimiser state into tensors (for safetensors) and plain values (for JSON)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, state in sd["state"].items():
        plain["state"][str(pid)] = {}
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain["state"][str(pid)][name] = value
    return tensors, plain


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(pid): dict(values) for pid, values in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def save_checkpoint(
    run: Path, step: int, policy: Any, optimizer: torch.optim.Optimizer, cfg: TrainConfig, dataset: dict[str, Any],
    ema: WeightAverage | None = None, launch: dict[str, Any] | None = None,
) -> Path:
    """Write `run/checkpoints/step_<step>/` atomically and point `run/checkpoints/last` at it.

    `dataset` records what the policy was trained on (folder, fps, camera image sizes), so evaluation can render
    the simulator's cameras at the same size. With `ema`, the policy saved is the average and the raw weights
    join the training state. `launch` records how many processes shared each batch (any number can resume it).
    """
    from safetensors.torch import save_file

    from smolvla_kit.data.layout import fsync_dir, fsync_file, write_bytes_atomic

    root = run / CHECKPOINTS
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tensors, plain = _optimizer_tensors(optimizer)
    if ema is None:
        policy.save_pretrained(tmp)
    else:
        with ema.swapped_in() as raw:
            policy.save_pretrained(tmp)
        tensors.update({f"raw.{name}": value.cpu() for name, value in raw.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "training_state.safetensors"))
    (tmp / "training_state.json").write_text(
        json.dumps(
            {"step": step, "optimizer": plain, "train_config": _jsonable(asdict(cfg)), "dataset": dataset,
             "launch": launch or {"processes": 1, "batch_per_process": cfg.batch_size}}, indent=1
        )
    )
    # Durable, not only atomic: after a power cut `last` names a checkpoint whose files are all on disk.
    for written in tmp.iterdir():
        fsync_file(written)
    fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(root)
    write_bytes_atomic(root / LAST, final.name.encode())
    return final


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class WeightAverage:
    """Exponential moving average of a model's trainable weights (`TrainConfig.ema_decay`).

    The share kept ramps up as n / (n + 10) to `decay`, n counting the steps since the average (re)started: the
    first update replaces it, so nothing from before (random weights, another phase of training) lingers.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.average = {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self, n: int) -> None:
        """Fold the weights into the average after the n-th step (from 0) since it (re)started."""
        keep = min(self.decay, n / (n + 10))
        for name, p in self.params.items():
            self.average[name].lerp_(p.detach(), 1.0 - keep)

    @torch.no_grad()
    def _set_weights(self, values: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            p.copy_(values[name])

    def load_raw(self, tensors: dict[str, torch.Tensor], source: Path) -> None:
        """Resume: the model holds the average (the saved policy); put the raw weights back from `tensors`."""
        missing = [name for name in self.params if f"raw.{name}" not in tensors]
        if missing:
            raise InputError(
                f"{source} has no raw weights for {missing[0]} (and {len(missing) - 1} more): it was saved without "
                f"ema_decay. Resume it with ema_decay 0, or start a new run folder."
            )
        self.average = {name: p.detach().clone() for name, p in self.params.items()}
        self._set_weights({name: tensors[f"raw.{name}"] for name in self.params})

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[dict[str, torch.Tensor]]:
        """Inside the block the model holds the average (to save it) and the block gets a copy of the raw weights,
        which come back after."""
        raw = {name: p.detach().clone() for name, p in self.params.items()}
        self._set_weights(self.average)
        try:
            yield raw
        finally:
            self._set_weights(raw)


# ----------------------------------------------------------------------------------------------------------------
# The loop


def _batch_indices(
    seed: int, step: int, n: int, batch_size: int, start_pool: np.ndarray | None = None, start_share: float = 0.0
) -> torch.Tensor:
    """The samples of one step: a function of (seed, step) alone, so a resumed run draws the same batches.

    With `start_share`, that share of the batch comes from `start_pool` (sample indices) and the rest from all n.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    k = int(round(batch_size * start_share)) if start_pool is not None and len(start_pool) else 0
    uniform = torch.randint(0, n, (batch_size - k,), generator=g)
    if not k:
        return uniform
    early = torch.as_tensor(start_pool)[torch.randint(0, len(start_pool), (k,), generator=g)]
    return torch.cat([early, uniform])


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for key, value in items[0].items():
        if torch.is_tensor(value):
            batch[key] = torch.stack([it[key] for it in items])
        else:
            batch[key] = [it[key] for it in items]
    return batch


class StepBatches(torch.utils.data.Sampler):
    """Which frames each step trains on, this process's share: a function of (seed, step) alone, so a resumed or
    relaunched run draws the same batches. A DataLoader takes it as its batch sampler (`loader`), so that workers
    can decode the frames of the coming steps while the current one trains.

    During the camera warm-up a step's frames come from episode starts and `hide_state` replaces their joint
    state by its dataset mean (see TrainConfig.camera_warmup_steps); then `start_share` of each batch comes from
    the first `start_frames` frames and the rest from anywhere.
    """

    def __init__(
        self, data: Any, cfg: TrainConfig, start: int = 0, share: slice = slice(None),
        start_pool: np.ndarray | None = None, warmup_pool: np.ndarray | None = None,
        mean_state: torch.Tensor | None = None,
    ):
        self.data, self.cfg, self.start, self.share = data, cfg, start, share
        self.start_pool, self.warmup_pool, self.mean_state = start_pool, warmup_pool, mean_state

    def indices(self, step: int) -> list[int]:
        cfg = self.cfg
        if step < cfg.camera_warmup_steps:
            picks = _batch_indices(cfg.seed, step, len(self.data), cfg.batch_size, self.warmup_pool, 1.0)
        else:
            picks = _batch_indices(cfg.seed, step, len(self.data), cfg.batch_size, self.start_pool, cfg.start_share)
        return picks[self.share].tolist()  # the whole batch is drawn as in one process: the shares are disjoint

    def __iter__(self) -> Iterator[list[int]]:
        return (self.indices(step) for step in range(self.start, self.cfg.steps))

    def __len__(self) -> int:
        return max(0, self.cfg.steps - self.start)

    def hide_state(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        if step < self.cfg.camera_warmup_steps:
            batch[STATE_KEY] = self.mean_state.expand_as(batch[STATE_KEY]).clone()  # (B, state)
        return batch

    def loader(self, workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.data, batch_sampler=self, collate_fn=_collate, num_workers=workers, pin_memory=pin_memory,
            prefetch_factor=2 if workers else None, persistent_workers=False,
        )


# What a run is: changing one of these and re-running into the same folder would make a different run. The
# others (budgets, logging, threads, device) may change between sessions of one run; the policy's shape
# (chunk_size, policy_overrides) and ema_decay cannot change at all and are checked on their own.
RUN_SETTINGS = (
    "dataset", "preset", "init_from", "steps", "batch_size", "lr", "warmup_steps", "min_lr_ratio",
    "adam_betas", "adam_eps", "weight_decay", "grad_clip", "start_share", "start_frames", "camera_warmup_steps",
    "camera_warmup_frames", "noise_samples", "played_weight", "seed", "camera_map", "episodes", "mixed_precision",
    "frozen_dtype",
)


def _resume_differences(saved: dict[str, Any], cfg: TrainConfig, saved_stats: dict, data_stats: dict) -> list[str]:
    """What this run's settings and dataset statistics change about the run saved with `saved`, one line each."""
    now = _jsonable(asdict(cfg))
    defaults = _jsonable(asdict(TrainConfig()))  # a setting added since the run was saved had its default then
    differ = []
    for name in RUN_SETTINGS:
        old, new = saved.get(name, defaults.get(name)), now.get(name)
        if name == "dataset":
            same = old is not None and Path(old).resolve() == Path(new).resolve()
        else:
            same = json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True)
        if not same:
            differ.append(f"{name}: saved {old!r}, now {new!r}")
    for key, stats in data_stats.items():
        for stat, value in stats.items():
            kept = saved_stats.get(key, {}).get(stat)
            if kept is not None and not np.allclose(np.asarray(kept, np.float32), value, rtol=1e-5, atol=1e-6):
                differ.append(f"the dataset's {key} {stat} changed since the run started (episodes added?)")
                break
    return differ


def train(cfg: TrainConfig, on_log: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns a summary with the final checkpoint path.

    `on_log`, if given, receives each logged row (step, loss, lr, grad_norm, elapsed_s, steps_per_s), e.g. to
    redraw a live plot in a notebook (in a torchrun launch, on rank 0 only).

    Under `torchrun --nproc_per_node N` (or `accelerate launch`) each process trains on its share of every batch with
    DistributedDataParallel; the run is the same as in one process up to float rounding, and rank 0 alone writes.
    """
    procs, device = start_processes(cfg.device)
    if procs.world == 1:
        return _train(cfg, procs, device, on_log)
    import signal

    import torch.distributed as dist

    def stopped_by_launcher(signum, frame):  # torchrun stops the others when one process fails
        _ignore_sigterm()  # once: nothing may interrupt the message below
        raise LaunchError(
            f"rank {procs.rank}: another process of this launch stopped, and the launcher stopped this one. The "
            f"checkpoints already in {Path(cfg.out) / CHECKPOINTS} are intact; fix the cause (that process's output "
            f"says it) and run the same command again to resume."
        )

    previous = signal.signal(signal.SIGTERM, stopped_by_launcher)
    summary = _train(cfg, procs, device, on_log)
    # Only after a success: a failing process leaves the group to its exit (the group could wait on the lost
    # process) and keeps ignoring the launcher's further SIGTERMs until its message is out.
    dist.destroy_process_group()
    signal.signal(signal.SIGTERM, previous)
    return summary


def train_step(
    step: int, batch: dict[str, Any], policy: Any, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
    model: torch.nn.Module | None = None, procs: Processes = Processes(),
) -> dict[str, float]:
    """One optimiser step on this process's share of step `step`'s batch -> {"loss", "lr", "grad_norm"}.

    `model` is what computes the loss: the policy itself, or it wrapped for data-parallel training (DDP) or compiled.
    The step's random draws (noise and flow times) come from a seed of (seed, step) and are drawn for the whole
    batch, so a resumed or relaunched run repeats them; the loss is the whole batch's, whatever the processes.
    """
    model = policy if model is None else model
    device = policy.device
    lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = lr
    share = len(batch[ACTION_KEY])  # frames of this process
    rows = slice(procs.rank * share * cfg.noise_samples, (procs.rank + 1) * share * cfg.noise_samples)
    torch.manual_seed(cfg.seed * 7_919 + step)
    noise, flow_time = policy.model.draw_flow_noise(cfg.batch_size * cfg.noise_samples, device)  # (B*K, T, A), (B*K,)
    # Under a launch, divide by the whole batch's weight (summed over the processes): their averaged gradients are
    # then the batch's. One process divides by its own batch's weight, forward's default.
    weight_total = None
    if procs.world > 1:
        weight_total = _all_sum(policy.loss_weights(batch, cfg.played_weight).sum().to(device), procs) / procs.world
    with torch.autocast(device.type, dtype=torch.bfloat16) if cfg.mixed_precision else contextlib.nullcontext():
        loss, _ = model(batch, noise=noise[rows], time=flow_time[rows], noise_samples=cfg.noise_samples,
                        played_weight=cfg.played_weight, weight_total=weight_total)
    loss_all = _all_sum(loss.detach(), procs) / procs.world  # the whole batch's loss
    if not torch.isfinite(loss_all):
        raise NonFinite(
            f"The loss became {loss_all.item()} at step {step}. The last checkpoint ({latest_checkpoint(cfg.out)}) is "
            f"intact; lower --lr and resume."
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), cfg.grad_clip)
    optimizer.step()
    return {"loss": loss_all.item(), "lr": lr, "grad_norm": float(grad_norm)}


@dataclass
class _PreparedRun:
    """What the training loop starts from: the data, the policy with its optimiser and weight average, and where a
    resumed run stopped."""

    reader: Any  # LeRobotDatasetReader
    policy: Any  # SmolVLAPolicy
    model: torch.nn.Module  # what computes the loss: the policy, or it wrapped for DDP or compiled
    optimizer: torch.optim.Optimizer
    ema: WeightAverage | None
    batches: StepBatches
    start: int  # the first step to take
    dataset_info: dict[str, Any]  # recorded with each checkpoint
    launch: dict[str, Any]  # processes, batch per process, device: recorded too


def _prepare_run(cfg: TrainConfig, procs: Processes, device: torch.device, run: Path) -> _PreparedRun:
    """Open the dataset, start (or resume) the policy and check it fits the data, and build the optimiser, the
    weight average and the step batches."""
    from smolvla_kit.data import ChunkDataset, LeRobotDatasetReader, check_features

    # The policy: a run's last checkpoint (resuming it), given weights, or a fresh preset.
    reader = LeRobotDatasetReader(cfg.dataset)
    resume_from = latest_checkpoint(run)
    saved_state = json.loads((resume_from / "training_state.json").read_text()) if resume_from else None
    policy = _start_policy(cfg, resume_from)
    pcfg = policy.config
    camera_map = check_features(reader, pcfg.state_dim, pcfg.action_dim, pcfg.image_keys, cfg.camera_map)
    data_stats = dataset_stats(reader)
    if resume_from is None:
        policy.normalizer.set_stats(data_stats)
    else:
        _check_resume(run, resume_from, saved_state, policy, cfg, data_stats)

    # The data: every frame with its action chunk; each step's batch a function of (seed, step).
    data = ChunkDataset(reader, chunk_size=pcfg.chunk_size, camera_map=camera_map, episodes=cfg.episodes,
                        policy_camera_keys=pcfg.image_keys, grow_cache=True)
    data.preload()
    if len(data) < procs.world:
        raise InputError(f"{cfg.dataset} has {len(data)} training frames, fewer than the {procs.world} processes "
                         f"launched: launch at most {len(data)}.")
    _check_same_everywhere(procs, {"settings": _jsonable(asdict(cfg)), "frames": len(data),
                                   "stats": {k: {s: v.tolist() for s, v in d.items()} for k, d in data_stats.items()},
                                   "resume_from": str(resume_from)}, device)
    dataset_info = {
        "root": str(reader.meta.root),
        "fps": reader.meta.fps,
        "camera_shapes": {p: list(reader.meta.shape(d)) for p, d in camera_map.items()},
    }

    # The optimiser, the weight average and where a resumed run stopped.
    model = _prepare_model(policy, cfg, device, procs)
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    ema = WeightAverage(policy, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start = _restore(resume_from, saved_state, optimizer, ema, cfg) if resume_from else 0
    share_size = cfg.batch_size // procs.world
    launch = {"processes": procs.world, "batch_per_process": share_size, "device": device.type}
    batches = StepBatches(
        data, cfg, start, share=slice(procs.rank * share_size, (procs.rank + 1) * share_size),
        start_pool=data.indices_before_frame(cfg.start_frames) if cfg.start_share > 0 else None,
        warmup_pool=data.indices_before_frame(cfg.camera_warmup_frames) if cfg.camera_warmup_steps > 0 else None,
        mean_state=torch.as_tensor(data_stats[STATE_KEY]["mean"]),  # (state_dim,)
    )
    return _PreparedRun(reader, policy, model, optimizer, ema, batches, start, dataset_info, launch)


def _train(
    cfg: TrainConfig, procs: Processes, device: torch.device, on_log: Callable[[dict[str, float]], None] | None
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    cfg = cfg.resolved(device)
    if cfg.batch_size % procs.world:
        raise InputError(
            f"batch_size {cfg.batch_size} does not split evenly among {procs.world} processes: choose a multiple of "
            f"{procs.world} (it is the whole step's batch; each process takes batch_size / {procs.world})."
        )
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // procs.local_world))

    prepared = _prepare_run(cfg, procs, device, run)
    policy, optimizer, ema, start = prepared.policy, prepared.optimizer, prepared.ema, prepared.start
    reader, dataset_info, launch = prepared.reader, prepared.dataset_info, prepared.launch

    log_path = run / "loss.csv"
    elapsed_before = _elapsed_at(log_path, start)
    log_file = _open_log(log_path, start) if procs.main else None
    t0 = time.perf_counter()
    step = last_saved = start
    recent: list[float] = []
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not (cfg.progress and procs.main))
    coming = iter(prepared.batches.loader(cfg.loader_workers, pin_memory=device.type == "cuda"))
    try:
        while step < min(cfg.steps, cfg.stop_at or cfg.steps):
            if cfg.max_minutes is not None:  # every process stops at the same step: the first to run out decides
                over = elapsed_before + time.perf_counter() - t0 > 60 * cfg.max_minutes
                if _all_sum(torch.tensor([float(over)], device=device), procs).item() > 0:
                    break
            batch = prepared.batches.hide_state(next(coming), step)
            result = train_step(step, batch, policy, optimizer, cfg, prepared.model, procs)
            if ema is not None:  # the average restarts when the camera warm-up ends
                ema.update(step - cfg.camera_warmup_steps if step >= cfg.camera_warmup_steps else step)
            step += 1
            recent.append(result["loss"])
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                rate = (step - start) / max(1e-9, time.perf_counter() - t0)
                row = {"step": step, "loss": float(np.mean(recent)), "lr": result["lr"],
                       "grad_norm": result["grad_norm"], "elapsed_s": elapsed_before + time.perf_counter() - t0,
                       "steps_per_s": rate}
                if log_file is not None:
                    _log_row(log_file, row)
                    if on_log is not None:
                        on_log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", steps_per_s=f"{rate:.2f}")
                recent = []
            if step % cfg.save_every == 0:
                if procs.main:
                    save_checkpoint(run, step, policy, optimizer, cfg, dataset_info, ema, launch)
                    plot_loss(log_path, run / "loss.png")
                last_saved = step
    except Exception as exc:
        if procs.world > 1 and not isinstance(exc, LaunchError) and _is_lost_peer(exc):
            _ignore_sigterm()  # the launcher is about to stop this process too; let it say why first
            raise LaunchError(
                f"rank {procs.rank}: another process of this launch stopped at step {step} ({exc}). Checkpoints up to "
                f"{latest_checkpoint(run)} are intact; fix the cause (that process's output says it) and run the same "
                f"command again to resume."
            ) from exc
        raise
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        # The decoded frames can be gigabytes: hand them back now, not when the garbage collector gets round
        # to it, so that a caller running train() again (or evaluating) has the memory.
        reader.clear_cache()
    if procs.main:
        if step != last_saved:
            save_checkpoint(run, step, policy, optimizer, cfg, dataset_info, ema, launch)
        plot_loss(log_path, run / "loss.png")
    if procs.world > 1:
        import torch.distributed as dist

        dist.barrier()  # every process returns once the last checkpoint is on disk
    return {
        "checkpoint": str(latest_checkpoint(run)),
        "steps": step,
        "resumed_from": start,
        "train_seconds": elapsed_before + time.perf_counter() - t0,
        "loss_log": str(log_path),
    }


def _start_policy(cfg: TrainConfig, resume_from: Path | None) -> Any:
    """The policy a run trains: its last checkpoint's, `init_from`'s weights, or a fresh preset seeded by `seed`."""
    from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy

    overrides = dict(cfg.policy_overrides)
    if cfg.chunk_size is not None:
        overrides["chunk_size"] = cfg.chunk_size
    if resume_from is not None:
        policy = SmolVLAPolicy.from_pretrained(resume_from)
        saved = policy.config.to_dict()
        for name, value in overrides.items():  # a resume continues the saved policy: it cannot change its shape
            if json.dumps(saved.get(name), sort_keys=True) != json.dumps(value, sort_keys=True):
                raise InputError(
                    f"{resume_from} was trained with {name}={saved.get(name)!r}; this run asks for {name}={value!r}. "
                    f"Resume with the run's own settings or train into a new --out folder."
                )
        return policy
    if cfg.init_from:
        return SmolVLAPolicy.from_pretrained(cfg.init_from, **overrides)
    torch.manual_seed(cfg.seed)  # the initial weights
    return SmolVLAPolicy(SmolVLAConfig.preset(cfg.preset, **overrides))


def _check_resume(run: Path, resume_from: Path, saved_state: dict, policy: Any, cfg: TrainConfig,
                  data_stats: dict) -> None:
    """Refuse to resume `run` with settings or data that would make it another run, unless `cfg.resume`."""
    saved_stats = {k: {s: v.numpy() for s, v in d.items()} for k, d in policy.normalizer.stats_dict().items()}
    differ = _resume_differences(saved_state["train_config"], cfg, saved_stats, data_stats)
    if differ and not cfg.resume:
        raise InputError(
            f"{run} holds a run (at {resume_from.name}) that these settings would change:\n  - "
            + "\n  - ".join(differ)
            + "\nRe-run with its own settings to resume it, train into a new --out folder, or pass --resume to "
            "continue it with these settings."
        )
    for line in differ:
        log.warning("continuing %s with a change: %s", run, line)


def _prepare_model(policy: Any, cfg: TrainConfig, device: torch.device, procs: Processes) -> torch.nn.Module:
    """Put the policy on `device` in training mode as `cfg` asks; return what the step calls (DDP-wrapped under a
    launch, compiled with `compile`)."""
    policy.to(device)
    if cfg.frozen_dtype == "bfloat16":  # the weights no step changes; autocast computes in bfloat16 anyway
        with torch.no_grad():
            for param in policy.parameters():
                if not param.requires_grad:
                    param.data = param.data.to(torch.bfloat16)
    policy.train()
    policy.model.vlm_with_expert.gradient_checkpointing = cfg.gradient_checkpointing
    model: torch.nn.Module = policy
    if procs.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(policy, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if cfg.compile else model


def _restore(resume_from: Path, saved_state: dict, optimizer: torch.optim.Optimizer, ema: WeightAverage | None,
             cfg: TrainConfig) -> int:
    """Load a checkpoint's optimiser state, random state and raw weights; return the step it was saved at."""
    from smolvla_kit.policy.checkpoint import read_safetensors

    tensors = read_safetensors(resume_from / "training_state.safetensors", what="optimiser and random state")
    _load_optimizer(optimizer, tensors, saved_state["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    saved_decay = saved_state["train_config"].get("ema_decay", 0.0)
    if saved_decay != cfg.ema_decay:
        raise InputError(
            f"{resume_from} was saved with ema_decay {saved_decay}; this run asks for {cfg.ema_decay}. Resume it "
            f"with the same ema_decay, or train into a new --out folder."
        )
    if ema is not None:
        ema.load_raw(tensors, resume_from / "training_state.safetensors")
    return int(saved_state["step"])


def _log_row(log_file, row: dict[str, float]) -> None:
    csv.writer(log_file).writerow([row["step"], f"{row['loss']:.6f}", f"{row['lr']:.3e}", f"{row['grad_norm']:.4f}",
                                   f"{row['elapsed_s']:.2f}", f"{row['steps_per_s']:.3f}"])
    log_file.flush()


def _open_log(path: Path, start: int):
    """The loss log for appending, rows after `start` (a resumed run logs them again) dropped, header written."""
    _truncate_log(path, start)
    new = not path.exists()
    log_file = open(path, "a", newline="")
    if new:
        csv.writer(log_file).writerow(["step", "loss", "lr", "grad_norm", "elapsed_s", "steps_per_s"])
    return log_file


def _ignore_sigterm() -> None:
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _is_lost_peer(exc: BaseException) -> bool:
    """Whether a collective failed because another process of the launch went away (gloo, NCCL, the store)."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("connection closed", "connection reset", "broken pipe", "gloo", "nccl")
    )


def _truncate_log(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a run resumes from (they will be logged again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step] if rows else []
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


def _elapsed_at(path: Path, step: int) -> float:
    """Training seconds already spent up to `step`, from the log (0 for a fresh run)."""
    if not path.exists() or step == 0:
        return 0.0
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    return float(rows[-1]["elapsed_s"]) if rows else 0.0


def read_loss_log(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in (rows[0].keys() if rows else [])}


def plot_loss(log_path: Path, out: Path) -> Path | None:
    """Draw the loss curve of a run to a PNG."""
    from smolvla_kit.viz import plot_loss_curve, save_figure

    if not log_path.exists():
        return None
    log = read_loss_log(log_path)
    if len(log.get("step", [])) == 0:
        return None
    return save_figure(plot_loss_curve(log["step"], log["loss"]), out)


__all__ = [
    "LaunchError", "TrainConfig", "lr_at", "train_step", "plot_loss", "read_loss_log", "save_checkpoint", "train",
]
