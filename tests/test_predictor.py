"""Train/serve skew: queries are cleaned with the CleanPolicy the store was built with, by the
Predictor and by the HTTP service, exactly once per request."""

import hashlib
import json
import logging
import shutil

import pyarrow.parquet as pq
import pytest
from bundles import toy_fasta
from fastapi.testclient import TestClient

# 60 bp, soft-masked, RNA (u), one IUPAC code (R -> N): 15 of 60 bases are N (25 %)
RAW = "ggccauGGCCATggccatGGCCAT" + "N" * 14 + "R" + "GGCCATGGCCATGGCCATGGC"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from genoray.bundle import publish
    from genoray.config import CleanPolicy, HeadConfig, ReadConfig
    from genoray.embedding.job import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import build_index
    from genoray.pipeline import write_bundle
    from genoray.pipeline.train import train_head

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
    from genoray.embedding.store import EmbeddingStore
    from genoray.index import read_manifest
    from genoray.predict import Predictor

    work, policy = built
    assert EmbeddingStore(work / "store").clean_policy == policy
    assert read_manifest(work / "index").clean == policy
    predictor, doc = Predictor.from_bundle(work / "root")
    assert doc.clean == policy and predictor.policy.max_n_fraction == 0.3


def test_default_policy_would_reject_the_query(built):
    from genoray.config import CleanPolicy
    from genoray.sequences.clean import Cleaner

    clean, why = Cleaner(CleanPolicy())(RAW)
    assert clean is None and why.startswith("too_many_n: 15/60")


def test_predictor_cleans_a_query_exactly_as_the_store_did(built):
    from genoray.predict import Predictor

    work, _ = built
    predictor, _ = Predictor.from_bundle(work / "root")
    (clean,) = predictor.clean([RAW])
    assert sha1(clean) == stored_hash(work, "q1")  # the store keeps sha1 of each cleaned sequence
    (pred,) = predictor.predict([RAW], k=3)
    assert pred.neighbours[0].seq_id == "q1" and pred.neighbours[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_http_service_accepts_and_cleans_like_the_store(built):
    from genoray.predict import Predictor
    from genoray.serving.backends import plain_app

    work, _ = built
    c = TestClient(plain_app(str(work / "root"), require_key=False))
    r = c.post("/v1/predict", json={"sequences": [RAW], "k": 3})
    assert r.status_code == 200, r.text
    (got,) = r.json()["predictions"]
    assert got["neighbours"][0]["seq_id"] == "q1" and got["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    predictor, _ = Predictor.from_bundle(work / "root")
    assert got["probabilities"] == predictor.predict([RAW], k=3)[0].probabilities
    # one bad request in the service: a 422 naming the sequence, and the service still answers
    bad = c.post("/v1/predict", json={"sequences": ["ACGT", "N" * 40 + "ACGT"]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "sequences", 1]
    assert "too_many_n" in bad.text
    assert c.post("/v1/predict", json={"sequences": [RAW]}).status_code == 200


def test_old_store_and_index_without_policy_use_the_default_and_say_so(built, tmp_path, caplog):
    from genoray.embedding.store import EmbeddingStore
    from genoray.predict.predictor import Predictor

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


def test_batch_predict_reads_its_files_with_the_index_policy(built, tmp_path, capsys):
    """``genoray predict`` accepts what the service accepts: the file is read with the policy the
    index recorded (max_n_fraction 0.3), not the command line's default (0.1)."""
    from genoray.cli import main
    from genoray.config import CleanPolicy
    from genoray.sequences.clean import Cleaner

    work, _ = built
    q = tmp_path / "q.fa"
    q.write_text(f">raw\n{RAW}\n")
    assert Cleaner(CleanPolicy())(RAW)[1].startswith("too_many_n")  # the default would reject it
    rc = main(["predict", str(q), "--index", str(work / "index"), "--head", str(work / "head"), "--out",
               str(tmp_path / "p.jsonl")])
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert rc == 0 and summary["read"] == 1 and summary["rejected"] == 0 and summary["predicted"] == 1
    assert json.loads((tmp_path / "p.jsonl").read_text())["seq_id"] == "raw"


@pytest.mark.slow
def test_reindex_embeds_new_files_with_the_store_policy_and_encoder(built, tmp_path):
    """A night reads its files with the cleaning policy (and encoder) the long-lived store
    recorded: the store's units are all reused, the 25%-N record is accepted; a different
    explicit policy is refused rather than mixed into the store."""
    from genoray.config import CleanPolicy, ReadConfig
    from genoray.pipeline import reindex

    work, _ = built
    night = tmp_path / "w"
    shutil.copytree(work / "store", night / "store")
    rep = reindex(work / "toy.fa", night, tmp_path / "b", use_ray=False)
    assert rep.embed["units_skipped"] == rep.embed["units"] == 1 and rep.embed["rejected"] == 0
    assert rep.published
    with pytest.raises(ValueError, match="the store was cleaned with"):
        reindex(work / "toy.fa", night, tmp_path / "b", read_cfg=ReadConfig(clean=CleanPolicy(max_n_fraction=0.2)),
                use_ray=False)


def test_encoder_and_splits_are_read_from_the_artifacts(built, tmp_path):
    """``--encoder-from`` takes the encoder a store, an index, a bundle root or one of its
    versions recorded (same fingerprint), and ``evaluate`` reports the training split the index
    recorded (no flag restates it)."""
    from genoray.bundle import current_version
    from genoray.embedding import EmbeddingStore
    from genoray.encoders import fingerprint
    from genoray.evaluation import evaluation_report
    from genoray.index import read_manifest
    from genoray.pipeline import encoder_from_artifact

    work, _ = built
    fp = EmbeddingStore(work / "store").fingerprint
    version = current_version(work / "root")
    for artifact in (work / "store", work / "index", work / "root", work / "root" / "versions" / version):
        assert fingerprint(encoder_from_artifact(artifact)) == fp, artifact
    with pytest.raises(FileNotFoundError, match="not an embedding store, index or bundle"):
        encoder_from_artifact(tmp_path)
    rep = evaluation_report(work / "store", work / "index", work / "head")
    assert rep["train_split"] == read_manifest(work / "index").split == "train"
