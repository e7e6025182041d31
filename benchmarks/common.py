"""Shared plumbing for the benchmark scripts: machine description and writing `benchmarks/results/<name>.json`."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# Other shapes of `nano` (changes to its VLM config, then SmolVLAConfig overrides), measured by policy_speed.py
# and learning_curve.py --variant: what another size would cost and whether it learns more per minute.
NANO_VARIANTS: dict[str, tuple[dict[str, dict[str, Any]], dict[str, Any]]] = {
    # nano's shape until its text model was widened to 256 (958,560 parameters)
    "nano-text128": ({"text_config": dict(hidden_size=128, intermediate_size=512)}, {"expert_width_multiplier": 0.5}),
    "nano-text320": ({"text_config": dict(hidden_size=320, intermediate_size=1280)}, {"expert_width_multiplier": 0.2}),
    "nano-vision128": ({"vision_config": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                              num_attention_heads=4)}, {}),
}


def nano_variant_overrides(variant: str) -> dict[str, Any]:
    """SmolVLAConfig.preset("nano", **overrides) for `variant` ("nano" itself: no overrides)."""
    if variant == "nano":
        return {}
    import copy

    from smolvla_kit.policy.config import NANO_VLM_CONFIG

    vlm_changes, overrides = NANO_VARIANTS[variant]
    vlm = copy.deepcopy(NANO_VLM_CONFIG)
    for part, values in vlm_changes.items():
        vlm[part].update(values)
    return {"vlm_config": vlm, **overrides}


def machine_info() -> dict[str, Any]:
    """CPU model, core count and the versions that matter for the figures."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for module in ("mujoco", "torch", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            pass
    info["MUJOCO_GL"] = os.environ.get("MUJOCO_GL", "")
    return info


def write_results(name: str, results: Any, **extra: Any) -> Path:
    """Save results with the machine, the date and the command that produced them."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        **extra,
        "results": results,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_builtin) + "\n")
    return path


def _builtin(value: Any) -> Any:
    """numpy scalars and arrays as plain numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as an aligned text table."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)
