"""smolvla-kit: a simulation-first teaching kit for vision-language-action policies.

A compact SmolVLA (`smolvla_kit.policy`), a MuJoCo SO-101 (`smolvla_kit.sim`), LeRobot-format datasets
(`smolvla_kit.data`), the real-arm driver (`smolvla_kit.robot`) and the notebooks in `course/`.
"""

__version__ = "0.1.0"
