"""Checksummed, atomically written artifact files (JSON, signed JSON and npz); never pickle.

Every persisted genoray artifact is JSON, ``.npz`` read with ``allow_pickle=False``, Parquet,
Arrow IPC, safetensors or a FAISS index file, and every file is listed with its sha256 in a
JSON document that is verified before anything is loaded. A document that carries its own
checksum is *signed JSON*: ``{"payload": {...}, "sha256": sha256 of the payload's canonical
JSON}`` (:func:`write_signed` / :func:`read_signed`, the one reader and writer of that
envelope). Strict JSON for people and programs: :func:`strict_json` turns an undefined number
(NaN, infinity) into ``null``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from genoray.infra import fs
from genoray.infra.errors import ChecksumError
from genoray.infra.fs import atomic_write_bytes
from genoray.infra.names import check_relative, safe_join

log = logging.getLogger(__name__)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a local file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """sha256 of the canonical JSON form of ``obj`` (sorted keys, no spaces)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact JSON: the form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def remove_tree(path: str | os.PathLike, ignore_errors: bool = False) -> None:
    """Remove a directory whose files were made read-only (bundle versions and their copies)."""
    for p in Path(path).rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IWUSR | stat.S_IRUSR)
    shutil.rmtree(path, ignore_errors=ignore_errors)


def make_read_only(root: str | os.PathLike) -> None:
    """Make every file under ``root`` read-only (published artifacts are never edited)."""
    for p in Path(root).rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write indented, sorted JSON to a local file atomically (temp file + rename)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Parse a local JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_signed(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``{"payload": payload, "sha256": sha256_json(payload)}`` atomically."""
    write_json(path, {"payload": payload, "sha256": sha256_json(payload)})


def read_signed(path: str | os.PathLike, sha256: str | None = None) -> dict[str, Any]:
    """The payload of a signed JSON file, after checking it: the file's own sha256 against
    ``sha256`` (what the document that lists it recorded) when given, and the payload's hash
    against the one inside. Raises :class:`ChecksumError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    if sha256 is not None and sha256_file(path) != sha256:
        raise ChecksumError(f"{path}: sha256 does not match the document that lists it")
    doc = read_json(path)
    payload = doc.get("payload") if isinstance(doc, dict) else None
    if not isinstance(payload, dict) or sha256_json(payload) != doc.get("sha256"):
        raise ChecksumError(f"{path}: payload sha256 does not match (edited or corrupt)")
    return payload


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write numeric arrays only (object arrays would need pickle and are refused)."""
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"refusing to write object array {name!r} (would need pickle)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.fchmod(fd, fs.file_mode())  # as open() would: mkstemp's 0600 hides it from the group
    os.close(fd)
    try:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle in **kwds
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an ``.npz`` with ``allow_pickle=False`` (object arrays are refused)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def verify_file(root: str | os.PathLike, rel: str, expected: str) -> str:
    """Hash ``root/rel`` and raise :class:`ChecksumError` naming the file when it is missing or
    its sha256 is not ``expected`` (one file of :func:`verify_files`, in whatever process or
    Ray task reads it); returns the sha256."""
    uri = safe_join(root, rel, f"{root} (manifest)")
    if fs.info(uri)[0] != "file":
        raise ChecksumError(f"{uri}: missing (listed in manifest); restore it or rebuild what wrote it")
    got = fs.sha256(uri)
    if got != expected:
        raise ChecksumError(f"{uri}: sha256 {got[:16]}... does not match manifest {expected[:16]}...; the file "
                            "changed or is damaged: restore it or rebuild what wrote it")
    return got


def verify_files(root: str | os.PathLike, files: dict[str, str], record: str | os.PathLike | None = None,
                 run: Callable[[Callable, list[tuple]], list] | None = None) -> int:
    """Check every ``{relative_path: sha256}`` under ``root`` (a local directory or an object
    store prefix); raise :class:`ChecksumError` naming the first bad or missing file. Every
    name is checked first (:mod:`genoray.infra.names`: relative, inside ``root``, no symlink;
    :class:`~genoray.infra.names.UnsafeNameError` otherwise), so nothing outside is hashed.

    With ``record`` (a local JSON file), a file whose size and mtime (and, on a local disk, its
    inode and ctime) equal those recorded when it was last verified with the same sha256 is not
    hashed again (a nightly job re-opens a store of unchanged files many times); any change
    re-hashes it. ctime is what mtime cannot fool: every write, ``chmod`` or ``utime`` sets it to
    the current time and no unprivileged call sets it back, so a flipped byte whose mtime was
    restored is hashed again. ``run(fn, calls)`` hashes the files that need it as
    ``fn(*call)`` calls of :func:`verify_file` (e.g. parallel Ray tasks; default: here, one
    after another); this process only stats them. Returns the number of files hashed."""
    seen: dict[str, Any] = {}
    if record is not None and Path(record).is_file():
        try:
            seen = read_json(record)
        except (OSError, ValueError):
            seen = {}
    fresh, todo = {}, []
    for rel in files:
        check_relative(rel, f"{root} (manifest)")
    for rel, expected in sorted(files.items()):
        uri = safe_join(root, rel, f"{root} (manifest)")
        kind, size, mtime_ns = fs.info(uri)
        if kind != "file":
            raise ChecksumError(f"{uri}: missing (listed in manifest)")
        key: dict[str, Any] = {"size": size, "mtime_ns": mtime_ns, "sha256": expected}
        if not fs.is_remote(uri):
            st = os.stat(fs.as_path(uri))
            key.update(ctime_ns=st.st_ctime_ns, inode=[st.st_dev, st.st_ino])
        if seen.get(rel) != key:
            todo.append((root, rel, expected))
        fresh[rel] = key
    (run or (lambda fn, calls: [fn(*c) for c in calls]))(verify_file, todo)
    if record is not None and fresh != seen:
        try:
            write_json(record, fresh)
        except OSError:  # a read-only store and no writable cache: verify every time
            pass
    return len(todo)


def strict_json(obj: Any) -> tuple[Any, list[str]]:
    """``obj`` with every NaN/inf float (an undefined metric) replaced by None, for strict JSON,
    and the dotted paths of the replaced values."""
    replaced: list[str] = []

    def walk(o, path):
        if isinstance(o, float) and not math.isfinite(o):
            replaced.append(path)
            return None
        if isinstance(o, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(o)]
        if hasattr(o, "item") and getattr(o, "ndim", None) == 0:  # numpy scalars
            return walk(o.item(), path)
        return o

    return walk(obj, ""), replaced


def strict_dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (``NaN``/``inf`` become ``null``)."""
    return json.dumps(strict_json(obj)[0], indent=indent, default=str, allow_nan=False)
