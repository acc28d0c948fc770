"""Entry points: :func:`iter_sequences`, :func:`iter_file` and :func:`read_sequences` over any
supported file type, with ``.sha256`` sidecar checks."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from genoray.config import ReadConfig
from genoray.infra import fs
from genoray.sequences import records
from genoray.sequences.builder import _BatchBuilder
from genoray.sequences.fasta import FASTA_SPLITTABLE, _iter_fastx
from genoray.sequences.report import ReadReport, SequenceFormatError
from genoray.sequences.splits import fit_cutoffs
from genoray.sequences.tables import _iter_table

log = logging.getLogger(__name__)

FASTX_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".fas", ".fq", ".fastq")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")


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


def verify_sidecar(path: str) -> None:
    """If ``<file>.sha256`` exists (``sha256sum`` format or a bare digest), check the file
    against it. A plain FASTA cut at a record boundary parses cleanly; only a checksum (or a
    record count) can reveal the truncation."""
    side = path + ".sha256"
    if not fs.is_file(side):
        return
    words = fs.read_bytes(side).decode(errors="replace").split()
    expected = words[0].lower() if words else ""
    got = fs.sha256(path)
    if got != expected:
        name = side.rsplit("/", 1)[-1]
        raise SequenceFormatError(path, None, f"checksum_mismatch: sha256 {got[:16]}... != {name} {expected[:16]}...")


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
        ``pyarrow.RecordBatch`` with :data:`genoray.sequences.records.RECORD_SCHEMA`. Ids are unique
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
    try:
        found = fs.is_file(path)
    except OSError as e:  # object store unreachable, no credentials, no bucket
        raise SequenceFormatError(path, None, f"cannot read: {e}") from e
    if not found:
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
    table = pa.Table.from_batches(batches, schema=records.RECORD_SCHEMA)
    return table, report


def with_split_cutoffs(read_cfg: ReadConfig, files: list) -> ReadConfig:
    """``read_cfg`` with ``split_cutoffs`` fitted on the records of ``files`` that have no split
    (one streaming pass; files that cannot be read are skipped here and reported by the job)."""
    probe = dataclasses.replace(read_cfg, test_fraction=0.0, split_cutoffs=())

    def unsplit():
        seen: set[str] = set()
        for f in files:
            try:
                for batch in iter_file(f, probe, ReadReport(), set()):
                    cols = batch.to_pydict()
                    for sid, lab, sp, meta in zip(cols[records.SEQ_ID], cols[records.LABEL], cols[records.SPLIT],
                                                  cols[records.META]):
                        if sp is not None:
                            continue
                        if meta and '"source_id"' in meta:  # a window: its record decides
                            sid = json.loads(meta)["source_id"]
                            if sid in seen:
                                continue
                            seen.add(sid)
                        yield sid, lab
            except SequenceFormatError:
                continue

    cutoffs = fit_cutoffs(unsplit(), read_cfg.test_fraction, read_cfg.split_seed)
    return dataclasses.replace(read_cfg, split_cutoffs=cutoffs)
