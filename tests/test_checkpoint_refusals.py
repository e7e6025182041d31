"""Loading refuses a checkpoint it cannot trust, with a message that names the file and says what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy
from smolvla_kit.runs import latest_checkpoint

LEROBOT_FIXTURE = Path(__file__).parent / "fixtures" / "lerobot044" / "policy"


@pytest.fixture(scope="module")
def saved_kit(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kit") / "ckpt"
    torch.manual_seed(0)
    SmolVLAPolicy(SmolVLAConfig.preset("nano", camera_names=["front"])).save_pretrained(folder)
    return folder


@pytest.fixture
def kit(saved_kit, tmp_path) -> Path:
    return Path(shutil.copytree(saved_kit, tmp_path / "ckpt"))


@pytest.fixture
def lerobot(tmp_path) -> Path:
    return Path(shutil.copytree(LEROBOT_FIXTURE, tmp_path / "lerobot"))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_non_finite_weights_are_refused(kit):
    weights = load_file(str(kit / "model.safetensors"))
    key = next(k for k in weights if k.endswith("action_out_proj.weight"))
    weights[key][0, 0] = float("nan")
    save_file(weights, str(kit / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.safetensors holds NaN or infinite values.*action_out_proj"):
        SmolVLAPolicy.from_pretrained(kit)


def test_empty_and_truncated_safetensors_are_refused(kit):
    data = (kit / "model.safetensors").read_bytes()
    (kit / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a complete safetensors file"):
        SmolVLAPolicy.from_pretrained(kit)
    (kit / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.safetensors is empty"):
        SmolVLAPolicy.from_pretrained(kit)


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "must hold a JSON object"),
    ('{"kit_format": 1, "config": ', "is not valid JSON"),
    ('{"kit_format": 1, "config": "nano"}', "'config' must be an object"),
])
def test_config_that_is_not_an_object_is_refused(kit, text, message):
    (kit / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        SmolVLAPolicy.from_pretrained(kit)
    assert str(kit / "config.json") in str(info.value)


@pytest.mark.parametrize("field, value, message", [
    ("chunk_size", "50", "'chunk_size' must be int, got str"),
    ("camera_names", "front", "'camera_names' must be list"),
    ("use_cache", 1, "'use_cache' must be bool"),
    ("expert_width_multiplier", None, "'expert_width_multiplier' must be float"),
])
def test_kit_config_fields_of_the_wrong_type_are_refused(kit, field, value, message):
    edit_json(kit / "config.json", lambda d: d["config"].__setitem__(field, value))
    with pytest.raises(ValueError, match=message) as info:
        SmolVLAPolicy.from_pretrained(kit)
    assert str(kit / "config.json") in str(info.value)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.__setitem__("input_features", ["observation.state"]), "'input_features' must be an object"),
    (lambda d: d["input_features"]["observation.state"].__setitem__("shape", 6), r"\['shape'\] must be a list"),
    (lambda d: d.__setitem__("chunk_size", 50.5), "'chunk_size' must be int"),
    (lambda d: d.__setitem__("vlm_model_name", 7), "vlm_model_name"),
])
def test_lerobot_config_fields_of_the_wrong_type_are_refused(lerobot, change, message):
    edit_json(lerobot / "config.json", change)
    with pytest.raises(ValueError, match=message) as info:
        SmolVLAPolicy.from_pretrained(lerobot)
    assert str(lerobot / "config.json") in str(info.value)


def test_missing_kit_tokenizer_says_it_is_missing(kit):
    (kit / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"names the tokenizer file tokenizer\.json, which is missing"):
        SmolVLAPolicy.from_pretrained(kit)


def test_missing_lerobot_tokenizer_says_it_is_missing(lerobot):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (lerobot / "vlm" / name).unlink()
    policy = SmolVLAPolicy.from_pretrained(lerobot)  # the tokenizer loads when first needed
    with pytest.raises(FileNotFoundError, match="the tokenizer is missing"):
        policy.processor.tokenizer


def test_missing_relative_vlm_folder_is_named_not_blamed_on_the_hub(lerobot):
    shutil.rmtree(lerobot / "vlm")
    with pytest.raises(FileNotFoundError, match=r"'vlm_model_name' is 'vlm', a folder relative to the checkpoint"):
        SmolVLAPolicy.from_pretrained(lerobot)


def test_relative_vlm_folder_resolves_against_the_checkpoint(lerobot, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no "vlm" here
    policy = SmolVLAPolicy.from_pretrained(lerobot)
    assert Path(policy.config.vlm_model_name) == lerobot / "vlm"
    assert Path(policy.processor.tokenizer_source) == lerobot / "vlm"


def test_kit_tokenizer_file_outside_the_checkpoint_is_refused(kit):
    shutil.copy(kit / "tokenizer.json", kit.parent / "stray.json")
    edit_json(kit / "config.json", lambda d: d.__setitem__("tokenizer_file", "../stray.json"))
    with pytest.raises(ValueError, match="points outside"):
        SmolVLAPolicy.from_pretrained(kit)
    edit_json(kit / "config.json", lambda d: d.__setitem__("tokenizer_file", str(kit.parent / "stray.json")))
    with pytest.raises(ValueError, match="must be a file name relative to"):
        SmolVLAPolicy.from_pretrained(kit)


def test_lerobot_paths_outside_the_checkpoint_are_refused(lerobot):
    pre = lerobot / "policy_preprocessor.json"
    steps = json.loads(pre.read_text())["steps"]
    stats_step = next(s for s in steps if s.get("state_file"))
    shutil.copy(lerobot / stats_step["state_file"], lerobot.parent / "stats.safetensors")
    stats_step["state_file"] = "../stats.safetensors"
    pre.write_text(json.dumps({**json.loads(pre.read_text()), "steps": steps}))
    with pytest.raises(ValueError, match=r"'state_file' is '\.\./stats\.safetensors', which points outside"):
        SmolVLAPolicy.from_pretrained(lerobot)


def test_lerobot_vlm_folder_outside_the_checkpoint_is_refused(lerobot):
    shutil.copytree(lerobot / "vlm", lerobot.parent / "vlm")
    edit_json(lerobot / "config.json", lambda d: d.__setitem__("vlm_model_name", "../vlm"))
    with pytest.raises(ValueError, match="points outside"):
        SmolVLAPolicy.from_pretrained(lerobot)


def test_run_last_pointer_outside_the_run_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "training_state.json").write_text("{}")
    (run / "checkpoints" / "last").write_text("../../elsewhere")
    with pytest.raises(ValueError, match="points outside"):
        latest_checkpoint(run)
