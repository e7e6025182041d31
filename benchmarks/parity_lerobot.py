"""Parity with LeRobot's SmolVLA: same weights + same noise -> same actions (target max |diff| <= 1e-4).

Two references, each run with the Python of its own environment (kept *outside* this repo):

* **LeRobot 0.4.4 + transformers 4.57.6**, the versions whose SmolVLM vision code behaves as SmolVLM2 and
  smolvla_base were trained (build it as ../shared/reference/lerobot044/README.md says):

      REF/bin/python benchmarks/parity_lerobot.py [--base] [--threads 2]

* **LeRobot 0.6.1 + transformers 5.x**, which gives the image patches other position ids (transformers issue
  41190; `patch_position_ids` in smolvla_kit/policy/smolvla.py). The kit, faithful to the released weights,
  differs from it by that much; loaded with `vision_position_ids="per-patch"` it matches it as well:

      python3.12 -m venv REF061 && REF061/bin/pip install torch==2.13.0
      REF061/bin/pip install "lerobot[smolvla]==0.6.1" -c <(echo torch==2.13.0)
      REF061/bin/python benchmarks/parity_lerobot.py

* `--fixture`: no LeRobot needed; compares the kit, on the transformers of the Python that runs it, with the
  LeRobot 0.4.4 case committed in tests/fixtures/lerobot044 (what CI checks) and records the figures per
  transformers version. Run it with the kit's Python and with REF's (the kit imports there too).

Per case: write a tiny SmolVLM "model folder" locally (transformers config + a tokenizer made from the kit's nano
tokenizer), build a random LeRobot `SmolVLAPolicy` from it, jitter every weight (so no norm weight is a plain 1),
save it with `save_pretrained` plus LeRobot's pre/post-processor files (stats included), and run LeRobot's
pre-processor -> `predict_action_chunk(noise=...)` -> post-processor on a fixed observation. In a subprocess with
the kit's Python, load the *saved folder* with `SmolVLAPolicy.from_pretrained` and run `predict_chunk` on the same
raw observation and noise; report max |diff| of the un-normalised actions. Latency is measured in the reference's
process, the kit imported there and the two timed turn by turn.

`--base` adds a case with the exact smolvla_base shape (450M parameters, random weights, three 512 px cameras,
batch 1) for the side-by-side latency at full size, the kit in float32 and in bfloat16 (its largest action change
recorded). Results go to benchmarks/results/parity_lerobot.json, one entry per reference.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
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
FIXTURE = REPO / "tests" / "fixtures" / "lerobot044"
TARGET = 1e-4  # max |diff| of un-normalised actions

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
             {"observation.images.camera1": (512, 512), "observation.images.camera2": (512, 512),
              "observation.images.camera3": (512, 512)}, "MEAN_STD")

STATE_DIM, ACTION_DIM = 6, 6
TASKS = ["pick up the red cube and place it in the blue bin", "touch the green cube"]
# Which reference computes SmolVLM's vision patch positions as the released weights were trained.
TRAINED_LIKE_RELEASED_WEIGHTS = {"0.4": True, "0.6": False}
TOKENIZER_ONLY = False  # set when LeRobot runs on the torchvision stand-in (see main)


def batch_size(name: str) -> int:
    return 1 if name.startswith("base") else 2


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def timed(fn, repeats: int) -> float:
    """Median wall time of fn() in ms, after one warm-up call."""
    fn()
    return _median([_once(fn) for _ in range(repeats)])


# ------------------------------------------------------------------------------------------------
# LeRobot side (runs in the lerobot environment)
# ------------------------------------------------------------------------------------------------


def lerobot_version() -> str:
    return importlib.metadata.version("lerobot")


def shims_044():
    """The LeRobot 0.4.4 environment's shims (a torchvision stand-in, a tokenizer-only AutoProcessor), shared with
    the script that makes the committed fixture."""
    spec = importlib.util.spec_from_file_location("make_reference_044", FIXTURE / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_vlm_folder(folder: Path, vlm: dict) -> None:
    """A local SmolVLM folder LeRobot can build from: config.json and a tokenizer (+ image processor on 0.6)."""
    from transformers import PreTrainedTokenizerFast, SmolVLMConfig

    SmolVLMConfig(**json.loads(json.dumps(vlm))).save_pretrained(folder)
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(NANO_TOKENIZER), pad_token="<pad>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
                              "image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>"},
    )
    if TOKENIZER_ONLY:  # AutoProcessor is patched to load the tokenizer alone
        tok.save_pretrained(folder)
        return
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

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
    B = batch_size(name)
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
    policy = SmolVLAPolicy(cfg)
    with torch.no_grad():  # jitter every weight so norms are not exactly 1 and biases not 0
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    policy.eval()
    stats = make_stats(action_mode, gen)
    pre, post = make_smolvla_pre_post_processors(cfg, dataset_stats=stats)
    policy.save_pretrained(ckpt_dir)
    pre.save_pretrained(ckpt_dir)
    post.save_pretrained(ckpt_dir)

    # The observation: float images in [0, 1] at their native sizes (resized by each side), a state, tasks.
    obs = {"observation.state": torch.randn(B, STATE_DIM, generator=gen) * 3}
    for key, (h, w) in cameras.items():
        obs[key] = torch.rand(B, 3, h, w, generator=gen)
    noise = torch.randn(B, cfg.chunk_size, cfg.max_action_dim, generator=gen)
    tasks = TASKS[:B]

    def reference():
        batch = pre({**{k: v.clone() for k, v in obs.items()}, "task": list(tasks)})
        policy.reset()
        chunk = policy.predict_action_chunk(batch, noise=noise.clone())
        return post(chunk)

    ref = reference()
    # Latency: the kit imported into this same process (same torch), timed turn by turn with the reference so
    # that both see the same machine load.
    sys.path.insert(0, str(REPO))
    from smolvla_kit.policy import SmolVLAPolicy as KitPolicy

    kit = KitPolicy.from_pretrained(ckpt_dir)
    kit_bf16 = KitPolicy.from_pretrained(ckpt_dir).set_dtype(torch.bfloat16)  # the kit's inference option
    raw = {**obs, "task": list(tasks)}

    def kit_chunk():
        return kit.predict_chunk(raw, noise=noise)

    def kit_bf16_chunk():
        return kit_bf16.predict_chunk(raw, noise=noise)

    same_process_diff = (kit_chunk() - ref).abs().max().item()
    bf16_diff = (kit_bf16_chunk() - ref).abs().max().item()
    alt_ref, alt_kit, alt_bf16 = [], [], []
    for _ in [None] + list(range(repeats)):  # the first round warms up
        alt_ref.append(_once(reference))
        alt_kit.append(_once(kit_chunk))
        alt_bf16.append(_once(kit_bf16_chunk))
    kit = kit_bf16 = None  # free their memory before the kit subprocess loads its own copy
    tensors = {**{k: v.contiguous() for k, v in obs.items()}, "noise": noise, "reference_actions": ref.contiguous()}
    save_file(tensors, str(workdir / f"{name}-io.safetensors"))
    return {"checkpoint": str(ckpt_dir), "io": str(workdir / f"{name}-io.safetensors"),
            "alternating_same_process_ms": {
                "lerobot": _median(alt_ref[1:]), "kit": _median(alt_kit[1:]), "kit_max_abs_diff": same_process_diff,
                # The kit with `set_dtype(torch.bfloat16)`: a speed option, not a parity claim.
                "kit_bfloat16": _median(alt_bf16[1:]), "kit_bfloat16_max_abs_diff": bf16_diff,
            },
            "n_params": sum(p.numel() for p in policy.parameters()), "chunk_shape": list(ref.shape),
            "max_abs_reference": ref.abs().max().item(),
            "lerobot_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
            "cameras": {k: list(v) for k, v in cameras.items()}, "action_normalization": action_mode}


# ------------------------------------------------------------------------------------------------
# Kit side (runs in the kit's environment, in a subprocess)
# ------------------------------------------------------------------------------------------------


def kit_case(checkpoint: str, io_file: str) -> dict:
    """max |diff| against the reference's actions: as the kit loads the checkpoint, without the prefix cache, and
    with transformers 5.x's vision patch positions (what LeRobot 0.6 computes)."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(REPO))
    from smolvla_kit.policy import SmolVLAPolicy

    io = load_file(io_file)
    ref = io.pop("reference_actions")
    noise = io.pop("noise")
    obs = {**io, "task": TASKS[: ref.shape[0]]}
    policy = SmolVLAPolicy.from_pretrained(checkpoint)
    out = {"max_abs_diff": (policy.predict_chunk(obs, noise=noise) - ref).abs().max().item(),
           "max_abs_diff_uncached": (policy.predict_chunk(obs, noise=noise, use_cache=False) - ref).abs().max().item()}
    policy = SmolVLAPolicy.from_pretrained(checkpoint, vision_position_ids="per-patch")
    out["max_abs_diff_per_patch_positions"] = (policy.predict_chunk(obs, noise=noise) - ref).abs().max().item()
    return out


def fixture_check() -> dict:
    """The kit against the committed LeRobot 0.4.4 case, step by step, on this Python's transformers."""
    import torch
    import transformers
    from safetensors.torch import load_file

    sys.path.insert(0, str(REPO))
    from smolvla_kit.policy import SmolVLAPolicy

    ref = load_file(str(FIXTURE / "reference.safetensors"))
    tasks = json.loads((FIXTURE / "reference.json").read_text())["tasks"]
    obs = {k: ref[k] for k in ("observation.state", "observation.images.front", "observation.images.wrist")}
    obs["task"] = tasks
    policy = SmolVLAPolicy.from_pretrained(FIXTURE / "policy")
    inputs = policy.processor.preprocess(obs)
    model = policy.model

    def diff(a, b) -> float:
        return (a.float() - b.float()).abs().max().item()

    with torch.no_grad():
        prefix = model.embed_prefix(**inputs)
        normalised = model.sample(**inputs, noise=ref["noise"])[..., :6]
        targets, _ = policy.processor.prepare_actions({"action": ref["loss.action"]}, "cpu")
        losses = model.loss(**inputs, actions=targets, noise=ref["loss.noise"], time=ref["loss.time"])
        images = [model.vlm_with_expert.embed_images(img) for img in inputs["images"]]
    return {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "max_abs_diff": {
            "image_embeddings": max(diff(images[0], ref["image_embeddings.front"]),
                                    diff(images[1], ref["image_embeddings.wrist"])),
            "prefix": diff(prefix[0], ref["prefix_embs"]),
            "first_velocity": diff(model.velocity_uncached(prefix, ref["noise"], torch.ones(2)), ref["first_velocity"]),
            "actions_normalised": diff(normalised, ref["actions_normalized"]),
            "actions_real_units": diff(policy.predict_chunk(obs, noise=ref["noise"]), ref["actions"]),
            "loss_elements": diff(losses, ref["loss.elements"]),
        },
        "tokens_equal": bool(torch.equal(inputs["lang_tokens"], ref["lang_tokens"])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kit-python", default=str(REPO / ".venv" / "bin" / "python"),
                    help="Python of the environment with smolvla_kit's dependencies")
    ap.add_argument("--base", action="store_true", help="also run the full smolvla_base shape (slow: ~6 GB, minutes)")
    ap.add_argument("--fixture", action="store_true", help="only compare with the committed LeRobot 0.4.4 case")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the latency")
    ap.add_argument("--kit-side", nargs=2, metavar=("CHECKPOINT", "IO"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.kit_side:  # subprocess mode
        print(json.dumps(kit_case(*args.kit_side)))
        return
    report = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    report.update(benchmark="parity_lerobot", target_max_abs_diff=TARGET)
    command = " ".join(["python", "benchmarks/parity_lerobot.py", *sys.argv[1:]])
    if args.fixture:
        row = fixture_check()
        row.update(date=datetime.datetime.now().isoformat(timespec="seconds"), command=command, machine=machine_info())
        print(json.dumps(row, indent=1))
        report.setdefault("fixture_lerobot044", {})[f"transformers {row['transformers']}"] = row
        RESULTS.write_text(json.dumps(report, indent=2))
        return

    version = lerobot_version()
    # LeRobot imports torchvision, which SmolVLA never calls; where none loads (0.4.4 here, or a CPU environment
    # without it) an inert stand-in takes its place and SmolVLM's processor is reduced to its tokenizer.
    if version.startswith("0.4.") or importlib.util.find_spec("torchvision") is None:
        shims = shims_044()
        shims.install_torchvision_stand_in()
        shims.patch_auto_processor()
        global TOKENIZER_ONLY
        TOKENIZER_ONLY = True
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    cases = CASES + ([BASE_CASE] if args.base else [])
    results = []
    as_released = TRAINED_LIKE_RELEASED_WEIGHTS.get(version.rsplit(".", 1)[0], False)
    with tempfile.TemporaryDirectory() as tmp:
        for name, vlm, overrides, cameras, mode in cases:
            repeats = 2 if name.startswith("base") else args.repeats
            ref = lerobot_case(name, vlm, overrides, cameras, mode, Path(tmp), repeats)
            proc = subprocess.run([args.kit_python, __file__, "--kit-side", ref["checkpoint"], ref["io"]],
                                  capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                raise SystemExit(f"kit side failed for {name}:\n{proc.stderr[-4000:]}")
            kit = json.loads(proc.stdout.strip().splitlines()[-1])
            # Against a reference that computes the vision positions as the released weights were trained, the kit
            # must match as it loads; against LeRobot 0.6 it must match once given 0.6's positions.
            compared = kit["max_abs_diff"] if as_released else kit["max_abs_diff_per_patch_positions"]
            row = {"case": name, **{k: v for k, v in ref.items() if k not in ("checkpoint", "io")}, **kit,
                   "pass": compared <= TARGET}
            results.append(row)
            alt = ref["alternating_same_process_ms"]
            print(f"{name:17s} max|diff| {kit['max_abs_diff']:.2e} (uncached {kit['max_abs_diff_uncached']:.2e}; "
                  f"with 5.x (per-patch) positions {kit['max_abs_diff_per_patch_positions']:.2e}; |ref| max "
                  f"{ref['max_abs_reference']:.1f})  chunk, {args.threads} threads, turn by turn: LeRobot "
                  f"{alt['lerobot']:9.1f} ms  kit {alt['kit']:9.1f} ms  kit bfloat16 {alt['kit_bfloat16']:9.1f} ms "
                  f"(max|diff| {alt['kit_bfloat16_max_abs_diff']:.2e})  {'PASS' if row['pass'] else 'FAIL'}")
    entry = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": command, "machine": machine_info(),
        "lerobot": version, "transformers": transformers.__version__, "threads": args.threads,
        "vision_positions_as_released_weights_were_trained": as_released,
        "pass_means": "max_abs_diff <= target" if as_released else
                      "max_abs_diff_per_patch_positions <= target (the kit loads with SmolVLM's original positions)",
        "cases": results,
    }
    key = f"lerobot-{version}"
    old = report.get("references", {}).get(key, {})
    if not args.base:  # keep the base-shape row of an earlier --base run
        entry["cases"] += [c for c in old.get("cases", []) if c["case"].startswith("base")]
    report.setdefault("references", {})[key] = entry
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")
    if not all(r["pass"] for r in results):
        raise SystemExit("parity FAILED")


if __name__ == "__main__":
    main()
