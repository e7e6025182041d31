"""Shared test set-up."""

from __future__ import annotations

import signal


def pytest_configure(config) -> None:
    # Started in the background of a non-interactive shell (`nohup ... &`), a process inherits SIGINT ignored,
    # and so do its children. Several tests check what Ctrl-C does (torque off, a clean exit), so give this
    # process, and through it every subprocess, the ordinary Ctrl-C behaviour.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
