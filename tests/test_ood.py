"""Per-query OOD score (item 1), label-shift correction (item 2) and their serving (item 5)."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from genoray.scoring.ood import OODConfig, OODScorer, crop
from genoray.scoring.priors import PriorShift, em_priors, reweight


def random_dna(n, length, gc, seed):
    rng = np.random.default_rng(seed)
    p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
    return ["".join(rng.choice(list("ACGT"), size=length, p=p)) for _ in range(n)]


@pytest.fixture(scope="module")
def kmer_reference():
    from genoray.encoders.kmer import KmerEncoder

    enc = KmerEncoder()
    seqs = random_dna(600, 200, 0.45, 0) + random_dna(600, 200, 0.55, 1)
    labels = ["a"] * 600 + ["b"] * 600
    ood = OODScorer(OODConfig(max_cal_rows=400)).fit(enc.embed(seqs), labels, seqs, enc)
    return enc, ood


def test_in_domain_rate_length_robust_and_shift_detected(kmer_reference):
    enc, ood = kmer_reference
    fresh = random_dna(300, 200, 0.45, 10) + random_dna(300, 200, 0.55, 11)
    s_in = ood.score_sequences(fresh, enc)
    assert 0.01 <= ood.flag(s_in).mean() <= 0.10  # calibrated at 5% on held-out rows
    # the same distribution at other lengths is not flagged (length-matched calibration / centre window)
    rng = np.random.default_rng(3)
    for other in (crop(fresh, 60, rng), crop(fresh, 100, rng), [a + b for a, b in zip(fresh, fresh[1:] + fresh[:1])]):
        s = ood.score_sequences(other, enc)
        assert ood.flag(s).mean() <= 0.12
        assert roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s))], np.r_[s_in, s]) <= 0.62
    # a composition shift is seen at the reference length and at a shorter one
    shifted = random_dna(300, 200, 0.75, 12)
    s_sh = ood.score_sequences(shifted, enc)
    assert roc_auc_score(np.r_[np.zeros(600), np.ones(300)], np.r_[s_in, s_sh]) > 0.95
    assert ood.flag(ood.score_sequences(crop(shifted, 80, rng), enc)).mean() > 0.5


def test_fisher_combination_is_calibrated_and_matches_hand_computation():
    """Item 1: the views (Mahalanobis at 4 and 16 components, Markov NLL, complexity-corrected
    NLL) combined by Fisher's method: -2 sum log p of each view's upper-tail p-value
    (hand-computed from the stored calibration arrays), then calibrated like ``max``."""
    from genoray.encoders.kmer import KmerEncoder
    from genoray.scoring.ood import markov_nll

    enc = KmerEncoder()
    seqs = random_dna(500, 120, 0.45, 20) + random_dna(500, 120, 0.55, 21)
    ood = OODScorer(OODConfig(max_cal_rows=300, combine="fisher", pca_dims=(4, 16))).fit(
        enc.embed(seqs), ["a"] * 500 + ["b"] * 500, seqs, enc)
    fresh = random_dna(200, 120, 0.45, 22) + random_dna(200, 120, 0.55, 23)
    s_in = ood.score_sequences(fresh, enc)
    assert 0.01 <= ood.flag(s_in).mean() <= 0.10
    s_sh = ood.score_sequences(random_dna(200, 120, 0.7, 24), enc)
    assert roc_auc_score(np.r_[np.zeros(400), np.ones(200)], np.r_[s_in, s_sh]) > 0.85
    sp, x = ood.spaces_[-1], enc.embed(fresh[:5])
    views = [(sp[f"cal{d}"], ood._mahalanobis(sp, x, int(d))) for d in sp["dims"]]
    nll = markov_nll(ood.markov_, fresh[:5], 5)
    views.append((sp["calmarkov"], nll))
    comp = []  # composition entropy by hand: counts + 0.5, -sum p log p
    for q in fresh[:5]:
        c = np.array([q.count(b) + 0.5 for b in "ACGT"])
        comp.append(-np.sum(c / c.sum() * np.log(c / c.sum())))
    views.append((sp["calcomplexity"], nll - np.array(comp)))
    hand = np.zeros(5)
    for cal, v in views:
        above = np.array([np.sum(cal >= q) for q in v])
        hand += -2 * np.log((above + 1) / (len(cal) + 1))
    np.testing.assert_allclose(ood.raw(x, seqs=fresh[:5]), hand)
    with pytest.raises(ValueError, match="combine"):
        OODConfig(combine="mean")


def test_complexity_corrected_view_sees_what_the_likelihood_misses():
    """Item 1: under a chain fitted on uniform DNA every sequence costs about log 4 per base, so
    the NLL alone cannot tell AT-rich sequences from the reference; the NLL minus the query's
    own composition entropy can (the view added to the OOD score)."""
    from genoray.scoring.ood import base_entropy, markov_fit, markov_nll

    ref, same, shifted = random_dna(400, 150, 0.5, 30), random_dna(200, 150, 0.5, 31), random_dna(200, 150, 0.2, 32)
    chain = markov_fit(ref, 5)
    n_same, n_shift = markov_nll(chain, same, 5), markov_nll(chain, shifted, 5)
    y = np.r_[np.zeros(200), np.ones(200)]
    assert roc_auc_score(y, np.r_[n_same, n_shift]) < 0.65
    assert roc_auc_score(y, np.r_[n_same - base_entropy(same), n_shift - base_entropy(shifted)]) > 0.95
    np.testing.assert_allclose(base_entropy(["ACGT" * 10, "AAAA"]), [np.log(4), -(4.5 / 6 * np.log(4.5 / 6)
                               + 3 * 0.5 / 6 * np.log(0.5 / 6))])


def test_save_load_roundtrip_and_tamper(tmp_path, kmer_reference):
    from genoray.infra.artifacts import ChecksumError

    enc, ood = kmer_reference
    ood.save(tmp_path / "o")
    back = OODScorer.load(tmp_path / "o")
    x = random_dna(50, 70, 0.5, 5)
    np.testing.assert_array_equal(back.score_sequences(x, enc), ood.score_sequences(x, enc))
    assert back.describe() == ood.describe() and back.describe()["length_matched"]
    doc = json.loads((tmp_path / "o" / "ood.json").read_text())
    doc["payload"]["config"]["rate"] = 0.2
    (tmp_path / "o" / "ood.json").write_text(json.dumps(doc))
    with pytest.raises(ChecksumError, match="ood.json"):
        OODScorer.load(tmp_path / "o")


def test_knn_method_and_bad_input():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 8)) + 3.0).astype(np.float32)  # cosine kNN: rows in one cone
    o = OODScorer(OODConfig(method="knn")).fit(x)
    assert 0.0 < o.flag(o.score(rng.normal(size=(400, 8)) + 3.0)).mean() < 0.12
    assert o.flag(o.score(-(rng.normal(size=(100, 8)) + 3.0))).mean() > 0.9
    with pytest.raises(ValueError, match="dimension 8"):
        o.score(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 20"):
        OODScorer().fit(x[:5])
    with pytest.raises(ValueError, match="method"):
        OODConfig(method="nope")


def _posteriors(n, prior1, seed):
    """Exact posteriors of two unit-variance Gaussians (means -1, +1) under source priors 0.5/0.5."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prior1).astype(int)
    x = rng.normal(size=n) + np.where(y == 1, 1.0, -1.0)
    p1 = 1 / (1 + np.exp(-2 * x))
    return np.stack([1 - p1, p1], axis=1), y


def test_em_recovers_priors_and_bayes_reweighting():
    proba, y = _posteriors(20000, 0.2, 0)
    pi = em_priors(proba, np.array([0.5, 0.5]))
    assert pi[1] == pytest.approx(y.mean(), abs=0.02)
    # reweight is Bayes' rule: hand-computed for one row
    out = reweight(np.array([[0.5, 0.5]]), np.array([0.5, 0.5]), np.array([0.8, 0.2]))
    np.testing.assert_allclose(out, [[0.8, 0.2]])
    shift = PriorShift.estimate(proba, ["neg", "pos"], [0.5, 0.5])
    assert shift.applied and shift.p_value < 1e-6 and "re-weighted" in shift.reason
    lo, hi = shift.extra["prior_interval"][1]
    assert lo <= y.mean() <= hi and hi < 0.5  # the bootstrap interval holds the truth, not the source prior
    acc_before = np.mean(proba.argmax(1) == y)
    acc_after = np.mean(shift.apply(proba).argmax(1) == y)
    assert acc_after > acc_before + 0.03


def test_expected_mcc_is_mcc_for_hard_labels():
    """The unsupervised MCC estimate equals sklearn's MCC when the belief is one-hot (3 classes)."""
    from sklearn.metrics import matthews_corrcoef

    from genoray.scoring.priors import expected_mcc

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    pred[:150] = y[:150]
    assert expected_mcc(np.eye(3)[y], pred) == pytest.approx(matthews_corrcoef(y, pred), abs=1e-12)
    assert expected_mcc(np.eye(2)[np.zeros(10, int)], np.zeros(10, int)) == 0.0  # one class: defined as 0


def test_reweighting_that_would_lower_mcc_is_refused():
    """Item 4: a weak classifier under a strong prior shift: re-weighting would push almost every
    label to the majority class; the rule sees the expected MCC drop without labels and keeps the
    unadapted probabilities, and the true MCC confirms it would have dropped."""
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(4)
    y = (rng.random(4000) < 0.1).astype(int)
    x = rng.normal(size=4000) + np.where(y == 1, 0.4, -0.4)
    p1 = 1 / (1 + np.exp(-0.8 * x))
    proba = np.stack([1 - p1, p1], axis=1)
    shift = PriorShift.estimate(proba, ["neg", "pos"], [0.5, 0.5])
    assert shift.extra["prior_interval"][1][1] < 0.5 and not shift.applied and "expected MCC" in shift.reason
    np.testing.assert_array_equal(shift.apply(proba), proba)
    always = PriorShift(**{**shift.to_dict(), "applied": True}).apply(proba)
    assert matthews_corrcoef(y, always.argmax(1)) < matthews_corrcoef(y, proba.argmax(1)) - 0.02
    assert shift.extra["expected_mcc_reweighted"] < shift.extra["expected_mcc_unadapted"] - 0.02


def test_no_prior_shift_leaves_probabilities_unchanged():
    flagged = 0
    for seed in range(20):
        proba, _ = _posteriors(800, 0.5, seed)
        shift = PriorShift.estimate(proba, ["neg", "pos"], [0.5, 0.5])
        flagged += shift.applied
        if not shift.applied:
            np.testing.assert_array_equal(shift.apply(proba), proba)
    assert flagged <= 2  # alpha 0.01 over 20 seeds


def test_predictor_bundle_and_service_report_ood_and_adaptation(tmp_path):
    from bundles import make_bundle
    from fastapi.testclient import TestClient

    from genoray.bundle import publish
    from genoray.pipeline import write_bundle
    from genoray.predict import Predictor
    from genoray.serving.backends import plain_app

    root = tmp_path / "bundles"
    make_bundle(tmp_path / "w", root)
    predictor, _ = Predictor.from_bundle(root)
    assert predictor.ood is not None and predictor.ood.describe()["length_matched"]
    # a target with 90% "at"-like sequences: priors estimated, re-weighting applied
    rng = np.random.default_rng(7)
    target = ["".join(rng.choice(list("AATTGC"), size=60)) for _ in range(90)]
    target += ["".join(rng.choice(list("GGCCAT"), size=60)) for _ in range(10)]
    shift = predictor.adapt_to(target)
    assert shift.applied and shift.target_priors[shift.classes.index("at")] > 0.7
    preds = predictor.predict(target[:3] + ["ACGT" * 15])
    assert all(p.adaptation["applied"] for p in preds) and all(isinstance(p.ood, bool) for p in preds)
    # a bundle built for the target serves the same re-weighted probabilities
    version = write_bundle(root, tmp_path / "w" / "index", tmp_path / "w" / "head", target=target)
    publish(root, version)
    served, _ = Predictor.from_bundle(root)
    assert served.priors.applied
    np.testing.assert_allclose([p.probabilities["at"] for p in served.predict(target[:3])],
                               [p.probabilities["at"] for p in preds[:3]])
    client = TestClient(plain_app(str(root)))
    r = client.post("/v1/predict", json={"sequences": target[:2] + ["GGGGCCCC" * 8]})
    assert r.status_code == 200, r.text
    out = r.json()["predictions"]
    assert all("ood" in p and "ood_score" in p and p["adaptation"]["applied"] for p in out)
    assert out[2]["ood"] is True  # all-GC 64-mer is far from both classes
    info = client.get("/v1/info").json()
    assert info["ood"]["rate"] == 0.05 and info["ood"]["n_calibration"] > 0 and "threshold_raw" in info["ood"]
    assert info["drift"]["requests"] == 1 and info["drift"]["window_rows"] == 3
    assert info["drift"]["ood_rate_window"] == pytest.approx(sum(p["ood"] for p in out) / 3)
    assert set(info["drift"]["class_mix"]) <= {"at", "gc"} and info["target_adaptation"]["applied"]


def test_domain_normalizer_is_inductive(tmp_path):
    """Item 3: statistics come from the fitted sample only and apply to rows never seen."""
    from genoray.scoring.adapt import DomainNormalizer

    rng = np.random.default_rng(0)
    src, tgt_sample, tgt_new = rng.normal(size=(50, 4)), rng.normal(2.0, 3.0, size=(40, 4)), rng.normal(2.0, 3.0, size=(7, 4))
    norm = DomainNormalizer().fit(np.vstack([src, tgt_sample]), ["s"] * 50 + ["t"] * 40)
    out = norm.transform(tgt_new, "t")
    np.testing.assert_allclose(out, (tgt_new - tgt_sample.mean(0)) / tgt_sample.std(0), rtol=1e-5)
    norm.save(tmp_path)
    np.testing.assert_array_equal(DomainNormalizer.load(tmp_path).transform(tgt_new, "t"), out)
    with pytest.raises(ValueError, match="not in fit"):
        norm.transform(tgt_new, "other")


def test_study_cross_adaptation_fits_on_rows_disjoint_from_scored(tmp_path, monkeypatch):
    """Item 3: the study's cross-dataset adaptations see the target's train split, never its test rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genoray.evaluation.study import Study, evaluate
    from genoray.scoring import adapt

    paths = {}
    for name, gc in (("a", 0.4), ("b", 0.6)):
        seqs = random_dna(60, 80, gc, 1) + random_dna(60, 80, gc + 0.1, 2)
        labels = ["x"] * 60 + ["y"] * 60
        split = (["train"] * 45 + ["test"] * 15) * 2
        paths[name] = str(tmp_path / f"{name}.parquet")
        pq.write_table(pa.table({"id": [f"{name}{i}" for i in range(120)], "sequence": seqs, "label": labels,
                                 "split": split}), paths[name])
    seen = {}
    real_fit = adapt.DomainNormalizer.fit

    def spy(self, x, domains):
        seen["tgt_rows"] = int(np.sum(np.asarray(domains) == "tgt"))
        return real_fit(self, x, domains)

    monkeypatch.setattr(adapt.DomainNormalizer, "fit", spy)
    rep = evaluate(Study(name="t", datasets=paths, cross=(("a", "b"),), bootstrap=5), tmp_path / "rep")
    assert seen["tgt_rows"] == 90  # b's train split (unlabeled), not the 30 scored test rows
    cells = {r["method"]: r for r in rep["results"]}
    assert cells["fused+domain-norm"]["n_test"] == 30 and "fused+pseudo-label" in cells


@pytest.mark.ray
def test_serve_replica_exports_drift_metrics(serve_port, tmp_path):
    """Item 5 under Ray Serve: responses carry ``ood``; the replica's DriftMonitor exports through
    ``ray.serve.metrics``; ``/v1/info`` shows the threshold, its calibration and the window."""
    import urllib.request

    from bundles import make_bundle
    from ray import serve

    from bench.loadtest import post
    from genoray.config import ServeConfig
    from genoray.serving.app import build_app
    from genoray.serving.service import hash_key

    root = tmp_path / "root"
    make_bundle(tmp_path / "w", root)
    cfg = ServeConfig(root=str(root), port=serve_port, key_hashes=(hash_key("k"),), poll_s=0.5, num_cpus=0.1,
                      min_replicas=1, max_replicas=1)
    serve.run(build_app(cfg), name="drift", route_prefix="/drift")
    try:
        for _ in range(3):
            status, body, _ = post(serve_port, "/drift/v1/predict", {"sequences": ["GGCCGGCCAT" * 6, "G" * 60]}, "k")
            assert status == 200
        preds = json.loads(body)["predictions"]
        assert [type(p["ood"]) for p in preds] == [bool, bool] and preds[1]["ood"] is True
        req = urllib.request.Request(f"http://127.0.0.1:{serve_port}/drift/v1/info", headers={"Authorization": "Bearer k"})
        info = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert info["ood"]["length_matched"] and info["ood"]["rate"] == 0.05
        assert info["drift"]["prometheus"] is True and info["drift"]["requests"] == 3
        assert info["drift"]["window_rows"] == 6 and info["drift"]["ood_rate_window"] >= 1 / 3
    finally:
        serve.delete("drift")


def test_covariate_shifted_target_is_neither_reweighted_nor_tempered_by_the_prior_rule():
    """Item 4: the do-no-harm rule refuses EM under covariate shift and leaves the probabilities
    alone (the uninformed tempering it used to add pulled well-predicted targets to 0.5); only an
    importance-weighted temperature (genoray.scoring.adapt.safe_target) may temper them."""
    proba, _ = _posteriors(1000, 0.2, 1)
    flags = np.zeros(1000, dtype=bool)
    flags[:400] = True  # 40% of the target out of distribution at a 5% rate
    shift = PriorShift.estimate(proba, ["neg", "pos"], [0.5, 0.5], ood_flags=flags, ood_rate=0.05)
    assert not shift.applied and "covariate-shifted" in shift.reason and shift.extra["ood_fraction"] == 0.4
    np.testing.assert_array_equal(shift.apply(proba, flags), proba)
    assert not shift.summary()["tempered"]
    hot = PriorShift.estimate(proba, ["neg", "pos"], [0.5, 0.5], ood_flags=flags, ood_rate=0.05, temperature=2.0)
    hand = proba ** 0.5 / (proba ** 0.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(hot.apply(proba), hand, rtol=1e-9)
    # too far from the reference length: no re-weighting either
    far = PriorShift.estimate(proba, ["neg", "pos"], [0.5, 0.5], length_ratio=0.3)
    assert not far.applied and "reference length" in far.reason


def test_cli_predict_with_target(tmp_path, capsys):
    """Item 2 from the CLI: --target takes an unlabeled file; each line reports ood and the adaptation."""
    from bundles import make_bundle
    from conftest import write_fasta

    from genoray.cli import main

    make_bundle(tmp_path / "w", tmp_path / "root")
    rng = np.random.default_rng(3)
    target = [(f"t{i}", "".join(rng.choice(list("AATTGC" if i % 10 else "GGCCAT"), size=60))) for i in range(100)]
    write_fasta(tmp_path / "target.fa", target)
    write_fasta(tmp_path / "q.fa", target[:5])
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "q.fa"), "--index", str(tmp_path / "w" / "index"), "--head",
                 str(tmp_path / "w" / "head"), "--target", str(tmp_path / "target.fa")]) == 0
    out = capsys.readouterr()
    lines = [json.loads(x) for x in out.out.splitlines()]
    summary = json.loads(out.err.strip().splitlines()[-1])
    assert len(lines) == 5 and all(isinstance(x["ood"], bool) and x["adaptation"]["applied"] for x in lines)
    assert summary["target_adaptation"]["applied"] and summary["predicted"] == 5
