"""Compare-and-swap of ``CURRENT`` on ``gs://`` (issue 25, item 4): the tag is the object's
generation and the write carries ``ifGenerationMatch`` (``0``: must not exist), so of writers
that read the same generation exactly one replaces it, and a publish to a ``gs://`` root moves
``CURRENT`` through that path.

Against a real GCS JSON-API server on 127.0.0.1 (gcp-storage-emulator), which is SHIMMED: that
emulator ignores ``ifGenerationMatch``, so ``tests/gcs.py`` adds exactly the documented GCS
rule to its upload handler (412 when ``ifGenerationMatch`` is not the live generation, 0 = must
not exist); everything else is the emulator's own. genoray's ``gs://`` reads (pyarrow's
GcsFileSystem) and the compare-and-swap (google-cloud-storage) both reach it through
``STORAGE_EMULATOR_HOST``.

Every race is forced, not hoped for: :func:`conditional.read_tagged` is held after each read
until all writers have read, so a write that checks a re-read tag and then PUTs without a
server-side precondition (the code before this test: sha256 re-read, then an unconditional PUT)
lets every writer win.
"""

from __future__ import annotations

import threading
from pathlib import Path

import gcs
import pytest
from bundles import make_bundle
from racing import race

from genoray.bundle import publish
from genoray.bundle.versions import read_current
from genoray.infra import conditional, fs
from genoray.infra.conditional import ConflictError

gcs_server, gcs_bucket = gcs.gcs_server, gcs.gcs_bucket  # the fixtures of tests/gcs.py
WRITERS = 6


def _generation(uri: str) -> int | None:
    """The live generation of ``uri``, asked of the server directly (the oracle)."""
    from google.cloud import storage

    from genoray.infra.gcs import client_options

    bucket, _, key = uri[len("gs://"):].partition("/")
    blob = storage.Client(**client_options()).bucket(bucket).get_blob(key)
    return None if blob is None else int(blob.generation)


@pytest.fixture
def held_reads(monkeypatch):
    """``hold(n)``: from now on each :func:`conditional.read_tagged` waits, after reading, until
    ``n`` reads are done (or 10 s), so ``n`` writers all read before any of them writes."""

    def hold(n: int) -> None:
        barrier, real = threading.Barrier(n), conditional.read_tagged

        def held(uri):
            out = real(uri)
            try:
                barrier.wait(10)
            except threading.BrokenBarrierError:
                pass
            return out

        monkeypatch.setattr(conditional, "read_tagged", held)

    return hold


def test_write_if_replaces_only_the_generation_it_read(gcs_bucket):
    """The tag is the live generation; a write with it replaces the object, one with a stale
    generation (or ``None`` while the object exists) raises ConflictError naming the object and
    what the writer saw, and leaves content and generation as they were."""
    uri = f"{gcs_bucket}/root/CURRENT"
    assert conditional.read_tagged(uri) == (None, None)
    conditional.write_if(uri, b"one", None)
    data, first = conditional.read_tagged(uri)
    assert data == b"one" and first == str(_generation(uri))
    conditional.write_if(uri, b"two", first)
    data, second = conditional.read_tagged(uri)
    assert data == b"two" and second == str(_generation(uri)) and second != first
    assert fs.read_bytes(uri) == b"two"  # pyarrow's gs:// reads see the same server
    with pytest.raises(ConflictError, match=rf"{uri}: changed since it was read \(this writer saw version one\)"):
        conditional.write_if(uri, b"three", first, seen="version one")
    with pytest.raises(ConflictError, match=rf"{uri}: changed since it was read \(this writer saw <missing>\)"):
        conditional.write_if(uri, b"three", None)
    assert conditional.read_tagged(uri) == (b"two", second)


def test_the_gcs_scheme_takes_the_same_generation_precondition(gcs_bucket):
    """``gcs://`` names GCS like ``gs://``: it took the unconditional path before, where a
    stale writer replaced the object."""
    assert gcs_bucket.startswith("gs://")
    uri = "gcs://" + gcs_bucket[len("gs://"):] + "/alias/CURRENT"
    conditional.write_if(uri, b"one", None)
    _, first = conditional.read_tagged(uri)
    assert first == str(_generation("gs://" + uri[len("gcs://"):]))
    conditional.write_if(uri, b"two", first)
    with pytest.raises(ConflictError, match="gcs://.*changed since it was read"):
        conditional.write_if(uri, b"stale", first)
    assert conditional.read_tagged(uri)[0] == b"two"


def test_a_rewrite_of_the_same_bytes_still_makes_the_old_tag_stale(gcs_bucket):
    """Another writer PUTs the very bytes already there (a rollback and a re-publish): the
    object was replaced, so a writer holding the old generation loses. A content hash as the
    tag (the code before) could not tell and let the stale writer win."""
    uri = f"{gcs_bucket}/CURRENT"
    conditional.write_if(uri, b"same", None)
    _, old = conditional.read_tagged(uri)
    conditional.write_if(uri, b"same", old)  # the other writer
    with pytest.raises(ConflictError):
        conditional.write_if(uri, b"stale writer", old)
    assert fs.read_bytes(uri) == b"same"


@pytest.mark.parametrize("exists", [False, True], ids=["absent", "present"])
def test_racing_writers_from_the_same_read_exactly_one_wins(gcs_bucket, held_reads, exists):
    """WRITERS threads read the object (or its absence), all reads done before any write, then
    each writes its own bytes with the tag it read: exactly one write lands, every other one
    raises ConflictError, and the object holds the winner's bytes."""
    uri = f"{gcs_bucket}/CURRENT"
    if exists:
        conditional.write_if(uri, b"start", None)
    held_reads(WRITERS)
    results: dict[int, BaseException | None] = {}

    def write(i: int) -> None:
        try:
            _, tag = conditional.read_tagged(uri)
            conditional.write_if(uri, f"writer {i}".encode(), tag)
            results[i] = None
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            results[i] = e

    threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [i for i, e in results.items() if e is None]
    assert len(results) == WRITERS and len(winners) == 1, results
    assert all(isinstance(e, ConflictError) for i, e in results.items() if i not in winners), results
    assert fs.read_bytes(uri) == f"writer {winners[0]}".encode()


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory) -> tuple[Path, list[str]]:
    """A local root with two unpublished versions (kmer bundles), to copy to a bucket."""
    base = tmp_path_factory.mktemp("gcs-bundles")
    root = base / "root"
    return root, [make_bundle(base / f"w{i}", root, k=5, seed=i, publish_it=False) for i in range(2)]


@pytest.mark.slow  # builds two kmer bundles and uploads them (5-25 s on 2 cores)
@pytest.mark.parametrize("first", [True, False], ids=["first-publish", "replace"])
def test_two_publishers_to_a_gs_root_exactly_one_wins(two_versions, gcs_bucket, held_reads, first):
    """Publishing to a ``gs://`` root moves ``CURRENT`` by generation precondition: a plain
    publish sets it; two publishers that read the same ``CURRENT`` (none yet, or version 0)
    race and exactly one wins, the other gets a ConflictError naming ``gs://.../CURRENT`` and
    the version it saw, and ``CURRENT`` names the winner."""
    src, (v0, v1) = two_versions
    root = f"{gcs_bucket}/bundles"
    fs.upload_dir(src / "objects", fs.join(root, "objects"))
    for v in (v0, v1):
        fs.upload_dir(src / "versions" / v, fs.join(root, "versions", v), last=["bundle.json"])
    where = fs.join(root, "CURRENT")
    if not first:
        publish(root, v0)
        assert read_current(root).version == v0
        assert conditional.read_tagged(where)[1] == str(_generation(where))
    held_reads(2)
    winners, losers, results = race(lambda v: publish(root, v), (v0, v1), 120)
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], ConflictError)
    assert where in str(losers[0])
    assert (f"saw version {v0}" if not first else "saw no CURRENT") in str(losers[0])
    assert read_current(root).version == winners[0]


def test_gs_without_google_cloud_storage_names_the_extra(monkeypatch):
    """Without google-cloud-storage a ``gs://`` compare-and-swap fails before any call, naming
    the object and the extra to install."""
    import sys

    import google.cloud

    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # as if never installed
    monkeypatch.delattr(google.cloud, "storage", raising=False)
    with pytest.raises(fs.StorageError, match=r"gs://b/CURRENT: .*pip install 'genoray\[gcs\]'"):
        conditional.read_tagged("gs://b/CURRENT")
    with pytest.raises(fs.StorageError, match=r"genoray\[gcs\]"):
        conditional.write_if("gs://b/CURRENT", b"x", None)


@pytest.mark.parametrize(("value", "want"), [
    ("127.0.0.1:9023", ("http", "127.0.0.1:9023")), ("http://127.0.0.1:9023/", ("http", "127.0.0.1:9023")),
    ("https://gcs.example:443", ("https", "gcs.example:443")), ("", None), (None, None)])
def test_storage_emulator_host_points_pyarrow_and_the_google_client_at_one_endpoint(monkeypatch, value, want):
    """``STORAGE_EMULATOR_HOST`` (with or without a scheme) gives pyarrow's GcsFileSystem and
    google-cloud-storage the same endpoint, anonymously; unset, both use Google's with the
    node's credential chain (no options)."""
    pytest.importorskip("google.cloud.storage", reason="google-cloud-storage is missing: pip install -e '.[test]'")
    from genoray.infra import gcs as gcs_env

    if value is None:
        monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    else:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", value)
    assert gcs_env.emulator() == want
    if want is None:
        assert gcs_env.arrow_options() == {} and gcs_env.client_options() == {}
        return
    scheme, host = want
    assert gcs_env.arrow_options() == {"endpoint_override": host, "scheme": scheme, "anonymous": True}
    assert gcs_env.client_options()["client_options"] == {"api_endpoint": f"{scheme}://{host}"}
