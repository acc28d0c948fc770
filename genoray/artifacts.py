"""Checksummed, atomically written artifacts (JSON and npz); never pickle.

Every persisted genoray artifact is either JSON, ``.npz`` read with ``allow_pickle=False``,
Parquet, or a FAISS index file, and every file is listed with its sha256 in a JSON manifest
that is verified before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ChecksumError(ValueError):
    """A file does not match the sha256 recorded for it in its manifest."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_tree(path: str | os.PathLike, ignore_errors: bool = False) -> None:
    """Remove a directory whose files were made read-only (bundle versions and their copies)."""
    for p in Path(path).rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IWUSR | stat.S_IRUSR)
    shutil.rmtree(path, ignore_errors=ignore_errors)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write indented, sorted JSON atomically (temp file + rename)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write numeric arrays only (object arrays would need pickle and are refused)."""
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"refusing to write object array {name!r} (would need pickle)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
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


def verify_files(root: str | os.PathLike, files: dict[str, str], record: str | os.PathLike | None = None) -> int:
    """Check every ``{relative_path: sha256}`` under ``root``; raise naming the first bad file.

    With ``record`` (a JSON file), a file whose size and mtime equal those recorded when it was
    last verified with the same sha256 is not hashed again (a nightly job re-opens a store of
    unchanged files many times); any change of size or mtime re-hashes it. Returns the number
    of files hashed."""
    root = Path(root)
    seen: dict[str, Any] = {}
    if record is not None and Path(record).is_file():
        try:
            seen = read_json(record)
        except (OSError, ValueError):
            seen = {}
    hashed, fresh = 0, {}
    for rel, expected in sorted(files.items()):
        p = root / rel
        if not p.is_file():
            raise ChecksumError(f"{p}: missing (listed in manifest)")
        st = p.stat()
        key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": expected}
        if seen.get(rel) == key:
            fresh[rel] = key
            continue
        got = sha256_file(p)
        hashed += 1
        if got != expected:
            raise ChecksumError(f"{p}: sha256 {got[:16]}... does not match manifest {expected[:16]}...")
        fresh[rel] = key
    if record is not None and fresh != seen:
        try:
            write_json(record, fresh)
        except OSError:  # a read-only store: verify every time
            pass
    return hashed


class JsonDoc:
    """Base of the frozen manifest dataclasses (``StoreManifest``, ``IndexManifest``,
    ``BundleManifest``): JSON form with the on-disk keys, unknown keys kept in ``extra`` (so a
    newer writer's keys survive a round trip), and read access by key (``doc["rows"]``) for
    code written against the dict form. A field named ``clean`` holds a
    :class:`~genoray.config.CleanPolicy` (``None`` when the artifact predates it)."""

    extra: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The JSON document (dataclass fields, then ``extra``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = dataclasses.asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]):
        """Build from a JSON document; keys that are not fields go to ``extra``."""
        from genoray.config import CleanPolicy

        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}  # type: ignore[arg-type]
        kwargs = {k: v for k, v in doc.items() if k in names}
        if isinstance(kwargs.get("clean"), dict):
            kwargs["clean"] = CleanPolicy(**kwargs["clean"])
        return cls(**kwargs, extra={k: v for k, v in doc.items() if k not in names})  # type: ignore[call-arg]

    def __getitem__(self, key: str) -> Any:
        if key != "extra" and key in {f.name for f in dataclasses.fields(self)}:  # type: ignore[arg-type]
            return getattr(self, key)
        return self.extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``doc[key]``, or ``default`` when the document has no such key."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING


_MISSING = object()
