"""The package's shape: one way through, no import cycles, the shared names defined once, runs resolved one way."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from smolvla_kit import runs
from smolvla_kit.policy import SmolVLAPolicy
from smolvla_kit.trained import NANO_PICK_PLACE

PACKAGE = Path(__file__).resolve().parents[1] / "smolvla_kit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(f): f for f in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every kit module `name` imports, at the top or inside a function."""
    path = MODULES[name]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_no_import_cycles():
    # A module importing its own package (`from . import x`) is not a cycle; a package importing its modules is kept.
    edges = {a: {b for b in bs if not a.startswith(b + ".")} for a, bs in GRAPH.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted((a, b) for a in edges for b in edges[a] if reaches(b, a))
    assert not cycles, f"import cycles through {cycles[:6]}"


def test_deploy_imports_neither_evaluate_nor_train():
    offenders = {name: GRAPH[name] & {"smolvla_kit.evaluate", "smolvla_kit.train"}
                 for name in GRAPH if name.startswith("smolvla_kit.deploy")}
    assert not any(offenders.values()), offenders


def test_shared_names_are_defined_once():
    """The observation/action keys, the camera prefix and the control rate are assigned in vocabulary.py only."""
    watched = {"observation.state", "observation.images.", "action", 30}
    names = {"STATE_KEY", "ACTION_KEY", "IMAGE_PREFIX", "IMAGE_KEY_PREFIX", "STATE", "ACTION", "CONTROL_HZ"}
    definitions = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in watched:
                definitions += [f"{name}.{t.id}" for t in node.targets if isinstance(t, ast.Name) and t.id in names]
    assert sorted(definitions) == [
        "smolvla_kit.vocabulary.ACTION_KEY", "smolvla_kit.vocabulary.CONTROL_HZ", "smolvla_kit.vocabulary.IMAGE_PREFIX",
        "smolvla_kit.vocabulary.STATE_KEY",
    ]


def test_vocabulary_imports_nothing_of_the_kit_but_its_error_types():
    """The vocabulary's camera check raises a KitError; errors.py, like flags.py, is a leaf."""
    assert GRAPH["smolvla_kit.vocabulary"] == {"smolvla_kit.errors"}
    assert GRAPH["smolvla_kit.errors"] == set() and GRAPH["smolvla_kit.flags"] == set()


def test_a_checkpoint_resolves_from_each_way_of_naming_it(tmp_path):
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_000010"
    step.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        (step / f).write_bytes((NANO_PICK_PLACE / f).read_bytes())
    (step / "training_state.json").write_text(json.dumps({"dataset": {"camera_shapes": {"front": [96, 96, 3]}}}))
    (run / "checkpoints" / "last").write_text("step_000010")
    assert runs.resolve(step) == step
    assert runs.resolve(run) == step  # a run folder: its newest checkpoint
    assert runs.resolve(run / "checkpoints" / "last") == step
    assert runs.resolve("kit:nano-pick-place") == NANO_PICK_PLACE
    assert runs.trained_image_size(step) == 96
    assert runs.camera_keys(step) == ["observation.images.front", "observation.images.wrist"]
    assert runs.load(run).config.camera_names == ["front", "wrist"]
    assert SmolVLAPolicy.from_pretrained("kit:nano-pick-place").config.image_size == 96  # as the README shows
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder"):
        runs.resolve(tmp_path / "nothing-here")
