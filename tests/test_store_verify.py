"""An index build takes the split's rows from the per-part counts of store.json (counting only
for stores without them) and has the store's parts verified by tasks, not by the driver."""
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import genoray.index.build as build_mod
from genoray.config import EmbedConfig, IndexConfig
from genoray.embedding.job import embed_sequences
from genoray.embedding.store import EmbeddingStore, read_manifest, write_manifest
from genoray.encoders.kmer import KmerEncoder
from genoray.index import build_index
from genoray.index.stages import count_split
from genoray.infra import fs
from genoray.infra.errors import ChecksumError


def small_store(tmp_path, n=1500):
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), size=int(rng.integers(60, 90)))) for _ in range(n)]
    split = rng.choice(["train", "test", None], size=n, p=[0.7, 0.2, 0.1]).tolist()
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(n)], "sequence": seqs, "split": split}),
                   tmp_path / "in.parquet", row_group_size=250)
    embed_sequences(tmp_path / "in.parquet", tmp_path / "store", KmerEncoder(), use_ray=False,
                    embed_cfg=EmbedConfig(rows_per_unit=500))
    return tmp_path / "store", split


def test_recorded_split_counts_equal_counted_rows_and_the_build_uses_them(tmp_path, monkeypatch):
    store, split = small_store(tmp_path)
    parts = read_manifest(store).parts
    assert len(parts) > 1 and all(p.split_rows is not None for p in parts)
    for name in ("train", "test", "other"):
        assert [p.rows_in(name) for p in parts] == [count_split(str(store), p.file, name) for p in parts]
    assert sum(p.rows_in("train") for p in parts) == split.count("train")
    assert [p.rows_in(None) for p in parts] == [p.rows for p in parts]

    def no_counting(*a):
        raise AssertionError("counted although store.json records the counts")

    monkeypatch.setattr(build_mod, "count_split", no_counting)
    rep = build_index(store, tmp_path / "ix", IndexConfig(split="train", target_recall=0.5))
    assert rep.ntotal == split.count("train")

    # a store written before the counts were recorded: they are counted (once per part)
    m = read_manifest(store)
    write_manifest(store, dataclasses.replace(m, parts=tuple(dataclasses.replace(p, split_rows=None) for p in m.parts)))
    calls = []
    monkeypatch.setattr(build_mod, "count_split", lambda *a: calls.append(a[1]) or count_split(*a))
    rep = build_index(store, tmp_path / "ix2", IndexConfig(split="test", target_recall=0.5))
    assert rep.ntotal == split.count("test") and sorted(calls) == sorted(p.file for p in m.parts)


def corrupt(store):
    part = read_manifest(store).parts[1].file
    f = store / part
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    return part.rsplit("/", 1)[-1]


def test_a_corrupted_part_is_refused_by_the_verifying_task(tmp_path):
    store, _ = small_store(tmp_path)
    assert EmbeddingStore(store).hashed == len(read_manifest(store).parts)
    assert EmbeddingStore(store).hashed == 0  # unchanged since verified: not hashed again
    name = corrupt(store)
    with pytest.raises(ChecksumError, match=name):
        build_index(store, tmp_path / "ix", IndexConfig(target_recall=0.5))
    assert not (tmp_path / "ix" / "manifest.json").exists()


def test_on_ray_parts_are_hashed_by_tasks_not_the_driver(ray_session, tmp_path, monkeypatch):
    store, _ = small_store(tmp_path)
    (store / "verified.json").unlink(missing_ok=True)
    name = corrupt(store)

    def driver_hash(*a, **k):
        raise AssertionError("the driver hashed a part")

    monkeypatch.setattr(fs, "sha256", driver_hash)  # this process only; Ray workers keep the real one
    with pytest.raises(ChecksumError, match=name):
        build_index(store, tmp_path / "ix", IndexConfig(target_recall=0.5), use_ray=True)


def test_on_ray_the_fit_check_uses_the_ray_nodes_memory(ray_session, tmp_path, monkeypatch):
    from genoray.index.capacity import CapacityError
    from genoray.index.stages import _Ray

    mem = [n["Resources"]["memory"] for n in ray_session.nodes() if n["Alive"] and n["Resources"].get("CPU")]
    assert _Ray().node_memory_bytes() == int(min(mem)) > 0
    store, split = small_store(tmp_path)
    monkeypatch.setattr(_Ray, "node_memory_bytes", lambda self: 2 * 2**20)  # the building node has 2 MiB
    with pytest.raises(CapacityError, match="does not fit"):
        build_index(store, tmp_path / "ix", IndexConfig(target_recall=0.5), use_ray=True)
    rep = build_index(store, tmp_path / "ix2", IndexConfig(target_recall=0.5))  # here: this machine's memory
    assert rep.ntotal == split.count(IndexConfig().split)
