"""Content-addressed bundles (format 2): every file stored once under ``objects/<sha[:2]>/<sha>``;
a second version that shares shards with the first (an extended index) writes and uploads only
its new objects, a serving node downloads only the objects it lacks, a corrupt object never
enters a cache, GC sweeps exactly the unreferenced objects, and format-1 versions still load."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import s3

from genoray.bundle import (
    collect_garbage,
    current_version,
    publish,
    read_version,
    verify_bundle,
    version_dir,
    write_version,
)
from genoray.bundle.manifest import OBJECTS, BundleManifest
from genoray.config import HeadConfig, IndexConfig
from genoray.embedding.synthetic import append_synthetic_rows, write_synthetic_store
from genoray.index import VectorIndex, build_index
from genoray.index.delta import extend_index
from genoray.index.manifest import read_manifest
from genoray.infra import fs
from genoray.infra.documents import from_json, to_json
from genoray.infra.errors import ChecksumError
from genoray.infra.names import UnsafeNameError
from genoray.pipeline.train import train_head

s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py
CFG = IndexConfig(index_type="IVF16,Flat", recall_queries=100, target_recall=0.8)


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> dict[str, Path]:
    """Yesterday's index and head, and tonight's: the store grew by 5%, the index was extended
    (old shards hard-linked), the head refitted."""
    w = tmp_path_factory.mktemp("nights")
    store = write_synthetic_store(w / "store", 4000, 16, parts=2, test_fraction=0.05)
    build_index(store, w / "index1", CFG)
    train_head(store, w / "index1", w / "head1", HeadConfig(k=5, C=1.0))
    append_synthetic_rows(store, 200, seed=0)
    extend_index(w / "index1", store, w / "index2", 0.5, CFG)
    train_head(store, w / "index2", w / "head2", HeadConfig(k=5, C=1.0))
    return {"index1": w / "index1", "head1": w / "head1", "index2": w / "index2", "head2": w / "head2"}


def old_index_digests(index_dir: Path) -> set[str]:
    """The sha256 of the files an extended index shares with its base: the old shards and the quantizer."""
    m = read_manifest(index_dir)
    out = {d for s in m.shards for d in s.sha256.values()}
    assert m.trained is not None
    return out | {m.trained.sha256}


def load(root: str | Path, version: str | None = None) -> str:
    """Verify a version (default: CURRENT) on this node and load its index, as a replica does
    (a synthetic store has no encoder a Predictor could rebuild); returns the version."""
    version = version or current_version(root)
    assert version is not None
    doc = verify_bundle(root, version, cached=True)
    assert VectorIndex.load(version_dir(root, version) / "index").ntotal == doc.index.ntotal
    return doc.version


def stored(root: str | Path) -> set[str]:
    """The digests under ``root/objects``."""
    return {rel.rsplit("/", 1)[-1] for rel in fs.list_files(fs.join(root, OBJECTS))}


def test_local_second_version_links_only_its_new_objects(nights, tmp_path):
    root = tmp_path / "root"
    v1 = write_version(root, nights["index1"], nights["head1"])
    d1 = set(read_version(root, v1).files.values())
    assert stored(root) == d1
    v2 = write_version(root, nights["index2"], nights["head2"])
    doc2 = read_version(root, v2)
    d2 = set(doc2.files.values())
    assert doc2.format_version == 2
    shared = d1 & d2
    assert shared == old_index_digests(nights["index1"])  # exactly the shards extend_index kept
    assert stored(root) == d1 | d2  # the new version added exactly its new objects
    for rel, digest in doc2.files.items():  # its view holds links to the objects, not copies
        obj = root / OBJECTS / digest[:2] / digest
        assert os.stat(root / "versions" / v2 / rel).st_ino == obj.stat().st_ino
    publish(root, v2)
    assert load(root) == v2


def test_s3_uploads_only_missing_objects_and_nodes_download_only_what_they_lack(nights, s3_bucket, tmp_path,
                                                                               monkeypatch):
    root = f"{s3_bucket}/bundles"
    uploads: list[str] = []
    downloads: list[str] = []
    real_upload, real_download = fs.upload, fs.download
    monkeypatch.setattr(fs, "upload", lambda src, uri: (uploads.append(str(uri)), real_upload(src, uri))[1])
    monkeypatch.setattr(fs, "download", lambda uri, dst: (downloads.append(str(uri)), real_download(uri, dst))[1])
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "publisher"))
    v1 = write_version(root, nights["index1"], nights["head1"])
    publish(root, v1)
    d1 = set(read_version(root, v1).files.values())
    assert {u.rsplit("/", 1)[-1] for u in uploads} == d1 and len(uploads) == len(d1)
    uploads.clear()
    v2 = write_version(root, nights["index2"], nights["head2"])
    publish(root, v2)  # verified in the publisher's own view: nothing downloaded
    d2 = set(read_version(root, v2).files.values())
    assert {u.rsplit("/", 1)[-1] for u in uploads} == d2 - d1 and len(uploads) == len(d2 - d1)
    assert all(f"/{OBJECTS}/" in u for u in uploads) and downloads == []
    assert fs.list_files(fs.join(root, "versions", v2)) == ["bundle.json"]  # no file copies in the version

    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "node"))  # a serving node that served v1
    assert load(root, v1) == v1
    assert {u.rsplit("/", 1)[-1] for u in downloads} == d1 and len(downloads) == len(d1)
    downloads.clear()
    assert load(root, v2) == v2
    assert {u.rsplit("/", 1)[-1] for u in downloads} == d2 - d1 and len(downloads) == len(d2 - d1)
    cache = fs.cache_dir("bundles", root)
    assert {p.name for p in (cache / OBJECTS).glob("*/*")} == d1 | d2
    # v1 neither CURRENT nor leased: its view goes, and the objects only it linked
    assert {p.name for p in (cache / "versions").iterdir()} == {v1, v2}
    from genoray.bundle import evict_unleased

    assert evict_unleased(root, keep={v2}, min_age_s=0) == [v1]
    assert {p.name for p in (cache / OBJECTS).glob("*/*")} == d2
    downloads.clear()
    head = [f for f in read_version(root, v2).files if f.startswith("head/")]
    assert version_dir(root, v2, head).is_dir() and downloads == []  # a partial view: links, no download


def test_a_corrupt_object_or_a_hostile_digest_is_refused(nights, s3_bucket, tmp_path, monkeypatch):
    root = f"{s3_bucket}/bundles"
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "publisher"))
    v1 = write_version(root, nights["index1"], nights["head1"])
    doc = read_version(root, v1)
    rel = "index/shard-00.faiss"
    digest = doc.files[rel]
    fs.write_bytes(fs.join(root, OBJECTS, digest[:2], digest), b"not the shard")
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "node"))
    with pytest.raises(ChecksumError, match=f"{digest[:16]}.*{rel}"):
        version_dir(root, v1)
    cache = fs.cache_dir("bundles", root)
    assert digest not in {p.name for p in (cache / OBJECTS).glob("*/*")}  # never entered the cache
    assert not (cache / "versions").exists() or not list((cache / "versions").iterdir())
    # a bundle.json naming an object by a path instead of a digest: refused before anything is written
    hostile = to_json(doc)
    hostile["version"], hostile["files"] = "v-hostile", {"head/x": "../../../../etc/passwd"}
    fs.write_bytes(fs.join(root, "versions", "v-hostile", "bundle.json"), json.dumps(hostile).encode())
    with pytest.raises(UnsafeNameError, match="object digest"):
        version_dir(root, "v-hostile")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_gc_sweeps_exactly_the_unreferenced_objects(nights, tmp_path, request, monkeypatch, where):
    root = str(tmp_path / "root") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/bundles"
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "cache"))
    v1 = write_version(root, nights["index1"], nights["head1"])
    v2 = write_version(root, nights["index2"], nights["head2"])
    publish(root, v1)  # CURRENT is the older version
    v3 = write_version(root, nights["index1"], nights["head2"])
    d = {v: set(read_version(root, v).files.values()) for v in (v1, v2, v3)}
    orphan = "0" * 64  # a writer's object whose bundle.json is not written yet
    fs.write_bytes(fs.join(root, OBJECTS, "00", orphan), b"in flight")
    assert collect_garbage(root, keep=1) == [v2]  # v1 is CURRENT, v3 the newest
    assert stored(root) == d[v1] | d[v2] | d[v3] | {orphan}  # every object younger than the grace period stays
    assert collect_garbage(root, keep=1, object_grace_s=0) == []
    assert stored(root) == d[v1] | d[v3]  # v2's own objects (its index's delta shard, ...) and the orphan went
    assert d[v2] - d[v1] - d[v3]
    assert load(root) == v1
    assert load(root, v3) == v3


@pytest.mark.parametrize("where", ["local", "s3"])
def test_format_1_versions_still_load(nights, tmp_path, request, monkeypatch, where):
    """A version written before objects/ (its files under versions/<v>/, bundle.json format 1)
    is verified, published and served as before, and GC keeps or removes it whole."""
    root = str(tmp_path / "root") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/bundles"
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "publisher"))
    scratch = tmp_path / "scratch"
    v = write_version(scratch, nights["index1"], nights["head1"])
    old = tmp_path / "old"
    shutil.copytree(scratch / "versions" / v, old)  # real copies, as format 1 stored them
    doc = from_json(BundleManifest, json.loads((old / "bundle.json").read_text()), old)
    (old / "bundle.json").chmod(0o644)
    (old / "bundle.json").write_text(json.dumps({**to_json(doc), "format_version": 1}, indent=2))
    if where == "local":
        shutil.copytree(old, Path(root) / "versions" / v)
    else:
        fs.upload_dir(old, fs.join(root, "versions", v), last=["bundle.json"])
    assert read_version(root, v).format_version == 1 and not stored(root)
    publish(root, v)
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "node"))
    assert load(root) == v and verify_bundle(root, v).files == doc.files
    v2 = write_version(root, nights["index2"], nights["head2"])  # a format-2 version beside it
    publish(root, v2)
    assert collect_garbage(root, keep=1, object_grace_s=0) == [v]
    assert stored(root) == set(read_version(root, v2).files.values())


def _no_hard_links(monkeypatch) -> list[str]:
    """``os.link`` fails as across devices (EXDEV); returns the links tried."""
    import errno

    from genoray.infra import links

    tried: list[str] = []

    def no_link(src, dst, *a, **k):
        tried.append(str(dst))
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(links, "_logged", False)
    return tried


def test_without_hard_links_extend_write_publish_and_serve_copy_verified(nights, s3_bucket, tmp_path, monkeypatch,
                                                                       caplog):
    tried = _no_hard_links(monkeypatch)
    store = read_manifest(nights["index2"]).source_store
    assert store is not None
    ext = tmp_path / "index2"
    extend_index(nights["index1"], store, ext, 0.5, CFG)  # the old shards: copies, sha256 checked
    for d in old_index_digests(nights["index1"]):
        assert d in read_manifest(ext).files().values()
    old = read_manifest(nights["index1"])
    for f in [*(f for s in old.shards for f in s.sha256), old.trained.file if old.trained else ""]:
        assert (ext / f).read_bytes() == (nights["index1"] / f).read_bytes() and (ext / f).stat().st_nlink == 1
    root = tmp_path / "root"
    v1 = write_version(root, nights["index1"], nights["head1"])
    v2 = write_version(root, ext, nights["head2"])
    publish(root, v2)
    d1, d2 = (set(read_version(root, v).files.values()) for v in (v1, v2))
    assert stored(root) == d1 | d2 and load(root) == v2 and load(root, v1) == v1
    for rel in read_version(root, v2).files:  # copies, not links
        assert (root / "versions" / v2 / rel).stat().st_nlink == 1
    # a serving node whose cache cannot link its views: copies of the downloaded objects
    s3root = f"{s3_bucket}/bundles"
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "publisher"))
    publish(s3root, write_version(s3root, ext, nights["head2"]))
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "node"))
    assert load(s3root) == current_version(s3root)
    assert tried and not list(tmp_path.rglob("*.tmp"))  # every link was tried, no temp copy left
    warned = [r for r in caplog.records if r.name == "genoray.infra.links"]
    assert len(warned) == 1 and "copying instead" in warned[0].getMessage()  # logged once


def test_a_copy_instead_of_a_link_is_checked_against_the_digest(tmp_path, monkeypatch):
    from genoray.infra.artifacts import sha256_file
    from genoray.infra.links import link_or_copy

    _no_hard_links(monkeypatch)
    src = tmp_path / "a"
    src.write_bytes(b"shard bytes")
    link_or_copy(src, tmp_path / "b", sha256_file(src))
    assert (tmp_path / "b").read_bytes() == b"shard bytes"
    with pytest.raises(FileExistsError):  # like os.link: an object is created once
        link_or_copy(src, tmp_path / "b", sha256_file(src))
    with pytest.raises(ChecksumError, match=f"{src}: copied to {tmp_path / 'c'} with sha256 .* not the recorded"):
        link_or_copy(src, tmp_path / "c", "0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # nothing half-written left
