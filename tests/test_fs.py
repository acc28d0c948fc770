"""genoray.infra.fs against local paths and a real S3 protocol server (moto on 127.0.0.1)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import s3
from conftest import toy_fasta

from genoray.config import ReadConfig
from genoray.infra import fs
from genoray.sequences import SequenceFormatError, expand_inputs, plan_units, read_sequences

s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py


def test_paths_stay_uris():
    assert fs.as_path("s3://bkt/a/b") == "s3://bkt/a/b"
    assert fs.as_path("file:///tmp/x") == Path("/tmp/x")
    assert fs.join("s3://bkt/a/", "b", "c.json") == "s3://bkt/a/b/c.json"
    assert fs.join("/tmp/a", "b") == "/tmp/a/b"
    assert fs.is_remote("gs://x/y") and not fs.is_remote("/x") and not fs.is_remote(Path("s3:/x"))


@pytest.mark.parametrize("remote", [False, True])
def test_roundtrip(remote, tmp_path, request):
    root = request.getfixturevalue("s3_bucket") + "/d" if remote else str(tmp_path / "d")
    fs.write_json(fs.join(root, "a.json"), {"x": 1})
    fs.write_bytes(fs.join(root, "sub", "b.bin"), b"\x00\x01")
    assert fs.read_json(fs.join(root, "a.json")) == {"x": 1}
    assert fs.list_files(root) == ["a.json", "sub/b.bin"]
    assert fs.list_dirs(root) == ["sub"]
    assert fs.info(fs.join(root, "sub", "b.bin"))[:2] == ("file", 2)
    assert fs.is_dir(root) and not fs.is_file(fs.join(root, "nope"))
    local = fs.download_dir(root, tmp_path / "copy")
    assert (local / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "m.json").write_text("{}")
    (tmp_path / "up" / "f.bin").write_bytes(b"abc")
    assert fs.upload_dir(tmp_path / "up", fs.join(root, "up"), last=["m.json"]) == ["f.bin", "m.json"]
    assert fs.sha256(fs.join(root, "up", "f.bin")) == fs.sha256(tmp_path / "up" / "f.bin")
    fs.delete_dir(fs.join(root, "up"))
    assert fs.list_files(fs.join(root, "up")) == []


def test_bad_paths_name_the_uri(s3_bucket):
    with pytest.raises(FileNotFoundError, match=f"{s3_bucket}/missing.json"):
        fs.read_json(f"{s3_bucket}/missing.json")
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-xyz/a"):
        fs.read_bytes("s3://no-such-bucket-xyz/a")
    with pytest.raises(OSError, match="s3://no-such-bucket-xyz/out.json: write failed"):
        fs.write_json("s3://no-such-bucket-xyz/out.json", {})  # buckets are never created on the fly
    with pytest.raises(SequenceFormatError, match="s3://no-such-bucket-xyz/x.fa.*no such file"):
        read_sequences("s3://no-such-bucket-xyz/x.fa")
    with pytest.raises(SequenceFormatError, match="no such file"):
        expand_inputs(f"{s3_bucket}/nothing/")


def test_sequences_from_s3_equal_local(s3_bucket, tmp_path):
    """FASTA, gzipped FASTA, byte-ranged FASTA and Parquet read from s3:// give exactly the
    records of the same files read locally."""
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    fa = toy_fasta(tmp_path / "in" / "toy.fa", n=80)
    (tmp_path / "in" / "toy2.fa.gz").write_bytes(gzip.compress(toy_fasta(tmp_path / "t2.fa", n=30, prefix="g").read_bytes()))
    local_tab, _ = read_sequences(fa)
    pq.write_table(local_tab.select(["seq_id", "sequence", "label", "split"]), tmp_path / "in" / "toy.parquet",
                   row_group_size=20)
    fs.upload_dir(tmp_path / "in", f"{s3_bucket}/in")
    files = expand_inputs(f"{s3_bucket}/in/")
    assert files == [f"{s3_bucket}/in/{n}" for n in ("toy.fa", "toy.parquet", "toy2.fa.gz")]
    for name in ("toy.fa", "toy2.fa.gz", "toy.parquet"):
        remote, rep = read_sequences(f"{s3_bucket}/in/{name}")
        local, _ = read_sequences(tmp_path / "in" / name)
        assert remote.to_pylist() == local.to_pylist() and rep.read == local.num_rows
    units = plan_units([f"{s3_bucket}/in/toy.fa", f"{s3_bucket}/in/toy.parquet"], "fp", ReadConfig(), 20,
                       bytes_per_unit=2000)
    assert sum(u["byte_range"] is not None for u in units) > 1 and sum(u["row_groups"] is not None for u in units) == 4
    from genoray.sequences import ReadReport, iter_file

    ids = []
    for u in units:
        for b in iter_file(u["path"], ReadConfig(), ReadReport(), None, u["row_groups"], u["first_record"],
                           u["byte_range"]):
            ids += b["seq_id"].to_pylist()
    assert sorted(ids) == sorted(local_tab["seq_id"].to_pylist() * 2)
    assert json.loads(json.dumps(units))  # units travel to Ray as JSON


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    """Artifacts get the mode a plain open() would give (0666 less the umask), not mkstemp's
    0600, so a group-readable umask shares them on shared storage."""
    import os
    import stat

    import numpy as np

    from genoray.embedding.shards import UnitMarker
    from genoray.infra.artifacts import write_npz
    from genoray.infra.documents import write_document

    old = os.umask(umask)
    try:
        assert fs.file_mode() == 0o666 & ~umask
        fs.write_json(tmp_path / "a.json", {"x": 1})
        fs.write_bytes(tmp_path / "b.bin", b"x")
        fs.atomic_write_bytes(tmp_path / "a.json", b"{}")  # replacing keeps the rule
        write_npz(tmp_path / "c.npz", v=np.arange(3))
        write_document(tmp_path / "d.done.json", UnitMarker(key="k", path="p", file="f", sha256="0" * 64, bytes=0,
                                                            rows=0, read=0, accepted=0, rejected_by_reason={}))
        with open(tmp_path / "oracle", "w"):
            pass
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["a.json", "b.bin", "c.npz", "d.done.json", "oracle"], 0o666 & ~umask)
