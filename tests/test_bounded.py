"""Issue #28 item 2: the head fit, the evaluation and ``genoray shift`` on bounded samples.

Real stores (synthetic vectors in the store format), real FAISS; oracles: the unbounded code
paths (the whole split loaded, :func:`stratified_sample` on the full code array) and a Wilson
interval computed by hand."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genoray.config import EvaluateConfig, HeadConfig, IndexConfig, ShiftConfig, ShiftSelection
from genoray.embedding.store import EmbeddingStore
from genoray.embedding.synthetic import write_synthetic_store
from genoray.evaluation.report import evaluate_store
from genoray.evaluation.sampling import read_sample, wilson_interval
from genoray.evaluation.shift import reference_rows, store_samples
from genoray.heads import FusedHead, load_head
from genoray.heads.common import _encode, bounded_search, fit_nprobe, stratified_positions, stratified_sample
from genoray.index import IndexManifest, VectorIndex, build_index, l2_normalize
from genoray.pipeline import train as train_mod
from genoray.pipeline.train import train_head


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3,000-row synthetic store (about 30% test rows), its Flat index and a head fitted with
    the default (larger than the split) row cap."""
    root = tmp_path_factory.mktemp("bounded")
    store = write_synthetic_store(root / "store", 3000, 16, parts=3, test_fraction=0.3)
    build_index(store, root / "index", IndexConfig(split="train"), use_ray=False)
    res = train_head(store, root / "index", root / "head", HeadConfig())
    return root, store, res


@pytest.mark.parametrize("n,n_max,k", [(1000, 100, 2), (7000, 500, 3), (300, 7, 5), (50, 100, 2)])
def test_streamed_stratified_sample_equals_the_in_memory_one(n, n_max, k):
    labels = np.random.default_rng(n).choice(list("abcde"[:k]), size=n)
    classes = np.array(sorted(set(labels)), dtype=object)
    col = pa.chunked_array([pa.array(labels[: n // 3].tolist()), pa.array(labels[n // 3:].tolist())])
    got = stratified_positions(col, classes, n_max, seed=7, chunk=97)
    assert np.array_equal(got, stratified_sample(_encode(labels, classes), n_max, seed=7))


def test_wilson_interval_matches_a_hand_computed_value():
    # 81 right of 100, z = 1.96: p = .81, centre = (.81 + 1.96^2/200) / (1 + 1.96^2/100),
    # half = 1.96 sqrt(.81 * .19 / 100 + 1.96^2 / 40000) / (1 + 1.96^2/100)
    z2 = 1.96 ** 2
    centre, half = (0.81 + z2 / 200) / (1 + z2 / 100), 1.96 * np.sqrt(0.81 * 0.19 / 100 + z2 / 40000) / (1 + z2 / 100)
    lo, hi = wilson_interval(81, 100, z=1.96)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.7222, 0.8749)  # the textbook value
    assert wilson_interval(0, 10, z=1.96)[0] == 0.0 and wilson_interval(10, 10, z=1.96)[1] == pytest.approx(1.0)


def test_head_fit_reads_at_most_the_cap(trained, tmp_path, monkeypatch):
    root, store, _ = trained
    read = []
    real = train_mod.vectors_of
    monkeypatch.setattr(train_mod, "vectors_of", lambda t, d: read.append(t.num_rows) or real(t, d))
    res = train_head(store, root / "index", tmp_path / "head", HeadConfig(max_rows=300))
    n_train = EmbeddingStore(store).load("train")
    assert len(n_train) > 1000
    assert res["rows"] == len(n_train) and res["rows_used"] == sum(read)
    assert sum(read) <= 300 + 2  # the stratified cap (one rounding per class)
    assert res["source_reads"] <= 1  # length calibration and OOD: at most one pass over sources


def test_head_is_the_unbounded_one_when_the_split_fits_the_cap(trained):
    root, store, res = trained
    s = EmbeddingStore(store)
    tr, te = s.load("train"), s.load("test")
    assert res["rows_used"] == len(tr)
    index = VectorIndex.load(root / "index")
    oracle = FusedHead.from_config(HeadConfig()).fit(tr.vectors, tr.labels, index=index, ids=tr.ids)
    head = load_head(root / "head").attach_index(VectorIndex.load(root / "index", mmap=True))
    assert np.array_equal(head.predict_proba(te.vectors), oracle.predict_proba(te.vectors))


def test_fit_searches_an_ivf_index_at_a_bounded_scan():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 16)).astype(np.float32)
    y = np.where(x[:, 0] > 0, "a", "b").astype(object)
    import faiss

    ivf = faiss.index_factory(16, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    xn = l2_normalize(x)
    ivf.train(xn)
    ivf.add(xn)
    manifest = IndexManifest(format_version=IndexManifest.FORMAT_VERSION, type="IVF", factory="IVF64,Flat",
                             metric="cosine", dim=16, ntotal=4000, search_params={"nprobe": 32})
    index = VectorIndex([ivf], np.arange(4000).astype(str).astype(object), y, manifest)
    ids = np.arange(4000).astype(str).astype(object)
    assert fit_nprobe(index, 500) == 64 * 500 // 4000 == 8
    assert fit_nprobe(index, 10**9) == 32  # never above the tuned value
    with bounded_search(index, 500) as used:
        assert used == 8 and ivf.nprobe == 8
    assert ivf.nprobe == 32 and index.manifest.search_params == {"nprobe": 32}
    head = FusedHead(fit_scan_rows=500).fit(x, y, index=index, ids=ids)
    assert head.selection_["fit_nprobe"] == 8 and ivf.nprobe == 32
    assert (head.predict(x[:200]) == y[:200]).mean() > 0.8


def test_evaluation_scores_a_bounded_stratified_sample_with_intervals(trained):
    root, store, _ = trained
    full = evaluate_store(store, root / "index", root / "head", EvaluateConfig(bootstrap=0))
    n_test = len(EmbeddingStore(store).load("test"))
    assert full["fused"]["sample"] == {"rows": n_test, "of": n_test, "complete": True}
    small = evaluate_store(store, root / "index", root / "head", EvaluateConfig(bootstrap=20, max_test_rows=200),
                           detail=True)
    f = small["fused"]
    assert f["sample"]["of"] == n_test and f["sample"]["rows"] <= 202 and not f["sample"]["complete"]
    assert f["n"] == f["sample"]["rows"]
    right = round(f["accuracy"] * f["n"])
    assert f["accuracy_wilson95"] == pytest.approx(list(wilson_interval(right, f["n"])))
    assert f["accuracy_wilson95"][0] < f["accuracy"] < f["accuracy_wilson95"][1]
    assert f["ci95"]["mcc"][0] <= f["mcc"] <= f["ci95"]["mcc"][1]


def test_read_sample_is_the_whole_split_when_small_and_stratified_when_not(trained):
    _, store, _ = trained
    s = EmbeddingStore(store)
    whole = s.load("test")
    got = read_sample(s, "test", 10**6, seed=0)
    assert got.complete and np.array_equal(got.rows.ids, whole.ids) and np.array_equal(got.rows.vectors, whole.vectors)
    part = read_sample(s, "test", 100, seed=0)
    assert len(part.rows) <= 102 and part.total == len(whole)
    share = {c: np.mean(part.rows.labels == c) for c in ("a", "b")}
    for c, v in share.items():
        assert abs(v - np.mean(whole.labels == c)) < 0.02  # stratified: proportions kept
    assert set(part.rows.ids) <= set(whole.ids)


def test_shift_samples_respect_their_bounds(tmp_path):
    ref = EmbeddingStore(write_synthetic_store(tmp_path / "ref", 12_000, 8, parts=4))
    new = EmbeddingStore(write_synthetic_store(tmp_path / "new", 3000, 8, parts=2, seed=1))
    cfg = ShiftConfig(max_samples=100)
    a, b = store_samples(ref, new, ShiftSelection(), cfg)
    assert reference_rows(cfg) == 10_100
    assert a.total == 12_000 and len(a.rows) == 10_100 and not a.complete  # uniform: exactly the bound
    assert b.total == 3000 and len(b.rows) == 100 and len(set(b.rows.ids)) == 100
