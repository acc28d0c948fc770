import numpy as np
import pytest

from genoray.config import HFConfig
from genoray.encoders import encoder_from_spec, fingerprint

torch = pytest.importorskip("torch")
from tiny_models import make_char_bert, make_nt_like_esm  # noqa: E402

from genoray.encoders.hf import HFEncoder, masked_mean  # noqa: E402


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_char_bert(tmp_path_factory.mktemp("bert") / "tiny-dna-bert")


def test_masked_mean_ignores_padding():
    h = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    m = torch.tensor([[1, 1, 0]])
    assert torch.allclose(masked_mean(h, m), torch.tensor([[2.0, 2.0]]))


def test_loads_local_dir_and_padding_does_not_change_embedding(bert_dir):
    enc = HFEncoder(HFConfig(model=str(bert_dir), batch_size=8))
    assert enc.dim == 32 and enc.device == "cpu"
    alone = enc.embed(["ACGTAC"])
    batch = enc.embed(["ACGTAC", "ACGTACGTACGTACGTACGTTTGA", "A"])
    assert np.allclose(alone[0], batch[0], atol=1e-5)
    assert batch.shape == (3, 32) and batch.dtype == np.float32


def test_output_order_survives_length_bucketing(bert_dir):
    enc = HFEncoder(HFConfig(model=str(bert_dir), batch_size=2))
    seqs = ["ACGTACGTAC", "A", "GGGGCC", "T" * 20, "CA"]
    together = enc.embed(seqs)
    one_by_one = np.vstack([enc.embed([s]) for s in seqs])
    assert np.allclose(together, one_by_one, atol=1e-5)


def test_tiling_is_length_weighted_mean_of_tiles(bert_dir):
    enc = HFEncoder(HFConfig(model=str(bert_dir), tile_nt=10, overlap_nt=2))
    seq = "ACGTACGTAC" + "GGGGCCCCAA" + "TTT"
    tiles = ["ACGTACGTAC", "ACGGGGCCCC", seq[-10:]]
    assert enc.tile_nt == 10
    from genoray.sequences.clean import tile

    assert tile(seq, 10, 2) == ["ACGTACGTAC", "ACGGGGCCCC", seq[-10:]] == tiles
    parts = enc.embed(tiles)
    w = np.array([len(t) for t in tiles], dtype=float)
    assert np.allclose(enc.embed([seq])[0], (parts * w[:, None]).sum(0) / w.sum(), atol=1e-5)


def test_context_limit_derives_tile_length(bert_dir):
    enc = HFEncoder(HFConfig(model=str(bert_dir)))
    assert enc.tile_nt == 62  # 64 positions minus CLS and SEP
    x = enc.embed(["ACGT" * 50])  # 200 bp > context: tiled, not truncated or crashing
    assert np.isfinite(x).all()


def test_reverse_complement_averaging_is_strand_symmetric(bert_dir):
    enc = HFEncoder(HFConfig(model=str(bert_dir), reverse_complement=True))
    a, b = enc.embed(["AACGTTTGCA", "TGCAAACGTT"])
    assert np.allclose(a, b, atol=1e-5)


def test_spec_round_trip_and_fingerprint(bert_dir):
    enc = HFEncoder(HFConfig(model=str(bert_dir), device="cpu"))
    again = encoder_from_spec(enc.spec())
    assert fingerprint(again) == fingerprint(enc)
    assert enc.spec()["weights_sha256"]  # local weights are hashed into the fingerprint
    assert np.allclose(again.embed(["ACGTTT"]), enc.embed(["ACGTTT"]))
    cls = HFEncoder(HFConfig(model=str(bert_dir), pooling="cls"))
    assert fingerprint(cls) != fingerprint(enc)


def test_changed_local_weights_are_refused(tmp_path, bert_dir):
    """C4: a spec (from a store or bundle) pins the weights' sha256; other weights are refused."""
    import shutil

    from safetensors.torch import load_file, save_file

    from genoray.infra.artifacts import ChecksumError

    model = tmp_path / "model"
    shutil.copytree(bert_dir, model)
    spec = HFEncoder(HFConfig(model=str(model))).spec()
    state = load_file(str(model / "model.safetensors"))
    name = next(iter(state))
    state[name] = state[name] + 0.01  # e.g. a re-downloaded or fine-tuned checkpoint
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ChecksumError, match="weights changed"):
        encoder_from_spec(spec)


def test_malicious_pickle_checkpoint_is_never_unpickled(tmp_path, bert_dir):
    """C2: a pytorch_model.bin whose unpickling would create a file is refused unread."""
    import shutil

    from conftest import malicious_pickle

    model, sentinel = tmp_path / "evil", tmp_path / "PWNED"
    shutil.copytree(bert_dir, model)
    (model / "model.safetensors").unlink()
    malicious_pickle(model / "pytorch_model.bin", sentinel)
    with pytest.raises(OSError, match="safetensors"):
        HFEncoder(HFConfig(model=str(model)))
    assert not sentinel.exists()


def test_nt_like_esm_with_6mer_tokens(tmp_path):
    path = make_nt_like_esm(tmp_path / "nt")
    enc = HFEncoder(HFConfig(model=str(path)))
    assert enc.dim == 32
    alone = enc.embed(["ACGTACGGATTACANCC"])
    batch = enc.embed(["ACGTACGGATTACANCC", "ACGTAC" * 10])
    assert np.allclose(alone[0], batch[0], atol=1e-5)


def test_trust_remote_code_needs_local_dir_or_explicit_name():
    with pytest.raises(ValueError, match="trust_remote_code"):
        HFEncoder(HFConfig(model="some-bare-name", trust_remote_code=True))


def test_missing_hub_model_fails_offline():
    with pytest.raises(OSError):
        HFEncoder(HFConfig(model="nobody/not-a-model", local_files_only=True))


def test_pickle_checkpoints_are_refused(tmp_path, bert_dir):
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(bert_dir, pickled)
    state = load_file(str(pickled / "model.safetensors"))
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")  # what many hub checkpoints ship
    with pytest.raises(OSError, match="safetensors"):
        HFEncoder(HFConfig(model=str(pickled)))


def test_unreachable_hub_fails_in_seconds_with_one_line(monkeypatch, capsys):
    """Not local, not cached, hub unreachable: one clear line within seconds, not a minute of retries."""
    import time

    from genoray.cli import main
    from genoray.encoders.hf import ModelUnavailableError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="unreachable"):
        HFEncoder(HFConfig(model="nobody/not-a-model"))
    assert main(["embed", "x.fa", "--out", "o", "--encoder", "hf:nobody/not-a-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0] and "hf download" in err[0]
    assert time.perf_counter() - t0 < 10
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):
        HFEncoder(HFConfig(model="nobody/not-a-model"))


def test_weights_are_hashed_once_per_process_and_rehashed_when_they_change(tmp_path, bert_dir, monkeypatch):
    import shutil

    from genoray.encoders import hf

    model = tmp_path / "m"
    shutil.copytree(bert_dir, model)
    calls = []
    real = hf._hash_weights
    monkeypatch.setattr(hf, "_hash_weights", lambda sig: calls.append(sig) or real(sig))
    a = HFEncoder(HFConfig(model=str(model)))
    b = encoder_from_spec(a.spec())  # the driver builds the spec, then rebuilds from it: one hash
    assert len(calls) == 1 and a.spec() == b.spec()
    hint = hf.weights_hint(str(model))
    assert hint["sha256"] == a.spec()["weights_sha256"]
    hf._DIGESTS.clear()
    hf.trust_weights_hint(hint)  # an actor: same files (path, sizes, mtimes) -> no hashing
    HFEncoder(HFConfig(model=str(model)))
    assert len(calls) == 1
    hf._DIGESTS.clear()
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes())  # new mtime: the hint no longer applies
    hf.trust_weights_hint(hint)
    HFEncoder(HFConfig(model=str(model)))
    assert len(calls) == 2
