"""Policies the kit trained itself, shipped inside the package so that the course, a workshop or a test can run a
working policy without training one first. Each folder is an ordinary kit checkpoint (config.json,
model.safetensors, tokenizer.json) with a PROVENANCE.md that says how it was made and how well it did.

Anything that takes a checkpoint folder also takes its name:

    smolvla-kit eval --checkpoint kit:nano-pick-place --episodes 5
"""

from __future__ import annotations

from pathlib import Path

NANO_PICK_PLACE = Path(__file__).resolve().parent / "nano_pick_place"
"""`nano` trained from scratch with the `shipped` recipe (1,000 simulated pick-and-place demonstrations, 10,000
steps on 2 CPU cores; cameras `front` and `wrist`, 96 px): 98 % success on 50 held-out episodes with its default
sampler (PROVENANCE.md)."""

SHIPPED: dict[str, Path] = {"kit:nano-pick-place": NANO_PICK_PLACE}
"""Checkpoint names that `smolvla_kit.runs.resolve` (and `SmolVLAPolicy.from_pretrained`) accept in place of a folder."""

__all__ = ["NANO_PICK_PLACE", "SHIPPED"]
