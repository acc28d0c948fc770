"""The ``--target`` safe rule (:func:`genoray.scoring.adapt.safe_target`) on synthetic shifts
with known ground truth: never worse than no target by more than a stated tolerance on ECE and
MCC, a label-prior shift corrected, a covariate shift that keeps the posteriors left alone, a
covariate shift that breaks the calibration tempered.

Tolerance: ``TOL`` = 0.02 on ECE and MCC, no more than two bootstrap standard errors of MCC and
about two of ECE on the 1,000 scored rows of these tests (``test_tolerance_is_bootstrap_noise``)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from genoray.config import TargetConfig
from genoray.evaluation.metrics import classification_metrics, ece
from genoray.heads.common import _fit_temperature, calibrate
from genoray.scoring.adapt import density_ratios, safe_target

TOL = 0.02
CLASSES = np.array(["neg", "pos"], dtype=object)


def _gauss(n, prior, rng, shift1=0.0, noisy=False):
    x = rng.normal(size=(n, 4))
    x[:, 1] += shift1
    y = (rng.random(n) < prior).astype(int)
    if noisy:  # the label noise grows with x1: p(y | x) depends on x1, which the linear head ignores
        sd = 0.2 + 2.0 / (1 + np.exp(-3 * (x[:, 1] - 1.5)))
        y = (x[:, 0] + rng.normal(size=n) * sd > 0).astype(int)
    else:
        x[:, 0] += np.where(y == 1, 0.8, -0.8)
    return x, y


def _run(make_target, seed=0, noisy=False, **gates):
    """Head (logistic regression) fitted on the source; the rule decided on a target sample and
    applied to other target rows. Returns the decision, the scored labels and both probabilities."""
    rng = np.random.default_rng(seed)
    xs, ys = _gauss(4000, 0.5, rng, noisy=noisy)
    xv, yv = _gauss(2000, 0.5, rng, noisy=noisy)
    head = LogisticRegression(max_iter=1000).fit(xs, ys)
    xt, _ = make_target(1000, rng)
    xq, yq = make_target(1000, rng)
    rule = safe_target(head.predict_proba(xv), yv, xv, head.predict_proba(xt), xt, CLASSES, [0.5, 0.5],
                       TargetConfig(), **gates)
    p0 = head.predict_proba(xq)
    return rule, CLASSES[yq], p0, rule.apply(p0)


def _never_worse(y, p0, p1):
    m0, m1 = classification_metrics(y, p0, CLASSES), classification_metrics(y, p1, CLASSES)
    assert ece(y, p1, CLASSES) <= ece(y, p0, CLASSES) + TOL
    assert m1["mcc"] >= m0["mcc"] - TOL
    return m0, m1


def test_label_prior_shift_is_corrected():
    rule, y, p0, p1 = _run(lambda n, rng: _gauss(n, 0.15, rng))
    assert rule.applied and rule.temper_ood == 1.0, rule.reason
    lo, hi = rule.extra["prior_interval"][1]
    assert hi < 0.5 and lo <= 0.15 + 0.05 and rule.target_priors[1] == pytest.approx(0.15, abs=0.04)
    m0, m1 = _never_worse(y, p0, p1)
    assert m1["accuracy"] > m0["accuracy"] + 0.03
    share = np.mean(y == "pos")  # calibration in the large: the mean probability of "pos" is its share
    assert abs(p1[:, 1].mean() - share) < 0.03 < 0.1 < abs(p0[:, 1].mean() - share)
    assert "excludes the source prior" in rule.reason and "re-weighted" in rule.reason


def test_covariate_shift_without_signal_leaves_probabilities_unchanged():
    """x1 carries no label information: the target moves along it by 2 SD (the domain classifier
    sees it), the posteriors and their calibration are unchanged, so nothing may change."""
    rule, y, p0, p1 = _run(lambda n, rng: _gauss(n, 0.5, rng, shift1=2.0))
    assert rule.extra["domain_auc"] > 0.8  # the shift is there ...
    assert not rule.applied and rule.temper_ood == 1.0, rule.reason  # ... and nothing is done about it
    np.testing.assert_array_equal(p1, p0)
    assert "temperature kept" in rule.reason and "not re-weighted" in rule.reason


def test_no_shift_leaves_probabilities_unchanged_on_most_seeds():
    changed = 0
    for seed in range(5):
        rule, _, p0, p1 = _run(lambda n, rng: _gauss(n, 0.5, rng), seed=seed)
        changed += not np.array_equal(p0, p1)
    assert changed == 0


def test_covariate_shift_that_breaks_calibration_is_tempered():
    """The target lies where the labels are noisier than the source's: the head is over-confident
    there; the importance-weighted temperature sees it on the weighted source rows."""
    rule, y, p0, p1 = _run(lambda n, rng: _gauss(n, 0.5, rng, shift1=1.5, noisy=True), noisy=True)
    assert rule.temper_ood > 1.2, rule.reason
    _never_worse(y, p0, p1)
    assert ece(y, p1, CLASSES) < ece(y, p0, CLASSES) - 0.03
    np.testing.assert_array_equal(p1.argmax(1), p0.argmax(1))  # a temperature keeps every label


def test_density_ratios_are_the_clipped_odds():
    p = np.array([0.5, 0.5, 0.9, 0.1])
    w = density_ratios(p, 4, 4, clip=3.0)
    raw = np.array([1, 1, 9, 1 / 9]) / np.mean([1, 1, 9, 1 / 9])
    expect = np.minimum(raw, 3.0)
    np.testing.assert_allclose(w, expect / expect.mean())


def _dna(n, length, rng, mutate=0):
    seqs, y = [], (rng.random(n) < 0.5).astype(int)
    for label in y:
        s = list(rng.choice(list("ACGT"), size=length))
        m = list("TATAAT" if label else "GGCGCC")  # each class has its motif
        for j in rng.choice(len(m), mutate, replace=False):
            m[j] = rng.choice([b for b in "ACGT" if b != m[j]])
        at = int(rng.integers(0, length - len(m)))
        s[at:at + len(m)] = m
        seqs.append("".join(s))
    return seqs, y


@pytest.mark.parametrize("kind", ["length only", "motif loss"])
def test_dna_shifts_never_worse(kind):
    """k-mer features of synthetic sequences (TATAAT planted in the positives, GGCGCC in the
    negatives): the target rows are half as long (length only) or carry their class's motif with
    2 of 6 bases changed (motif loss). A motif lost in one class only is not tested: without labels
    it is indistinguishable from a prior shift towards the other class (docs/shift.md)."""
    from genoray.encoders.kmer import KmerEncoder

    enc, rng = KmerEncoder(), np.random.default_rng(3)
    s_tr, y_tr = _dna(1500, 100, rng)
    s_va, y_va = _dna(800, 100, rng)
    length, mutate = (50, 0) if kind == "length only" else (100, 2)
    s_t, _ = _dna(600, length, rng, mutate=mutate)
    s_q, y_q = _dna(600, length, rng, mutate=mutate)
    lr = LogisticRegression(C=0.1, max_iter=2000).fit(enc.embed(s_tr), y_tr)
    x_va, x_t, x_q = enc.embed(s_va), enc.embed(s_t), enc.embed(s_q)
    t = _fit_temperature(lr.predict_proba(x_va), y_va)  # a calibrated head, as genoray's fused head is

    def head(x):
        return calibrate(lr.predict_proba(x), t)

    rule = safe_target(head(x_va), y_va, x_va, head(x_t), x_t, CLASSES, [0.5, 0.5], length_ratio=length / 100)
    p0 = head(x_q)
    _never_worse(CLASSES[y_q], p0, rule.apply(p0))
    assert not rule.applied  # the priors did not move (both 50%)


def test_tolerance_is_bootstrap_noise():
    """TOL is at most two bootstrap standard errors of MCC and about two of ECE on 1,000 scored rows."""
    rng = np.random.default_rng(1)
    _, y, p0, _ = _run(lambda n, r: _gauss(n, 0.5, r))
    e, m = [], []
    for _ in range(200):
        i = rng.integers(0, len(y), len(y))
        e.append(ece(y[i], p0[i], CLASSES))
        m.append(classification_metrics(y[i], p0[i], CLASSES)["mcc"])
    assert TOL <= 2 * np.std(m) and 0.5 * TOL <= 2 * np.std(e)


def test_cli_predict_with_target_source(tmp_path, capsys):
    """``--target-source``: labeled source rows (here the training records, which do not vote for
    themselves) let the rule weigh a temperature; the decision and its reason reach the output;
    unlabeled source rows are refused with the file named."""
    import json

    from bundles import make_bundle
    from conftest import toy_records, write_fasta

    from genoray.cli import main

    make_bundle(tmp_path / "w", tmp_path / "root")
    rng = np.random.default_rng(3)
    target = [(f"t{i}", "".join(rng.choice(list("AATTGC" if i % 10 else "GGCCAT"), size=60))) for i in range(100)]
    write_fasta(tmp_path / "target.fa", target)
    write_fasta(tmp_path / "q.fa", target[:5])
    write_fasta(tmp_path / "source.fa", toy_records(200, seed=0))
    capsys.readouterr()
    argv = ["predict", str(tmp_path / "q.fa"), "--index", str(tmp_path / "w" / "index"), "--head",
            str(tmp_path / "w" / "head"), "--target", str(tmp_path / "target.fa")]
    assert main(argv + ["--target-source", str(tmp_path / "source.fa")]) == 0
    out = capsys.readouterr()
    adaptation = json.loads(out.err.strip().splitlines()[-1])["target_adaptation"]
    assert adaptation["applied"] and adaptation["extra"]["source_rows"] == 200
    assert "domain classifier AUC" in adaptation["reason"] and "re-weighted" in adaptation["reason"]
    assert adaptation["target_priors"][adaptation["classes"].index("at")] > 0.8
    lines = [json.loads(x) for x in out.out.splitlines()]
    assert all(x["adaptation"]["ood"].startswith("domain classifier") and 0 <= x["ood_score"] <= 1 for x in lines)
    write_fasta(tmp_path / "unlabeled.fa", target[:20])
    assert main(argv + ["--target-source", str(tmp_path / "unlabeled.fa")]) != 0
    assert "unlabeled.fa: --target-source needs a label on every row" in capsys.readouterr().err


def test_domain_ood_score_is_calibrated_on_source_rows_and_separates_the_target():
    """With labeled source rows the target sample's domain classifier is a per-query OOD score:
    about ``rate`` of new source rows above 0.95, and the target's rows ranked above the source's
    near the ceiling (the cross-fitted C2ST AUC of the same vectors)."""
    from sklearn.metrics import roc_auc_score

    from genoray.scoring.adapt import domain_odds

    rng = np.random.default_rng(2)
    xv, yv = _gauss(2000, 0.5, rng)
    xt, _ = _gauss(1000, 0.5, rng, shift1=1.0)
    head = LogisticRegression(max_iter=1000).fit(*_gauss(2000, 0.5, rng))
    rule = safe_target(head.predict_proba(xv), yv, xv, head.predict_proba(xt), xt, CLASSES, [0.5, 0.5])
    new_src, _ = _gauss(2000, 0.5, rng)
    new_tgt, _ = _gauss(2000, 0.5, rng, shift1=1.0)
    a, b = rule.domain_ood(new_src), rule.domain_ood(new_tgt)
    assert 0.03 <= np.mean(a > 0.95) <= 0.08 and a.min() >= 0 and b.max() <= 1
    auc = roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])
    ceiling = domain_odds(new_src, new_tgt)[1]
    assert auc >= 0.95 * ceiling and ceiling > 0.7
    assert rule.domain_ood(np.zeros((3, 7))) is None  # other features: no score
