"""Real embedding stores of synthetic, embedding-like vectors, for index tests and benchmarks.

Vectors are a rank-``rank`` signal plus noise (FAISS behaves on them as on real embeddings;
i.i.d. Gaussians are a worst case no index handles well). The files are ordinary stores
(``store.json`` with sha256 per part), so every stage reads them exactly as it reads a store
written by :func:`genoray.embed.embed_sequences`; this only skips the encoder, which would
dominate the time of a 1M-row index test.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoray import schema
from genoray.artifacts import read_json, sha256_file, write_json


def _basis(d: int, rank: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rank, d)).astype(np.float32)


def _write_part(root: Path, name: str, start: int, rows: int, d: int, rank: int, seed: int,
                test_fraction: float, prefix: str) -> dict:
    rng = np.random.default_rng([seed, start])
    basis = _basis(d, rank, seed)
    x = rng.standard_normal((rows, rank)).astype(np.float32) @ basis
    x += 0.3 * rng.standard_normal((rows, d)).astype(np.float32)
    ids = [f"{prefix}{i}" for i in range(start, start + rows)]
    split = np.where(rng.random(rows) < test_fraction, "test", "train")
    label = np.where(x[:, 0] > 0, "a", "b")
    t = pa.table({schema.SEQ_ID: pa.array(ids, pa.string()), schema.LABEL: pa.array(label, pa.string()),
                  schema.DOMAIN: pa.nulls(rows, pa.string()), schema.SPLIT: pa.array(split, pa.string()),
                  schema.SEQ_HASH: pa.array(ids, pa.string()),
                  schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d)},
                 schema=schema.embedding_schema(d))
    f = f"shards/{name}.parquet"
    pq.write_table(t, root / f)
    return {"file": f, "rows": rows, "sha256": sha256_file(root / f), "source": f"synthetic:{name}",
            "rejects": None, "byte_range": None, "row_groups": None}


def write_synthetic_store(path: str | Path, n: int, d: int, parts: int = 8, test_fraction: float = 0.0,
                          seed: int = 0, rank: int = 32) -> Path:
    """A store of ``n`` rows of dimension ``d`` in ``parts`` Parquet parts (split ``train``,
    a ``test_fraction`` of ``test``)."""
    root = Path(path)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, parts + 1).astype(int)
    metas = [_write_part(root, f"part-{i:05d}", int(lo), int(hi - lo), d, rank, seed, test_fraction, "s")
             for i, (lo, hi) in enumerate(itertools.pairwise(bounds))]
    encoder = {"type": "synthetic", "config": {"dim": d, "rank": rank, "seed": seed}, "version": 1}
    write_json(root / "encoder.json", encoder)
    write_json(root / "store.json", {"format_version": 2, "encoder": encoder, "fingerprint": f"synthetic-{d}-{seed}",
                                     "dim": d, "status": "complete", "rows": n, "failed": [], "parts": metas,
                                     "counts": {"read": n, "accepted": n, "written": n, "rejected": 0}})
    return root


def append_synthetic_rows(path: str | Path, n_new: int, seed: int = 0, rank: int = 32, shift: float = 0.0) -> list[str]:
    """Add one part of ``n_new`` new rows (ids ``new<i>``) to a synthetic store, as a nightly
    embedding run would; ``shift`` moves them away from the old distribution. Returns the new
    part's file."""
    root = Path(path)
    m = read_json(root / "store.json")
    d = int(m["dim"])
    k = len(m["parts"])
    meta = _write_part(root, f"part-{k:05d}", m["rows"], n_new, d, rank, seed, 0.0, "new")
    if shift:
        t = pq.read_table(root / meta["file"])
        x = t[schema.EMBEDDING].combine_chunks().values.to_numpy().reshape(-1, d) + shift
        t = t.set_column(t.schema.get_field_index(schema.EMBEDDING), schema.EMBEDDING,
                         pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), d))
        pq.write_table(t, root / meta["file"])
        meta["sha256"] = sha256_file(root / meta["file"])
    m["parts"].append(meta)
    m["rows"] += n_new
    for key in ("read", "accepted", "written"):
        m["counts"][key] += n_new
    write_json(root / "store.json", m)
    return [meta["file"]]
