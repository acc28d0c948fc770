"""HyenaDNA-tiny, a real pretrained DNA model (tests/hyena.py), through the whole method:
convert-weights -> embed (CLI, Ray) -> index -> train -> predict (CLI and Python) -> serve
over HTTP -> quickstart."""

import json

import numpy as np
import pytest
from conftest import write_fasta

from genoray.cli import main

pytestmark = [pytest.mark.ray]
KEY = "hyena-key"


def _toy(path, n=90, seed=0):
    """AT-rich vs GC-rich records of mixed length (40-1,400 bp: some tiled past the 1 kb context)."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        label = "gc" if i % 2 else "at"
        alphabet = list("GGCCAT") if label == "gc" else list("AATTGC")
        length = int(rng.choice([40, 150, 300, 1400], p=[0.3, 0.3, 0.3, 0.1]))
        recs.append((f"s{i} label={label} split={'test' if i % 5 == 0 else 'train'}",
                     "".join(rng.choice(alphabet, size=length))))
    return write_fasta(path, recs), recs


def test_hyena_embed_index_train_predict_serve(ray_session, serve_port, hyena_dir, tmp_path, capsys):
    from ray import serve

    from bench.loadtest import post
    from genoray.bundle import publish
    from genoray.config import HFConfig, ServeConfig
    from genoray.embedding.store import EmbeddingStore
    from genoray.encoders.hf import HFEncoder
    from genoray.pipeline import write_bundle
    from genoray.predict.predictor import Predictor
    from genoray.serving.app import build_app
    from genoray.serving.service import hash_key

    fa, recs = _toy(tmp_path / "toy.fa")
    store, index, head = tmp_path / "store", tmp_path / "index", tmp_path / "head"
    # no GPU in the test cluster: a transformers job refuses unless told CPU is fine
    assert main(["embed", str(fa), "--out", str(store), "--encoder", f"hf:{hyena_dir}", "--trust-remote-code"]) == 2
    assert "no GPU" in capsys.readouterr().err
    assert main(["embed", str(fa), "--out", str(store), "--encoder", f"hf:{hyena_dir}", "--trust-remote-code",
                 "--hf-batch-size", "7", "--allow-cpu"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["read"], rep["accepted"], rep["rejected"], rep["written"]) == (90, 90, 0, 90)
    emb = EmbeddingStore(store).load(None)
    assert emb.vectors.shape == (90, 128)
    spec = EmbeddingStore(store).manifest.encoder
    assert spec["type"] == "hf" and spec["version"] == 2 and spec["weights_sha256"]
    # vectors made on Ray actors at forward batch 7 == this process at batch 32 (batch invariance)
    local = HFEncoder(HFConfig(model=str(hyena_dir), trust_remote_code=True))
    by_id = {h.split()[0]: s for h, s in recs}
    want = local.embed([by_id[i] for i in emb.ids])
    cos = (want * emb.vectors).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(emb.vectors, axis=1)
    assert cos.min() >= 0.9999

    assert main(["index", str(store), "--out", str(index)]) == 0
    assert main(["train", str(store), "--index", str(index), "--out", str(head), "--C", "1.0",
                 "--trust-remote-code"]) == 0
    assert main(["evaluate", str(store), "--index", str(index), "--head", str(head)]) == 0
    capsys.readouterr()
    test_fa = write_fasta(tmp_path / "test.fa", [(h.split()[0], s) for h, s in recs if "split=test" in h])
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(test_fa), "--index", str(index), "--head", str(head), "--out", str(out),
                 "--trust-remote-code"]) == 0
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    truth = {h.split()[0]: h.split()[1].split("=")[1] for h, _ in recs}
    assert len(preds) == 18
    acc = np.mean([p["label"] == truth[p["seq_id"]] for p in preds])
    assert acc >= 0.9, f"HyenaDNA-tiny + retrieval on AT- vs GC-rich records: accuracy {acc}"

    predictor = Predictor.load(index, head, trust_remote_code=True)  # the store's recorded value enables nothing
    seqs = [by_id[p["seq_id"]] for p in preds]
    assert [p.label for p in predictor.predict(seqs)] == [p["label"] for p in preds]

    root = tmp_path / "bundles"
    publish(root, write_bundle(root, index, head, trust_remote_code=True))
    cfg = ServeConfig(root=str(root), port=serve_port, key_hashes=(hash_key(KEY),), poll_s=0.5, num_cpus=0.1,
                      min_replicas=1, max_replicas=1, trust_remote_code=True)
    serve.run(build_app(cfg), name="hyena", route_prefix="/hyena")
    try:
        status, body, _ = post(serve_port, "/hyena/v1/predict", {"sequences": seqs[:6], "k": 3}, KEY, timeout=120)
        assert status == 200, body[:500]
        served = json.loads(body)
        labels = [p["label"] for p in served["predictions"]]
        assert labels == [p["label"] for p in preds[:6]]
    finally:
        serve.delete("hyena")


def test_quickstart_with_hyena(hyena_dir, tmp_path, capsys):
    fa, _ = _toy(tmp_path / "toy.fa", n=60, seed=1)
    assert main(["quickstart", "--data", str(fa), "--encoder", f"hf:{hyena_dir}", "--trust-remote-code",
                 "--no-ray", "--json"]) == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert run["dim"] == 128 and run["records"]["written"] == 60
    assert run["metrics"]["fused"]["accuracy"] >= 0.8
