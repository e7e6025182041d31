"""Plots and widgets shared by the notebooks, `smolvla-kit eval` and the demo report.

* `plots`: action chunks (denoising, chunks over an episode), loss curves, attention masks, layer interleave;
* `flow`: 2-D flow-matching pictures (vector fields, particle paths, point clouds);
* `projection`: action chunks as fingertip paths in the camera images (forward kinematics + pinhole projection),
  drawn statically or with a slider over the denoising step;
* `video`: mp4 files or frames as embedded HTML5 videos.

Every plotting function returns a matplotlib Figure; matplotlib, MuJoCo and ipywidgets are imported on first use,
so importing this package is cheap (the training loop imports it).
"""

from __future__ import annotations

from .flow import grid_points, plot_particle_paths, plot_point_clouds, plot_vector_field
from .plots import (
    plot_action_queue,
    plot_attention_mask,
    plot_chunks_over_time,
    plot_denoising,
    plot_layer_interleave,
    plot_loss_curve,
    save_figure,
)
from .projection import (
    TIP_SITE,
    CameraView,
    DenoisingPathsExplorer,
    camera_view,
    data_at_state,
    draw_denoising_paths,
    end_effector_positions,
    overlay_paths,
    project_chunk,
    project_points,
)
from .video import frames_to_mp4, show_video

__all__ = [
    "TIP_SITE",
    "CameraView",
    "DenoisingPathsExplorer",
    "camera_view",
    "data_at_state",
    "draw_denoising_paths",
    "end_effector_positions",
    "frames_to_mp4",
    "grid_points",
    "overlay_paths",
    "plot_action_queue",
    "plot_attention_mask",
    "plot_chunks_over_time",
    "plot_denoising",
    "plot_layer_interleave",
    "plot_loss_curve",
    "plot_particle_paths",
    "plot_point_clouds",
    "plot_vector_field",
    "project_chunk",
    "project_points",
    "show_video",
    "save_figure",
]
