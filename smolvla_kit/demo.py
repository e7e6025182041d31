"""The kit's main job: collect demonstrations in simulation, train `nano`, evaluate it, write a report.

    smolvla-kit demo                   # the `pick-place` recipe: about 40 minutes on a 2-core laptop CPU
    smolvla-kit demo --recipe quick    # a minute: the same pipeline on tiny budgets (what CI runs)

The recipe (`smolvla_kit/recipes.py`) sets every budget. Everything lands in `--out` (default `outputs/demo/`):
`data/` (a LeRobot v3.0 dataset), `train/` (checkpoints, loss log), `eval/` (results, rollout videos, denoising
traces) and `report.md` / `report.html` / `report.json`. Each stage resumes when the demo is run again, so an
interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolvla_kit.recipes import Recipe, recipe


@dataclass
class DemoConfig:
    """Settings of the demo (collect -> train -> evaluate -> report)."""

    recipe: str = "pick-place"
    """The named recipe that sets every stage's budget (smolvla_kit/recipes.py; listed at the end of --help)."""
    out: Path = Path("outputs/demo")
    """Folder for the dataset, the training run, the evaluation and the report."""
    workers: int = 0
    """Processes for collection and evaluation; 0 = one per core."""


def run_demo(cfg: DemoConfig) -> Path:
    """Run every stage; returns the path of the HTML report."""
    from smolvla_kit.collect import collect
    from smolvla_kit.evaluate import evaluate
    from smolvla_kit.train import train

    plan = recipe(cfg.recipe)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    collect_cfg = plan.collect_config(out=out / "data", workers=cfg.workers)
    print(f"[1/4] recipe {plan.name}: collecting {collect_cfg.episodes} scripted demonstrations of "
          f"{collect_cfg.task} ...")
    t = time.perf_counter()
    data = collect(collect_cfg)
    timings["collect_s"] = time.perf_counter() - t

    train_cfg = plan.train_config(dataset=out / "data", out=out / "train")
    budget = f"{train_cfg.max_minutes:g} min / " if train_cfg.max_minutes else ""
    print(f"[2/4] training {train_cfg.preset} for up to {budget}{train_cfg.steps} steps ...")
    t = time.perf_counter()
    run = train(train_cfg)
    timings["train_s"] = time.perf_counter() - t

    eval_cfg = plan.eval_config(checkpoint=Path(run["checkpoint"]), out=out / "eval", workers=cfg.workers)
    print(f"[3/4] evaluating on {eval_cfg.episodes} held-out scenes, each once per cube colour ...")
    t = time.perf_counter()
    summary = evaluate(eval_cfg)
    timings["eval_s"] = time.perf_counter() - t

    print("[4/4] writing the report ...")
    return write_report(out, plan, data, run, summary, timings)


def _image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def write_report(out: Path, plan: Recipe, data: dict[str, Any], run: dict[str, Any], summary: dict[str, Any],
                 timings: dict[str, float]) -> Path:
    """`report.md`, `report.html` (self-contained apart from the rollout videos) and `report.json` in `out`."""
    from safetensors.torch import load_file

    from smolvla_kit.evaluate import format_table
    from smolvla_kit.train import plot_loss, read_loss_log
    from smolvla_kit.viz import plot_denoising, save_figure

    loss_png = plot_loss(out / "train" / "loss.csv", out / "loss.png")
    log = read_loss_log(out / "train" / "loss.csv")
    denoise_png = None
    traces = out / "eval" / "denoising.safetensors"
    if traces.exists():
        tensors = load_file(str(traces))
        first = sorted(k for k in tensors if k.endswith("/trajectory"))[0]
        denoise_png = save_figure(plot_denoising(tensors[first].numpy()), out / "denoising.png")
    videos = sorted((out / "eval").glob("rollout_*.mp4"))

    quick = " (quick recipe)" if plan.name == "quick" else ""
    settings = {  # as resolved and recorded by each stage
        "recipe": plan.name,
        "collect": json.loads((out / "data" / "meta" / "kit_collect.json").read_text()),
        "train": json.loads((Path(run["checkpoint"]) / "training_state.json").read_text())["train_config"],
        "sampler": {k: summary[k] for k in ("n_action_steps", "num_steps", "samples_per_chunk")},
        "evaluate": {"scenes": summary["episodes"] // max(1, len(summary["per_instruction"])),
                     "seed_start": summary["seed_start"]},
    }
    facts = {
        "recipe": plan.name,
        "task": summary["task"],
        "episodes recorded": data["episodes"],
        "frames": data["frames"],
        "training steps": run["steps"],
        "final loss": f"{log['loss'][-1]:.4f}" if len(log.get("loss", [])) else "n/a",
        "success rate (held-out seeds)": f"{summary['success_rate']:.0%} of {summary['episodes']} episodes",
        "sampler": f"the mean of {summary['samples_per_chunk']} draws per chunk, {summary['num_steps']} Euler steps, "
                   f"{summary['n_action_steps']} actions played per chunk",
        "collect time": f"{timings['collect_s'] / 60:.1f} min",
        "train time": f"{run['train_seconds'] / 60:.1f} min",
        "eval time": f"{timings['eval_s'] / 60:.1f} min",
    }
    md = [f"# smolvla-kit demo{quick}", "",
          "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in facts.items()], "",
          "## Success on held-out seeds", "", format_table(summary), ""]
    if loss_png:
        md += ["## Training loss", "", f"![loss]({loss_png.name})", ""]
    if denoise_png:
        md += ["## Denoising one action chunk", "",
               "Each panel is one joint over the 50-action chunk; light lines are early Euler steps (noise), the dark "
               "one is the final chunk.", "", f"![denoising]({denoise_png.name})", ""]
    if videos:
        md += ["## Rollouts", "", *[f"- [{v.name}](eval/{v.name})" for v in videos], ""]
    md += ["## Settings", "", "```json", json.dumps(settings, indent=1), "```"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    record = {  # the same facts for programs (benchmarks/demo.py)
        "recipe": plan.name,
        "minutes": {"collect": timings["collect_s"] / 60, "train": run["train_seconds"] / 60,
                    "train_stage": timings["train_s"] / 60, "eval": timings["eval_s"] / 60},
        "data": data,
        "training_steps": run["steps"],
        "final_loss": float(log["loss"][-1]) if len(log.get("loss", [])) else None,
        "evaluation": summary,
        "settings": settings,
    }
    (out / "report.json").write_text(json.dumps(record, indent=1) + "\n")

    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    table_rows = "".join(
        f"<tr><td>{html.escape(r['task'])}</td><td>{r['episodes']}</td><td>{r['success_rate']:.0%}</td>"
        f"<td>{r['grasp_rate']:.0%}</td><td>{r['wrong_cube_rate']:.0%}</td></tr>" for r in summary["per_instruction"]
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>smolvla-kit demo</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd}</style></head><body>",
        f"<h1>smolvla-kit demo{quick}</h1><table>{rows}</table>",
        "<h2>Success on held-out seeds</h2><table><tr><th>instruction</th><th>episodes</th><th>success</th>"
        f"<th>grasped the named cube</th><th>wrong cube</th></tr>{table_rows}</table>",
    ]
    if loss_png:
        parts.append(f"<h2>Training loss</h2>{_image_tag(loss_png, 'loss curve')}")
    if denoise_png:
        parts.append(f"<h2>Denoising one action chunk</h2>{_image_tag(denoise_png, 'denoising')}")
    for v in videos:
        parts.append(f"<h2>Rollout {html.escape(v.stem)}</h2><video controls loop src='eval/{v.name}' width='512'></video>")
    parts.append(f"<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=1))}</pre></body></html>")
    report = out / "report.html"
    report.write_text("\n".join(parts))
    return report


__all__ = ["DemoConfig", "run_demo", "write_report"]
