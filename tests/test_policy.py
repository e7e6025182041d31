"""SmolVLA model tests: masks, sampling, loss, pre/post-processing errors. All on the `nano` preset (CPU, fast)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy
from smolvla_kit.policy.smolvla import block_causal_mask

STATE_DIM = ACTION_DIM = 6


def make_stats(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation.state": {"mean": rng.normal(0, 20, STATE_DIM), "std": rng.uniform(5, 30, STATE_DIM)},
        "action": {"mean": rng.normal(0, 20, ACTION_DIM), "std": rng.uniform(5, 30, ACTION_DIM)},
    }


def make_obs(batch: int = 2, seed: int = 0, uint8: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    obs = {"observation.state": torch.randn(batch, STATE_DIM, generator=g) * 30,
           "task": ["pick up the red cube and place it in the blue bin", "touch the green cube"][:batch]}
    if batch == 1:
        obs["task"] = obs["task"][0]
    for cam in ("front", "wrist"):
        if uint8:  # simulator style: (B, H, W, 3) uint8, not square
            obs[f"observation.images.{cam}"] = torch.randint(0, 256, (batch, 72, 96, 3), generator=g, dtype=torch.uint8)
        else:  # dataset style: (B, 3, H, W) float in [0, 1]
            obs[f"observation.images.{cam}"] = torch.rand(batch, 3, 96, 96, generator=g)
    return obs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is fastest and fair to a shared machine
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def policy() -> SmolVLAPolicy:
    torch.manual_seed(0)
    return SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats=make_stats()).eval()


def test_block_causal_mask_who_sees_whom():
    # Layout: 2 image tokens | 3 language tokens (last is padding) | state | 3 action tokens.
    pad = torch.tensor([[1, 1, 1, 1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    flags = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    img, lang, lang_pad, state, acts = [0, 1], [2, 3], 4, 5, [6, 7, 8]
    m = block_causal_mask(pad, flags)[0]
    expect = torch.zeros(9, 9, dtype=torch.bool)
    for q in img + lang:  # images + language: one bidirectional block, blind to state and actions
        expect[q, img + lang] = True
    expect[state, img + lang + [state]] = True  # state sees the prefix and itself
    for k, q in enumerate(acts):  # actions see the whole prefix and are causal among themselves
        expect[q, img + lang + [state] + acts[: k + 1]] = True
    assert torch.equal(m, expect)
    assert not m[lang_pad].any() and not m[:, lang_pad].any()  # padding sees nothing and is never seen


def test_attention_pattern_in_the_model(policy):
    """The network obeys the mask: action k ignores later actions; the language padding is invisible."""
    m = policy.model
    inputs = policy.processor.preprocess(make_obs(1), "cpu")
    prefix = m.embed_prefix(**{k: inputs[k] for k in ("images", "img_masks", "lang_tokens", "lang_masks", "state")})
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 50, 32, generator=g)
    t = torch.tensor([0.7])
    with torch.no_grad():
        v = m.velocity_uncached(prefix, x, t)
        x2 = x.clone()
        x2[:, 30] += 1.0  # change action token 30
        v2 = m.velocity_uncached(prefix, x2, t)
        assert torch.equal(v[:, :30], v2[:, :30])  # earlier actions cannot see it
        assert (v[:, 30:] - v2[:, 30:]).abs().max() > 1e-4  # it and later ones do
    # Change the embedding of a language padding token (two tasks of different length): nothing may change.
    inputs = policy.processor.preprocess(make_obs(2), "cpu")
    embs, pad, flags = m.embed_prefix(**{k: inputs[k] for k in ("images", "img_masks", "lang_tokens", "lang_masks", "state")})
    hole = (~pad[1]).nonzero()[0].item()  # a padding position of the shorter task
    embs2 = embs.clone()
    embs2[1, hole] = torch.randn(embs.shape[-1]) * 10
    x = torch.randn(2, 50, 32, generator=g)
    with torch.no_grad():
        a = m.velocity_uncached((embs, pad, flags), x, torch.tensor([0.5, 0.5]))
        b = m.velocity_uncached((embs2, pad, flags), x, torch.tensor([0.5, 0.5]))
    assert torch.allclose(a, b, atol=1e-6)


def test_predict_chunk_shapes_and_trajectory(policy):
    obs = make_obs(2)
    noise = torch.randn(2, 50, 32)
    actions, traj = policy.predict_chunk(obs, noise=noise, return_trajectory=True)
    assert actions.shape == (2, 50, ACTION_DIM)
    assert traj.shape == (11, 2, 50, ACTION_DIM)
    assert torch.equal(traj[-1], actions)
    # The first "action" of the trajectory is the noise itself, un-normalised.
    stats = policy.normalizer.stats_dict()["action"]
    assert torch.allclose(traj[0], noise[..., :ACTION_DIM] * stats["std"] + stats["mean"], atol=1e-5)
    assert torch.equal(policy.predict_chunk(obs, noise=noise), actions)  # deterministic given noise


def test_cached_and_uncached_sampling_agree(policy):
    obs = make_obs(2, uint8=False)
    noise = torch.randn(2, 50, 32)
    cached = policy.predict_chunk(obs, noise=noise, use_cache=True)
    uncached = policy.predict_chunk(obs, noise=noise, use_cache=False)
    scale = policy.normalizer.action_std.max()
    assert (cached - uncached).abs().max() / scale < 1e-5


@pytest.mark.parametrize("use_cache", [True, False])
def test_averaged_samples_are_the_mean_of_single_samples(policy, use_cache):
    # N draws per observation through one prefix pass == the mean of N separate single-draw chunks.
    N, obs = 3, make_obs(2, uint8=False)
    noise = torch.randn(2 * N, 50, 32)  # rows b*N .. b*N+N-1 belong to observation b
    mean, traj = policy.predict_chunk(obs, noise=noise, samples=N, use_cache=use_cache, return_trajectory=True)
    singles = torch.stack([policy.predict_chunk(obs, noise=noise[k::N], samples=1) for k in range(N)])  # (N, B, T, A)
    scale = policy.normalizer.action_std.max()
    assert mean.shape == (2, 50, ACTION_DIM) and traj.shape == (11, 2, 50, ACTION_DIM)
    assert (mean - singles.mean(0)).abs().max() / scale < 1e-5
    assert torch.allclose(traj[-1], mean)
    assert (singles[0] - singles[1]).abs().max() / scale > 1e-2  # the draws differ: this is not one chunk N times
    with pytest.raises(ValueError, match=r"\(B x samples, chunk_size, max_action_dim\) for 2 observation\(s\) and samples=3"):
        policy.predict_chunk(obs, noise=noise[:2], samples=N)


def test_samples_per_chunk_comes_from_the_config():
    torch.manual_seed(0)
    p = SmolVLAPolicy(SmolVLAConfig.preset("nano", samples_per_chunk=4), stats=make_stats()).eval()
    obs, noise = make_obs(1, uint8=False), torch.randn(4, 50, 32)
    torch.testing.assert_close(p.predict_chunk(obs, noise=noise), p.predict_chunk(obs, noise=noise, samples=4))
    # Noise of one draw per observation plays that draw, whatever the config averages (as SmolVLA, and the course)
    torch.testing.assert_close(p.predict_chunk(obs, noise=noise[:1]), p.predict_chunk(obs, noise=noise[:1], samples=1))
    assert not torch.allclose(p.predict_chunk(obs, noise=noise[:1]), p.predict_chunk(obs, noise=noise))
    with pytest.raises(ValueError, match=r"noise has shape \(3, 50, 32\); expected \(4, 50, 32\)"):
        p.predict_chunk(obs, noise=noise[:3], samples=4)
    with pytest.raises(ValueError, match="samples_per_chunk must be >= 1"):
        SmolVLAConfig.preset("nano", samples_per_chunk=0)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        p.predict_chunk(obs, samples=0)


def test_bfloat16_inference_stays_close_to_float32():
    torch.manual_seed(0)
    policy = SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats=make_stats()).eval()
    obs, noise = make_obs(2, uint8=False), torch.randn(2, 50, 32)
    full = policy.predict_chunk(obs, noise=noise)
    policy.set_dtype(torch.bfloat16)
    dtypes = {p.dtype for p in policy.model.vlm_with_expert.parameters()}
    assert dtypes == {torch.bfloat16} and policy.model.action_out_proj.weight.dtype == torch.float32
    half = policy.predict_chunk(obs, noise=noise)
    uncached = policy.predict_chunk(obs, noise=noise, use_cache=False)
    scale = policy.normalizer.action_std.max()
    assert half.dtype == torch.float32 and 0 < (half - full).abs().max() / scale < 0.02
    assert (half - uncached).abs().max() / scale < 1e-3
    with pytest.raises(ValueError, match="float16"):
        policy.set_dtype(torch.float16)


def test_attention_stays_float32_under_bfloat16_autocast():
    from smolvla_kit.policy.smolvla import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 4, 8, generator=g) for _ in range(3))
    bias = torch.zeros(2, 1, 7, 7)
    plain = attention(q, k, v, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = attention(q, k, v, bias)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)


def test_unbatched_observation(policy):
    obs = {k: (v[0] if k != "task" else v[0]) for k, v in make_obs(2).items()}  # (H, W, 3) uint8, (S,), str
    assert policy.predict_chunk(obs).shape == (1, 50, ACTION_DIM)


def test_read_only_numpy_inputs_are_taken_without_warnings(policy):
    obs = {k: (v[0].numpy() if k != "task" else v[0]) for k, v in make_obs(2).items()}
    for value in obs.values():  # a dataset's frame cache hands out read-only views
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = policy.predict_chunk(obs, noise=torch.zeros(1, 50, 32))
    writable = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in obs.items()}
    assert torch.equal(expected, policy.predict_chunk(writable, noise=torch.zeros(1, 50, 32)))


def test_select_action_plays_the_queue(policy, monkeypatch):
    p = policy
    monkeypatch.setattr(p.config, "n_action_steps", 5)
    obs = make_obs(1)
    noise = torch.randn(1, 50, 32)
    chunk = p.predict_chunk(obs, noise=noise)
    p.reset()
    steps = [p.select_action(obs, noise=noise) for _ in range(5)]
    for i, a in enumerate(steps):
        assert a.shape == (1, ACTION_DIM)
        assert torch.equal(a, chunk[:, i])
    # The queue is empty now: the next call predicts a fresh chunk (new noise -> different action).
    assert not torch.equal(p.select_action(obs), chunk[:, 5])
    p.reset()


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    p = SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats=make_stats())
    p.train()
    batch = make_obs(2)
    g = torch.Generator().manual_seed(3)
    batch["action"] = torch.randn(2, 50, ACTION_DIM, generator=g) * 20
    batch["action_is_pad"] = torch.zeros(2, 50, dtype=torch.bool)
    batch["action_is_pad"][1, 40:] = True
    noise = torch.randn(2, 50, 32, generator=g)
    time = torch.tensor([0.3, 0.8])
    opt = torch.optim.AdamW(p.trainable_parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss, info = p.forward(batch, noise=noise, time=time)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(info["loss"])
    assert losses[-1] < 0.3 * losses[0], losses[::8]


def test_loss_ignores_padded_steps_and_padded_dims(policy):
    p = policy
    batch = make_obs(2)
    batch["action"] = torch.randn(2, 50, ACTION_DIM) * 10
    batch["action_is_pad"] = torch.zeros(2, 50, dtype=torch.bool)
    batch["action_is_pad"][0, 25:] = True
    noise, time = torch.randn(2, 50, 32), torch.tensor([0.5, 0.5])
    loss1, _ = p.forward(batch, noise=noise, time=time)
    batch2 = dict(batch, action=batch["action"].clone())
    batch2["action"][0, 25:] = 1e4  # garbage past the episode end must not matter
    loss2, _ = p.forward(batch2, noise=noise, time=time)
    torch.testing.assert_close(loss1, loss2)
    # The loss is the mean over valid steps of the first ACTION_DIM dims only (not the 32 padded ones).
    inputs = p.processor.preprocess(batch, "cpu")
    actions, is_pad = p.processor.prepare_actions(batch, "cpu")
    per_elem = p.model.loss(**inputs, actions=actions, noise=noise, time=time)  # (2, 50, 32)
    assert per_elem[..., ACTION_DIM:].mean() > 0.1  # the padded dims do have errors ...
    expected = per_elem[..., :ACTION_DIM][~is_pad].mean()  # ... which the loss leaves out
    torch.testing.assert_close(loss1, expected)
    # played_weight: the first n_action_steps (10) valid steps count W times, the rest of the chunk once.
    played = per_elem[:, : p.config.n_action_steps, :ACTION_DIM]  # (2, 10, A), none of it padding
    rest = per_elem[..., :ACTION_DIM][:, p.config.n_action_steps:][~is_pad[:, p.config.n_action_steps:]]
    weighted, _ = p.forward(batch, noise=noise, time=time, played_weight=3.0)
    torch.testing.assert_close(weighted, (3 * played.sum() + rest.sum()) / (3 * played.numel() + rest.numel()))


def test_several_noise_samples_share_one_prefix_pass():
    # K draws per frame through the cached prefix must equal K separate uncached losses, gradients included.
    torch.manual_seed(0)
    p = SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats=make_stats()).train()
    K, batch = 3, make_obs(2)
    batch["action"] = torch.randn(2, 50, ACTION_DIM) * 10
    batch["action_is_pad"] = torch.zeros(2, 50, dtype=torch.bool)
    batch["action_is_pad"][1, 30:] = True
    noise, time = torch.randn(2 * K, 50, 32), torch.rand(2 * K) * 0.9 + 0.05
    shared, _ = p.forward(batch, noise=noise, time=time, noise_samples=K)
    shared_grads = torch.autograd.grad(shared, list(p.trainable_parameters()))
    # The same frames repeated K times (rows b*K .. b*K+K-1), one uncached pass each.
    repeated = {k: (v.repeat_interleave(K, 0) if torch.is_tensor(v) else [x for x in v for _ in range(K)])
                for k, v in batch.items()}
    separate, _ = p.forward(repeated, noise=noise, time=time)
    separate_grads = torch.autograd.grad(separate, list(p.trainable_parameters()))
    torch.testing.assert_close(shared, separate, rtol=1e-5, atol=1e-6)
    for a, b in zip(shared_grads, separate_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Different draws per copy: the K losses are not one loss counted K times.
    one, _ = p.forward(batch, noise=noise[::K], time=time[::K])
    assert abs(one.item() - shared.item()) > 1e-3
    with pytest.raises(ValueError, match=r"noise has 2 rows; with noise_samples=3 it needs batch x 3 = 6"):
        p.forward(batch, noise=noise[::K], time=time, noise_samples=K)


def test_parameter_counts_and_freezing(policy):
    nano = policy
    n = sum(p.numel() for p in nano.parameters())
    assert 5e5 < n < 5e6
    # nano trains its VLM too (nothing is pretrained), but never the unused language head.
    assert nano.model.vlm_with_expert.vlm.model.vision_model.embeddings.patch_embedding.weight.requires_grad
    assert not nano.model.vlm_with_expert.vlm.lm_head.weight.requires_grad


# --- clear errors ------------------------------------------------------------------------------


def test_wrong_camera_name_is_named(policy):
    obs = make_obs(1)
    obs["observation.images.top"] = obs.pop("observation.images.wrist")
    with pytest.raises(KeyError, match=r"observation\.images\.wrist.*observation\.images\.top|missing \['observation\.images\.wrist'\]"):
        policy.predict_chunk(obs)


def test_wrong_state_size_is_named(policy):
    obs = make_obs(1)
    obs["observation.state"] = torch.zeros(1, 7)
    with pytest.raises(ValueError, match=r"observation\.state.*\(B, 6\)"):
        policy.predict_chunk(obs)


def test_bad_images_are_rejected(policy):
    obs = make_obs(1, uint8=False)
    obs["observation.images.front"] = obs["observation.images.front"] * 255  # float 0..255
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        policy.predict_chunk(obs)
    obs = make_obs(1)
    obs["observation.images.front"] = torch.zeros(1, 4, 32, 32)
    with pytest.raises(ValueError, match="3 colour channels"):
        policy.predict_chunk(obs)


def test_missing_stats_fail_loudly():
    p = SmolVLAPolicy(SmolVLAConfig.preset("nano"))  # no stats given
    with pytest.raises(RuntimeError, match="No normalisation stats for 'observation.state'"):
        p.predict_chunk(make_obs(1))
    with pytest.raises(KeyError, match="'observation.state' are missing"):
        SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats={"state": {"mean": [0] * 6, "std": [1] * 6}})
    with pytest.raises(ValueError, match="expected 6"):
        SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats={**make_stats(), "action": {"mean": [0] * 5, "std": [1] * 5}})
    # Opting out is explicit.
    cfg = SmolVLAConfig.preset("nano", normalization_mapping={"VISUAL": "IDENTITY", "STATE": "IDENTITY", "ACTION": "IDENTITY"})
    assert SmolVLAPolicy(cfg).predict_chunk(make_obs(1)).shape == (1, 50, 6)


def test_bad_noise_shape(policy):
    with pytest.raises(ValueError, match="max_action_dim"):
        policy.predict_chunk(make_obs(1), noise=torch.randn(1, 50, 6))


def test_config_validation():
    with pytest.raises(ValueError, match="n_action_steps"):
        SmolVLAConfig.preset("nano", n_action_steps=60)
    with pytest.raises(ValueError, match=r"n_action_steps \(0\) must be between 1"):
        SmolVLAConfig.preset("nano", n_action_steps=0)
    with pytest.raises(TypeError, match="Unknown SmolVLAConfig field"):
        SmolVLAConfig.preset("nano", camera=["front"])
    with pytest.raises(ValueError, match="Unknown preset"):
        SmolVLAConfig.preset("large")


def test_nano_tokenizer_is_shipped_reproducible_and_total():
    from smolvla_kit.policy.config import NANO_VLM_CONFIG
    from smolvla_kit.policy.tokenizer import TextTokenizer, build_nano_tokenizer

    tok = TextTokenizer("kit:nano")
    assert tok.vocab_size == NANO_VLM_CONFIG["text_config"]["vocab_size"]
    assert build_nano_tokenizer().get_vocab() == tok._fast.get_vocab()  # the shipped file is what the builder makes
    texts = ["pick up the red cube and place it in the blue bin\n", "Zürich, 東京 and 🤖: any text tokenizes"]
    ids, mask = tok(texts, max_length=64, padding="longest")
    assert tok._fast.decode(ids[1][mask[1]].tolist()) == texts[1]
    assert mask[0].sum() < 15  # the kit's own instructions are cheap
    ids, mask = tok(texts, max_length=8, padding="max_length")
    assert ids.shape == (2, 8) and mask.all()  # truncated to max_length
