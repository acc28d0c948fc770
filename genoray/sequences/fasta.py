"""FASTA/FASTQ (optionally gzipped) records -> cleaned batches: ``dnaio`` for whole files, a
line streamer for windowed long records, and byte ranges of uncompressed FASTA."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa

from genoray.config import ReadConfig
from genoray.infra import fs
from genoray.sequences.builder import _BatchBuilder
from genoray.sequences.report import SequenceFormatError

log = logging.getLogger(__name__)


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
        self._f: Any = fs.open_input(path)
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


LINE_CAP = 1 << 20  # bytes of one header line; longer: the input is refused, never held


def record_cap(cfg: ReadConfig) -> int:
    """Decompressed bytes of one FASTA record that :class:`_Bounded` lets a parser hold:
    ``max_length`` bases twice over (line breaks, down to one base a line) plus a header line.
    A record is rejected as too long well before it (``CleanPolicy.max_length``)."""
    return 2 * cfg.clean.max_length + LINE_CAP


class _Bounded(io.RawIOBase):
    """Decompressed FASTA with each record cut at ``cap`` bytes (the rest of it dropped until the
    next ``>`` at a line start) and each header line refused past :data:`LINE_CAP`: the parser
    behind it (dnaio holds whole records) never holds more than ``cap`` bytes of one record,
    however far a gzip bomb expands. A cut record still has over ``max_length`` bases, so it is
    rejected as ``too_long`` exactly as the whole record would have been."""

    def __init__(self, inner: BinaryIO, cap: int, path: str):
        self._in, self.cap, self.path = inner, cap, path
        self.since = 0  # bytes of the current record so far
        self.header: int | None = 0  # bytes of its header line so far (None: header ended)
        self.skipping, self.prev, self.records = False, b"\n", 0
        self._pending = b""

    def readable(self) -> bool:
        return True

    def _start(self, data: bytes, at: int) -> int:
        """Offset of the next record start (``>`` at a line start) at or after ``at``, or -1."""
        if at == 0 and data[:1] == b">" and self.prev == b"\n":
            return 0
        i = data.find(b"\n>", max(0, at - 1))
        return i + 1 if i >= 0 else -1

    def _keep(self, seg: bytes, out: bytearray) -> None:
        if self.header is not None:
            nl = seg.find(b"\n")
            self.header = None if nl >= 0 else self.header + len(seg)
            if self.header is not None and self.header > LINE_CAP:
                raise SequenceFormatError(self.path, self.records, f"header line over {LINE_CAP} bytes "
                                                                   "(decompressed): not FASTA, or a decompression bomb")
        room = self.cap - self.since
        if len(seg) > room:
            seg, self.skipping = seg[:room], True
            log.warning("%s: record %d is over %d decompressed bytes: the rest of it is not read (rejected as "
                        "too long)", self.path, self.records, self.cap)
        out += seg
        self.since += len(seg)

    def _filter(self, data: bytes) -> bytearray:
        out, pos = bytearray(), 0
        while pos < len(data):
            k = self._start(data, pos)
            if k == pos:  # a new record
                if self.skipping:
                    out += b"\n"
                self.skipping, self.since, self.header = False, 0, 0
                self.records += 1
                k = self._start(data, pos + 1)
            end = len(data) if k < 0 else k
            if not self.skipping:
                self._keep(data[pos:end], out)
            pos = end
        self.prev = data[-1:] or self.prev
        return out

    def readinto(self, buf) -> int:
        while not self._pending:
            data = self._in.read(max(len(buf), 1 << 16))
            if not data:
                return 0
            self._pending = bytes(self._filter(data))
        n = min(len(self._pending), len(buf))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._in.close()
        super().close()


class _CappedLines(_Bounded):
    """Decompressed FASTQ with every line held to ``cap`` bytes (:func:`record_cap`) before dnaio,
    which holds whole records, sees it. ``cut``: the rest of a longer line is dropped (sequence
    and quality lines are cut alike, so the record stays well-formed and, still over
    ``max_length``, is rejected as ``too_long`` exactly as the whole record would have been);
    otherwise (``long_records="window"``, where a cut would silently lose bases) it is refused."""

    def __init__(self, inner: BinaryIO, cap: int, path: str, cut: bool):
        super().__init__(inner, cap, path)
        self.cut, self.line, self.lines = cut, 0, 0  # bytes of the current line; lines before it

    def _filter(self, data: bytes) -> bytearray:
        out, pos = bytearray(), 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl
            room = self.cap - self.line
            if end - pos > room:
                if not self.cut:
                    raise SequenceFormatError(self.path, self.lines // 4 + 1, (
                        f"a line over {self.cap} decompressed bytes (2 x max_length + {LINE_CAP}): a decompression "
                        "bomb, or a read longer than that: window mode streams long reads from FASTA only "
                        "(convert the file to FASTA), or raise max_length"))
                if room:
                    log.warning("%s: record %d has a line over %d decompressed bytes: the rest of it is not read "
                                "(rejected as too long)", self.path, self.lines // 4 + 1, self.cap)
                end_kept = pos + room
            else:
                end_kept = end
            out += data[pos:end_kept]
            self.line += end_kept - pos
            if nl < 0:
                break
            out += b"\n"
            self.line, self.lines, pos = 0, self.lines + 1, nl + 1
        return out


class _StreamedRecord:
    """State of one FASTA record read line by line (long records never held whole)."""

    def __init__(self, record_no: int, header: str, cfg: ReadConfig):
        self.record_no = record_no
        self.seq_id, self.label, self.domain, self.split, self.meta = header_fields(header, cfg)
        self.buf = bytearray()  # bases from offset buf_start of the record
        self.buf_start = self.length = self.next_start = self.kept = 0
        self.windowed = self.skip = False


def _lines(source: BinaryIO, limit: int = LINE_CAP) -> Iterator[tuple[bool, bytes]]:
    """``(starts a line, piece)`` of at most ``limit`` bytes each: a longer line (a gzip bomb
    of one line) comes in pieces instead of being held whole."""
    start = True
    while piece := source.readline(limit):
        yield start, piece
        start = piece.endswith(b"\n")


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

    for line_no, (at_start, line) in enumerate(_lines(source), 1):
        if at_start and line[:1] == b">":
            if not line.endswith(b"\n") and len(line) >= LINE_CAP:
                raise SequenceFormatError(builder.path, record_no + 1, f"header line over {LINE_CAP} bytes: not "
                                                                       "FASTA, or a decompression bomb")
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

    source: Any = path
    fileformat = "fasta" if byte_range is not None else None
    raw = None
    if byte_range is not None:
        source = _open_range(path, byte_range)
    elif fs.is_remote(path) or path.lower().endswith(".gz"):
        import gzip  # dnaio sniffs neither compression nor format from a stream

        raw = source = _open_whole(path)
        if path.lower().endswith(".gz"):
            source = gzip.GzipFile(fileobj=raw, mode="rb")
        fileformat = "fastq" if path.lower().removesuffix(".gz").endswith((".fq", ".fastq")) else "fasta"
        if fileformat == "fasta" and source is not raw:  # decompressed: each record bounded before dnaio holds it
            source = io.BufferedReader(_Bounded(source, record_cap(cfg), builder.path), buffer_size=1 << 20)
        elif source is not raw:  # decompressed FASTQ: each line bounded before dnaio holds its record
            source = io.BufferedReader(_CappedLines(source, record_cap(cfg), builder.path,
                                                    cut=cfg.clean.long_records == "reject"), buffer_size=1 << 20)
    try:
        with dnaio.open(source, fileformat=fileformat) as reader:
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
        if raw is not None:
            raw.close()
    last = builder.flush()
    if last is not None:
        yield last


def _open_range(path: str, byte_range: tuple[int, int]) -> BinaryIO:
    """The records of an uncompressed FASTA whose header starts in ``[start, end)``."""

    with fs.open_input(path) as f:
        start, end = fasta_record_start(f, byte_range[0]), fasta_record_start(f, byte_range[1])
    return io.BufferedReader(_ByteRange(path, start, end), buffer_size=1 << 20)


def _open_whole(path: str) -> BinaryIO:
    """A buffered reader of a whole local file or object (compressed bytes as stored)."""

    if not fs.is_remote(path):
        return open(path, "rb", buffering=1 << 20)
    raw: Any = fs.open_input(path)  # a pyarrow NativeFile: readinto, seek, close
    return io.BufferedReader(raw, buffer_size=1 << 20)


def _stream_windowed(path: str, byte_range: tuple[int, int] | None, cfg: ReadConfig,
                     builder: _BatchBuilder) -> Iterator[pa.RecordBatch]:
    import gzip

    f: Any
    if byte_range is not None:
        f = _open_range(path, byte_range)
    else:
        raw = _open_whole(path)
        f = gzip.GzipFile(fileobj=raw, mode="rb") if path.lower().endswith(".gz") else raw
    try:
        yield from _iter_fasta_windowed(f, cfg, builder)
    except EOFError as e:
        raise SequenceFormatError(builder.path, builder.report.read + 1,
                                  f"truncated compressed file after {builder.report.read} records: {e}") from e
    except OSError as e:  # gzip CRC errors, 'Not a gzipped file'
        raise SequenceFormatError(builder.path, builder.report.read + 1, f"unreadable: {e}") from e
    finally:
        f.close()
        if byte_range is None:
            raw.close()
    last = builder.flush()
    if last is not None:
        yield last
