"""Races on a bundle root (issue 25, item 4): publishing is a compare-and-swap of ``CURRENT``,
GC never leaves ``CURRENT`` on a version it deleted, and a serving replica leases a version
before loading it, renews its leases on a thread of its own and retries a transient load error.

Every race is forced, not hoped for: a barrier holds both publishers after each has read
``CURRENT``; a hook runs a rollback at the moment GC deletes the version rolled back to. Each
test fails on the code before the fix (see SECURITY.md). Local roots and a moto S3 bucket.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import s3
from bundles import make_bundle
from racing import race

from genoray.bundle import collect_garbage, live_leases, publish, store
from genoray.bundle.versions import read_current
from genoray.infra import fs
from genoray.infra.conditional import ConflictError

s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> tuple[Path, list[str]]:
    """A local root with three versions, oldest first; ``CURRENT`` is the newest."""
    base = tmp_path_factory.mktemp("race-bundles")
    root = base / "root"
    return root, [make_bundle(base / f"w{i}", root, k=5, seed=i) for i in range(3)]


def _root(three, tmp_path: Path, backend: str, bucket: str | None) -> tuple[str, list[str]]:
    """A fresh copy of ``three``'s versions (no ``CURRENT``) on ``backend``."""
    src, versions = three
    root = f"{bucket}/bundles" if backend == "s3" else str(tmp_path / "root")
    fs.upload_dir(src / "objects", fs.join(root, "objects"))  # what format-2 versions refer to
    for v in versions:
        fs.upload_dir(src / "versions" / v, fs.join(root, "versions", v), last=["bundle.json"])
    return root, versions


@pytest.fixture(params=["local", "s3"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def bucket(backend, request) -> str | None:
    return request.getfixturevalue("s3_bucket") if backend == "s3" else None


def test_publishing_a_good_version_repairs_a_hostile_current(three, tmp_path):
    """A ``CURRENT`` naming ``../../evil`` is refused by every reader; the compare-and-swap must
    not lock the operator out of repairing it: publishing a valid version replaces it."""
    import json

    root, (v0, _, _) = _root(three, tmp_path, "local", None)
    Path(root, "CURRENT").write_text(json.dumps({"version": "../../evil", "bundle_sha256": "0" * 64}))
    publish(root, v0)
    assert read_current(root).version == v0


@pytest.mark.parametrize("first", [True, False], ids=["first-publish", "replace"])
def test_two_racing_publishers_exactly_one_wins(three, tmp_path, backend, bucket, monkeypatch, first):
    """Two publishers read the same ``CURRENT`` (none yet, or version 0) and both swap it: the
    old code let both writes land (the second silently undid the first). Now exactly one wins
    and the other gets a ConflictError naming the root's ``CURRENT`` and the version it saw."""
    root, (v0, v1, v2) = _root(three, tmp_path, backend, bucket)
    if not first:
        publish(root, v0)
    barrier = threading.Barrier(2, timeout=30)
    verify = store.verify_bundle

    def held(*a, **kw):  # each publisher has read CURRENT by now: wait for the other one
        out = verify(*a, **kw)
        barrier.wait()
        return out

    monkeypatch.setattr(store, "verify_bundle", held)
    winners, losers, results = race(lambda v: publish(root, v), (v1, v2), 60)
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], ConflictError)
    msg = str(losers[0])
    assert fs.join(root, "CURRENT") in msg
    assert (f"saw version {v0}" if not first else "saw no CURRENT") in msg
    cur = read_current(root)
    assert cur is not None and cur.version == winners[0]


def test_publish_if_current_refuses_to_undo_a_rollback(three, tmp_path):
    """A reindex that started from version 1 must not publish over a rollback to version 0
    made during its run: ``publish(if_current=v1)`` refuses, naming both."""
    root, (v0, v1, v2) = _root(three, tmp_path, "local", None)
    publish(root, v1)
    publish(root, v0)  # the rollback, while the reindex ran
    with pytest.raises(ConflictError, match=f"points at {v0}, not {v1}"):
        publish(root, v2, if_current=v1)
    assert read_current(root).version == v0


def test_gc_racing_a_rollback_never_leaves_current_on_a_deleted_version(three, tmp_path, backend, bucket,
                                                                        monkeypatch):
    """GC (keep 1) deletes versions 0 and 1 while ``CURRENT`` is 2; a rollback to version 0 runs
    at the moment GC deletes version 0's ``bundle.json``. The old code read
    ``CURRENT`` once and deleted the version the rollback had just published. Now ``CURRENT``
    always names a version whose ``bundle.json`` is there, and a failed rollback says why."""
    root, (v0, v1, v2) = _root(three, tmp_path, backend, bucket)
    publish(root, v2)
    target, real = fs.join(root, "versions", v0, "bundle.json"), fs.delete
    outcome: list[BaseException | None] = []

    def rollback() -> None:
        try:
            publish(root, v0)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            outcome.append(e)

    def hooked(uri):
        if str(uri) == target and not outcome:
            t = threading.Thread(target=rollback)
            t.start()
            t.join(3)  # a local publish waits for GC's lock: GC goes on meanwhile
            if t.is_alive():
                threading.Thread(target=t.join).start()
                hooked.waiting = t  # type: ignore[attr-defined]
        return real(uri)

    monkeypatch.setattr(fs, "delete", hooked)
    removed = collect_garbage(root, keep=1)
    waiting = getattr(hooked, "waiting", None)
    if waiting is not None:
        waiting.join(60)
    monkeypatch.undo()
    assert outcome, "the rollback never ran"
    cur = read_current(root)
    assert cur is not None
    assert cur.version not in removed
    assert fs.is_file(fs.join(root, "versions", cur.version, "bundle.json"))
    store.verify_bundle(root, cur.version)  # and it is whole
    if outcome[0] is None:
        assert cur.version == v0
    else:
        assert cur.version == v2 and isinstance(outcome[0], FileNotFoundError)


def _holder_root(three, tmp_path) -> tuple[str, list[str]]:
    root, versions = _root(three, tmp_path, "local", None)
    publish(root, versions[0])
    return root, versions


def test_a_replica_leases_a_version_before_loading_it(three, tmp_path, monkeypatch):
    """GC must keep a version a replica is downloading: the old code leased it only once it was
    loaded. Now the lease is live while the load runs, and is renewed during a long load by
    the lease thread (the old heartbeat shared the watcher thread)."""
    from genoray.serving.holder import BundleHolder

    root, (v0, v1, _) = _holder_root(three, tmp_path)
    seen: list[tuple[str, list[str], float]] = []
    real = BundleHolder._open

    def slow(self, version):
        if version == v1:
            p = Path(fs.join(root, "leases", v1, self.holder))
            seen.append(("start", live_leases(root, v1), p.stat().st_mtime if p.exists() else 0.0))
            time.sleep(1.0)  # a long download
            seen.append(("end", live_leases(root, v1), p.stat().st_mtime if p.exists() else 0.0))
        return real(self, version)

    monkeypatch.setattr(BundleHolder, "_open", slow)
    holder = BundleHolder(root, poll_s=0.05, lease_every_s=0.1)
    try:
        assert live_leases(root, v0) == [holder.holder]
        publish(root, v1)
        deadline = time.time() + 20
        while holder.version != v1 and time.time() < deadline:
            time.sleep(0.05)
        assert holder.version == v1
        (_, start_leases, t_start), (_, end_leases, t_end) = seen
        assert start_leases == [holder.holder] and end_leases == [holder.holder]
        assert t_end > t_start  # renewed while the load ran
        assert live_leases(root, v0) == []  # the old version's lease is released after the swap
    finally:
        holder.close()


def test_a_transient_load_error_is_retried_with_backoff(three, tmp_path, monkeypatch):
    """Storage unreachable twice while a replica loads a new version: the old code refused the
    version for good and kept serving the old one. Now it is retried (doubling back-off) and
    loaded once storage answers; a corrupt version is still refused for good."""
    from genoray.serving.holder import BundleHolder

    root, (v0, v1, _) = _holder_root(three, tmp_path)
    tries: list[float] = []
    real = BundleHolder._open

    def flaky(self, version):
        if version == v1 and len(tries) < 2:
            tries.append(time.monotonic())
            raise fs.StorageError(f"{root}: read failed: connection reset")
        return real(self, version)

    monkeypatch.setattr(BundleHolder, "_open", flaky)
    holder = BundleHolder(root, poll_s=0.02, retry_first_s=0.3)
    try:
        publish(root, v1)
        deadline = time.time() + 20
        while holder.version != v1 and time.time() < deadline:
            time.sleep(0.02)
        assert holder.version == v1 and holder.last_error is None and v1 not in holder.refused
        assert len(tries) == 2 and tries[1] - tries[0] >= 0.3  # backed off, not hammered every poll
    finally:
        holder.close()

