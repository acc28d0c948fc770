"""hf:<model>+kmer(-pos): the pooled model embedding fused with the k-mer blocks, each block
centred and scaled so that none dominates; the fingerprint covers model, k-mer config and fit."""

import numpy as np
import pytest

pytest.importorskip("torch")
from tiny_models import make_char_bert

from genoray.encoders import encoder_from_name, encoder_from_spec, fingerprint
from genoray.encoders.fusion import FusionEncoder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_char_bert(tmp_path_factory.mktemp("bert") / "tiny-dna-bert")


def _seqs(n, seed=0, lo=40, hi=120):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), int(m))) for m in rng.integers(lo, hi, n)]


def test_every_block_gets_the_same_share(bert_dir):
    enc = encoder_from_name(f"hf:{bert_dir}+kmer")
    assert isinstance(enc, FusionEncoder) and enc.needs_fit
    with pytest.raises(ValueError, match="not fitted"):
        enc.embed(["ACGT"])
    fit = _seqs(300)
    enc.fit(fit)
    names = [b[0] for b in enc.blocks()]
    assert names == ["model", "1-mer", "2-mer", "3-mer", "4-mer", "gc+zcurve"]
    assert enc.dim == 32 + 4 + 16 + 64 + 256 + 10
    x = enc.embed(fit).astype(np.float64)
    # oracle: on the fit sample each block is centred and has mean squared norm 1/n_blocks
    for name, a, b in enc.blocks():
        assert np.allclose(x[:, a:b].mean(0), 0, atol=1e-5), name
        assert np.isclose((x[:, a:b] ** 2).sum(1).mean(), 1 / len(names), rtol=1e-4), name
    # the model block equals the model's own vector, centred and scaled
    m = enc.model.embed(fit[:5])
    norm = enc.norms[0]
    want = (m - np.asarray(norm["mean"])) / norm["scale"] / np.sqrt(len(names))
    assert np.allclose(x[:5, :32], want, atol=1e-5)


def test_kmer_pos_fusion_has_a_position_block_and_spec_round_trips(bert_dir):
    fit = ["ACGT" * 10 + "TATAAT" + s[:34] for s in _seqs(200, lo=34, hi=35)]  # aligned motif: position signal
    enc = encoder_from_name(f"hf:{bert_dir}+kmer-pos").fit(fit)
    assert [b[0] for b in enc.blocks()][-1] == "position"
    again = encoder_from_spec(enc.spec())
    assert fingerprint(again) == fingerprint(enc)
    probe = _seqs(7, seed=3, lo=80, hi=81)
    assert np.array_equal(again.embed(probe), enc.embed(probe))
    plain = encoder_from_name(f"hf:{bert_dir}+kmer").fit(fit)
    fps = {fingerprint(enc), fingerprint(plain), fingerprint(encoder_from_name(f"hf:{bert_dir}"))}
    assert len(fps) == 3
    refit = encoder_from_name(f"hf:{bert_dir}+kmer").fit(fit[:50])
    assert fingerprint(refit) != fingerprint(plain)  # the fitted normalisation is part of it
    assert enc.spec()["model"]["weights_sha256"]  # pins the model weights


def test_fusion_through_embed_index_train_predict(bert_dir, tmp_path):
    from conftest import write_fasta

    from genoray.embedding.job import embed_sequences
    from genoray.embedding.store import EmbeddingStore
    from genoray.index import build_index
    from genoray.pipeline.train import train_head
    from genoray.predict.predictor import Predictor

    rng = np.random.default_rng(1)
    recs = []
    for i in range(80):
        lab = "gc" if i % 2 else "at"
        alphabet = list("GGCCAT") if lab == "gc" else list("AATTGC")
        recs.append((f"s{i} label={lab} split={'test' if i % 4 == 0 else 'train'}",
                     "".join(rng.choice(alphabet, 70))))
    fa = write_fasta(tmp_path / "t.fa", recs)
    rep = embed_sequences(fa, tmp_path / "store", encoder_from_name(f"hf:{bert_dir}+kmer"), use_ray=False)
    assert rep.written == 80
    store = EmbeddingStore(tmp_path / "store")
    assert store.manifest.encoder["type"] == "fusion" and store.manifest.encoder["norms"]
    build_index(tmp_path / "store", tmp_path / "index")
    train_head(tmp_path / "store", tmp_path / "index", tmp_path / "head")
    p = Predictor.load(tmp_path / "index", tmp_path / "head")
    test = [(h, s) for h, s in recs if "split=test" in h]
    labels = [x.label for x in p.predict([s for _, s in test])]
    assert np.mean([lab == h.split()[1][6:] for lab, (h, _) in zip(labels, test)]) >= 0.9
    emb = store.load(None)
    by_id = {h.split()[0]: s for h, s in recs}
    assert np.allclose(emb.vectors, p.encoder.embed([by_id[i] for i in emb.ids]), atol=1e-5)
