import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from genoray.heads import FusedHead, KNNVoteHead, LinearHead, load_head, save_head, vote
from genoray.index import VectorIndex, exact_search, l2_normalize
from genoray.infra.artifacts import ChecksumError


def blobs(n=300, d=16, classes=("a", "b", "c"), seed=0):
    centres = np.random.default_rng(0).normal(size=(len(classes), d)) * 2  # same classes for every seed
    rng = np.random.default_rng(seed + 1)
    y = rng.choice(np.array(classes, dtype=object), size=n)
    X = centres[[classes.index(c) for c in y]] + rng.normal(size=(n, d))
    return X.astype(np.float32), y


def flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flat_index_equals_exact_search(tmp_path):
    X, y = blobs()
    idx = VectorIndex.from_vectors(X, [f"s{i}" for i in range(len(X))], y)
    sims, pos = idx.search(X[:20], 5)
    esims, epos = exact_search(X, X[:20], 5)
    assert np.array_equal(pos, epos) and np.allclose(sims, esims, atol=1e-5)
    idx.save(tmp_path / "ix")
    again = VectorIndex.load(tmp_path / "ix")
    assert again.ntotal == 300 and list(again.ids[:2]) == ["s0", "s1"]
    assert np.array_equal(again.search(X[:20], 5)[1], pos)
    with pytest.raises(FileExistsError):
        idx.save(tmp_path / "ix")


def test_flipped_byte_in_index_is_caught(tmp_path):
    X, y = blobs()
    VectorIndex.from_vectors(X, range(len(X)), y).save(tmp_path / "ix")
    flip_byte(tmp_path / "ix" / "shard-00.faiss")
    with pytest.raises(ChecksumError, match=r"shard-00\.faiss: sha256"):
        VectorIndex.load(tmp_path / "ix")


def test_vote_against_brute_force():
    X, y = blobs(n=200)
    Q, _ = blobs(n=30, seed=1)
    head = KNNVoteHead(k=7, temperature=0.1, smoothing=0.0).fit(X, y)
    got = head.predict_proba(Q)
    sims = l2_normalize(Q) @ l2_normalize(X).T
    for i in range(len(Q)):
        top = np.argsort(-sims[i])[:7]
        w = np.exp((sims[i, top] - sims[i, top].max()) / 0.1)
        expected = np.array([w[y[top] == c].sum() for c in head.classes_]) / w.sum()
        assert np.allclose(got[i], expected, atol=1e-5)


def test_vote_handles_missing_neighbours_and_smoothing():
    p = vote(np.array([[0.9, 0.1]]), np.array([[1, -1]]), n_classes=2, temperature=1.0, smoothing=0.2)
    assert np.allclose(p, [[0.1 / 1.2, 1.1 / 1.2]])


def test_exclude_self():
    X, y = blobs(n=50)
    head = KNNVoteHead(k=3).fit(X, y)
    sims, pos = head.kneighbors(X, exclude_self=True)
    assert pos.shape == (50, 3)
    assert not (pos == np.arange(50)[:, None]).any()


@pytest.mark.parametrize("classes", [("a", "b"), ("a", "b", "c")])
def test_linear_head_equals_sklearn(classes):
    X, y = blobs(classes=classes)
    head = LinearHead(C=0.5).fit(X, y)
    Z = (X.astype(np.float64) - head.mean_) / head.scale_
    ref = LogisticRegression(C=0.5, max_iter=2000).fit(Z, y)
    assert list(ref.classes_) == list(head.classes_)
    assert np.abs(head.predict_proba(X) - ref.predict_proba(Z)).max() < 1e-9


def test_heads_follow_estimator_api():
    for est in (KNNVoteHead(k=3), LinearHead(C=2.0), FusedHead(k=5, C=0.1)):
        c = clone(est)
        assert c.get_params() == est.get_params()
    X, y = blobs()
    with pytest.raises(ValueError, match="features"):
        LinearHead().fit(X, y).predict(X[:, :5])


def test_fused_head_beats_parts_floor_and_round_trips(tmp_path):
    X, y = blobs(n=600, d=8)
    Xt, yt = blobs(n=200, d=8, seed=5)
    head = FusedHead(k=10).fit(X, y)
    acc = (head.predict(Xt) == yt).mean()
    assert acc > 0.8 and 0.0 <= head.weight_ <= 1.0 and head.C_ in (0.01, 0.1, 1.0)
    p = head.predict_proba(Xt)
    assert np.allclose(p.sum(axis=1), 1.0)
    save_head(head, tmp_path / "h", encoder_fingerprint="fp1")
    idx = VectorIndex.from_vectors(X, range(len(X)), y)
    loaded = load_head(tmp_path / "h", encoder_fingerprint="fp1").attach_index(idx)
    assert np.allclose(loaded.predict_proba(Xt), p, atol=1e-9)
    assert np.allclose(loaded.ood_score([0.5, 1.0]), head.ood_score([0.5, 1.0]))
    with pytest.raises(ValueError, match="trained on encoder fp1"):
        load_head(tmp_path / "h", encoder_fingerprint="other")


def test_tampered_head_is_refused(tmp_path):
    X, y = blobs(n=200)
    save_head(FusedHead(k=5, C=1.0).fit(X, y), tmp_path / "h")
    doc = json.loads((tmp_path / "h" / "head.json").read_text())
    doc["payload"]["weight"] = 0.123
    (tmp_path / "h" / "head.json").write_text(json.dumps(doc))
    with pytest.raises(ChecksumError, match="payload sha256"):
        load_head(tmp_path / "h")
    save_head(FusedHead(k=5, C=1.0).fit(X, y), tmp_path / "h2")
    flip_byte(tmp_path / "h2" / "head.npz")
    with pytest.raises(ChecksumError, match=r"head\.npz"):
        load_head(tmp_path / "h2")


def test_ood_score_is_high_for_far_queries():
    X, y = blobs(n=400)
    head = FusedHead(k=5, C=1.0).fit(X, y)
    sims_in, _ = head.knn_.kneighbors(X[:50], exclude_self=True)
    far = np.random.default_rng(9).normal(size=(20, X.shape[1])).astype(np.float32) * 50
    sims_far, _ = head.knn_.kneighbors(far)
    assert head.ood_score(sims_in[:, -1]).mean() < 0.7
    assert head.ood_score(sims_far[:, -1]).mean() > 0.9


def test_ood_reference_is_a_bounded_leave_one_out_sample():
    """The OOD reference comes from at most ``ood_reference_rows`` leave-one-out searches (not
    one per sampled row), and equals the exact k-th-neighbour distances of those rows."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000, 8)).astype(np.float32)
    y = np.where(X[:, 0] > 0, "a", "b")
    head = FusedHead(k=5, C=1.0, ood_reference_rows=300).fit(X, y)
    assert len(head.ood_reference_) == 300
    # oracle: brute-force cosine k-th neighbour of every row, self excluded
    x = l2_normalize(X)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    kth = (1.0 - np.sort(sims, axis=1)[:, -5]).astype(np.float64)
    gap = np.abs(head.ood_reference_[:, None] - kth[None, :]).min(axis=1)
    assert gap.max() < 1e-5  # each reference value is some row's exact leave-one-out distance
