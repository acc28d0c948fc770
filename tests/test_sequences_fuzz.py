"""Property tests: readers and request validation never crash on arbitrary input, and
round trips are exact."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genoray.config import CleanPolicy, ReadConfig
from genoray.sequences import ReadReport, SequenceFormatError, iter_sequences

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
pytestmark = pytest.mark.fuzz


WINDOWED = ReadConfig(clean=CleanPolicy(max_length=40, long_records="window", window_overlap=7), batch_size=5)


def read_or_error(path, cfg=None):
    report = ReadReport()
    try:
        rows = sum(b.num_rows for b in iter_sequences(path, cfg, report=report))
    except SequenceFormatError as e:
        assert str(path) in str(e)  # the error names the file
        return None
    assert report.read == report.accepted + report.n_rejected and rows == report.rows
    assert report.rows == report.accepted - report.windowed + report.windows
    return rows


@FUZZ
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".fa", ".fq", ".fa.gz", ".parquet", ".csv"]),
       windowed=st.booleans())
def test_any_bytes_give_records_that_add_up_or_a_named_error(tmp_path, data, suffix, windowed):
    p = tmp_path / f"x{suffix}"
    p.write_bytes(data)
    read_or_error(p, WINDOWED if windowed else None)


@FUZZ
@given(st.lists(st.tuples(st.text(alphabet="abcXYZ019_-", min_size=1, max_size=12),
                          st.text(alphabet="ACGTNacgtnRYU-.*X", max_size=150)), max_size=30),
       st.integers(min_value=1, max_value=90), st.booleans(), st.booleans())
def test_fasta_structure_fuzz(tmp_path, records, width, crlf, windowed):
    nl = "\r\n" if crlf else "\n"
    text = "".join(f">{h}{nl}" + "".join(s[i:i + width] + nl for i in range(0, len(s), width)) for h, s in records)
    p = tmp_path / "f.fa"
    p.write_text(text)
    n = read_or_error(p, WINDOWED if windowed else None)
    assert n is not None and (windowed or n <= len(records))


seq_st = st.text(alphabet="ACGTN", min_size=1, max_size=200)


@FUZZ
@given(st.lists(seq_st, min_size=1, max_size=40, unique=True))
def test_fasta_and_parquet_round_trip(tmp_path, seqs):
    ids = [f"r{i}" for i in range(len(seqs))]
    with open(tmp_path / "a.fa", "w") as f:
        for i, s in zip(ids, seqs):
            f.write(f">{i} label=L{len(s) % 3}\n{s}\n")
    pq.write_table(pa.table({"id": ids, "sequence": seqs, "label": [f"L{len(s) % 3}" for s in seqs]}), tmp_path / "a.parquet")
    cfg = ReadConfig(clean=CleanPolicy(max_n_fraction=1.0))
    for name in ("a.fa", "a.parquet"):
        t = pa.Table.from_batches(list(iter_sequences(tmp_path / name, cfg)))
        assert t["seq_id"].to_pylist() == ids and t["sequence"].to_pylist() == seqs
        assert t["label"].to_pylist() == [f"L{len(s) % 3}" for s in seqs]


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
                    max_leaves=20))
def test_request_validation_never_500s(json_value):

    body = {"sequences": json_value} if not isinstance(json_value, dict) else json_value
    r = _client().post("/v1/predict", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 413, 422), r.text


_CLIENT = {}


def _client():
    if "c" not in _CLIENT:
        import tempfile
        from pathlib import Path

        from bundles import make_bundle
        from fastapi.testclient import TestClient

        from genoray.serving.backends import plain_app

        d = Path(tempfile.mkdtemp())
        make_bundle(d / "w", d / "root")
        _CLIENT["c"] = TestClient(plain_app(str(d / "root"), require_key=False))
    return _CLIENT["c"]
