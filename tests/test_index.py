"""Sharded/approximate index builds against exact-search oracles."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genoray.config import IndexConfig
from genoray.embedding.job import embed_sequences
from genoray.encoders.kmer import KmerEncoder
from genoray.index import VectorIndex, build_index, choose_factory, exact_search, merge_topk


def synthetic_store(tmp_path, n=6000, d=32, seed=0):
    """A real embedding store whose vectors are low-rank + noise (embedding-like)."""
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), size=int(rng.integers(60, 120)))) for _ in range(n)]
    splits = np.where(rng.random(n) < 0.9, "train", "test")
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(n)], "sequence": seqs,
                             "label": ["a" if i % 3 else "b" for i in range(n)], "split": splits}),
                   tmp_path / "in.parquet", row_group_size=1000)
    embed_sequences(tmp_path / "in.parquet", tmp_path / "store", KmerEncoder(), use_ray=False)
    return tmp_path / "store"


def test_choose_factory_rules():
    cfg = IndexConfig()
    assert choose_factory(50_000, 256, cfg) == "Flat"
    assert choose_factory(1_000_000, 256, cfg) == "IVF4096,SQ8"
    assert choose_factory(1_000_000, 256, IndexConfig(memory_budget_mb=64)).startswith("IVF4096,PQ")
    assert choose_factory(10, 8, IndexConfig(index_type="HNSW32")) == "HNSW32"


def test_merge_topk_keeps_largest_similarities():
    s, i, _ = merge_topk([np.array([[0.9, 0.1]]), np.array([[0.5, -1.0]])], [np.array([[3, 4]]), np.array([[7, -1]])], 3)
    assert i.tolist() == [[3, 7, 4]] and np.allclose(s, [[0.9, 0.5, 0.1]])


@pytest.mark.parametrize("shards", [1, 2, 5])
def test_merge_topk_equals_exact_search_with_ties_and_missing_rows(shards):
    """The one merge (sharded search, recall truth, shard groups): merging per-shard exact top-k
    lists equals exact search over all rows, including its tie rule (equal similarity: smaller
    global id first) on many exact ties, and shards with fewer than k rows (-1 padding, last)."""
    rng = np.random.default_rng(shards)
    base = rng.integers(-2, 3, size=(40, 4)).astype(np.float32)  # a small lattice: many equal cosines
    base[base.sum(1) == 0] = 1.0
    q = rng.integers(-2, 3, size=(30, 4)).astype(np.float32) + 0.5
    want_s, want_i = exact_search(base, q, 12)
    bounds = np.linspace(0, len(base), shards + 1).astype(int)
    sims, ids, labels = [], [], []
    for lo, hi in zip(bounds, bounds[1:]):
        s, i = exact_search(base[lo:hi], q, 12)  # a shard's own top-k (fewer than k rows: padded)
        pad = 12 - s.shape[1]
        sims.append(np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf))
        ids.append(np.pad(i + lo, ((0, 0), (0, pad)), constant_values=-1))
        labels.append(np.where(ids[-1] >= 0, ids[-1] % 3, -1))
    got_s, got_i, (got_l,) = merge_topk(sims, ids, 12, [labels])
    assert np.array_equal(got_i, want_i) and np.allclose(got_s, want_s)
    assert np.array_equal(got_l, want_i % 3)  # payload follows its rows
    assert (np.diff(want_s, axis=1) <= 1e-7).all()
    assert any(len(set(np.round(r, 6))) < len(r) for r in want_s)  # the tie rule was exercised


def test_sharded_flat_equals_one_flat_index(tmp_path):
    store = synthetic_store(tmp_path)
    one = build_index(store, tmp_path / "one", IndexConfig(index_type="Flat"))
    many = build_index(store, tmp_path / "many", IndexConfig(index_type="Flat", shards=4))
    assert many.shards == 4 and one.ntotal == many.ntotal and one.recall_at_10 == many.recall_at_10 == 1.0
    a, b = VectorIndex.load(tmp_path / "one"), VectorIndex.load(tmp_path / "many")
    assert [s.ntotal for s in b.shards] != [b.ntotal, 0, 0, 0]  # really spread over shards
    from genoray.embedding.store import EmbeddingStore

    q = EmbeddingStore(store).load("test").vectors[:50]
    sa, ia = a.search(q, 10)
    sb, ib = b.search(q, 10)
    assert np.allclose(sa, sb, atol=1e-5)
    assert [list(a.ids[r]) for r in ia] == [list(b.ids[r]) for r in ib]


@pytest.mark.parametrize("factory", ["Flat", "IVF64,Flat"])
def test_a_large_query_batch_is_searched_in_chunks_with_the_same_answer(tmp_path, monkeypatch, factory):
    """A batch job's queries go to FAISS in chunks of SEARCH_ROWS (bounded buffers): the answer is
    the one-call answer, row for row, and for Flat the brute-force top-k."""
    import genoray.index.core as core
    from genoray.embedding.store import EmbeddingStore

    store = synthetic_store(tmp_path, n=3000)
    build_index(store, tmp_path / "ix", IndexConfig(index_type=factory, shards=2, train_sample=2000))
    idx = VectorIndex.load(tmp_path / "ix")
    q = EmbeddingStore(store).load("test").vectors
    whole = idx.search(q, 10)
    calls = []
    one_call = VectorIndex._search
    monkeypatch.setattr(core, "SEARCH_ROWS", 16)
    monkeypatch.setattr(VectorIndex, "_search", lambda self, qq, k: calls.append(len(qq)) or one_call(self, qq, k))
    chunked = idx.search(q, 10)
    assert max(calls) == 16 and sum(calls) == len(q) > 16 * 5
    assert np.array_equal(chunked[1], whole[1]) and np.allclose(chunked[0], whole[0])
    if factory == "Flat":
        emb = EmbeddingStore(store).load("train")
        truth, _ = exact_search(emb.vectors, q, 10)
        assert np.allclose(chunked[0], truth, atol=1e-5)


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,SQ8"])
def test_ivf_reaches_target_recall_and_mmap_load_matches(tmp_path, factory):
    store = synthetic_store(tmp_path)
    rep = build_index(store, tmp_path / "ivf", IndexConfig(index_type=factory, shards=2, target_recall=0.95,
                                                           train_sample=5000))
    assert rep.factory == factory and rep.recall_at_10 >= 0.95 and "nprobe" in rep.search_params
    from genoray.embedding.store import EmbeddingStore

    emb = EmbeddingStore(store).load("train")
    idx = VectorIndex.load(tmp_path / "ivf")
    assert sorted(idx.ids) == sorted(emb.ids)  # every row indexed exactly once
    q = EmbeddingStore(store).load("test").vectors[:100]
    _, truth = exact_search(emb.vectors, q, 10)
    _, found = idx.search(q, 10)
    truth_ids = [set(emb.ids[r]) for r in truth]
    hits = np.mean([len(set(idx.ids[f]) & t) / 10 for f, t in zip(found, truth_ids)])
    assert hits >= 0.9
    mm = VectorIndex.load(tmp_path / "ivf", mmap=True)
    assert np.array_equal(mm.search(q, 10)[1], found)


def test_hnsw_build(tmp_path):
    store = synthetic_store(tmp_path, n=3000)
    rep = build_index(store, tmp_path / "h", IndexConfig(index_type="HNSW32"))
    assert rep.recall_at_10 >= 0.95 and "efSearch" in rep.search_params
    assert VectorIndex.load(tmp_path / "h").ntotal == rep.ntotal


def test_gpu_path_falls_back_on_cpu(tmp_path):
    from genoray.index import gpu_count

    store = synthetic_store(tmp_path, n=3000)
    rep = build_index(store, tmp_path / "g", IndexConfig(index_type="IVF32,Flat", use_gpu=True))
    assert rep.gpu_used == (gpu_count() > 0)


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_split_batches_stream_the_same_rows_as_a_whole_read(tmp_path, monkeypatch, batch):
    """A stage reads rows ``offset .. offset + rows`` of a split in batches; every cut through the
    split filter and the partition offsets must give exactly the rows a whole-file read gives."""
    import genoray.index.stages as st

    n = 503
    split = np.where(np.arange(n) % 3 == 1, "test", "train")
    pq.write_table(pa.table({"seq_id": [f"s{i}" for i in range(n)], "split": split}), tmp_path / "p.parquet",
                   row_group_size=50)
    monkeypatch.setattr(st, "BATCH_ROWS", batch)
    whole = [f"s{i}" for i in range(n) if split[i] == "train"]
    for offset, rows in [(0, None), (0, len(whole)), (5, 100), (131, 1), (300, len(whole) - 300)]:
        got = [x for t in st._split_batches(str(tmp_path), "p.parquet", "train", ["seq_id"], offset, rows)
               for x in t["seq_id"].to_pylist()]
        assert got == whole[offset:None if rows is None else offset + rows], (offset, rows)


def test_streamed_build_equals_a_build_with_whole_partition_batches(tmp_path, monkeypatch):
    """Batches of 97 rows (cutting through row groups, the split filter and the shard offsets) give
    byte-identical shard and id files to batches larger than any partition, same quantizer."""
    import shutil

    import genoray.index.stages as st

    store = synthetic_store(tmp_path)
    cfg = IndexConfig(index_type="IVF64,SQ8", shards=3, train_sample=3000, target_recall=0.9)
    big = build_index(store, tmp_path / "big", cfg)
    (tmp_path / "small").mkdir()
    for f in ("trained.faiss", "trained.json"):
        shutil.copy(tmp_path / "big" / f, tmp_path / "small" / f)
    monkeypatch.setattr(st, "BATCH_ROWS", 97)
    small = build_index(store, tmp_path / "small", cfg)
    assert big.ntotal == small.ntotal and small.recall_at_10 >= 0.9
    import json

    shards = [json.loads((tmp_path / d / "manifest.json").read_text())["shards"] for d in ("big", "small")]
    assert [s["sha256"] for s in shards[0]] == [s["sha256"] for s in shards[1]]
