"""What a read did: records read, accepted and rejected by reason, and the file-level error."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from genoray.infra.errors import InvariantError

log = logging.getLogger(__name__)

MAX_REJECT_EXAMPLES = 1000


class SequenceFormatError(ValueError):
    """A file cannot be parsed. The message names the file, the record and the reason."""

    def __init__(self, path: str, record: int | None, reason: str, seq_id: str | None = None):
        self.path, self.record, self.reason, self.seq_id = str(path), record, reason, seq_id
        where = f"record {record}" if record is not None else "file"
        if seq_id is not None:
            where += f" (id {seq_id!r})"
        super().__init__(f"{path}: {where}: {reason}")


@dataclass
class Reject:
    """One rejected record: file, record number, id and reason."""

    path: str
    record: int
    seq_id: str
    reason: str


@dataclass
class ReadReport:
    """Counts for one read: ``read == accepted + sum(rejected.values())`` always holds."""

    read: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: list[Reject] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    max_examples: int | None = MAX_REJECT_EXAMPLES  # None keeps every reject (for rejects tables)
    windowed: int = 0  # accepted records cut into windows (CleanPolicy.long_records="window")
    windows: int = 0  # rows those records became
    windows_rejected: Counter = field(default_factory=Counter)  # windows dropped, by reason

    @property
    def rows(self) -> int:
        """Rows emitted: one per accepted record, except that a windowed record gives ``windows``."""
        return self.accepted - self.windowed + self.windows

    def reject(self, path: str, record: int, seq_id: str, reason: str) -> None:
        """Count a rejected record under its reason (the text before ``:``) and keep an example."""
        key = reason.split(":", 1)[0]
        self.rejected[key] += 1
        if self.max_examples is None or len(self.examples) < self.max_examples:
            self.examples.append(Reject(str(path), record, seq_id, reason))

    @property
    def n_rejected(self) -> int:
        """Rejected records over all reasons."""
        return sum(self.rejected.values())

    def check(self) -> None:
        """Raise :class:`~genoray.infra.errors.InvariantError` unless ``read == accepted + rejected``."""
        if self.read != self.accepted + self.n_rejected:
            raise InvariantError(f"record counts do not add up: {self.to_dict()}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form with up to 20 reject examples."""
        out = {
            "read": self.read,
            "accepted": self.accepted,
            "rejected": self.n_rejected,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "rows": self.rows,
            "reject_examples": [vars(r) for r in self.examples[:20]],
        }
        if self.windowed:
            out.update(windowed=self.windowed, windows=self.windows,
                       windows_rejected_by_reason=dict(sorted(self.windows_rejected.items())))
        return out
