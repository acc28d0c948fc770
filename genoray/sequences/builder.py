"""Accepted records -> Arrow batches: the id/duplicate policy, cleaning, windows of long
records and the counting of every record in a :class:`~genoray.sequences.report.ReadReport`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pyarrow as pa

from genoray.config import ReadConfig
from genoray.sequences import records
from genoray.sequences.clean import Cleaner, window_starts
from genoray.sequences.report import ReadReport, SequenceFormatError
from genoray.sequences.splits import assign

log = logging.getLogger(__name__)


class _BatchBuilder:
    """Collects accepted records, applies the id/duplicate policy and emits Arrow batches."""

    def __init__(self, path: str, cfg: ReadConfig, report: ReadReport, seen: set[str] | None):
        self.path, self.cfg, self.report = path, cfg, report
        self.cleaner = Cleaner(cfg.clean)
        self.seen = seen if seen is not None else set()
        self.cols: dict[str, list] = {name: [] for name in records.RECORD_SCHEMA.names}
        self.pending: Iterator[None] | None = None

    def admit(self, record_no: int, seq_id: str | None) -> bool:
        """Count a record as read; False (rejected, counted) if its id is missing or repeated."""
        self.report.read += 1
        if not seq_id:
            self.report.reject(self.path, record_no, "", "missing_id: record has no id")
            return False
        if seq_id in self.seen:
            reason = f"duplicate_id: id {seq_id!r} already read"
            if self.cfg.clean.duplicate_ids == "error":
                raise SequenceFormatError(self.path, record_no, reason, seq_id)
            self.report.reject(self.path, record_no, seq_id, reason)
            return False
        return True

    def add(self, record_no: int, seq_id: str | None, raw: str, label=None, domain=None, split=None, meta=None):
        if not self.admit(record_no, seq_id) or seq_id is None:  # admit() rejects a missing id
            return
        if split is None and self.cfg.split_cutoffs:  # ReadConfig.test_fraction (genoray.sequences.splits)
            split = assign(seq_id, label, self.cfg)
        seq, why = self.cleaner(raw)
        if seq is None:
            self.report.reject(self.path, record_no, seq_id, why or "rejected")
            return
        self.seen.add(seq_id)
        if len(seq) > self.cfg.clean.max_length:  # long_records="window": rows made lazily by drain()
            self.pending = self._windows(record_no, seq_id, seq, label, domain, split, meta or {})
            return
        self.report.accepted += 1
        self._row(seq_id, seq, label, domain, split, meta)

    def _row(self, seq_id, seq, label, domain, split, meta) -> None:
        c = self.cols
        c[records.SEQ_ID].append(seq_id)
        c[records.SEQUENCE].append(seq)
        c[records.LABEL].append(None if label is None else str(label))
        c[records.DOMAIN].append(None if domain is None else str(domain))
        c[records.SPLIT].append(None if split is None else str(split))
        c[records.META].append(json.dumps(meta, sort_keys=True) if meta else None)

    def _windows(self, record_no, seq_id, seq, label, domain, split, meta) -> Iterator[None]:
        p = self.cfg.clean
        kept = 0
        for start in window_starts(len(seq), p.max_length, p.window_overlap):
            kept += self.window(seq_id, start, seq[start : start + p.max_length], label, domain, split, meta)
            yield None
        self.end_windows(record_no, seq_id, len(seq), kept)

    def window(self, seq_id: str, start: int, raw: str, label, domain, split, meta) -> bool:
        """Clean and add one window (0-based ``start``) of a long record; False if rejected."""
        window, why = self.cleaner(raw)  # every check, per window
        if why is not None:
            self.report.windows_rejected[why.split(":", 1)[0]] += 1
            return False
        end = start + len(raw)
        self._row(f"{seq_id}:{start + 1}-{end}", window, label, domain, split,
                  {**meta, "source_id": seq_id, "start": start + 1, "end": end})
        return True

    def end_windows(self, record_no: int, seq_id: str, length: int, kept: int) -> None:
        report = self.report
        if kept:
            report.accepted += 1
            report.windowed += 1
            report.windows += kept
        else:
            report.reject(self.path, record_no, seq_id, f"no_valid_window: all windows of the {length}-bp record "
                                                        f"were rejected ({dict(report.windows_rejected)})")

    def drain(self) -> Iterator[pa.RecordBatch]:
        """Full batches so far (windows of a long record included, batch by batch)."""
        while True:
            while self.pending is not None and len(self.cols[records.SEQ_ID]) < self.cfg.batch_size:
                if next(self.pending, StopIteration) is StopIteration:
                    self.pending = None
            if len(self.cols[records.SEQ_ID]) < self.cfg.batch_size:
                return
            yield self.flush()

    def flush(self) -> pa.RecordBatch | None:
        if not self.cols[records.SEQ_ID]:
            return None
        batch = pa.RecordBatch.from_pydict(self.cols, schema=records.RECORD_SCHEMA)
        self.cols = {name: [] for name in records.RECORD_SCHEMA.names}
        return batch
