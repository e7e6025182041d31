"""SmolVLA for the kit: a readable re-implementation that loads LeRobot's checkpoints.

    from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy
    policy = SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats=dataset_stats)

Modules, in reading order: `config` (settings, presets), `smolvla` (the network), `processing`
(observation -> model inputs -> actions), `policy` (the user-facing class), `checkpoint`
(kit and LeRobot formats), `tokenizer` (the nano tokenizer).
"""

from .config import SmolVLAConfig
from .policy import SmolVLAPolicy

__all__ = ["SmolVLAConfig", "SmolVLAPolicy"]
