"""The store manifest: a typed, frozen document that reads and writes the on-disk keys, and the
one place that refuses a format it does not read."""

import dataclasses

import pytest

from genoray.config import CleanPolicy
from genoray.embedding.store import StoreManifest, StorePart
from genoray.infra.documents import from_json, to_json
from genoray.infra.errors import FormatError

OLD = {  # store.json as written before the policy was recorded
    "format_version": 2, "encoder": {"type": "kmer"}, "fingerprint": "abc", "dim": 4, "status": "complete",
    "rows": 3, "counts": {"read": 4, "accepted": 3, "rejected": 1, "rejected_by_reason": {"too_short": 1},
                          "written": 3},
    "failed": [], "parts": [{"file": "shards/k.parquet", "rows": 3, "sha256": "00", "source": "a.fa",
                             "row_groups": None, "byte_range": None, "rejects": None}],
}


def test_old_manifest_reads_typed_and_round_trips_the_same_keys():
    m = from_json(StoreManifest, OLD)
    assert m.clean is None and m.rows == 3 and m.counts.rejected_by_reason == {"too_short": 1}
    assert m.parts == (StorePart(file="shards/k.parquet", rows=3, sha256="00", source="a.fa"),)
    back = to_json(m)  # optional parts the store does not have are left out, as older writers wrote them
    assert back["parts"] == [{"file": "shards/k.parquet", "rows": 3, "sha256": "00", "source": "a.fa"}]
    assert {k: v for k, v in back.items() if k != "parts"} == {k: v for k, v in OLD.items() if k != "parts"}


def test_policy_round_trips_and_manifest_is_frozen():
    m = dataclasses.replace(from_json(StoreManifest, OLD), clean=CleanPolicy(max_n_fraction=0.3))
    doc = to_json(m)
    assert doc["clean"]["max_n_fraction"] == 0.3
    assert from_json(StoreManifest, doc) == m
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.rows = 4  # type: ignore[misc]


@pytest.mark.parametrize("change, match", [
    ({"format_version": 3}, "format 3 is newer than genoray .* reads .*upgrade genoray"),
    ({"format_version": 1}, "unsupported format_version 1 .*rebuild it"),
    ({"format_version": "2"}, "not a embedding store manifest"),
    ({"future_key": 1}, "future_key: unknown key"),
    ({"rows": "three"}, "rows: Input should be a valid integer"),
    ({"status": "done"}, "status: Input should be 'complete' or 'partial'"),
])
def test_formats_and_keys_this_genoray_does_not_read_are_refused_naming_the_file(change, match):
    with pytest.raises(FormatError, match=match) as e:
        from_json(StoreManifest, {**OLD, **change}, "s3://b/store/store.json")
    assert "s3://b/store/store.json" in str(e.value)
