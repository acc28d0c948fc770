"""The unique-id check of the embedding job (genoray.embedding.dedup): bucketed over the units'
sorted hash files, exact against a Python set, blind to 64-bit collisions, and bounded in the driver."""
import io
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3
from conftest import write_fasta

from genoray.embedding import dedup
from genoray.embedding.job import DuplicateIdError, embed_sequences
from genoray.embedding.shards import UnitMarker
from genoray.embedding.store import EmbeddingStore, read_manifest
from genoray.encoders.kmer import KmerEncoder
from genoray.infra.documents import read_document

s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py


def write_unit(d: Path, key: str, ids: list[str], hash_file: bool = True) -> tuple[str | None, str]:
    """A unit's shard (its seq_id column is all the check reads) and sorted hash file."""
    pq.write_table(pa.table({"seq_id": pa.array(ids, pa.string())}), d / f"{key}.parquet")
    if not hash_file:
        return None, f"{key}.parquet"
    (d / f"{key}.ids.npy").write_bytes(dedup.sorted_hash_bytes(dedup.id_hashes(ids)))
    return f"{key}.ids.npy", f"{key}.parquet"


def planted(tmp_path: Path) -> tuple[list[list[str]], list]:
    rng = np.random.default_rng(3)
    units = [[f"u{u}_{i}" for i in range(int(rng.integers(2000, 4000)))] for u in range(4)]
    units[2].append("u0_17")           # across units 0 and 2
    units[1].append("u1_5")            # twice within unit 1
    units[3] += ["u3_9", "u3_9"]       # three times within unit 3
    units[0].append("u2_100")          # in units 0, 2 and 3
    units[3].append("u2_100")
    for u in units:
        rng.shuffle(u)
    files = [write_unit(tmp_path, f"k{i}", ids, hash_file=i != 1) for i, ids in enumerate(units)]  # unit 1: old
    return units, files


def oracle(units: list[list[str]]) -> dict[str, list[int]]:
    c = Counter(i for u in units for i in u)
    return {sid: sorted(u for u, ids in enumerate(units) for x in ids if x == sid) for sid, n in c.items() if n > 1}


@pytest.mark.parametrize("buckets", [1, 7, 64])
def test_bucketed_dedup_finds_exactly_the_planted_duplicates(tmp_path, buckets):
    units, files = planted(tmp_path)
    want = oracle(units)
    assert set(want) == {"u0_17", "u1_5", "u3_9", "u2_100"}
    got = dedup.find_duplicates(tmp_path, files, buckets=buckets)
    assert {k: sorted(v) for k, v in got.items()} == want
    with pytest.raises(DuplicateIdError, match=r"4 seq_id\(s\) occur in more than one input unit.*'u0_17' in A0 and A2"):
        dedup.check_unique_ids(tmp_path, files, [f"A{i}" for i in range(4)], buckets=buckets)


def test_bucketed_dedup_on_ray_equals_in_process(ray_session, tmp_path):
    units, files = planted(tmp_path)
    got = dedup.find_duplicates(tmp_path, files, buckets=5, use_ray=True)
    assert {k: sorted(v) for k, v in got.items()} == oracle(units)


def test_a_64_bit_collision_of_different_ids_is_no_duplicate(tmp_path, monkeypatch):
    real = dedup.id_hashes

    def colliding(ids):
        h = real(ids)
        h[[i for i, x in enumerate(ids) if x in ("alpha", "omega")]] = np.uint64(12345)
        return h

    monkeypatch.setattr(dedup, "id_hashes", colliding)
    files = [write_unit(tmp_path, "a", ["alpha", "b1", "b2"]), write_unit(tmp_path, "b", ["omega", "c1"])]
    cands = dedup.bucket_candidates(str(tmp_path), files, 0, dedup.SPACE)
    assert cands == [(12345, [0, 1])]  # the bucket stage does see the collision ...
    assert dedup.find_duplicates(tmp_path, files, buckets=3) == {}  # ... and the confirmation drops it
    files.append(write_unit(tmp_path, "c", ["omega"]))
    assert dedup.find_duplicates(tmp_path, files, buckets=3) == {"omega": [1, 2]}


def test_driver_memory_is_bounded_per_bucket_not_per_id(tmp_path):
    """2M ids in 8 units: the driver is given only file names and its traced peak stays far below
    the 16 MB that holding one 8-byte hash per id would take."""
    rng = np.random.default_rng(0)
    n, k = 2_000_000, 8
    files = []
    for u in range(k):
        h = rng.integers(0, 2**63, size=n // k, dtype=np.uint64) * np.uint64(2) + np.uint64(u % 2)
        (tmp_path / f"u{u}.ids.npy").write_bytes(dedup.sorted_hash_bytes(h))
        files.append((f"u{u}.ids.npy", f"u{u}.parquet"))  # shards are read only for candidates: none here
    del h
    tracemalloc.start()
    try:
        assert dedup.find_duplicates(tmp_path, files, rows=n, buckets=64) == {}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * 8 / 8, f"driver peak {peak} B for {n} ids"
    assert dedup.buckets_for(n) == 4 and dedup.buckets_for(10**9) == 1908


def test_embed_writes_hash_files_and_split_counts_and_names_the_duplicate(tmp_path):
    a = write_fasta(tmp_path / "a.fa", [("x split=train", "ACGT"), ("y split=test", "ACGA"), ("z", "ACGG")])
    b = write_fasta(tmp_path / "b.fa", [("w split=train", "GGGG")])
    rep = embed_sequences([a, b], tmp_path / "s", KmerEncoder(), use_ray=False)
    assert rep.written == 4
    store = EmbeddingStore(tmp_path / "s")
    for p in read_manifest(tmp_path / "s").parts:
        marker = read_document(UnitMarker, tmp_path / "s" / p.file.replace(".parquet", ".done.json"))
        ids = pq.read_table(tmp_path / "s" / p.file)["seq_id"].to_pylist()
        assert np.array_equal(np.load(tmp_path / "s" / "shards" / marker.ids_file), np.sort(dedup.id_hashes(ids)))
        splits = Counter(s for s in pq.read_table(tmp_path / "s" / p.file)["split"].to_pylist() if s is not None)
        assert p.split_rows == marker.split_rows == dict(splits)
    assert sorted(p.split_rows.get("train", 0) for p in store.manifest.parts) == [1, 1]
    c = write_fasta(tmp_path / "c.fa", [("y", "TTTT")])
    with pytest.raises(DuplicateIdError, match=r"'y' in .*a\.fa \(unit .*\) and .*c\.fa \(unit"):
        embed_sequences([a, b, c], tmp_path / "s", KmerEncoder(), use_ray=False)


class CountingReader(io.BufferedReader):
    """A local file that counts the bytes read from it (as an object store bills ranged reads)."""

    read_bytes = 0

    def read(self, n=-1):
        out = super().read(n)
        self.read_bytes += len(out)
        return out


@pytest.mark.parametrize("skewed", [False, True])
def test_ranged_read_of_a_hash_file_equals_the_exact_slice(tmp_path, skewed):
    rng = np.random.default_rng(1)
    m = 200_000
    h = rng.integers(0, 2**20 if skewed else 2**64 - 1, size=m, dtype=np.uint64, endpoint=False)
    path = tmp_path / "u.ids.npy"
    path.write_bytes(dedup.sorted_hash_bytes(h))
    s = np.sort(h)
    for b, buckets in [(0, 1), (0, 7), (3, 7), (6, 7), (100, 1908), (1907, 1908)]:
        lo, hi = dedup.SPACE * b // buckets, dedup.SPACE * (b + 1) // buckets
        with CountingReader(io.FileIO(path)) as f:
            got = dedup.read_range(f, lo, hi)
            read = f.read_bytes
        want = s[(s >= np.uint64(lo)) & ((s < np.uint64(hi)) if hi < dedup.SPACE else True)]
        assert np.array_equal(got, want)
        if not skewed and buckets > 1:  # one window: the slice plus 2 x 8 sigma, not the file
            assert read < 8 * (m / buckets + 2 * (8 * m**0.5 + 64)) + 256 < 8 * m
        if skewed and b == 0 and buckets > 1:  # all hashes here: the window missed, the whole file was read
            assert len(got) == m and read >= 8 * m


def test_dedup_reads_hash_files_from_object_storage(s3_bucket, tmp_path):
    from genoray.infra import fs

    units, files = planted(tmp_path)
    for name in {n for pair in files for n in pair if n}:
        fs.write_bytes(f"{s3_bucket}/shards/{name}", (tmp_path / name).read_bytes())
    got = dedup.find_duplicates(f"{s3_bucket}/shards", files, buckets=6, digests=_digests(tmp_path, files))
    assert {k: sorted(v) for k, v in got.items()} == oracle(units)
    from genoray.infra.errors import ChecksumError

    fs.write_bytes(f"{s3_bucket}/shards/k0.ids.npy", (tmp_path / "k3.ids.npy").read_bytes())  # swapped
    with pytest.raises(ChecksumError, match=r"shards/k0\.ids\.npy: the sorted id hashes of unit 0 have sha256"):
        dedup.find_duplicates(f"{s3_bucket}/shards", files, buckets=6, digests=_digests(tmp_path, files))


def _digests(d: Path, files: list) -> list:
    from genoray.infra.artifacts import sha256_file

    return [sha256_file(d / ids) if ids else None for ids, _ in files]


@pytest.mark.parametrize("buckets", [1, 7, 64])
def test_a_corrupt_or_swapped_hash_file_is_an_error_naming_file_and_unit(tmp_path, monkeypatch, buckets):
    from genoray.infra.errors import ChecksumError

    units, files = planted(tmp_path)
    digests = _digests(tmp_path, files)
    names = [f"in{i}.fa (unit k{i})" for i in range(4)]
    seen: list[str] = []
    real = dedup.fs.sha256
    monkeypatch.setattr(dedup.fs, "sha256", lambda uri, *a: seen.append(str(uri)) or real(uri, *a))
    with pytest.raises(DuplicateIdError):  # intact: checked, then the planted duplicates are found
        dedup.check_unique_ids(tmp_path, files, names, buckets=buckets, digests=digests)
    assert sorted(Path(s).name for s in seen) == ["k0.ids.npy", "k2.ids.npy", "k3.ids.npy"]  # once each, any B
    f = tmp_path / "k2.ids.npy"
    good = f.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) - 5] ^= 0x10  # one bit of one hash: a silently different dedup without the check
    f.write_bytes(bytes(flipped))
    with pytest.raises(ChecksumError, match=r"k2\.ids\.npy: the sorted id hashes of in2\.fa \(unit k2\) have "
                                            r"sha256 [0-9a-f]{64}, its done marker records " + digests[2]):
        dedup.check_unique_ids(tmp_path, files, names, buckets=buckets, digests=digests)
    f.write_bytes((tmp_path / "k0.ids.npy").read_bytes())  # unit 0's (valid) file under unit 2's name
    with pytest.raises(ChecksumError, match=r"k2\.ids\.npy: .*in2\.fa \(unit k2\)"):
        dedup.find_duplicates(tmp_path, files, buckets=buckets, digests=digests, names=names)
    f.unlink()
    with pytest.raises(ChecksumError, match=r"k2\.ids\.npy: the sorted id hashes of unit 2 have sha256 missing"):
        dedup.find_duplicates(tmp_path, files, buckets=buckets, digests=digests)
    f.write_bytes(good)
    assert {k: sorted(v) for k, v in dedup.find_duplicates(tmp_path, files, buckets=buckets,
                                                          digests=digests).items()} == oracle(units)


def test_hash_files_are_checked_in_ray_tasks(ray_session, tmp_path):
    from genoray.infra.errors import ChecksumError

    units, files = planted(tmp_path)
    digests = _digests(tmp_path, files)
    got = dedup.find_duplicates(tmp_path, files, buckets=5, use_ray=True, digests=digests)
    assert {k: sorted(v) for k, v in got.items()} == oracle(units)
    data = bytearray((tmp_path / "k3.ids.npy").read_bytes())
    data[200] ^= 1
    (tmp_path / "k3.ids.npy").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"k3\.ids\.npy: the sorted id hashes of unit 3 have sha256"):
        dedup.find_duplicates(tmp_path, files, buckets=5, use_ray=True, digests=digests)


def test_embed_checks_the_hash_files_it_dedups(tmp_path, monkeypatch):
    """The job hands the markers' sha256 to the check: a hash file changed after its unit
    committed (here: by the check's first read) stops the embed with the file and unit named."""
    from genoray.infra.errors import ChecksumError

    a = write_fasta(tmp_path / "a.fa", [("x", "ACGT"), ("y", "ACGA")])
    real = dedup.verify_hash_files

    def tampered(shard_dir, checks):
        for _, name, _ in checks:
            p = Path(shard_dir) / name
            p.write_bytes(p.read_bytes()[:-8] + b"\0" * 8)
        return real(shard_dir, checks)

    monkeypatch.setattr(dedup, "verify_hash_files", tampered)
    with pytest.raises(ChecksumError, match=r"\.ids\.npy: the sorted id hashes of .*a\.fa \(unit .*\) have sha256"):
        embed_sequences([a], tmp_path / "s", KmerEncoder(), use_ray=False)
