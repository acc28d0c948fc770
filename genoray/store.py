"""The embedding store written by :func:`genoray.embed.embed_sequences`.

Layout of a store directory::

    store.json                 format_version, encoder spec + fingerprint, dim, status
                               ("complete" | "partial"), counts, failed files, and parts
                               (file, rows, sha256, source file, rejects table)
    encoder.json               the encoder as requested and as fitted (reused on resume)
    shards/<key>.parquet       rows of genoray.schema.embedding_schema(dim)
    shards/<key>.rejects.parquet, shards/<key>.done.json

``store.json`` is written last (atomically), and readers use it, never a glob; each part's
sha256 is verified before it is read. ``verified.json`` records size, mtime and sha256 of each
part when it was last verified, so an unchanged part is not hashed again on every open.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genoray import schema
from genoray.artifacts import read_json, verify_files

FORMAT_VERSION = 2
MANIFEST = "store.json"
VERIFIED = "verified.json"  # size, mtime and sha256 of each part when it was last verified


@dataclass
class Embeddings:
    """In-memory slice of a store: ids, labels, domains, splits and the float32 matrix."""

    ids: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    splits: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def vectors_of(table: pa.Table, dim: int) -> np.ndarray:
    """The embedding column of a store table as a float32 ``(n, dim)`` matrix."""
    emb = table[schema.EMBEDDING].combine_chunks()
    return emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


class EmbeddingStore:
    """A committed, verified embedding store (see the module docstring)."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"{self.path}: not an embedding store (no {MANIFEST})")
        self.manifest = read_json(mpath)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{mpath}: unsupported format_version {self.manifest.get('format_version')}")
        self.hashed = 0
        if verify:  # files unchanged (size, mtime) since their last verification are not re-hashed
            self.hashed = verify_files(self.path, {p["file"]: p["sha256"] for p in self.manifest["parts"]},
                                       record=self.path / VERIFIED)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder_spec(self) -> dict[str, Any]:
        return self.manifest["encoder"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    def iter_tables(self, columns: list[str] | None = None):
        """Stream the parts one at a time (bounded memory)."""
        for p in self.manifest["parts"]:
            yield pq.read_table(self.path / p["file"], columns=columns)

    def table(self, split: str | None = None) -> pa.Table:
        parts = [t if split is None else t.filter(pc.equal(t[schema.SPLIT], split)) for t in self.iter_tables()]
        return pa.concat_tables(parts) if parts else schema.embedding_schema(self.dim).empty_table()

    def load(self, split: str | None = None) -> Embeddings:
        """Load rows (of one split, or all) into memory."""
        t = self.table(split)

        def col(name: str) -> np.ndarray:
            return np.array(t[name].to_pylist(), dtype=object)

        return Embeddings(col(schema.SEQ_ID), col(schema.LABEL), col(schema.DOMAIN), col(schema.SPLIT),
                          vectors_of(t, self.dim))
