"""The `smolvla-kit` command prints the kit's own error messages without a traceback, and keeps tracebacks for bugs."""

from __future__ import annotations

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
