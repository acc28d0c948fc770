"""Real embedding stores of synthetic, embedding-like vectors, for index tests and benchmarks.

Vectors are a rank-``rank`` signal plus noise (FAISS behaves on them as on real embeddings;
i.i.d. Gaussians are a worst case no index handles well). The files are ordinary stores
(``store.json`` with sha256 per part), so every stage reads them exactly as it reads a store
written by :func:`genoray.embedding.job.embed_sequences`; this only skips the encoder, which would
dominate the time of a 1M-row index test.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoray.embedding.shards import SHARDS
from genoray.embedding.store import (
    DOMAIN,
    EMBEDDING,
    LABEL,
    SEQ_HASH,
    SEQ_ID,
    SPLIT,
    EncoderRecord,
    StoreCounts,
    StoreManifest,
    StorePart,
    embedding_schema,
    read_manifest,
    write_encoder_record,
    write_manifest,
)
from genoray.infra.artifacts import sha256_file


def _basis(d: int, rank: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rank, d)).astype(np.float32)


def _write_part(root: Path, name: str, start: int, rows: int, d: int, rank: int, seed: int,
                test_fraction: float, prefix: str) -> StorePart:
    rng = np.random.default_rng([seed, start])
    basis = _basis(d, rank, seed)
    x = rng.standard_normal((rows, rank)).astype(np.float32) @ basis
    x += 0.3 * rng.standard_normal((rows, d)).astype(np.float32)
    ids = [f"{prefix}{i}" for i in range(start, start + rows)]
    split = np.where(rng.random(rows) < test_fraction, "test", "train")
    label = np.where(x[:, 0] > 0, "a", "b")
    t = pa.table({SEQ_ID: pa.array(ids, pa.string()), LABEL: pa.array(label, pa.string()),
                  DOMAIN: pa.nulls(rows, pa.string()), SPLIT: pa.array(split, pa.string()),
                  SEQ_HASH: pa.array(ids, pa.string()),
                  EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d)},
                 schema=embedding_schema(d))
    f = f"{SHARDS}/{name}.parquet"
    pq.write_table(t, root / f)
    return StorePart(file=f, rows=rows, sha256=sha256_file(root / f), source=f"synthetic:{name}",
                     split_rows={str(s): int(c) for s, c in zip(*np.unique(split, return_counts=True))})


def write_synthetic_store(path: str | Path, n: int, d: int, parts: int = 8, test_fraction: float = 0.0,
                          seed: int = 0, rank: int = 32) -> Path:
    """A store of ``n`` rows of dimension ``d`` in ``parts`` Parquet parts (split ``train``,
    a ``test_fraction`` of ``test``)."""
    root = Path(path)
    (root / SHARDS).mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, parts + 1).astype(int)
    metas = [_write_part(root, f"part-{i:05d}", int(lo), int(hi - lo), d, rank, seed, test_fraction, "s")
             for i, (lo, hi) in enumerate(itertools.pairwise(bounds))]
    encoder = {"type": "synthetic", "config": {"dim": d, "rank": rank, "seed": seed}, "version": 1}
    write_encoder_record(root, EncoderRecord(requested=encoder, fitted=encoder))
    write_manifest(root, StoreManifest(format_version=StoreManifest.FORMAT_VERSION, encoder=encoder,
                                       fingerprint=f"synthetic-{d}-{seed}", dim=d, status="complete", rows=n,
                                       counts=StoreCounts(read=n, accepted=n, rejected=0, written=n),
                                       parts=tuple(metas)))
    return root


def append_synthetic_rows(path: str | Path, n_new: int, seed: int = 0, rank: int = 32, shift: float = 0.0) -> list[str]:
    """Add one part of ``n_new`` new rows (ids ``new<i>``) to a synthetic store, as a nightly
    embedding run would; ``shift`` moves them away from the old distribution. Returns the new
    part's file."""
    root = Path(path)
    m = read_manifest(root)
    d = m.dim
    meta = _write_part(root, f"part-{len(m.parts):05d}", m.rows, n_new, d, rank, seed, 0.0, "new")
    if shift:
        t = pq.read_table(root / meta.file)
        x = t[EMBEDDING].combine_chunks().values.to_numpy().reshape(-1, d) + shift
        t = t.set_column(t.schema.get_field_index(EMBEDDING), EMBEDDING,
                         pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), d))
        pq.write_table(t, root / meta.file)
        meta = dataclasses.replace(meta, sha256=sha256_file(root / meta.file))
    c = m.counts
    write_manifest(root, dataclasses.replace(
        m, parts=(*m.parts, meta), rows=m.rows + n_new,
        counts=dataclasses.replace(c, read=c.read + n_new, accepted=c.accepted + n_new, written=c.written + n_new)))
    return [meta.file]
