"""Typed JSON documents: every artifact manifest is a frozen dataclass, read and written here.

A document class is a :func:`record` (a frozen dataclass that refuses unknown keys) whose
fields are JSON values, tuples, ``str``-keyed dicts or other records (nested to any depth; the
config dataclasses are records too); it names its artifact and format in class variables::

    @record
    class IndexManifest:
        KIND: ClassVar[str] = "index manifest"
        FORMAT_VERSION: ClassVar[int] = 4
        READABLE: ClassVar[tuple[int, ...]] = (2, 3, 4)
        format_version: int
        ...

:func:`from_json` is the one place where a format version is checked: a version newer than
this genoray is refused with "upgrade genoray", an older one that is no longer read with
"rebuild it". Unknown keys are refused too (a writer that adds a key bumps the format
version, so an older reader never silently ignores what a newer one meant). Values are
checked and converted by pydantic (lists become tuples). :func:`to_json` writes the fields in
order and leaves out a field that is ``None`` when ``None`` is also its default, so an
optional part an artifact does not have is absent, as older writers wrote it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from typing import Any, TypeVar

from genoray import __version__
from genoray.infra import fs
from genoray.infra.errors import FormatError

D = TypeVar("D")


@typing.dataclass_transform(frozen_default=True)
def record(cls: type[D]) -> type[D]:
    """``@dataclass(frozen=True)`` that pydantic validates with unknown keys refused (the
    ``__pydantic_config__`` it reads from a dataclass): the base of every document and config."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    cls.__pydantic_config__ = {"extra": "forbid"}  # type: ignore[attr-defined]
    return cls


@functools.cache
def _adapter(cls: type):
    import pydantic

    return pydantic.TypeAdapter(cls)


def check_format(where: Any, kind: str, found: Any, readable: tuple[int, ...]) -> int:
    """The format version ``found`` of a ``kind`` document at ``where`` if this genoray reads
    it; else :class:`FormatError` saying whether to upgrade genoray or rebuild the artifact."""
    if not isinstance(found, int) or isinstance(found, bool):
        raise FormatError(f"{where}: not a {kind} (format_version {found!r})")
    if found > max(readable):
        raise FormatError(f"{where}: {kind} format {found} is newer than genoray {__version__} reads "
                          f"(formats {', '.join(map(str, readable))}); upgrade genoray")
    if found not in readable:
        raise FormatError(f"{where}: unsupported format_version {found} of this {kind} (this genoray reads "
                          f"{', '.join(map(str, readable))}); rebuild it")
    return found


def from_json(cls: type[D], doc: Any, where: Any = "<document>") -> D:
    """Build the document ``cls`` from parsed JSON, checking its format version (when the
    class declares ``FORMAT_VERSION``), every key and every value's type."""
    import pydantic

    kind = getattr(cls, "KIND", cls.__name__)
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: a {kind} is a JSON object, got {type(doc).__name__}")
    current = getattr(cls, "FORMAT_VERSION", None)
    if current is not None:
        check_format(where, kind, doc.get("format_version"), getattr(cls, "READABLE", (current,)))
    try:
        return _adapter(cls).validate_python(doc)  # type: ignore[arg-type]  # a class is hashable
    except pydantic.ValidationError as e:
        problems = []
        for err in e.errors()[:5]:
            loc = ".".join(map(str, err["loc"])) or "(document)"
            what = "unknown key (written by a newer genoray?)" if err["type"] in (
                "unexpected_keyword_argument", "extra_forbidden") else err["msg"]
            problems.append(f"{loc}: {what}")
        raise FormatError(f"{where}: not a valid {kind}: " + "; ".join(problems)) from None


def to_json(doc: Any) -> Any:
    """The JSON form of a document (dataclasses become objects, tuples lists; ``None`` fields
    whose default is ``None`` are left out)."""
    if dataclasses.is_dataclass(doc) and not isinstance(doc, type):
        out = {}
        for f in dataclasses.fields(doc):
            value = getattr(doc, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = to_json(value)
        return out
    if isinstance(doc, (list, tuple)):
        return [to_json(v) for v in doc]
    if isinstance(doc, dict):
        return {str(k): to_json(v) for k, v in doc.items()}
    return doc


def read_document(cls: type[D], uri: str | os.PathLike) -> D:
    """Read and check the document ``cls`` at ``uri`` (local or object storage)."""

    try:
        doc = fs.read_json(uri)
    except ValueError as e:  # json.JSONDecodeError
        raise FormatError(f"{uri}: not JSON: {e}") from None
    return from_json(cls, doc, uri)


def write_document(uri: str | os.PathLike, doc: Any) -> None:
    """Write a document atomically (local temp file + rename, or one object PUT)."""

    fs.write_json(uri, to_json(doc))
