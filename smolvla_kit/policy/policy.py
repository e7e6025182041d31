"""`SmolVLAPolicy`: the model plus its pre/post-processing, an action queue and checkpoints.

    policy = SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats=dataset_stats)
    loss, info = policy.forward(batch)                    # training
    chunk = policy.predict_chunk(obs)                     # (B, 50, A) in robot units
    action = policy.select_action(obs)                    # (B, A), one step at a time
    policy.save_pretrained("ckpt/")                       # config.json + model.safetensors
    policy = SmolVLAPolicy.from_pretrained("ckpt/")       # also LeRobot folders and Hub ids
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from smolvla_kit.errors import InputError

from ..vocabulary import ACTION_KEY
from .config import SmolVLAConfig
from .processing import Normalizer, SmolVLAProcessor
from .smolvla import SmolVLAModel


class SmolVLAPolicy(nn.Module):
    """SmolVLA with everything needed to train it and to drive a robot with it.

    Args:
        config: the settings (`SmolVLAConfig.preset("nano" | "base", ...)`).
        stats: dataset statistics `{"observation.state": {"mean", "std"}, "action": {"mean", "std"}}`
            (numpy arrays, lists or tensors); stored as buffers and saved with the weights.
        tokenizer: override where the tokenizer comes from (default: `config.tokenizer_name`).
    """

    def __init__(self, config: SmolVLAConfig, stats: Mapping[str, Any] | None = None, tokenizer: str | None = None):
        super().__init__()
        config.validate()
        self.config = config
        self.model = SmolVLAModel(config)  # state-dict keys "model.*" match LeRobot's
        self.normalizer = Normalizer(config, stats)
        self.processor = SmolVLAProcessor(config, self.normalizer, tokenizer)
        self._queue: deque[Tensor] = deque()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def reset(self) -> None:
        """Forget queued actions (call at the start of every episode)."""
        self._queue.clear()

    # -- training ---------------------------------------------------------------------------------
    def forward(
        self, batch: Mapping[str, Any], noise: Tensor | None = None, time: Tensor | None = None, noise_samples: int = 1,
        played_weight: float = 1.0, weight_total: Tensor | float | None = None,
    ):
        """Flow-matching loss on a batch -> (loss, info). Cropped to the real action dims, padding masked.

        `batch` holds the observation keys plus `"action"` (B, T, A) and optionally `"action_is_pad"` (B, T).
        `noise_samples` > 1 averages that many noise draws per frame over one pass of the VLM (`SmolVLAModel.loss`).
        `played_weight` weighs the first `n_action_steps` actions of the chunk, the ones the policy plays, against
        the rest (1: all alike). `weight_total` is what the weighted sum is divided by (times A): by default this
        batch's total weight; data-parallel training passes the whole global batch's total over the number of
        processes, so that the processes' averaged gradients are exactly the global batch's.
        """
        device = self.device
        inputs = self.processor.preprocess(batch, device)
        actions, _ = self.processor.prepare_actions(batch, device)
        losses = self.model.loss(  # (B, T, 32)
            **inputs, actions=actions, noise=noise, time=time, noise_samples=noise_samples
        )
        losses = losses[:, :, : self.config.action_dim]  # padded dims are not the model's job
        weights = self.loss_weights(batch, played_weight).to(losses.device)  # (B, T)
        total = weights.sum() if weight_total is None else torch.as_tensor(weight_total, device=losses.device)
        loss = (losses * weights[:, :, None]).sum() / (total * losses.shape[2]).clamp_min(1e-12)
        return loss, {"loss": loss.item()}

    def loss_weights(self, batch: Mapping[str, Any], played_weight: float = 1.0) -> Tensor:
        """(B, T) weight of each action of each chunk in the loss: `played_weight` for the first `n_action_steps`,
        1 for the rest, 0 past the episode's end (`"action_is_pad"`)."""
        B = len(batch[ACTION_KEY])
        weights = torch.ones(B, self.config.chunk_size)
        weights[:, : self.config.n_action_steps] = played_weight
        is_pad = self.processor.action_padding(batch, B)
        if is_pad is not None:
            weights = weights * ~is_pad.cpu()  # steps past the episode end carry no target
        return weights

    # -- inference ------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_chunk(
        self,
        observation: Mapping[str, Any],
        noise: Tensor | None = None,
        num_steps: int | None = None,
        return_trajectory: bool = False,
        use_cache: bool | None = None,
        samples: int | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """A chunk of actions (B, chunk_size, A) in robot units.

        Args:
            noise: the starting points x_1, (B * samples, chunk_size, max_action_dim), rows b * samples ...
                b * samples + samples - 1 for observation b; fresh N(0, 1) if None. Given without `samples`,
                its rows say how many draws each chunk averages ((B, T, A): one, as SmolVLA).
            num_steps: Euler steps (default `config.num_steps`, 10).
            return_trajectory: also return every intermediate x_t, un-normalised and cropped, as a
                tensor (num_steps + 1, B, chunk_size, A) for t = 1, 1 - 1/n, ..., 0.
            use_cache: run the prefix once and cache it (default `config.use_cache`).
            samples: chunks drawn per observation and averaged (default: as many as `noise` holds, else
                `config.samples_per_chunk`).
        """
        self.eval()
        device = self.device
        inputs = self.processor.preprocess(observation, device)
        B = inputs["state"].shape[0]
        if samples is None:
            samples = self.config.samples_per_chunk if noise is None else max(1, noise.shape[0] // B)
        if samples < 1:
            raise InputError(f"samples must be >= 1 (chunks drawn and averaged), got {samples}.")
        shape = (B * samples, self.config.chunk_size, self.config.max_action_dim)
        if noise is None:
            noise = torch.randn(shape, device=device)
        elif tuple(noise.shape) != shape:
            raise InputError(
                f"noise has shape {tuple(noise.shape)}; expected {shape} (B x samples, chunk_size, max_action_dim) "
                f"for {B} observation(s) and samples={samples}."
            )
        out = self.model.sample(
            **inputs, noise=noise.to(device, torch.float32), num_steps=num_steps,
            use_cache=use_cache, return_trajectory=return_trajectory, samples=samples,
        )
        if return_trajectory:
            x, traj = out
            return self.processor.postprocess(x), self.processor.postprocess(torch.stack(traj))
        return self.processor.postprocess(out)

    @torch.inference_mode()
    def select_action(self, observation: Mapping[str, Any], noise: Tensor | None = None) -> Tensor:
        """The next action (B, A): predicts a chunk when the queue is empty and plays `n_action_steps` of it."""
        if not self._queue:
            chunk = self.predict_chunk(observation, noise=noise)  # (B, T, A)
            self._queue.extend(chunk.transpose(0, 1)[: self.config.n_action_steps])
        return self._queue.popleft()

    def set_dtype(self, dtype: torch.dtype | str) -> "SmolVLAPolicy":
        """Run the VLM and the action expert (all but a few small projections) in `dtype`: float32 or bfloat16.

        For inference: bfloat16 makes a `base` chunk about 3x faster on CPUs with AMX bfloat16 instructions;
        `nano` is too small to gain. It moves actions by a fraction of a degree, which can tip a policy that is
        on the edge of a decision (close the gripper a step earlier or later). The projections into and out of
        the expert, the normaliser, the attention softmax and the Euler integration stay float32. Train in
        float32 (or with TrainConfig.mixed_precision, which keeps the weights float32).
        """
        allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16}
        name = str(dtype).removeprefix("torch.")
        if name not in allowed:
            raise InputError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}.")
        self.model.vlm_with_expert.to(allowed[name])
        return self

    # -- trainable parameters and optimiser settings --------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- checkpoints ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json`, `model.safetensors` (weights + stats) and the tokenizer if it is a local one."""
        from .checkpoint import save_policy

        return save_policy(self, directory)

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | Path, stats: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
        tokenizer: str | None = None, **config_overrides: Any,
    ) -> "SmolVLAPolicy":
        """Load a kit checkpoint or a LeRobot SmolVLA (folder or Hub id).

        Args:
            stats: dataset statistics to use instead of the checkpoint's (needed for smolvla_base,
                whose stats do not fit a new robot).
            tokenizer: where to get the tokenizer if not from the checkpoint/config (folder or Hub id).
            config_overrides: change config fields that do not alter the weights (e.g. n_action_steps).
        """
        from .checkpoint import load_policy

        return load_policy(cls, path_or_id, stats=stats, device=device, tokenizer=tokenizer, **config_overrides)
