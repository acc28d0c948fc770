"""Command-line flags generated from the config dataclasses of :mod:`genoray.config`.

Each field of a config becomes one flag: ``--<prefix><field-name>`` (underscores become
dashes), its type and choices from the annotation, its default from the dataclass (so a
default is written once, in ``config.py``) and its help from the class's ``Attributes:``
docstring. Nested configs (``ReadConfig.clean``, ``ReindexConfig.index``, ``ServeConfig.limits``)
are flattened into the same parser. Value syntax:

* ``bool``: ``--name`` / ``--no-name``;
* tuples: comma-separated (``--ks 1,2,3``);
* optional fields (``X | None``): ``none`` means None (``--C none``, ``--id-column none``);
  a field may name another word for it in its metadata (``IndexConfig.split``: ``all``).

A command declares its configs as :class:`Group` s; :func:`add_group` adds the flags and
:func:`build` makes the config from parsed arguments; :func:`given` tells which fields the
command line set (a flag given at its default counts as given). Two groups giving the same
flag is an error at parser build time (rename one with ``names``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

NONE_WORDS = ("none", "null")
GIVEN = "_given_flags"  # namespace attribute: the dests the command line set


def _mark(namespace: argparse.Namespace, dest: str) -> None:
    if not hasattr(namespace, GIVEN):
        setattr(namespace, GIVEN, set())
    getattr(namespace, GIVEN).add(dest)


class _Store(argparse._StoreAction):
    """``store`` that also records that the flag was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark(namespace, self.dest)


class _StoreConst(argparse._StoreConstAction):
    """``store_const`` that also records that the flag was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark(namespace, self.dest)


def given(args: argparse.Namespace, group: Group) -> set[str]:
    """The field paths of ``group`` that the command line set explicitly."""
    prefix = f"{group.key}."
    return {d[len(prefix):] for d in getattr(args, GIVEN, set()) if d.startswith(prefix)}


@dataclass(frozen=True)
class Group:
    """One config dataclass exposed as flags of a command.

    Attributes:
        key: namespace key; values are stored as ``<key>.<field path>`` in the parsed args.
        cls: the config dataclass.
        prefix: prefix of every generated flag name of this group (``"hf-"``).
        names: field path (``"index_type"``, ``"clean.max_length"``) -> flag name(s) without
            ``--`` (the first is shown first; older names stay accepted as aliases).
        negative: boolean field path -> extra flag names that set it to False (``no-auth``).
        skip: field paths not exposed (set by the command itself, e.g. ``ServeConfig.root``).
        title: heading of the group in ``--help``.
    """

    key: str
    cls: type
    prefix: str = ""
    names: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    negative: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    title: str | None = None


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> help text, read from the ``Attributes:`` section of the class docstring
    (``a / b: text`` documents several fields at once)."""
    doc = cls.__doc__ or ""
    out: dict[str, str] = {}
    if "Attributes:" not in doc:
        return out
    body = doc.split("Attributes:", 1)[1]
    current: list[str] | None = None
    indent = None
    for line in body.splitlines():
        if not line.strip():
            continue
        ind = len(line) - len(line.lstrip())
        m = re.match(r"^\s*([A-Za-z_][\w ]*(?:\s*/\s*[A-Za-z_]\w*)*):\s+(.*)$", line)
        if m and (indent is None or ind <= indent):
            indent = ind
            current = [n.strip() for n in m.group(1).split("/")]
            for n in current:
                out[n] = m.group(2).strip()
        elif current is not None and indent is not None and ind > indent:
            for n in current:
                out[n] += " " + line.strip()
        else:
            break
    return out


def _strip_none(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else functools.reduce(lambda a, b: a | b, rest)), True
    return tp, False


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def leaves(cls: type, path: str = "", default: Any = dataclasses.MISSING):
    """Yield ``(path, field, type, optional, default)`` for every leaf field, flattening
    nested (non-optional) config fields; optional nested configs are leaves."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _strip_none(hints[f.name])
        d = getattr(default, f.name) if default is not dataclasses.MISSING else _default_of(f)
        p = f"{path}{f.name}"
        if _is_config(tp) and not optional:
            yield from leaves(tp, p + ".", d)
        else:
            yield p, f, cls, tp, optional, d


def _converter(tp: Any, optional: bool, none_words: tuple[str, ...]):
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            base = lambda s: tuple(item(x.strip()) for x in s.split(",") if x.strip())
        else:
            base = lambda s: tuple(t(x.strip()) for t, x in zip(args, s.split(",")))
    elif origin is Literal:
        values = typing.get_args(tp)
        kind = type(values[0])
        base = kind
    elif tp in (int, float, str):
        base = tp
    else:
        raise TypeError(f"no flag syntax for type {tp!r}")

    def convert(s: str) -> Any:
        if optional and s.lower() in none_words:
            return None
        try:
            return base(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {s!r}") from None

    convert.__name__ = getattr(tp, "__name__", "value")
    return convert


def _show(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return ",".join(map(str, v)) or "(empty)"
    return str(v)


def add_group(parser: argparse.ArgumentParser, group: Group) -> None:
    """Add one flag per (leaf) field of ``group.cls`` to ``parser``."""
    target = parser.add_argument_group(group.title) if group.title else parser
    for path, f, owner, tp, optional, default in leaves(group.cls):
        if path in group.skip or f.name in group.skip:
            continue
        if default is dataclasses.MISSING:
            raise TypeError(f"{group.cls.__name__}.{path} has no default: skip it and set it in the command")
        names = group.names.get(path, group.prefix + f.name.replace("_", "-"))
        names = (names,) if isinstance(names, str) else tuple(names)
        flags = [f"--{n}" for n in names]
        dest = f"{group.key}.{path}"
        text = field_docs(owner).get(f.name, "").replace("``", "")
        if _is_config(tp):
            continue  # optional nested config: chosen by the command (e.g. --encoder kmer-pos)
        if tp is bool:
            neg = [f"--no-{n}" for n in names] + [f"--{n}" for n in group.negative.get(path, ())]
            state = f"on; {neg[-1]} turns it off" if default else "off"
            help_ = f"{text} (default: {state})".replace("%", "%%")
            target.add_argument(*flags, dest=dest, action=_StoreConst, const=True, default=default, help=help_)
            target.add_argument(*neg, dest=dest, action=_StoreConst, const=False, default=default,
                                help=argparse.SUPPRESS)
            continue
        none_words = NONE_WORDS + tuple(f.metadata.get("none", ()))
        kwargs: dict[str, Any] = {"dest": dest, "default": default, "type": _converter(tp, optional, none_words),
                                  "action": _Store}
        if typing.get_origin(tp) is Literal:
            kwargs["metavar"] = "{" + ",".join(map(str, typing.get_args(tp))) + (",none" if optional else "") + "}"
            kwargs["choices"] = typing.get_args(tp) + ((None,) if optional else ())
        elif typing.get_origin(tp) is tuple:
            kwargs["metavar"] = "A,B,..."
        else:
            kwargs["metavar"] = {int: "N", float: "X", str: "TEXT"}[tp]
        none_hint = (f"; {' or '.join(none_words[2:] or none_words[:1])}: {f.metadata.get('none_help', 'no value')}"
                     if optional else "")
        kwargs["help"] = f"{text} (default: {_show(default)}{none_hint})".replace("%", "%%")
        target.add_argument(*flags, **kwargs)


def values(args: argparse.Namespace, group: Group) -> dict[str, Any]:
    """The parsed values of ``group`` as a nested dict of field values."""
    out: dict[str, Any] = {}
    for path, _f, _owner, _tp, _optional, _default in leaves(group.cls):
        dest = f"{group.key}.{path}"
        if not hasattr(args, dest):
            continue
        node = out
        *parents, name = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = getattr(args, dest)
    return out


def build(args: argparse.Namespace, group: Group, **fixed: Any):
    """The config of ``group`` from parsed ``args``; ``fixed`` sets skipped fields."""
    return _construct(group.cls, values(args, group), fixed)


def _construct(cls: type, vals: dict[str, Any], fixed: dict[str, Any]):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            kwargs[f.name] = fixed[f.name]
        elif f.name in vals:
            v = vals[f.name]
            tp, _ = _strip_none(hints[f.name])
            kwargs[f.name] = _construct(tp, v, {}) if isinstance(v, dict) and _is_config(tp) else v
    return cls(**kwargs)
