"""Reading a bundle root: version names and URIs, ``CURRENT``, a version's ``bundle.json``
and the replicas' leases (layout: :mod:`genoray.bundle.manifest`; writing, publishing and
garbage collection: :mod:`genoray.bundle.store`)."""

from __future__ import annotations

import hashlib
import json
import os
import time

from genoray.bundle.manifest import CURRENT, LEASES, MANIFEST, VERSIONS, BundleManifest, Current
from genoray.bundle.objects import object_name
from genoray.infra import fs
from genoray.infra.documents import from_json, read_document
from genoray.infra.errors import ChecksumError, FormatError
from genoray.infra.names import check_version, safe_join

LEASE_TTL_S = 120.0


def version_uri(root: str | os.PathLike, version: str) -> str:
    """Where ``version`` lives under ``root`` (a path or URI); the name is checked first
    (:func:`genoray.infra.names.check_version`), wherever it came from (``CURRENT``, a flag)."""
    return fs.join(root, VERSIONS, check_version(version, f"{fs.join(root, VERSIONS)}"))


def read_current(root: str | os.PathLike) -> Current | None:
    """``CURRENT`` of ``root`` (its version name checked), or ``None`` before the first publish."""
    p = fs.join(root, CURRENT)
    if not fs.is_file(p):
        return None
    cur = read_document(Current, p)
    check_version(cur.version, p)
    return cur


def current_name(root: str | os.PathLike) -> str | None:
    """The version name ``CURRENT`` records, unverified (lineage, GC protection, listing)."""
    cur = read_current(root)
    return cur.version if cur is not None else None


def current_version(root: str | os.PathLike) -> str | None:
    """The version ``CURRENT`` points at, or ``None`` before the first publish; its
    ``bundle.json`` must have the sha256 ``CURRENT`` recorded (:func:`current_bundle`)."""
    doc = current_bundle(root)
    return doc.version if doc is not None else None


def read_version(root: str | os.PathLike, version: str, sha256: str | None = None) -> BundleManifest:
    """``bundle.json`` of a version (format checked; files are not: see :func:`verify_bundle`);
    with ``sha256``, its bytes must have that digest (what ``CURRENT`` recorded)."""
    return read_version_raw(root, version, sha256)[0]


def read_version_raw(root: str | os.PathLike, version: str, sha256: str | None = None) -> tuple[BundleManifest, bytes]:
    """:func:`read_version` and the exact bytes of ``bundle.json`` (what a node copies into its view)."""
    p = fs.join(version_uri(root, version), MANIFEST)
    if not fs.is_file(p):
        raise FileNotFoundError(f"{version_uri(root, version)}: not a bundle version (no {MANIFEST}; an upload not "
                                "finished, or not a version)")
    raw = fs.read_bytes(p)
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise ChecksumError(f"{p}: sha256 {hashlib.sha256(raw).hexdigest()[:16]}... does not match the "
                            f"bundle_sha256 {sha256[:16]}... that {fs.join(root, CURRENT)} records (edited, or "
                            "CURRENT was not written by genoray publish); publish a verified version again")
    try:
        parsed = json.loads(raw)
    except ValueError as e:
        raise FormatError(f"{p}: not JSON: {e}") from None
    doc = from_json(BundleManifest, parsed, p)
    if doc.version != version:
        raise FormatError(f"{p}: says it is version {doc.version!r}, not {version!r}")
    return doc, raw


def current_bundle(root: str | os.PathLike) -> BundleManifest | None:
    """``bundle.json`` of the ``CURRENT`` version (``None`` before the first publish), checked
    against the ``bundle_sha256`` that ``CURRENT`` records: what a service is about to serve,
    read once."""
    cur = read_current(root)
    return read_version(root, cur.version, sha256=cur.bundle_sha256) if cur is not None else None


def file_uri(root: str | os.PathLike, doc: BundleManifest, rel: str) -> str:
    """Where file ``rel`` (listed in ``doc``'s ``files``) of a version is stored under ``root``:
    format 2 in ``objects/`` by its sha256, format 1 in the version's own directory. What reads
    a file's size or content without a node-local view (replica sizing, a group's file list)."""
    where = fs.join(version_uri(root, doc.version), MANIFEST)
    if rel not in doc.files:
        raise FormatError(f"{where}: lists no file {rel!r}; publish the version again")
    if doc.format_version >= 2:
        return fs.join(root, object_name(doc.files[rel], where))
    return safe_join(version_uri(root, doc.version), rel, where)


def lease(root: str | os.PathLike, version: str, holder: str) -> None:
    """Record (or refresh) that ``holder`` uses ``version``. A local root that is gone (removed
    while a replica still renewed) is not created again: :class:`FileNotFoundError`."""
    if not fs.is_remote(root) and not os.path.isdir(fs.as_path(root)):
        raise FileNotFoundError(f"{root}: the bundle root is gone; no lease written for {holder}")
    fs.write_bytes(fs.join(root, LEASES, version, holder), str(time.time()).encode())


def release(root: str | os.PathLike, version: str, holder: str) -> None:
    """Drop ``holder``'s lease on ``version``."""
    fs.delete(fs.join(root, LEASES, version, holder))


def live_leases(root: str | os.PathLike, version: str, ttl_s: float = LEASE_TTL_S) -> list[str]:
    """Holders whose lease on ``version`` was refreshed within ``ttl_s`` (sorted)."""
    now, out = time.time(), []
    for holder in fs.list_files(fs.join(root, LEASES, version), recursive=False):
        try:
            t = float(fs.read_bytes(fs.join(root, LEASES, version, holder)))
        except (OSError, ValueError):
            continue
        if now - t < ttl_s:
            out.append(holder)
    return sorted(out)
