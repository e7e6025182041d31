"""What the kit no longer inherits from transformers: each behaviour that changed (or could) across versions,
pinned against the formula the released SmolVLM2 / smolvla_base weights were trained with."""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version

from smolvla_kit.policy import SmolVLAConfig
from smolvla_kit.policy.smolvla import (
    SmolVLMWithExpert, attention, build_vlm, patch_position_ids, pixel_shuffle, rms_norm,
)


def original_position_ids(patch_mask: torch.Tensor, per_side: int, dtype: torch.dtype) -> torch.Tensor:
    """SmolVLM's rule as transformers <= 4.54.1 and 4.57 write it: one image at a time, coordinates in the pixel
    values' dtype, i / n * (1 - 1e-6) bucketed at 1/per_side, 2/per_side, ..."""
    edges = torch.arange(1 / per_side, 1.0, 1 / per_side)
    out = torch.zeros(patch_mask.shape[0], patch_mask[0].numel(), dtype=torch.long)
    for b, mask in enumerate(patch_mask):
        n_h, n_w = mask[:, 0].sum(), mask[0].sum()
        rows = torch.bucketize(torch.arange(n_h, dtype=dtype) / n_h * (1 - 1e-6), edges, right=True)
        cols = torch.bucketize(torch.arange(n_w, dtype=dtype) / n_w * (1 - 1e-6), edges, right=True)
        out[b][mask.reshape(-1)] = (rows[:, None] * per_side + cols).flatten()
    return out


# (image size, patch size): smolvla_base's 512/16, the kit's nano 96/12, the LeRobot reference fixture's 96/16.
SIZES = [(512, 16), (96, 12), (96, 16), (64, 8), (384, 14)]


@pytest.mark.parametrize("image_size, patch", SIZES)
def test_position_ids_follow_the_original_formula(image_size, patch):
    n = image_size // patch
    full = torch.ones(3, n, n, dtype=torch.bool)
    assert torch.equal(patch_position_ids(full, n, "smolvlm"), original_position_ids(full, n, torch.float32))


def test_position_ids_stay_float32_ones_when_the_model_runs_in_bfloat16():
    config = SmolVLAConfig.preset("nano", vision_position_ids="smolvlm")
    vwe = SmolVLMWithExpert(config).eval()
    seen = []
    vwe.vlm.model.vision_model.embeddings.position_embedding.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        vwe.embed_images(torch.zeros(1, 3, 96, 96))
        vwe.to(torch.bfloat16).embed_images(torch.zeros(1, 3, 96, 96))
    assert torch.equal(seen[0], seen[1])
    assert torch.equal(seen[0], original_position_ids(torch.ones(1, 8, 8, dtype=torch.bool), 8, torch.float32))


def test_position_ids_for_smolvla_base_in_float32():
    ids = patch_position_ids(torch.ones(1, 32, 32, dtype=torch.bool), 32)[0].view(32, 32)
    per_side = [0, 0, *range(1, 31)]  # the first two rows/columns share id 0; row/column 31 of the table is unused
    assert ids[0].tolist() == per_side and (ids[:, 0] // 32).tolist() == per_side


def test_position_ids_of_a_picture_padded_on_one_side():
    # The picture fills 4 of 6 patch rows (padding below it) in one image and 5 of 6 columns in the other.
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[0, :4, :] = True
    mask[1, :, :5] = True
    ids = patch_position_ids(mask, 6)
    assert torch.equal(ids, original_position_ids(mask, 6, torch.float32))
    assert (ids[~mask.view(2, -1)] == 0).all()


def test_per_patch_scheme_is_one_id_per_patch():
    ids = patch_position_ids(torch.ones(1, 8, 8, dtype=torch.bool), 8, "per-patch")
    assert torch.equal(ids[0], torch.arange(64))


def test_which_rule_each_preset_uses():
    assert SmolVLAConfig.preset("base").vision_position_ids == "smolvlm"  # as smolvla_base was trained
    assert SmolVLAConfig.preset("nano").vision_position_ids == "per-patch"  # trained from scratch


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="vision_position_ids"):
        SmolVLAConfig.preset("nano", vision_position_ids="newest")


def installed_scheme() -> str | None:
    """Which rule the installed transformers' SmolVLM implements (None: neither: 4.55/4.56 had a third)."""
    version = Version(transformers.__version__)
    if version.major >= 5:
        return "per-patch"
    if version <= Version("4.54.1") or version >= Version("4.57"):
        return "smolvlm"
    return None


def test_kit_vision_equals_installed_transformers_for_the_same_rule():
    """The kit's vision code (patches, encoder, post-norm, pixel shuffle, projection) is SmolVLM's: run with the rule
    this transformers implements, it gives what transformers' own modules give."""
    scheme = installed_scheme()
    if scheme is None:
        pytest.skip(f"transformers {transformers.__version__} implements neither position rule")
    torch.manual_seed(0)
    config = SmolVLAConfig.preset("nano", vision_position_ids=scheme)
    vwe = SmolVLMWithExpert(config).eval()
    with torch.no_grad():
        for p in vwe.vlm.model.vision_model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        images = torch.rand(3, 3, 96, 96) * 2 - 1
        theirs = vwe.vlm.model.connector(vwe.vlm.model.vision_model(pixel_values=images).last_hidden_state)
        ours = vwe.embed_images(images)
    assert ours.shape == (3, 16, 256)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_pixel_shuffle_order():
    # 4x4 patches numbered row by row, one feature each; factor 2 -> 4 tokens of 4 features.
    x = torch.arange(16.0).view(1, 16, 1)
    out = pixel_shuffle(x, 2)
    assert out[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    with pytest.raises(ValueError, match="square grid"):
        pixel_shuffle(torch.zeros(1, 12, 1), 2)


def test_rms_norm_casts_before_the_weight():
    norm = torch.nn.Module()
    norm.weight = torch.nn.Parameter(torch.rand(64) + 0.5)
    norm.variance_epsilon = 1e-5
    x = torch.randn(2, 5, 64) * 3
    expected = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert (rms_norm(norm, x) - expected).abs().max().item() < 1e-5
    norm.weight.data = norm.weight.data.bfloat16()
    xb = x.bfloat16()
    x32 = xb.float()
    expected_bf16 = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    out = rms_norm(norm, xb)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected_bf16)


def test_attention_is_scaled_by_one_over_sqrt_head_dim():
    q, k, v = torch.randn(1, 4, 2, 8), torch.randn(1, 6, 1, 8), torch.randn(1, 6, 1, 8)
    bias = torch.zeros(1, 1, 4, 6)
    bias[..., -1] = torch.finfo(torch.float32).min
    scores = torch.einsum("bqhd,bkd->bhqk", q, k[:, :, 0]) / 8**0.5 + bias
    expected = torch.einsum("bhqk,bkd->bqhd", scores.softmax(-1), v[:, :, 0]).reshape(1, 4, 16)
    assert (attention(q, k, v, bias) - expected).abs().max().item() < 1e-5


def test_other_activations_are_refused():
    config = SmolVLAConfig.preset("nano")
    config.vlm_config["vision_config"]["hidden_act"] = "quick_gelu"
    with pytest.raises(ValueError, match="gelu_pytorch_tanh"):
        build_vlm(config)
    config = SmolVLAConfig.preset("nano")
    config.vlm_config["text_config"]["hidden_act"] = "gelu"
    with pytest.raises(ValueError, match="silu"):
        build_vlm(config)

