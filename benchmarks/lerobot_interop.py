"""Interoperability of smolvla_kit.data with LeRobot's own dataset code (both directions, for real).

Needs a Python with `lerobot` installed (CI does not have it; the kit never imports it):

    python3.12 -m venv /tmp/lerobot-data-venv
    /tmp/lerobot-data-venv/bin/pip install 'lerobot[dataset]==0.6.1'
    /tmp/lerobot-data-venv/bin/python benchmarks/lerobot_interop.py

1. kit -> LeRobot: the kit writes a v3.0 dataset; `lerobot.datasets.LeRobotDataset(root=...)` loads it with both
   video backends (torchcodec, pyav); every frame's state, action chunk (delta_timestamps), padding mask and task
   must equal the kit's, and the decoded images must match. Then LeRobot appends an episode to the kit's dataset
   (`LeRobotDataset.resume`) and the kit reads the result.
2. LeRobot -> kit: LeRobot records a dataset (two fake cameras, its default AV1 encoder, several episodes per
   data/video file); the kit reads it and must agree with LeRobot item by item. Then the kit appends episodes
   (resume) and LeRobot loads the result.

Prints a table and writes benchmarks/results/lerobot_interop.json.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import lerobot  # noqa: E402
from common import write_results  # noqa: E402
import torch  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

from smolvla_kit.data import ChunkDataset, LeRobotDatasetReader, LeRobotDatasetWriter, so101_features  # noqa: E402

FPS = 30
H, W = 96, 128
CHUNK = 50
CAMS = ("front", "wrist")


def synthetic_episode(rng: np.random.Generator, length: int, seed_colour: int):
    """Smooth camera images (a gradient and a moving square) and random-walk joints, like a slow arm."""
    yy, xx = np.mgrid[0:H, 0:W]
    states = np.cumsum(rng.normal(scale=0.5, size=(length, 6)), axis=0).astype(np.float32)
    actions = (states + rng.normal(scale=0.2, size=(length, 6))).astype(np.float32)
    frames = {}
    for c, cam in enumerate(CAMS):
        f = np.zeros((length, H, W, 3), np.uint8)
        for t in range(length):
            f[t, ..., 0] = (xx * 2 + 3 * t + 50 * c) % 256
            f[t, ..., 1] = (yy * 2) % 256
            f[t, ..., 2] = (seed_colour * 37 + 90 * c) % 256
            x0 = (2 * t) % (W - 20)
            f[t, 30:50, x0 : x0 + 20] = [230, 40, 40]
        frames[f"observation.images.{cam}"] = f
    return states, actions, frames


def lerobot_frame_uint8(item: dict, key: str) -> np.ndarray:
    return (item[key].permute(1, 2, 0).numpy() * 255.0).round().astype(np.int16)  # (H, W, 3)


def compare_items(lr: LeRobotDataset, kit_reader: LeRobotDatasetReader, truth: dict | None) -> dict:
    """Walk every frame of `lr` and compare with the kit's ChunkDataset over the same folder."""
    kit = ChunkDataset(kit_reader, chunk_size=CHUNK)
    assert len(lr) == len(kit), (len(lr), len(kit))
    frame_err_vs_kit, frame_err_vs_truth, max_err_vs_kit = [], [], 0
    for i in range(len(lr)):
        a, b = lr[i], kit[i]
        assert int(a["episode_index"]) == b["episode_index"] and int(a["frame_index"]) == b["frame_index"]
        assert torch.equal(a["observation.state"], b["observation.state"]), f"state differs at {i}"
        assert torch.equal(a["action"], b["action"]), f"action chunk differs at {i}"
        assert torch.equal(a["action_is_pad"], b["action_is_pad"]), f"action_is_pad differs at {i}"
        assert a["task"] == b["task"], (a["task"], b["task"])
        for key in kit_reader.meta.camera_keys:
            x = lerobot_frame_uint8(a, key)
            y = (b[key].permute(1, 2, 0).numpy() * 255.0).round().astype(np.int16)
            d = np.abs(x - y)
            frame_err_vs_kit.append(d.mean())
            max_err_vs_kit = max(max_err_vs_kit, int(d.max()))
            if truth is not None:
                ep, t = b["episode_index"], b["frame_index"]
                frame_err_vs_truth.append(np.abs(x - truth[ep][2][key][t].astype(np.int16)).mean())
    return {
        "frames": len(lr),
        "state_action_chunk_pad_task_equal": True,
        "frame_mae_lerobot_vs_kit": float(np.mean(frame_err_vs_kit)),
        "frame_maxabs_lerobot_vs_kit": max_err_vs_kit,
        "frame_mae_vs_original": float(np.mean(frame_err_vs_truth)) if frame_err_vs_truth else None,
    }


def kit_to_lerobot(tmp: Path) -> dict:
    root = tmp / "kit_written"
    rng = np.random.default_rng(0)
    truth = {}
    t0 = time.perf_counter()
    with LeRobotDatasetWriter(root, fps=FPS, features=so101_features({c: (H, W) for c in CAMS})) as w:
        for ep, length in enumerate((40, 57, 33)):
            states, actions, frames = synthetic_episode(rng, length, ep)
            task = ["pick up the red cube", "push the cube left"][ep % 2]
            for t in range(length):
                w.add_frame(
                    {
                        "observation.state": states[t],
                        "action": actions[t],
                        **{k: v[t] for k, v in frames.items()},
                        "task": task,
                    }
                )
            w.save_episode()
            truth[ep] = (states, actions, frames)
    write_s = time.perf_counter() - t0
    out: dict = {"write_s": write_s}
    delta = {"action": [k / FPS for k in range(CHUNK)]}
    for backend in ("torchcodec", "pyav"):
        lr = LeRobotDataset("local/kit_written", root=root, video_backend=backend, delta_timestamps=delta)
        assert lr.meta.total_episodes == 3 and lr.num_frames == 130
        res = compare_items(lr, LeRobotDatasetReader(root), truth)
        out[f"lerobot_{backend}"] = res
        kit_stats = LeRobotDatasetReader(root).meta.stats
        for key, d in kit_stats.items():
            for s in ("mean", "std", "min", "max"):
                np.testing.assert_allclose(np.asarray(lr.meta.stats[key][s]), d[s], rtol=1e-6, atol=1e-9)
        out["stats_equal"] = True
    # LeRobot appends one episode to the kit's dataset, then the kit reads all four.
    lr = LeRobotDataset.resume("local/kit_written", root=root)
    states, actions, frames = synthetic_episode(rng, 25, 9)
    for t in range(25):
        lr.add_frame(
            {
                "observation.state": states[t],
                "action": actions[t],
                **{k: v[t] for k, v in frames.items()},
                "task": "stack the cubes",
            }
        )
    lr.save_episode()
    lr.finalize()
    reader = LeRobotDatasetReader(root)
    e = reader.episode(3)
    assert reader.num_episodes == 4 and np.array_equal(e.states, states) and np.array_equal(e.actions, actions)
    assert e.task == "stack the cubes"
    mae = float(np.mean([np.abs(e.frames[k].astype(int) - frames[k].astype(int)).mean() for k in frames]))
    out["kit_reads_lerobot_appended_episode"] = {"episodes": reader.num_episodes, "frame_mae_vs_original": mae}
    lr2 = LeRobotDataset("local/kit_written", root=root, delta_timestamps=delta)
    out["after_lerobot_append"] = compare_items(lr2, LeRobotDatasetReader(root), None)
    return out


def lerobot_to_kit(tmp: Path) -> dict:
    root = tmp / "lerobot_written"
    names = so101_features()["action"]["names"]
    features = {
        "action": {"dtype": "float32", "shape": (6,), "names": names},
        "observation.state": {"dtype": "float32", "shape": (6,), "names": names},
        **{
            f"observation.images.{c}": {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]}
            for c in CAMS
        },
    }
    rng = np.random.default_rng(1)
    truth = {}
    t0 = time.perf_counter()
    lr = LeRobotDataset.create("local/lerobot_written", fps=FPS, features=features, root=root, robot_type="so_follower")
    for ep, length in enumerate((31, 45, 38)):
        states, actions, frames = synthetic_episode(rng, length, ep + 3)
        for t in range(length):
            lr.add_frame(
                {
                    "observation.state": states[t],
                    "action": actions[t],
                    **{k: v[t] for k, v in frames.items()},
                    "task": f"task {ep % 2}",
                }
            )
        lr.save_episode()
        truth[ep] = (states, actions, frames)
    lr.finalize()
    write_s = time.perf_counter() - t0
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert "data/chunk-000/file-001.parquet" not in files, "expected LeRobot to put all episodes in one file"
    reader = LeRobotDatasetReader(root)
    out: dict = {
        "lerobot_write_s": write_s,
        "files": files,
        "codec": reader.meta.features["observation.images.front"]["info"]["video.codec"],
    }
    for ep, (states, actions, _frames) in truth.items():
        e = reader.episode(ep)
        assert np.array_equal(e.states, states) and np.array_equal(e.actions, actions)
    delta = {"action": [k / FPS for k in range(CHUNK)]}
    lr = LeRobotDataset("local/lerobot_written", root=root, delta_timestamps=delta)
    out["kit_vs_lerobot"] = compare_items(lr, reader, truth)
    # The kit appends two episodes (resume: new files after LeRobot's), then LeRobot loads everything.
    with LeRobotDatasetWriter(root) as w:
        for ep, length in ((3, 29), (4, 36)):
            states, actions, frames = synthetic_episode(rng, length, ep)
            for t in range(length):
                w.add_frame(
                    {
                        "observation.state": states[t],
                        "action": actions[t],
                        **{k: v[t] for k, v in frames.items()},
                        "task": "task 1",
                    }
                )
            w.save_episode()
            truth[ep] = (states, actions, frames)
    lr = LeRobotDataset("local/lerobot_written", root=root, delta_timestamps=delta)
    assert lr.meta.total_episodes == 5
    out["after_kit_append"] = compare_items(lr, LeRobotDatasetReader(root), truth)
    return out


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kit_interop_"))
    try:
        a = kit_to_lerobot(tmp)
        b = lerobot_to_kit(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        ("kit -> LeRobot (torchcodec)", a["lerobot_torchcodec"]),
        ("kit -> LeRobot (pyav)", a["lerobot_pyav"]),
        ("kit + LeRobot-appended ep -> LeRobot", a["after_lerobot_append"]),
        ("LeRobot (AV1, multi-episode files) -> kit", b["kit_vs_lerobot"]),
        ("LeRobot + kit-appended eps -> LeRobot", b["after_kit_append"]),
    ]
    print(f"lerobot {lerobot.__version__}, torch {torch.__version__}")
    print(
        f"{'direction':45s} {'frames':>6s} {'state/action/pad/task':>22s} {'MAE vs other':>13s} {'max':>4s} {'MAE vs orig':>12s}"
    )
    for name, r in rows:
        orig = f"{r['frame_mae_vs_original']:.2f}" if r["frame_mae_vs_original"] is not None else "-"
        print(
            f"{name:45s} {r['frames']:6d} {'equal':>22s} {r['frame_mae_lerobot_vs_kit']:13.3f} {r['frame_maxabs_lerobot_vs_kit']:4d} {orig:>12s}"
        )
    print(f"stats.json read by LeRobot equals the kit's: {a['stats_equal']}")
    print(
        f"kit reads the episode LeRobot appended to a kit dataset: MAE {a['kit_reads_lerobot_appended_episode']['frame_mae_vs_original']:.2f}"
    )
    out = write_results(
        "lerobot_interop",
        {"kit_to_lerobot": a, "lerobot_to_kit": b},
        lerobot=lerobot.__version__,
        note="MAE in grey levels (0..255); 'vs other' = LeRobot's decode vs the kit's decode of the same file",
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
