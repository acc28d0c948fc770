"""``build_index``: a FAISS index over L2-normalised embeddings with ids and labels beside it.

Cosine similarity is the metric: vectors are L2-normalised and searched by inner product, so a
similarity of 1 means the same direction. An index directory holds::

    manifest.json   format_version, index type, metric, dim, ntotal, encoder spec + fingerprint,
                    recall@10 measured against exact numpy search, sha256 of every file
    index.faiss     faiss.write_index output
    ids.parquet     row i = vector i: seq_id, label

``VectorIndex.load`` verifies every sha256 before reading (a flipped byte in a FAISS file would
otherwise load and serve wrong answers without complaint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoray.artifacts import read_json, sha256_file, verify_files, write_json
from genoray.config import IndexConfig

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("FAISS is not installed: pip install 'genoray[cpu]' (or 'genoray[gpu]')") from e
    return faiss


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def exact_search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine top-k in numpy (the oracle for recall and tests)."""
    sims = l2_normalize(queries) @ l2_normalize(base).T
    k = min(k, base.shape[0])
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, top, axis=1), top


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k ids found (ties may swap equal-similarity ids)."""
    hits = [len(set(f[f >= 0]) & set(t)) / max(len(t), 1) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


class VectorIndex:
    """Cosine kNN over a FAISS index, with the seq_id and label of every row."""

    def __init__(self, index: Any, ids: np.ndarray, labels: np.ndarray, manifest: dict[str, Any]):
        self.index, self.ids, self.labels, self.manifest = index, ids, labels, manifest

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, ids, labels, extra: dict[str, Any] | None = None) -> "VectorIndex":
        faiss = _faiss()
        x = l2_normalize(vectors)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        manifest = {"format_version": FORMAT_VERSION, "type": "Flat", "metric": "cosine",
                    "dim": int(x.shape[1]), "ntotal": int(x.shape[0])}
        manifest.update(extra or {})
        return cls(index, np.asarray(ids, dtype=object), np.asarray(labels, dtype=object), manifest)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine similarities and row positions (``-1`` where fewer than k rows)."""
        q = l2_normalize(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dim {q.shape[1]} != index dim {self.dim}")
        k = min(k, self.ntotal)
        sims, pos = self.index.search(q, k)
        return sims, pos

    def save(self, out_dir: str | Path) -> None:
        faiss = _faiss()
        out = Path(out_dir)
        if (out / MANIFEST).exists():
            raise FileExistsError(f"{out}: an index already exists here; indexes are never edited in place")
        out.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(out / "index.faiss"))
        pq.write_table(pa.table({
            "seq_id": pa.array([str(i) for i in self.ids], pa.string()),
            "label": pa.array([None if v is None else str(v) for v in self.labels], pa.string())}), out / "ids.parquet")
        self.manifest["files"] = {n: sha256_file(out / n) for n in ("index.faiss", "ids.parquet")}
        write_json(out / MANIFEST, self.manifest)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> "VectorIndex":
        faiss = _faiss()
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{path}: not an index directory (no {MANIFEST})")
        manifest = read_json(path / MANIFEST)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path / MANIFEST}: unsupported format_version {manifest.get('format_version')}")
        verify_files(path, manifest["files"])
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(path / "index.faiss"), flags)
        table = pq.read_table(path / "ids.parquet")
        if index.ntotal != manifest["ntotal"] or table.num_rows != manifest["ntotal"]:
            raise ValueError(f"{path}: ntotal mismatch (faiss {index.ntotal}, ids {table.num_rows}, manifest {manifest['ntotal']})")
        ids = np.array(table["seq_id"].to_pylist(), dtype=object)
        labels = np.array(table["label"].to_pylist(), dtype=object)
        return cls(index, ids, labels, manifest)


@dataclass
class IndexReport:
    path: str
    ntotal: int
    dim: int
    recall_at_10: float
    seconds: float


def build_index(store_path: str | Path, out_dir: str | Path, cfg: IndexConfig | None = None) -> IndexReport:
    """Index the embeddings of ``cfg.split`` from a store and measure recall@10 vs exact search."""
    from genoray.store import EmbeddingStore

    cfg = cfg or IndexConfig()
    t0 = time.perf_counter()
    store = EmbeddingStore(store_path)
    emb = store.load(cfg.split)
    if len(emb) == 0:
        raise ValueError(f"{store_path}: no rows for split {cfg.split!r}")
    extra = {"encoder": store.encoder_spec, "fingerprint": store.fingerprint,
             "source_store": str(Path(store_path).resolve()), "split": cfg.split}
    vindex = VectorIndex.from_vectors(emb.vectors, emb.ids, emb.labels, extra)
    rng = np.random.default_rng(cfg.seed)
    sample = rng.choice(len(emb), size=min(cfg.recall_queries, len(emb)), replace=False)
    queries = emb.vectors[sample]
    _, found = vindex.search(queries, 10)
    _, truth = exact_search(emb.vectors, queries, 10)
    recall = recall_at_k(found, truth)
    vindex.manifest["recall_at_10"] = {"value": recall, "queries": int(len(sample)), "oracle": "numpy exact cosine"}
    vindex.save(out_dir)
    return IndexReport(str(out_dir), vindex.ntotal, vindex.dim, recall, round(time.perf_counter() - t0, 3))
