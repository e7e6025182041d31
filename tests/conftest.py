"""Shared test set-up."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    # Started in the background of a non-interactive shell (`nohup ... &`), a process inherits SIGINT ignored,
    # and so do its children. Several tests check what Ctrl-C does (torque off, a clean exit), so give this
    # process, and through it every subprocess, the ordinary Ctrl-C behaviour.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two simulated pick-and-place episodes at 64 px, recorded once per test module (a module may define its own)."""
    from smolvla_kit.collect import CollectConfig, collect

    root = tmp_path_factory.mktemp("data") / "pick_place"
    collect(CollectConfig(out=root, episodes=2, image_size=64, workers=1, progress=False))
    return root
