"""The course notebooks are committed clean: no outputs, no execution counts, so diffs stay readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

COURSE = Path(__file__).resolve().parent.parent / "course"
NOTEBOOKS = sorted(COURSE.glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {COURSE}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_outputs_are_stripped(path: Path):
    notebook = json.loads(path.read_text())
    dirty = [
        i
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} carry outputs; strip them with "
        f"`jupyter nbconvert --clear-output --inplace {path.relative_to(COURSE.parent)}`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_ends_with_checks(path: Path):
    """Each notebook's last code cell asserts what the notebook showed."""
    notebook = json.loads(path.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert "assert " in "".join(code[-1]["source"]), f"{path.name}: the last code cell has no assert"


def test_the_course_studies_notebook_04s_policy_only_when_its_run_finished(tmp_path, capsys):
    """Notebooks 05-07 fall back to the shipped policy, saying why; notebook 04 says when it continues a run."""
    from smolvla_kit.collect import CollectConfig, collect
    from smolvla_kit.course import describe_run, policy_to_study
    from smolvla_kit.runs import latest_checkpoint
    from smolvla_kit.train import TrainConfig, train
    from smolvla_kit.trained import NANO_PICK_PLACE

    run = tmp_path / "train"
    assert policy_to_study(run) == NANO_PICK_PLACE
    assert "has not trained one yet" in capsys.readouterr().out
    assert describe_run(run, 4).startswith("starting a new run")

    collect(CollectConfig(out=tmp_path / "data", episodes=2, image_size=32, workers=1, progress=False))
    settings = dict(dataset=tmp_path / "data", out=run, steps=4, batch_size=2, num_threads=1, progress=False)
    train(TrainConfig(stop_at=2, **settings))  # an interrupted run
    assert policy_to_study(run) == NANO_PICK_PLACE
    assert "stopped at step 2 of 4" in capsys.readouterr().out
    assert "unfinished run, stopped at step 2 of 4" in describe_run(run, 4)
    assert "planned for 4 steps, not 6" in describe_run(run, 6)
    train(TrainConfig(**settings))
    assert policy_to_study(run) == latest_checkpoint(run)
    assert "notebook 04's policy" in capsys.readouterr().out
    assert "already holds the finished run" in describe_run(run, 4)
