import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_fasta

from genoray.cli import main
from genoray.config import KmerConfig, PositionConfig
from genoray.embedding.job import embed_sequences
from genoray.embedding.store import EmbeddingStore
from genoray.encoders.kmer import KmerEncoder
from genoray.evaluation import evaluate_store
from genoray.index import build_index
from genoray.pipeline import train_head
from genoray.pipeline.quickstart import bundled_dataset, run_quickstart
from genoray.predict.predictor import Predictor


def test_store_counts_add_up_and_no_ray_matches_vectors(tmp_path, labeled_fasta):
    enc = KmerEncoder()
    rep = embed_sequences(labeled_fasta, tmp_path / "store", enc, use_ray=False, embed_cfg=None)
    d = rep.to_dict()
    assert (d["read"], d["accepted"], d["rejected"], d["written"]) == (121, 120, 1, 120)
    assert d["rejected_by_reason"] == {"invalid_character": 1}
    store = EmbeddingStore(tmp_path / "store")
    emb = store.load()
    assert len(set(emb.ids)) == 120 and emb.vectors.shape == (120, enc.dim)
    from genoray.sequences import read_sequences

    t, _ = read_sequences(labeled_fasta)
    assert np.array_equal(emb.vectors, enc.embed(t["sequence"].to_pylist()))
    rej = __import__("pyarrow.parquet").parquet.read_table(tmp_path / "store" / store.manifest.parts[0].rejects)
    assert rej.to_pylist() == [{"path": str(labeled_fasta.resolve()), "record": 121, "seq_id": "bad",
                                "reason": "invalid_character: 'X' at position 5"}]
    again = embed_sequences(labeled_fasta, tmp_path / "store", enc, use_ray=False)
    assert again.skipped == again.units == 1 and again.written == 120  # finished: no model work
    with pytest.raises(ValueError, match="another encoder"):
        embed_sequences(labeled_fasta, tmp_path / "store", KmerEncoder(KmerConfig(ks=(2,))), use_ray=False)


def test_corrupt_store_part_is_refused(tmp_path, labeled_fasta):
    embed_sequences(labeled_fasta, tmp_path / "store", KmerEncoder(), use_ray=False)
    part = tmp_path / "store" / EmbeddingStore(tmp_path / "store").manifest.parts[0].file
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 1
    part.write_bytes(bytes(data))
    from genoray.infra.artifacts import ChecksumError

    with pytest.raises(ChecksumError, match=part.name):
        EmbeddingStore(tmp_path / "store")


@pytest.mark.ray
def test_ray_embedding_equals_local(ray_session, tmp_path, labeled_fasta):
    enc = KmerEncoder(KmerConfig(position=PositionConfig()))
    r1 = embed_sequences(labeled_fasta, tmp_path / "ray", enc, use_ray=True)
    r2 = embed_sequences(labeled_fasta, tmp_path / "local", KmerEncoder(KmerConfig(position=PositionConfig())), use_ray=False)
    assert r1.fingerprint == r2.fingerprint and r1.written == r2.written == 120
    a, b = EmbeddingStore(tmp_path / "ray").load(), EmbeddingStore(tmp_path / "local").load()
    order_a, order_b = np.argsort(a.ids), np.argsort(b.ids)
    assert list(a.ids[order_a]) == list(b.ids[order_b])
    assert np.array_equal(a.vectors[order_a], b.vectors[order_b])


def test_stage_functions_and_predictor(tmp_path, labeled_fasta):
    embed_sequences(labeled_fasta, tmp_path / "store", KmerEncoder(), use_ray=False)
    ix = build_index(tmp_path / "store", tmp_path / "index")
    assert ix.ntotal == 96 and ix.recall_at_10 == pytest.approx(1.0)
    train_head(tmp_path / "store", tmp_path / "index", tmp_path / "head")
    res = evaluate_store(tmp_path / "store", tmp_path / "index", tmp_path / "head")
    assert res["fused"]["accuracy"] >= 0.9 and res["majority"]["mcc"] == 0.0
    pred = Predictor.load(tmp_path / "index", tmp_path / "head")
    out = pred.predict(["GGCCGGCCAT" * 6, "AATTAATTGC" * 6], k=3)
    assert [p.label for p in out] == ["gc", "at"]
    assert len(out[0].neighbours) == 3 and out[0].neighbours[0].label == "gc"
    wide = pred.predict(["GGCCGGCCAT" * 6], k=25)[0]  # more evidence than the vote uses
    assert len(wide.neighbours) == 25 and wide.probabilities == out[0].probabilities
    sims = [n.similarity for n in wide.neighbours]
    assert sims == sorted(sims, reverse=True)
    assert abs(sum(out[0].probabilities.values()) - 1) < 1e-5 and 0 <= out[0].ood_score <= 1
    # a query whose id is in the index does not vote for itself
    emb = EmbeddingStore(tmp_path / "store").load("train")
    # B8 join integrity: one index row per training id, carrying that id's label from the store
    label_of = dict(zip(emb.ids, emb.labels))
    assert len(set(pred.index.ids)) == len(pred.index.ids) == len(label_of)
    assert all(label_of[i] == lab for i, lab in zip(pred.index.ids, pred.index.labels))
    _, _, pos = pred.predict_vectors(emb.vectors[:5], list(emb.ids[:5]))
    assert not any(emb.ids[i] in set(pred.index.ids[pos[i]]) for i in range(5))
    with pytest.raises(ValueError, match="sequence 0: invalid_character"):
        pred.predict(["ACGQ"])


@pytest.mark.slow
def test_quickstart_on_bundled_data_beats_majority():
    res = run_quickstart(encoders=("kmer",), use_ray=False)
    run = res["runs"][0]
    m = run["metrics"]
    assert run["records"]["read"] == run["records"]["accepted"] + run["records"]["rejected"] == 5719
    assert m["fused"]["accuracy"] > m["majority"]["accuracy"] + 0.25
    assert m["fused"]["auroc"] > 0.85


def test_cli_predict_and_errors(tmp_path, labeled_fasta, capsys):
    assert main(["embed", str(labeled_fasta), "--out", str(tmp_path / "s"), "--no-ray"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 120
    assert main(["index", str(tmp_path / "s"), "--out", str(tmp_path / "i")]) == 0
    assert main(["train", str(tmp_path / "s"), "--index", str(tmp_path / "i"), "--out", str(tmp_path / "h")]) == 0
    capsys.readouterr()
    q = write_fasta(tmp_path / "q.fa", [("q1", "GGCCGGCCAT" * 6), ("q2", "ACGTN!")])
    assert main(["predict", str(q), "--index", str(tmp_path / "i"), "--head", str(tmp_path / "h"),
                 "--out", str(tmp_path / "p.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (summary["read"], summary["predicted"], summary["rejected"]) == (2, 1, 1)
    line = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert line["seq_id"] == "q1" and line["label"] == "gc" and line["neighbours"]
    bad = tmp_path / "bad.fa"
    bad.write_text("no header\n")
    assert main(["embed", str(bad), str(labeled_fasta), "--out", str(tmp_path / "s2"), "--no-ray"]) == 3
    partial = json.loads(capsys.readouterr().out)
    assert partial["status"] == "partial" and partial["written"] == 120 and partial["units_failed"] == 1
    assert "bad.fa: record 1: malformed" in partial["failed"][0]["error"]
    assert main(["embed", str(bad), "--out", str(tmp_path / "s3"), "--no-ray", "--on-error", "fail"]) == 2
    assert "bad.fa: record 1: malformed" in capsys.readouterr().err


def test_import_is_light_and_has_no_side_effects():
    code = "import sys, genoray; print(sorted(m for m in ('torch','ray','faiss','transformers','sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bundled_dataset_is_shipped_with_citation():
    path = bundled_dataset()
    assert path.is_file() and "Liu" in (path.parent / "README.md").read_text()


def test_every_public_name_resolves():
    import genoray

    assert all(getattr(genoray, name) is not None for name in genoray.__all__)


def test_publish_load_check_maps_the_index(tmp_path, monkeypatch):
    """write_bundle's check that a replica can load the version memory-maps every shard and id
    table (the publishing process holds mapped pages, not a copy of the index); the version loads."""
    from bundles import make_bundle

    import genoray.index.core as core
    from genoray.bundle import verify_bundle
    from genoray.pipeline import write_bundle

    make_bundle(tmp_path / "w", tmp_path / "root0", k=5, publish_it=False)
    calls: list[tuple[str, bool]] = []
    real_shard, real_ids = core.read_shard, core.read_ids
    monkeypatch.setattr(core, "read_shard", lambda p, f, mmap=False: calls.append((str(p), mmap)) or real_shard(p, f, mmap))
    monkeypatch.setattr(core, "read_ids", lambda p, mmap=False: calls.append((str(p), mmap)) or real_ids(p, mmap))
    v = write_bundle(tmp_path / "root", tmp_path / "w" / "index", tmp_path / "w" / "head")
    assert calls and all(m for _, m in calls), calls
    assert {p.rsplit("/", 1)[-1] for p, _ in calls} >= {"shard-00.faiss"}
    monkeypatch.undo()
    assert verify_bundle(tmp_path / "root", v).version == v
