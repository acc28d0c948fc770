"""The store manifest: a typed, frozen dataclass that reads and writes the on-disk keys."""

import dataclasses

import pytest

from genoray.config import CleanPolicy
from genoray.store import StoreManifest

OLD = {  # store.json as written before the policy was recorded, plus a key from a newer writer
    "format_version": 2, "encoder": {"type": "kmer"}, "fingerprint": "abc", "dim": 4, "status": "complete",
    "rows": 3, "counts": {"read": 4, "accepted": 3, "rejected": 1, "rejected_by_reason": {"too_short": 1},
                          "written": 3},
    "failed": [], "parts": [{"file": "shards/k.parquet", "rows": 3, "sha256": "00", "source": "a.fa",
                             "row_groups": None, "byte_range": None, "rejects": None}],
    "future_key": {"x": 1},
}


def test_old_manifest_round_trips_with_the_same_keys():
    m = StoreManifest.from_json(OLD)
    assert m.clean is None and m.extra == {"future_key": {"x": 1}}
    assert m["rows"] == 3 and m["parts"][0]["file"] == "shards/k.parquet" and m.get("nope", 7) == 7
    assert {k: v for k, v in m.to_json().items() if k != "clean"} == OLD


def test_policy_round_trips_and_manifest_is_frozen():
    m = dataclasses.replace(StoreManifest.from_json(OLD), clean=CleanPolicy(max_n_fraction=0.3))
    doc = m.to_json()
    assert doc["clean"]["max_n_fraction"] == 0.3
    assert StoreManifest.from_json(doc) == m
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.rows = 4
