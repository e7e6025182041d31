"""Settings of the SmolVLA policy, with two presets.

* ``base``  : exactly the shape of ``lerobot/smolvla_base`` (450,046,176 parameters). Its VLM is
  SmolVLM2-500M-Video-Instruct, whose architecture numbers are written out below so that the
  model can be built without the Hub (the weights still come from a checkpoint).
* ``nano``  : the same code path at 2.4 million parameters, 96 px images and the kit's own
  tokenizer, small enough to train from scratch on a laptop CPU and to predict a chunk in under 15 ms.

    >>> cfg = SmolVLAConfig.preset("nano", camera_names=["front"])

Field names follow LeRobot's ``SmolVLAConfig`` where the two share a meaning, so a LeRobot
``config.json`` maps onto this class almost one to one (see ``checkpoint.py``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from smolvla_kit.errors import InputError, InputTypeError

from ..vocabulary import camera_key

SMOLVLM2_500M_ID = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"

# Architecture of SmolVLM2-500M-Video-Instruct (from its Hub config.json). These are the numbers
# transformers' `SmolVLMConfig` needs; with them the kit builds the backbone offline.
SMOLVLM2_500M_CONFIG: dict[str, Any] = {
    "scale_factor": 4,  # pixel shuffle: 32x32 patches -> 8x8 = 64 tokens per image
    "image_token_id": 49190,
    "tie_word_embeddings": False,
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
    "text_config": {
        "model_type": "llama",
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,  # SmolVLA keeps only the first 16 (`num_vlm_layers`)
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "vocab_size": 49280,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,  # unused: SmolVLA applies its own RoPE (wavelength 10,000)
        "max_position_embeddings": 8192,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    },
}

# A tiny SmolVLM of the same family for `nano`: 96 px images in 12 px patches (8x8 = 64 patches),
# pixel shuffle x2 -> 16 tokens per camera; a Llama text model of width 256 (4 layers, the first 2
# kept, as smolvla_base keeps 16 of 32) and an expert of width 64. Sized for a chunk in under 15 ms
# on one CPU thread: the expert runs 10 times per chunk, so its depth and width set the speed.
NANO_VLM_CONFIG: dict[str, Any] = {
    "scale_factor": 2,
    "image_token_id": 3,  # "<image>" in the kit tokenizer (unused by the policy)
    "tie_word_embeddings": False,
    "vision_config": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 96,
        "patch_size": 12,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
    "text_config": {
        "model_type": "llama",
        # 256 wide rather than 128: on the same data and budget the wider model learns to tie the colour word to
        # the right cube, which a 128-wide one (958,560 parameters) did not (benchmarks/README.md).
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": 520,  # size of smolvla_kit/policy/nano_tokenizer.json
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    },
}

NORMALIZATION_MODES = ("IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10")
VISION_POSITION_SCHEMES = ("smolvlm", "per-patch")  # see `vision_position_ids` below

# LeRobot's SmolVLAConfig also carries its optimiser and schedule. They describe a training run, not the policy:
# the kit's TrainConfig owns them (its defaults with `--init-from` are SmolVLA's published ones), and a config that
# lists them (LeRobot's, or a kit checkpoint saved before the split) loads with them set aside.
TRAINING_FIELDS = frozenset({
    "optimizer_lr", "optimizer_betas", "optimizer_eps", "optimizer_weight_decay", "optimizer_grad_clip_norm",
    "scheduler_warmup_steps", "scheduler_decay_steps", "scheduler_decay_lr",
})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# What each annotation in SmolVLAConfig accepts (a whole number also passes as a float).
_FIELD_TYPES = {
    "int": _is_int,
    "float": lambda v: _is_int(v) or isinstance(v, float),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "int | None": lambda v: v is None or _is_int(v),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "dict[str, str]": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
    "dict[str, Any]": lambda v: isinstance(v, dict),
}


@dataclass
class SmolVLAConfig:
    """Every setting of the policy. Defaults are those of ``lerobot/smolvla_base`` on the kit's simulator."""

    # --- What the robot gives and wants -------------------------------------------------------
    state_dim: int = 6  # SO-101: 5 arm joints in degrees + gripper 0..100
    action_dim: int = 6  # absolute joint targets, same units as the state
    # Cameras in the order their tokens enter the prefix. A bare name `front` means the batch key
    # `observation.images.front`; a full key starting with `observation.` is used as written.
    camera_names: list[str] = field(default_factory=lambda: ["front", "wrist"])
    empty_cameras: int = 0  # extra camera slots filled with masked-out -1 images when a view is missing
    image_size: int = 512  # images are resized (keeping aspect) and padded left/top to this square
    resize_imgs_with_padding: bool = True  # False: feed images at the size they come in

    # --- Action chunking and sampling ----------------------------------------------------------
    chunk_size: int = 50  # actions predicted per forward pass
    n_action_steps: int = 50  # actions executed from each chunk before predicting the next
    num_steps: int = 10  # Euler steps from noise (t=1) to actions (t=0)
    use_cache: bool = True  # run the prefix once per chunk and keep its keys/values
    # Chunks sampled per observation and averaged (the kit's addition; SmolVLA draws one). The prefix runs once
    # and the expert integrates all draws in one batch. Averaging steadies a small policy's grasps
    # (benchmarks/README.md); where the demonstrations hold two ways to do a task it would blend them.
    samples_per_chunk: int = 1

    # --- Fixed widths (state and action are zero-padded to these) -------------------------------
    max_state_dim: int = 32
    max_action_dim: int = 32

    # --- Language -------------------------------------------------------------------------------
    tokenizer_name: str = SMOLVLM2_500M_ID  # "kit:nano", a tokenizer.json path, a Hub id or a folder
    tokenizer_max_length: int = 48
    pad_language_to: str = "max_length"  # or "longest" (LeRobot's class default)
    add_image_special_tokens: bool = False  # wrap each camera's tokens in <fake_token_around_image><global-img> ... <fake_token_around_image>
    prefix_length: int = -1  # >0: zero-pad the prefix to this many tokens

    # --- Backbone (a SmolVLM from transformers, truncated) -------------------------------------
    vlm_model_name: str = SMOLVLM2_500M_ID  # where the VLM's architecture comes from (LeRobot field)
    vlm_config: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(SMOLVLM2_500M_CONFIG))
    num_vlm_layers: int = 16  # keep the first N text layers
    # Which position embedding each image patch adds (`patch_position_ids` in smolvla.py): "smolvlm" is SmolVLM's
    # own rule (the first two patch rows/columns share one), the one SmolVLM2 and smolvla_base were trained with;
    # "per-patch" gives every patch row/column its own (what transformers 5.x computes). `nano`, trained from
    # scratch, owes nothing to released weights and uses "per-patch", as it always has.
    vision_position_ids: str = "smolvlm"

    # --- Action expert ------------------------------------------------------------------------
    attention_mode: str = "cross_attn"  # "cross_attn" (SmolVLA) or "self_attn" (every layer joint)
    num_expert_layers: int = -1  # <=0: as many as the VLM layers kept
    expert_width_multiplier: float = 0.75  # expert width = 0.75 x VLM width (720 for base)
    self_attn_every_n_layers: int = 2  # layers 0, 2, 4, ... are joint self-attention
    rope_max_wavelength: float = 10_000.0
    min_period: float = 4e-3  # sine-cosine time embedding periods
    max_period: float = 4.0

    # --- Normalisation (per feature type, LeRobot's names) -------------------------------------
    normalization_mapping: dict[str, str] = field(
        default_factory=lambda: {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
    )

    # --- Which parts train (the optimiser and its schedule are TrainConfig's) -------------------
    freeze_vision_encoder: bool = True
    train_expert_only: bool = True  # freeze the whole VLM; train expert + projections
    train_state_proj: bool = True

    # Filled in from the tokenizer when `add_image_special_tokens` is used.
    fake_image_token_id: int | None = None
    global_image_token_id: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.camera_names, tuple):
            self.camera_names = list(self.camera_names)
        self.validate()

    # ------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "SmolVLAConfig":
        """`"base"` (smolvla_base's shape) or `"nano"` (tiny, CPU-trainable); keyword overrides win."""
        if name == "base":
            values: dict[str, Any] = {}
        elif name == "nano":
            values = dict(
                vlm_model_name="kit:nano",
                vlm_config=copy.deepcopy(NANO_VLM_CONFIG),
                tokenizer_name="kit:nano",
                image_size=96,
                vision_position_ids="per-patch",
                num_vlm_layers=2,  # layer 0 joint self-attention, layer 1 cross-attention
                expert_width_multiplier=0.25,  # expert width 64: it runs 10 times per chunk
                # Replan every 10 actions (a third of a second): a small policy trained from scratch drifts
                # over a whole open-loop chunk and corrects itself when it looks again (benchmarks/action_steps.py).
                n_action_steps=10,
                tokenizer_max_length=24,
                pad_language_to="longest",  # short instructions: fewer prefix tokens, same result
                # The mean of 16 draws per chunk: a policy this small spreads its draws around the demonstrated
                # motion, and one draw that closes the gripper early loses the grasp (benchmarks/README.md).
                samples_per_chunk=16,
                # A model trained from scratch must train its VLM too: nothing in it is pretrained.
                freeze_vision_encoder=False,
                train_expert_only=False,
            )
        else:
            raise InputError(f"Unknown preset {name!r}; choose 'base' or 'nano'.")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputTypeError(f"Unknown SmolVLAConfig field(s) {sorted(unknown)}.")
        values.update(overrides)
        return cls(**values)

    @property
    def image_keys(self) -> list[str]:
        """Batch keys of the cameras, in prefix order."""
        return [camera_key(n) for n in self.camera_names]

    @property
    def vlm_width(self) -> int:
        return int(self.vlm_config["text_config"]["hidden_size"])

    @property
    def expert_width(self) -> int:
        return int(self.vlm_width * self.expert_width_multiplier)

    def norm_mode(self, feature_type: str) -> str:
        return self.normalization_mapping.get(feature_type, "IDENTITY")

    def validate(self) -> None:
        """Reject settings the model cannot run with, saying which field is wrong."""
        self.check_types()
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise InputError(f"n_action_steps ({self.n_action_steps}) must be between 1 and chunk_size ({self.chunk_size}).")
        if self.state_dim > self.max_state_dim:
            raise InputError(f"state_dim {self.state_dim} exceeds max_state_dim {self.max_state_dim}.")
        if self.action_dim > self.max_action_dim:
            raise InputError(f"action_dim {self.action_dim} exceeds max_action_dim {self.max_action_dim}.")
        if not self.camera_names and self.empty_cameras <= 0:
            raise InputError("At least one camera is required (camera_names is empty).")
        if self.pad_language_to not in ("max_length", "longest"):
            raise InputError(f"pad_language_to must be 'max_length' or 'longest', got {self.pad_language_to!r}.")
        if self.num_steps < 1:
            raise InputError(f"num_steps must be >= 1, got {self.num_steps}.")
        if self.vision_position_ids not in VISION_POSITION_SCHEMES:
            raise InputError(f"vision_position_ids must be one of {VISION_POSITION_SCHEMES}, got {self.vision_position_ids!r}.")
        if self.samples_per_chunk < 1:
            raise InputError(f"samples_per_chunk must be >= 1, got {self.samples_per_chunk}.")
        for kind, mode in self.normalization_mapping.items():
            if mode not in NORMALIZATION_MODES:
                raise InputError(f"normalization_mapping[{kind!r}] = {mode!r}; expected one of {NORMALIZATION_MODES}.")
        if self.norm_mode("VISUAL") != "IDENTITY":
            raise InputError("normalization_mapping['VISUAL'] must be 'IDENTITY': SmolVLA maps images to [-1, 1] itself.")
        text_layers = self.vlm_config["text_config"]["num_hidden_layers"]
        if self.num_vlm_layers > text_layers:
            raise InputError(f"num_vlm_layers {self.num_vlm_layers} > the VLM's {text_layers} text layers.")
        n_vlm = self.num_vlm_layers if self.num_vlm_layers > 0 else text_layers
        if self.num_expert_layers > 0 and n_vlm % self.num_expert_layers != 0:
            raise InputError(
                f"num_vlm_layers ({n_vlm}) must be a multiple of num_expert_layers ({self.num_expert_layers})."
            )

    def check_types(self) -> None:
        """Each field holds the kind of value its annotation names (a config.json edited by hand may not)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _FIELD_TYPES[str(f.type)]
            if not expected(value):
                raise InputTypeError(f"field {f.name!r} must be {str(f.type).replace(' | None', ' or null')}, "
                                f"got {type(value).__name__} {value!r}.")

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SmolVLAConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in TRAINING_FIELDS}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"Unknown field(s) in the kit config: {sorted(unknown)}.")
        return cls(**d)
