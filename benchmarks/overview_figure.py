"""The README's picture: the simulated SO-101 through the policy's two cameras, one action chunk denoised from
noise into a motion, and the same scene told each colour. Drawn from the policy the kit ships.

    python benchmarks/overview_figure.py          # writes benchmarks/results/overview.png
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import RESULTS_DIR  # noqa: E402

SEED = 50_000_007  # a scene from the probe's range: nothing was chosen on it
SIZE = 256


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from smolvla_kit.policy import SmolVLAPolicy
    from smolvla_kit.sim import SO101Env
    from smolvla_kit.trained import NANO_PICK_PLACE
    from smolvla_kit.viz import draw_denoising_paths, overlay_paths, project_chunk

    torch.set_num_threads(1)
    policy = SmolVLAPolicy.from_pretrained(NANO_PICK_PLACE)
    env = SO101Env(task="pick_place", image_size=policy.config.image_size)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.3), gridspec_kw={"width_ratios": [1, 1, 1.25, 1.25]})

    obs, _ = env.reset(seed=SEED, options={"target_color": env.colors[0]})
    for ax, camera in zip(axes[:2], ("front", "wrist")):
        ax.imshow(env.render_camera(camera, SIZE))
        ax.set_title(f"{camera} camera (the policy sees {policy.config.image_size} px)", fontsize=10)
        ax.axis("off")

    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim,
                        generator=torch.Generator().manual_seed(0))
    _, trajectory = policy.predict_chunk(obs, noise=noise, return_trajectory=True)  # one draw, every Euler step
    paths = project_chunk(env.model, env.data, trajectory[:, 0].numpy(), "front", SIZE)
    draw_denoising_paths(env.render_camera("front", SIZE), paths, ax=axes[2],
                         title=f"{obs['task']}: noise (light) -> chunk (dark)")

    told = []
    for color in env.colors:  # the same scene and noise; only the words differ
        obs, _ = env.reset(seed=SEED, options={"target_color": color})
        chunk = policy.predict_chunk(obs)[0].numpy()  # the mean of the policy's default number of draws
        told.append(project_chunk(env.model, env.data, chunk, "front", SIZE))
    axes[3].imshow(overlay_paths(env.render_camera("front", SIZE), np.stack(told), colors=list(env.colors), width=3))
    axes[3].set_title("the first chunk, told each colour", fontsize=10)
    axes[3].axis("off")
    env.close()
    fig.tight_layout()
    path = RESULTS_DIR / "overview.png"
    fig.savefig(path, dpi=60)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
