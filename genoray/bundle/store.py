"""Versioned, verified, atomically published bundles: what a predictor service loads.

One code path for a local bundle root and one on object storage (``s3://``, ``gs://``), through
:mod:`genoray.infra.fs` (layout: :mod:`genoray.bundle.manifest`):

* **write** (:func:`write_version`): a version is assembled and sealed (``bundle.json`` with the
  sha256 of every file, files read-only) in a node-local staging directory, its files become
  content-addressed objects (:mod:`genoray.bundle.objects`: only those the root lacks are
  linked in or uploaded), then it is made visible whole: a rename into ``versions/`` on a local
  root, its ``bundle.json`` PUT after its objects on object storage (a version without it is
  incomplete and never loaded or published). Version names are unique (time + random suffix).
* **verify** (:func:`verify_bundle`): every file's sha256 against ``bundle.json``; a remote
  version is first linked together in the node-local cache from cached objects, downloading
  (and hashing once) only those the node lacks (:func:`version_dir`), because FAISS reads local
  files only; the writer's node keeps its staged files as that cache, so a publish downloads
  nothing.
* **publish** (:func:`publish`): ``CURRENT`` is replaced by one atomic write (``os.replace``
  locally; one PUT on object storage, which S3 and GCS make visible whole and at once), so a
  reader sees the old or the new version, never a mix. ``CURRENT`` is the only file ever
  overwritten. Rollback is publishing an older version.
* **leases and GC**: a replica writes ``leases/<version>/<holder>`` (its body is the heartbeat
  time); :func:`collect_garbage` never removes ``CURRENT``, the newest ``keep`` versions or a
  version with a live lease, and then deletes the objects no remaining version references.

Nothing here loads a model: :meth:`genoray.predict.Predictor.from_bundle` loads a verified
version, :mod:`genoray.serving.holder` watches ``CURRENT``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from genoray.bundle.groups import shard_groups as plan_groups
from genoray.bundle.manifest import (
    CURRENT,
    HEAD_DIR,
    INDEX_DIR,
    LEASES,
    MANIFEST,
    OBJECTS,
    STAGING,
    VERSIONS,
    BundleIndex,
    BundleManifest,
    Current,
    new_version_name,
)
from genoray.bundle.objects import (
    link_into_objects,
    materialize,
    object_name,
    remove_view,
    sweep_cache,
    sweep_objects,
    upload_missing,
)
from genoray.bundle.versions import (
    LEASE_TTL_S,
    current_name,
    file_uri,
    live_leases,
    read_version,
    read_version_raw,
    version_uri,
)
from genoray.config import ReindexConfig
from genoray.heads import read_head_manifest
from genoray.heads.persist import MANIFEST as HEAD_MANIFEST
from genoray.index.manifest import MANIFEST as INDEX_MANIFEST
from genoray.index.manifest import read_manifest as read_index_manifest
from genoray.infra import conditional, fs
from genoray.infra.artifacts import make_read_only, sha256_file, verify_files
from genoray.infra.conditional import ConflictError
from genoray.infra.documents import from_json, read_document, to_json, write_document
from genoray.infra.errors import ChecksumError, FormatError
from genoray.infra.links import link_or_copy
from genoray.infra.names import UnsafeNameError, check_version

log = logging.getLogger(__name__)
ANY = object()  # publish(if_current=ANY): whatever CURRENT is when publish reads it
STAGING_TTL_S = 3600.0  # a staging directory this old is a crashed writer's, never a live one's


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def write_version(root: str | os.PathLike, index_dir: str | os.PathLike, head_dir: str | os.PathLike,
                  metrics: dict[str, Any] | None = None, version: str | None = None,
                  shard_groups: int | list[list[int]] | None = None, group_memory_mb: float | None = None,
                  prepare: Callable[[Path], None] | None = None) -> str:
    """Copy an index and a head into a new sealed version under ``root``; returns its name.
    Does not publish it (:func:`publish`). ``prepare(stage_dir)`` runs on the staged copy
    before it is sealed (it may add files under ``head/`` and must refuse what a replica could
    not load). ``shard_groups`` (a count or explicit lists) or ``group_memory_mb`` (the fewest
    groups whose searcher fits): how ``genoray serve`` splits the index over searcher
    deployments (:func:`genoray.bundle.groups.shard_groups`; neither: one group)."""
    version = version or new_version_name()
    final = version_uri(root, version)
    if fs.is_dir(final) or fs.is_file(fs.join(final, MANIFEST)):
        raise FileExistsError(f"{final}: versions are never rewritten")
    remote = fs.is_remote(root)
    # a local root stages beside versions/ and objects/ (same file system: links and a rename); a
    # remote root in this node's cache, whose objects the staged files then become
    base = fs.cache_dir("bundles", root) if remote else Path(fs.as_path(root))
    stage = base / STAGING / f"{version}.{uuid.uuid4().hex[:6]}"
    stage.mkdir(parents=True)
    try:
        shutil.copytree(fs.local_copy(index_dir, "indexes", INDEX_MANIFEST), stage / INDEX_DIR,
                        copy_function=_link_or_copy(base))
        shutil.copytree(fs.local_copy(head_dir, "heads", HEAD_MANIFEST), stage / HEAD_DIR)
        if prepare is not None:
            prepare(stage)
        idx = read_index_manifest(stage / INDEX_DIR)
        head = read_head_manifest(stage / HEAD_DIR)
        groups = None
        if group_memory_mb is not None:
            groups = plan_groups(stage / INDEX_DIR, memory_budget=int(group_memory_mb * 2**20))
        elif shard_groups is not None:
            groups = plan_groups(stage / INDEX_DIR, shard_groups)
        doc = BundleManifest(
            format_version=BundleManifest.FORMAT_VERSION, version=version, parent=current_name(root),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), encoder=idx.encoder or {},
            fingerprint=idx.fingerprint or "", classes=head.classes,
            index=BundleIndex(factory=idx.factory, ntotal=idx.ntotal, recall_at_10=idx.recall_at_10),
            metrics=metrics or {}, files=_files(stage), clean=idx.clean,
            shard_groups=tuple(tuple(g) for g in groups) if groups and len(groups) > 1 else None)
        write_document(stage / MANIFEST, doc)
        make_read_only(stage)
        link_into_objects(base, stage, doc.files)  # every file stored once, by digest
        if remote:  # the missing objects, then bundle.json, which refers to them
            upload_missing(root, stage, doc.files)
            fs.write_bytes(fs.join(final, MANIFEST), (stage / MANIFEST).read_bytes())
            upload_missing(root, stage, doc.files)  # put back an object a concurrent GC swept meanwhile
            (base / VERSIONS).mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # this node's view of it: verifying it downloads nothing
                os.rename(stage, base / VERSIONS / version)
        else:
            fs.commit_dir(stage, final, last=[MANIFEST])
    finally:
        if stage.exists():
            remove_view(stage)
    return version


def _link_or_copy(base: Path) -> Callable[[str, str], str]:
    """A ``copytree`` copy function that hard-links a file whose object ``base`` already holds
    (an unchanged shard of an extended index) and copies any other."""
    def copy(src: str, dst: str) -> str:
        digest = sha256_file(src)
        try:
            link_or_copy(base / object_name(digest, src), dst, digest)
        except FileNotFoundError:  # a new object
            shutil.copy2(src, dst)
        return dst
    return copy


def version_dir(root: str | os.PathLike, version: str, files: Iterable[str] | None = None) -> Path:
    """The local directory of ``version``: under ``root`` itself, or, for a remote root, the
    node-local copy (downloaded and verified once per node). ``files`` (relative paths in
    ``bundle.json``): only those are needed, so only those are downloaded (a searcher replica
    fetches its shard group, the model replica the head), into a copy of their own unless the
    whole version is already here. Fetching a version drops this node's copies of versions
    that are not ``CURRENT``, that no replica leases any more and that were fetched over a
    lease period ago (:func:`evict_unleased`)."""
    if (have := local_copy(root, version, files)) is not None:
        return have
    cache = fs.cache_dir("bundles", root)
    want = None if files is None else sorted(set(files))
    local = _copy_dirs(root, version, want)[1]
    doc, raw = read_version_raw(root, version)
    vuri = version_uri(root, version)
    names = list(doc.files) if want is None else want
    if unknown := [f for f in names if f not in doc.files]:
        raise FormatError(f"{vuri}: {MANIFEST} lists no sha256 for {unknown[:3]}")

    stage = cache / STAGING / f"{local.name}.{uuid.uuid4().hex[:6]}"
    try:  # each object hashed once, when downloaded: a corrupt one never enters the cache
        materialize(cache, {f: doc.files[f] for f in names}, lambda rel, _: file_uri(root, doc, rel), stage,
                    f"{vuri}/{MANIFEST}")
        (stage / MANIFEST).write_bytes(raw)
        make_read_only(stage)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(stage, local)
        except OSError:  # another replica on this node won the race: its copy is the same
            if not local.is_dir():
                raise
    finally:
        if stage.exists():
            remove_view(stage)
    evict_unleased(root, keep={version})
    return local


def _copy_dirs(root: str | os.PathLike, version: str, want: list[str] | None) -> tuple[Path, Path]:
    """This node's cache directories of a remote ``version``: the whole copy, and the copy of
    the files ``want`` (the whole one when ``None``)."""
    base = fs.cache_dir("bundles", root) / VERSIONS
    full = base / check_version(version, fs.join(root, VERSIONS))
    # "+" is not allowed in version names, so a partial copy's directory is never taken for one
    return full, full if want is None else base / f"{version}+{hashlib.sha256(chr(10).join(want).encode()).hexdigest()[:12]}"


def local_copy(root: str | os.PathLike, version: str, files: Iterable[str] | None = None) -> Path | None:
    """:func:`version_dir` of ``version`` (``files`` of it) when this node holds it already, so
    that nothing would be downloaded (always, under a local ``root``); ``None`` otherwise. A
    serving replica searches in-process the shard groups whose files it finds here
    (:mod:`genoray.serving.scatter`)."""
    if not fs.is_remote(root):
        return Path(fs.as_path(version_uri(root, version)))
    for have in _copy_dirs(root, version, None if files is None else sorted(set(files))):
        if have.is_dir():
            return have
    return None


def evict_unleased(root: str | os.PathLike, keep: Iterable[str] = (), min_age_s: float = LEASE_TTL_S) -> list[str]:
    """Remove this node's cached copies (whole or partial) of ``root``'s versions that are not
    ``CURRENT``, not in ``keep``, have no live lease (no replica anywhere holds them; a replica
    that maps files of a removed copy keeps its pages until it lets go) and were fetched at
    least ``min_age_s`` ago (a copy still being verified or loaded, e.g. by a publisher, which
    takes no lease, is never pulled from under it), then the cached objects that no remaining
    copy links and that were not linked for ``min_age_s``. Returns the directories removed."""
    base = fs.cache_dir("bundles", root) / VERSIONS
    if not fs.is_remote(root) or not base.is_dir():
        return []
    protected, removed, now = {*keep, current_name(root)}, [], time.time()
    for d in sorted(base.iterdir()):
        v = d.name.split("+", 1)[0]
        if d.is_dir() and v not in protected and now - d.stat().st_mtime >= min_age_s and not live_leases(root, v):
            remove_view(d)
            removed.append(d.name)
    sweep_cache(base.parent, min_age_s)
    return removed


def verified_record(vdir: str | os.PathLike) -> Path:
    """The node-local record of which files of version directory ``vdir`` were verified (size,
    mtime and sha256 of each), named by a hash of its absolute path (version directories are
    read-only, so the record lives in the node's cache, not beside them)."""
    return fs.cache_root() / "verified" / f"{hashlib.sha256(str(Path(vdir).resolve()).encode()).hexdigest()[:32]}.json"


def _verify_dir(vdir: Path, doc: BundleManifest, where: Any, record: Path | None = None,
                files: Iterable[str] | None = None) -> None:
    names = set(doc.files) if files is None else set(files)
    verify_files(vdir, {f: doc.files[f] for f in names}, record=record)
    extra = {str(p.relative_to(vdir)) for p in vdir.rglob("*") if p.is_file() and p.name != MANIFEST} - names
    if extra:
        raise ChecksumError(f"{where}: files not in {MANIFEST}: {sorted(extra)[:5]}")


def verify_bundle(root: str | os.PathLike, version: str, cached: bool = False) -> BundleManifest:
    """Check ``bundle.json`` and every file's sha256 (of the node-local copy of a remote
    version); return the bundle document. ``cached``: skip files that this node verified
    before and whose size and mtime are unchanged (:func:`verified_record`)."""
    vdir = version_dir(root, version)
    doc = read_document(BundleManifest, vdir / MANIFEST)
    if doc.version != version:
        raise FormatError(f"{vdir / MANIFEST}: says it is version {doc.version!r}, not {version!r}")
    record = verified_record(vdir) if cached else None
    if record is not None:
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # no writable cache on this node: verify every file every time
            record = None
    _verify_dir(vdir, doc, version_uri(root, version), record)
    return doc


def _encode(doc: Any) -> bytes:
    return (json.dumps(to_json(doc), indent=2, sort_keys=True) + "\n").encode()


def _seen(raw: bytes | None, where: str) -> str | None:
    """The version name in raw ``CURRENT`` bytes (``None``: no ``CURRENT`` yet)."""
    if raw is None:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError as e:
        raise FormatError(f"{where}: not JSON: {e}") from None
    return check_version(from_json(Current, parsed, where).version, where)


def publish(root: str | os.PathLike, version: str, if_current: str | None | object = ANY) -> None:
    """Point ``CURRENT`` at a verified version (also used for rollback) by compare-and-swap
    (:mod:`genoray.infra.conditional`): ``CURRENT`` is read, the version verified, and
    ``CURRENT`` replaced only if no other publisher replaced it meanwhile, else
    :class:`~genoray.infra.conditional.ConflictError` names the root and the version this
    publisher saw. ``if_current`` (a version name, ``None``: no ``CURRENT`` yet): also refuse
    when ``CURRENT`` is not that version (a reindex that must not undo a rollback made during
    its run passes the version it started from). After the swap the version's ``bundle.json``
    must still be there (a concurrent :func:`collect_garbage` may have deleted it): if it is
    not, ``CURRENT`` is put back and the publish fails."""
    where = fs.join(root, CURRENT)
    version_uri(root, version)  # the name is checked before anything is read
    raw, tag = conditional.read_tagged(where)
    try:
        seen = _seen(raw, where)
        saw = f"version {seen}" if seen else "no CURRENT"
    except ValueError as e:  # a corrupt or hostile CURRENT: publishing a good version repairs it
        log.warning("%s", e)
        seen, saw = "an unreadable CURRENT", "an unreadable CURRENT"
    if if_current is not ANY and seen != if_current:
        raise ConflictError(f"{where}: points at {seen or 'no version'}, not {if_current}, which this publisher "
                            f"started from (a rollback or another publish happened meanwhile); {version} is not "
                            "published. Check the root's versions and publish again if it should be")
    verify_bundle(root, version)
    new = _encode(Current(version=version, bundle_sha256=sha256_file(version_dir(root, version) / MANIFEST)))
    conditional.write_if(where, new, tag, seen=saw)
    fs.sync_dir(root)
    if not fs.is_file(fs.join(version_uri(root, version), MANIFEST)):  # GC removed it meanwhile
        now, now_tag = conditional.read_tagged(where)
        if now == new:  # still ours: undo it (a later publisher's CURRENT is left alone)
            with contextlib.suppress(ConflictError):
                if raw is None:
                    fs.delete(where)
                else:
                    conditional.write_if(where, raw, now_tag)
        raise FileNotFoundError(f"{version_uri(root, version)}: deleted by garbage collection while it was being "
                                f"published; {where} was put back to {seen or 'its old content'}. Publish a version "
                                "that is kept (see genoray bundles)")


def collect_garbage(root: str | os.PathLike, keep: int = ReindexConfig.keep_versions,
                    lease_ttl_s: float = LEASE_TTL_S, object_grace_s: float = STAGING_TTL_S) -> list[str]:
    """Delete versions that are not CURRENT, not among the newest ``keep`` and not leased,
    staging directories (or incomplete uploads) of writers that crashed an hour ago or more, and
    then the objects no remaining version references that are ``object_grace_s`` old or more
    (:func:`genoray.bundle.objects.sweep_objects`). Returns the versions removed."""
    names = sorted(_valid_names(root), reverse=True)
    protected = set(names[:keep]) | {current_name(root)}
    now, removed = time.time(), []
    for v in names:
        if v in protected or live_leases(root, v, lease_ttl_s):
            continue
        vdir = version_uri(root, v)
        manifest = fs.join(vdir, MANIFEST)
        if not fs.is_file(manifest):  # an upload in progress (or a crashed writer's)
            newest = max((fs.info(fs.join(vdir, f))[2] for f in fs.list_files(vdir)), default=0)
            if now - newest / 1e9 < STAGING_TTL_S:
                continue
        elif not _delete_manifest(root, v, manifest):  # CURRENT moved onto it meanwhile (a rollback)
            continue
        fs.delete_dir(vdir)
        fs.delete_dir(fs.join(root, LEASES, v))
        removed.append(v)
    if not fs.is_remote(root):
        staging = Path(fs.as_path(root)) / STAGING
        for p in staging.iterdir() if staging.is_dir() else ():
            if now - p.stat().st_mtime > STAGING_TTL_S:
                remove_view(p)
    swept = sweep_objects(root, lambda: _referenced(root), object_grace_s)
    log.info("%s: removed versions %s and %d unreferenced object(s)", root, removed, len(swept))
    return removed


def _referenced(root: str | os.PathLike) -> set[str] | None:
    """The digests every version with a ``bundle.json`` lists (``None`` when one cannot be read:
    then no object is known to be unreferenced)."""
    out: set[str] = set()
    for v in _valid_names(root):
        try:
            out |= set(read_version(root, v).files.values())
        except FileNotFoundError:  # no bundle.json: a format-1 upload in progress, or deleted by GC
            continue
        except (OSError, ValueError) as e:
            log.warning("%s: objects are not swept: %s", fs.join(root, OBJECTS), e)
            return None
    return out


def _delete_manifest(root: str | os.PathLike, version: str, manifest: str) -> bool:
    """Delete ``bundle.json`` of ``version`` (it stops being loadable or publishable) unless
    ``CURRENT`` points at it, reading ``CURRENT`` again right before and right after the delete
    (under the local ``CURRENT`` lock, which :func:`publish` also takes): a publish that slipped
    in between gets its ``bundle.json`` back. Returns whether it was deleted."""
    with conditional.locked(fs.join(root, CURRENT)):
        if current_name(root) == version:
            return False
        raw = fs.read_bytes(manifest)
        fs.delete(manifest)
        if current_name(root) == version:
            fs.write_bytes(manifest, raw)
            return False
    return True


def _valid_names(root: str | os.PathLike) -> list[str]:
    """The version directories under ``root`` whose names are valid (others are logged and left alone)."""
    out = []
    for v in fs.list_dirs(fs.join(root, VERSIONS)):
        try:
            out.append(check_version(v, fs.join(root, VERSIONS)))
        except UnsafeNameError as e:
            log.warning("%s", e)
    return out


def list_versions(root: str | os.PathLike, verify: bool = False) -> list[dict[str, Any]]:
    """Every version under ``root`` (oldest first): name, created_at, parent, encoder
    fingerprint, classes, index size and recall, whether it is ``CURRENT`` and its live leases.
    With ``verify`` each version's files are checked against their sha256 (``ok`` / the error)."""
    names = fs.list_dirs(fs.join(root, VERSIONS))
    if not names:
        raise FileNotFoundError(f"{root}: not a bundle root (no {VERSIONS}/)")
    current, out = current_name(root), []
    for v in names:
        row: dict[str, Any] = {"version": v, "current": v == current}
        try:
            doc = verify_bundle(root, v) if verify else read_version(root, v)
            recall = doc.index.recall_at_10
            row.update(created_at=doc.created_at, parent=doc.parent, fingerprint=doc.fingerprint,
                       classes=list(doc.classes), ntotal=doc.index.ntotal,
                       recall_at_10=recall.value if recall is not None else None)
            if verify:
                row["verified"] = "ok"
        except (OSError, ValueError) as e:
            row["verified" if verify else "error"] = f"{type(e).__name__}: {e}"
        row["leases"] = live_leases(root, v)
        out.append(row)
    return out
