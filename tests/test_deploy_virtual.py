"""`smolvla-kit deploy` end to end: a nano policy drives the virtual SO-101 (MuJoCo backend) through the real
Feetech driver and its safety rules; Ctrl-C turns torque off. (A dying policy server: test_async_loopback.py.)"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from smolvla_kit.deploy.client import ClientConfig, RobotClient
from smolvla_kit.deploy.robots import virtual_follower
from smolvla_kit.deploy.run import main

CAMERAS = ["observation.images.front", "observation.images.wrist"]


@pytest.fixture(scope="module")
def nano_checkpoint(tmp_path_factory):
    """An untrained nano SmolVLA with plausible statistics: real code path, meaningless actions."""
    import torch

    from smolvla_kit.policy import SmolVLAConfig, SmolVLAPolicy

    torch.manual_seed(0)
    stats = {
        "observation.state": {"mean": np.zeros(6), "std": np.full(6, 30.0)},
        "action": {"mean": np.array([0.0, -30.0, 30.0, 75.0, 0.0, 10.0]), "std": np.full(6, 2.0)},
    }
    path = tmp_path_factory.mktemp("nano") / "ckpt"
    SmolVLAPolicy(SmolVLAConfig.preset("nano"), stats=stats).save_pretrained(path)
    return path


def test_deploy_runs_a_policy_episode_on_the_virtual_arm(nano_checkpoint, capsys):
    rc = main(["--port", "virtual", "--checkpoint", str(nano_checkpoint), "--episodes", "1", "--episode-time-s",
               "1.5", "--sim-task", "reach", "--image-size", "64", "--max-relative-target", "5",
               "--samples-per-chunk", "4", "--log-level", "WARNING"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "episodes succeeded" in out  # untrained: success is not expected, the plumbing is
    assert "episode 1/1: 'touch the" in err and "clamped/capped by the safety rules" in err


def test_served_policy_can_average_several_chunks(nano_checkpoint):
    from smolvla_kit.deploy.service import PolicyService, load_policy_for_serving

    from smolvla_kit.policy import SmolVLAConfig

    # Without a flag the server plays what the checkpoint's config carries (nano's default); a flag overrides it.
    own = PolicyService(load_policy_for_serving(str(nano_checkpoint)))
    averaged = PolicyService(load_policy_for_serving(str(nano_checkpoint), samples_per_chunk=4))
    assert own.policy_info()["samples_per_chunk"] == SmolVLAConfig.preset("nano").samples_per_chunk > 1
    assert averaged.policy_info()["samples_per_chunk"] == 4


def test_deploy_refuses_bad_arguments_clearly(nano_checkpoint, tmp_path, capsys):
    assert main(["--port", "/dev/ttyACM0", "--checkpoint", str(nano_checkpoint)]) == 2
    assert "--task is required on a real arm" in capsys.readouterr().err
    assert main(["--port", "virtual", "--checkpoint", str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    rc = main(["--port", "/dev/does-not-exist", "--checkpoint", str(nano_checkpoint), "--task", "touch the red cube",
               "--log-level", "ERROR"])
    assert rc == 2
    assert "/dev/does-not-exist" in capsys.readouterr().err
    for flags, message in ((["--server", "localhost"], "is not HOST:PORT"),
                           (["--max-relative-target", "abc"], "give degrees"),
                           (["--episodes", "0"], "--episodes must be >= 1")):
        assert main(["--port", "virtual", "--checkpoint", str(nano_checkpoint), *flags]) == 2
        assert message in capsys.readouterr().err  # refused before an arm or a policy is started


def test_ctrl_c_during_an_episode_turns_torque_off(nano_checkpoint):
    """Ctrl-C (SIGINT) while the in-process (sync) policy drives the arm: torque off at once, KeyboardInterrupt."""
    import os
    import signal

    from smolvla_kit.deploy.client import LocalPolicy
    from smolvla_kit.deploy.service import PolicyService, load_policy_for_serving

    rig = virtual_follower(CAMERAS, image_size=64, sim_task="reach", seed=4, handle_sigint=True)
    link = LocalPolicy(PolicyService(load_policy_for_serving(str(nano_checkpoint))))
    ctrl_c = threading.Timer(0.8, os.kill, (os.getpid(), signal.SIGINT))
    try:
        with pytest.raises(KeyboardInterrupt):
            with rig.robot as robot:
                client = RobotClient(robot, link, ClientConfig(mode="sync", fps=30))
                client.connect()
                ctrl_c.start()
                client.run_episode(rig.arm.reset_scene(seed=4), max_seconds=20)
        assert not any(rig.arm.torque_enabled().values())
        assert signal.getsignal(signal.SIGINT) is not robot._on_sigint  # the driver's handler was removed
    finally:
        ctrl_c.cancel()  # never let a late SIGINT reach pytest itself
        link.close()
        rig.close()
