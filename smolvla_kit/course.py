"""Helpers shared by the course notebooks: the CI switch and a figure-to-notebook shortcut.

The notebooks run at full size on a laptop. In CI (`SMOLVLA_KIT_CI=1`, which `.ci/run` sets) they run the same
code on smaller budgets - fewer episodes, steps and pixels - so all of them finish in a few minutes.
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")


def ci_mode() -> bool:
    """True when the notebooks should run their small CI budgets."""
    return os.environ.get("SMOLVLA_KIT_CI", "").strip() not in ("", "0", "false", "False")


def budget(full: T, ci: T) -> T:
    """`full` on a student's machine, `ci` under CI."""
    return ci if ci_mode() else full


__all__ = ["budget", "ci_mode"]
