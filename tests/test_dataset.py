"""LeRobot-format datasets: write/read round trip, v2.1 and multi-episode-file reading, training samples, errors.

Every dataset is built inside the test (no LeRobot, no network). The v2.1 one and the multi-episode v3.0 one
are written by small helpers below that follow LeRobot's layouts file by file.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from smolvla_kit.data import (
    ChunkDataset,
    DatasetError,
    LeRobotDatasetReader,
    LeRobotDatasetWriter,
    check_features,
    recompute_stats,
    so101_features,
)
from smolvla_kit.data.__main__ import main as data_cli
from smolvla_kit.data.stats import ImageHistogram, aggregate_stats, stats_to_json, vector_stats
from smolvla_kit.data.video import encode_frames

FPS = 30
H, W = 48, 64
CAMS = {"front": (H, W), "wrist": (H, W)}
FRONT, WRIST = "observation.images.front", "observation.images.wrist"


def make_episode(seed: int, length: int):
    """Deterministic states/actions and smooth images (a gradient and a moving square) for one episode."""
    rng = np.random.default_rng(seed)
    states = np.cumsum(rng.normal(size=(length, 6)), axis=0).astype(np.float32)
    actions = (states + rng.normal(scale=0.1, size=(length, 6))).astype(np.float32)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = {}
    for c, key in enumerate((FRONT, WRIST)):
        f = np.zeros((length, H, W, 3), np.uint8)
        for t in range(length):
            f[t, ..., 0] = (xx * 3 + 4 * t) % 256
            f[t, ..., 1] = (yy * 4 + 60 * c) % 256
            f[t, ..., 2] = (40 * seed + 100 * c) % 256
            x0 = (2 * t) % (W - 12)
            f[t, 10:22, x0 : x0 + 12] = [230, 40, 40]
        frames[key] = f
    return states, actions, frames


def write_dataset(root, episodes, tasks=None, **kwargs):
    """Record `episodes` = [(seed, length), ...] with the kit's writer; returns the ground truth per episode."""
    truth = []
    with LeRobotDatasetWriter(root, fps=FPS, features=so101_features(CAMS), **kwargs) as w:
        first = w.num_episodes  # > 0 when the folder already holds a dataset (resume)
        for i, (seed, length) in enumerate(episodes):
            states, actions, frames = make_episode(seed, length)
            task = (tasks or ["pick up the red cube"])[i % len(tasks or [0])]
            for t in range(length):
                w.add_frame(
                    {
                        "observation.state": states[t],
                        "action": actions[t],
                        FRONT: frames[FRONT][t],
                        WRIST: frames[WRIST][t],
                        "task": task,
                    }
                )
            assert w.save_episode() == first + i
            truth.append((states, actions, frames, task))
    return truth


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "pick"
    truth = write_dataset(root, [(0, 12), (1, 20), (2, 9)], tasks=["pick up the red cube", "push the cube left"])
    return root, truth


# ---------------------------------------------------------------------------------------------------------------
# v3.0 write -> read


def test_round_trip_arrays_and_frames(dataset):
    root, truth = dataset
    reader = LeRobotDatasetReader(root)
    assert reader.num_episodes == 3 and reader.num_frames == 41
    for i, (states, actions, frames, task) in enumerate(truth):
        ep = reader.episode(i)
        assert np.array_equal(ep.states, states) and np.array_equal(ep.actions, actions)  # exact
        assert ep.task == task and len(ep) == len(states)
        np.testing.assert_allclose(ep.timestamps, np.arange(len(states)) / FPS, atol=1e-6)
        for key in (FRONT, WRIST):
            assert ep.frames[key].shape == frames[key].shape and ep.frames[key].dtype == np.uint8
            assert mae(ep.frames[key], frames[key]) < 3.0  # H.264 crf 20, 4:2:0 chroma
        # a single frame read without the cache (seek + decode) equals the cached one
        nocache = LeRobotDatasetReader(root, cache_mb=0)
        assert np.array_equal(nocache.frame(i, FRONT, len(states) - 1), ep.frames[FRONT][-1])


def test_layout_matches_lerobot_v30(dataset):
    root, truth = dataset
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "so101_follower" and info["fps"] == FPS
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 41, 2)
    assert (
        info["chunks_size"] == 1000 and info["data_files_size_in_mb"] == 100 and info["video_files_size_in_mb"] == 200
    )
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert feats["action"]["names"] == [
        "shoulder_pan.pos",
        "shoulder_lift.pos",
        "elbow_flex.pos",
        "wrist_flex.pos",
        "wrist_roll.pos",
        "gripper.pos",
    ]
    assert feats[FRONT]["shape"] == [H, W, 3] and feats[FRONT]["names"] == ["height", "width", "channels"]
    vinfo = feats[FRONT]["info"]
    assert vinfo["video.codec"] == "h264" and vinfo["video.pix_fmt"] == "yuv420p" and vinfo["video.fps"] == FPS
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert feats[key]["shape"] == [1]

    data = pq.read_table(root / "data/chunk-000/file-001.parquet")
    assert data.column_names == [
        "action",
        "observation.state",
        "timestamp",
        "frame_index",
        "episode_index",
        "index",
        "task_index",
    ]
    assert data.schema.field("action").type == pa.list_(pa.float32(), 6)  # fixed-size list, as LeRobot writes
    assert data.column("index").to_pylist() == list(range(12, 32))  # global row index continues across episodes

    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    row = eps.to_pylist()[1]
    assert row["episode_index"] == 1 and row["length"] == 20 and row["tasks"] == ["push the cube left"]
    assert (row["data/chunk_index"], row["data/file_index"]) == (0, 1)
    assert (row["dataset_from_index"], row["dataset_to_index"]) == (12, 32)
    assert row[f"videos/{FRONT}/from_timestamp"] == 0.0 and row[f"videos/{FRONT}/to_timestamp"] == pytest.approx(
        20 / FPS
    )
    assert np.asarray(row[f"stats/{FRONT}/mean"]).shape == (3, 1, 1)
    assert (row["meta/episodes/chunk_index"], row["meta/episodes/file_index"]) == (0, 0)

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.to_pylist() == [
        {"task_index": 0, "task": "pick up the red cube"},
        {"task_index": 1, "task": "push the cube left"},
    ]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # pandas reads `task` as index


def test_stats_are_exact_aggregates(dataset):
    root, truth = dataset
    stats = json.loads((root / "meta/stats.json").read_text())
    all_actions = np.concatenate([t[0 + 1] for t in truth])
    np.testing.assert_allclose(stats["action"]["mean"], all_actions.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], all_actions.std(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["min"], all_actions.min(axis=0))
    assert stats["action"]["count"] == [41]
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    front = np.concatenate([t[2][FRONT] for t in truth]).reshape(-1, 3) / 255.0
    assert np.asarray(stats[FRONT]["mean"]).shape == (3, 1, 1)
    np.testing.assert_allclose(np.asarray(stats[FRONT]["mean"]).ravel(), front.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(np.asarray(stats[FRONT]["std"]).ravel(), front.std(axis=0), atol=1e-9)
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in stats


def test_append_reopens_and_continues(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, [(0, 6)])
    truth = write_dataset(root, [(5, 8)])  # reopens the same folder: episode 1, file-001
    reader = LeRobotDatasetReader(root)
    assert reader.meta.episode_indices == [0, 1]
    assert reader.meta.episode_info(1).data_path.name == "file-001.parquet"
    assert np.array_equal(reader.episode(1).states, truth[0][0])
    assert reader.num_frames == 14
    with pytest.raises(DatasetError, match=r"meta/info.json.*30 fps"):
        LeRobotDatasetWriter(root, fps=15)
    with pytest.raises(DatasetError, match=r"meta/info.json.*observation.state"):
        LeRobotDatasetWriter(
            root,
            features={**so101_features(CAMS), "observation.state": {"dtype": "float32", "shape": [7], "names": None}},
        )
    with pytest.raises(FileExistsError):
        LeRobotDatasetWriter.create(root)
    # An incomplete copy (episode index missing) is never "repaired" by deleting its data.
    (root / "meta/episodes").rename(tmp_path / "episodes")
    with pytest.raises(DatasetError, match=r"meta/episodes: no episode found, but .*meta/info.json lists 2"):
        LeRobotDatasetWriter(root)
    assert len(list((root / "data").rglob("*.parquet"))) == 2


def test_add_frame_rejects_bad_frames(tmp_path):
    w = LeRobotDatasetWriter(tmp_path / "ds", fps=FPS, features=so101_features(CAMS))
    states, actions, frames = make_episode(0, 2)
    good = {
        "observation.state": states[0],
        "action": actions[0],
        FRONT: frames[FRONT][0],
        WRIST: frames[WRIST][0],
        "task": "t",
    }
    with pytest.raises(ValueError, match="Missing: \\['observation.images.wrist'\\]"):
        w.add_frame({k: v for k, v in good.items() if k != WRIST})
    with pytest.raises(ValueError, match="'action' must have shape \\(6,\\)"):
        w.add_frame({**good, "action": np.zeros(7, np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        w.add_frame({**good, "action": np.full(6, np.nan, np.float32)})
    with pytest.raises(ValueError, match="shape \\(48, 64, 3\\)"):
        w.add_frame({**good, FRONT: np.zeros((64, 48, 3), np.uint8)})
    w.add_frame({**good, FRONT: torch.from_numpy(frames[FRONT][0]).permute(2, 0, 1)})  # CHW tensor is fine
    w.clear_episode()
    with pytest.raises(ValueError, match="no frame"):
        w.save_episode()
    w.finalize()
    assert LeRobotDatasetReader(tmp_path / "ds").num_episodes == 0


# ---------------------------------------------------------------------------------------------------------------
# Reading what LeRobot writes: several episodes per file (v3.0), and the v2.1 layout


def _data_table(ep_index: int, start: int, states, actions, task_index: int, list_type) -> pa.Table:
    n = len(states)
    return pa.table(
        {
            "action": pa.array(actions.tolist(), list_type),
            "observation.state": pa.array(states.tolist(), list_type),
            "timestamp": pa.array((np.arange(n) / FPS).astype(np.float32)),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "episode_index": pa.array(np.full(n, ep_index, dtype=np.int64)),
            "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, task_index, dtype=np.int64)),
        }
    )


def _info(version: str, total_eps: int, total_frames: int, data_path: str, video_path: str) -> dict:
    feats = so101_features(CAMS)
    for k in (FRONT, WRIST):
        feats[k]["info"] = {
            "video.fps": FPS,
            "video.height": H,
            "video.width": W,
            "video.channels": 3,
            "video.codec": "h264",
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "has_audio": False,
        }
    feats.update(
        {
            k: {"dtype": d, "shape": [1], "names": None}
            for k, d in (
                ("timestamp", "float32"),
                ("frame_index", "int64"),
                ("episode_index", "int64"),
                ("index", "int64"),
                ("task_index", "int64"),
            )
        }
    )
    return {
        "codebase_version": version, "robot_type": "so100_follower", "total_episodes": total_eps, "total_frames": total_frames,
        "total_tasks": 2, "chunks_size": 1000, "fps": FPS, "splits": {"train": f"0:{total_eps}"},
        "data_path": data_path, "video_path": video_path, "features": feats,
    }  # fmt: skip


def write_multi_episode_v30(root, episodes):
    """A v3.0 dataset the way LeRobot packs it: all episodes in ONE parquet file and ONE mp4 per camera."""
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    truth, tables, rows, start = [], [], [], 0
    for ep, (seed, length) in enumerate(episodes):
        states, actions, frames = make_episode(seed, length)
        truth.append((states, actions, frames))
        tables.append(_data_table(ep, start, states, actions, ep % 2, pa.list_(pa.float32(), 6)))
        row = {"episode_index": ep, "tasks": [f"task {ep % 2}"], "length": length, "data/chunk_index": 0, "data/file_index": 0,
               "dataset_from_index": start, "dataset_to_index": start + length}  # fmt: skip
        for k in (FRONT, WRIST):
            row.update(
                {
                    f"videos/{k}/chunk_index": 0,
                    f"videos/{k}/file_index": 0,
                    f"videos/{k}/from_timestamp": start / FPS,
                    f"videos/{k}/to_timestamp": (start + length) / FPS,
                }
            )
        rows.append(row)
        start += length
    pq.write_table(pa.concat_tables(tables), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0, 1], "task": ["task 0", "task 1"]}), root / "meta/tasks.parquet")
    for k in (FRONT, WRIST):  # one continuous video: episode e occupies [from_timestamp, to_timestamp)
        encode_frames(root / f"videos/{k}/chunk-000/file-000.mp4", np.concatenate([t[2][k] for t in truth]), FPS)
    info = _info(
        "v3.0",
        len(episodes),
        start,
        "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
    )
    (root / "meta/info.json").write_text(json.dumps(info))
    return truth


def write_v21(root, episodes):
    """A v2.1 dataset: one parquet and one mp4 per episode, metadata in meta/*.jsonl (LeRobot <= 0.3 layout)."""
    (root / "meta").mkdir(parents=True)
    truth, eps_lines, stats_lines, start = [], [], [], 0
    for ep, (seed, length) in enumerate(episodes):
        states, actions, frames = make_episode(seed, length)
        truth.append((states, actions, frames))
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(
            _data_table(ep, start, states, actions, ep % 2, pa.list_(pa.float32())),
            root / f"data/chunk-000/episode_{ep:06d}.parquet",
        )
        for k in (FRONT, WRIST):
            encode_frames(root / f"videos/chunk-000/{k}/episode_{ep:06d}.mp4", frames[k], FPS)
        eps_lines.append(json.dumps({"episode_index": ep, "tasks": [f"task {ep % 2}"], "length": length}))
        st = {"observation.state": vector_stats(states), "action": vector_stats(actions)}
        for k in (FRONT, WRIST):
            hist = ImageHistogram()
            for img in frames[k]:
                hist.update(img)
            st[k] = hist.stats()
        stats_lines.append(json.dumps({"episode_index": ep, "stats": stats_to_json(st)}))
        start += length
    (root / "meta/episodes.jsonl").write_text("\n".join(eps_lines) + "\n")
    (root / "meta/episodes_stats.jsonl").write_text("\n".join(stats_lines) + "\n")
    (root / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "task 0"}\n{"task_index": 1, "task": "task 1"}\n')
    info = _info(
        "v2.1",
        len(episodes),
        start,
        "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    )
    info.update({"total_chunks": 1, "total_videos": 2 * len(episodes)})
    (root / "meta/info.json").write_text(json.dumps(info))
    return truth


@pytest.mark.parametrize("layout", ["v3.0-multi-episode-files", "v2.1"])
def test_read_lerobot_layouts(tmp_path, layout):
    episodes = [(3, 14), (4, 11), (5, 9)]
    root = tmp_path / "ds"
    truth = (write_multi_episode_v30 if layout.startswith("v3.0") else write_v21)(root, episodes)
    reader = LeRobotDatasetReader(root)
    assert reader.meta.version == layout[:4] and reader.num_episodes == 3 and reader.num_frames == 34
    assert reader.meta.tasks == ["task 0", "task 1"] and reader.meta.robot_type == "so100_follower"
    for i, (states, actions, frames) in enumerate(truth):
        ep = reader.episode(i)
        assert np.array_equal(ep.states, states) and np.array_equal(ep.actions, actions)
        assert ep.task == f"task {i % 2}"
        for k in (FRONT, WRIST):
            assert mae(ep.frames[k], frames[k]) < 3.0  # the right frames (a neighbour would be far off)
        # single-frame seek into the middle of a shared file
        assert mae(LeRobotDatasetReader(root, cache_mb=0).frame(i, WRIST, 5), frames[WRIST][5]) < 3.0
    if layout == "v2.1":  # no stats.json: aggregated from meta/episodes_stats.jsonl
        all_states = np.concatenate([t[0] for t in truth])
        np.testing.assert_allclose(reader.meta.stats["observation.state"]["mean"], all_states.mean(axis=0), rtol=1e-6)
    ds = ChunkDataset(reader, chunk_size=10)
    item = ds[14 + 5]  # episode 1, frame 5: 6 real actions then 4 padded
    assert item["episode_index"] == 1 and item["frame_index"] == 5
    assert torch.equal(item["action"][:6], torch.from_numpy(truth[1][1][5:11]))
    assert item["action_is_pad"].tolist() == [False] * 6 + [True] * 4


def test_read_image_features_stored_in_parquet(tmp_path):
    """LeRobot's `dtype: image` (recorded with use_videos=False): PNG bytes in a struct column of the data file."""
    import io

    from PIL import Image

    root = tmp_path / "ds"
    truth = write_multi_episode_v30(root, [(6, 5), (7, 4)])
    for k in (FRONT, WRIST):
        (root / "videos" / k).rename(tmp_path / f"unused-{k}")
    info = json.loads((root / "meta/info.json").read_text())
    info["features"][FRONT] = {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]}
    del info["features"][WRIST]
    (root / "meta/info.json").write_text(json.dumps(info))
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    pngs = []
    for _states, _actions, frames in truth:
        for img in frames[FRONT]:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            pngs.append({"bytes": buf.getvalue(), "path": None})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(data.append_column(FRONT, pa.array(pngs, image_type)), root / "data/chunk-000/file-000.parquet")
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    eps = eps.select([c for c in eps.column_names if not c.startswith("videos/")])
    pq.write_table(eps, root / "meta/episodes/chunk-000/file-000.parquet")
    reader = LeRobotDatasetReader(root)
    assert reader.meta.camera_keys == [FRONT] and reader.meta.image_keys == [FRONT]
    assert np.array_equal(reader.episode(1).frames[FRONT], truth[1][2][FRONT])  # PNG is lossless
    assert np.array_equal(
        ChunkDataset(reader)[6][FRONT], torch.from_numpy(truth[1][2][FRONT][1]).permute(2, 0, 1) / 255.0
    )


# ---------------------------------------------------------------------------------------------------------------
# Training samples


def test_chunk_dataset_samples_and_padding(dataset):
    root, truth = dataset
    reader = LeRobotDatasetReader(root)
    cmap = check_features(reader, state_dim=6, action_dim=6, camera_keys=["observation.images.top", WRIST],
                          camera_map={"observation.images.top": FRONT, WRIST: WRIST})  # fmt: skip
    ds = ChunkDataset(reader, chunk_size=15, camera_map=cmap)
    assert len(ds) == 41
    states, actions, frames, task = truth[0]  # episode 0 has 12 frames
    item = ds[4]
    assert item["observation.state"].dtype == torch.float32 and torch.equal(
        item["observation.state"], torch.from_numpy(states[4])
    )
    assert item["action"].shape == (15, 6)
    assert torch.equal(item["action"][:8], torch.from_numpy(actions[4:12]))
    assert torch.equal(item["action"][8:], torch.from_numpy(actions[11]).expand(7, 6))  # repeats the last action
    assert item["action_is_pad"].tolist() == [False] * 8 + [True] * 7
    assert item["task"] == task
    img = item["observation.images.top"]
    assert img.shape == (3, H, W) and img.dtype == torch.float32 and 0.0 <= img.min() and img.max() <= 1.0
    assert mae((img.permute(1, 2, 0).numpy() * 255).round(), frames[FRONT][4]) < 3.0
    assert FRONT not in item  # only the policy's names
    last = ds[11]
    assert last["action_is_pad"].tolist() == [False] + [True] * 14
    first_of_ep1 = ds[12]
    assert (
        first_of_ep1["episode_index"] == 1
        and first_of_ep1["frame_index"] == 0
        and not first_of_ep1["action_is_pad"].any()
    )
    ds.preload()  # 41 frames x 2 cameras fit the default cache: every later access is a memory read
    assert reader._frames.bytes == 41 * 2 * H * W * 3
    with pytest.warns(UserWarning, match="cache"):
        ChunkDataset(LeRobotDatasetReader(root, cache_mb=0)).preload()
    # Training asks for a cache big enough for every frame when the free RAM allows it.
    small = LeRobotDatasetReader(root, cache_mb=0)
    grown = ChunkDataset(small, grow_cache=True)
    assert small.cache_bytes == grown.frame_bytes
    grown.preload()
    assert small._frames.bytes == grown.frame_bytes
    assert not small.grow_frame_cache(10**15)  # a petabyte does not fit: the budget stays as it is
    assert small.cache_bytes == grown.frame_bytes
    small.clear_cache()  # train() hands the frames back when it returns
    assert small._frames.bytes == 0 and not small._frames.items and small.cache_bytes == grown.frame_bytes
    assert np.array_equal(grown[3][WRIST].numpy(), ds[3][WRIST].numpy())  # and decodes again on demand
    held_out = ChunkDataset(reader, chunk_size=15, episodes=[2])
    assert len(held_out) == 9 and held_out[0]["episode_index"] == 2
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch["action"].shape == (4, 15, 6) and batch[WRIST].shape == (4, 3, H, W) and len(batch["task"]) == 4


def test_camera_map_and_feature_checks(dataset):
    root, _ = dataset
    reader = LeRobotDatasetReader(root)
    with pytest.raises(DatasetError) as e:
        ChunkDataset(reader, camera_map={"observation.images.front": "observation.images.laptop"})
    assert "observation.images.laptop" in str(e.value) and FRONT in str(e.value) and WRIST in str(e.value)
    with pytest.raises(DatasetError, match="missing \\['observation.images.wrist'\\]"):
        check_features(reader, 6, 6, camera_keys=[FRONT, WRIST], camera_map={FRONT: FRONT})
    with pytest.raises(DatasetError, match="no camera \\['observation.images.top'\\]"):
        check_features(reader, 6, 6, camera_keys=["observation.images.top"])
    with pytest.raises(
        DatasetError, match=r"meta/info.json: feature 'observation.state' has shape \(6,\).*expects \(7,\)"
    ):
        check_features(reader, state_dim=7, action_dim=6)
    with pytest.raises(DatasetError, match=r"meta/info.json: feature 'action' has shape"):
        check_features(reader, state_dim=6, action_dim=14)
    assert check_features(reader, 6, 6) == {FRONT: FRONT, WRIST: WRIST}


# ---------------------------------------------------------------------------------------------------------------
# Damaged datasets: the error names the file


def test_corrupted_files_name_the_file(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, [(0, 8), (1, 8)])

    data = root / "data/chunk-000/file-001.parquet"
    data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])  # truncated
    reader = LeRobotDatasetReader(root)
    reader.episode(0)  # the other episode still reads
    with pytest.raises(DatasetError, match=r"data/chunk-000/file-001.parquet.*truncated or corrupted"):
        reader.episode(1)
    with pytest.raises(DatasetError, match=r"file-001.parquet"):
        ChunkDataset(reader)

    write_dataset(root2 := tmp_path / "ds2", [(0, 8), (1, 8)])
    video = root2 / f"videos/{WRIST}/chunk-000/file-000.mp4"
    video.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())  # garbage
    with pytest.raises(DatasetError, match=rf"videos/{WRIST}/chunk-000/file-000.mp4"):
        ChunkDataset(LeRobotDatasetReader(root2))
    with pytest.raises(DatasetError, match=r"file-000.mp4: cannot decode"):
        LeRobotDatasetReader(root2).episode(0)
    video = root2 / f"videos/{FRONT}/chunk-000/file-001.mp4"
    video.write_bytes(video.read_bytes()[:-400])  # cut short
    with pytest.raises(DatasetError, match=rf"videos/{FRONT}/chunk-000/file-001.mp4"):
        LeRobotDatasetReader(root2).episode_frames(1, FRONT)

    info = root2 / "meta/info.json"
    info.write_text(info.read_text()[:-20])
    with pytest.raises(DatasetError, match=r"meta/info.json: not valid JSON"):
        LeRobotDatasetReader(root2)
    info.write_text(json.dumps({"codebase_version": "v3.0", "fps": 30}))
    with pytest.raises(DatasetError, match=r"meta/info.json: required field 'features' is missing"):
        LeRobotDatasetReader(root2)
    with pytest.raises(DatasetError, match=r"meta/info.json: file not found"):
        LeRobotDatasetReader(tmp_path)


def test_missing_stats_error_and_recompute(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, [(0, 10), (1, 7)])
    original = json.loads((root / "meta/stats.json").read_text())
    (root / "meta/stats.json").unlink()
    with pytest.raises(DatasetError, match=r"meta/stats.json: file not found.*recompute-stats"):
        _ = LeRobotDatasetReader(root).meta.stats
    recompute_stats(root)  # from the per-episode stats in meta/episodes
    reader = LeRobotDatasetReader(root)
    for key in ("action", FRONT):
        np.testing.assert_allclose(reader.meta.stats[key]["mean"], np.asarray(original[key]["mean"]), rtol=1e-9)
    assert data_cli(["recompute-stats", str(root), "--from-data"]) == 0  # decodes the videos: close, not exact
    reader = LeRobotDatasetReader(root)
    np.testing.assert_allclose(reader.meta.stats["action"]["std"], np.asarray(original["action"]["std"]), rtol=1e-6)
    np.testing.assert_allclose(reader.meta.stats[FRONT]["mean"], np.asarray(original[FRONT]["mean"]), atol=0.01)
    (root / "meta/stats.json").write_text("{broken")
    with pytest.raises(DatasetError, match=r"meta/stats.json: not valid JSON"):
        _ = LeRobotDatasetReader(root).meta.stats
    assert data_cli(["check", str(root)]) == 1  # the CLI reports it and exits non-zero
    assert data_cli(["recompute-stats", str(root)]) == 0 and data_cli(["check", str(root), "--decode"]) == 0


def test_aggregate_matches_pooled_stats():
    rng = np.random.default_rng(0)
    parts = [rng.normal(loc=i, size=(n, 3)) for i, n in enumerate((5, 17, 40))]
    agg = aggregate_stats([{"x": vector_stats(p)} for p in parts])["x"]
    pooled = np.concatenate(parts)
    np.testing.assert_allclose(agg["mean"], pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(agg["std"], pooled.std(axis=0), rtol=1e-12)
    assert agg["count"].tolist() == [62]


def test_stale_info_is_reported_not_trusted(tmp_path):
    """A kill between the commit point and the info.json update: the reader believes meta/episodes."""
    root = tmp_path / "ds"
    write_dataset(root, [(0, 5), (1, 6)])
    info = json.loads((root / "meta/info.json").read_text())
    info["total_episodes"], info["total_frames"] = 1, 5
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="repair"):
        reader = LeRobotDatasetReader(root)
    assert reader.num_episodes == 2
    assert data_cli(["repair", str(root)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LeRobotDatasetReader(root).meta.info["total_episodes"] == 2


def test_reading_a_parquet_file_while_it_is_replaced_sees_one_version(tmp_path):
    import threading

    from smolvla_kit.data.layout import read_parquet, write_parquet_atomic

    path = tmp_path / "file.parquet"
    versions = [pa.table({"x": np.arange(n, dtype=np.int64), "y": np.random.default_rng(n).random(n)}) for n in (5, 4000)]
    write_parquet_atomic(path, versions[0])
    stop = threading.Event()

    def rewrite() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            write_parquet_atomic(path, versions[i % 2])

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        for _ in range(300):
            table = read_parquet(path)
            assert table.num_rows in (5, 4000) and table.column("x").to_pylist() == list(range(table.num_rows))
    finally:
        stop.set()
        writer.join()


@pytest.mark.parametrize(
    "key, template, message",
    [
        ("data_path", "/tmp/elsewhere/file-{file_index:03d}.parquet", "outside the dataset's folder"),
        ("data_path", "../other/data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "outside"),
        ("video_path", "videos/{video_key}/../../../x/file-{file_index:03d}.mp4", "outside"),
        ("data_path", "data/chunk-{chunk_index:03d}/file-{episode_index:03d}.parquet", "cannot be filled in"),
    ],
)
def test_paths_in_metadata_stay_inside_the_dataset(tmp_path, key, template, message):
    root = tmp_path / "ds"
    write_dataset(root, [(0, 8)])
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    info[key] = template
    info_path.write_text(json.dumps(info))
    before = _dataset_files(root)
    with pytest.raises(DatasetError, match=rf"meta/info.json: the '{key}' template .*{message}"):
        LeRobotDatasetReader(root)
    with pytest.raises(DatasetError, match=message):  # a writer reopening it refuses before touching a file
        LeRobotDatasetWriter.open(root)
    assert _dataset_files(root) == before


def _dataset_files(root) -> dict:
    """Every file of a dataset and its bytes, the writer's lock folder aside."""
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts}


def test_writer_appends_only_where_info_points(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, [(0, 8)])
    (root / "data/chunk-000").rename(root / "data/part-000")
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["data_path"] = "data/part-{chunk_index:03d}/file-{file_index:03d}.parquet"
    info_path.write_text(json.dumps(info))
    assert LeRobotDatasetReader(root).episode(0).actions.shape[0] == 8  # a reader follows the layout
    before = _dataset_files(root)
    with pytest.raises(DatasetError, match=r"meta/info.json: 'data_path' is .*appends only to datasets laid out"):
        LeRobotDatasetWriter.open(root)
    assert _dataset_files(root) == before


def test_reopening_deletes_only_files_the_writer_was_placing(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, [(0, 8)])
    stranger = root / "data/chunk-000/file-007.parquet"  # not the writer's: e.g. copied in by hand
    stranger.write_bytes(b"someone else's file")
    writer = LeRobotDatasetWriter.open(root)
    assert stranger.read_bytes() == b"someone else's file"  # left alone ...
    for _ in range(8):
        writer.add_frame({"observation.state": np.zeros(6, np.float32), "action": np.zeros(6, np.float32),
                          "task": "t", FRONT: np.zeros((H, W, 3), np.uint8), WRIST: np.zeros((H, W, 3), np.uint8)})
    writer.save_episode()
    writer.close()
    reader = LeRobotDatasetReader(root)
    assert reader.meta.episode_info(1).data_path.name == "file-008.parquet"  # ... and numbered after, not over
    assert stranger.read_bytes() == b"someone else's file" and reader.episode(1).actions.shape == (8, 6)
