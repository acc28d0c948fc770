"""Tree head, selection among kNN / linear / trees, bounded fit, persistence without pickle."""

import json

import numpy as np
import pytest

from genoray.heads import FusedHead, TreeHead, apply_isotonic, load_head, save_head
from genoray.heads.common import _loo_neighbours
from genoray.index import VectorIndex, l2_normalize
from genoray.infra.artifacts import ChecksumError, sha256_json


def xor(n=800, d=8, seed=0):
    """Label = sign(x0) xor sign(x1): no linear signal, an interaction trees find."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = np.where((X[:, 0] > 0) ^ (X[:, 1] > 0), "pos", "neg").astype(object)
    return X, y


def test_auto_picks_trees_on_an_interaction_and_beats_linear():
    X, y = xor()
    Xt, yt = xor(n=400, seed=1)
    lin = FusedHead(head="linear", tree_threads=1).fit(X, y)
    auto = FusedHead(head="auto", tree_threads=1).fit(X, y)
    assert auto.mixture_["trees"] > 0 and auto.trees_ is not None
    assert abs(sum(auto.mixture_.values()) - 1.0) < 1e-9
    acc_auto, acc_lin = (auto.predict(Xt) == yt).mean(), (lin.predict(Xt) == yt).mean()
    assert acc_auto > 0.85 and acc_auto > acc_lin + 0.1
    # the choice is the minimum of the recorded validation scores
    assert auto.selection_["chosen"] == min(auto.val_scores_, key=auto.val_scores_.get)
    assert lin.mixture_["trees"] == 0 and lin.trees_ is None
    assert auto.calibration_method_ in ("temperature", "isotonic")


def test_tree_head_round_trip_predicts_identically_and_tamper_is_refused(tmp_path):
    X, y = xor()
    Xt, _ = xor(n=300, seed=2)
    head = FusedHead(head="trees", tree_threads=1).fit(X, y)
    assert head.trees_ is not None
    save_head(head, tmp_path / "h", encoder_fingerprint="fp")
    assert (tmp_path / "h" / "trees.ubj").is_file()
    doc = json.loads((tmp_path / "h" / "head.json").read_text())["payload"]
    assert doc["trees"]["library"] == "xgboost" and doc["selection"]["metric"] == "log_loss"
    loaded = load_head(tmp_path / "h", encoder_fingerprint="fp").attach_index(VectorIndex.from_vectors(X, range(len(X)), y))
    assert np.array_equal(loaded.trees_.predict_proba(Xt), head.trees_.predict_proba(Xt))
    assert np.array_equal(loaded.predict_proba(Xt), head.predict_proba(Xt))
    assert loaded.contributions(Xt[:5], 3) == head.contributions(Xt[:5], 3)
    raw = bytearray((tmp_path / "h" / "trees.ubj").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "h" / "trees.ubj").write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match=r"trees\.ubj"):
        load_head(tmp_path / "h")


def test_contributions_name_the_features_that_matter():
    X, y = xor(n=1000)
    trees = TreeHead(n_jobs=1).fit(X, y)
    cls = np.argmax(trees.predict_proba(X[:50]), axis=1)
    contrib = trees.contributions(X[:50], cls, top=2)
    assert all(len(c) == 2 for c in contrib)
    hits = np.mean([{c[0]["feature"], c[1]["feature"]} == {0, 1} for c in contrib])
    assert hits > 0.9
    head = FusedHead(head="linear").fit(X, y)
    with pytest.raises(ValueError, match="tree part"):
        head.contributions(X[:2])


def test_leave_one_out_neighbours_equal_brute_force():
    X, y = xor(n=300)
    ids = np.array([f"s{i}" for i in range(len(X))], dtype=object)
    order = np.random.default_rng(3).permutation(len(X))  # index rows in another order than X
    index = VectorIndex.from_vectors(X[order], ids[order], y[order])
    sims, pos = _loo_neighbours(index, X[:40], ids[:40], k=5, batch=16)
    full = l2_normalize(X[:40]) @ l2_normalize(X[order]).T
    for i in range(40):
        full[i, np.flatnonzero(ids[order] == ids[i])] = -np.inf
        top = np.argsort(-full[i])[:5]
        assert np.allclose(np.sort(sims[i])[::-1], full[i, top], atol=1e-5)
        assert ids[i] not in set(index.ids[pos[i]])


def test_fit_uses_a_bounded_sample():
    X, y = xor(n=1200)
    head = FusedHead(head="linear", max_rows=300).fit(X, y)
    assert head.selection_["rows_used"] == 300 and len(head.ood_reference_) == 300
    assert head.selection_["fit_rows"] + head.selection_["val_rows"] == 300
    # stratified: both classes in proportion
    assert head.knn_.index_.ntotal == 1200  # the vote still uses every reference row


def test_isotonic_probabilities_are_normalised():
    p = np.array([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    maps = [(np.array([0.0, 1.0]), np.array([0.0, 1.0]))] * 3
    q = apply_isotonic(p, maps)
    assert np.allclose(q.sum(axis=1), 1.0) and np.allclose(q, p, atol=1e-3)


def test_version_1_head_still_loads_and_unknown_versions_are_refused(tmp_path):
    X, y = xor(n=300)
    head = FusedHead(head="linear", C=1.0).fit(X, y)
    save_head(head, tmp_path / "h")
    doc = json.loads((tmp_path / "h" / "head.json").read_text())
    p = doc["payload"]
    v1 = {k: p[k] for k in ("kind", "classes", "linear_classes", "n_features", "weight", "C", "val_scores",
                            "encoder_fingerprint", "npz_sha256")}
    v1.update(format_version=1, calibration=2.0,
              params={k: p["params"][k] for k in ("k", "temperature", "C", "val_fraction", "seed")})
    (tmp_path / "h" / "head.json").write_text(json.dumps({"payload": v1, "sha256": sha256_json(v1)}))
    old = load_head(tmp_path / "h").attach_index(VectorIndex.from_vectors(X, range(len(X)), y))
    assert old.mixture_ == {"knn": p["weight"], "linear": 1.0 - p["weight"], "trees": 0.0}
    assert old.calibration_method_ == "temperature" and np.allclose(old.predict_proba(X[:5]).sum(axis=1), 1.0)
    v9 = dict(v1, format_version=9)
    (tmp_path / "h" / "head.json").write_text(json.dumps({"payload": v9, "sha256": sha256_json(v9)}))
    with pytest.raises(ValueError, match="head format 9 is newer than genoray .* upgrade genoray"):
        load_head(tmp_path / "h")


def test_tiny_training_sets_fit_and_fall_back_to_temperature():
    X, y = xor(n=24)
    head = FusedHead(head="auto", tree_threads=1).fit(X, y)
    assert head.calibration_method_ == "temperature" and head.calibration_scores_["isotonic"] is None
    assert np.allclose(head.predict_proba(X).sum(axis=1), 1.0)


def test_train_head_reads_only_a_bounded_sample_of_the_store(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genoray.config import HeadConfig, IndexConfig
    from genoray.embedding import store as schema
    from genoray.index import build_index
    from genoray.infra.artifacts import sha256_file
    from genoray.pipeline.train import train_head

    X, y = xor(n=3000, d=16)
    (tmp_path / "s" / "shards").mkdir(parents=True)
    parts = []
    for i, a in enumerate(range(0, 3000, 1000)):
        t = pa.table({schema.SEQ_ID: [f"r{j}" for j in range(a, a + 1000)], schema.LABEL: list(y[a:a + 1000]),
                      schema.DOMAIN: pa.nulls(1000, pa.string()), schema.SPLIT: ["train"] * 1000,
                      schema.SEQ_HASH: pa.nulls(1000, pa.string()),
                      schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(X[a:a + 1000].ravel()), 16)},
                     schema=schema.embedding_schema(16))
        pq.write_table(t, tmp_path / "s" / f"shards/p{i}.parquet", row_group_size=300)
        parts.append(schema.StorePart(file=f"shards/p{i}.parquet", rows=1000, source=f"synthetic-{i}",
                                      sha256=sha256_file(tmp_path / "s" / f"shards/p{i}.parquet")))
    schema.write_manifest(tmp_path / "s", schema.StoreManifest(
        format_version=2, encoder={"name": "test"}, fingerprint="t16", dim=16, status="complete", rows=3000,
        counts=schema.StoreCounts(read=3000, accepted=3000, rejected=0, written=3000), parts=tuple(parts)))
    build_index(tmp_path / "s", tmp_path / "ix", IndexConfig(split="train"))
    r = train_head(tmp_path / "s", tmp_path / "ix", tmp_path / "h", HeadConfig(head="linear", max_rows=700))
    assert r["rows"] == 3000 and r["rows_used"] == 700
    head = load_head(tmp_path / "h")
    assert head.selection_["rows_used"] == 700 and len(head.ood_reference_) == 700


def _two_class_val(n=400):
    codes = np.tile([0, 1], n // 2)
    def proba(p_correct):
        p = np.empty((n, 2))
        p[np.arange(n), codes] = p_correct
        p[np.arange(n), 1 - codes] = 1 - p_correct
        return p
    return codes, proba


def test_tree_rule_keeps_trees_that_are_clearly_better():
    from genoray.heads.select import keep_trees

    codes, proba = _two_class_val()
    val = {"knn": proba(np.full(len(codes), 0.55)), "linear": proba(np.full(len(codes), 0.6)),
           "trees": proba(np.full(len(codes), 0.9))}
    t = keep_trees(val, codes, seed=0)
    assert t["keep"] and t["z"] > 2 and t["mcc_with_trees"] == t["mcc_without_trees"] == 1.0


def test_tree_rule_drops_trees_whose_lower_log_loss_costs_calls():
    """Trees sharpen 90% of the rows (log-loss far lower, z huge) but get the other 10% wrong,
    and no mixture with trees rescues them: MCC falls, so auto keeps kNN + linear."""
    from genoray.heads.select import keep_trees

    codes, proba = _two_class_val()
    wrong = np.arange(len(codes)) % 10 == 3
    val = {"knn": proba(np.full(len(codes), 0.55)), "linear": proba(np.full(len(codes), 0.55)),
           "trees": proba(np.where(wrong, 0.45, 0.99))}
    t = keep_trees(val, codes, seed=0)
    assert t["z"] > 2 and t["mcc_with_trees"] < t["mcc_without_trees"] and not t["keep"]


def linear_signal(n=600, d=20, seed=0):
    """Label = sign of a linear score over all features, 15% of labels flipped: a problem
    the logistic regression fits and axis-aligned trees only approximate."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = np.where(X.sum(axis=1) > 0, "pos", "neg")
    flip = rng.random(n) < 0.15
    y[flip] = np.where(y[flip] == "pos", "neg", "pos")
    return X, y.astype(object)


def test_auto_is_the_linear_head_where_trees_are_worse_and_fit_modes_equals_separate_fits():
    X, y = linear_signal()
    Xt, _ = linear_signal(n=200, seed=1)
    heads = FusedHead.fit_modes(("linear", "trees", "auto"), X, y, tree_threads=1)
    alone = {m: FusedHead(head=m, tree_threads=1).fit(X, y) for m in ("linear", "auto")}
    for m, h in alone.items():  # shared work changes nothing
        assert heads[m].mixture_ == h.mixture_ and np.allclose(heads[m].predict_proba(Xt), h.predict_proba(Xt))
    auto, lin = heads["auto"], heads["linear"]
    assert auto.mixture_["trees"] == 0 and auto.trees_ is None and auto.mixture_ == lin.mixture_
    assert np.array_equal(auto.predict_proba(Xt), lin.predict_proba(Xt))
    assert heads["trees"].trees_ is not None
    for h in heads.values():
        assert h.fit_seconds_ > 0
    assert heads["trees"].fit_seconds_ > lin.fit_seconds_  # the trees' fit is counted where it runs


def test_quickstart_says_which_head_auto_chose():
    from genoray.pipeline.quickstart import head_choice

    dropped = {"mode": "auto", "chosen": "knn=0.2+linear=0.8",
               "tree_test": {"z": 1.4, "mcc_with_trees": 0.232, "mcc_without_trees": 0.239, "keep": False}}
    line = head_choice(dropped)
    assert "--head auto" in line and "auto chose kNN + linear, the default head" in line
    assert "z 1.40" in line and "0.232/0.239: trees dropped" in line
    kept = {"mode": "auto", "chosen": "knn=0.1+linear=0.3+trees=0.6",
            "tree_test": {"z": 6.1, "mcc_with_trees": 0.71, "mcc_without_trees": 0.6, "keep": True}}
    assert "auto chose with trees" in head_choice(kept) and "trees kept" in head_choice(kept)
    assert head_choice({"mode": "linear", "chosen": "knn=0.3+linear=0.7"}).startswith("fused head (--head linear)")
