"""Can `nano`'s vision tower find the cubes? A supervised probe, to tell a vision limit from a learning-signal limit.

    python benchmarks/vision_probe.py                 # 3,000 scenes, 2 minutes of training
    python benchmarks/vision_probe.py --scenes 600 --minutes 0.5

The policy's own image path (SigLIP-style tower, pixel shuffle, connector; both cameras, 96 px, freshly
initialised) feeds one linear layer that must output the (x, y) of every cube on the table, with the simulator's
positions as labels. Scenes are fresh resets from a seed range no other part of the kit uses; the last 10 % are
held out. The table gives the held-out mean absolute error per coordinate against training time, next to the
floor of guessing each coordinate's mean.

If this error is small while a trained policy's first chunk ignores the cameras (`sensitivity_deg` in
`smolvla-kit eval`), the tower can see the cubes and the limit lies in the signal that flow matching on a few
hundred scenes gives it. Results go to `benchmarks/results/vision_probe.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import print_table, write_results  # noqa: E402

PROBE_SEED_START = 50_000_000  # apart from training (0..), evaluation (10,000,000..) and the course


def render_scenes(n: int, image_size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """n reset scenes -> camera key -> (n, H, W, 3) uint8, and cube positions (n, cubes * 2) in metres."""
    from smolvla_kit.sim import SO101Env

    env = SO101Env(task="pick_place", image_size=image_size)
    images: dict[str, list[np.ndarray]] = {}
    labels = []
    for i in range(n):
        obs, _ = env.reset(seed=PROBE_SEED_START + i)
        for key, value in obs.items():
            if key.startswith("observation.images."):
                images.setdefault(key, []).append(value)
        labels.append(np.concatenate([env.cube_position(c)[:2] for c in env.colors]))
    env.close()
    return {k: np.stack(v) for k, v in images.items()}, np.stack(labels).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=2.0, help="training wall-clock")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--report-every", type=float, default=20.0, help="seconds between held-out evaluations")
    args = parser.parse_args()

    from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy
    from smolvla_kit.policy.processing import resize_with_pad, to_float_chw
    from smolvla_kit.runs import cpu_threads

    torch.set_num_threads(cpu_threads())
    t0 = time.perf_counter()
    images, labels = render_scenes(args.scenes, image_size=128)
    render_s = time.perf_counter() - t0
    n_train = int(0.9 * args.scenes)
    mean, std = labels[:n_train].mean(0), labels[:n_train].std(0)
    target = torch.from_numpy((labels - mean) / std)  # (N, cubes * 2)

    torch.manual_seed(0)
    policy = SmolVLAPolicy(SmolVLAConfig.preset("nano"))
    cfg = policy.config
    vlm = policy.model.vlm_with_expert
    keys = cfg.image_keys  # the policy's camera order
    tokens = len(keys) * vlm.embed_images(torch.zeros(1, 3, cfg.image_size, cfg.image_size)).shape[1]
    head = torch.nn.Linear(tokens * cfg.vlm_width, labels.shape[1])  # one fixed slot per token: a linear read-out
    params = [*vlm.vlm.model.vision_model.parameters(), *vlm.vlm.model.connector.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr)

    def predict(idx: np.ndarray) -> torch.Tensor:
        # The policy's own image pre-processing: (B, H, W, 3) uint8 -> (B, 3, S, S) in [-1, 1]
        pixels = [resize_with_pad(to_float_chw(images[k][idx], k), cfg.image_size) * 2 - 1 for k in keys]
        emb = vlm.embed_images(torch.cat(pixels)).unflatten(0, (len(keys), len(idx)))  # (C, B, T, D)
        return head(emb.permute(1, 0, 2, 3).flatten(1))  # (B, cubes * 2)

    def held_out_error_cm() -> float:
        with torch.no_grad():
            idx = np.arange(n_train, args.scenes)
            err = predict(idx).numpy() * std + mean - labels[idx]
        return float(np.abs(err).mean() * 100)

    floor_cm = float(np.abs(labels[n_train:] - mean).mean() * 100)
    rng = np.random.default_rng(0)
    rows = [{"train_seconds": 0.0, "steps": 0, "held_out_error_cm": held_out_error_cm()}]
    start, step, next_report = time.perf_counter(), 0, args.report_every
    while (elapsed := time.perf_counter() - start) < 60 * args.minutes:
        idx = rng.integers(0, n_train, args.batch_size)
        loss = torch.nn.functional.mse_loss(predict(idx), target[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if elapsed >= next_report:
            rows.append({"train_seconds": round(elapsed, 1), "steps": step, "held_out_error_cm": held_out_error_cm()})
            print_table(rows[-1:], ["train_seconds", "steps", "held_out_error_cm"])
            next_report += args.report_every
    rows.append({"train_seconds": round(time.perf_counter() - start, 1), "steps": step,
                 "held_out_error_cm": held_out_error_cm()})
    print()
    print_table(rows, ["train_seconds", "steps", "held_out_error_cm"])
    print(f"floor (guess each coordinate's mean): {floor_cm:.2f} cm")
    path = write_results(
        "vision_probe", rows, scenes=args.scenes, held_out=args.scenes - n_train, render_seconds=render_s,
        floor_cm=floor_cm, cameras=keys, image_size=cfg.image_size, batch_size=args.batch_size, lr=args.lr,
        note="nano's vision tower + connector + one linear layer regressing every cube's (x, y); fresh weights",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
