"""Checkpoints: the kit's own format, LeRobot SmolVLA folders, and Hub ids. Never pickle.

Kit format (a folder):
    config.json        {"kit_format": 1, "config": {...SmolVLAConfig...}}
    model.safetensors  weights with LeRobot's key names ("model.vlm_with_expert...") + "normalizer.*" stats
    tokenizer.json     when the tokenizer is a local `tokenizers` one (e.g. nano's)

LeRobot format (what `lerobot` saves, e.g. `lerobot/smolvla_base`):
    config.json        {"type": "smolvla", "vlm_model_name": ..., "input_features": ..., ...}
    model.safetensors  "model.*" weights (maybe "model._orig_mod.*" after torch.compile); old
                       versions (<= 0.3) also hold the stats as "normalize_inputs.buffer_observation_state.mean" etc.
    policy_preprocessor.json / policy_postprocessor.json + "*normalizer_processor.safetensors"
                       (>= 0.4): the stats with flat keys such as "observation.state.mean"
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save_file

from smolvla_kit.errors import HubError, InputError, MissingFile, MissingKey, Unsupported

from ..vocabulary import ACTION_KEY, IMAGE_PREFIX, STATE_KEY
from .config import SMOLVLM2_500M_CONFIG, SMOLVLM2_500M_ID, SmolVLAConfig

KIT_FORMAT = 1
LEROBOT_FILES = ["config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"]

# =============================================================================================
# Hub access that fails fast and clearly without network
# =============================================================================================


def is_hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set, or the Hub's host cannot be reached within 3 s."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or (443 if endpoint.startswith("https") else 80)
    try:
        with socket.create_connection((host, port), timeout=3):
            return False
    except OSError:
        return True


def hub_offline_error(repo_id: str, what: str = "checkpoint") -> HubError:
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    return HubError(
        f"Cannot load the {what} {repo_id!r}: the Hugging Face Hub is not reachable (no network, or HF_HUB_OFFLINE=1) "
        f"and it is not in the local cache ({cache}). On a machine with network run "
        f"`huggingface-cli download {repo_id} --local-dir <folder>` and copy <folder> here, then pass that folder "
        f"instead of the Hub id (or copy the Hub cache to {cache})."
    )


def looks_like_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a Hugging Face Hub id, "owner/name" (not a relative or absolute path)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and "\\" not in name


def resolve_folder(path_or_id: str | Path) -> Path:
    """A local folder as is; the name of a checkpoint the kit ships (`kit:nano-pick-place`) as its folder; a Hub id
    downloaded (or found in the cache) with only the files SmolVLA needs."""
    from smolvla_kit.trained import SHIPPED

    if str(path_or_id) in SHIPPED:
        return SHIPPED[str(path_or_id)]
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    repo_id = str(path_or_id)
    if not looks_like_hub_id(repo_id):
        raise MissingFile(f"{repo_id!r} is neither an existing folder nor a Hub id like 'lerobot/smolvla_base'.")
    from huggingface_hub import snapshot_download

    patterns = LEROBOT_FILES + ["*.safetensors", "tokenizer.json"]
    if is_hub_offline():
        try:
            return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        except Exception as exc:  # noqa: BLE001 - replaced by a clearer message
            raise hub_offline_error(repo_id) from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - the Hub's errors (not found, gated, network) as one clear message
        raise HubError(
            f"Could not download {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). Check the id "
            f"on huggingface.co, the network, and for a gated model `huggingface-cli login`; or pass a local folder."
        ) from exc


# =============================================================================================
# Kit format
# =============================================================================================


def save_policy(policy, directory: str | Path) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "kit_format": str(KIT_FORMAT)})
    meta: dict[str, Any] = {"kit_format": KIT_FORMAT, "config": policy.config.to_dict()}
    tokenizer_file = policy.processor.tokenizer.save(out) if _tokenizer_is_local(policy) else None
    if tokenizer_file:
        meta["tokenizer_file"] = tokenizer_file
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    return out


def _tokenizer_is_local(policy) -> bool:
    src = policy.processor.tokenizer_source
    return src == "kit:nano" or src.endswith(".json")


def load_policy(cls, path_or_id, stats=None, device="cpu", tokenizer=None, **overrides):
    folder = resolve_folder(path_or_id)
    cfg_file = folder / "config.json"
    raw = read_json_object(cfg_file, what="SmolVLA checkpoint config")
    if "kit_format" in raw:
        if not isinstance(raw.get("config"), dict):
            raise InputError(f"{cfg_file}: 'config' must be an object holding the policy's settings. {_RESAVE}")
        saved = dict(raw["config"])
        # Kit checkpoints written before the kit computed the vision patch positions itself were trained with the
        # ones transformers 5.x gives (the version the kit installed), one per patch row and column.
        saved.setdefault("vision_position_ids", "per-patch")
        config = _config_from(cfg_file, lambda: SmolVLAConfig.from_dict({**saved, **overrides}))
        if tokenizer is None and raw.get("tokenizer_file"):
            tokenizer_file = path_inside(folder, raw["tokenizer_file"], f"{cfg_file} 'tokenizer_file'")
            if not tokenizer_file.is_file():
                raise MissingFile(
                    f"{cfg_file} names the tokenizer file {tokenizer_file.name}, which is missing from {folder}. "
                    f"Copy the whole checkpoint folder again (the tokenizer is saved beside the weights)."
                )
            tokenizer = str(tokenizer_file)
        weights, ckpt_stats, rename = _read_weights(folder), None, {}
    elif raw.get("type") == "smolvla":
        config, rename = _config_from(cfg_file, lambda: lerobot_config_to_kit(raw, folder, overrides))
        weights = _read_weights(folder)
        ckpt_stats = lerobot_stats(folder, weights)
    else:
        raise InputError(
            f"{cfg_file} is neither a smolvla-kit checkpoint (no 'kit_format') nor a LeRobot SmolVLA "
            f"(type={raw.get('type')!r}, expected 'smolvla')."
        )

    # Build on the meta device (no memory, no random init), then adopt the checkpoint's tensors.
    with torch.device("meta"):
        policy = cls(config, tokenizer=tokenizer)
    policy.processor.rename_map = rename
    # Old LeRobot stats buffers were read above; the rest must be exactly the model's weights.
    old_stats = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")
    weights = {k.replace("model._orig_mod.", "model."): v for k, v in weights.items() if not k.startswith(old_stats)}
    model_keys = {k for k in policy.state_dict() if not k.startswith("normalizer.")}
    missing = sorted(model_keys - set(weights))
    unexpected = sorted(k for k in weights if k not in model_keys and not k.startswith("normalizer."))
    if missing or unexpected:
        raise MissingKey(
            f"Checkpoint {folder} does not fit the model built from its config: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}."
        )
    own = policy.state_dict()
    for key, value in weights.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise InputError(f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(own[key].shape)}.")
    dtype = torch.float32
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items() if k in own}
    # A NaN or inf weight makes every action NaN; stats ("normalizer.*") use NaN for "not recorded".
    broken = [k for k, v in tensors.items() if not k.startswith("normalizer.") and not torch.isfinite(v).all()]
    if broken:
        raise InputError(
            f"{folder / 'model.safetensors'} holds NaN or infinite values in {len(broken)} weight(s), e.g. "
            f"{broken[:3]}: the training run that wrote it diverged or the file is damaged. Load an earlier "
            f"checkpoint of the run, or resume training from one with a lower --lr."
        )
    for key in own:  # stats buffers not in the checkpoint start as NaN ("no stats")
        if key not in tensors:
            tensors[key] = torch.full(own[key].shape, float("nan"))
    policy.load_state_dict(tensors, strict=True, assign=True)
    leftover = [n for n, t in list(policy.named_parameters()) + list(policy.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"Parameters/buffers left uninitialised after loading: {leftover[:5]}")
    policy.model.set_requires_grad()
    if stats is not None:
        policy.normalizer.set_stats(stats)
    elif ckpt_stats is not None:
        # Features the checkpoint has no stats for stay "missing" and raise a clear error on first
        # use, naming what the checkpoint did carry (smolvla_base keys its stats per dataset).
        found = sorted(f"{feat}.{stat}" for feat, d in ckpt_stats.items() for stat in d)
        policy.normalizer.set_stats(ckpt_stats, partial=True, source=f"checkpoint {path_or_id} (has {found[:8]})")
    return policy.to(device)


_RESAVE = "Copy or download the checkpoint again, or save it again from the run that made it."


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(folder / "model.safetensors", what="weights")


def read_safetensors(f: Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, with a message naming the file when it is missing, empty or cut short."""
    if not f.is_file():
        raise MissingFile(f"{f} is missing: the checkpoint's {what} are there. {_RESAVE}")
    if f.stat().st_size == 0:
        raise InputError(f"{f} is empty (0 bytes): an interrupted copy or download? {_RESAVE}")
    try:
        return load_file(str(f))
    except Exception as exc:  # noqa: BLE001 - safetensors' own error says only what byte failed
        raise InputError(f"{f} is not a complete safetensors file ({exc}): truncated or damaged. {_RESAVE}") from exc


def read_json_object(f: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object, with a message naming the file otherwise."""
    if not f.is_file():
        raise MissingFile(f"{f.parent} has no {f.name}; is it a {what.split(' config')[0]}?")
    try:
        raw = json.loads(f.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{f} is not valid JSON ({exc}). {_RESAVE}") from exc
    if not isinstance(raw, dict):
        raise InputError(f"{f} must hold a JSON object (the {what}), not a {type(raw).__name__}. {_RESAVE}")
    return raw


def _config_from(cfg_file: Path, build):
    """Run `build()`, turning a field of the wrong kind or value into an error that names the file."""
    try:
        return build()
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise InputError(f"{cfg_file}: {exc} Fix that field, or save the checkpoint again.") from exc


def path_inside(folder: Path, name: object, source: str) -> Path:
    """`folder / name` for a relative file name written inside a checkpoint; refuses one that leaves the folder."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise InputError(f"{source} is {name!r}; it must be a file name relative to {folder}.")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise InputError(f"{source} is {name!r}, which points outside {folder}; a checkpoint may only name its own files.")
    return path


# =============================================================================================
# LeRobot format
# =============================================================================================

# LeRobot config fields that map one to one onto the kit's.
_SAME_FIELDS = [
    "chunk_size", "n_action_steps", "num_steps", "use_cache", "max_state_dim", "max_action_dim",
    "tokenizer_max_length", "pad_language_to", "add_image_special_tokens", "prefix_length", "vlm_model_name",
    "num_vlm_layers", "attention_mode", "num_expert_layers", "expert_width_multiplier", "self_attn_every_n_layers",
    "min_period", "max_period", "empty_cameras", "freeze_vision_encoder", "train_expert_only", "train_state_proj",
]


def lerobot_config_to_kit(raw: dict, folder: Path, overrides: dict) -> tuple[SmolVLAConfig, dict]:
    """Map a LeRobot SmolVLA config.json (and its processor json) onto a `SmolVLAConfig`."""
    if raw.get("adapt_to_pi_aloha") or raw.get("use_delta_joint_actions_aloha"):
        raise Unsupported("adapt_to_pi_aloha / use_delta_joint_actions_aloha checkpoints are not supported by the kit.")
    if raw.get("n_obs_steps", 1) != 1:
        raise Unsupported(f"n_obs_steps={raw['n_obs_steps']} is not supported (SmolVLA uses 1).")
    values: dict[str, Any] = {k: raw[k] for k in _SAME_FIELDS if k in raw}
    inputs = raw.get("input_features") or {}
    outputs = raw.get("output_features") or {}
    for name, features in (("input_features", inputs), ("output_features", outputs)):
        if not isinstance(features, dict) or not all(isinstance(f, dict) for f in features.values()):
            raise InputError(f"'{name}' must be an object mapping each feature to {{'type': ..., 'shape': [...]}}.")
        for key, feature in features.items():
            shape = feature.get("shape")
            if not isinstance(shape, list) or not shape or not all(isinstance(n, int) for n in shape):
                raise InputError(f"'{name}'['{key}']['shape'] must be a list of whole numbers, got {shape!r}.")
    if STATE_KEY not in inputs or ACTION_KEY not in outputs:
        raise InputError(
            f"LeRobot config {folder / 'config.json'} must list {STATE_KEY!r} in input_features and {ACTION_KEY!r} in "
            f"output_features (has inputs {sorted(inputs)}, outputs {sorted(outputs)})."
        )
    values["state_dim"] = int(inputs[STATE_KEY]["shape"][-1])
    values["action_dim"] = int(outputs[ACTION_KEY]["shape"][-1])
    values["camera_names"] = [
        k for k, f in inputs.items() if f.get("type") == "VISUAL" and not k.startswith(IMAGE_PREFIX + "empty_camera_")
    ]
    resize = raw.get("resize_imgs_with_padding")
    if resize:
        if int(resize[0]) != int(resize[1]):
            raise Unsupported(f"Non-square resize_imgs_with_padding {resize} is not supported.")
        values["image_size"] = int(resize[0])
    else:
        values["resize_imgs_with_padding"] = False
    if "normalization_mapping" in raw:
        values["normalization_mapping"] = {k: str(v).upper() for k, v in raw["normalization_mapping"].items()}

    # The processor files (>= 0.4) say how the text was tokenized and which renames apply.
    rename: dict[str, str] = {}
    pre = folder / "policy_preprocessor.json"
    if pre.is_file():
        for step in read_json_object(pre, what="LeRobot processor config").get("steps", []):
            name, conf = step.get("registry_name", ""), step.get("config", {}) or {}
            if name == "tokenizer_processor":
                values["tokenizer_max_length"] = conf.get("max_length", values.get("tokenizer_max_length", 48))
                values["pad_language_to"] = conf.get("padding", values.get("pad_language_to", "longest"))
                if conf.get("tokenizer_name"):
                    values["tokenizer_name"] = conf["tokenizer_name"]
            elif name == "rename_observations_processor":
                rename = dict(conf.get("rename_map") or {})
    values.setdefault("pad_language_to", "longest")  # LeRobot's class default
    for key in ("vlm_model_name", "tokenizer_name"):
        if key in values:
            values[key] = model_reference(values[key], folder, f"{folder / 'config.json'} '{key}'")
    values.setdefault("tokenizer_name", values.get("vlm_model_name", SMOLVLM2_500M_ID))
    values["vlm_config"] = vlm_config_for(values.get("vlm_model_name", SMOLVLM2_500M_ID))
    values.update(overrides)
    return SmolVLAConfig(**values), rename


def model_reference(name: object, folder: Path, source: str) -> str:
    """Where a LeRobot checkpoint's VLM or tokenizer lives: an absolute folder, a folder *relative to the
    checkpoint* (LeRobot itself would look in the working directory; the checkpoint is what its owner meant), or
    a Hub id such as HuggingFaceTB/SmolVLM2-500M-Video-Instruct."""
    if not isinstance(name, str) or not name:
        raise InputError(f"{source} must be a folder or a Hub id, got {name!r}.")
    path = Path(name).expanduser()
    if path.is_absolute():
        return str(path)
    local = folder / path
    if local.exists():
        return str(path_inside(folder, name, source))
    if looks_like_hub_id(name):
        return name  # a Hub id
    raise MissingFile(
        f"{source} is {name!r}, a folder relative to the checkpoint, but {local} does not exist. Copy that folder "
        f"into the checkpoint, or write its Hub id (for example {SMOLVLM2_500M_ID!r}) in config.json."
    )


def vlm_config_for(name_or_path: str) -> dict[str, Any]:
    """The SmolVLM architecture for `vlm_model_name`: a local folder's config.json, the kit's built-in
    numbers for SmolVLM2-500M (no Hub needed), or another Hub id's config.json (cached or downloaded)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return _vlm_arch(read_json_object(local / "config.json", what="SmolVLM config"))
    if name_or_path == SMOLVLM2_500M_ID:
        return json.loads(json.dumps(SMOLVLM2_500M_CONFIG))
    from huggingface_hub import hf_hub_download

    try:
        f = hf_hub_download(name_or_path, "config.json", local_files_only=is_hub_offline())
    except Exception as exc:  # noqa: BLE001
        raise hub_offline_error(name_or_path, what="VLM config") from exc
    return _vlm_arch(json.loads(Path(f).read_text()))


def _vlm_arch(cfg: dict) -> dict[str, Any]:
    """Keep what shapes the network from a SmolVLM config.json."""
    if cfg.get("model_type") not in ("smolvlm", "idefics3"):
        raise InputError(f"vlm_model_name points to a {cfg.get('model_type')!r} model; SmolVLA needs a SmolVLM.")
    drop = {"architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype", "model_type",
            "perceiver_config", "auto_map", "output_attentions", "output_hidden_states", "return_dict"}
    out = {k: v for k, v in cfg.items() if k in ("scale_factor", "image_token_id", "tie_word_embeddings")}
    out["vision_config"] = {k: v for k, v in cfg["vision_config"].items() if k not in drop}
    text = {k: v for k, v in cfg["text_config"].items() if k not in drop}
    text["model_type"] = "llama"
    out["text_config"] = text
    return out


def lerobot_stats(folder: Path, weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]] | None:
    """Normalisation stats of a LeRobot checkpoint, new-style processor files first, then old buffers.

    Returns `{"observation.state": {...}, "action": {...}}` (only the features found), or None.
    """
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for pipeline, step_name in (("policy_preprocessor.json", "normalizer_processor"),
                                ("policy_postprocessor.json", "unnormalizer_processor")):
        f = folder / pipeline
        if not f.is_file():
            continue
        for step in read_json_object(f, what="LeRobot processor config").get("steps", []):
            if step.get("registry_name") == step_name and step.get("state_file"):
                state_file = path_inside(folder, step["state_file"], f"{f} 'state_file'")
                if not state_file.is_file():
                    raise MissingFile(f"{f} names the stats file {state_file.name}, which is missing from {folder}.")
                for flat_key, tensor in read_safetensors(state_file, what="normalisation statistics").items():
                    feature, stat = flat_key.rsplit(".", 1)
                    stats.setdefault(feature, {}).setdefault(stat, tensor)
    if stats:
        return stats
    # Old format: buffers such as "normalize_inputs.buffer_observation_state.mean".
    for key, tensor in weights.items():
        for prefix in ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs."):
            if key.startswith(prefix + "buffer_"):
                buffer, stat = key[len(prefix) + len("buffer_"):].rsplit(".", 1)
                feature = {"observation_state": STATE_KEY, "action": ACTION_KEY}.get(buffer)
                if feature is not None:
                    stats.setdefault(feature, {}).setdefault(stat, tensor)
    return stats or None
