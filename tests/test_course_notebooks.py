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
