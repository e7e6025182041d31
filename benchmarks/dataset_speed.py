"""How fast the kit writes and reads LeRobot datasets, how big they are, and how faithful the frames stay.

    python benchmarks/dataset_speed.py            # ~1-2 minutes on 2 CPU cores

Synthetic 128x128 "renders" (smooth shading, moving shapes: like the simulator's cameras, no sensor noise),
two cameras, 30 fps. Measures:

* writing: add_frame (both cameras encoded on the fly), save_episode, bytes per frame;
* fidelity: mean absolute error and PSNR of decoded frames against the originals;
* reading: whole-episode decode, ChunkDataset random samples with a cold cache (seek per frame), after
  `preload()` (frames in memory), and through a DataLoader;
* the cost of the durable commit (rewriting meta/episodes) as a dataset grows to 300 episodes;
* H.264 (the kit's default) against AV1 with LeRobot's defaults (crf 30, keyframe every 2 frames).

Prints a table and writes benchmarks/results/dataset_speed.json.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import write_results  # noqa: E402
from smolvla_kit.data import (  # noqa: E402
    ChunkDataset,
    LeRobotDatasetReader,
    LeRobotDatasetWriter,
    VideoSettings,
    so101_features,
)
from smolvla_kit.data.video import decode_video, encode_frames  # noqa: E402

FPS, SIZE, EPISODES, LENGTH = 30, 128, 10, 150
CAMS = ("observation.images.front", "observation.images.wrist")


def render(t: int, seed: int, cam: int) -> np.ndarray:
    """A smooth synthetic camera frame (H, W, 3) uint8: shaded floor, a moving disc and a box."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[..., 0] = 90 + 60 * yy / SIZE + 10 * cam
    img[..., 1] = 110 + 40 * xx / SIZE
    img[..., 2] = 140 - 30 * yy / SIZE + 7 * seed
    cx, cy = 30 + 60 * (0.5 + 0.5 * np.sin(t / 25 + seed)), 64 + 30 * np.cos(t / 40)
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < 12**2
    img[disc] = [200, 40, 40]
    img[80:100, 70 + (t // 5) % 20 : 95 + (t // 5) % 20] = [40, 160, 60]
    return img.clip(0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def bench_write_read(tmp: Path, video: VideoSettings) -> dict:
    root = tmp / f"ds_{video.codec}"
    frames = {
        s: {c: np.stack([render(t, s, i) for t in range(LENGTH)]) for i, c in enumerate(CAMS)} for s in range(EPISODES)
    }
    rng = np.random.default_rng(0)
    add_s, save_s = [], []
    with LeRobotDatasetWriter(
        root, fps=FPS, features=so101_features({"front": (SIZE, SIZE), "wrist": (SIZE, SIZE)}), video=video
    ) as w:
        for s in range(EPISODES):
            states = rng.normal(size=(LENGTH, 6)).astype(np.float32)
            for t in range(LENGTH):
                t0 = time.perf_counter()
                w.add_frame(
                    {
                        "observation.state": states[t],
                        "action": states[t],
                        **{c: frames[s][c][t] for c in CAMS},
                        "task": "pick up the cube",
                    }
                )
                add_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            w.save_episode()
            save_s.append(time.perf_counter() - t0)
    video_bytes = sum(p.stat().st_size for p in (root / "videos").rglob("*.mp4"))
    total_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    reader = LeRobotDatasetReader(root, cache_mb=0)
    maes, psnrs, decode_s = [], [], []
    for s in range(EPISODES):
        for c in CAMS:
            reader.episode_arrays(s)  # parquet read, not part of the decode time
            t0 = time.perf_counter()
            got = reader.episode_frames(s, c)
            decode_s.append(time.perf_counter() - t0)
            maes.append(np.abs(got.astype(np.int16) - frames[s][c].astype(np.int16)).mean())
            psnrs.append(psnr(got, frames[s][c]))
    decode_ms = float(np.median(decode_s)) / LENGTH * 1e3  # median over episodes x cameras (shared machine)

    n_samples = 200
    idx = np.random.default_rng(1).integers(0, EPISODES * LENGTH, n_samples)
    cold = ChunkDataset(LeRobotDatasetReader(root, cache_mb=0), chunk_size=50)
    t0 = time.perf_counter()
    for i in idx[:60]:
        cold[int(i)]
    cold_sps = 60 / (time.perf_counter() - t0)

    warm = ChunkDataset(LeRobotDatasetReader(root, cache_mb=4096), chunk_size=50)
    t0 = time.perf_counter()
    warm.preload()
    preload_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in idx:
        warm[int(i)]
    warm_sps = n_samples / (time.perf_counter() - t0)
    loader = torch.utils.data.DataLoader(warm, batch_size=32, shuffle=True, num_workers=0)
    t0 = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += len(batch["task"])
        if seen >= 640:
            break
    loader_sps = seen / (time.perf_counter() - t0)
    return {
        "codec": video.codec,
        "crf": video.crf,
        "gop": video.resolved_gop(FPS),
        "add_frame_ms": 1e3 * float(np.median(add_s)),
        "save_episode_ms": 1e3 * float(np.median(save_s)),
        "write_frames_per_s": EPISODES * LENGTH / (sum(add_s) + sum(save_s)),
        "video_bytes_per_camera_frame": video_bytes / (EPISODES * LENGTH * len(CAMS)),
        "dataset_mb": total_bytes / 1e6,
        "frame_mae": float(np.mean(maes)),
        "frame_psnr_db": float(np.mean(psnrs)),
        "decode_ms_per_camera_frame": decode_ms,
        "samples_per_s_cold_seek": cold_sps,
        "preload_s": preload_s,
        "samples_per_s_cached": warm_sps,
        "dataloader_samples_per_s_cached": loader_sps,
    }


def bench_commit_growth(tmp: Path, n: int = 300) -> dict:
    """save_episode time as the dataset grows (each commit rewrites the current meta/episodes file)."""
    root = tmp / "growth"
    feats = so101_features({"front": (16, 16)})
    times = []
    img = np.zeros((16, 16, 3), np.uint8)
    with LeRobotDatasetWriter(root, fps=FPS, features=feats) as w:
        for _ in range(n):
            for _ in range(2):
                w.add_frame(
                    {
                        "observation.state": np.zeros(6, np.float32),
                        "action": np.zeros(6, np.float32),
                        "observation.images.front": img,
                        "task": "t",
                    }
                )
            t0 = time.perf_counter()
            w.save_episode()
            times.append(time.perf_counter() - t0)
    return {
        "episodes": n,
        "save_ms_first_10": 1e3 * float(np.median(times[:10])),
        "save_ms_last_10": 1e3 * float(np.median(times[-10:])),
    }


def bench_seek(tmp: Path) -> dict:
    """One frame at a random time in a 10 s clip: H.264 (keyframe every 2 s) vs AV1 (LeRobot: every 2 frames)."""
    clip = np.stack([render(t, 0, 0) for t in range(300)])
    out = {}
    for name, vs in (
        ("h264_g60", VideoSettings()),
        ("av1_g2", VideoSettings(codec="libsvtav1", crf=30, gop=2, preset=12, fast_decode=0)),
    ):
        path = tmp / f"{name}.mp4"
        encode_frames(path, clip, FPS, vs)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for _ in range(40):
            k = int(rng.integers(0, 300))
            decode_video(path, k / FPS, (k + 1) / FPS)
        out[name] = 1e3 * (time.perf_counter() - t0) / 40
    return out


def main() -> None:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="kit_dataset_speed_"))
    try:
        runs = [
            bench_write_read(tmp, VideoSettings()),
            bench_write_read(tmp, VideoSettings(codec="libsvtav1", crf=30, gop=2, preset=12, fast_decode=0)),
        ]
        growth = bench_commit_growth(tmp)
        seek = bench_seek(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cols = [
        ("codec", "{}"), ("add_frame_ms", "{:.2f}"), ("save_episode_ms", "{:.1f}"), ("write_frames_per_s", "{:.0f}"),
        ("video_bytes_per_camera_frame", "{:.0f}"), ("frame_mae", "{:.2f}"), ("frame_psnr_db", "{:.1f}"),
        ("decode_ms_per_camera_frame", "{:.2f}"), ("samples_per_s_cold_seek", "{:.0f}"), ("preload_s", "{:.2f}"),
        ("samples_per_s_cached", "{:.0f}"), ("dataloader_samples_per_s_cached", "{:.0f}"),
    ]  # fmt: skip
    print(f"{EPISODES} episodes x {LENGTH} frames, 2 cameras {SIZE}x{SIZE}, {FPS} fps; chunk 50")
    for key, fmt in cols:
        print(f"  {key:34s} " + "  ".join(f"{fmt.format(r[key]):>12s}" for r in runs))
    print(
        f"  commit cost: save_episode {growth['save_ms_first_10']:.1f} ms at the start, {growth['save_ms_last_10']:.1f} ms after {growth['episodes']} episodes (16x16, 2 frames)"
    )
    print("  one-frame seek in a 10 s clip: " + ", ".join(f"{k} {v:.1f} ms" for k, v in seek.items()))
    import av

    out = write_results(
        "dataset_speed",
        runs,
        av=av.__version__,
        setup={"episodes": EPISODES, "length": LENGTH, "cameras": 2, "size": SIZE, "fps": FPS, "chunk_size": 50},
        commit_growth=growth,
        seek_ms=seek,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
