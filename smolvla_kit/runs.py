"""Runs and checkpoints: where a trained policy is, what it was trained on, and loading it. Train, evaluate and
deploy all go through here.

A training run is a folder:

    RUN/loss.csv, RUN/loss.png
    RUN/checkpoints/step_000500/   config.json, model.safetensors (the policy), training_state.json/.safetensors
    RUN/checkpoints/last           a text file naming the newest complete checkpoint folder

Anything that takes a checkpoint takes it as a checkpoint folder, a run folder or its `checkpoints/last` file (the
newest checkpoint), the name of one the kit ships (`kit:nano-pick-place`), or a Hugging Face Hub id
(`lerobot/smolvla_base`): `resolve` turns each into a folder, `load` into a policy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from smolvla_kit.errors import MissingFile
from smolvla_kit.policy import SmolVLAPolicy
from smolvla_kit.policy.checkpoint import looks_like_hub_id, path_inside, read_json_object, resolve_folder
from smolvla_kit.trained import SHIPPED
from smolvla_kit.vocabulary import IMAGE_PREFIX, camera_key

CHECKPOINTS = "checkpoints"
LAST = "last"


def latest_checkpoint(run: Path | str) -> Path | None:
    """The checkpoint `run/checkpoints/last` names, if any."""
    pointer = Path(run) / CHECKPOINTS / LAST
    if not pointer.exists():
        return None
    path = path_inside(pointer.parent, pointer.read_text().strip(), str(pointer))
    if not (path / "training_state.json").exists():
        raise MissingFile(
            f"{pointer} names {path.name}, which is missing or incomplete. Delete {pointer} to start over, or point "
            f"it at another folder in {pointer.parent}."
        )
    return path


def resolve(checkpoint: Path | str) -> Path:
    """The checkpoint folder meant by `checkpoint` (see the module's docstring); a Hub id is downloaded once."""
    name = str(checkpoint)
    path = Path(name).expanduser()
    if path.is_file() and path.name == LAST and path.parent.name == CHECKPOINTS:
        path = path.parent.parent  # the run
    if path.is_dir() and not (path / "config.json").exists() and (path / CHECKPOINTS / LAST).is_file():
        return latest_checkpoint(path)
    hub_id = looks_like_hub_id(name) and not path.exists()
    if name not in SHIPPED and not hub_id and not (path / "config.json").is_file():
        raise MissingFile(
            f"{path} is not a checkpoint folder (no config.json). Pass a folder such as "
            f"outputs/train/nano/checkpoints/step_003000, a run folder or its checkpoints/last file, one the kit "
            f"ships ({', '.join(SHIPPED)}) or a Hub id such as lerobot/smolvla_base."
        )
    return resolve_folder(name)


def load(checkpoint: Path | str, device: str | torch.device = "cpu", dtype: str = "float32",
         **overrides: Any) -> SmolVLAPolicy:
    """The policy in `checkpoint` (anything `resolve` takes) in eval mode, its VLM and expert in `dtype`, with
    config `overrides` such as n_action_steps; an override that is None keeps the checkpoint's setting, so unset
    options pass straight through."""
    given = {name: value for name, value in overrides.items() if value is not None}
    policy = SmolVLAPolicy.from_pretrained(resolve(checkpoint), device=device, **given)
    policy.set_dtype(dtype)
    policy.eval()
    return policy


def trained_image_size(checkpoint: Path) -> int | None:
    """The camera image size the policy was trained on, as its training run recorded it (None if not recorded)."""
    state = Path(checkpoint) / "training_state.json"
    if not state.exists():
        return None
    shapes = json.loads(state.read_text()).get("dataset", {}).get("camera_shapes", {})
    return int(next(iter(shapes.values()))[0]) if shapes else None


def camera_keys(checkpoint: Path) -> list[str]:
    """The policy's camera keys, read from the checkpoint's config.json without loading the weights."""
    raw = read_json_object(Path(checkpoint) / "config.json", what="SmolVLA checkpoint config")
    if "kit_format" in raw:
        return [camera_key(n) for n in raw["config"]["camera_names"]]
    return [k for k in raw.get("input_features", {}) if k.startswith(IMAGE_PREFIX)]


def cpu_threads(requested: int = 0) -> int:
    """Torch threads for a process that shares the machine (evaluation, a policy server): `requested`, or
    cores - 1 when 0 (at least 1), leaving a core for the simulator or the robot loop."""
    return requested or max(1, (os.cpu_count() or 2) - 1)


__all__ = ["CHECKPOINTS", "LAST", "camera_keys", "cpu_threads", "latest_checkpoint", "load", "resolve",
           "trained_image_size"]
