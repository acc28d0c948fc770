"""The recall calibration set: a nightly extend measures recall exactly while its exact pass reads
only the delta rows (genoray.index.calibration); an index without one falls back to the full pass."""

import numpy as np
import s3

from genoray.config import IndexConfig
from genoray.embedding.store import EmbeddingStore
from genoray.embedding.synthetic import append_synthetic_rows, write_synthetic_store
from genoray.evaluation.shift import drift_rule
from genoray.index import VectorIndex, build_index, exact_search
from genoray.index.calibration import read_calibration
from genoray.index.delta import extend_index
from genoray.index.knn import recall_at_k
from genoray.index.manifest import read_manifest
from genoray.infra import fs
from genoray.infra.artifacts import read_json, write_json

CFG = IndexConfig(index_type="IVF64,SQ8", recall_queries=200, target_recall=0.9)
s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py


def _brute(store, ix_dir, queries):
    """Exact cosine top-10 global ids (and sims) of ``queries`` over every row the index holds, in numpy."""
    emb = EmbeddingStore(store).load("train")
    row_of = {sid: j for j, sid in enumerate(emb.ids)}
    idx = VectorIndex.load(ix_dir)
    base = emb.vectors[[row_of[sid] for sid in idx.ids]]  # in global-id order
    assert len(base) == read_manifest(ix_dir).ntotal
    sims, ids = exact_search(base, queries, 10)
    return sims, ids, idx


def _check_exact(store, ix_dir, rep):
    """The stored calibration is the brute-force top-10 and the reported recall is measured on it."""
    m = read_manifest(ix_dir)
    cal, why = read_calibration(ix_dir, m)
    assert cal is not None, why
    assert cal.rows == m.ntotal == m.calibration.rows and m.calibration.queries == len(cal.queries) == 200
    sims, ids, idx = _brute(store, ix_dir, cal.queries)
    assert np.array_equal(cal.ids, ids)
    assert np.allclose(cal.sims, sims, atol=1e-5)
    idx.set_search_params(m.search_params)
    assert rep.recall_at_10 == m.recall_at_10.value == recall_at_k(idx.search(cal.queries, 10)[1], ids)
    return m, cal


def test_calibration_stays_exact_over_two_nights_reading_only_the_delta(tmp_path):
    store = write_synthetic_store(tmp_path / "s", 20_000, 32, parts=4, test_fraction=0.02)
    v1 = build_index(store, tmp_path / "v1", CFG)
    m1, c1 = _check_exact(store, tmp_path / "v1", v1)
    assert m1.format_version == 5 and m1.calibration.updates == 0
    assert m1.calibration.queries_from == m1.recall_at_10.queries_from == "outside the indexed split"
    prev, reps = v1, []
    for night, (d, n) in enumerate([("v2", 1000), ("v3", 700)]):
        append_synthetic_rows(store, n, seed=0)  # same basis: no drift
        rep = extend_index(tmp_path / f"v{night + 1}", store, tmp_path / d, 0.85, CFG, drift=drift_rule(0.05))
        delta = rep.ntotal - prev.ntotal
        assert delta == rep.predicted["delta_rows"] > 0
        # the exact part of the night read the delta rows and nothing else, in one task (one new partition)
        assert rep.predicted["exact_rows_read"] == delta
        assert rep.predicted["exact_tasks"] == rep.predicted["exact_in_caller"] == 1
        assert rep.predicted["calibration"] == "updated"
        m, cal = _check_exact(store, tmp_path / d, rep)
        assert m.calibration.updates == night + 1 and "delta rows" in m.recall_at_10.oracle
        assert np.array_equal(cal.queries, c1.queries)  # the build's queries, carried night to night
        prev = rep
        reps.append(rep)
    # the old version's calibration is untouched (versions are immutable)
    assert read_calibration(tmp_path / "v1", read_manifest(tmp_path / "v1"))[0].rows == v1.ntotal


def test_index_without_calibration_extends_by_a_full_pass_then_gets_one(tmp_path):
    store = write_synthetic_store(tmp_path / "s", 20_000, 32, parts=4, test_fraction=0.02)
    v1 = build_index(store, tmp_path / "v1", CFG)
    m = read_json(tmp_path / "v1" / "manifest.json")
    del m["calibration"]
    m["format_version"] = 4  # what genoray wrote before calibration sets
    write_json(tmp_path / "v1" / "manifest.json", m)
    (tmp_path / "v1" / "calibration.npz").unlink()
    append_synthetic_rows(store, 1000, seed=0)
    v2 = extend_index(tmp_path / "v1", store, tmp_path / "v2", 0.85, CFG, drift=drift_rule(0.05))
    assert v2.predicted["calibration"].startswith("full pass: ") and "no calibration set" in v2.predicted["calibration"]
    assert v2.predicted["exact_rows_read"] == v2.ntotal > v1.ntotal  # every row, old and new
    assert v2.predicted["exact_tasks"] == len(read_manifest(tmp_path / "v2").partitions)
    m2, _ = _check_exact(store, tmp_path / "v2", v2)
    assert m2.calibration.updates == 0 and m2.calibration.queries_from.startswith("new rows")
    # a calibration set that does not check out is not trusted: the full pass again
    npz = tmp_path / "v2" / "calibration.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 1
    npz.write_bytes(bytes(data))
    append_synthetic_rows(store, 500, seed=0)
    v3 = extend_index(tmp_path / "v2", store, tmp_path / "v3", 0.85, CFG, drift=drift_rule(0.05))
    assert "sha256 differs" in v3.predicted["calibration"] and v3.predicted["exact_rows_read"] == v3.ntotal
    _check_exact(store, tmp_path / "v3", v3)
    # and from there on the nights are O(delta)
    append_synthetic_rows(store, 400, seed=0)
    v4 = extend_index(tmp_path / "v3", store, tmp_path / "v4", 0.85, CFG, drift=drift_rule(0.05))
    assert v4.predicted["calibration"] == "updated" and v4.predicted["exact_rows_read"] == v4.ntotal - v3.ntotal
    _check_exact(store, tmp_path / "v4", v4)


def test_a_build_on_object_storage_writes_its_calibration_set_there(tmp_path, s3_bucket):
    store = write_synthetic_store(tmp_path / "s", 20_000, 32, parts=4, test_fraction=0.02)
    uri = f"{s3_bucket}/ix"
    rep = build_index(store, uri, CFG)
    m = read_manifest(uri)
    cal, why = read_calibration(uri, m)
    assert cal is not None, why
    assert cal.rows == rep.ntotal and m.calibration.sha256 and len(cal.queries) == 200
    local = tmp_path / "ix"
    local.mkdir()
    for f in fs.list_files(uri):
        fs.download(fs.join(uri, f), local / f)
    _check_exact(store, local, rep)
