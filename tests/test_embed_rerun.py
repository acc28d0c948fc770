"""Nothing lost by a re-run: writing into an embedding store that holds other data is refused
unless ``--append`` or ``--overwrite``; rerunning the same job resumes silently."""

import os
from pathlib import Path

import numpy as np
import pytest
import s3
from conftest import toy_fasta

from genoray import cli
from genoray.config import CleanPolicy, EmbedConfig, KmerConfig, ReadConfig
from genoray.embedding import EmbeddingStore, StoreConflictError, embed_sequences
from genoray.encoders.kmer import KmerEncoder
from genoray.infra import fs

s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py


def ids_of(store: Path) -> list[str]:
    return sorted(EmbeddingStore(store).load().ids.tolist())


def shard_files(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "shards").iterdir())


@pytest.fixture
def two_inputs(tmp_path):
    a = toy_fasta(tmp_path / "a.fa", n=30, prefix="a")
    b = toy_fasta(tmp_path / "b.fa", n=10, seed=1, prefix="b")
    store = tmp_path / "st"
    rep = embed_sequences(a, store, KmerEncoder(), use_ray=False)
    assert rep.written == 30
    return a, b, store


A_IDS = sorted(f"a{i}" for i in range(30))
B_IDS = sorted(f"b{i}" for i in range(10))


def test_rerun_with_another_input_is_refused_and_keeps_every_record(two_inputs):
    a, b, store = two_inputs
    before_files, before_manifest = shard_files(store), (store / "store.json").read_bytes()
    with pytest.raises(StoreConflictError) as e:
        embed_sequences(b, store, KmerEncoder(), use_ray=False)
    msg = str(e.value)
    assert msg.startswith(f"{store}: the store holds 30 records in 1 unit(s) that this run would not write "
                          f"(input files not given now: {a})")
    assert "--append" in msg and "--overwrite" in msg and "new --out directory" in msg
    assert ids_of(store) == A_IDS  # every record kept, nothing of b.fa written
    assert shard_files(store) == before_files and (store / "store.json").read_bytes() == before_manifest


def test_same_files_with_other_settings_or_changed_contents_are_refused(two_inputs):
    a, _, store = two_inputs
    with pytest.raises(StoreConflictError, match="the same input files, changed since .* or read with other settings"):
        embed_sequences(a, store, KmerEncoder(), ReadConfig(clean=CleanPolicy(min_length=50)), use_ray=False)
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: its units' keys change
    with pytest.raises(StoreConflictError, match="changed since"):
        embed_sequences(a, store, KmerEncoder(), use_ray=False)
    assert ids_of(store) == A_IDS


def test_another_encoder_is_refused_and_overwrite_replaces_it(two_inputs):
    a, _, store = two_inputs
    other = KmerEncoder(KmerConfig(ks=(2, 3)))
    with pytest.raises(StoreConflictError, match="started with another encoder.*--overwrite to replace"):
        embed_sequences(a, store, other, use_ray=False)
    rep = embed_sequences(a, store, other, embed_cfg=EmbedConfig(overwrite=True), use_ray=False)
    assert rep.written == 30 and EmbeddingStore(store).dim == other.dim != KmerEncoder().dim


def test_append_adds_the_new_files_and_keeps_the_old(two_inputs):
    a, b, store = two_inputs
    old = EmbeddingStore(store).load()
    rep = embed_sequences(b, store, KmerEncoder(), embed_cfg=EmbedConfig(append=True), use_ray=False)
    assert (rep.read, rep.written, rep.units, rep.skipped) == (40, 40, 2, 1)
    s = EmbeddingStore(store)  # verifies every shard's sha256
    assert s.rows == 40 and s.manifest.counts.written == 40 and sorted(p.source for p in s.manifest.parts) == [
        str(a), str(b)]
    assert ids_of(store) == sorted(A_IDS + B_IDS)
    new = s.load()
    idx = {i: k for k, i in enumerate(new.ids)}
    assert np.array_equal(new.vectors[[idx[i] for i in old.ids]], old.vectors)  # old vectors untouched
    # the appended store is a job of its own now: rerunning the append resumes, no model work
    again = embed_sequences(b, store, KmerEncoder(), embed_cfg=EmbedConfig(append=True), use_ray=False)
    assert again.skipped == 2 and again.written == 40
    # a plain rerun with b alone would drop a's unit: refused
    with pytest.raises(StoreConflictError, match=f"30 records in 1 unit.*{a}"):
        embed_sequences(b, store, KmerEncoder(), use_ray=False)
    # append with another cleaning policy would mix policies in one store: refused
    with pytest.raises(StoreConflictError, match="--append needs the cleaning policy"):
        embed_sequences(b, store, KmerEncoder(), ReadConfig(clean=CleanPolicy(min_length=50)),
                        EmbedConfig(append=True), use_ray=False)
    assert ids_of(store) == sorted(A_IDS + B_IDS)


def test_overwrite_replaces_the_store(two_inputs):
    _, b, store = two_inputs
    rep = embed_sequences(b, store, KmerEncoder(), embed_cfg=EmbedConfig(overwrite=True), use_ray=False)
    assert (rep.written, rep.units, rep.skipped) == (10, 1, 0)
    assert ids_of(store) == B_IDS
    assert len(shard_files(store)) == 3  # b's shard, id hashes and marker; a's are gone


def test_same_job_resumes_silently_and_more_files_extend_it(two_inputs, caplog):
    a, b, store = two_inputs
    rep = embed_sequences(a, store, KmerEncoder(), use_ray=False)
    assert (rep.written, rep.skipped) == (30, 1)
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    rep = embed_sequences([a, b], store, KmerEncoder(), use_ray=False)  # nothing dropped: allowed
    assert (rep.written, rep.skipped) == (40, 1) and ids_of(store) == sorted(A_IDS + B_IDS)


def test_cli_refuses_with_exit_2_and_append_and_overwrite_flags_work(two_inputs, capsys):
    a, b, store = two_inputs
    rc = cli.main(["embed", str(b), "--out", str(store), "--no-ray"])
    err = capsys.readouterr().err
    assert rc == 2 and "the store holds 30 records" in err and "--append" in err, err
    assert ids_of(store) == A_IDS
    assert cli.main(["embed", str(b), "--out", str(store), "--no-ray", "--append"]) == 0
    assert ids_of(store) == sorted(A_IDS + B_IDS)
    assert cli.main(["embed", str(b), "--out", str(store), "--no-ray", "--overwrite"]) == 0
    assert ids_of(store) == B_IDS
    capsys.readouterr()
    assert cli.main(["embed", str(b), "--out", str(store), "--no-ray", "--append", "--overwrite"]) == 2
    assert "append and overwrite exclude each other" in capsys.readouterr().err


def test_on_object_storage_a_rerun_is_refused_and_append_adds(s3_bucket, tmp_path):
    a = toy_fasta(tmp_path / "a.fa", n=30, prefix="a")
    b = toy_fasta(tmp_path / "b.fa", n=10, seed=1, prefix="b")
    store = f"{s3_bucket}/st"
    embed_sequences(a, store, KmerEncoder(), use_ray=False)
    before = fs.list_files(store)
    with pytest.raises(StoreConflictError, match=f"^{store}: the store holds 30 records in 1 unit"):
        embed_sequences(b, store, KmerEncoder(), use_ray=False)
    assert fs.list_files(store) == before
    assert sorted(EmbeddingStore(store).table()["seq_id"].to_pylist()) == A_IDS
    embed_sequences(b, store, KmerEncoder(), embed_cfg=EmbedConfig(append=True), use_ray=False)
    assert sorted(EmbeddingStore(store).table()["seq_id"].to_pylist()) == sorted(A_IDS + B_IDS)
