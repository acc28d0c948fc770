"""Bundle roots on object storage (``s3://``, ``gs://``): the remote half of :mod:`genoray.bundle`.

Same layout as a local root. Object stores have no rename, so the guarantees are kept this way:

* **write**: a version is built and verified in a node-local staging root (the local
  :func:`genoray.bundle.write_bundle`), then uploaded under ``versions/<version>/`` with
  ``bundle.json`` last. A version without ``bundle.json`` is incomplete and never loaded or
  published; version names are unique (time + random suffix), so no object of a version is
  ever overwritten.
* **publish**: the version is downloaded and verified, then ``CURRENT`` is written with one
  PUT. A single PUT is atomic for readers, and S3 and GCS give strong read-after-write
  consistency (a GET after a successful PUT returns the new object; there is no moment
  when a reader sees a partial or missing ``CURRENT``), so a reader sees the old or the new
  version. Concurrent publishers: the last PUT wins, as ``os.replace`` does locally.
  ``CURRENT`` is the only object ever overwritten.
* **load**: a replica downloads a version once into a node-local cache
  (``$GENORAY_CACHE/bundles/<hash of root>/versions/<version>``), verifies every file against
  ``bundle.json`` and loads it from local disk (FAISS reads local files only).
* **leases**: small objects ``leases/<version>/<holder>`` holding the heartbeat time.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genoray import fs
from genoray.artifacts import remove_tree

if TYPE_CHECKING:
    from genoray.bundle import BundleManifest
    from genoray.predictor import Predictor

MANIFEST = "bundle.json"


def local_root(root: str) -> Path:
    """The node-local cache root that mirrors ``root``'s versions."""
    return fs.cache_dir("bundles", root)


def write_bundle(root: str, index_dir: str | Path, head_dir: str | Path, metrics: dict[str, Any] | None = None,
                 version: str | None = None, target: list[str] | None = None, shard_groups: Any = None) -> str:
    """:func:`genoray.bundle.write_bundle` into a remote root (see the module docstring)."""
    from genoray import bundle
    from genoray.index.core import MANIFEST as INDEX_MANIFEST

    index_dir = fs.local_copy(index_dir, "indexes", INDEX_MANIFEST)
    head_dir = fs.local_copy(head_dir, "heads", "head.json")
    parent = current_version(root)
    tmp = Path(tempfile.mkdtemp(prefix="genoray-bundle-"))
    try:
        version = bundle.write_bundle(tmp, index_dir, head_dir, metrics, version, target, shard_groups)
        vdir = tmp / "versions" / version
        doc = json.loads((vdir / MANIFEST).read_text())
        if doc.get("parent") != parent:  # the lineage is the remote root's, not the staging root's
            doc["parent"] = parent
            (vdir / MANIFEST).chmod(stat.S_IWUSR | stat.S_IRUSR)
            fs.write_json(vdir / MANIFEST, doc)
        final = fs.join(root, "versions", version)
        if fs.list_files(final):
            raise FileExistsError(f"{final}: versions are never rewritten")
        fs.upload_dir(vdir, final, last=[MANIFEST])
    finally:
        remove_tree(tmp, ignore_errors=True)
    return version


def materialize(root: str, version: str) -> Path:
    """Download ``version`` of a remote root into the node-local cache (once), verify it
    against its ``bundle.json`` and return the local root that holds it."""
    from genoray.bundle import verify_bundle

    local = local_root(root)
    vdir = local / "versions" / version
    if vdir.is_dir():
        return local
    src = fs.join(root, "versions", version)
    if not fs.is_file(fs.join(src, MANIFEST)):
        raise FileNotFoundError(f"{src}: not a bundle (no {MANIFEST}; an upload not finished or not a version)")
    stage = local / "staging" / f"{version}.{uuid.uuid4().hex[:6]}"
    try:
        doc = fs.read_json(fs.join(src, MANIFEST))
        fs.download_dir(src, stage / "versions" / version, [*doc.get("files", {}), MANIFEST])
        verify_bundle(stage, version)  # refuse a corrupt download before it enters the cache
        for p in (stage / "versions" / version).rglob("*"):
            if p.is_file():
                p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        vdir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(stage / "versions" / version, vdir)
        except OSError:  # another replica on this node won the race: its copy is the same
            if not vdir.is_dir():
                raise
    finally:
        if stage.exists():
            remove_tree(stage, ignore_errors=True)
    return local


def verify_bundle(root: str, version: str) -> BundleManifest:
    """Verify the local copy of ``version`` (downloaded first when needed)."""
    from genoray.bundle import verify_bundle as verify_local

    return verify_local(materialize(root, version), version)


def publish(root: str, version: str) -> None:
    """Verify ``version``, then PUT ``CURRENT`` (one object: readers see old or new)."""
    local = materialize(root, version)
    verify_bundle(root, version)
    fs.write_json(fs.join(root, "CURRENT"), {"version": version,
                                             "bundle_sha256": fs.sha256(local / "versions" / version / MANIFEST)})


def current_version(root: str) -> str | None:
    """The version ``CURRENT`` points at, or ``None`` before the first publish."""
    p = fs.join(root, "CURRENT")
    return fs.read_json(p)["version"] if fs.is_file(p) else None


def load_bundle(root: str, version: str | None = None, mmap: bool = False) -> tuple[Predictor, BundleManifest]:
    """Materialize ``version`` (default: ``CURRENT``) locally and load it there."""
    from genoray.bundle import load_bundle as load_local

    version = version or current_version(root)
    if version is None:
        raise FileNotFoundError(f"{root}: no CURRENT bundle has been published")
    return load_local(materialize(root, version), version, mmap=mmap)


def lease(root: str, version: str, holder: str) -> None:
    """Record (or refresh) that ``holder`` uses ``version`` (a small object; its body is the time)."""
    fs.write_bytes(fs.join(root, "leases", version, holder), str(time.time()).encode())


def release(root: str, version: str, holder: str) -> None:
    """Drop ``holder``'s lease on ``version``."""
    fs.delete(fs.join(root, "leases", version, holder))


def live_leases(root: str, version: str, ttl_s: float) -> list[str]:
    """Holders whose lease on ``version`` was refreshed within ``ttl_s``."""
    now, out = time.time(), []
    for holder in fs.list_files(fs.join(root, "leases", version), recursive=False):
        try:
            t = float(fs.read_bytes(fs.join(root, "leases", version, holder)))
        except (OSError, ValueError):
            continue
        if now - t < ttl_s:
            out.append(holder)
    return out


def versions(root: str) -> list[str]:
    """Complete versions (those with a ``bundle.json``), oldest first."""
    names = fs.list_dirs(fs.join(root, "versions"))
    return [v for v in names if fs.is_file(fs.join(root, "versions", v, MANIFEST))]


def collect_garbage(root: str, keep: int, lease_ttl_s: float) -> list[str]:
    """Delete versions that are not CURRENT, not among the newest ``keep`` and not leased."""
    names = sorted(fs.list_dirs(fs.join(root, "versions")), reverse=True)
    protected = set(names[:keep]) | {current_version(root)}
    removed = []
    for v in names:
        if v in protected or live_leases(root, v, lease_ttl_s):
            continue
        vdir = fs.join(root, "versions", v)
        if not fs.is_file(fs.join(vdir, MANIFEST)):  # an upload in progress (or a crashed writer's)
            newest = max((fs.info(fs.join(vdir, f))[2] for f in fs.list_files(vdir)), default=0)
            if time.time_ns() - newest < 3600 * 10**9:
                continue
        fs.delete(fs.join(root, "versions", v, MANIFEST))  # first: the version stops being loadable
        fs.delete_dir(fs.join(root, "versions", v))
        fs.delete_dir(fs.join(root, "leases", v))
        removed.append(v)
    return removed


def list_versions(root: str, verify: bool, lease_ttl_s: float) -> list[dict[str, Any]]:
    """:func:`genoray.bundle.list_versions` for a remote root."""
    names = fs.list_dirs(fs.join(root, "versions"))
    if not names:
        raise FileNotFoundError(f"{root}: not a bundle root (no versions/)")
    current, out = current_version(root), []
    for v in names:
        row: dict[str, Any] = {"version": v, "current": v == current}
        try:
            doc: Any = verify_bundle(root, v) if verify else fs.read_json(fs.join(root, "versions", v, MANIFEST))
            idx = doc.get("index", {})
            recall = idx.get("recall_at_10")
            row.update(created_at=doc.get("created_at"), parent=doc.get("parent"), fingerprint=doc.get("fingerprint"),
                       classes=doc.get("classes"), ntotal=idx.get("ntotal"),
                       recall_at_10=recall.get("value") if isinstance(recall, dict) else recall)
            if verify:
                row["verified"] = "ok"
        except (OSError, ValueError, KeyError) as e:
            row["verified" if verify else "error"] = f"{type(e).__name__}: {e}"
        row["leases"] = sorted(live_leases(root, v, lease_ttl_s))
        out.append(row)
    return out
