"""The config machinery: ``@config_class``, one validation helper, pydantic parsing."""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal, TypeVar

from genoray.infra.documents import record

T = TypeVar("T")


@typing.dataclass_transform(frozen_default=True)
def config_class(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True)`` that :func:`parse` validates with unknown keys refused: the
    same record as every artifact document (:func:`genoray.infra.documents.record`)."""
    return record(cls)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-able form of a config (nested configs become dicts, tuples stay tuples)."""
    return dataclasses.asdict(cfg)


def parse(cls: type[T], data: Any) -> T:
    """Build a (possibly nested) config dataclass from a dict (JSON/YAML), checking types.

    Raises ``ValueError`` naming the offending keys: ``"<Class>: unknown keys [...]"`` for keys
    that are not fields, else pydantic's message per field (including the class's own
    ``__post_init__`` checks).
    """
    import pydantic

    if isinstance(data, cls):
        return data
    try:
        return pydantic.TypeAdapter(cls).validate_python(data)
    except pydantic.ValidationError as e:
        errors = e.errors()
        unknown = [".".join(map(str, err["loc"])) for err in errors if err["type"] == "unexpected_keyword_argument"]
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}") from None
        parts = []
        for err in errors:
            loc = ".".join(map(str, err["loc"]))
            msg = str(err["ctx"]["error"]) if err["type"] == "value_error" and "ctx" in err else err["msg"]
            parts.append(f"{loc}: {msg}" if loc else msg)
        text = "; ".join(parts)
        raise ValueError(text if text.startswith(cls.__name__ + ":") else f"{cls.__name__}: {text}") from None


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        args = typing.get_args(t) if typing.get_origin(t) is not Literal else (t,)
        lits = [a for a in args if typing.get_origin(a) is Literal]
        if lits:
            allowed = tuple(v for lit in lits for v in typing.get_args(lit))
            out[f.name] = allowed + ((None,) if type(None) in args else ())
    return out


def validate(cfg: Any, *rules: tuple[bool, str]) -> None:
    """The one check of every config, called from ``__post_init__``.

    Every ``Literal[...]`` field must hold one of its values; every ``(ok, message)`` rule
    must hold. Raises ``ValueError("<Class>: <message>")`` on the first failure.
    """
    name = type(cfg).__name__
    for fname, allowed in _literal_fields(type(cfg)).items():  # type: ignore[arg-type]  # a class is hashable
        value = getattr(cfg, fname)
        if value not in allowed:
            shown = " or ".join(repr(a) for a in allowed)
            raise ValueError(f"{name}: {fname} must be {shown}, got {value!r}")
    for ok, message in rules:
        if not ok:
            raise ValueError(f"{name}: {message}")
