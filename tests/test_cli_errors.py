"""The `smolvla-kit` command prints the kit's own error messages without a traceback, and keeps tracebacks for bugs."""

from __future__ import annotations

import re

import pytest

from smolvla_kit.cli import main


def test_bad_input_prints_the_message_alone(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "eval"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{tmp_path / 'nope'} is not a checkpoint folder" in err
    assert "Traceback" not in err and "SMOLVLA_KIT_TRACEBACK=1" in err

    assert main(["train", "--dataset", str(tmp_path / "no_data"), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "no_data") in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tracebacks_stay_for_bugs_and_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOLVLA_KIT_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        main(["eval", "--checkpoint", str(tmp_path / "nope"), "--no-progress"])
    monkeypatch.delenv("SMOLVLA_KIT_TRACEBACK")

    def broken(cfg):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr("smolvla_kit.evaluate.evaluate", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["eval", "--checkpoint", str(tmp_path / "nope"), "--no-progress"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["collect", "--image-size", "0"], r"image_size \(--image-size\) must be between 16 and 1024 pixels, got 0"),
        (["collect", "--episodes", "-3"], r"episodes \(--episodes\) must be at least 1, got -3"),
        (["collect", "--noise-deg", "nan"], r"noise_deg \(--noise-deg\) must be between 0 and 45 degrees, got nan"),
        (["collect", "--task", "fly"], r"task 'fly' is not a simulator task"),
        (["train", "--dataset", "DATA", "--steps", "-5"], r"steps and batch_size must be at least 1, got -5"),
        (["eval", "--checkpoint", "kit:nano-pick-place", "--episodes", "0"], r"episodes \(--episodes\) must be at "),
        (["eval", "--checkpoint", "kit:nano-pick-place", "--samples-per-chunk", "0"], r"samples_per_chunk"),
        (["eval", "--checkpoint", "kit:nano-pick-place", "--dtype", "float8"], r"dtype \(--dtype\) must be"),
    ],
)
def test_nonsense_numbers_are_refused_before_anything_is_written(tmp_path, capsys, args, message):
    args = [str(tmp_path / "data") if a == "DATA" else a for a in args]
    assert main([*args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_every_error_the_kit_defines_is_a_kit_error():
    """What the CLI prints without a traceback is exactly the KitError family; each is also the built-in a Python
    caller expects. ConnectionClosed is the only other: it is the client's signal that a socket ended."""
    import importlib
    import inspect
    import pkgutil

    import smolvla_kit
    from smolvla_kit.errors import KitError

    defined = {}
    for info in pkgutil.walk_packages(smolvla_kit.__path__, "smolvla_kit."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                defined[f"{info.name}.{name}"] = obj
    others = sorted(name for name, cls in defined.items() if not issubclass(cls, KitError))
    assert others == ["smolvla_kit.deploy.protocol.ConnectionClosed"]
    assert len(defined) >= 15
    builtin = {name: cls for name, cls in defined.items() if issubclass(cls, KitError) and cls is not KitError}
    assert all(any(issubclass(cls, b) for b in (ValueError, TypeError, KeyError, RuntimeError, OSError,
                                                 FloatingPointError)) for cls in builtin.values())


def test_a_kit_error_from_any_entry_point_gives_exit_2_and_its_message(tmp_path, capsys):
    from smolvla_kit.data.__main__ import main as data_main
    from smolvla_kit.deploy.server import run_server

    assert data_main(["info", str(tmp_path / "nothing")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert run_server(["--checkpoint", str(tmp_path / "nope"), "--port", "0", "--idle-timeout-s", "0"]) == 2
    assert "idle_timeout_s" in capsys.readouterr().err  # refused before the policy loads
    assert main(["calibrate", "--port", str(tmp_path / "no-such-port")]) == 2
    assert "no-such-port" in capsys.readouterr().err


def test_the_hub_out_of_reach_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    assert main(["eval", "--checkpoint", "someone/some_policy", "--out", str(tmp_path / "eval"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'someone/some_policy'" in err and "not reachable" in err and "Traceback" not in err


def test_the_policy_server_module_runs_on_its_own(tmp_path):
    """`python -m smolvla_kit.deploy.server` is the same command as `smolvla-kit policy-server`."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "smolvla_kit.deploy.server", "--checkpoint", str(tmp_path / "nope"),
                           "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not a checkpoint folder" in done.stderr, done.stderr


def test_an_unexpected_value_error_is_not_mistaken_for_bad_input(monkeypatch):
    """Before, every ValueError printed as a one-line 'error:'; a bug's ValueError now keeps its traceback."""

    def broken(cfg):
        raise ValueError("a bug deep in numpy, say")

    monkeypatch.setattr("smolvla_kit.evaluate.evaluate", broken)
    with pytest.raises(ValueError, match="a bug deep"):
        main(["eval", "--no-progress"])
