"""Capacity plan, incremental (delta) index extension, verified-checksum record, old index dirs."""

import json
import os

import numpy as np
import pytest

from genoray.cli import main
from genoray.config import ClusterSpec, IndexConfig
from genoray.embedding.store import EmbeddingStore
from genoray.embedding.synthetic import append_synthetic_rows, write_synthetic_store
from genoray.evaluation.shift import drift_rule
from genoray.index import VectorIndex, build_index, exact_search
from genoray.index.capacity import CapacityError, estimate
from genoray.index.delta import RetrainNeeded, extend_index
from genoray.index.factory import nlist_for, train_sample_size
from genoray.infra.artifacts import ChecksumError, read_json, write_json

CFG = IndexConfig(index_type="IVF64,SQ8", recall_queries=200, target_recall=0.9)


def test_plan_sizes_and_refusals():
    p = estimate(100_000_000, 768, IndexConfig(memory_budget_mb=500_000),
                 ClusterSpec(nodes=16, memory_per_node_mb=65536, cpus_per_node=16, gpus_per_node=1))
    ix = p.stages["index"]
    assert p.fits and ix["factory"].startswith("IVF32768,SQ8") and ix["points_per_centroid"] >= 39
    assert p.stages["serve"]["shard_groups"] >= 2  # 77 GB of codes cannot live in one 64 GB node
    assert p.stages["serve"]["replica_bytes_per_group"] < 0.8 * 64 * 2**30
    small = estimate(100_000_000, 768, IndexConfig(memory_budget_mb=500_000), ClusterSpec(nodes=1, memory_per_node_mb=4096))
    assert not small.fits and "over the budget" in small.problems[0]
    # the sample rule: >= 39 per centroid even above the cap, never more than n
    assert train_sample_size(10**9, 65536, 1_000_000) == 39 * 65536
    assert train_sample_size(5000, nlist_for(5000), 10**6) <= 5000 and nlist_for(5000) * 39 <= 5000


def test_plan_head_sample_is_the_head_configs_max_rows():
    from genoray.config import HeadConfig

    cl = ClusterSpec(memory_per_node_mb=65536, cpus_per_node=16)
    assert estimate(10**7, 256, cluster=cl).stages["head"]["sample_rows"] == HeadConfig().max_rows
    assert estimate(5000, 256, cluster=cl).stages["head"]["sample_rows"] == 5000  # never more than n
    small = estimate(10**7, 256, cluster=cl, head=HeadConfig(max_rows=20_000)).stages["head"]
    big = estimate(10**7, 256, cluster=cl, head=HeadConfig(max_rows=200_000)).stages["head"]
    assert small["sample_rows"] == 20_000 and small["peak_bytes"] < big["peak_bytes"]


def test_build_refuses_before_any_work(tmp_path):
    store = write_synthetic_store(tmp_path / "s", 20_000, 32, parts=2)
    with pytest.raises(CapacityError, match=r"needs .* over the budget of"):
        build_index(store, tmp_path / "ix", IndexConfig(index_type="IVF64,SQ8", build_memory_mb=50))
    assert not (tmp_path / "ix").exists()


def test_cli_plan_json(tmp_path, capsys):
    assert main(["plan", "--n", "10000000", "--dim", "256", "--nodes", "4", "--memory-per-node-mb", "32768", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stages"]["index"]["train_sample"] >= 39 * out["stages"]["index"]["nlist"]
    store = write_synthetic_store(tmp_path / "s", 5000, 16, parts=2)
    assert main(["plan", "--store", str(store), "--split", "all"]) == 0
    assert "plan for 5,000 x 16" in capsys.readouterr().out


def test_delta_equals_adding_to_the_same_trained_index(tmp_path):
    store = write_synthetic_store(tmp_path / "s", 20_000, 32, parts=4, test_fraction=0.02)
    old = build_index(store, tmp_path / "v1", CFG)
    append_synthetic_rows(store, 1000, seed=0)
    ext = extend_index(tmp_path / "v1", store, tmp_path / "v2", 0.85, CFG, drift=drift_rule(0.05))
    emb = EmbeddingStore(store).load("train")
    assert ext.ntotal == len(emb) and ext.ntotal > old.ntotal
    a = VectorIndex.load(tmp_path / "v2")
    m1, m2 = read_json(tmp_path / "v1" / "manifest.json"), read_json(tmp_path / "v2" / "manifest.json")
    for s in m1["shards"]:  # old shard files are shared, not rebuilt
        for f in s["sha256"]:
            assert os.stat(tmp_path / "v1" / f).st_ino == os.stat(tmp_path / "v2" / f).st_ino
    assert len(m2["shards"]) == len(m1["shards"]) + 1 and m2["build"]["incremental"]
    # oracle: one faiss index = the same trained index + every row with its global id
    import faiss

    from genoray.index import l2_normalize

    one = faiss.read_index(str(tmp_path / "v1" / "trained.faiss"))
    gid_of = {sid: g for g, sid in enumerate(a.ids)}
    one.add_with_ids(l2_normalize(emb.vectors), np.array([gid_of[i] for i in emb.ids], dtype=np.int64))
    one.nprobe = a.shards[0].nprobe
    q = l2_normalize(emb.vectors[-50:])  # new rows
    s_one, i_one = one.search(q, 10)
    s_ext, i_ext = a.search(q, 10)
    assert np.allclose(s_one, s_ext, atol=1e-6)
    assert [set(r) for r in i_one] == [set(r) for r in i_ext]
    assert list(a.ids[i_ext[:, 0]]) == list(emb.ids[-50:])  # new rows find themselves
    _, truth = exact_search(emb.vectors, emb.vectors[-50:], 10)
    hit = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(i_ext, [[gid_of[emb.ids[j]] for j in t] for t in truth])])
    assert hit >= 0.85


def test_drift_rules_force_retrain(tmp_path):
    store = write_synthetic_store(tmp_path / "s", 20_000, 32, parts=4, test_fraction=0.02)
    build_index(store, tmp_path / "v1", CFG)
    append_synthetic_rows(store, 1000, seed=5, shift=1.5)
    with pytest.raises(RetrainNeeded, match="shift test flags"):
        extend_index(tmp_path / "v1", store, tmp_path / "v2", 0.9, CFG, drift=drift_rule(0.05))
    calm = write_synthetic_store(tmp_path / "calm", 20_000, 32, parts=4, test_fraction=0.02)
    build_index(calm, tmp_path / "c1", CFG)
    append_synthetic_rows(calm, 1000, seed=0)
    with pytest.raises(RetrainNeeded, match="below the floor 1.01"):
        extend_index(tmp_path / "c1", calm, tmp_path / "c2", 1.01, CFG, drift=drift_rule(0.05))


def test_changed_old_rows_force_retrain(tmp_path):
    store = write_synthetic_store(tmp_path / "s", 20_000, 32, parts=4)
    build_index(store, tmp_path / "v1", CFG)
    m = read_json(store / "store.json")
    m["parts"][0]["sha256"] = "0" * 64
    write_json(store / "store.json", m)
    with pytest.raises((RetrainNeeded, ChecksumError)):
        extend_index(tmp_path / "v1", store, tmp_path / "v2", 0.9, CFG, drift=drift_rule(0.05))


def test_verified_record_skips_unchanged_files(tmp_path):
    store = write_synthetic_store(tmp_path / "s", 4000, 16, parts=4)
    assert EmbeddingStore(store).hashed == 4
    assert EmbeddingStore(store).hashed == 0  # nothing changed: nothing re-hashed
    f = store / read_json(store / "store.json")["parts"][1]["file"]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1  # same size, new mtime
    f.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=f.name):
        EmbeddingStore(store)


def test_old_index_dirs_load_or_fail_clearly(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    VectorIndex.from_vectors(x, [f"s{i}" for i in range(50)], ["a"] * 50).save(tmp_path / "v2")
    m = read_json(tmp_path / "v2" / "manifest.json")
    m["format_version"] = 2  # what earlier versions wrote: same files, no shared quantizer
    write_json(tmp_path / "v2" / "manifest.json", m)
    idx = VectorIndex.load(tmp_path / "v2")
    assert idx.ids[3] == "s3" and idx.search(x[:1], 1)[1][0, 0] == 0
    m["format_version"] = 1
    write_json(tmp_path / "v2" / "manifest.json", m)
    with pytest.raises(ValueError, match="unsupported format_version 1.*rebuild"):
        VectorIndex.load(tmp_path / "v2")


def test_arrow_column_behaves_like_the_object_array_it_replaces():
    import pyarrow as pa

    from genoray.index import ArrowColumn

    col = ArrowColumn(pa.array(["a", None, "c", "d"]))
    ref = np.array(["a", None, "c", "d"], dtype=object)
    pos = np.array([[3, 0], [-1, 2]])
    got = col[pos]
    assert got.shape == (2, 2) and list(got.ravel()) == ["d", "a", None, "c"]
    assert col[2] == ref[2] and list(col) == list(ref) and len(col) == 4
    assert list(np.asarray(col)) == list(ref) and list(col[1:3]) == list(ref[1:3])


def test_extend_exact_pass_runs_in_ray_tasks_and_agrees_with_local(tmp_path, ray_session):
    store = write_synthetic_store(tmp_path / "s", 20_000, 32, parts=4, test_fraction=0.02)
    build_index(store, tmp_path / "v1", CFG)
    append_synthetic_rows(store, 1000, seed=0)
    here = extend_index(tmp_path / "v1", store, tmp_path / "local", 0.85, CFG, drift=drift_rule(0.05))
    ray = extend_index(tmp_path / "v1", store, tmp_path / "ray", 0.85, CFG, drift=drift_rule(0.05), use_ray=True)
    # same queries, same exact oracle: the same recall and tuned nprobe, to the bit
    assert ray.recall_at_10 == here.recall_at_10 and ray.search_params == here.search_params
    m_here, m_ray = read_json(tmp_path / "local" / "manifest.json"), read_json(tmp_path / "ray" / "manifest.json")
    assert m_ray["recall_at_10"] == m_here["recall_at_10"] and m_ray["search_params"] == m_here["search_params"]
    parts = len(m_ray["partitions"])
    assert parts == 5  # 4 old + 1 new
    # the exact pass reads only the new partition (the calibration set covers the old ones):
    # one task, locally in this process, on Ray in none
    assert here.predicted["exact_tasks"] == here.predicted["exact_in_caller"] == 1
    assert here.predicted["exact_rows_read"] == ray.predicted["exact_rows_read"] == here.predicted["delta_rows"]
    assert len(here.predicted["exact_nodes"]) == 1 and here.predicted["exact_nodes"] == m_here["build"]["exact_nodes"]
    assert ray.predicted["exact_tasks"] == 1 and ray.predicted["exact_in_caller"] == 0
    assert m_ray["build"]["exact_nodes"] == ray.predicted["exact_nodes"] == [ray_session.get_runtime_context().get_node_id()]
    assert ray.predicted["exact_peak_task_rss_mb"] > 0
