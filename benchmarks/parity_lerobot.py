"""Parity with LeRobot's SmolVLA: same weights + same noise -> same actions (target max |diff| <= 1e-4).

Run it with the Python of an environment that has `lerobot[smolvla]` (kept *outside* this repo):

    python3.12 -m venv /tmp/lerobot-venv
    /tmp/lerobot-venv/bin/pip install torch==2.13.0 && /tmp/lerobot-venv/bin/pip install "lerobot[smolvla]==0.6.1"
    /tmp/lerobot-venv/bin/python benchmarks/parity_lerobot.py [--base] [--kit-python .venv/bin/python]

What it does, per case:
1. writes a tiny SmolVLM "model folder" locally (transformers config + a tokenizer made from the kit's
   nano tokenizer + a SmolVLM processor), so LeRobot builds its VLM from it without the Hub;
2. builds a random LeRobot `SmolVLAPolicy` from it, jitters every weight (so no norm weight is a plain 1),
   and saves it with `save_pretrained` plus LeRobot's pre/post-processor files (stats included);
3. runs LeRobot's pre-processor -> `predict_action_chunk(noise=...)` -> post-processor on a fixed observation;
4. in a subprocess with the kit's Python, loads the *saved folder* with `SmolVLAPolicy.from_pretrained`
   and runs `predict_chunk(observation, noise=...)` on the same raw observation and noise;
5. reports max |diff| of the un-normalised actions and both chunk latencies (same machine, same threads).

`--base` adds a case with the exact smolvla_base shape (450M parameters, random weights) for a
side-by-side latency at full size. Results go to benchmarks/results/parity_lerobot.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "parity_lerobot.json"
NANO_TOKENIZER = REPO / "smolvla_kit" / "policy" / "nano_tokenizer.json"

# Small SmolVLM for the parity cases: 64 px images in 8 px patches, pixel shuffle x4 -> 4 tokens/camera.
TINY_VLM = {
    "scale_factor": 4,
    "image_token_id": 3,
    "tie_word_embeddings": False,
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 64, "patch_size": 8},
    "text_config": {"model_type": "llama", "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 6,
                    "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 520,
                    "rms_norm_eps": 1e-5, "pad_token_id": 0, "tie_word_embeddings": False},
}
# SmolVLM2-500M-Video-Instruct's architecture (as in smolvla_kit/policy/config.py), random weights.
BASE_VLM = {
    "scale_factor": 4, "image_token_id": 49190, "tie_word_embeddings": False,
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                      "image_size": 512, "patch_size": 16},
    "text_config": {"model_type": "llama", "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                    "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64, "vocab_size": 49280,
                    "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192, "pad_token_id": 2,
                    "tie_word_embeddings": False},
}

# Each case: (name, VLM, LeRobot config overrides, cameras {key: (H, W)}, normalisation of ACTION)
CASES = [
    ("small-default", TINY_VLM,
     dict(num_vlm_layers=4, resize_imgs_with_padding=(64, 64), tokenizer_max_length=16, pad_language_to="max_length"),
     {"observation.images.front": (48, 64), "observation.images.wrist": (64, 64)}, "MEAN_STD"),
    ("small-variants", TINY_VLM,
     dict(num_vlm_layers=6, self_attn_every_n_layers=3, add_image_special_tokens=True, pad_language_to="longest",
          empty_cameras=1, chunk_size=20, n_action_steps=10, num_steps=5, tokenizer_max_length=12, prefix_length=40,
          resize_imgs_with_padding=(64, 64), max_state_dim=12, max_action_dim=10, min_period=1e-3, max_period=2.0,
          expert_width_multiplier=0.5),
     {"observation.images.top": (80, 60)}, "MIN_MAX"),
    ("small-self-attn", TINY_VLM,
     dict(num_vlm_layers=4, attention_mode="self_attn", resize_imgs_with_padding=(64, 64),
          tokenizer_max_length=16, pad_language_to="max_length"),
     {"observation.images.front": (64, 64)}, "MEAN_STD"),
    # Fewer expert layers than VLM layers: experts sit beside VLM layers 0 and 2; layers 1-3 cross-attend.
    ("small-half-expert", TINY_VLM,
     dict(num_vlm_layers=4, num_expert_layers=2, self_attn_every_n_layers=4, resize_imgs_with_padding=(64, 64),
          tokenizer_max_length=16, pad_language_to="max_length"),
     {"observation.images.front": (64, 64), "observation.images.side": (64, 64)}, "MEAN_STD"),
]
BASE_CASE = ("base-shape", BASE_VLM, dict(num_vlm_layers=16, pad_language_to="max_length"),
             {"observation.images.camera1": (256, 256), "observation.images.camera2": (256, 256),
              "observation.images.camera3": (256, 256)}, "MEAN_STD")

STATE_DIM, ACTION_DIM, BATCH = 6, 6, 2
TASKS = ["pick up the red cube and place it in the blue bin", "touch the green cube"]


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def timed(fn, repeats: int) -> float:
    """Median wall time of fn() in ms, after one warm-up call. (The 1-minute load average is logged with it.)"""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[len(times) // 2]


# ------------------------------------------------------------------------------------------------
# LeRobot side (runs in the lerobot environment)
# ------------------------------------------------------------------------------------------------


def write_vlm_folder(folder: Path, vlm: dict) -> None:
    """A local SmolVLM folder LeRobot can build from: config.json, tokenizer, image processor."""
    from transformers import (PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor,
                              SmolVLMVideoProcessor)

    SmolVLMConfig(**json.loads(json.dumps(vlm))).save_pretrained(folder)
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(NANO_TOKENIZER), pad_token="<pad>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
                              "image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>"},
    )
    image_size = vlm["vision_config"]["image_size"]
    image_processor = SmolVLMImageProcessor(size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size})
    video_processor = SmolVLMVideoProcessor(size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size})
    SmolVLMProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                     image_seq_len=4).save_pretrained(folder)


def make_stats(mode: str, gen):
    import torch

    def vec(scale, offset=0.0):
        return torch.rand(STATE_DIM, generator=gen) * scale + offset

    stats = {"observation.state": {"mean": vec(10, -5), "std": vec(2, 0.5)},
             "action": {"mean": vec(10, -5), "std": vec(2, 0.5)}}
    if mode == "MIN_MAX":
        stats["action"] = {"min": vec(5, -30), "max": vec(5, 30)}
    return stats


def lerobot_case(name, vlm, overrides, cameras, action_mode, workdir: Path, repeats: int) -> dict:
    import torch
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
    from safetensors.torch import save_file

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    vlm_dir, ckpt_dir = workdir / f"{name}-vlm", workdir / f"{name}-policy"
    write_vlm_folder(vlm_dir, vlm)

    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,))}
    for key, (h, w) in cameras.items():
        inputs[key] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, h, w))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}
    norm = {"VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode[action_mode]}
    cfg = SmolVLAConfig(vlm_model_name=str(vlm_dir), input_features=inputs, output_features=outputs, device="cpu",
                        normalization_mapping=norm, **overrides)
    t0 = time.perf_counter()
    policy = SmolVLAPolicy(cfg)
    with torch.no_grad():  # jitter every weight so norms are not exactly 1 and biases not 0
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    policy.eval()
    build_s = time.perf_counter() - t0
    stats = make_stats(action_mode, gen)
    pre, post = make_smolvla_pre_post_processors(cfg, dataset_stats=stats)
    policy.save_pretrained(ckpt_dir)
    pre.save_pretrained(ckpt_dir)
    post.save_pretrained(ckpt_dir)

    # The observation: float images in [0, 1] at their native sizes (resized by each side), a state, tasks.
    obs = {"observation.state": torch.randn(BATCH, STATE_DIM, generator=gen) * 3}
    for key, (h, w) in cameras.items():
        obs[key] = torch.rand(BATCH, 3, h, w, generator=gen)
    noise = torch.randn(BATCH, cfg.chunk_size, cfg.max_action_dim, generator=gen)

    def reference():
        batch = pre({**{k: v.clone() for k, v in obs.items()}, "task": list(TASKS)})
        policy.reset()
        chunk = policy.predict_action_chunk(batch, noise=noise.clone())
        return post(chunk)

    ref = reference()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    ms_1 = timed(reference, repeats)
    load_after = os.getloadavg()[0]
    # Fair latency: the kit imported into this same process (same torch, same transformers), timed
    # alternately with the reference so that both see the same machine load.
    sys.path.insert(0, str(REPO))
    from smolvla_kit.policy import SmolVLAPolicy as KitPolicy

    kit = KitPolicy.from_pretrained(ckpt_dir)
    kit_bf16 = KitPolicy.from_pretrained(ckpt_dir).set_dtype(torch.bfloat16)  # the kit's inference option
    raw = {**obs, "task": list(TASKS)}

    def kit_chunk():
        return kit.predict_chunk(raw, noise=noise)

    def kit_bf16_chunk():
        return kit_bf16.predict_chunk(raw, noise=noise)

    # Time spent in the Euler steps alone (the expert against the cached prefix), measured by wrapping the
    # functions each side calls once per step; the rest of the chunk is pre-processing + vision + VLM prefix.
    step_time = {"lerobot": 0.0, "kit": 0.0}

    def timing(side, fn, only=None):
        def wrapper(*args, **kwargs):
            if only is not None and not only(*args, **kwargs):
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            step_time[side] += time.perf_counter() - t0
            return out

        return wrapper

    policy.model.denoise_step = timing("lerobot", policy.model.denoise_step)  # one call per Euler step
    km = kit.model
    km.embed_suffix = timing("kit", km.embed_suffix)
    km._velocity = timing("kit", km._velocity)
    km.vlm_with_expert.forward = timing("kit", km.vlm_with_expert.forward, only=lambda prefix, *a, **k: prefix is None)

    same_process_diff = (kit_chunk() - ref).abs().max().item()
    bf16_diff = (kit_bf16_chunk() - ref).abs().max().item()
    alt_ref, alt_kit, alt_bf16, step_ref, step_kit = [], [], [], [], []
    for _ in range(repeats):
        step_time.update(lerobot=0.0, kit=0.0)
        alt_ref.append(_once(reference))
        alt_kit.append(_once(kit_chunk))
        step_ref.append(1000 * step_time["lerobot"] / cfg.num_steps)
        step_kit.append(1000 * step_time["kit"] / cfg.num_steps)
        alt_bf16.append(_once(kit_bf16_chunk))
    kit = kit_bf16 = None  # free their memory before the kit subprocess loads its own copy
    tensors = {**{k: v.contiguous() for k, v in obs.items()}, "noise": noise, "reference_actions": ref.contiguous()}
    save_file(tensors, str(workdir / f"{name}-io.safetensors"))
    return {"checkpoint": str(ckpt_dir), "io": str(workdir / f"{name}-io.safetensors"),
            "reference_ms_1thread": ms_1, "reference_build_s": build_s,
            "reference_load_avg_before_after": [load_before, load_after],
            "alternating_same_process_ms_1thread": {
                "lerobot": _median(alt_ref), "kit": _median(alt_kit), "kit_max_abs_diff": same_process_diff,
                # One Euler step (expert against the cached prefix); chunk - num_steps x this = vision + prefix.
                "lerobot_per_denoise_step": _median(step_ref), "kit_per_denoise_step": _median(step_kit),
                # The kit with `set_dtype(torch.bfloat16)`: a speed option, not a parity claim.
                "kit_bfloat16": _median(alt_bf16), "kit_bfloat16_max_abs_diff": bf16_diff,
            },
            "n_params": sum(p.numel() for p in policy.parameters()), "chunk_shape": list(ref.shape),
            "lerobot_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
            "cameras": {k: list(v) for k, v in cameras.items()}, "action_normalization": action_mode}


# ------------------------------------------------------------------------------------------------
# Kit side (runs in the kit's environment, in a subprocess)
# ------------------------------------------------------------------------------------------------


def kit_case(checkpoint: str, io_file: str, repeats: int) -> dict:
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(REPO))
    from smolvla_kit.policy import SmolVLAPolicy

    t0 = time.perf_counter()
    policy = SmolVLAPolicy.from_pretrained(checkpoint)
    load_s = time.perf_counter() - t0
    io = load_file(io_file)
    ref = io.pop("reference_actions")
    noise = io.pop("noise")
    obs = {**io, "task": list(TASKS)}
    actions = policy.predict_chunk(obs, noise=noise)
    uncached = policy.predict_chunk(obs, noise=noise, use_cache=False)
    out = {
        "max_abs_diff": (actions - ref).abs().max().item(),
        "max_abs_diff_uncached": (uncached - ref).abs().max().item(),
        "max_abs_reference": ref.abs().max().item(),
        "kit_load_s": load_s,
    }
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    out["kit_ms_1thread"] = timed(lambda: policy.predict_chunk(obs, noise=noise), repeats)
    out["kit_load_avg_before_after"] = [load_before, os.getloadavg()[0]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kit-python", default=str(REPO / ".venv" / "bin" / "python"),
                    help="Python of the environment with smolvla_kit's dependencies")
    ap.add_argument("--base", action="store_true", help="also run the full smolvla_base shape (slow: ~2 GB, minutes)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kit-side", nargs=2, metavar=("CHECKPOINT", "IO"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.kit_side:  # subprocess mode
        print(json.dumps(kit_case(*args.kit_side, repeats=args.repeats)))
        return

    import lerobot
    import transformers

    cases = CASES + ([BASE_CASE] if args.base else [])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, vlm, overrides, cameras, mode in cases:
            repeats = 2 if name.startswith("base") else args.repeats
            ref = lerobot_case(name, vlm, overrides, cameras, mode, Path(tmp), repeats)
            proc = subprocess.run(
                [args.kit_python, __file__, "--kit-side", ref["checkpoint"], ref["io"], "--repeats", str(repeats)],
                capture_output=True, text=True, cwd=REPO,
            )
            if proc.returncode != 0:
                raise SystemExit(f"kit side failed for {name}:\n{proc.stderr[-4000:]}")
            kit = json.loads(proc.stdout.strip().splitlines()[-1])
            row = {"case": name, **{k: v for k, v in ref.items() if k not in ("checkpoint", "io")}, **kit,
                   "pass": kit["max_abs_diff"] <= 1e-4}
            results.append(row)
            alt = ref["alternating_same_process_ms_1thread"]
            print(f"{name:17s} max|diff| {kit['max_abs_diff']:.2e} (uncached {kit['max_abs_diff_uncached']:.2e}, "
                  f"|ref| max {kit['max_abs_reference']:.1f})  chunk, 1 thread, alternating in one process: "
                  f"LeRobot {alt['lerobot']:9.1f} ms  kit {alt['kit']:9.1f} ms (per Euler step: LeRobot "
                  f"{alt['lerobot_per_denoise_step']:7.1f} ms, kit {alt['kit_per_denoise_step']:7.1f} ms)  "
                  f"kit bfloat16 {alt['kit_bfloat16']:9.1f} ms (max|diff| {alt['kit_bfloat16_max_abs_diff']:.2e})  "
                  f"{'PASS' if row['pass'] else 'FAIL'}")

    report = {
        "benchmark": "parity_lerobot",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/parity_lerobot.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "reference": {"lerobot": lerobot.__version__ if hasattr(lerobot, "__version__") else "?",
                      "transformers": transformers.__version__},
        "target_max_abs_diff": 1e-4,
        "note": "latency = raw observation -> un-normalised chunk (pre-processing + sampling + post-processing), batch 2, "
                "one thread, median of repeats. 'alternating_same_process_ms_1thread' is the fair comparison: the kit is "
                "imported into the LeRobot process (same torch/transformers) and the two are timed turn by turn, so both "
                "see the same load on this shared machine. reference_ms_1thread / kit_ms_1thread were taken one after "
                "the other in the two environments (kit: its own venv) and are more exposed to load changes.",
        "cases": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # Keep the base-shape row from an earlier --base run when this run skipped it.
    if not args.base and RESULTS.is_file():
        old = json.loads(RESULTS.read_text())
        report["cases"] += [c for c in old.get("cases", []) if c["case"].startswith("base")]
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")
    if not all(r["pass"] for r in results):
        raise SystemExit("parity FAILED")


if __name__ == "__main__":
    main()
