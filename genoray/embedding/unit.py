"""One unit of the embedding job: read, clean, embed and commit it (in any process: the
driver with ``use_ray=False``, a Ray actor otherwise; see :mod:`.pool`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from genoray.config import ReadConfig
from genoray.embedding.shards import ShardWriter, UnitFailure, UnitMarker
from genoray.embedding.store import DOMAIN, EMBEDDING, LABEL, SEQ_HASH, SEQ_ID, SPLIT
from genoray.encoders import Encoder
from genoray.infra.runtime import prefetch
from genoray.sequences import ReadReport, SequenceFormatError, iter_file
from genoray.sequences.records import SEQUENCE

TORCH_ENCODERS = ("hf", "fusion")  # encoder spec types that run a transformers model


def embed_table(encoder: Encoder, batch: pa.Table | pa.RecordBatch) -> pa.Table:
    """Embed one Arrow batch of records; returns store rows (no sequence column)."""
    seqs = batch.column(SEQUENCE).to_pylist()
    vecs = np.ascontiguousarray(encoder.embed(seqs), dtype=np.float32)
    hashes = [hashlib.sha1(s.encode()).hexdigest() for s in seqs]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), vecs.shape[1])
    return pa.table({
        SEQ_ID: batch.column(SEQ_ID),
        LABEL: batch.column(LABEL),
        DOMAIN: batch.column(DOMAIN),
        SPLIT: batch.column(SPLIT),
        SEQ_HASH: pa.array(hashes, pa.string()),
        EMBEDDING: emb,
    })


def _ray_node_id() -> str | None:
    """The Ray node this unit ran on (None outside Ray): provenance for node-loss analysis."""
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None


def process_unit(unit: dict[str, Any], encoder: Encoder, read_cfg: ReadConfig, shard_dir: str | Path,
                 batch_size: int, prefetch_batches: int = 0) -> UnitMarker | UnitFailure:
    """Read, clean, embed and commit one unit (:func:`genoray.sequences.plan_units`). Never
    raises for bad input: returns its :class:`~genoray.embedding.shards.UnitMarker`, or a
    :class:`~genoray.embedding.shards.UnitFailure` naming file, record and reason."""
    key = unit["key"]
    report = ReadReport(max_examples=None)
    shard = ShardWriter(shard_dir, key, encoder.dim)
    t0, started = time.perf_counter(), time.time()
    try:
        cfg = dataclasses.replace(read_cfg, batch_size=batch_size)
        for batch in prefetch(iter_file(unit["path"], cfg, report, set(), unit["row_groups"], unit["first_record"],
                                        unit.get("byte_range")), prefetch_batches):
            shard.write(embed_table(encoder, batch))
        shard.close()
    except SequenceFormatError as e:
        shard.abort()
        return UnitFailure(key=key, path=unit["path"], error=str(e))
    report.check()
    return shard.commit(report, {"started_at": round(started, 3), "seconds": round(time.perf_counter() - t0, 3),
                                 "worker_pid": os.getpid(), "node": os.uname().nodename, "ray_node": _ray_node_id()},
                        unit)
