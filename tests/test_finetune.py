"""Fine-tuning a LeRobot SmolVLA checkpoint (as one would `lerobot/smolvla_base`) on a recorded dataset: the settings of
the GPU path (frozen backbone in bfloat16, loader workers) and a result that deploy loads with the dataset's stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smolvla_kit.data import LeRobotDatasetReader
from smolvla_kit.deploy.service import load_policy_for_serving
from smolvla_kit.train import TrainConfig, dataset_stats, train

LEROBOT_CHECKPOINT = Path(__file__).parent / "fixtures" / "lerobot044" / "policy"  # written by LeRobot 0.4.4


def finetune(dataset: Path, out: Path, **kw) -> dict:
    values = dict(dataset=dataset, out=out, init_from=str(LEROBOT_CHECKPOINT), steps=4, batch_size=4, save_every=2,
                  log_every=1, num_threads=1, progress=False)
    return train(TrainConfig(**{**values, **kw}))


def test_finetune_with_a_bfloat16_backbone_and_loader_workers_gives_a_deployable_policy(tmp_path, dataset):
    summary = finetune(dataset, tmp_path / "run", mixed_precision=True, frozen_dtype="bfloat16", loader_workers=2)
    checkpoint = Path(summary["checkpoint"])
    saved = load_file(str(checkpoint / "model.safetensors"))
    frozen = saved["model.vlm_with_expert.vlm.model.text_model.layers.0.mlp.up_proj.weight"]
    trained = saved["model.vlm_with_expert.lm_expert.layers.0.mlp.up_proj.weight"]
    assert frozen.dtype == torch.bfloat16 and trained.dtype == torch.float32

    policy = load_policy_for_serving(str(checkpoint), device="cpu")  # what deploy and the policy server run
    stats = dataset_stats(LeRobotDatasetReader(dataset))["action"]
    assert torch.allclose(policy.normalizer.stats_dict()["action"]["mean"], torch.as_tensor(stats["mean"]))
    obs = {"observation.state": torch.zeros(1, 6), "task": "pick up the red cube",
           "observation.images.front": torch.rand(1, 3, 64, 64), "observation.images.wrist": torch.rand(1, 3, 64, 64)}
    chunk = policy.predict_chunk(obs)
    assert chunk.shape == (1, policy.config.chunk_size, 6) and torch.isfinite(chunk).all()


def test_loader_workers_train_the_same_run(tmp_path, dataset):
    a = finetune(dataset, tmp_path / "a", mixed_precision=False)
    b = finetune(dataset, tmp_path / "b", mixed_precision=False, loader_workers=2)
    wa, wb = (load_file(str(Path(s["checkpoint"]) / "model.safetensors")) for s in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_bfloat16_backbone_needs_autocast(tmp_path, dataset):
    with pytest.raises(ValueError, match="needs mixed_precision"):
        finetune(dataset, tmp_path / "run", mixed_precision=False, frozen_dtype="bfloat16")


def test_gradient_checkpointing_gives_the_same_gradients(dataset):
    from smolvla_kit.data import ChunkDataset
    from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy
    from smolvla_kit.train import _collate

    reader = LeRobotDatasetReader(dataset)
    batch = _collate([ChunkDataset(reader, chunk_size=50)[i] for i in (0, 40, 80)])
    torch.manual_seed(0)
    policy = SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats=dataset_stats(reader)).train()
    grads = []
    for checkpointing in (False, True):
        policy.model.vlm_with_expert.gradient_checkpointing = checkpointing
        policy.zero_grad()
        torch.manual_seed(1)
        loss, _ = policy(batch, noise_samples=2)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_compiled_and_checkpointed_training_follows_the_eager_run(tmp_path, dataset):
    """torch.compile (a GPU option, slow to start on a CPU: about a minute here) and gradient checkpointing change how
    the step is computed, not what it computes; both are recorded with the run."""
    settings = dict(init_from=None, steps=2, mixed_precision=False, camera_warmup_steps=0)
    eager = finetune(dataset, tmp_path / "eager", **settings)
    compiled = finetune(dataset, tmp_path / "compiled", compile=True, gradient_checkpointing=True, **settings)
    losses = [[float(r.split(",")[1]) for r in Path(s["loss_log"]).read_text().splitlines()[1:]] for s in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    recorded = json.loads((Path(compiled["checkpoint"]) / "training_state.json").read_text())["train_config"]
    assert recorded["compile"] is True and recorded["gradient_checkpointing"] is True
