"""Checkpoints: kit round trip, LeRobot-format folders (written here, no lerobot needed), smolvla_base's shape, offline Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy
from smolvla_kit.policy.tokenizer import NANO_TOKENIZER_FILE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def stats(dim: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.state": {"mean": rng.normal(0, 10, dim), "std": rng.uniform(1, 5, dim)},
            "action": {"mean": rng.normal(0, 10, dim), "std": rng.uniform(1, 5, dim)}}


def obs_for(keys: list[str], batch: int = 2, size=(64, 80), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    obs = {"observation.state": torch.randn(batch, 6, generator=g) * 5,
           "task": ["put the red cube in the blue bin", "touch the yellow cube"][:batch]}
    for k in keys:
        obs[k] = torch.rand(batch, 3, *size, generator=g)
    return obs


def test_kit_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    policy = SmolVLAPolicy(SmolVLAConfig.preset("nano", camera_names=["front"]), stats=stats()).eval()
    with torch.no_grad():  # make sure nothing is at its init value
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    policy.save_pretrained(tmp_path)
    assert {f.name for f in tmp_path.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    assert json.loads((tmp_path / "config.json").read_text())["kit_format"] == 1
    loaded = SmolVLAPolicy.from_pretrained(tmp_path)
    a, b = policy.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    obs = obs_for(["observation.images.front"])
    noise = torch.randn(2, 50, 32)
    assert torch.equal(policy.predict_chunk(obs, noise=noise), loaded.predict_chunk(obs, noise=noise))
    # Trainability survives the round trip.
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == {
        n for n, p in loaded.named_parameters() if p.requires_grad}


def test_base_preset_on_meta_has_smolvla_base_shape():
    with torch.device("meta"):
        policy = SmolVLAPolicy(SmolVLAConfig.preset("base"))
    params = dict(policy.named_parameters())
    assert sum(p.numel() for p in params.values()) == 450_046_176
    assert sum(p.numel() for p in params.values() if p.requires_grad) == 99_880_992
    keys = {k for k in policy.state_dict() if k.startswith("model.")}
    assert len(keys) == 500
    vlm, exp = "model.vlm_with_expert.vlm.", "model.vlm_with_expert.lm_expert."
    shapes = {
        vlm + "model.vision_model.embeddings.patch_embedding.weight": (768, 3, 16, 16),
        vlm + "model.vision_model.embeddings.position_embedding.weight": (1024, 768),
        vlm + "model.vision_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        vlm + "model.vision_model.post_layernorm.weight": (768,),
        vlm + "model.connector.modality_projection.proj.weight": (960, 12288),
        vlm + "model.text_model.embed_tokens.weight": (49280, 960),
        vlm + "model.text_model.layers.15.self_attn.k_proj.weight": (320, 960),
        vlm + "model.text_model.layers.15.mlp.gate_proj.weight": (2560, 960),
        vlm + "model.text_model.norm.weight": (960,),
        vlm + "lm_head.weight": (49280, 960),
        exp + "layers.0.self_attn.q_proj.weight": (960, 720),
        exp + "layers.0.self_attn.k_proj.weight": (320, 720),  # even layer: joint self-attention
        exp + "layers.1.self_attn.k_proj.weight": (320, 320),  # odd layer: cross-attention re-projection
        exp + "layers.1.self_attn.v_proj.weight": (320, 320),
        exp + "layers.15.self_attn.o_proj.weight": (720, 960),
        exp + "layers.15.mlp.down_proj.weight": (720, 2048),
        exp + "layers.15.post_attention_layernorm.weight": (720,),
        exp + "norm.weight": (720,),
        "model.state_proj.weight": (960, 32),
        "model.action_in_proj.weight": (720, 32),
        "model.action_out_proj.weight": (32, 720),
        "model.action_time_mlp_in.weight": (720, 1440),
        "model.action_time_mlp_out.bias": (720,),
    }
    for key, shape in shapes.items():
        assert tuple(params[key].shape) == shape, key
    assert not any(".text_model.layers.16." in k for k in keys)  # truncated to 16 layers
    assert not any(k.startswith(exp + "embed_tokens") for k in keys)


# --- LeRobot-format checkpoints written by the test -----------------------------------------------

TINY_VLM = {
    "scale_factor": 2, "image_token_id": 3, "tie_word_embeddings": False,
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "image_size": 32, "patch_size": 8},
    "text_config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 520,
                    "rms_norm_eps": 1e-5, "pad_token_id": 0, "tie_word_embeddings": False},
}
CAMERAS = ["observation.images.up", "observation.images.side"]


def write_vlm_folder(folder: Path) -> None:
    """A local 'vlm_model_name' folder: transformers config + tokenizer, as LeRobot would read."""
    from transformers import PreTrainedTokenizerFast, SmolVLMConfig

    SmolVLMConfig(**json.loads(json.dumps(TINY_VLM))).save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_file=str(NANO_TOKENIZER_FILE), pad_token="<pad>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>"},
    ).save_pretrained(folder)


def lerobot_config(vlm_dir: Path, **changes) -> dict:
    """config.json with LeRobot 0.6's field names and defaults (as `save_pretrained` writes them)."""
    cfg = {
        "type": "smolvla", "n_obs_steps": 1,
        "input_features": {"observation.state": {"type": "STATE", "shape": [6]},
                           **{k: {"type": "VISUAL", "shape": [3, 48, 64]} for k in CAMERAS}},
        "output_features": {"action": {"type": "ACTION", "shape": [6]}},
        "device": "cpu", "use_amp": False, "use_peft": False, "push_to_hub": True, "repo_id": None,
        "chunk_size": 50, "n_action_steps": 50,
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
        "max_state_dim": 32, "max_action_dim": 32, "resize_imgs_with_padding": [32, 32], "empty_cameras": 0,
        "adapt_to_pi_aloha": False, "use_delta_joint_actions_aloha": False, "tokenizer_max_length": 48,
        "num_steps": 10, "use_cache": True, "freeze_vision_encoder": True, "train_expert_only": True,
        "train_state_proj": True, "optimizer_lr": 1e-4, "optimizer_betas": [0.9, 0.95], "optimizer_eps": 1e-8,
        "optimizer_weight_decay": 1e-10, "optimizer_grad_clip_norm": 10, "scheduler_warmup_steps": 1000,
        "scheduler_decay_steps": 30000, "scheduler_decay_lr": 2.5e-6, "vlm_model_name": str(vlm_dir),
        "load_vlm_weights": False, "add_image_special_tokens": False, "attention_mode": "cross_attn",
        "prefix_length": -1, "pad_language_to": "longest", "num_expert_layers": -1, "num_vlm_layers": 2,
        "self_attn_every_n_layers": 2, "expert_width_multiplier": 0.75, "min_period": 4e-3, "max_period": 4.0,
        "rtc_config": None, "compile_model": False, "compile_mode": "max-autotune",
    }
    cfg.update(changes)
    return cfg


def write_processor_files(folder: Path, st: dict, vlm_dir: Path, padding: str = "longest") -> None:
    """LeRobot >= 0.4 processor pipelines with the stats in flat-keyed safetensors."""
    norm_map = {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
    pre = {"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "smolvla_new_line_processor", "config": {}},
        {"registry_name": "tokenizer_processor", "config": {
            "max_length": 48, "task_key": "task", "padding_side": "right", "padding": padding, "truncation": True,
            "tokenizer_name": str(vlm_dir)}},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
        {"registry_name": "normalizer_processor", "config": {"eps": 1e-8, "features": {}, "norm_map": norm_map},
         "state_file": "policy_preprocessor_step_5_normalizer_processor.safetensors"}]}
    post = {"name": "policy_postprocessor", "steps": [
        {"registry_name": "unnormalizer_processor", "config": {"eps": 1e-8, "features": {}, "norm_map": norm_map},
         "state_file": "policy_postprocessor_step_0_unnormalizer_processor.safetensors"},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}]}
    flat = {f"{feat}.{s}": torch.as_tensor(v, dtype=torch.float32) for feat, d in st.items() for s, v in d.items()}
    save_file(flat, str(folder / pre["steps"][5]["state_file"]))
    save_file({k: v for k, v in flat.items() if k.startswith("action.")}, str(folder / post["steps"][0]["state_file"]))
    (folder / "policy_preprocessor.json").write_text(json.dumps(pre, indent=2))
    (folder / "policy_postprocessor.json").write_text(json.dumps(post, indent=2))


@pytest.fixture(scope="module")
def lerobot_setup(tmp_path_factory):
    """A kit policy of the LeRobot checkpoint's shape (the weight source) and the tiny VLM folder."""
    root = tmp_path_factory.mktemp("lerobot")
    vlm_dir = root / "vlm"
    write_vlm_folder(vlm_dir)
    from smolvla_kit.policy.checkpoint import lerobot_config_to_kit

    cfg, _ = lerobot_config_to_kit(lerobot_config(vlm_dir), root, {})
    torch.manual_seed(0)
    source = SmolVLAPolicy(cfg, stats=stats()).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return root, vlm_dir, source


def write_lerobot_checkpoint(folder: Path, source: SmolVLAPolicy, vlm_dir: Path, style: str, **cfg_changes) -> None:
    folder.mkdir()
    weights = {k: v.clone() for k, v in source.state_dict().items() if k.startswith("model.")}
    st = {feat: {s: v.numpy() for s, v in d.items()} for feat, d in source.normalizer.stats_dict().items()}
    if style == "compiled":  # torch.compile'd training leaves "model._orig_mod."
        weights = {k.replace("model.", "model._orig_mod.", 1): v for k, v in weights.items()}
    if style == "old":  # LeRobot <= 0.3: stats as buffers inside model.safetensors
        for prefix, feat in (("normalize_inputs", "observation.state"), ("normalize_targets", "action"),
                             ("unnormalize_outputs", "action")):
            for s, v in st[feat].items():
                weights[f"{prefix}.buffer_{feat.replace('.', '_')}.{s}"] = torch.tensor(v, dtype=torch.float32)
        for cam in CAMERAS:  # image buffers of the IDENTITY mode, as old checkpoints carry (inf)
            weights[f"normalize_inputs.buffer_{cam.replace('.', '_')}.mean"] = torch.full((3, 1, 1), float("inf"))
    else:
        write_processor_files(folder, st, vlm_dir)
    if style == "bf16":
        weights = {k: v.to(torch.bfloat16) for k, v in weights.items()}
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(lerobot_config(vlm_dir, **cfg_changes), indent=4))


@pytest.mark.parametrize("style", ["new", "old", "compiled"])
def test_lerobot_checkpoint_loads_and_matches(lerobot_setup, style):
    root, vlm_dir, source = lerobot_setup
    folder = root / f"ckpt-{style}"
    write_lerobot_checkpoint(folder, source, vlm_dir, style)
    policy = SmolVLAPolicy.from_pretrained(folder)
    cfg = policy.config
    assert (cfg.state_dim, cfg.action_dim, cfg.image_size, cfg.num_vlm_layers) == (6, 6, 32, 2)
    assert cfg.camera_names == CAMERAS and cfg.pad_language_to == "longest"
    assert cfg.tokenizer_name == str(vlm_dir)
    assert not policy.model.vlm_with_expert.vlm.lm_head.weight.requires_grad  # train_expert_only honoured
    obs = obs_for(CAMERAS)
    noise = torch.randn(2, 50, 32)
    ref = source.predict_chunk(obs, noise=noise)
    torch.testing.assert_close(policy.predict_chunk(obs, noise=noise), ref, rtol=0, atol=1e-5)
    for feat, d in source.normalizer.stats_dict().items():
        for s, v in d.items():
            torch.testing.assert_close(policy.normalizer.stats_dict()[feat][s], v)


def test_lerobot_bf16_weights_load_as_float32(lerobot_setup):
    root, vlm_dir, source = lerobot_setup
    write_lerobot_checkpoint(root / "ckpt-bf16", source, vlm_dir, "bf16")
    policy = SmolVLAPolicy.from_pretrained(root / "ckpt-bf16")
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    assert policy.predict_chunk(obs_for(CAMERAS)).shape == (2, 50, 6)


def test_lerobot_config_fields_are_honoured(lerobot_setup):
    root, vlm_dir, source = lerobot_setup
    folder = root / "ckpt-fields"
    write_lerobot_checkpoint(folder, source, vlm_dir, "new", n_action_steps=7, num_steps=4, add_image_special_tokens=True,
                             empty_cameras=1, prefix_length=80, min_period=1e-3)
    policy = SmolVLAPolicy.from_pretrained(folder)
    cfg = policy.config
    assert (cfg.n_action_steps, cfg.num_steps, cfg.empty_cameras, cfg.prefix_length, cfg.min_period) == (7, 4, 1, 80, 1e-3)
    _, traj = policy.predict_chunk(obs_for(CAMERAS), return_trajectory=True)
    assert traj.shape[0] == 5  # 4 Euler steps
    assert policy.config.fake_image_token_id == 1 and policy.config.global_image_token_id == 2
    # The camera keys of the checkpoint are required, by their LeRobot names.
    with pytest.raises(KeyError, match="observation.images.up"):
        policy.predict_chunk(obs_for(["observation.images.front", "observation.images.side"]))


def test_mis_keyed_stats_raise(lerobot_setup):
    """smolvla_base-style stats, keyed per source dataset, must not silently leave data un-normalised."""
    root, vlm_dir, source = lerobot_setup
    folder = root / "ckpt-miskeyed"
    write_lerobot_checkpoint(folder, source, vlm_dir, "new")
    f = folder / "policy_preprocessor_step_5_normalizer_processor.safetensors"
    save_file({f"so100.buffer_{k}": v for k, v in load_file(str(f)).items()}, str(f))
    (folder / "policy_postprocessor_step_0_unnormalizer_processor.safetensors").unlink()
    post = json.loads((folder / "policy_postprocessor.json").read_text())
    post["steps"][0].pop("state_file")
    (folder / "policy_postprocessor.json").write_text(json.dumps(post))
    policy = SmolVLAPolicy.from_pretrained(folder)
    with pytest.raises(RuntimeError, match=r"No normalisation stats for 'observation.state'.*so100"):
        policy.predict_chunk(obs_for(CAMERAS))
    # Supplying the dataset's stats fixes it.
    fixed = SmolVLAPolicy.from_pretrained(folder, stats=stats())
    assert fixed.predict_chunk(obs_for(CAMERAS)).shape == (2, 50, 6)


def test_wrong_weights_are_reported(lerobot_setup):
    root, vlm_dir, source = lerobot_setup
    folder = root / "ckpt-wrong"
    write_lerobot_checkpoint(folder, source, vlm_dir, "new", num_vlm_layers=3)  # config says 3 layers, weights have 2
    with pytest.raises(KeyError, match="missing keys"):
        SmolVLAPolicy.from_pretrained(folder)


def test_hub_id_offline_fails_fast_with_instructions(tmp_path):
    code = (
        "from smolvla_kit.policy import SmolVLAPolicy\n"
        "try:\n    SmolVLAPolicy.from_pretrained('lerobot/smolvla_base')\n"
        "except OSError as e:\n    print('ERR', e)\n"
        "from smolvla_kit.policy.tokenizer import TextTokenizer\n"
        "try:\n    TextTokenizer('HuggingFaceTB/SmolVLM2-500M-Video-Instruct')\n"
        "except OSError as e:\n    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hub")}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    elapsed = time.perf_counter() - t0
    lines = [line for line in out.stdout.splitlines() if line.startswith("ERR")]
    assert len(lines) == 2, out.stdout + out.stderr
    assert "lerobot/smolvla_base" in lines[0] and "huggingface-cli download" in lines[0] and str(tmp_path / "hub") in lines[0]
    assert "SmolVLM2-500M-Video-Instruct" in lines[1] and "tokenizer" in lines[1]
    assert elapsed < 60


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "act"}))
    with pytest.raises(ValueError, match="neither a smolvla-kit checkpoint"):
        SmolVLAPolicy.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a Hub id"):
        SmolVLAPolicy.from_pretrained(tmp_path / "nope")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="maps file descriptors to paths through /proc")
def test_training_checkpoints_are_on_disk_before_they_are_named(tmp_path, monkeypatch):
    """A power cut must not leave `last` naming a checkpoint whose files were still in the page cache: every file
    and the folder are fsynced before the folder is renamed into place, and the rename before `last` changes."""
    from smolvla_kit.runs import latest_checkpoint
    from smolvla_kit.train import TrainConfig, save_checkpoint

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                  real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", f"{src} -> {dst}")),
                                                         real_replace(src, dst))[1])
    policy = SmolVLAPolicy(SmolVLAConfig.preset("nano", camera_names=["front"]), stats=stats())
    optimizer = torch.optim.AdamW(policy.parameters())
    final = save_checkpoint(tmp_path, 7, policy, optimizer, TrainConfig(), {"fps": 30})
    assert latest_checkpoint(tmp_path) == final

    staged = str(final.parent / ".tmp_step_000007")
    moved = events.index(("replace", f"{staged} -> {final}"))
    synced_before = {path for kind, path in events[:moved] if kind == "fsync"}
    assert {f"{staged}/{f.name}" for f in final.iterdir()} | {staged} <= synced_before
    named = next(i for i, (kind, what) in enumerate(events) if kind == "replace" and what.endswith("/last"))
    assert ("fsync", str(final.parent)) in events[moved:named] and named > moved
    assert events[-1] == ("fsync", str(final.parent))  # the pointer's rename, made durable
