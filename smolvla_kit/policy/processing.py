"""Pre- and post-processing: from a robot observation to model inputs, and from model outputs to actions.

Everything the network does *not* learn happens here, in plain sight:

    images  : uint8 (H, W, 3) or float (3, H, W) in [0, 1] -> resize keeping aspect, pad left/top
              with 0 to a square, then x * 2 - 1 into [-1, 1] (SigLIP's range; no ImageNet stats)
    task    : str -> str + "\\n" -> token ids, right-padded/truncated to 48
    state   : (S,) -> (x - mean) / (std + 1e-8) -> zero-padded to 32
    actions : model output (50, 32) -> first A dims -> x * std + mean

A wrong camera key, a state of the wrong size, missing statistics: each raises an error that
names the key and the expected shape rather than silently feeding the model garbage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smolvla_kit.errors import InputError, MissingKey

from ..vocabulary import ACTION_KEY, IMAGE_PREFIX, STATE_KEY, match_cameras
from .config import SmolVLAConfig

# Which statistics each normalisation mode needs (LeRobot's names).
STATS_FOR_MODE = {
    "IDENTITY": (),
    "MEAN_STD": ("mean", "std"),
    "MIN_MAX": ("min", "max"),
    "QUANTILES": ("q01", "q99"),
    "QUANTILE10": ("q10", "q90"),
}
EPS = 1e-8


# =============================================================================================
# Normalisation statistics, stored as buffers so they travel with the weights
# =============================================================================================


class Normalizer(nn.Module):
    """State/action (un)normalisation with statistics kept as buffers (`state_mean`, `action_std`, ...).

    Without statistics the buffers hold NaN, and any attempt to (un)normalise raises a clear error:
    the policy never runs un-normalised by accident. Choose `IDENTITY` in
    `config.normalization_mapping` to opt out explicitly.
    """

    def __init__(self, config: SmolVLAConfig, stats: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__()
        self.source = ""  # where the stats came from, for error messages
        self.modes = {"state": config.norm_mode("STATE"), "action": config.norm_mode("ACTION")}
        self.dims = {"state": config.state_dim, "action": config.action_dim}
        for feature, mode in self.modes.items():
            for stat in STATS_FOR_MODE[mode]:
                self.register_buffer(f"{feature}_{stat}", torch.full((self.dims[feature],), float("nan")))
        if stats is not None:
            self.set_stats(stats)

    def set_stats(self, stats: Mapping[str, Mapping[str, Any]], partial: bool = False, source: str = "") -> None:
        """Copy `{"observation.state": {"mean": .., "std": ..}, "action": {...}}` into the buffers.

        `partial=True` (checkpoint loading) skips features absent from `stats`; they stay missing and
        raise on first use, with `source` in the message.
        """
        self.source = source
        for feature, key in (("state", STATE_KEY), ("action", ACTION_KEY)):
            needed = STATS_FOR_MODE[self.modes[feature]]
            if not needed:
                continue
            if key not in stats and partial:
                continue
            if key not in stats:
                raise MissingKey(
                    f"Normalisation stats for {key!r} are missing (mode {self.modes[feature]} needs {list(needed)}); "
                    f"the stats given have keys {sorted(stats)}. Pass the dataset's stats, e.g. "
                    f"{{'{key}': {{'mean': ..., 'std': ...}}}}."
                )
            for stat in needed:
                if stat not in stats[key]:
                    raise MissingKey(f"Stats for {key!r} lack {stat!r} (have {sorted(stats[key])}).")
                value = torch.as_tensor(np.asarray(_to_numpy(stats[key][stat]), dtype=np.float32)).flatten()
                if value.numel() != self.dims[feature]:
                    raise InputError(
                        f"Stats {key!r}.{stat} have {value.numel()} values, expected {self.dims[feature]} "
                        f"(the policy's {feature}_dim)."
                    )
                if not torch.isfinite(value).all():
                    raise InputError(f"Stats {key!r}.{stat} contain NaN/inf: {value.tolist()}")
                getattr(self, f"{feature}_{stat}").copy_(value)

    def stats_dict(self) -> dict[str, dict[str, Tensor]]:
        """The statistics as `{"observation.state": {"mean": ...}, "action": {...}}`."""
        out: dict[str, dict[str, Tensor]] = {}
        for feature, key in (("state", STATE_KEY), ("action", ACTION_KEY)):
            for stat in STATS_FOR_MODE[self.modes[feature]]:
                out.setdefault(key, {})[stat] = getattr(self, f"{feature}_{stat}").detach().clone()
        return out

    def _stats(self, feature: str) -> list[Tensor]:
        mode = self.modes[feature]
        values = [getattr(self, f"{feature}_{s}") for s in STATS_FOR_MODE[mode]]
        for s, v in zip(STATS_FOR_MODE[mode], values):
            if v.device.type != "meta" and torch.isnan(v).any():
                key = STATE_KEY if feature == "state" else ACTION_KEY
                raise RuntimeError(
                    f"No normalisation stats for {key!r} ({mode} needs {s!r}). Build the policy with "
                    f"stats={{'{key}': {{...}}}} (your dataset's), load a checkpoint that has them, or set "
                    f"normalization_mapping['{'STATE' if feature == 'state' else 'ACTION'}'] = 'IDENTITY' on purpose."
                    + (f" Stats came from {self.source}." if self.source else "")
                )
        return values

    def normalize(self, x: Tensor, feature: str) -> Tensor:
        mode = self.modes[feature]
        if mode == "IDENTITY":
            return x
        a, b = self._stats(feature)
        if mode == "MEAN_STD":
            return (x - a) / (b + EPS)
        denom = torch.where(b - a == 0, torch.full_like(a, EPS), b - a)  # min/max or quantiles
        return 2 * (x - a) / denom - 1

    def unnormalize(self, x: Tensor, feature: str) -> Tensor:
        mode = self.modes[feature]
        if mode == "IDENTITY":
            return x
        a, b = self._stats(feature)
        if mode == "MEAN_STD":
            return x * b + a
        denom = torch.where(b - a == 0, torch.full_like(a, EPS), b - a)
        return (x + 1) / 2 * denom + a


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


# =============================================================================================
# Images
# =============================================================================================


def resize_with_pad(img: Tensor, size: int) -> Tensor:
    """(B, 3, h, w) -> (B, 3, size, size): bilinear resize keeping aspect, zero padding on the left and top."""
    h, w = img.shape[-2:]
    if h == size and w == size:
        return img
    ratio = max(w / size, h / size)
    new_h, new_w = int(h / ratio), int(w / ratio)
    img = F.interpolate(img, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return F.pad(img, (max(0, size - new_w), 0, max(0, size - new_h), 0), value=0.0)


def as_tensor(x: Any, dtype: torch.dtype | None = None) -> Tensor:
    """torch.as_tensor that copies read-only numpy arrays (a dataset's cache hands out read-only views)."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()
    return torch.as_tensor(x, dtype=dtype)


def to_float_chw(x: Any, key: str) -> Tensor:
    """Accept uint8 HWC (simulator) or float CHW in [0,1] (datasets), batched or not -> float (B, 3, H, W)."""
    x = as_tensor(x)
    if x.ndim == 5:  # (B, T, 3, H, W) with a time axis: the latest frame
        x = x[:, -1]
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise InputError(f"{key!r}: expected an image (H, W, 3)/(3, H, W) or a batch of them, got shape {tuple(x.shape)}.")
    if x.shape[1] != 3 and x.shape[-1] == 3:  # channels last -> first
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise InputError(f"{key!r}: expected 3 colour channels, shape (B, 3, H, W) or (B, H, W, 3); got {tuple(x.shape)}.")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not torch.is_floating_point(x):
        raise InputError(f"{key!r}: images must be uint8 0..255 or float 0..1, got dtype {x.dtype}.")
    x = x.float()
    if x.numel() and (x.max() > 1.0 + 1e-3 or x.min() < -1e-3):
        raise InputError(
            f"{key!r}: float images must be in [0, 1] (got values {x.min().item():.3g}..{x.max().item():.3g}); "
            f"pass uint8 for 0..255 data."
        )
    return x


# =============================================================================================
# The processor
# =============================================================================================


class SmolVLAProcessor:
    """Turns observations into model inputs (`preprocess`) and model outputs into actions (`postprocess`)."""

    def __init__(self, config: SmolVLAConfig, normalizer: Normalizer, tokenizer_source: str | None = None):
        self.config = config
        self.normalizer = normalizer
        self.tokenizer_source = tokenizer_source or config.tokenizer_name
        self.rename_map: dict[str, str] = {}
        self._tokenizer = None

    @property
    def tokenizer(self):
        """Loaded on first use, so building a policy (e.g. on the meta device) needs no tokenizer."""
        if self._tokenizer is None:
            from .tokenizer import TextTokenizer

            self._tokenizer = TextTokenizer(self.tokenizer_source)
            if self.config.add_image_special_tokens and self.config.fake_image_token_id is None:
                self.config.fake_image_token_id = self._tokenizer.token_id("<fake_token_around_image>")
                self.config.global_image_token_id = self._tokenizer.token_id("<global-img>")
        return self._tokenizer

    # -- observation -> model inputs --------------------------------------------------------------
    def preprocess(self, obs: Mapping[str, Any], device: torch.device | str = "cpu") -> dict[str, Any]:
        """-> dict(images=[(B,3,S,S)...], img_masks=[(B,)...], lang_tokens, lang_masks, state (B, 32))."""
        cfg = self.config
        if self.rename_map:
            obs = {self.rename_map.get(k, k): v for k, v in obs.items()}
        if STATE_KEY not in obs:
            raise MissingKey(
                f"Observation lacks {STATE_KEY!r} (expected shape (B, {cfg.state_dim}) or ({cfg.state_dim},))."
            )
        state = as_tensor(obs[STATE_KEY], dtype=torch.float32)
        if state.ndim == 3:  # (B, T, S): the latest step
            state = state[:, -1]
        if state.ndim == 1:
            state = state[None]
        if state.ndim != 2 or state.shape[1] != cfg.state_dim:
            raise InputError(
                f"{STATE_KEY!r} has shape {tuple(state.shape)}; expected (B, {cfg.state_dim}) or ({cfg.state_dim},)."
            )
        B = state.shape[0]

        # Cameras: exactly the configured ones, in config order.
        expected = cfg.image_keys
        given = [k for k in obs if (k in expected or k.startswith(IMAGE_PREFIX)) and not k.endswith(("_padding_mask", "_is_pad"))]
        match_cameras(expected, given, given_by="the observation has", expected_by="the policy takes",
                      hint="Each is (B, 3, H, W) float in [0,1] or (B, H, W, 3) uint8.")
        images, masks = [], []
        for key in expected:
            img = to_float_chw(obs[key], key).to(device)
            if img.shape[0] != B:
                raise InputError(f"{key!r} has batch size {img.shape[0]} but {STATE_KEY!r} has {B}.")
            if cfg.resize_imgs_with_padding:
                img = resize_with_pad(img, cfg.image_size)
            images.append(img * 2.0 - 1.0)
            pad_key = f"{key}_padding_mask"
            mask = torch.as_tensor(obs[pad_key]).bool().to(device) if pad_key in obs else torch.ones(B, dtype=torch.bool, device=device)
            masks.append(mask)
        for _ in range(cfg.empty_cameras):  # placeholder views the model is told to ignore
            images.append(-torch.ones_like(images[0]))
            masks.append(torch.zeros(B, dtype=torch.bool, device=device))

        # Language: "task" + "\n", tokenized and right-padded.
        task = obs.get("task")
        if task is None:
            raise MissingKey("Observation lacks 'task' (a string, or a list of B strings).")
        tasks = [task] * B if isinstance(task, str) else list(task)
        if len(tasks) != B or not all(isinstance(t, str) for t in tasks):
            raise InputError(f"'task' must be a string or a list of {B} strings, got {task!r}.")
        tasks = [t if t.endswith("\n") else t + "\n" for t in tasks]
        tokens, lang_masks = self.tokenizer(tasks, cfg.tokenizer_max_length, cfg.pad_language_to)

        state = self.normalizer.normalize(state.to(device), "state")
        state = F.pad(state, (0, cfg.max_state_dim - cfg.state_dim))
        return dict(
            images=images, img_masks=masks, lang_tokens=tokens.to(device), lang_masks=lang_masks.to(device), state=state
        )

    def prepare_actions(self, batch: Mapping[str, Any], device) -> tuple[Tensor, Tensor | None]:
        """Training targets: normalised actions zero-padded to (B, T, 32), and the (B, T) padding flags."""
        cfg = self.config
        if ACTION_KEY not in batch:
            raise MissingKey(f"Training batch lacks {ACTION_KEY!r} of shape (B, {cfg.chunk_size}, {cfg.action_dim}).")
        actions = as_tensor(batch[ACTION_KEY], dtype=torch.float32).to(device)
        if actions.ndim != 3 or actions.shape[1:] != (cfg.chunk_size, cfg.action_dim):
            raise InputError(
                f"{ACTION_KEY!r} has shape {tuple(actions.shape)}; expected (B, {cfg.chunk_size}, {cfg.action_dim})."
            )
        actions = F.pad(self.normalizer.normalize(actions, "action"), (0, cfg.max_action_dim - cfg.action_dim))
        is_pad = self.action_padding(batch, actions.shape[0])
        return actions, None if is_pad is None else is_pad.to(device)

    def action_padding(self, batch: Mapping[str, Any], batch_size: int) -> Tensor | None:
        """The batch's (B, T) flags of chunk steps past the episode's end (`"action_is_pad"`), checked; None if absent."""
        is_pad = batch.get("action_is_pad")
        if is_pad is None:
            return None
        is_pad = torch.as_tensor(is_pad).bool()
        expected = (batch_size, self.config.chunk_size)
        if tuple(is_pad.shape) != expected:
            raise InputError(f"'action_is_pad' has shape {tuple(is_pad.shape)}; expected {expected}.")
        return is_pad

    # -- model outputs -> actions -----------------------------------------------------------------
    def postprocess(self, actions: Tensor) -> Tensor:
        """(..., T, 32) normalised -> (..., T, A) in robot units."""
        return self.normalizer.unnormalize(actions[..., : self.config.action_dim], "action")
