"""Refuse a re-run that would replace an artifact made from other inputs or settings.

A stage that writes a directory artifact (an index, a head) calls :func:`guard_rerun` first.
It records what the artifact is made from (its sources and settings) in ``DIR/inputs.json``
before anything else is written there; a later run into the same directory with the same
sources and settings goes on as before (an interrupted build resumes; a complete one is
refused or rewritten the same as it would be), one with other sources or settings is refused
with :class:`RerunConflict` naming the directory, what differs and the fix, and leaves every
file in place. ``overwrite`` removes the directory first. A directory without a record is
taken as it is (the stage's own checks apply). A remote ``DIR`` is not checked
here: such a stage builds in a fresh local directory (checked) and uploads it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from genoray.infra import fs
from genoray.infra.documents import read_document, record, write_document

RUN_INPUTS = "inputs.json"


@record
class RunInputs:
    """What a directory artifact is made from (``DIR/inputs.json``).

    Attributes:
        format_version: :attr:`FORMAT_VERSION`.
        stage: the stage that writes the directory (``index``, ``head``).
        sources: input name -> its path or URI (local paths absolute).
        settings: the stage's settings that change the artifact (as JSON values).
    """

    KIND: ClassVar[str] = "run inputs record"
    FORMAT_VERSION: ClassVar[int] = 1
    READABLE: ClassVar[tuple[int, ...]] = (1,)
    format_version: int
    stage: str
    sources: dict[str, str]
    settings: dict[str, Any]


class RerunConflict(ValueError):
    """A run would write into a directory that holds an artifact made from other inputs or
    settings (exit 2 on the command line); nothing was changed."""


def _settings(settings: Any) -> dict[str, Any]:
    """The fields of a config dataclass that change the artifact: all but the class's
    ``RERUN_IGNORES`` (how the run goes, e.g. ``overwrite``), as JSON values."""
    ignored = getattr(type(settings), "RERUN_IGNORES", ("overwrite",))
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ignored}
    return json.loads(json.dumps(values, default=str))


def _differences(old: RunInputs, new: RunInputs) -> list[str]:
    out = []
    for part in ("sources", "settings"):
        a, b = getattr(old, part), getattr(new, part)
        out += [f"{k}: {a.get(k, '(unset)')!r} then, {b.get(k, '(unset)')!r} now"
                for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out


def guard_rerun(out_dir: str | Path, stage: str, sources: Mapping[str, str | Path], settings: Any,
                overwrite: bool, write: bool = True) -> None:
    """Before ``stage`` writes ``out_dir``: record its ``sources`` and ``settings`` there (new
    or empty directory), go on when they equal the recorded ones, remove the directory first
    when ``overwrite``, else raise :class:`RerunConflict`. A directory without a record (an older
    genoray's, or one seeded by hand, e.g. with a trained quantizer) is taken as it is, as
    before, and left without one: the stage's own checks apply (a complete index or head is
    never edited in place). ``write=False`` only checks (and removes with ``overwrite``): a
    stage that may still refuse before any work (its capacity plan) calls it so first, and
    again once it starts writing."""
    if fs.is_remote(out_dir):
        return
    out = Path(out_dir)
    new = RunInputs(format_version=RunInputs.FORMAT_VERSION, stage=stage,
                    sources={k: str(v) if fs.is_remote(v) else str(Path(v).resolve()) for k, v in sources.items()},
                    settings=_settings(settings))
    rec = out / RUN_INPUTS
    if rec.is_file() and not overwrite:
        old = read_document(RunInputs, rec)
        diff = _differences(old, new) if old.stage == stage else [f"stage: {old.stage!r} then, {stage!r} now"]
        if diff:
            raise RerunConflict(f"{out}: its {old.stage} was made from other inputs or settings ({'; '.join(diff)}); "
                                f"nothing was changed: give --overwrite to replace it, or a new --out")
        return
    if overwrite and out.exists():
        shutil.rmtree(out)
    if not write or (out.is_dir() and any(out.iterdir())):  # checking only, or files without a record
        return
    fs.makedirs(out)
    write_document(rec, new)
