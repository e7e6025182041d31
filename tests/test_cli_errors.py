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
