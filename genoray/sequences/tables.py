"""Parquet and CSV/TSV tables -> cleaned batches (columns per :class:`~genoray.config.ReadConfig`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from genoray.config import ReadConfig
from genoray.infra import fs
from genoray.sequences.builder import _BatchBuilder
from genoray.sequences.report import SequenceFormatError

log = logging.getLogger(__name__)


def _table_batches(path: str, fmt: str, batch_size: int, row_groups: list[int] | None = None) -> Iterator[pa.RecordBatch]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(fs.open_input(path) if fs.is_remote(path) else path)
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
        source: Any = path
        if fs.is_remote(path):
            source = fs.open_input(path)
            if path.lower().endswith(".gz"):
                source = pa.CompressedInputStream(source, "gzip")
        reader = pacsv.open_csv(
            source,
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

        def col(name: str | None, data: dict = data, n: int = n) -> list:
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
