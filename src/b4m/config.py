"""Typed configs: one dataclass per job, loaded from YAML/TOML files and from CLI flags alike.

Every field's default and help text live on the dataclass (``field(metadata={"help": ...})``); the CLI flags are
generated from the same fields, so there is one source of defaults. Unknown keys are errors, and all problems
with a config are reported together in one :class:`~b4m.errors.B4MError`.

Precedence: dataclass default < config file (``--config x.yaml``) < explicit CLI flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import threading
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from b4m.errors import B4MError

__all__ = [
    "add_config_args",
    "config_from_args",
    "load_config",
    "opt",
    "parse_sets",
    "to_dict",
]

T = TypeVar("T")


def opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse's name
    """A config field with a default and a help text (shown by ``--help``).

    Keywords go into the field's metadata: ``choices`` (the flag's allowed values), ``nargs`` (of a list flag),
    ``run_help`` (the help text under ``b4m run``, where a config class sets ``HELP_KEY = "run_help"``, when it
    differs from the stage commands' one) and ``deviation`` (an official-code behaviour the paper's B4M does
    not have: see :func:`split_deviations`).
    """
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help, **kw}
        )
    return dataclasses.field(default=default, metadata={"help": help, **kw})


_AST_LOCK = threading.Lock()


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (PEP 257 attribute docstrings), for
    configs documented that way instead of with :func:`opt`; first paragraph, on one line."""
    import ast
    import inspect
    import textwrap

    try:
        with _AST_LOCK:  # CPython 3.11's parser is not safe to enter from two threads at once
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.strip().split("\n\n")[0].split())
    return docs


def _resolve(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``(inner type, optional?)`` of ``X | None``; lists stay as they are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def _coerce(name: str, value: Any, tp: Any, problems: list[str]) -> Any:
    inner, optional = _base_type(tp)
    if value is None:
        if not optional:
            problems.append(f"{name}: a value is required")
        return None
    origin = typing.get_origin(inner)
    try:
        if origin in (list, tuple):
            item = (typing.get_args(inner) or (str,))[0]
            if isinstance(value, str | int | float) and not isinstance(value, bool):  # `repeats: 3`: one item
                value = [value]
            return origin(_coerce(name, v, item, problems) for v in value)
        if inner is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if inner is Path:
            return Path(value)
        if inner in (int, float, str):
            if inner is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return inner(value)
    except (TypeError, ValueError):
        problems.append(f"{name}: expected {getattr(inner, '__name__', inner)}, got {value!r}")
        return None
    return value


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise B4MError(f"--config {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise B4MError(f"--config {path}: not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise B4MError(f"--config {path}: cannot read it ({err.strerror})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise B4MError(f"--config {path}: use a .yaml, .yml, .toml or .json file")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise B4MError(f"--config {path}: cannot parse it ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise B4MError(f"--config {path}: the top level must be a mapping of option names to values")
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> T:
    """Build ``cls`` from its defaults, then a YAML/TOML/JSON file, then ``overrides`` (``None`` values skipped).

    Keys may use ``-`` or ``_``. Unknown keys and badly typed values are all reported in one error.
    """
    source = f"--config {path}" if path else "options"
    data: dict[str, Any] = {}
    if path:
        data.update({k.replace("-", "_"): v for k, v in _read_file(Path(path)).items()})
    data.update({k.replace("-", "_"): v for k, v in (overrides or {}).items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = _resolve(cls)
    problems = [f"unknown option {k!r} (known: {', '.join(sorted(fields))})" for k in data if k not in fields]
    values = {k: _coerce(k, v, hints[k], problems) for k, v in data.items() if k in fields}
    if not problems:
        try:
            return cls(**values)
        except (ValueError, TypeError) as err:
            problems.append(str(err))
    raise B4MError(f"invalid {source}: " + "; ".join(problems))


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add ``--config`` and one ``--flag`` per field of ``cls`` (defaults shown, but applied by :func:`load_config`)."""
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML/TOML/JSON file with any of the options below"
    )
    hints = _resolve(cls)
    docs = attribute_docs(cls)  # configs documented with attribute docstrings instead of opt()
    help_key = getattr(
        cls, "HELP_KEY", "help"
    )  # a method config shows the fields' run_help, where they have one
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = ("-" if len(f.name) == 1 else "--") + f.name.replace("_", "-")
        inner, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = (
            f.metadata.get(help_key) or f.metadata.get("help", "") or docs.get(f.name, "").replace("%", "%%")
        )
        if "default" not in help_text and default not in (None, [], ()):
            if isinstance(default, list | tuple):  # as typed on the command line: --flag a b
                shown = " ".join(map(str, default))
            else:
                shown = repr(default) if default == "" else default
            help_text += f" (default: {shown})"
        if inner is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, dest=f.name, help=help_text
            )
        elif typing.get_origin(inner) in (list, tuple):
            nargs = f.metadata.get("nargs", "+")  # "*": the flag alone gives an empty list
            parser.add_argument(
                flag, nargs=nargs, default=None, dest=f.name, metavar=f.name.upper(), help=help_text
            )
        else:
            kind = {int: int, float: float}.get(inner, str)
            choices = f.metadata.get("choices")
            parser.add_argument(flag, type=kind, default=None, choices=choices, dest=f.name, help=help_text)


def parse_sets(items: list[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``["key=value", ...]`` (``--set`` options) as overrides for :func:`load_config`: each value is read as
    JSON (``3``, ``true``, ``[32, 64]``, ``"text"``), else kept as the string written."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise B4MError(f"{flag} {item}: write key=value, e.g. {flag} train_steps=1200")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def config_from_args(cls: type[T], args: argparse.Namespace, **fixed: Any) -> T:
    """The config for a parsed command line: defaults < ``--config`` file < flags given (and ``--set key=value``
    items, where the command has them) < ``fixed``."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    for key, value in parse_sets(getattr(args, "set", None)).items():
        if key not in names:
            raise B4MError(f"--set {key}=...: unknown key {key!r} (known: {', '.join(sorted(names))})")
        if key in overrides and overrides[key] != value:
            raise B4MError(f"--set {key}={value} contradicts --{key.replace('_', '-')}; give one of them")
        overrides[key] = value
    overrides.update(fixed)
    return load_config(cls, getattr(args, "config", None), overrides)
