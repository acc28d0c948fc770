"""Content-addressed objects of a bundle root and of a node's cache: every file of a version
stored once, at ``objects/<sha256[:2]>/<sha256>``, and referenced by the ``files`` of each
version's ``bundle.json`` (format 2, :mod:`genoray.bundle.manifest`).

* **write** (:func:`link_into_objects`, :func:`upload_missing`): a staged version's files
  become objects; a local root hard-links them (same file system: no byte copied, an object
  already there is linked back into the version instead), object storage gets one existence
  check per object and an upload of the missing ones only.
* **no hard links** (another device, a file system without them): every link above becomes an
  atomic copy, its sha256 checked against the object's name (:mod:`genoray.infra.links`,
  logged once); a version then works the same and takes its full size on disk.
* **read** (:func:`materialize`): a node builds a version's view (the ``index/`` and ``head/``
  directory FAISS and the predictor read) from hard links to its cached objects, downloading
  only the objects it lacks; each is hashed once, when downloaded, and refused (never cached)
  when its sha256 is not its name. Object paths are built from validated hex digests only
  (:func:`genoray.infra.names.check_digest`), never from a name read from a bucket.
* **sweep** (:func:`sweep_objects`, :func:`sweep_cache`): an object no remaining version
  references (root: mark and sweep over every ``bundle.json``; cache: hard-link count 1, no
  view links it) and older than a grace period is deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from genoray.bundle.manifest import OBJECTS, STAGING
from genoray.infra import fs
from genoray.infra.artifacts import sha256_file
from genoray.infra.errors import ChecksumError
from genoray.infra.links import cannot_link, link_or_copy
from genoray.infra.names import UnsafeNameError, check_digest, safe_join

log = logging.getLogger(__name__)


def object_name(digest: str, where: object = "manifest") -> str:
    """``objects/<sha256[:2]>/<sha256>`` of a checked digest (``where``: the document that listed it)."""
    d = check_digest(digest, where)
    return f"{OBJECTS}/{d[:2]}/{d}"


def link_into_objects(base: Path, stage: Path, files: dict[str, str]) -> list[str]:
    """Make every staged file (``{relative path: sha256}`` under ``stage``) an object of ``base``
    (a local bundle root or a node cache on the same file system): a new digest is hard-linked
    into ``objects/``; a staged file whose object is already there is replaced by a link to it
    (one inode per content). Returns the digests that were added."""
    added: list[str] = []
    for rel, digest in sorted(files.items()):
        src, obj = Path(safe_join(stage, rel, stage)), base / object_name(digest, stage)
        obj.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # an object swept between the check and the link is installed again
            try:
                link_or_copy(src, obj, digest)  # atomic: fails when the object exists
                added.append(digest)
                break
            except FileExistsError:
                pass
            if os.path.samefile(src, obj):
                break
            tmp = src.with_name(f".{src.name}.{uuid.uuid4().hex[:6]}")
            try:
                os.link(obj, tmp)  # holds the object's inode from here on
            except FileNotFoundError:
                continue
            except OSError as e:  # no hard links here: the staged copy (same bytes) stays
                if cannot_link(e):
                    break
                raise
            os.unlink(src)  # a staging file nobody reads yet: no rename needed
            os.link(tmp, src)
            os.unlink(tmp)
            break
    return added


def upload_missing(root: str | os.PathLike, stage: Path, files: dict[str, str]) -> list[str]:
    """Upload the objects of ``files`` (staged under ``stage``) that ``root`` (object storage)
    does not hold yet: one existence check per distinct digest. Returns the digests uploaded."""
    first = {d: rel for rel, d in sorted(files.items(), reverse=True)}  # one staged file per digest
    uploaded = []
    for digest, rel in sorted(first.items()):
        uri = fs.join(root, object_name(digest, stage))
        if not fs.is_file(uri):
            fs.upload(safe_join(stage, rel, stage), uri)
            uploaded.append(digest)
    return uploaded


def _fetch(src: str, obj: Path, digest: str, where: str, rel: str) -> int:
    """Download ``src`` into the cache object ``obj``, hashed on the way in; returns its size."""
    tmp = obj.parents[2] / STAGING / f"{digest}.{uuid.uuid4().hex[:6]}"
    try:
        fs.download(src, tmp)
        got = sha256_file(tmp)
        if got != digest:
            raise ChecksumError(f"{src}: sha256 {got[:16]}... is not the {digest[:16]}... that {where} lists for "
                                f"{rel}; refused, nothing cached. Restore the object or publish the version again")
        tmp.chmod(0o444)
        obj.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, obj)  # a concurrent download of the same digest wrote the same bytes
        return obj.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)


def materialize(cache: Path, files: dict[str, str], source: Callable[[str, str], str], view: Path,
                where: str) -> int:
    """Build ``view`` (which must not exist yet) from hard links to ``cache``'s objects, one per
    ``{relative path: sha256}``; an object the cache lacks is downloaded from
    ``source(relative path, digest)`` and verified first. Returns the bytes downloaded."""
    for rel, digest in files.items():  # every name and digest is checked before anything is written
        safe_join(view, rel, where)
        object_name(digest, where)
    got = 0
    for rel, digest in sorted(files.items()):
        obj, dst = cache / object_name(digest, where), Path(safe_join(view, rel, where))
        dst.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # an object evicted between the fetch and the link is fetched again
            if not obj.is_file():
                got += _fetch(source(rel, digest), obj, digest, where, rel)
            try:
                link_or_copy(obj, dst, digest)
                break
            except FileNotFoundError:
                continue
        else:
            raise OSError(f"{where}: cannot link {rel} from {obj} (evicted three times while linking); try again")
    return got


def _objects(listing: Iterable[str], where: str) -> dict[str, str]:
    """``{digest: relative path under objects/}`` of well-formed object names (others logged, kept)."""
    out = {}
    for rel in listing:
        digest = rel.rsplit("/", 1)[-1]
        try:
            if rel != object_name(digest, where)[len(OBJECTS) + 1:]:
                raise UnsafeNameError(f"{where}: {rel} is not objects/<sha256[:2]>/<sha256>")
        except UnsafeNameError as e:
            log.warning("%s; left alone", e)
            continue
        out[digest] = rel
    return out


def sweep_objects(root: str | os.PathLike, referenced: Callable[[], set[str] | None], grace_s: float) -> list[str]:
    """Delete the objects of ``root`` that ``referenced()`` (the digests of every remaining
    version; ``None``: unknown, nothing is deleted) does not name, asked twice (before and right
    before deleting, so a version that wrote its ``bundle.json`` meanwhile keeps its objects),
    and that are at least ``grace_s`` old (a version being written uploads its objects before its
    ``bundle.json``). On a local root an object still hard-linked by a version is kept too.
    Returns the digests deleted."""
    base = fs.join(root, OBJECTS)
    have = _objects(fs.list_files(base), base)
    first = referenced()
    if first is None:
        return []
    now, local = time.time(), not fs.is_remote(root)
    doomed = []
    for digest, rel in sorted(have.items()):
        if digest in first:
            continue
        uri = fs.join(base, rel)
        if local:
            st = os.stat(fs.as_path(uri))
            if st.st_nlink > 1 or now - st.st_ctime < grace_s:  # ctime: when it was linked in
                continue
        elif now - fs.info(uri)[2] / 1e9 < grace_s:
            continue
        doomed.append(digest)
    second = referenced() if doomed else set()
    if second is None:
        return []
    removed = [d for d in doomed if d not in second]
    for digest in removed:
        fs.delete(fs.join(base, have[digest]))
    return removed


def sweep_cache(cache: Path, min_age_s: float) -> list[str]:
    """Delete a node cache's objects that no view links (hard-link count 1) and that have not
    been linked or downloaded for ``min_age_s``. Returns the digests deleted."""
    base, now = cache / OBJECTS, time.time()
    removed: list[str] = []
    if not base.is_dir():
        return removed
    for digest, rel in sorted(_objects((str(p.relative_to(base)) for p in base.glob("*/*")), str(base)).items()):
        p = base / rel
        st = p.stat()
        if st.st_nlink == 1 and now - st.st_ctime >= min_age_s:
            p.unlink(missing_ok=True)
            removed.append(digest)
    return removed


def remove_view(view: Path) -> None:
    """Remove a view directory (its links only: the objects stay until swept)."""
    shutil.rmtree(view, ignore_errors=True)
