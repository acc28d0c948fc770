"""Inputs -> files -> units of work with stable keys, for resumable jobs.

A unit is a file, a range of a Parquet file's row groups (about ``rows_per_unit`` rows), or a
byte range of a large uncompressed FASTA file, cut at record headers. Its key hashes the
source (absolute path, size, mtime, row groups, byte range), the reading config and the
encoder fingerprint, so a changed input or encoder never reuses stale results.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from genoray.config import EmbedConfig, ReadConfig, to_dict
from genoray.infra import fs
from genoray.infra.artifacts import sha256_json
from genoray.sequences.fasta import FASTA_SPLITTABLE
from genoray.sequences.reader import detect_format
from genoray.sequences.report import SequenceFormatError

log = logging.getLogger(__name__)


def expand_inputs(inputs: str | Path | Iterable[str | Path]) -> list[Any]:
    """Files from paths, directories (recursively, known extensions) and glob patterns; an
    ``s3://`` / ``gs://`` prefix expands to its objects of known file types (URIs stay strings)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out: list[Any] = []
    for item in inputs:
        if fs.is_remote(item):
            out.extend(_expand_remote(str(item)))
            continue
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    try:
                        detect_format(f)
                    except SequenceFormatError:
                        log.debug("skipping %s: not a sequence file type", f)
                        continue
                    out.append(f)
        elif any(c in str(item) for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            if not matches:
                raise SequenceFormatError(str(item), None, "glob matched no files")
            out.extend(matches)
        else:
            out.append(p)
    return out


def _expand_remote(uri: str) -> list[str]:
    if any(c in uri for c in "*?["):
        raise SequenceFormatError(uri, None, "glob patterns are not supported on object storage; name a prefix")
    if fs.is_file(uri):
        return [uri]
    out = []
    for rel in fs.list_files(uri):
        if rel.rsplit("/", 1)[-1].startswith("."):
            continue
        try:
            detect_format(rel)
        except SequenceFormatError:
            continue
        out.append(fs.join(uri, rel))
    if not out:
        raise SequenceFormatError(uri, None, "no such file (no object or prefix with sequence files)")
    return out


SPLIT_FIELDS = ("train_split", "test_split", "test_fraction", "split_seed", "split_cutoffs")


def key_fields(read_cfg: ReadConfig) -> dict[str, Any]:
    """The reading settings a unit's key hashes. The held-out-split settings count only when a
    test split is drawn (``test_fraction > 0``; then as ``split_names``, the key stores have
    always had), so stores written before they existed keep their keys and resume instead of
    re-embedding everything."""
    fields = to_dict(read_cfg)
    for name in SPLIT_FIELDS:
        fields.pop(name, None)
    if read_cfg.test_fraction:
        fields.update(test_fraction=read_cfg.test_fraction, split_seed=read_cfg.split_seed,
                      split_names=read_cfg.split_names, split_cutoffs=read_cfg.split_cutoffs)
    return fields


def plan_units(files: list[Any], fp: str, read_cfg: ReadConfig, rows_per_unit: int,
               bytes_per_unit: int = EmbedConfig.bytes_per_unit) -> list[dict[str, Any]]:
    """Units of work with stable keys (see the module docstring): a file, a range of a Parquet
    file's row groups, or a byte range of a large uncompressed FASTA file."""
    units = []
    cfg_hash = sha256_json(key_fields(read_cfg))[:16]
    for f in files:
        path = str(f) if fs.is_remote(f) else str(Path(f).resolve())
        kind, st_size, st_mtime_ns = fs.info(path)
        if kind != "file":
            raise SequenceFormatError(str(f), None, "no such file")
        ranges: list[tuple[list[int] | None, int]] = [(None, 1)]
        if detect_format(path) == "parquet":
            try:
                with fs.open_input(path) as fh:
                    meta = pq.ParquetFile(fh).metadata
            except Exception:  # junk: one unit that will fail with a clear error
                meta = None
            if meta is not None and meta.num_row_groups > 1:
                ranges, group, rows, first = [], [], 0, 1
                for i in range(meta.num_row_groups):
                    group.append(i)
                    rows += meta.row_group(i).num_rows
                    if rows >= rows_per_unit:
                        ranges.append((group, first))
                        first += rows
                        group, rows = [], 0
                if group:
                    ranges.append((group, first))
        byte_ranges: list[list[int] | None] = [None]
        if path.lower().endswith(FASTA_SPLITTABLE) and st_size > bytes_per_unit:
            cuts = list(range(0, st_size, bytes_per_unit)) + [st_size]
            byte_ranges = [[a, b] for a, b in zip(cuts, cuts[1:])]
        for row_groups, first in ranges:
            for byte_range in byte_ranges:
                ident = {"path": path, "size": st_size, "mtime_ns": st_mtime_ns, "row_groups": row_groups,
                         "read_cfg": cfg_hash, "encoder": fp}
                if byte_range is not None:  # keys of unsplit files stay as they were (resumable stores)
                    ident["byte_range"] = byte_range
                units.append({"key": sha256_json(ident)[:24], "path": path, "row_groups": row_groups,
                              "first_record": first, "byte_range": byte_range})
    return units
