"""Settings dataclasses <-> command-line flags: every command's flags come from the dataclass it fills.

    @dataclass
    class EvalConfig:
        episodes: int = 20
        \"\"\"Scenes (seeds); each is played once per colour on the table.\"\"\"

becomes `--episodes EPISODES   Scenes (seeds); each is played once per colour on the table. (default: 20)`.

* A field's help is the string written under it; its type picks the parser (bool -> `--x/--no-x`,
  `Literal[...]` -> choices, list or dict -> JSON); a field without a default is a required flag.
* `metadata` on a field can rename its flag (`{"flag": "--async"}`), make it positional (`{"positional": True}`)
  or let it repeat (`{"repeat": True}` for a list: `--dead-motor 3 --dead-motor 5`).
* `as_flags(config)` writes a dataclass back as the flags that rebuild it (to start a child process).

This module imports nothing of the kit's.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass and of the dataclasses it extends (its documentation)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _parser_type(annotation: Any) -> tuple[Callable[[str], Any] | None, bool, list[Any] | None]:
    """(converter, is_bool, choices) for a field annotation; JSON for lists and dicts."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _parser_type(args[0])
    if origin is typing.Literal:
        return type(args[0]), False, list(args)
    if annotation is bool:
        return None, True, None
    if annotation in (int, float, str, Path):
        return annotation, False, None
    return json.loads, False, None


def _flag(f: dataclasses.Field, prefix: str) -> str:
    return f.metadata.get("flag") or "--" + (prefix + f.name).replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def add_dataclass_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                            skip: tuple[str, ...] = (), prefix: str = "", keep_defaults: bool = True) -> None:
    """One `--flag` per dataclass field (snake_case -> kebab-case, after `prefix`), defaults and help from the class,
    on a parser or one of its argument groups.

    With `keep_defaults=False` a flag that is not given stays out of the parsed namespace, so that
    `explicit_values` can tell it from one given with the default's value (a recipe fills the rest).
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = _default(f)
        required = default is dataclasses.MISSING
        convert, is_bool, choices = _parser_type(hints[f.name])
        dest = (prefix + f.name).replace("-", "_")
        help_text = docs.get(f.name, "")
        if not required:
            shown = json.dumps(default) if isinstance(default, (list, dict, tuple)) else default
            help_text = f"{help_text} (default: {shown})".strip()
        kwargs: dict[str, Any] = {"help": help_text}
        if not required:
            kwargs["default"] = default if keep_defaults else argparse.SUPPRESS
        if f.metadata.get("positional"):
            parser.add_argument(dest, type=convert, choices=choices, **kwargs)
        elif is_bool:
            parser.add_argument(_flag(f, prefix), dest=dest, action=argparse.BooleanOptionalAction, **kwargs)
        elif f.metadata.get("repeat"):
            if keep_defaults:  # argparse would append to the default list itself: explicit_values fills it in
                kwargs["default"] = None
            item = typing.get_args(hints[f.name])[0]
            parser.add_argument(_flag(f, prefix), dest=dest, type=item, action="append", required=required, **kwargs)
        else:
            parser.add_argument(_flag(f, prefix), dest=dest, type=convert, choices=choices, required=required,
                                **kwargs)


def explicit_values(args: argparse.Namespace, cls: type, prefix: str = "", skip: tuple[str, ...] = ()
                    ) -> dict[str, Any]:
    """The fields of `cls` in the parsed namespace, by field name: all of them, or with `keep_defaults=False` only
    those given on the command line. `skip` must match what `add_dataclass_arguments` skipped: another dataclass
    may have put a flag of the same name in the namespace."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        dest = (prefix + f.name).replace("-", "_")
        if hasattr(args, dest):
            value = getattr(args, dest)
            if value is None and f.metadata.get("repeat"):
                value = _default(f)
            values[f.name] = value
    return values


def as_flags(config: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that make `add_dataclass_arguments` parse back `config` (fields left at their default omitted)."""
    out: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in skip or value == _default(f):
            continue
        flag = _flag(f, "")
        if f.metadata.get("positional"):
            out.append(str(value))
        elif isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif f.metadata.get("repeat"):
            for item in value:
                out += [flag, str(item)]
        elif value is None:
            raise ValueError(f"{flag} cannot be set back to None on a command line; leave {f.name} at its default")
        elif isinstance(value, (list, dict, tuple)):
            out += [flag, json.dumps(value)]
        else:
            out += [flag, str(value)]
    return out


__all__ = ["add_dataclass_arguments", "as_flags", "explicit_values", "field_docs"]
