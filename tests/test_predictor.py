"""Train/serve skew: queries are cleaned with the CleanPolicy the store was built with, by the
Predictor and by the HTTP service, exactly once per request."""

import hashlib
import json
import logging
import shutil

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from bundles import toy_fasta

# 60 bp, soft-masked, RNA (u), one IUPAC code (R -> N): 15 of 60 bases are N (25 %)
RAW = "ggccauGGCCATggccatGGCCAT" + "N" * 14 + "R" + "GGCCATGGCCATGGCCATGGC"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from genoray.bundle import publish, write_bundle
    from genoray.config import CleanPolicy, HeadConfig, ReadConfig
    from genoray.embed import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import build_index
    from genoray.train import train_head

    work = tmp_path_factory.mktemp("skew")
    fa = toy_fasta(work / "toy.fa", n=120)
    with open(fa, "a") as f:
        f.write(f">q1 label=gc split=train\n{RAW}\n")
    policy = CleanPolicy(max_n_fraction=0.3)
    rep = embed_sequences(fa, work / "store", KmerEncoder(), read_cfg=ReadConfig(clean=policy), use_ray=False)
    assert rep.rejected == {} and rep.written == 121
    build_index(work / "store", work / "index")
    train_head(work / "store", work / "index", work / "head", HeadConfig(k=5, C=1.0))
    publish(work / "root", write_bundle(work / "root", work / "index", work / "head"))
    return work, policy


def stored_hash(work, seq_id):
    t = pq.read_table(next((work / "store" / "shards").glob("*[!s].parquet")))
    return dict(zip(t["seq_id"].to_pylist(), t["seq_hash"].to_pylist()))[seq_id]


def sha1(s):
    return hashlib.sha1(s.encode()).hexdigest()


def test_policy_is_recorded_from_store_to_bundle(built):
    from genoray.bundle import load_bundle
    from genoray.index import read_manifest
    from genoray.store import EmbeddingStore

    work, policy = built
    assert EmbeddingStore(work / "store").clean_policy == policy
    assert read_manifest(work / "index").clean == policy
    predictor, doc = load_bundle(work / "root")
    assert doc.clean == policy and predictor.policy.max_n_fraction == 0.3


def test_default_policy_would_reject_the_query(built):
    from genoray.config import CleanPolicy
    from genoray.dna import Cleaner

    clean, why = Cleaner(CleanPolicy())(RAW)
    assert clean is None and why.startswith("too_many_n: 15/60")


def test_predictor_cleans_a_query_exactly_as_the_store_did(built):
    from genoray.bundle import load_bundle

    work, _ = built
    predictor, _ = load_bundle(work / "root")
    (clean,) = predictor.clean([RAW])
    assert sha1(clean) == stored_hash(work, "q1")  # the store keeps sha1 of each cleaned sequence
    (pred,) = predictor.predict([RAW], k=3)
    assert pred.neighbours[0].seq_id == "q1" and pred.neighbours[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_http_service_accepts_and_cleans_like_the_store(built):
    from genoray.bundle import load_bundle
    from genoray.serve import plain_app

    work, _ = built
    c = TestClient(plain_app(str(work / "root"), require_key=False))
    r = c.post("/v1/predict", json={"sequences": [RAW], "k": 3})
    assert r.status_code == 200, r.text
    (got,) = r.json()["predictions"]
    assert got["neighbours"][0]["seq_id"] == "q1" and got["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    predictor, _ = load_bundle(work / "root")
    assert got["probabilities"] == predictor.predict([RAW], k=3)[0].probabilities
    # one bad request in the service: a 422 naming the sequence, and the service still answers
    bad = c.post("/v1/predict", json={"sequences": ["ACGT", "N" * 40 + "ACGT"]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "sequences", 1]
    assert "too_many_n" in bad.text
    assert c.post("/v1/predict", json={"sequences": [RAW]}).status_code == 200


def test_old_store_and_index_without_policy_use_the_default_and_say_so(built, tmp_path, caplog):
    from genoray.predictor import Predictor
    from genoray.store import EmbeddingStore

    work, _ = built
    for name, manifest in (("store", "store.json"), ("index", "manifest.json")):
        shutil.copytree(work / name, tmp_path / name)
        doc = json.loads((tmp_path / name / manifest).read_text())
        del doc["clean"]
        (tmp_path / name / manifest).write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        assert EmbeddingStore(tmp_path / "store").clean_policy is None
        predictor = Predictor.load(tmp_path / "index", work / "head")
    assert "records no CleanPolicy" in caplog.text
    assert predictor.policy.max_n_fraction == 0.1
    with pytest.raises(ValueError, match="sequence 0: too_many_n"):
        predictor.predict([RAW])
