"""Object storage end to end against a real S3 protocol server (moto on 127.0.0.1, no network):
embed s3:// -> s3:// (killed mid-way and resumed), index, train, publish to an s3:// bundle
root, serve from it and swap; a publisher killed mid-publish leaves CURRENT old or new."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import toy_fasta
from s3 import s3_bucket, s3_server  # noqa: F401  (fixtures)

from genoray import fs
from genoray.encoders.kmer import KmerEncoder
from genoray.sequences import read_sequences

ROOT = Path(__file__).resolve().parents[1]


def _inputs(tmp_path: Path, bucket: str, files: int = 6, n: int = 40) -> list[str]:
    """``files`` toy FASTA files uploaded under ``bucket/in``; returns every record id."""
    ids = []
    (tmp_path / "in").mkdir()
    for i in range(files):
        f = toy_fasta(tmp_path / "in" / f"part{i}.fa", n=n, seed=i, prefix=f"f{i}_")
        ids += read_sequences(f)[0]["seq_id"].to_pylist()
    fs.upload_dir(tmp_path / "in", f"{bucket}/in")
    return ids


def _store_ids(store: str) -> list[str]:
    from genoray.store import EmbeddingStore

    return EmbeddingStore(store).table()["seq_id"].to_pylist()


EMBED_SLOWLY = textwrap.dedent("""
    import sys, time
    import genoray.embed as e
    from genoray.encoders.kmer import KmerEncoder
    real = e.embed_table
    def slow(enc, batch):  # a slow model, so the kill lands between units
        time.sleep(0.4)
        return real(enc, batch)
    e.embed_table = slow
    e.embed_sequences(sys.argv[1], sys.argv[2], KmerEncoder(), use_ray=False)
""")


@pytest.mark.timeout(180)
def test_embed_killed_midway_resumes_exactly_once(s3_bucket, tmp_path):
    """The embedding driver is SIGKILLed after some units committed on S3; the rerun skips
    them and the store holds every input record exactly once."""
    from genoray.embed import embed_sequences

    ids = _inputs(tmp_path, s3_bucket)
    store = f"{s3_bucket}/store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", EMBED_SLOWLY, f"{s3_bucket}/in/", store], env=env)
    deadline = time.time() + 120
    markers: list[str] = []
    while time.time() < deadline and proc.poll() is None:
        markers = [f for f in fs.list_files(f"{store}/shards") if f.endswith(".done.json")]
        if len(markers) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(markers) < 6
    assert not fs.is_file(f"{store}/store.json")  # nothing claims the store is complete
    rep = embed_sequences(f"{s3_bucket}/in/", store, KmerEncoder(), use_ray=False)
    assert rep.skipped >= 2 and rep.units == 6 and rep.status == "complete"
    assert rep.read == rep.written == len(ids)
    got = _store_ids(store)
    assert sorted(got) == sorted(ids) and len(set(got)) == len(got)
