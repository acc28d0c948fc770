"""Batch prediction output: JSON lines, TSV or Parquet, optionally with each neighbour's
sequence and metadata (``genoray predict --format ... --with-sequences``)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import TextIO, cast

from genoray.config import ReadConfig
from genoray.embedding.store import EmbeddingStore
from genoray.index.manifest import IndexManifest
from genoray.infra import fs
from genoray.infra.artifacts import strict_dumps as dumps
from genoray.sequences import read_sequences


class PredictionWriter:
    """Predictions as JSON lines, TSV (one row per query; neighbours as ``id:label:similarity``
    joined by ``;``) or Parquet (probabilities one column per class, neighbours a list of structs).
    ``path`` may be an ``s3://``/``gs://`` URI: written to a local temp file, put there at
    :meth:`close` in one upload (readers see the whole file or none)."""

    def __init__(self, path: str | None, fmt: str, classes: list[str], with_sequences: bool = False):
        self.remote = path if path and fs.is_remote(path) else None
        if self.remote:
            fd, path = tempfile.mkstemp(prefix="genoray-predictions-", suffix=f".{fmt}")
            os.close(fd)
        self.path, self.fmt, self.classes, self.n, self.seqs = path, fmt, classes, 0, with_sequences
        self.tables: list = []
        self.f: TextIO | None = None
        if fmt != "parquet":
            self.f = open(path, "w") if path else sys.stdout  # noqa: SIM115 (closed in close())
            if fmt == "tsv":
                extra = ["neighbour_sequences"] if with_sequences else []
                self.f.write("\t".join(["seq_id", "label", "ood_score", *(f"p_{c}" for c in classes), "neighbours",
                                        *extra]) + "\n")

    def write(self, preds: list[dict]) -> None:
        """Write one batch of prediction dicts in the chosen format."""
        self.n += len(preds)
        f = cast(TextIO, self.f)  # open for jsonl and tsv (parquet collects tables instead)
        if self.fmt == "jsonl":
            for p in preds:
                f.write(dumps(p) + "\n")
        elif self.fmt == "tsv":
            for p in preds:
                nb = ";".join(f"{x['seq_id']}:{x['label']}:{x['similarity']}" for x in p["neighbours"])
                extra = [";".join(str(x.get("sequence")) for x in p["neighbours"])] if self.seqs else []
                f.write("\t".join([str(p["seq_id"]), p["label"], str(p["ood_score"]),
                                    *(str(p["probabilities"][c]) for c in self.classes), nb, *extra]) + "\n")
        elif preds:
            import pyarrow as pa

            cols = {"seq_id": [p["seq_id"] for p in preds], "label": [p["label"] for p in preds],
                    "ood_score": [p["ood_score"] for p in preds]}
            for c in self.classes:
                cols[f"p_{c}"] = [p["probabilities"][c] for p in preds]
            cols["neighbours"] = [p["neighbours"] for p in preds]
            self.tables.append(pa.Table.from_pydict(cols))

    def close(self, commit: bool = True) -> None:
        """Write the Parquet file (collected batches) or close the text output; a remote ``path``
        gets the file only with ``commit`` (an interrupted run puts nothing there)."""
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self.tables:
                pq.write_table(pa.concat_tables(self.tables, promote_options="default"), self.path)
        elif self.path and self.f is not None:
            self.f.close()
        if self.remote and self.path:
            try:
                if commit:
                    fs.upload(self.path, self.remote)
            finally:
                os.unlink(self.path)


def join_neighbour_records(index_manifest: IndexManifest, rows: list[dict]) -> int:
    """Add each neighbour's ``sequence`` and ``meta`` (read again from the source files of the
    store the index was built from, read as when embedded); returns how many were not found."""

    if index_manifest.source_store is None:
        raise ValueError("the index records no source store to read the neighbours' sequences from")
    store = EmbeddingStore(index_manifest.source_store, verify=False)
    wanted = {nb["seq_id"] for r in rows for nb in r["neighbours"]}
    records = store.source_records(wanted) or {}
    found = {sid: (seq, json.loads(meta) if meta else None) for sid, (seq, meta) in records.items()}
    missing = 0
    for r in rows:
        for nb in r["neighbours"]:
            seq, meta = found.get(nb["seq_id"], (None, None))
            nb["sequence"], nb["meta"] = seq, meta
            missing += seq is None
    return missing


def adapt_from_files(predictor, target: list[str] | None, target_source: list[str] | None,
                     read_cfg: ReadConfig) -> dict | None:
    """Adapt ``predictor`` to the unlabeled ``target`` files (the safe rule,
    :func:`genoray.scoring.adapt.safe_target`), with the labeled ``target_source`` files for its
    importance-weighted temperature; return the adaptation's report (``None`` without a target).
    Both are read with ``read_cfg`` (the index's cleaning policy)."""
    if not target:
        if target_source:
            raise ValueError("--target-source needs --target (the unlabeled target sample)")
        return None
    rows, _ = read_sequences(target, read_cfg)
    source = None
    if target_source:
        src, _ = read_sequences(target_source, read_cfg)
        labels = src["label"].to_pylist()
        if not labels or any(v is None for v in labels):
            raise ValueError(f"{' '.join(target_source)}: --target-source needs a label on every row "
                             f"({sum(v is None for v in labels)} of {len(labels)} rows have none); give labeled rows")
        source = (src["sequence"].to_pylist(), labels, src["seq_id"].to_pylist())
    return predictor.adapt_to(rows["sequence"].to_pylist(), source=source).report()
