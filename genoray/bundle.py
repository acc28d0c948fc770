"""Versioned, verified, atomically published bundles: what a predictor service loads.

Layout of a bundle root::

    CURRENT                     {"version": ..., "bundle_sha256": ...}: the published version
    versions/<version>/         immutable once published (files made read-only)
        bundle.json             version, parent, created_at, encoder spec + fingerprint, classes,
                                index summary, metrics / gate report, sha256 of every file
        index/ ...              a genoray.index directory
        head/  ...              a genoray.heads directory (head.json + head.npz)
    staging/                    bundles being written (never loaded)
    leases/<version>/<holder>   a replica's claim on a version (heartbeat = mtime)

``write_bundle`` builds a complete bundle in ``staging/``, verifies it by loading it with the
same code a replica uses, and only then renames it into ``versions/``. ``publish`` flips
``CURRENT`` with a temp-file + ``os.replace`` (atomic), so a reader sees the old or the new
version, never a mix. ``collect_garbage`` never removes ``CURRENT``, the newest ``keep``
versions, or a version with a live lease.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
import uuid
from pathlib import Path
from typing import Any

from genoray.artifacts import ChecksumError, read_json, sha256_file, verify_files, write_json

FORMAT_VERSION = 1
LEASE_TTL_S = 120.0


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "bundle.json"}


def new_version_name() -> str:
    """Sortable by creation time (microseconds), unique by a random suffix."""
    ns = time.time_ns()
    stamp = time.strftime("v%Y%m%d-%H%M%S", time.gmtime(ns / 1e9))
    return f"{stamp}.{(ns // 1000) % 1_000_000:06d}-{uuid.uuid4().hex[:6]}"


def write_bundle(root: str | Path, index_dir: str | Path, head_dir: str | Path,
                 metrics: dict[str, Any] | None = None, version: str | None = None,
                 target: list[str] | None = None) -> str:
    """Copy an index and a head into a new verified version under ``root``; returns its name.
    Does not publish it (see :func:`publish`). ``target``: unlabeled sequences of the data the
    bundle will serve; their estimated class priors (and the decision whether to re-weight,
    :mod:`genoray.priors`) are stored as ``head/priors.json`` and applied by every replica."""
    from genoray.predictor import Predictor

    root = Path(root)
    version = version or new_version_name()
    final = root / "versions" / version
    if final.exists():
        raise FileExistsError(f"{final}: versions are never rewritten")
    stage = root / "staging" / f"{version}.{uuid.uuid4().hex[:6]}"
    stage.mkdir(parents=True)
    try:
        shutil.copytree(index_dir, stage / "index")
        shutil.copytree(head_dir, stage / "head")
        if target is not None:
            Predictor.load(stage / "index", stage / "head").adapt_to(list(target)).save(stage / "head")
        predictor = Predictor.load(stage / "index", stage / "head")  # refuse what replicas could not load
        idx = predictor.index.manifest
        write_json(stage / "bundle.json", {
            "format_version": FORMAT_VERSION, "version": version, "parent": current_version(root),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "encoder": idx["encoder"], "fingerprint": idx["fingerprint"],
            "classes": [str(c) for c in predictor.head.classes_],
            "index": {"factory": idx["factory"], "ntotal": idx["ntotal"], "recall_at_10": idx.get("recall_at_10")},
            "metrics": metrics or {}, "files": _files(stage),
        })
        for p in stage.rglob("*"):
            if p.is_file():
                p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(stage, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return version


def verify_bundle(root: str | Path, version: str) -> dict[str, Any]:
    """Check ``bundle.json`` and every file's sha256; return the bundle document."""
    vdir = Path(root) / "versions" / version
    doc_path = vdir / "bundle.json"
    if not doc_path.is_file():
        raise FileNotFoundError(f"{vdir}: not a bundle (no bundle.json)")
    doc = read_json(doc_path)
    if doc.get("format_version") != FORMAT_VERSION or doc.get("version") != version:
        raise ValueError(f"{doc_path}: unsupported or mismatched bundle ({doc.get('format_version')}, {doc.get('version')})")
    verify_files(vdir, doc["files"])
    extra = set(_files(vdir)) - set(doc["files"])
    if extra:
        raise ChecksumError(f"{vdir}: files not in bundle.json: {sorted(extra)[:5]}")
    return doc


def publish(root: str | Path, version: str) -> None:
    """Point ``CURRENT`` at a verified version (atomic; also used for rollback)."""
    root = Path(root)
    verify_bundle(root, version)
    write_json(root / "CURRENT", {"version": version,
                                  "bundle_sha256": sha256_file(root / "versions" / version / "bundle.json")})
    _fsync_dir(root)


def current_version(root: str | Path) -> str | None:
    p = Path(root) / "CURRENT"
    return read_json(p)["version"] if p.is_file() else None


def load_bundle(root: str | Path, version: str | None = None):
    """Verify and load a version (default: ``CURRENT``); returns ``(Predictor, bundle.json)``."""
    from genoray.predictor import Predictor

    root = Path(root)
    version = version or current_version(root)
    if version is None:
        raise FileNotFoundError(f"{root}: no CURRENT bundle has been published")
    doc = verify_bundle(root, version)
    vdir = root / "versions" / version
    return Predictor.load(vdir / "index", vdir / "head"), doc


def lease(root: str | Path, version: str, holder: str) -> None:
    """Record (or refresh) that ``holder`` uses ``version``."""
    d = Path(root) / "leases" / version
    d.mkdir(parents=True, exist_ok=True)
    (d / holder).write_text(str(time.time()))


def release(root: str | Path, version: str, holder: str) -> None:
    (Path(root) / "leases" / version / holder).unlink(missing_ok=True)


def collect_garbage(root: str | Path, keep: int = 3, lease_ttl_s: float = LEASE_TTL_S) -> list[str]:
    """Delete old versions that are not CURRENT, not among the newest ``keep`` and not leased."""
    root = Path(root)
    vroot = root / "versions"
    if not vroot.is_dir():
        return []
    versions = sorted((p.name for p in vroot.iterdir() if p.is_dir()), reverse=True)
    protected = set(versions[:keep]) | {current_version(root)}
    now = time.time()
    removed = []
    for v in versions:
        ldir = root / "leases" / v
        live = ldir.is_dir() and any(now - p.stat().st_mtime < lease_ttl_s for p in ldir.iterdir())
        if v in protected or live:
            continue
        for p in (vroot / v).rglob("*"):
            if p.is_file():
                p.chmod(stat.S_IWUSR | stat.S_IRUSR)
        shutil.rmtree(vroot / v)
        shutil.rmtree(ldir, ignore_errors=True)
        removed.append(v)
    staging = root / "staging"
    if staging.is_dir():  # orphans of crashed writers (an hour old: never a live writer's)
        for p in staging.iterdir():
            if now - p.stat().st_mtime > 3600:
                shutil.rmtree(p, ignore_errors=True)
    return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
