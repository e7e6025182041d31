"""Policies the kit trained itself, shipped inside the package so that the course, a workshop or a test can run a
working policy without training one first. Each folder is an ordinary kit checkpoint (config.json,
model.safetensors, tokenizer.json) with a PROVENANCE.md that says how it was made and how well it did.

Anything that takes a checkpoint folder also takes its name:

    smolvla-kit eval --checkpoint kit:nano-pick-place --episodes 5
"""

from __future__ import annotations

from pathlib import Path

NANO_PICK_PLACE = Path(__file__).resolve().parent / "nano_pick_place"
"""`nano` (its former 128-wide shape) trained for 20 minutes on 2 CPU cores on simulated pick-and-place (cameras
`front` and `wrist`, 96 px): 55 % success on held-out scenes."""

SHIPPED: dict[str, Path] = {"kit:nano-pick-place": NANO_PICK_PLACE}
"""Checkpoint names that `smolvla_kit.evaluate.resolve_checkpoint` accepts in place of a folder."""

__all__ = ["NANO_PICK_PLACE", "SHIPPED"]
