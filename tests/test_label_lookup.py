"""Issue #28: the kNN vote over a memory-mapped index holds no per-row private memory.

A neighbour's label (and seq_id) is taken from the index's Arrow column chunk by chunk
(:meth:`ArrowColumn.take`): pyarrow's ``ChunkedArray.take`` concatenates every chunk of a string
column first, a private copy of the whole column per lookup. Oracles: Python indexing of the
same values, the bytes Arrow allocates (a proxy memory pool), and the same head voting over an
in-memory index with the same labels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genoray.config import IndexConfig
from genoray.heads.parts import KNNVoteHead
from genoray.index import VectorIndex, build_index
from genoray.index.columns import ArrowColumn


def chunked(values: list[str], lengths: list[int]) -> pa.ChunkedArray:
    """``values`` cut into chunks of ``lengths`` (zeros give empty chunks)."""
    bounds = np.cumsum([0, *lengths])
    return pa.chunked_array([pa.array(values[a:b], pa.string()) for a, b in zip(bounds[:-1], bounds[1:])], pa.string())


@pytest.mark.parametrize("lengths", [[5, 0, 3, 0, 0, 7], [0, 4], [4, 0], [9], [3, 3, 3]])
def test_take_chunk_by_chunk_equals_indexing(lengths):
    values = [f"v{i}" for i in range(sum(lengths))]
    col = ArrowColumn(chunked(values, lengths))
    pos = np.random.default_rng(len(lengths)).integers(0, len(values), size=(6, 7))
    assert col.take(pos).to_pylist() == [values[i] for i in pos.ravel()]
    got = col[np.where(pos % 5 == 0, -1, pos)]  # -1: no neighbour
    assert got.shape == pos.shape
    assert got.tolist() == [[None if p % 5 == 0 else values[p] for p in row] for row in pos]
    assert col.take(np.zeros(0, np.int64)).to_pylist() == []
    with pytest.raises(IndexError):
        col.take([len(values)])


def test_take_allocates_for_the_positions_not_the_column():
    n, k = 400_000, 400
    col = ArrowColumn(chunked([f"seq-{i:07d}" for i in range(n)], [n // 4] * 4))
    pos = np.random.default_rng(0).integers(0, n, size=k)

    def peak(take) -> int:
        prev = pa.default_memory_pool()
        pool = pa.proxy_memory_pool(prev)
        pa.set_memory_pool(pool)
        try:
            take()
        finally:
            pa.set_memory_pool(prev)
        return pool.max_memory()

    column = col.array.nbytes  # 400k x (12 B of value + 4 B of offset)
    assert peak(lambda: col.array.take(pa.array(pos))) >= column  # what this avoids: the whole column copied
    assert peak(lambda: col.take(pos)) < 100 * k  # a few buffers of k values each (measured: ~10 KB)


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """A 4-shard Flat index of 2,000 labelled rows, saved and memory-mapped, and its vectors."""
    from genoray.embedding.synthetic import write_synthetic_store

    root = tmp_path_factory.mktemp("lookup")
    store = write_synthetic_store(root / "store", 2000, 16, parts=4, test_fraction=0.0)
    build_index(store, root / "index", IndexConfig(split="train", shards=4), use_ray=False)
    return VectorIndex.load(root / "index", mmap=True)


def test_vote_over_a_mapped_index_keeps_no_codes_and_equals_the_in_memory_vote(mapped):
    assert isinstance(mapped.labels, ArrowColumn) and mapped.labels.array.num_chunks == 4
    classes = sorted(set(mapped.labels.array.to_pylist()))
    lazy = KNNVoteHead(k=5).attach(mapped, classes)
    assert lazy.y_ is None  # no n-row code array
    eager = KNNVoteHead(k=5).attach(VectorIndex(mapped.shards, np.asarray(mapped.ids), np.asarray(mapped.labels),
                                                mapped.manifest), classes)
    assert eager.y_ is not None and len(eager.y_) == 2000
    q = np.random.default_rng(3).standard_normal((300, 16)).astype(np.float32)
    sims, pos = mapped.search(q, 5)
    pos[::7, -1] = -1  # a missing neighbour votes for nothing
    assert np.array_equal(lazy.codes_at(pos), eager.codes_at(pos))
    assert (lazy.codes_at(pos)[::7, -1] == -1).all()
    assert np.array_equal(lazy.proba_from_neighbours(sims, pos), eager.proba_from_neighbours(sims, pos))


def test_attach_refuses_an_index_with_a_class_the_head_lacks(mapped):
    classes = sorted(set(mapped.labels.array.to_pylist()))
    with pytest.raises(ValueError, match=f"label {classes[-1]!r} not among the classes seen in fit"):
        KNNVoteHead(k=5).attach(mapped, classes[:-1])
