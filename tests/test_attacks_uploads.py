"""An upload cut short never commits an artifact (issue 25, "an interrupted upload is committed
truncated"), on a real S3 protocol server (moto, 127.0.0.1).

The connection is dropped (or the process interrupted) after 1 MiB of one 3 MiB file of an
index/head directory (:func:`genoray.infra.fs.publish_dir`) or a bundle version
(:func:`genoray.infra.fs.commit_dir`): the manifest is never written, the file cut short is not
left behind (pyarrow's ``close()`` on the exception used to commit the first 1 MiB as the whole
object), and a re-run completes with every file whole. Fails on the code before the fix: the
truncated object stayed, and ``commit_dir`` refused the re-run (``already exists``).

Also here: a remote store part replaced after the store verified it is refused when read (the
bytes read are the bytes hashed, :func:`genoray.infra.pinned.verified_local`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import s3

from genoray.infra import fs

s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py

CUT_AT = 1 << 20
VICTIM = "shard-01.bin"


class Dropped(OSError):
    """The connection to the store dropped mid-upload (what the test injects)."""


class CutStream:
    """An output stream that passes ``CUT_AT`` bytes to the real one, then raises ``error``;
    closing it closes the real stream (which, like pyarrow's, then completes the upload)."""

    def __init__(self, out, error: BaseException):
        self.out, self.error, self.n = out, error, 0

    def write(self, data) -> int:
        data = bytes(data)
        if self.n + len(data) > CUT_AT:
            self.out.write(data[: CUT_AT - self.n])
            self.n = CUT_AT
            raise self.error
        self.n += len(data)
        return self.out.write(data)

    def close(self) -> None:
        self.out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CutFS:
    """A pyarrow filesystem whose upload of :data:`VICTIM` is cut short."""

    def __init__(self, real, error: BaseException):
        self.real, self.error = real, error

    def open_output_stream(self, path, *args, **kwargs):
        out = self.real.open_output_stream(path, *args, **kwargs)
        return CutStream(out, self.error) if path.endswith(VICTIM) else out

    def __getattr__(self, name):
        return getattr(self.real, name)


def cut_uploads(monkeypatch, error: BaseException) -> None:
    real = fs.resolve
    monkeypatch.setattr(fs, "resolve", lambda uri: (CutFS(real(uri)[0], error), real(uri)[1]))


def write_artifact(d: Path) -> dict[str, str]:
    """Two 3 MiB files and a manifest listing their sha256 (the manifest is written last)."""
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, name in enumerate(("shard-00.bin", VICTIM)):
        data = os.urandom(3 * CUT_AT) if i else bytes(3 * CUT_AT)
        (d / name).write_bytes(data)
        files[name] = hashlib.sha256(data).hexdigest()
    (d / "manifest.json").write_text(json.dumps({"sha256": files}))
    return files


def assert_whole(uri: str, files: dict[str, str]) -> None:
    assert json.loads(fs.read_bytes(fs.join(uri, "manifest.json"))) == {"sha256": files}
    for name, digest in files.items():
        assert fs.sha256(fs.join(uri, name)) == digest


ERRORS = [Dropped("connection reset by peer"), KeyboardInterrupt()]


@pytest.mark.parametrize("error", ERRORS, ids=["dropped", "interrupted"])
def test_a_cut_index_or_head_upload_commits_nothing_and_reruns(s3_bucket, monkeypatch, error):
    out = f"{s3_bucket}/index"
    cut_uploads(monkeypatch, error)
    with pytest.raises(type(error) if isinstance(error, KeyboardInterrupt) else fs.StorageError):
        fs.publish_dir(out, "manifest.json", write_artifact)
    assert not fs.is_file(fs.join(out, "manifest.json"))  # never committed
    assert not fs.is_file(fs.join(out, VICTIM))  # and no file cut short left behind
    monkeypatch.undo()
    files = fs.publish_dir(out, "manifest.json", write_artifact)  # the re-run completes
    assert_whole(out, files)


@pytest.mark.parametrize("error", ERRORS, ids=["dropped", "interrupted"])
def test_a_cut_bundle_commit_commits_nothing_and_reruns(s3_bucket, tmp_path, monkeypatch, error):
    dest = f"{s3_bucket}/versions/v1"
    files = write_artifact(tmp_path / "stage")
    cut_uploads(monkeypatch, error)
    with pytest.raises(type(error) if isinstance(error, KeyboardInterrupt) else fs.StorageError) as e:
        fs.commit_dir(tmp_path / "stage", dest, last=["manifest.json"])
    if not isinstance(error, KeyboardInterrupt):
        assert f"{dest}/{VICTIM}: upload failed: connection reset by peer" in str(e.value)
    assert not fs.is_file(fs.join(dest, "manifest.json"))
    assert not fs.is_file(fs.join(dest, VICTIM))
    monkeypatch.undo()
    fs.commit_dir(tmp_path / "stage", dest, last=["manifest.json"])  # the re-run completes
    assert_whole(dest, files)
    with pytest.raises(FileExistsError, match="already exists"):  # a committed version is never rewritten
        fs.commit_dir(tmp_path / "stage", dest, last=["manifest.json"])


def test_an_upload_that_returns_short_is_deleted_and_refused(s3_bucket, tmp_path, monkeypatch):
    """The size check after an upload: a stream that silently drops bytes (returns as if done)."""
    from genoray.infra import uploads

    local = tmp_path / VICTIM
    local.write_bytes(os.urandom(3 * CUT_AT))

    def short_copy(src, out):
        out.write(src.read(CUT_AT))

    monkeypatch.setattr(uploads, "_copy", short_copy)
    uri = f"{s3_bucket}/x/{VICTIM}"
    with pytest.raises(fs.StorageError, match=f"holds {CUT_AT} bytes of {3 * CUT_AT}: cut short"):
        fs.upload(local, uri)
    assert not fs.is_file(uri)


def test_a_remote_store_part_replaced_after_verification_is_refused_when_read(s3_bucket, tmp_path):
    """A store part is verified when the store is opened and read later (a second GET): an object
    replaced in between used to be read unverified; now the bytes read are the bytes hashed."""
    from conftest import toy_fasta

    from genoray.embedding.job import embed_sequences
    from genoray.embedding.store import EmbeddingStore
    from genoray.encoders.kmer import KmerEncoder
    from genoray.infra.errors import ChecksumError

    store_uri = f"{s3_bucket}/store"
    embed_sequences(str(toy_fasta(tmp_path / "toy.fa", n=60)), store_uri, KmerEncoder(), use_ray=False)
    store = EmbeddingStore(store_uri)  # verified here
    assert sorted(store.table()["seq_id"].to_pylist()) == sorted(f"s{i}" for i in range(60))
    part = store.manifest.parts[0].file
    other = fs.read_bytes(fs.join(store_uri, part))
    fs.write_bytes(fs.join(store_uri, part), other[:-1] + bytes([other[-1] ^ 0xFF]))  # replaced after it
    for read in (lambda: list(store.iter_tables()), lambda: list(store.iter_batches(["seq_id"]))):
        with pytest.raises(ChecksumError, match=f"{fs.join(store_uri, part)}: sha256 .* of the bytes read does "
                                                "not match the manifest"):
            read()
