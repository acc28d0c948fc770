"""The index as searched: :class:`VectorIndex`, reading its files, and search helpers.

Cosine similarity is the metric: vectors are L2-normalised and searched by inner product.
Every vector has a global id (int64, its position among the indexed rows); search fans out to
every shard and merges by similarity (larger is better, ties by smaller global id:
:func:`genoray.index.knn.merge_topk`), so sharded exact search equals one flat index. The
seq_id and label of each global id are kept as Arrow columns (:class:`ArrowColumn`), never as
Python object arrays (those cost ~170 B per row). The directory's files are described in
:mod:`genoray.index.manifest`.

``VectorIndex.load`` verifies every sha256 before reading (a flipped byte in a FAISS file would
otherwise load and return wrong neighbours silently) and can memory-map the shards and the id
tables (``mmap=True``: replicas on one node then share the page cache instead of each holding a
private copy). Index directories written by earlier versions (format 2: no refine files;
format 3: Parquet id tables) load unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genoray.index.columns import ArrowColumn, as_column
from genoray.index.knn import l2_normalize, merge_topk
from genoray.index.manifest import (
    MANIFEST,
    IndexManifest,
    IndexShard,
    ids_file,
    read_manifest,
    shard_file,
    write_manifest,
)
from genoray.infra.artifacts import sha256_file, verify_files
from genoray.infra.names import UnsafeNameError, safe_join

log = logging.getLogger(__name__)
def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("FAISS is not installed: pip install 'genoray[cpu]' (or 'genoray[gpu]')") from e
    return faiss


def gpu_count() -> int:
    """GPUs FAISS can use (0 with faiss-cpu, or with faiss-gpu on a machine without GPUs)."""
    faiss = _faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


def shard_of(seq_ids: list[str], n_shards: int) -> np.ndarray:
    """Shard of each seq_id: a stable hash modulo ``n_shards``."""
    if n_shards == 1:
        return np.zeros(len(seq_ids), dtype=np.int64)
    return np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") % n_shards
                     for s in seq_ids], dtype=np.int64)


# queries per FAISS search call: an IVF search holds nprobe coarse ids and distances per query (12 B
# each: 123 MB for 10k queries at nprobe 1,024), so a batch job searches in chunks of this many rows
SEARCH_ROWS = 1024


class VectorIndex:
    """Cosine kNN over one or more FAISS shards, with the seq_id and label of every row.

    ``search`` returns similarities and *global row positions*; ``ids[pos]`` and
    ``labels[pos]`` give the neighbours' seq_id and label.
    """

    def __init__(self, shards: list[Any], ids, labels, manifest: IndexManifest):
        self.manifest = manifest
        self.shards, self.ids, self.labels = shards, ids, labels
        self.refine: list[tuple[int, np.ndarray]] = []  # (first gid, float16 vectors) per shard
        self.set_search_params(self.manifest.search_params)

    @property
    def ntotal(self) -> int:
        """Vectors over all shards."""
        return int(sum(s.ntotal for s in self.shards))

    @property
    def dim(self) -> int:
        """Vector size."""
        return int(self.manifest.dim)

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, ids, labels, **fields: Any) -> VectorIndex:
        """One exact (Flat) shard over ``vectors`` in memory; row i has global id i. ``fields``:
        more :class:`~genoray.index.manifest.IndexManifest` fields (encoder, fingerprint, ...)."""
        faiss = _faiss()
        x = l2_normalize(vectors)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        manifest = IndexManifest(format_version=IndexManifest.FORMAT_VERSION, type="Flat", factory="Flat",
                                 metric="cosine", dim=int(x.shape[1]), ntotal=int(x.shape[0]), **fields)
        return cls([index], np.asarray(ids, dtype=object), np.asarray(labels, dtype=object), manifest)

    def set_search_params(self, params: dict[str, int]) -> None:
        """Set ``nprobe`` / ``efSearch`` on every shard and ``k_factor`` (recorded in the manifest)."""
        faiss = _faiss()
        for shard in self.shards:
            base = faiss.downcast_index(shard.index) if isinstance(shard, faiss.IndexIDMap) else shard
            if "nprobe" in params and hasattr(base, "nprobe"):
                base.nprobe = int(params["nprobe"])
            if "efSearch" in params and hasattr(base, "hnsw"):
                base.hnsw.efSearch = int(params["efSearch"])
        self.manifest = dataclasses.replace(self.manifest, search_params=dict(params))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine similarities and global row positions (``-1`` where fewer than k)."""
        q = l2_normalize(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query dim {q.shape[-1]} != index dim {self.dim}")
        k = max(1, min(k, self.ntotal))
        if len(q) > SEARCH_ROWS:  # FAISS's per-call buffers grow with the queries: bounded chunks
            parts = [self._search(q[i:i + SEARCH_ROWS], k) for i in range(0, len(q), SEARCH_ROWS)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return self._search(q, k)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k_factor = int(self.manifest.search_params.get("k_factor", 1))
        if self.refine and k_factor > 1:
            results = [self._refined(shard, q, k, k_factor, start, vecs)
                       for shard, (start, vecs) in zip(self.shards, self.refine)]
        elif len(self.shards) == 1:
            sims, pos = self.shards[0].search(q, k)
            return np.where(pos >= 0, sims, -np.inf).astype(np.float32), pos
        elif self._shared_ivf():
            results = self._search_preassigned(q, k)
        else:
            results = [s.search(q, k) for s in self.shards]
        sims, pos, _ = merge_topk([r[0] for r in results], [r[1] for r in results], k)
        return sims, pos

    def _shared_ivf(self) -> bool:
        faiss = _faiss()
        if not all(isinstance(s, faiss.IndexIVF) for s in self.shards):
            return False
        q0 = self.shards[0].quantizer
        return all(int(s.quantizer.this) == int(q0.this) for s in self.shards)

    def _search_preassigned(self, q: np.ndarray, k: int) -> list:
        """Coarse-quantise once with the shared quantizer, then scan each shard's lists."""
        first = self.shards[0]
        nprobe = min(first.nprobe, first.nlist)
        dq, iq = first.quantizer.search(q, nprobe)
        return [s.search_preassigned(q, k, iq, dq) for s in self.shards]

    @staticmethod
    def _refined(shard, q: np.ndarray, k: int, k_factor: int, start: int, vecs: np.ndarray):
        """Re-rank ``k * k_factor`` approximate candidates by exact cosine from stored vectors."""
        _, cand = shard.search(q, min(k * k_factor, max(shard.ntotal, 1)))
        valid = cand >= 0
        rows = np.where(valid, cand - start, 0)
        exact = np.einsum("qd,qcd->qc", q, np.asarray(vecs[rows.ravel()], dtype=np.float32).reshape(*rows.shape, -1))
        exact = np.where(valid, exact, -np.inf)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1).astype(np.float32), np.take_along_axis(cand, order, 1)

    def save(self, out_dir: str | Path) -> None:
        """Write shards, ids tables and ``manifest.json`` (with sha256) into a new directory."""
        faiss = _faiss()
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out}: not empty; indexes are never edited in place")
        out.mkdir(parents=True, exist_ok=True)
        gids = _shard_gids(self)
        shards_meta = []
        for i, (shard, g) in enumerate(zip(self.shards, gids)):
            fi, fids = shard_file(i), ids_file(i)
            faiss.write_index(shard, str(out / fi))
            ids, labels = as_column(self.ids).array, as_column(self.labels).array
            write_ids(pa.table({"gid": pa.array(g, pa.int64()), "seq_id": ids.take(pa.array(g)),
                                "label": labels.take(pa.array(g))}), out / fids)
            shards_meta.append(IndexShard(index=fi, ids=fids, ntotal=int(shard.ntotal), gid_start=int(g.min()) if len(g) else 0,
                                          sha256={fi: sha256_file(out / fi), fids: sha256_file(out / fids)}))
        self.manifest = dataclasses.replace(self.manifest, shards=tuple(shards_meta), ntotal=self.ntotal)
        write_manifest(out, self.manifest)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False, verify: bool = True) -> VectorIndex:
        """Verify checksums and load; ``mmap=True`` memory-maps the shard files and id tables
        (read-only); ``verify=False`` when the caller has just verified the files (a bundle)."""
        return cls.open(path, read_manifest(path), mmap, verify)

    @classmethod
    def open(cls, path: str | Path, manifest: IndexManifest, mmap: bool = False, verify: bool = True) -> VectorIndex:
        """Load the index files that ``manifest`` lists (checksums verified unless ``verify=False``).

        With ``mmap`` the FAISS files (IVF lists, or a flat index's codes) and ``ids-XX.arrow``
        tables are mapped read-only: pages are read on first touch and shared by every process
        of the node that maps the same file. The id tables stay mapped only when the shards'
        global ids are already in order (as every build writes them); otherwise they are sorted
        into memory."""
        path = Path(path)
        if verify:
            verify_files(path, manifest.files())
        n = int(manifest.ntotal)
        shards, tables, refine = open_shards(path, manifest, manifest.shards, mmap)
        if sum(s.ntotal for s in shards) != n:
            raise ValueError(f"{path}: shards hold {sum(s.ntotal for s in shards)} vectors, manifest says {n}")
        t = pa.concat_tables(tables)  # zero-copy: chunks of the (mapped) shard tables
        gid = t["gid"]
        if len(gid) and not (pc.min(gid).as_py() == 0 and pc.max(gid).as_py() == n - 1):
            raise ValueError(f"{path}: global ids do not cover 0..{n - 1}")
        # n values from 0 to n - 1, strictly increasing, are exactly 0..n-1 (checked without an
        # n-row array: 8 B a row that a mapped index would otherwise keep in Arrow's pool)
        if n > 1 and not pc.all(pc.greater(gid[1:], gid[:-1])).as_py():  # not in gid order: sort (into memory)
            t = t.take(pc.sort_indices(gid))
            if pc.any(pc.not_equal(t["gid"], pa.array(np.arange(n, dtype=np.int64)))).as_py():
                raise ValueError(f"{path}: global ids are not unique")
        vi = cls(shards, ArrowColumn(t["seq_id"]), ArrowColumn(t["label"]), manifest)
        vi.refine = refine
        return vi


def open_shards(path: str | Path, manifest: IndexManifest, shards: Sequence[IndexShard],
                mmap: bool) -> tuple[list[Any], list[pa.Table], list[tuple[int, np.ndarray]]]:
    """Read (or map) the FAISS files of ``shards`` (the shared quantizer attached), their id
    tables, and their re-rank vectors as ``(first gid, float16 vectors)``; checks every count
    against the manifest (files are verified by the caller)."""
    path = Path(path)
    trained = read_trained(path, manifest)
    out, tables, refine = [], [], []
    where = path / MANIFEST
    for s in shards:
        for name in (s.index, s.ids, s.refine):  # only names whose sha256 the manifest records are opened
            if name is not None and name not in s.sha256:
                raise UnsafeNameError(f"{where}: shard file {name!r} has no sha256 in the shard's list; refusing it")
        shard = read_shard(Path(safe_join(path, s.index, where)), manifest.factory, mmap)
        t = read_ids(Path(safe_join(path, s.ids, where)), mmap)
        if shard.ntotal != s.ntotal or t.num_rows != s.ntotal:
            raise ValueError(f"{path / s.index}: ntotal mismatch (faiss {shard.ntotal}, ids {t.num_rows}, "
                             f"manifest {s.ntotal})")
        if t.schema.field("gid").type != pa.int64():
            raise ValueError(f"{path / s.ids}: gid column is {t.schema.field('gid').type}, expected int64")
        if trained is not None:
            attach_quantizer(shard, trained)
        out.append(shard)
        tables.append(t)
        if s.refine:
            refine.append((s.gid_start, np.load(safe_join(path, s.refine, where), mmap_mode="r", allow_pickle=False)))
    return out, tables, refine


def read_trained(path: str | Path, manifest: IndexManifest):
    """The shared trained quantizer of an IVF index directory (``None`` without one)."""
    if not (manifest.shared_quantizer and manifest.trained is not None):
        return None
    return _faiss().read_index(safe_join(path, manifest.trained.file, Path(path) / MANIFEST))


def write_ids(table: pa.Table, path: str | Path) -> None:
    """Write an id table (gid, seq_id, label) as an uncompressed Arrow IPC file (mappable)."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_shard(path: str | Path, factory: str, mmap: bool = False):
    """A FAISS shard file, read into memory or (``mmap``) memory-mapped read-only.

    FAISS maps a non-IVF index (``IO_FLAG_MMAP_IFC``) with ``MADV_RANDOM``: a page not in the
    page cache is then read 4 KiB per fault, and a Flat search touches every page, so a replica
    starting on a cold node read the file 3-5x slower than reading it whole. These files are
    read through once, sequentially, before they are mapped: the pages land in the node's page
    cache (shared, no private copy; 8 MiB of buffer) at the disk's sequential speed, and a warm
    file costs a copy from the cache (~0.1 s per GB). ``POSIX_FADV_WILLNEED`` would not do:
    Linux caps it at the readahead window."""
    faiss = _faiss()
    flags = 0
    if mmap:
        flags = faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP if "IVF" in factory else faiss.IO_FLAG_MMAP_IFC)
        if "IVF" not in factory:
            buf = bytearray(8 << 20)
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    return faiss.read_index(str(path), flags)


def read_ids(path: str | Path, mmap: bool = False) -> pa.Table:
    """An id table: ``.arrow`` (memory-mapped with ``mmap``, zero-copy) or an older ``.parquet``."""
    if Path(path).suffix != ".arrow":
        return pq.read_table(path)
    source = pa.memory_map(str(path), "r") if mmap else pa.OSFile(str(path), "rb")
    with pa.ipc.open_file(source) as reader:
        return reader.read_all()


def write_without_quantizer(index, path: str | Path) -> None:
    """Write an IVF index with an empty placeholder quantizer: the trained quantizer is stored
    once per index directory (``trained.faiss``) and shared by every shard at load time."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    real, own = ivf.quantizer, ivf.own_fields
    placeholder = faiss.IndexFlatIP(ivf.d)
    ivf.own_fields, ivf.quantizer = False, placeholder
    try:
        faiss.write_index(index, str(path))
    finally:
        ivf.quantizer, ivf.own_fields = real, own


def attach_quantizer(shard, trained) -> None:
    """Give a shard written by :func:`write_without_quantizer` the shared trained quantizer
    (its placeholder, a few bytes, is left unreferenced rather than freed from Python)."""
    faiss = _faiss()
    ivf, src = faiss.extract_index_ivf(shard), faiss.extract_index_ivf(trained)
    if ivf.nlist != src.nlist or ivf.d != src.d:
        raise ValueError(f"shard (nlist {ivf.nlist}, d {ivf.d}) was not built from this trained index "
                         f"(nlist {src.nlist}, d {src.d})")
    ivf.own_fields = False
    ivf.quantizer = src.quantizer
    shard.__dict__["quantizer_owner"] = trained  # keeps the shared quantizer alive with the shard


def _shard_gids(index: VectorIndex) -> list[np.ndarray]:
    """Global ids held by each shard (read back from FAISS, so files and ids always agree)."""
    faiss = _faiss()
    out = []
    for shard in index.shards:
        if isinstance(shard, faiss.IndexIDMap):
            out.append(faiss.vector_to_array(shard.id_map).astype(np.int64))
        elif hasattr(shard, "invlists"):
            inv = shard.invlists
            parts = [faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst)).copy()
                     for lst in range(shard.nlist) if inv.list_size(lst)]
            out.append(np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64))
        else:  # a single positional shard
            out.append(np.arange(shard.ntotal, dtype=np.int64))
    return out


