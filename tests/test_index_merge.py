"""The list-by-list shard merge (genoray.index.ivf_merge): the same bytes as FAISS's in-memory
merge_from, at most one inverted list of one partition read at a time, and builds that use it."""

import json

import faiss
import numpy as np
import pytest

from genoray.config import IndexConfig
from genoray.index import VectorIndex, build_index, exact_search
from genoray.index.core import write_without_quantizer
from genoray.index.ivf_merge import PartLists, write_merged_ivf
from tests.test_index import synthetic_store


def _parts(tmp_path, factory, sizes, d=16, seed=0, cluster=False):
    """A trained template (bytes) and one partition file per size, written as add_part writes them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, d)).astype(np.float32)
    t = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    t.train(x)
    blob = faiss.serialize_index(t)
    files, gid = [], 0
    for i, n in enumerate(sizes):
        idx = faiss.deserialize_index(blob)
        v = rng.normal(size=(n, d)).astype(np.float32)
        if cluster:  # every row near one centroid: most lists stay empty (the "sprs" layout)
            v = np.repeat(x[:1], n, axis=0) + 1e-3 * v
        idx.add_with_ids(v, np.arange(gid, gid + n, dtype=np.int64))
        gid += n
        files.append(tmp_path / f"p{i}.faiss")
        faiss.write_index(idx, str(files[-1]))
    return blob, files


def _merged_in_memory(blob, files, path):
    index = faiss.deserialize_index(blob)
    for f in files:
        index.merge_from(faiss.read_index(str(f)), 0)
    write_without_quantizer(index, path)
    return int(index.ntotal)


@pytest.mark.parametrize("factory,sizes,cluster", [
    ("IVF32,SQ8", [700, 0, 1300, 5], False),
    ("IVF32,PQ4", [500, 900], False),
    ("IVF16,Flat", [400, 400, 400], False),
    ("IVF64,SQ8", [30, 20], True),  # fewer than half the lists non-empty
])
def test_list_by_list_merge_writes_the_bytes_of_merge_from(tmp_path, factory, sizes, cluster):
    blob, files = _parts(tmp_path, factory, sizes, cluster=cluster)
    want = _merged_in_memory(blob, files, tmp_path / "want.faiss")
    got = write_merged_ivf(np.asarray(blob), files, tmp_path / "got.faiss")
    assert got == want == sum(sizes)
    assert (tmp_path / "got.faiss").read_bytes() == (tmp_path / "want.faiss").read_bytes()
    sparse = (tmp_path / "got.faiss").read_bytes().find(b"sprs") > 0
    assert sparse == cluster


def test_merge_reads_one_list_of_one_partition_at_a_time(tmp_path, monkeypatch):
    """The memory bound, checked: no read is larger than one partition's largest list."""
    blob, files = _parts(tmp_path, "IVF32,SQ8", [2000, 3000, 1000])
    largest = max(int(PartLists(f, len(blob) - 32, 32, 16).sizes.max()) for f in files) * 16
    reads = []
    orig = PartLists.codes

    def codes(self, lst):
        b = orig(self, lst)
        reads.append(len(b))
        return b

    monkeypatch.setattr(PartLists, "codes", codes)
    assert write_merged_ivf(np.asarray(blob), files, tmp_path / "s.faiss") == 6000
    assert max(reads) == largest and sum(reads) == 6000 * 16


def test_merge_declines_a_file_it_cannot_read(tmp_path):
    blob, files = _parts(tmp_path, "IVF32,SQ8", [100, 100])
    files[1].write_bytes(files[1].read_bytes()[:-8])  # truncated: the lists do not end at the file's end
    assert write_merged_ivf(np.asarray(blob), files, tmp_path / "s.faiss") is None
    assert not list(tmp_path.glob("s.faiss*"))


def test_capped_shards_build_without_merge_from_and_search_equals_flat(tmp_path, monkeypatch):
    """shard_size caps the rows of a shard (exact shard count); every IVF shard is written list
    by list (merge_from, the in-memory merge, must not run) and, probing every list, the sharded
    IVF-Flat search equals exact search over all rows."""
    from genoray.embedding.store import EmbeddingStore

    def boom(*a, **k):
        raise AssertionError("in-memory merge_from ran")

    monkeypatch.setattr(faiss.IndexIVF, "merge_from", boom)
    store = synthetic_store(tmp_path)
    emb = EmbeddingStore(store).load("train")
    n = len(emb.ids)
    rep = build_index(store, tmp_path / "ix", IndexConfig(index_type="IVF16,Flat", shard_size=1500,
                                                          train_sample=3000, target_recall=0.9))
    assert rep.ntotal == n and rep.shards == -(-n // 1500)
    m = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert [s["ntotal"] for s in m["shards"]] == [b - a for a, b in zip(
        [s["gid_start"] for s in m["shards"]], [s["gid_start"] for s in m["shards"][1:]] + [n])]
    idx = VectorIndex.load(tmp_path / "ix", mmap=True)
    idx.set_search_params({"nprobe": 16})
    q = EmbeddingStore(store).load("test").vectors[:100]
    ws, wi = exact_search(emb.vectors, q, 10)
    gs, gi = idx.search(q, 10)
    assert np.allclose(gs, ws, atol=1e-5)
    assert [list(idx.ids[r]) for r in gi] == [list(np.asarray(emb.ids)[r]) for r in wi]
