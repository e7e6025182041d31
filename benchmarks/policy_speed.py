"""How fast is the kit's SmolVLA on a CPU? Chunk latency, training step time and peak memory.

    python benchmarks/policy_speed.py            # all measurements (a few minutes; base needs ~4 GB RAM)
    python benchmarks/policy_speed.py --quick    # nano (and the larger nano shapes it was chosen against) only
    python benchmarks/policy_speed.py --device cuda   # chunk rows on a GPU (added to the CPU rows on record)

Each measurement runs in its own subprocess, so "peak RSS" is that measurement's own high-water mark.
Latency = raw observation -> un-normalised action chunk (pre-processing, 10 Euler steps, post-processing),
median over repeats after a warm-up. `base` uses random weights of the exact smolvla_base shape and, since
the SmolVLM2 tokenizer needs the Hub, the kit's nano tokenizer (token ids only feed the embedding table).
The reference (LeRobot 0.4.4, eager float32 attention) is measured side by side by benchmarks/parity_lerobot.py
(--base); its figures are copied here from benchmarks/results/parity_lerobot.json when present.
The "float32 | bf16 autocast" row alternates the two kinds of training step in one process, so its ratio is
measured side by side (TrainConfig.mixed_precision).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import NANO_VARIANTS, machine_info, nano_variant_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "policy_speed.json"
PARITY = REPO / "benchmarks" / "results" / "parity_lerobot.json"


def median_ms(fn, repeats: int, sync=lambda: None) -> tuple[float, float]:
    """Median wall time and median CPU time of this thread (ms). On a shared machine the CPU time shows
    what the code costs when it gets the core; the wall time adds waiting for neighbours. `sync` waits for a
    GPU's queued work, so that the wall time covers it."""
    fn()  # warm-up
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    wall.sort()
    cpu.sort()
    return 1000 * wall[len(wall) // 2], 1000 * cpu[len(cpu) // 2]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def nano_config(preset: str):
    from smolvla_kit.policy import SmolVLAConfig

    return SmolVLAConfig.preset("nano", **nano_variant_overrides(preset))


def build(preset: str):
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy

    stats = {k: {"mean": np.zeros(6), "std": np.ones(6) * 20} for k in ("observation.state", "action")}
    torch.manual_seed(0)
    if preset.startswith("nano"):
        policy = SmolVLAPolicy(nano_config(preset), stats=stats)
        cams, size = ["front", "wrist"], (96, 128)
    else:  # smolvla_base's shape and cameras; random weights without spending minutes on init
        cams, size = ["camera1", "camera2", "camera3"], (256, 256)
        with torch.device("meta"):
            policy = SmolVLAPolicy(SmolVLAConfig.preset("base", camera_names=cams), tokenizer="kit:nano")
        policy.to_empty(device="cpu")
        with torch.no_grad():
            for p in policy.parameters():
                p.normal_(0, 0.02)
            for name, p in policy.named_parameters():
                if "norm" in name:
                    p.fill_(1.0)
        policy.model.set_requires_grad()
        policy.normalizer.set_stats(stats)
    g = torch.Generator().manual_seed(0)
    obs = {"observation.state": torch.randn(1, 6, generator=g), "task": "pick up the red cube and place it in the blue bin"}
    for cam in cams:
        obs[f"observation.images.{cam}"] = torch.randint(0, 256, (1, *size, 3), generator=g, dtype=torch.uint8)
    return policy.eval(), obs


def measure(kind: str, threads: int, repeats: int, device: str = "cpu") -> dict:
    import torch

    torch.set_num_threads(threads)
    if kind.startswith("chunk"):
        _, preset, cache, *rest = kind.split(":")  # e.g. chunk:base:cached:bfloat16, chunk:nano:cached:float32:32
        policy, obs = build(preset)
        policy.to(device)
        if rest:
            policy.set_dtype(getattr(torch, rest[0]))
        samples = int(rest[1]) if len(rest) > 1 else 1  # chunks drawn and averaged (samples_per_chunk)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        ms, cpu = median_ms(lambda: policy.predict_chunk(obs, use_cache=cache == "cached", samples=samples), repeats, sync)
        out = {"ms": ms, "cpu_ms": cpu, "peak_rss_mb": peak_rss_mb(), "params": sum(p.numel() for p in policy.parameters())}
        if device == "cuda":
            out["gpu"] = torch.cuda.get_device_name()
            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out
    if kind.startswith("train:nano"):
        _, preset, *draws = kind.split(":")  # e.g. train:nano:2 (two noise draws per frame)
        noise_samples = int(draws[0]) if draws else 1
        step, params = train_step(preset, noise_samples, mixed_precision=False)
        ms, cpu = median_ms(step, repeats)
        return {"ms": ms, "cpu_ms": cpu, "peak_rss_mb": peak_rss_mb(), "params": params}
    if kind.startswith("mixed:nano"):
        # float32 and bfloat16-autocast steps alternate in one process, so both see the same machine load
        _, preset, draws = kind.split(":")
        steps = {mixed: train_step(preset, int(draws), mixed)[0] for mixed in (False, True)}
        times: dict[bool, list[float]] = {False: [], True: []}
        for mixed in (False, True):
            steps[mixed]()  # warm-up
        for _ in range(repeats):
            for mixed in (False, True):
                t0 = time.perf_counter()
                steps[mixed]()
                times[mixed].append(1000 * (time.perf_counter() - t0))
        fp32, bf16 = (sorted(times[m])[len(times[m]) // 2] for m in (False, True))
        return {"ms": fp32, "ms_mixed_precision": bf16, "speedup": fp32 / bf16, "peak_rss_mb": peak_rss_mb()}
    raise ValueError(kind)


def train_step(preset: str, noise_samples: int, mixed_precision: bool):
    """One optimiser step of `preset` on a batch of 32 copies of an observation, as train() takes it."""
    import torch

    policy, obs = build(preset)
    policy.train()
    B = 32
    batch = {k: (v.expand(B, *v.shape[1:]).clone() if torch.is_tensor(v) else [v] * B) for k, v in obs.items()}
    batch["action"] = torch.randn(B, 50, 6) * 20
    batch["action_is_pad"] = torch.zeros(B, 50, dtype=torch.bool)
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision):
            loss, _ = policy.forward(batch, noise_samples=noise_samples)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), 10.0)
        opt.step()

    return step, sum(p.numel() for p in policy.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="nano only")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the chunk rows run")
    ap.add_argument("--one", nargs=4, metavar=("KIND", "THREADS", "REPEATS", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), int(args.one[2]), args.one[3])))
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: this torch sees no CUDA GPU (torch.cuda.is_available() is False).")

    plan = [
        ("nano chunk, prefix cache", "chunk:nano:cached", 1, 30),
        ("nano chunk, no cache", "chunk:nano:uncached", 1, 30),
        ("nano chunk, cache, bfloat16", "chunk:nano:cached:bfloat16", 1, 30),
        ("nano chunk, cache, 8 draws averaged", "chunk:nano:cached:float32:8", 1, 30),
        ("nano chunk, cache, 16 draws (nano's default)", "chunk:nano:cached:float32:16", 1, 30),
        ("nano chunk, cache, 32 draws averaged", "chunk:nano:cached:float32:32", 1, 30),
        ("nano train step, batch 32", "train:nano", 1, 5),
        ("nano train step, batch 32, 2 noise draws", "train:nano:2", 1, 5),
        ("nano train step, 2 draws, float32 | bf16 autocast", "mixed:nano:2", 1, 10),
    ]
    for variant in NANO_VARIANTS:
        plan += [(f"{variant} chunk, prefix cache", f"chunk:{variant}:cached", 1, 30),
                 (f"{variant} train step, batch 32", f"train:{variant}", 1, 5)]
    if args.device == "cuda":  # latency on a GPU: base as it would serve a real arm, nano for scale
        plan = [
            ("nano chunk, prefix cache", "chunk:nano:cached", 1, 30),
            ("base chunk, prefix cache", "chunk:base:cached", 1, 20),
            ("base chunk, cache, bfloat16", "chunk:base:cached:bfloat16", 1, 20),
        ]
    elif not args.quick:
        plan += [
            ("base chunk, prefix cache", "chunk:base:cached", 1, 2),
            ("base chunk, no cache", "chunk:base:uncached", 1, 1),
            ("base chunk, cache, bfloat16", "chunk:base:cached:bfloat16", 1, 2),
        ]
    info = machine_info()
    rows = []
    print(f"{'measurement':42s} {'threads':>7s} {'wall ms':>10s} {'cpu ms':>10s} {'peak RSS MB':>12s} {'params':>10s}")
    for label, kind, threads, repeats in plan:
        proc = subprocess.run([sys.executable, __file__, "--one", kind, str(threads), str(repeats), args.device],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"measurement": label, "kind": kind, "device": args.device, "threads": threads,
                     "repeats": repeats, **res})
        if "speedup" in res:  # the two alternating halves of one measurement
            print(f"{label:42s} {threads:7d} {res['ms']:10.1f} | {res['ms_mixed_precision']:.1f} ms with autocast: "
                  f"x{res['speedup']:.2f}")
            continue
        print(f"{label:42s} {threads:7d} {res['ms']:10.1f} {res['cpu_ms']:10.1f} {res['peak_rss_mb']:12.0f} "
              f"{res.get('params', ''):>10}")

    reference = []
    if PARITY.is_file():
        for name, entry in json.loads(PARITY.read_text()).get("references", {}).items():
            for c in entry["cases"]:
                alt = c["alternating_same_process_ms"]
                reference.append({"reference": name, "case": c["case"], "threads": entry["threads"],
                                  "n_params": c["n_params"], "lerobot_ms": alt["lerobot"], "kit_ms": alt["kit"],
                                  "kit_bfloat16_ms": alt["kit_bfloat16"], "max_abs_diff": c["max_abs_diff"]})
                print(f"side by side, turn by turn in one process ({name}, {c['case']}, {entry['threads']} threads): "
                      f"LeRobot {alt['lerobot']:.1f} ms vs kit {alt['kit']:.1f} ms, kit bfloat16 {alt['kit_bfloat16']:.1f} ms")

    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    old_rows = old.get("results", [])
    rows += [r for r in old_rows if r.get("device", "cpu") != args.device]  # the other device's rows stay
    base_rows_from = None
    if args.quick and args.device == "cpu" and old:  # keep the base rows of the last full run
        kept = [r for r in old_rows if "base" in r["kind"] and r["threads"] == 1 and r.get("device", "cpu") == "cpu"]
        if kept:
            rows += kept
            base_rows_from = old.get("base_rows_from") or old.get("date")
    report = {
        "benchmark": "policy_speed",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/policy_speed.py", *sys.argv[1:]]),
        "machine": info,
        "targets": {"nano_chunk_ms_1thread": 15.0, "base_chunk": "clearly faster than LeRobot's eager float32 attention"},
        "results": rows,
        "base_rows_from": base_rows_from,  # date of the full run the base rows come from (None: this run)
        "reference_side_by_side": reference,
        "note": "Chunk = 10 Euler steps, batch 1, raw observation to actions; base: 3 cameras 256x256 -> 512. The machine "
                "is shared (2 cores, other jobs running: see load_average_1min_at_start), so wall times include waiting; "
                "cpu_ms is this thread's own CPU time. Multi-threaded runs are not reported: with both cores busy, "
                "OpenMP threads stall on each other (a 2-thread nano train step took 4 s vs 0.17 s with one).",
    }
    if args.device == "cuda":  # the CPU run's description stays; the GPU run's goes beside it
        report = {**old, "results": rows, "reference_side_by_side": reference,
                  "cuda_run": {k: report[k] for k in ("date", "command", "machine")}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
