import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_fasta

from genoray.config import CleanPolicy, ReadConfig
from genoray.sequences import (
    Cleaner,
    ReadReport,
    SequenceFormatError,
    iter_sequences,
    read_sequences,
    reverse_complement,
    tile,
)


def test_fasta_tags_wrapping_and_counts(tmp_path):
    p = write_fasta(tmp_path / "a.fa", [("r1 label=pos split=train domain=ecoli some text", "ACGT" * 30),
                                       ("r2 label=neg", "acgu"), ("r3", "ACGT" * 4 + "ACGR")], width=7)
    t, r = read_sequences(p)
    rows = t.to_pylist()
    assert [x["seq_id"] for x in rows] == ["r1", "r2", "r3"]
    assert rows[0]["sequence"] == "ACGT" * 30 and rows[0]["label"] == "pos"
    assert rows[0]["split"] == "train" and rows[0]["domain"] == "ecoli"
    assert '"description": "some text"' in rows[0]["meta"]
    assert rows[1]["sequence"] == "ACGT" and rows[1]["label"] == "neg"  # lower-case + U->T
    assert rows[2]["sequence"] == "ACGT" * 4 + "ACGN"  # IUPAC R -> N
    assert (r.read, r.accepted, r.n_rejected) == (3, 3, 0)


def test_fastq_and_gzip(tmp_path):
    fq = tmp_path / "r.fastq.gz"
    with gzip.open(fq, "wt") as f:
        f.write("@q1 label=a\nACGT\n+\nIIII\n@q2\nGGCC\n+\nIIII\n")
    t, r = read_sequences(fq)
    assert t["sequence"].to_pylist() == ["ACGT", "GGCC"] and r.accepted == 2


def test_parquet_csv_tsv(tmp_path):
    tbl = pa.table({"id": ["a", "b"], "sequence": ["ACGT", "TTTT"], "label": ["x", "y"], "gene": ["g1", None]})
    pq.write_table(tbl, tmp_path / "d.parquet")
    t, _ = read_sequences(tmp_path / "d.parquet")
    assert t["seq_id"].to_pylist() == ["a", "b"] and t["label"].to_pylist() == ["x", "y"]
    assert t["meta"].to_pylist() == ['{"gene": "g1"}', None]
    (tmp_path / "d.csv").write_text("seq_id,sequence,label\ns1,ACGT,p\ns2,GG,q\n")
    (tmp_path / "d.tsv").write_text("seq_id\tsequence\n t1\tAC\n")
    t, r = read_sequences([tmp_path / "d.csv", tmp_path / "d.tsv"])
    assert t.num_rows == 3 and r.read == 3


def test_real_fasta_matches_parquet():
    """A real FASTA copy of a real Parquet set (header tags, wrapped lines) reads to the same rows:
    the shipped splice sample always, the full enhancer set when ``../shared/data`` is present."""
    from conftest import FIXTURE_DATA, SHARED_DATA

    pairs = [(FIXTURE_DATA / "uci_splice.sample.fasta", FIXTURE_DATA / "uci_splice.sample.parquet")]
    if (SHARED_DATA / "ienhancer2l_layer1.fasta").is_file():
        pairs.append((SHARED_DATA / "ienhancer2l_layer1.fasta", SHARED_DATA / "ienhancer2l_layer1.parquet"))
    for fasta, parquet in pairs:
        a, _ = read_sequences(fasta)
        b, _ = read_sequences(parquet)
        assert a.num_rows == b.num_rows > 0
        cols = ["seq_id", "sequence", "label", "split"]
        assert a.select(cols).equals(b.select(cols))


@pytest.mark.parametrize("content,reason", [
    (">a\n\n>b\nACGT\n", "empty"),
    (">a\nACGXT\n", "invalid_character: 'X' at position 4"),
    (">a\nACGT\n>a\nGGGG\n", "duplicate_id"),
    (">a\nNNNNNNNNAC\n", "too_many_n"),
])
def test_bad_records_are_rejected_with_reason(tmp_path, content, reason):
    p = tmp_path / "bad.fa"
    p.write_text(content)
    report = ReadReport()
    list(iter_sequences(p, report=report))
    assert report.read == report.accepted + report.n_rejected
    assert report.n_rejected == 1
    ex = report.examples[0]
    assert ex.reason.startswith(reason) and ex.path == str(p) and ex.record >= 1


def test_no_header_names_file_and_record(tmp_path):
    p = tmp_path / "nohdr.fa"
    p.write_text("ACGT\n>a\nAC\n")
    with pytest.raises(SequenceFormatError, match=r"nohdr\.fa: record 1: malformed: .*Expected '>'"):
        read_sequences(p)


def test_truncated_gzip_is_an_error_not_a_short_read(tmp_path):
    data = gzip.compress(b"".join(b">r%d\nACGTACGTAC\n" % i for i in range(20000)))
    p = tmp_path / "cut.fa.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SequenceFormatError, match=r"cut\.fa\.gz: record \d+: truncated compressed file after \d+ records"):
        read_sequences(p)


def test_binary_junk(tmp_path):
    p = tmp_path / "junk.fasta"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SequenceFormatError, match=r"junk\.fasta"):
        read_sequences(p)
    q = tmp_path / "junk.parquet"
    q.write_bytes(b"not parquet at all")
    with pytest.raises(SequenceFormatError, match=r"junk\.parquet: file: not a readable Parquet file"):
        read_sequences(q)


def test_non_ascii_rejected(tmp_path):
    p = tmp_path / "u.fa"
    p.write_bytes(">a\nAC\xc3\xa9GT\n>b\nACGT\n".encode("latin-1"))
    with pytest.raises(SequenceFormatError, match=r"u\.fa: record 1"):
        read_sequences(p)


def test_missing_columns_and_unknown_type(tmp_path):
    pq.write_table(pa.table({"name": ["a"], "seq": ["AC"]}), tmp_path / "x.parquet")
    with pytest.raises(SequenceFormatError, match=r"missing column"):
        read_sequences(tmp_path / "x.parquet")
    (tmp_path / "x.bam").write_text("")
    with pytest.raises(SequenceFormatError, match="unknown file type"):
        read_sequences(tmp_path / "x.bam")
    with pytest.raises(SequenceFormatError, match="no such file"):
        read_sequences(tmp_path / "absent.fa")


def test_duplicate_ids_across_files_and_error_policy(tmp_path):
    a = write_fasta(tmp_path / "a.fa", [("x", "ACGT")])
    b = write_fasta(tmp_path / "b.fa", [("x", "GGGG"), ("y", "TTTT")])
    t, r = read_sequences([a, b])
    assert t["seq_id"].to_pylist() == ["x", "y"] and r.rejected["duplicate_id"] == 1
    with pytest.raises(SequenceFormatError, match=r"b\.fa: record 1 \(id 'x'\): duplicate_id"):
        read_sequences([a, b], ReadConfig(clean=CleanPolicy(duplicate_ids="error")))


def test_cleaning_policy():
    c = Cleaner(CleanPolicy(ambiguous="reject", min_length=3, max_length=5, strip_gaps=True))
    assert c("AC-G.T") == ("ACGT", None)
    assert c("ACR")[1].startswith("ambiguous_base: 'R' at position 3")
    assert c("AC")[1].startswith("too_short")
    assert c("ACGTAC")[1].startswith("too_long")
    strict = Cleaner(CleanPolicy(uppercase=False, rna_to_dna=False))
    assert strict("acgt")[1].startswith("invalid_character: 'a'")
    assert strict("ACGU")[1].startswith("invalid_character: 'U'")
    with pytest.raises(ValueError):
        CleanPolicy(max_n_fraction=2)


def test_tile_and_reverse_complement():
    assert reverse_complement("AACGTN") == "NACGTT"
    tiles = tile("ABCDEFGHIJ", 4, 1)
    assert tiles == ["ABCD", "DEFG", "GHIJ"]
    assert tile("ABCDEFGHIJK", 4, 1)[-1] == "HIJK"  # last tile aligned to the end
    assert tile("ACG", 4, 1) == ["ACG"]
    with pytest.raises(ValueError):
        tile("ACGT", 4, 4)


def test_sidecar_checksum_catches_boundary_truncation(tmp_path):
    import hashlib

    p = write_fasta(tmp_path / "a.fa", [("r1", "ACGT"), ("r2", "GGCC"), ("r3", "TTAA")])
    (tmp_path / "a.fa.sha256").write_text(hashlib.sha256(p.read_bytes()).hexdigest() + "  a.fa\n")
    assert read_sequences(p)[0].num_rows == 3
    p.write_text(">r1\nACGT\n>r2\nGGCC\n")  # cut exactly at a record boundary: parses "fine"
    with pytest.raises(SequenceFormatError, match=r"a\.fa: file: checksum_mismatch"):
        read_sequences(p)


def test_long_records_are_windowed_batch_by_batch(tmp_path):
    """A record longer than max_length becomes windows: ids, bases and counts against an oracle;
    an all-N region loses its windows (counted), a short record passes whole."""
    import numpy as np

    rng = np.random.default_rng(0)
    chrom = "".join(rng.choice(list("ACGT"), size=10_050))
    chrom = chrom[:3000] + "N" * 1500 + chrom[4500:]  # windows inside the gap are rejected
    path = write_fasta(tmp_path / "genome.fa", [("chr1 label=x", chrom), ("short", "ACGT" * 10), ("allN", "N" * 2500)])
    policy = CleanPolicy(max_length=1000, long_records="window", window_overlap=100)
    report = ReadReport()
    batches = list(iter_sequences([path], ReadConfig(clean=policy, batch_size=4), report))
    assert max(b.num_rows for b in batches) <= 4
    rows = pa.Table.from_batches(batches).to_pylist()
    starts = list(range(0, 10_050 - 1000 + 1, 900)) + [10_050 - 1000]  # last window aligned to the end
    expected = [(f"chr1:{s + 1}-{s + 1000}", chrom[s : s + 1000]) for s in starts
                if chrom[s : s + 1000].count("N") <= 100]
    got = [(r["seq_id"], r["sequence"]) for r in rows if r["seq_id"].startswith("chr1:")]
    assert got == expected
    assert all(r["label"] == "x" for r in rows if r["seq_id"].startswith("chr1:"))
    meta = __import__("json").loads(rows[0]["meta"])
    assert meta["source_id"] == "chr1" and (meta["start"], meta["end"]) == (1, 1000)
    assert [r["seq_id"] for r in rows if not r["seq_id"].startswith("chr1:")] == ["short"]
    assert report.read == 3 and report.accepted == 2 and report.rejected == {"no_valid_window": 1}
    assert report.windowed == 1 and report.windows == len(expected) and report.rows == len(rows)
    n_gap = len(starts) - len(expected)
    assert n_gap == 2 and report.windows_rejected["too_many_n"] == n_gap + 3  # + allN's 3 windows
    with pytest.raises(ValueError, match="window_overlap"):
        CleanPolicy(max_length=100, long_records="window", window_overlap=100)
    report = ReadReport()  # the default still rejects, naming the reason
    list(iter_sequences([path], ReadConfig(clean=CleanPolicy(max_length=1000)), report))
    assert report.rejected["too_long"] == 2 and report.accepted == 1


@pytest.mark.parametrize("block", [1 << 20, 2, 3, 7])
def test_fasta_byte_ranges_cover_every_record_once(tmp_path, block):
    """Cutting an uncompressed FASTA at arbitrary byte offsets, moved forward to the next header,
    gives every record exactly once and in order (oracle: the whole-file read), for any block
    size of the boundary search."""
    import random

    from genoray.sequences import fasta_record_start, iter_file

    rng = random.Random(block)
    recs = [(f"r{i}", "".join(rng.choice("ACGT") for _ in range(rng.randint(1, 200)))) for i in range(120)]
    path = write_fasta(tmp_path / "split.fa", recs, width=50)
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = path.read_bytes()
        for offset in range(0, size + 1, 97):
            start = fasta_record_start(f, offset, block)
            assert start == size or (data[start:start + 1] == b">" and (start == 0 or data[start - 1:start] == b"\n"))
            assert start >= offset and b"\n>" not in data[max(0, offset - 1):start]
    for n_parts in (1, 3, 17, 400):
        cuts = [size * i // n_parts for i in range(n_parts + 1)]
        ids, report = [], ReadReport()
        for a, b in zip(cuts, cuts[1:]):
            for batch in iter_file(path, ReadConfig(), report, set(), byte_range=(a, b)):
                ids += batch.column("seq_id").to_pylist()
        assert ids == [r[0] for r in recs] and report.read == len(recs)
    windowed = ReadConfig(clean=CleanPolicy(max_length=60, long_records="window", window_overlap=10))
    whole = [b.column("seq_id").to_pylist() for b in iter_file(path, windowed, ReadReport(), set())]
    cuts = [size * i // 5 for i in range(6)]
    parts = [b.column("seq_id").to_pylist() for a, b_ in zip(cuts, cuts[1:])
             for b in iter_file(path, windowed, ReadReport(), set(), byte_range=(a, b_))]
    assert sum(parts, []) == sum(whole, []) and any(":" in i for i in sum(whole, []))  # streamed windows too
    with pytest.raises(ValueError, match="uncompressed FASTA"):
        list(iter_file(write_fasta(tmp_path / "x.fq.fa", recs[:1]).rename(tmp_path / "x.fq"), ReadConfig(),
                       ReadReport(), byte_range=(0, 10)))


def test_streamed_fasta_windows_equal_in_memory_windows(tmp_path):
    """The line-by-line FASTA reader (window mode) gives exactly the rows and counts of the
    in-memory windowing used for other formats: plain and gzipped FASTA vs Parquet, with
    overlap, a duplicated long id, lower case, CRLF and a bad base."""
    import random

    rng = random.Random(7)
    recs = [("a", "".join(rng.choice("ACGT") for _ in range(2_345))), ("b", "acgt" * 100),
            ("c", "".join(rng.choice("ACGTN") for _ in range(999)) + "X" + "ACGT" * 300), ("a", "ACGT" * 400),
            ("d", "G" * 700)]
    fa = write_fasta(tmp_path / "w.fa", recs, width=70)
    fa.write_bytes(fa.read_bytes().replace(b"\n", b"\r\n"))
    gz = tmp_path / "w.fa.gz"
    gz.write_bytes(gzip.compress(fa.read_bytes()))
    pqt = tmp_path / "w.parquet"
    pq.write_table(pa.table({"id": [r[0] for r in recs], "sequence": [r[1] for r in recs]}), pqt)
    cfg = ReadConfig(clean=CleanPolicy(max_length=500, long_records="window", window_overlap=120, max_n_fraction=0.3),
                     batch_size=3)
    results = []
    for path in (fa, gz, pqt):
        report = ReadReport()
        rows = pa.Table.from_batches(list(iter_sequences([path], cfg, report))).select(["seq_id", "sequence", "meta"])
        d = report.to_dict()
        results.append((rows.to_pylist(), {k: d[k] for k in ("read", "accepted", "rejected_by_reason", "rows",
                                                                 "windowed", "windows", "windows_rejected_by_reason")}))
    assert results[0] == results[1] == results[2]
    counts = results[0][1]
    assert counts["read"] == 5 and counts["rejected_by_reason"] == {"duplicate_id": 1}
    from genoray.sequences import window_starts

    over_x = sum(1 for a in window_starts(2_200, 500, 120) if a <= 999 < a + 500)
    assert counts["windows_rejected_by_reason"] == {"invalid_character": over_x}  # the windows over the X
    with pytest.raises(SequenceFormatError, match="line 1 is not inside a record"):
        bad = tmp_path / "bad.fa"
        bad.write_text("ACGT\n>x\nACGT\n")
        list(iter_sequences([bad], cfg))
    with pytest.raises(SequenceFormatError, match="truncated"):
        cut = tmp_path / "cut.fa.gz"
        cut.write_bytes(gz.read_bytes()[: len(gz.read_bytes()) // 2])
        list(iter_sequences([cut], cfg))


def test_broken_count_invariant_is_an_invariant_error():
    from genoray.infra.errors import InvariantError

    report = ReadReport(read=2, accepted=1)
    with pytest.raises(InvariantError, match="do not add up"):
        report.check()


def test_unit_keys_of_existing_stores_are_stable():
    """A store written before the split settings existed must resume, not re-embed: the unit key
    of the default reading settings is pinned (it is what every older store recorded), and the
    split settings count only when a test split is drawn."""
    import dataclasses

    from genoray.config import ReadConfig
    from genoray.infra.artifacts import sha256_json
    from genoray.sequences.units import key_fields

    assert sha256_json(key_fields(ReadConfig()))[:16] == "5052b56bb5869163"
    assert key_fields(dataclasses.replace(ReadConfig(), split_seed=7)) == key_fields(ReadConfig())
    assert key_fields(dataclasses.replace(ReadConfig(), test_fraction=0.2)) != key_fields(ReadConfig())
