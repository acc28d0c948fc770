"""A temperature per query length (genoray.heads.length_calibration): fitted on held-out rows
cropped to the OOD length grid, saved with the head (sha256), applied by the Predictor and shown
in /v1/info; heads without it load and predict unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_fasta

from genoray.encoders.kmer import KmerEncoder
from genoray.heads import FusedHead, load_head, save_head
from genoray.heads import length_calibration as lcm
from genoray.infra.artifacts import ChecksumError, sha256_json
from genoray.scoring.ood import crop


def gc_skewed(n: int, length: int, rng) -> tuple[list[str], np.ndarray]:
    """Two classes that differ only in GC content (0.56 vs 0.44): easy at 150 bp, noisy in a
    short crop, so a head calibrated at 150 bp is over-confident on short crops."""
    y = np.array(["a", "b"] * (n // 2), dtype=object)
    seqs = []
    for c in y:
        gc = 0.56 if c == "a" else 0.44
        seqs.append("".join(rng.choice(list("ACGT"), size=length, p=[(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])))
    return seqs, y


def ece(y, p, classes, bins: int = 10) -> float:
    conf, right = p.max(axis=1), np.asarray(classes)[p.argmax(axis=1)] == y
    edges = np.linspace(0, 1, bins + 1)
    return float(sum(((conf > lo) & (conf <= hi)).mean() * abs(conf[(conf > lo) & (conf <= hi)].mean()
                                                                 - right[(conf > lo) & (conf <= hi)].mean())
                     for lo, hi in zip(edges[:-1], edges[1:]) if ((conf > lo) & (conf <= hi)).any()))


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    enc = KmerEncoder()
    s, y = gc_skewed(600, 150, rng)
    test_s, test_y = gc_skewed(400, 150, rng)
    head = FusedHead(seed=0).fit(enc.embed(s), y, sequences=s, encoder=enc)
    return enc, head, test_s, test_y


def test_short_crops_get_a_temperature_above_one_and_a_lower_ece(fitted):
    enc, head, test_s, test_y = fitted
    lc = head.length_calibration_
    assert lc is not None and lc.native_length == 150 and lc.rows == 120  # 20% validation rows of 600
    assert 16 in lc.lengths and 300 in lc.lengths  # the OOD grid from 16 bp, and 2 rows joined
    short = crop(test_s, 30, np.random.default_rng(1))  # held-out rows, never seen by the fit
    p = head.predict_proba(enc.embed(short))
    tempered = lcm.apply(head, p, [len(q) for q in short])
    assert lc.temperature_at([30])[0] > 1.5 and lc.temperature_at([16])[0] > 2.0
    before, after = ece(test_y, p, head.classes_), ece(test_y, tempered, head.classes_)
    assert before > 0.12 and after < before - 0.07, (before, after)  # measured 0.171 -> 0.050
    assert np.array_equal(p.argmax(axis=1), tempered.argmax(axis=1))  # labels never change
    # the native length keeps the head's own calibration exactly
    p_native = head.predict_proba(enc.embed(test_s))
    assert lc.temperature_at([150])[0] == 1.0
    np.testing.assert_allclose(lcm.apply(head, p_native, [150] * len(test_s)), p_native, atol=1e-12)


def test_saved_with_the_head_and_tampering_is_refused(fitted, tmp_path):
    enc, head, test_s, _ = fitted
    save_head(head, tmp_path / "h")
    f = tmp_path / "h" / lcm.FILE
    doc = json.loads((tmp_path / "h" / "head.json").read_text())
    assert doc["payload"]["length_calibration"] and f.is_file()
    back = load_head(tmp_path / "h").attach_index(head.knn_.index_)
    assert back.length_calibration_ == head.length_calibration_
    x, lengths = enc.embed(test_s[:50]), [40] * 50
    np.testing.assert_array_equal(lcm.apply(back, back.predict_proba(x), lengths),
                                  lcm.apply(head, head.predict_proba(x), lengths))
    original = f.read_text()
    raw = json.loads(original)
    raw["payload"]["temperatures"][0] = 1.0  # edited, payload hash left as it was
    f.write_text(json.dumps(raw))
    with pytest.raises(ChecksumError, match="length_calibration.json"):
        load_head(tmp_path / "h")
    raw["sha256"] = sha256_json(raw["payload"])  # re-signed: still not the file head.json names
    f.write_text(json.dumps(raw))
    with pytest.raises(ChecksumError, match="does not match the document that lists it"):
        load_head(tmp_path / "h")
    f.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_head(tmp_path / "h")


def test_heads_without_it_load_and_predict_unchanged(fitted, tmp_path):
    enc, _, test_s, _ = fitted
    rng = np.random.default_rng(3)
    s, y = gc_skewed(200, 150, rng)
    head = FusedHead(seed=0).fit(enc.embed(s), y)  # no sequences: no length calibration
    assert head.length_calibration_ is None
    save_head(head, tmp_path / "h")
    assert not (tmp_path / "h" / lcm.FILE).exists()
    # an older head.json has no "length_calibration" key at all
    path = tmp_path / "h" / "head.json"
    doc = json.loads(path.read_text())
    doc["payload"].pop("length_calibration", None)
    doc["sha256"] = sha256_json(doc["payload"])
    path.write_text(json.dumps(doc))
    old = load_head(tmp_path / "h").attach_index(head.knn_.index_)
    assert old.length_calibration_ is None
    x = enc.embed(crop(test_s[:40], 30, rng))
    p = old.predict_proba(x)
    np.testing.assert_array_equal(p, head.predict_proba(x))
    assert lcm.apply(old, p, [30] * 40) is p


def test_train_head_fits_it_the_predictor_applies_it_and_info_shows_it(tmp_path):
    from genoray.bundle import publish
    from genoray.embedding.job import embed_sequences
    from genoray.index import build_index
    from genoray.pipeline import write_bundle
    from genoray.pipeline.train import train_head
    from genoray.predict.predictor import Predictor
    from genoray.serving.holder import BundleHolder

    rng = np.random.default_rng(5)
    s, y = gc_skewed(300, 150, rng)
    write_fasta(tmp_path / "t.fa", [(f"r{i} label={c} split={'test' if i % 5 == 0 else 'train'}", q)
                                    for i, (q, c) in enumerate(zip(s, y))])
    embed_sequences(tmp_path / "t.fa", tmp_path / "store", KmerEncoder(), use_ray=False)
    build_index(tmp_path / "store", tmp_path / "index")
    res = train_head(tmp_path / "store", tmp_path / "index", tmp_path / "head")
    assert res["length_calibration"]["native_length"] == 150  # sequences re-read from the FASTA by id
    pred = Predictor.load(tmp_path / "index", tmp_path / "head")
    lc = pred.head.length_calibration_
    queries = crop(s[:20], 30, rng)
    out = pred.predict(queries)
    x = pred.encoder.embed(queries)
    raw = pred.predict_vectors(x)[0]
    want = lc.apply(raw, [30] * 20)
    got = np.array([[o.probabilities[str(c)] for c in pred.head.classes_] for o in out])
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert lc.temperature_at([30])[0] != 1.0 and np.abs(got - raw).max() > 1e-3
    publish(tmp_path / "root", write_bundle(tmp_path / "root", tmp_path / "index", tmp_path / "head"))
    holder = BundleHolder(tmp_path / "root", poll_s=60)
    try:
        assert holder.describe()["length_calibration"] == lc.describe()
    finally:
        holder.close()
