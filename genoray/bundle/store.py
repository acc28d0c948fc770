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

A root may be on object storage (``s3://``, ``gs://``): :mod:`genoray.bundle_remote` keeps
the same guarantees there (upload with ``bundle.json`` last, ``CURRENT`` as one PUT, versions
materialized into a node-local cache before loading).

:class:`BundleHolder` is what a serving replica keeps: it loads ``CURRENT`` synchronously at
start, then watches ``CURRENT`` and loads a new version on a background thread, verifying it
before a single reference swap, so in-flight requests finish on the version they started with
and a corrupt bundle is refused while the old one keeps serving.

A replica verifies a version's files once per node, not once per start: the sha256 of each
file is checked against ``bundle.json`` and recorded with the file's size and mtime in a
node-local record (:func:`verified_record`, under ``$GENORAY_CACHE`` or
``~/.cache/genoray``); the next replica on that node re-hashes only files whose size or mtime
changed. With ``mmap`` the index files and id tables are memory-mapped, so replicas on one node
share the page cache (the head, encoder and OOD scorer stay in each replica's memory).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genoray import bundle_remote, fs
from genoray.artifacts import ChecksumError, JsonDoc, read_json, remove_tree, sha256_file, verify_files, write_json
from genoray.config import CleanPolicy

if TYPE_CHECKING:
    from genoray.predictor import Predictor

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
LEASE_TTL_S = 120.0
MANIFEST = "bundle.json"


@dataclass(frozen=True)
class BundleManifest(JsonDoc):
    """``bundle.json`` of a version.

    Attributes:
        format_version / version / parent / created_at: identity and lineage.
        encoder / fingerprint: the encoder every vector and the head were made with.
        classes: the head's classes, in its order.
        index: factory, ntotal and recall@10 of the index.
        metrics: what the writer measured (reindex gate report, evaluation).
        files: sha256 of every file of the version except ``bundle.json``.
        clean: the :class:`~genoray.config.CleanPolicy` the store was built with; serving
            cleans queries with it (``None``: an older bundle; the default is used).
        shard_groups: the index shards each searcher deployment holds, one list of shard
            numbers per group (:mod:`genoray.scatter`); ``None`` (older bundles): one group.
    """

    format_version: int
    version: str
    parent: str | None
    created_at: str
    encoder: dict[str, Any]
    fingerprint: str
    classes: list[str]
    index: dict[str, Any]
    metrics: dict[str, Any]
    files: dict[str, str]
    clean: CleanPolicy | None = None
    shard_groups: list[list[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON document (``clean`` and ``shard_groups`` left out when unknown, as older bundles had them)."""
        doc = super().to_json()
        for key in ("clean", "shard_groups"):
            if doc.get(key) is None:
                doc.pop(key, None)
        return doc


def _files(root: Path) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in _names(root)}


def _names(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST]


def verified_record(vdir: str | Path) -> Path:
    """The node-local record of which files of version directory ``vdir`` were verified (size,
    mtime and sha256 of each): ``$GENORAY_CACHE/verified/`` (default ``~/.cache/genoray``),
    named by a hash of the absolute path. Version directories are read-only, so it lives beside
    them in spirit, not in place."""
    base = Path(os.environ.get("GENORAY_CACHE") or Path.home() / ".cache" / "genoray") / "verified"
    return base / f"{hashlib.sha256(str(Path(vdir).resolve()).encode()).hexdigest()[:32]}.json"


def new_version_name() -> str:
    """Sortable by creation time (microseconds), unique by a random suffix."""
    ns = time.time_ns()
    stamp = time.strftime("v%Y%m%d-%H%M%S", time.gmtime(ns / 1e9))
    return f"{stamp}.{(ns // 1000) % 1_000_000:06d}-{uuid.uuid4().hex[:6]}"


def write_bundle(root: str | Path, index_dir: str | Path, head_dir: str | Path,
                 metrics: dict[str, Any] | None = None, version: str | None = None,
                 target: list[str] | None = None, shard_groups: Any = None) -> str:
    """Copy an index and a head into a new verified version under ``root``; returns its name.
    Does not publish it (see :func:`publish`). ``target``: unlabeled sequences of the data the
    bundle will serve; their estimated class priors (and the decision whether to re-weight,
    :mod:`genoray.priors`) are stored as ``head/priors.json`` and applied by every replica.
    ``shard_groups``: how ``genoray serve`` splits the index over searcher deployments, see
    :func:`genoray.scatter.shard_groups` (``None``: one group, every replica holds the whole index)."""
    from genoray.predictor import Predictor

    if fs.is_remote(root):
        return bundle_remote.write_bundle(str(root), index_dir, head_dir, metrics, version, target, shard_groups)
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
        assert predictor.index is not None
        idx = predictor.index.manifest
        from genoray.scatter import shard_groups as plan_groups

        groups = plan_groups(stage / "index", shard_groups) if shard_groups is not None else None
        doc = BundleManifest(
            format_version=FORMAT_VERSION, version=version, parent=current_version(root),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            encoder=idx.encoder or {}, fingerprint=idx.fingerprint or "",
            classes=[str(c) for c in predictor.head.classes_],
            index={"factory": idx.factory, "ntotal": idx.ntotal, "recall_at_10": idx.recall_at_10},
            metrics=metrics or {}, files=_files(stage), clean=idx.clean,
            shard_groups=groups if groups and len(groups) > 1 else None)
        write_json(stage / MANIFEST, doc.to_json())
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


def verify_bundle(root: str | Path, version: str, cached: bool = False) -> BundleManifest:
    """Check ``bundle.json`` and every file's sha256; return the bundle document. ``cached``:
    skip files that this node verified before and whose size and mtime are unchanged
    (:func:`verified_record`)."""
    if fs.is_remote(root):
        return bundle_remote.verify_bundle(str(root), version)
    vdir = Path(root) / "versions" / version
    doc_path = vdir / MANIFEST
    if not doc_path.is_file():
        raise FileNotFoundError(f"{vdir}: not a bundle (no {MANIFEST})")
    raw = read_json(doc_path)
    if raw.get("format_version") != FORMAT_VERSION or raw.get("version") != version:
        raise ValueError(f"{doc_path}: unsupported or mismatched bundle ({raw.get('format_version')}, {raw.get('version')})")
    doc = BundleManifest.from_json(raw)
    record = verified_record(vdir) if cached else None
    if record is not None:
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # no writable cache on this node: verify every file every time
            record = None
    verify_files(vdir, doc.files, record=record)
    extra = set(_names(vdir)) - set(doc.files)
    if extra:
        raise ChecksumError(f"{vdir}: files not in {MANIFEST}: {sorted(extra)[:5]}")
    return doc


def publish(root: str | Path, version: str) -> None:
    """Point ``CURRENT`` at a verified version (atomic; also used for rollback)."""
    if fs.is_remote(root):
        return bundle_remote.publish(str(root), version)
    root = Path(root)
    verify_bundle(root, version)
    write_json(root / "CURRENT", {"version": version,
                                  "bundle_sha256": sha256_file(root / "versions" / version / MANIFEST)})
    _fsync_dir(root)


def current_version(root: str | Path) -> str | None:
    """The version ``CURRENT`` points at, or ``None`` before the first publish."""
    if fs.is_remote(root):
        return bundle_remote.current_version(str(root))
    p = Path(root) / "CURRENT"
    return read_json(p)["version"] if p.is_file() else None


def version_dir(root: str | Path, version: str) -> Path:
    """The local directory of ``version``: under ``root`` itself, or, for a remote root, the
    node-local verified copy (downloaded once per node, :func:`genoray.bundle_remote.materialize`)."""
    if fs.is_remote(root):
        return bundle_remote.materialize(str(root), version) / "versions" / version
    return Path(root) / "versions" / version


def load_bundle(root: str | Path, version: str | None = None, mmap: bool = False,
                cached: bool = True) -> tuple[Predictor, BundleManifest]:
    """Verify and load a version (default: ``CURRENT``); returns ``(Predictor, bundle.json)``.

    ``mmap``: memory-map the index files and id tables (shared page cache) instead of reading
    them into this process. ``cached``: files this node verified before, unchanged in size and
    mtime, are not hashed again (:func:`verify_bundle`). A remote root's version is first
    copied into the node-local cache (once per node), then loaded from there."""
    from genoray.predictor import Predictor

    if fs.is_remote(root):  # materialized into the node-local cache, then loaded from there
        return bundle_remote.load_bundle(str(root), version, mmap=mmap)
    root = Path(root)
    version = version or current_version(root)
    if version is None:
        raise FileNotFoundError(f"{root}: no CURRENT bundle has been published")
    doc = verify_bundle(root, version, cached=cached)
    vdir = root / "versions" / version  # every index file was just verified as part of the bundle
    return Predictor.load(vdir / "index", vdir / "head", mmap=mmap, verify_index=False), doc


def lease(root: str | Path, version: str, holder: str) -> None:
    """Record (or refresh) that ``holder`` uses ``version``."""
    if fs.is_remote(root):
        return bundle_remote.lease(str(root), version, holder)
    d = Path(root) / "leases" / version
    d.mkdir(parents=True, exist_ok=True)
    (d / holder).write_text(str(time.time()))


def release(root: str | Path, version: str, holder: str) -> None:
    """Drop ``holder``'s lease on ``version``."""
    if fs.is_remote(root):
        return bundle_remote.release(str(root), version, holder)
    (Path(root) / "leases" / version / holder).unlink(missing_ok=True)


def collect_garbage(root: str | Path, keep: int = 3, lease_ttl_s: float = LEASE_TTL_S) -> list[str]:
    """Delete old versions that are not CURRENT, not among the newest ``keep`` and not leased."""
    if fs.is_remote(root):
        return bundle_remote.collect_garbage(str(root), keep, lease_ttl_s)
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
        remove_tree(vroot / v)
        shutil.rmtree(ldir, ignore_errors=True)
        removed.append(v)
    staging = root / "staging"
    if staging.is_dir():  # orphans of crashed writers (an hour old: never a live writer's)
        for p in staging.iterdir():
            if now - p.stat().st_mtime > 3600:
                shutil.rmtree(p, ignore_errors=True)
    return removed


class BundleHolder:
    """Loads, watches and atomically swaps the bundle a replica serves (``mmap``: index files
    and id tables memory-mapped, see :func:`load_bundle`)."""

    def __init__(self, root: str | Path, poll_s: float = 2.0, holder: str | None = None, mmap: bool = False):
        self.root: Any = fs.as_path(root)
        self.mmap = mmap
        self.holder = holder or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.predictor, self.doc = self._open(None)  # synchronous: never serve without a bundle
        self.version = self.doc.version
        lease(self.root, self.version, self.holder)
        self.last_error: str | None = None
        from genoray.monitor import DriftMonitor

        self.monitor = DriftMonitor()  # requests, OOD rate, class mix per bundle version
        self.refused: set[str] = set()  # versions are immutable: a refused one stays refused
        self.swaps = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._watch, name="bundle-watch", daemon=True)
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/info`` reports about this replica's bundle."""
        doc = self.doc
        return {"bundle_version": self.version, "encoder": doc.encoder, "fingerprint": doc.fingerprint,
                "classes": doc.classes, "index": doc.index, "created_at": doc.created_at,
                "swaps": self.swaps, "last_error": self.last_error, "replica": self.holder,
                "watching": self._thread.is_alive(), **self.drift()}

    def drift(self) -> dict[str, Any]:
        """OOD threshold and calibration, target adaptation and this replica's drift counts."""
        predictor, version = self.snapshot()
        ood = predictor.ood.describe() if predictor.ood is not None else {
            "method": "knn-rank (head without a fitted OOD scorer)", "flag_if_score_above": 0.95}
        adapt = predictor.priors.to_dict() if predictor.priors is not None else None
        lc = getattr(predictor.head, "length_calibration_", None)  # temperature per query length
        return {"ood": ood, "length_calibration": lc.describe() if lc is not None else None,
                "target_adaptation": adapt, "drift": self.monitor.snapshot(version)}

    def check(self) -> None:
        """Raise if this holder can no longer follow ``CURRENT`` (Serve's ``check_health``: the
        replica is then replaced instead of serving a stale bundle forever)."""
        if not self._thread.is_alive():
            raise RuntimeError(f"bundle watcher stopped; serving {self.version} without following CURRENT")

    def snapshot(self):
        """The (predictor, version) pair to use for one request or batch."""
        with self._lock:
            return self.predictor, self.version

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                target = current_version(self.root)
                lease(self.root, self.version, self.holder)
            except Exception as e:  # e.g. CURRENT mid-rewrite on a network filesystem: next poll
                log.warning("bundle watcher of %s: %s: %s", self.root, type(e).__name__, e)
                continue
            if target and target != self.version and target not in self.refused:
                try:
                    self.load(target)
                except Exception:  # load() logged and recorded why; keep serving the current bundle
                    log.debug("keeping bundle %s after refusing %s", self.version, target)

    def _open(self, version: str | None) -> tuple[Predictor, BundleManifest]:
        """Verify and load a version (``None``: CURRENT); :mod:`genoray.scatter` loads less."""
        return load_bundle(self.root, version, mmap=self.mmap)

    def load(self, version: str) -> None:
        """Verify and load ``version``, then swap; on any error keep the current bundle."""
        try:
            predictor, doc = self._open(version)
        except Exception as e:
            self.refused.add(version)
            self.last_error = f"refused bundle {version}: {e}"
            log.error(self.last_error)
            raise
        lease(self.root, version, self.holder)
        with self._lock:
            old = self.version
            self.predictor, self.doc, self.version = predictor, doc, version
            self.swaps += 1
        release(self.root, old, self.holder)
        self.last_error = None
        log.info("swapped bundle %s -> %s", old, version)

    def close(self) -> None:
        """Stop watching and release the lease of the version in use."""
        self._stop.set()
        release(self.root, self.version, self.holder)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_versions(root: str | Path, verify: bool = False) -> list[dict[str, Any]]:
    """Every version under ``root`` (oldest first): name, created_at, parent, encoder fingerprint,
    classes, index size and recall, whether it is ``CURRENT`` and its live leases. With
    ``verify`` each version's files are checked against their sha256 (``ok`` / the error)."""
    if fs.is_remote(root):
        return bundle_remote.list_versions(str(root), verify, LEASE_TTL_S)
    root = Path(root)
    vroot = root / "versions"
    if not vroot.is_dir():
        raise FileNotFoundError(f"{root}: not a bundle root (no versions/)")
    current, now, out = current_version(root), time.time(), []
    for vdir in sorted(p for p in vroot.iterdir() if p.is_dir()):
        row: dict[str, Any] = {"version": vdir.name, "current": vdir.name == current}
        try:
            doc = verify_bundle(root, vdir.name) if verify else read_json(vdir / "bundle.json")
            row.update(created_at=doc.get("created_at"), parent=doc.get("parent"), fingerprint=doc.get("fingerprint"),
                       classes=doc.get("classes"), ntotal=doc.get("index", {}).get("ntotal"),
                       recall_at_10=_recall_value(doc.get("index", {}).get("recall_at_10")))
            if verify:
                row["verified"] = "ok"
        except (OSError, ValueError, KeyError) as e:
            row["verified" if verify else "error"] = f"{type(e).__name__}: {e}"
        ldir = root / "leases" / vdir.name
        row["leases"] = sorted(p.name for p in ldir.iterdir() if now - p.stat().st_mtime < LEASE_TTL_S) \
            if ldir.is_dir() else []
        out.append(row)
    return out


def _recall_value(recall: Any) -> float | None:
    return recall.get("value") if isinstance(recall, dict) else recall
