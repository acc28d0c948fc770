"""Read FASTA/FASTQ (optionally gzipped), Parquet and CSV/TSV into cleaned Arrow batches.

Output contract: :data:`genoray.schema.RECORD_SCHEMA` record batches
(``seq_id, sequence, label, domain, split, meta``). Every call fills a :class:`ReadReport`
with records read, accepted and rejected by reason, so that ``read == accepted + rejected``.

Malformed *files* (no FASTA header, truncated gzip, binary junk, non-ASCII bytes, a FASTQ
whose qualities do not match, a ``<file>.sha256`` sidecar that does not match) raise
:class:`SequenceFormatError` naming the file, the record number and the reason. Malformed *records* (empty, too short/long, too many N, non-DNA
characters, repeated ids) are rejected and counted, never silently dropped.

FASTA/FASTQ parsing uses ``dnaio`` (C-accelerated, handles gzip/bgzip/multi-member gzip and
reports line numbers); see ``bench/bench_parsers.py`` for the comparison that chose it.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from genoray import schema
from genoray.config import CleanPolicy, ReadConfig

FASTX_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".fas", ".fq", ".fastq")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
MAX_REJECT_EXAMPLES = 1000

_IUPAC_AMBIGUOUS = "RYSWKMBDHV"
_INVALID = "!"


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
        key = reason.split(":", 1)[0]
        self.rejected[key] += 1
        if self.max_examples is None or len(self.examples) < self.max_examples:
            self.examples.append(Reject(str(path), record, seq_id, reason))

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def check(self) -> None:
        if self.read != self.accepted + self.n_rejected:
            from genoray.errors import InvariantError

            raise InvariantError(f"record counts do not add up: {self.to_dict()}")

    def to_dict(self) -> dict[str, Any]:
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


def _translation_table(policy: CleanPolicy) -> dict[int, int]:
    table: dict[int, int] = {c: ord(_INVALID) for c in range(128)}
    for c in "ACGTN":
        table[ord(c)] = ord(c)
        if policy.uppercase:
            table[ord(c.lower())] = ord(c)
    if policy.rna_to_dna:
        table[ord("U")] = ord("T")
        if policy.uppercase:
            table[ord("u")] = ord("T")
    if policy.ambiguous == "to_n":
        for c in _IUPAC_AMBIGUOUS:
            table[ord(c)] = ord("N")
            if policy.uppercase:
                table[ord(c.lower())] = ord("N")
    return table


class Cleaner:
    """Applies a :class:`CleanPolicy` to one sequence; returns ``(clean, None)`` or ``(None, reason)``."""

    def __init__(self, policy: CleanPolicy):
        self.policy = policy
        self._table = _translation_table(policy)
        self._strip = str.maketrans("", "", "-.") if policy.strip_gaps else None

    def __call__(self, raw: str) -> tuple[str | None, str | None]:
        p = self.policy
        if p.long_records == "window" and len(raw) > p.max_length:
            return raw, None  # the reader cuts it into windows and cleans each (no record-size copy)
        seq = "".join(raw.split()) if (" " in raw or "\t" in raw or "\r" in raw) else raw
        if self._strip is not None:
            seq = seq.translate(self._strip)
        if not seq:
            return None, "empty: sequence has no bases"
        if not seq.isascii():
            bad = next(i for i, c in enumerate(seq) if ord(c) > 127)
            return None, f"invalid_character: non-ASCII {seq[bad]!r} at position {bad + 1}"
        clean = seq.translate(self._table)
        if _INVALID in clean:
            bad = clean.index(_INVALID)
            why = "ambiguous_base" if seq[bad].upper() in _IUPAC_AMBIGUOUS else "invalid_character"
            return None, f"{why}: {seq[bad]!r} at position {bad + 1}"
        n = len(clean)
        if n < p.min_length:
            return None, f"too_short: length {n} < min_length {p.min_length}"
        if n > p.max_length:
            return None, f"too_long: length {n} > max_length {p.max_length}"
        if p.max_n_fraction < 1.0:
            n_count = clean.count("N")
            if n_count and n_count / n > p.max_n_fraction:
                return None, f"too_many_n: {n_count}/{n} N > max_n_fraction {p.max_n_fraction}"
        return clean, None


def detect_format(path: str | Path) -> str:
    """``"fastx"``, ``"parquet"`` or ``"csv"`` from the file name (``.gz`` allowed for fastx/csv)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(FASTX_SUFFIXES):
        return "fastx"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise SequenceFormatError(
        str(path), None,
        f"unknown file type; expected one of {FASTX_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES} (optionally .gz)",
    )


def parse_header(description: str) -> tuple[str, dict[str, str], str]:
    """Split a FASTA/FASTQ header into ``(id, key=value tags, remaining free text)``."""
    parts = description.split()
    if not parts:
        return "", {}, ""
    tags: dict[str, str] = {}
    free: list[str] = []
    for token in parts[1:]:
        key, sep, value = token.partition("=")
        if sep and key and value:
            tags[key] = value
        else:
            free.append(token)
    return parts[0], tags, " ".join(free)


def header_fields(description: str, cfg: ReadConfig) -> tuple[str, str | None, str | None, str | None, dict]:
    """``(id, label, domain, split, meta)`` of a FASTA/FASTQ header, per ``cfg``'s tag keys."""
    seq_id, tags, free = parse_header(description)
    label, domain, split = tags.pop(cfg.label_key, None), tags.pop(cfg.domain_key, None), tags.pop(cfg.split_key, None)
    if free:
        tags["description"] = free
    return seq_id, label, domain, split, tags


class _BatchBuilder:
    """Collects accepted records, applies the id/duplicate policy and emits Arrow batches."""

    def __init__(self, path: str, cfg: ReadConfig, report: ReadReport, seen: set[str] | None):
        self.path, self.cfg, self.report = path, cfg, report
        self.cleaner = Cleaner(cfg.clean)
        self.seen = seen if seen is not None else set()
        self.cols: dict[str, list] = {name: [] for name in schema.RECORD_SCHEMA.names}
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
        if not self.admit(record_no, seq_id):
            return
        if split is None and self.cfg.split_cutoffs:  # ReadConfig.test_fraction (genoray.splits)
            from genoray.splits import assign

            split = assign(seq_id, label, self.cfg)
        seq, why = self.cleaner(raw)
        if why is not None:
            self.report.reject(self.path, record_no, seq_id, why)
            return
        self.seen.add(seq_id)
        if len(seq) > self.cfg.clean.max_length:  # long_records="window": rows made lazily by drain()
            self.pending = self._windows(record_no, seq_id, seq, label, domain, split, meta or {})
            return
        self.report.accepted += 1
        self._row(seq_id, seq, label, domain, split, meta)

    def _row(self, seq_id, seq, label, domain, split, meta) -> None:
        c = self.cols
        c[schema.SEQ_ID].append(seq_id)
        c[schema.SEQUENCE].append(seq)
        c[schema.LABEL].append(None if label is None else str(label))
        c[schema.DOMAIN].append(None if domain is None else str(domain))
        c[schema.SPLIT].append(None if split is None else str(split))
        c[schema.META].append(json.dumps(meta, sort_keys=True) if meta else None)

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
            while self.pending is not None and len(self.cols[schema.SEQ_ID]) < self.cfg.batch_size:
                if next(self.pending, StopIteration) is StopIteration:
                    self.pending = None
            if len(self.cols[schema.SEQ_ID]) < self.cfg.batch_size:
                return
            yield self.flush()

    def flush(self) -> pa.RecordBatch | None:
        if not self.cols[schema.SEQ_ID]:
            return None
        batch = pa.RecordBatch.from_pydict(self.cols, schema=schema.RECORD_SCHEMA)
        self.cols = {name: [] for name in schema.RECORD_SCHEMA.names}
        return batch


FASTA_SPLITTABLE = (".fa", ".fasta", ".fna", ".ffn", ".fas")  # uncompressed FASTA only


def fasta_record_start(f: BinaryIO, offset: int, block: int = 1 << 20) -> int:
    """Offset of the first record header (``>`` at a line start) at or after ``offset``, or the
    file size. In FASTA ``>`` occurs only in headers, so byte ranges can be cut without parsing."""
    size = f.seek(0, 2)
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    base = offset - 1  # file offset of data[0]; one byte back to see the newline before '>'
    f.seek(base)
    data = f.read(block)
    while len(data) > 1:
        hit = data.find(b"\n>")
        if hit >= 0:
            return base + hit + 1
        base += len(data) - 1  # keep the last byte: '\n' may end this block and '>' start the next
        f.seek(base)
        data = f.read(block)
    return size


class _ByteRange(io.RawIOBase):
    """A read-only view of bytes ``[start, end)`` of a file."""

    def __init__(self, path: str, start: int, end: int):
        self._f = open(path, "rb")
        self._f.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self._left)
        if n <= 0:
            return 0
        got = self._f.readinto(memoryview(buf)[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


class _StreamedRecord:
    """State of one FASTA record read line by line (long records never held whole)."""

    def __init__(self, record_no: int, header: str, cfg: ReadConfig):
        self.record_no = record_no
        self.seq_id, self.label, self.domain, self.split, self.meta = header_fields(header, cfg)
        self.buf = bytearray()  # bases from offset buf_start of the record
        self.buf_start = self.length = self.next_start = self.kept = 0
        self.windowed = self.skip = False


def _iter_fasta_windowed(source: BinaryIO, cfg: ReadConfig, builder: _BatchBuilder) -> Iterator[pa.RecordBatch]:
    """FASTA reader for ``long_records="window"`` that streams each record line by line: a record
    up to ``max_length`` is added whole; a longer one is cut into windows as its lines arrive,
    keeping only the bases still needed (memory O(window), not O(record))."""
    size, step = cfg.clean.max_length, cfg.clean.max_length - cfg.clean.window_overlap
    rec: _StreamedRecord | None = None
    record_no = 0

    def emit(r: _StreamedRecord, upto: int) -> None:  # windows starting at next_start that end by `upto`
        while r.next_start + size <= upto:
            a = r.next_start - r.buf_start
            r.kept += builder.window(r.seq_id, r.next_start, r.buf[a : a + size].decode("latin-1"),
                                     r.label, r.domain, r.split, r.meta)
            r.next_start += step

    def finish(r: _StreamedRecord) -> None:
        if not r.windowed:
            builder.add(r.record_no, r.seq_id, r.buf.decode("latin-1"), r.label, r.domain, r.split, r.meta)
        elif not r.skip:
            if r.next_start - step + size < r.length:  # the last window, aligned to the record's end
                r.next_start = r.length - size
                emit(r, r.length)
            builder.end_windows(r.record_no, r.seq_id, r.length, r.kept)

    for line_no, line in enumerate(source, 1):
        if line[:1] == b">":
            if rec is not None:
                finish(rec)
                yield from builder.drain()
            record_no += 1
            rec = _StreamedRecord(record_no, line[1:].decode("utf-8", errors="replace").strip(), cfg)
            continue
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        if rec is None:
            raise SequenceFormatError(builder.path, 1, f"malformed: line {line_no} is not inside a record "
                                                       "(expected a '>' header first)")
        rec.length += len(line)
        if rec.skip:
            continue
        rec.buf += line
        if not rec.windowed and rec.length > size:  # a long record: admit it once, then window it
            rec.windowed = True
            rec.skip = not builder.admit(rec.record_no, rec.seq_id)
            if rec.skip:
                rec.buf = bytearray()
                continue
            builder.seen.add(rec.seq_id)
        if rec.windowed:
            emit(rec, rec.length)
            keep_from = min(rec.next_start, rec.length - size)
            if keep_from - rec.buf_start > max(size, 1 << 20):
                del rec.buf[: keep_from - rec.buf_start]
                rec.buf_start = keep_from
            yield from builder.drain()
    if rec is not None:
        finish(rec)


def _iter_fastx(path: str, cfg: ReadConfig, builder: _BatchBuilder,
                byte_range: tuple[int, int] | None = None) -> Iterator[pa.RecordBatch]:
    import dnaio

    record_no = 0
    if cfg.clean.long_records == "window" and path.lower().removesuffix(".gz").endswith(FASTA_SPLITTABLE):
        yield from _stream_windowed(path, byte_range, cfg, builder)
        return
    source: Any = path if byte_range is None else _open_range(path, byte_range)
    try:
        with dnaio.open(source, fileformat="fasta" if byte_range is not None else None) as reader:
            for rec in reader:
                record_no += 1
                seq_id, label, domain, split, meta = header_fields(rec.name, cfg)
                builder.add(record_no, seq_id, rec.sequence, label, domain, split, meta)
                del rec  # a windowed chromosome: do not keep the parsed record alive while windows go out
                yield from builder.drain()
    except dnaio.UnknownFileFormat as e:
        raise SequenceFormatError(builder.path, None, f"not FASTA or FASTQ (binary or unknown content): {e}") from e
    except dnaio.FileFormatError as e:
        raise SequenceFormatError(builder.path, record_no + 1, f"malformed: {e}") from e
    except EOFError as e:
        raise SequenceFormatError(
            builder.path, record_no + 1, f"truncated compressed file after {record_no} records: {e}"
        ) from e
    except (OSError, UnicodeDecodeError) as e:  # e.g. gzip CRC errors, 'Not a gzipped file'
        raise SequenceFormatError(builder.path, record_no + 1, f"unreadable: {e}") from e
    finally:
        if source is not path:
            source.close()
    last = builder.flush()
    if last is not None:
        yield last


def _open_range(path: str, byte_range: tuple[int, int]) -> BinaryIO:
    """The records of an uncompressed FASTA whose header starts in ``[start, end)``."""
    with open(path, "rb") as f:
        start, end = fasta_record_start(f, byte_range[0]), fasta_record_start(f, byte_range[1])
    return io.BufferedReader(_ByteRange(path, start, end), buffer_size=1 << 20)


def _stream_windowed(path: str, byte_range: tuple[int, int] | None, cfg: ReadConfig,
                     builder: _BatchBuilder) -> Iterator[pa.RecordBatch]:
    import gzip

    if byte_range is not None:
        f = _open_range(path, byte_range)
    else:
        f = gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb", buffering=1 << 20)
    try:
        yield from _iter_fasta_windowed(f, cfg, builder)
    except EOFError as e:
        raise SequenceFormatError(builder.path, builder.report.read + 1,
                                  f"truncated compressed file after {builder.report.read} records: {e}") from e
    except OSError as e:  # gzip CRC errors, 'Not a gzipped file'
        raise SequenceFormatError(builder.path, builder.report.read + 1, f"unreadable: {e}") from e
    finally:
        f.close()
    last = builder.flush()
    if last is not None:
        yield last


def _table_batches(path: str, fmt: str, batch_size: int, row_groups: list[int] | None = None) -> Iterator[pa.RecordBatch]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError on junk
            raise SequenceFormatError(path, None, f"not a readable Parquet file: {e}") from e
        try:
            yield from pf.iter_batches(batch_size=batch_size, row_groups=row_groups)
        except (pa.ArrowException, OSError) as e:
            raise SequenceFormatError(path, None, f"corrupt Parquet data: {e}") from e
        return
    import pyarrow.csv as pacsv

    name = path.lower().removesuffix(".gz")
    delimiter = "\t" if name.endswith((".tsv", ".txt")) else ","
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True, column_types=None),
        )
        yield from reader
    except (pa.ArrowException, UnicodeDecodeError, OSError) as e:
        raise SequenceFormatError(path, None, f"malformed delimited text: {e}") from e


def _iter_table(path: str, fmt: str, cfg: ReadConfig, builder: _BatchBuilder,
                row_groups: list[int] | None = None, first_record: int = 1) -> Iterator[pa.RecordBatch]:
    record_no = first_record - 1
    id_col = None
    for batch in _table_batches(path, fmt, cfg.batch_size, row_groups):
        try:
            names = batch.schema.names
        except UnicodeDecodeError as e:
            raise SequenceFormatError(path, None, f"column names are not valid UTF-8: {e}") from e
        if id_col is None:
            id_col = cfg.id_column or next((c for c in ("seq_id", "id") if c in names), None)
            missing = [c for c in (id_col, cfg.sequence_column) if c is None or c not in names]
            if missing:
                raise SequenceFormatError(
                    path, None,
                    f"missing column(s) {missing or [cfg.id_column]} (id column: {cfg.id_column or 'seq_id/id'}, "
                    f"sequence column: {cfg.sequence_column!r}); found {names}",
                )
        data = batch.to_pydict()
        n = batch.num_rows
        known = {id_col, cfg.sequence_column, cfg.label_column, cfg.domain_column, cfg.split_column}
        extra = [c for c in names if c not in known]

        def col(name: str | None) -> list:
            return data[name] if name and name in data else [None] * n

        ids, seqs = data[id_col], data[cfg.sequence_column]
        labels, domains, splits = col(cfg.label_column), col(cfg.domain_column), col(cfg.split_column)
        for i in range(n):
            record_no += 1
            raw = seqs[i]
            sid = None if ids[i] is None else str(ids[i])
            if raw is None:
                builder.report.read += 1
                builder.report.reject(path, record_no, sid or "", "empty: sequence is null")
                continue
            meta = {c: data[c][i] for c in extra if data[c][i] is not None} or None
            builder.add(record_no, sid, str(raw), labels[i], domains[i], splits[i], meta)
            yield from builder.drain()
    last = builder.flush()
    if last is not None:
        yield last


def verify_sidecar(path: str) -> None:
    """If ``<file>.sha256`` exists (``sha256sum`` format or a bare digest), check the file
    against it. A plain FASTA cut at a record boundary parses cleanly; only a checksum (or a
    record count) can reveal the truncation."""
    side = Path(path + ".sha256")
    if not side.is_file():
        return
    from genoray.artifacts import sha256_file

    words = side.read_text().split()
    expected = words[0].lower() if words else ""
    got = sha256_file(path)
    if got != expected:
        raise SequenceFormatError(path, None, f"checksum_mismatch: sha256 {got[:16]}... != {side.name} {expected[:16]}...")


def iter_sequences(
    paths: str | Path | Iterable[str | Path],
    cfg: ReadConfig | None = None,
    report: ReadReport | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream cleaned record batches from one or more files.

    Args:
        paths: a file or an iterable of files (FASTA/FASTQ[.gz], Parquet, CSV/TSV[.gz]).
        cfg: columns, header tags and cleaning policy.
        report: filled in place with read/accepted/rejected counts (pass one in to read it
            after the iterator is exhausted).

    Yields:
        ``pyarrow.RecordBatch`` with :data:`genoray.schema.RECORD_SCHEMA`. Ids are unique
        across all files of one call.

    Raises:
        SequenceFormatError: a file is missing, unparseable, truncated or has the wrong columns.
    """
    cfg = cfg or ReadConfig()
    report = report if report is not None else ReadReport()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    seen: set[str] = set()
    for p in paths:
        yield from iter_file(p, cfg, report, seen)
    report.check()


def iter_file(
    path: str | Path,
    cfg: ReadConfig,
    report: ReadReport,
    seen: set[str] | None = None,
    row_groups: list[int] | None = None,
    first_record: int = 1,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream one file (or, for Parquet, some of its row groups; for uncompressed FASTA, the
    records whose header starts in ``byte_range``) into cleaned batches.

    ``seen`` carries ids across calls for duplicate detection; ``first_record`` numbers the
    records of a row-group range as in the whole file. In a byte range, record numbers count
    from the range's first record, and errors name the range. A ``.sha256`` sidecar is checked
    by the range that starts at byte 0 (once per file, not once per range).
    """
    path = str(path)
    if not Path(path).is_file():
        raise SequenceFormatError(path, None, "no such file")
    fmt = detect_format(path)
    if byte_range is None or byte_range[0] == 0:
        verify_sidecar(path)
    report.files.append(path)
    label = path if byte_range is None else f"{path} [bytes {byte_range[0]}-{byte_range[1]}]"
    builder = _BatchBuilder(label, cfg, report, seen)
    if fmt == "fastx":
        if row_groups is not None:
            raise ValueError(f"{path}: row groups only apply to Parquet")
        if byte_range is not None and not path.lower().endswith(FASTA_SPLITTABLE):
            raise ValueError(f"{path}: byte ranges only apply to uncompressed FASTA")
        yield from _iter_fastx(path, cfg, builder, byte_range)
    else:
        yield from _iter_table(path, fmt, cfg, builder, row_groups, first_record)


def read_sequences(
    paths: str | Path | Iterable[str | Path], cfg: ReadConfig | None = None
) -> tuple[pa.Table, ReadReport]:
    """Read files completely into one Arrow table (see :func:`iter_sequences`)."""
    report = ReadReport()
    batches = list(iter_sequences(paths, cfg, report))
    table = pa.Table.from_batches(batches, schema=schema.RECORD_SCHEMA)
    return table, report


_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def reverse_complement(seq: str) -> str:
    """Reverse complement of a cleaned (A/C/G/T/N) sequence."""
    return seq.translate(_COMPLEMENT)[::-1]


def tile(seq: str, size: int, overlap: int) -> list[str]:
    """Cut ``seq`` into windows of ``size`` bp overlapping by ``overlap``; the last window
    is aligned to the end so every base is covered and no window is shorter than needed."""
    return [seq[s : s + size] for s in window_starts(len(seq), size, overlap)]


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """0-based starts of ``size``-bp windows overlapping by ``overlap`` that cover ``length`` bp
    (the last window aligned to the end)."""
    if size <= 0 or overlap < 0 or overlap >= size:
        raise ValueError(f"need size > overlap >= 0, got size={size}, overlap={overlap}")
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, size - overlap))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts
