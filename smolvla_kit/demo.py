"""The kit's main job: collect demonstrations in simulation, train `nano`, evaluate it, write a report.

    smolvla-kit demo            # about 30 minutes on a 2-core laptop CPU
    smolvla-kit demo --quick    # a minute or two: the same pipeline on tiny budgets (what CI runs)

Everything lands in `--out` (default `outputs/demo/`): `data/` (a LeRobot v3.0 dataset), `train/` (checkpoints,
loss log), `eval/` (results, rollout videos, denoising traces) and `report.md` / `report.html`. Each stage resumes
when the demo is run again, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any


@dataclass
class DemoConfig:
    """Settings of the demo (collect -> train -> evaluate -> report)."""

    out: Path = Path("outputs/demo")
    """Folder for the dataset, the training run, the evaluation and the report."""
    quick: bool = False
    """Tiny budgets for every stage (CI): a few episodes, a few training steps, one evaluation scene."""
    task: str = "pick_place"
    """Simulator task: "pick_place" or "reach"."""
    episodes: int = 400
    """Demonstrations to record (more distinct scenes teach the cameras more; 1,000 take 22 min on 2 cores)."""
    image_size: int = 96
    """Camera resolution recorded (nano looks at 96 x 96)."""
    train_minutes: float = 20.0
    """Training time budget (the run stops at this or at `steps`, whichever comes first)."""
    steps: int = 7_000
    """Optimiser steps: the learning-rate schedule's length (about 20 min at 6 steps/s on 2 cores, measured)."""
    camera_warmup_steps: int = 3_000
    """First steps on episode starts with the joint state hidden (TrainConfig.camera_warmup_steps)."""
    lr: float = 1e-3
    start_share: float = 0.5
    """Share of each later batch drawn from the first 20 frames of episodes (TrainConfig.start_share)."""
    batch_size: int = 32
    noise_samples: int = 2
    """Noise draws per frame in the loss (TrainConfig.noise_samples)."""
    ema_decay: float = 0.999
    """The policy saved is a moving average of the weights (TrainConfig.ema_decay)."""
    eval_episodes: int = 10
    """Held-out scenes; each is played once per cube colour."""
    workers: int = 0
    """Collection processes; 0 = one per core."""
    seed: int = 0


def _quick(cfg: DemoConfig) -> DemoConfig:
    return replace(cfg, quick=True, episodes=3, steps=20, camera_warmup_steps=5, batch_size=8, eval_episodes=1)


def run_demo(cfg: DemoConfig) -> Path:
    """Run every stage; returns the path of the HTML report."""
    from smolvla_kit.collect import CollectConfig, collect
    from smolvla_kit.evaluate import EvalConfig, evaluate
    from smolvla_kit.train import TrainConfig, train

    if cfg.quick:
        cfg = _quick(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    print(f"[1/4] collecting {cfg.episodes} scripted demonstrations of {cfg.task} ...")
    t = time.perf_counter()
    data = collect(CollectConfig(out=out / "data", task=cfg.task, episodes=cfg.episodes, workers=cfg.workers,
                                 image_size=cfg.image_size, every_colour=cfg.task == "pick_place", seed=cfg.seed))
    timings["collect_s"] = time.perf_counter() - t

    print(f"[2/4] training nano for up to {cfg.train_minutes:g} min / {cfg.steps} steps ...")
    t = time.perf_counter()
    run = train(TrainConfig(dataset=out / "data", out=out / "train", preset="nano", steps=cfg.steps,
                            batch_size=cfg.batch_size, max_minutes=cfg.train_minutes, seed=cfg.seed, lr=cfg.lr,
                            camera_warmup_steps=cfg.camera_warmup_steps, start_share=cfg.start_share,
                            noise_samples=cfg.noise_samples, ema_decay=cfg.ema_decay,
                            num_threads=os.cpu_count() or 1,  # the demo is the machine's only job: every core
                            save_every=max(10, min(1000, cfg.steps // 4)), log_every=max(1, min(25, cfg.steps // 10))))
    timings["train_s"] = time.perf_counter() - t

    print(f"[3/4] evaluating on {cfg.eval_episodes} held-out scenes ...")
    t = time.perf_counter()
    summary = evaluate(EvalConfig(checkpoint=Path(run["checkpoint"]), out=out / "eval", task=cfg.task,
                                  episodes=cfg.eval_episodes, max_steps=60 if cfg.quick else None))
    timings["eval_s"] = time.perf_counter() - t

    print("[4/4] writing the report ...")
    return write_report(out, cfg, data, run, summary, timings)


def _image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def write_report(out: Path, cfg: DemoConfig, data: dict[str, Any], run: dict[str, Any], summary: dict[str, Any],
                 timings: dict[str, float]) -> Path:
    """`report.md` and `report.html` (self-contained apart from the rollout video) in `out`."""
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

    facts = {
        "task": cfg.task,
        "episodes recorded": data["episodes"],
        "frames": data["frames"],
        "training steps": run["steps"],
        "final loss": f"{log['loss'][-1]:.4f}" if len(log.get("loss", [])) else "n/a",
        "success rate (held-out seeds)": f"{summary['success_rate']:.0%}",
        "collect time": f"{timings['collect_s'] / 60:.1f} min",
        "train time": f"{run['train_seconds'] / 60:.1f} min",
        "eval time": f"{timings['eval_s'] / 60:.1f} min",
    }
    md = [f"# smolvla-kit demo{' (quick mode)' if cfg.quick else ''}", "",
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
    md += ["## Settings", "", "```json", json.dumps({k: str(v) for k, v in asdict(cfg).items()}, indent=1), "```"]
    (out / "report.md").write_text("\n".join(md) + "\n")

    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    table_rows = "".join(
        f"<tr><td>{html.escape(r['task'])}</td><td>{r['episodes']}</td><td>{r['success_rate']:.0%}</td>"
        f"<td>{r['grasp_rate']:.0%}</td><td>{r['wrong_cube_rate']:.0%}</td></tr>" for r in summary["per_instruction"]
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>smolvla-kit demo</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd}</style></head><body>",
        f"<h1>smolvla-kit demo{' (quick mode)' if cfg.quick else ''}</h1><table>{rows}</table>",
        "<h2>Success on held-out seeds</h2><table><tr><th>instruction</th><th>episodes</th><th>success</th>"
        f"<th>grasped the named cube</th><th>wrong cube</th></tr>{table_rows}</table>",
    ]
    if loss_png:
        parts.append(f"<h2>Training loss</h2>{_image_tag(loss_png, 'loss curve')}")
    if denoise_png:
        parts.append(f"<h2>Denoising one action chunk</h2>{_image_tag(denoise_png, 'denoising')}")
    for v in videos:
        parts.append(f"<h2>Rollout {html.escape(v.stem)}</h2><video controls loop src='eval/{v.name}' width='512'></video>")
    parts.append("</body></html>")
    report = out / "report.html"
    report.write_text("\n".join(parts))
    return report


__all__ = ["DemoConfig", "run_demo", "write_report"]
