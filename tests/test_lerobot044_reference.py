"""The kit against LeRobot 0.4.4 + transformers 4.57.6, on whatever transformers this environment has.

`tests/fixtures/lerobot044/` holds a tiny SmolVLA checkpoint written by LeRobot 0.4.4 and the tensors LeRobot
computed from fixed inputs (`make_reference.py` there says how). transformers 4.57 is the version line whose
SmolVLM vision code behaves as SmolVLM2 and smolvla_base were trained, so matching it step by step (tokens,
images, patch positions, image embeddings, prefix, velocity, actions, loss) is what "faithful" means here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smolvla_kit.policy import SmolVLAPolicy
from smolvla_kit.policy.smolvla import patch_position_ids

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot044"
CAMERAS = ("front", "wrist")


@pytest.fixture(scope="module")
def reference() -> dict:
    return load_file(str(FIXTURE / "reference.safetensors"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> SmolVLAPolicy:
    # Load from another working directory: the checkpoint names its VLM folder by the relative path "vlm",
    # which must be found beside the checkpoint, not in the working directory.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("elsewhere"))
        return SmolVLAPolicy.from_pretrained(FIXTURE / "policy")


def observation(reference: dict, meta: dict) -> dict:
    obs = {k: reference[k] for k in ("observation.state", *(f"observation.images.{c}" for c in CAMERAS))}
    return {**obs, "task": list(meta["tasks"])}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_fixture_is_a_lerobot_044_reference(meta):
    assert meta["versions"]["lerobot"] == "0.4.4" and meta["versions"]["transformers"].startswith("4.57.")
    config = json.loads((FIXTURE / "policy" / "config.json").read_text())
    assert config["vlm_model_name"] == "vlm"  # relative: resolved against the checkpoint folder


def test_preprocessing_matches(policy, reference, meta):
    inputs = policy.processor.preprocess(observation(reference, meta))
    # One instruction is cut at 16 tokens, the other right-padded: the kit's tokenizer path must agree exactly.
    assert torch.equal(inputs["lang_tokens"], reference["lang_tokens"])
    assert torch.equal(inputs["lang_masks"], reference["lang_masks"].bool())
    assert not reference["lang_masks"][1].all() and reference["lang_masks"][0].all()
    assert max_diff(inputs["state"][:, :6], reference["state_normalized"]) < 1e-6
    for cam, image in zip(CAMERAS, inputs["images"]):  # one wider than tall, one upscaled
        assert max_diff(image, reference[f"images_processed.{cam}"]) < 1e-6


def test_vision_position_ids_match(policy, reference):
    vision = policy.config.vlm_config["vision_config"]
    per_side = vision["image_size"] // vision["patch_size"]
    ids = patch_position_ids(torch.ones(2, per_side, per_side, dtype=torch.bool), per_side)
    assert torch.equal(ids, reference["vision_position_ids"])


def test_image_embeddings_and_prefix_match(policy, reference, meta):
    inputs = policy.processor.preprocess(observation(reference, meta))
    vwe = policy.model.vlm_with_expert
    with torch.no_grad():
        for cam, image in zip(CAMERAS, inputs["images"]):
            assert max_diff(vwe.embed_images(image), reference[f"image_embeddings.{cam}"]) < 1e-5
        embs, pad, flags = policy.model.embed_prefix(**inputs)
    assert max_diff(embs, reference["prefix_embs"]) < 1e-5
    assert torch.equal(pad, reference["prefix_pad_masks"]) and torch.equal(flags, reference["prefix_att_masks"])


def test_first_velocity_actions_and_loss_match(policy, reference, meta):
    obs = observation(reference, meta)
    inputs = policy.processor.preprocess(obs)
    model = policy.model
    with torch.no_grad():
        prefix = model.embed_prefix(**inputs)
        v1 = model.velocity_uncached(prefix, reference["noise"], torch.ones(2))
        normalised = model.sample(**inputs, noise=reference["noise"])[..., :6]
        targets, _ = policy.processor.prepare_actions({"action": reference["loss.action"]}, "cpu")
        losses = model.loss(**inputs, actions=targets, noise=reference["loss.noise"], time=reference["loss.time"])
    assert max_diff(v1, reference["first_velocity"]) < 1e-4
    assert max_diff(normalised, reference["actions_normalized"]) <= 1e-4  # the bar, normalised units
    for use_cache in (True, False):
        actions = policy.predict_chunk(obs, noise=reference["noise"], use_cache=use_cache)
        assert max_diff(actions, reference["actions"]) <= 1e-3  # real units
    assert max_diff(losses, reference["loss.elements"]) < 1e-4
    assert abs(losses.mean().item() - reference["loss.mean"].item()) < 1e-5


def test_per_patch_positions_would_not_match(reference, meta, tmp_path, monkeypatch):
    """The comparison sees the difference the position ids make (so it guards the choice)."""
    monkeypatch.chdir(tmp_path)
    other = SmolVLAPolicy.from_pretrained(FIXTURE / "policy", vision_position_ids="per-patch")
    actions = other.predict_chunk(observation(reference, meta), noise=reference["noise"])
    assert max_diff(actions, reference["actions"]) > 10 * 1e-3  # ten times the tolerance above
