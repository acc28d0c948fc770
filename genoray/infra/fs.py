"""Paths on local disk or object storage (``s3://``, ``gs://``) through :mod:`pyarrow.fs`.

Every genoray path argument (inputs, stores, index and head directories, bundle roots) may be a
local path, a ``file://`` URI, ``s3://bucket/key`` or ``gs://bucket/key``. Credentials come from each
store's standard chain (AWS: environment, ``~/.aws``, instance/pod roles; GCS: application default
credentials) on every node, never forwarded to Ray workers (:func:`forwarded_env`); ``AWS_ENDPOINT_URL``
/ ``STORAGE_EMULATOR_HOST`` point S3 / GCS at another server (MinIO, moto, :mod:`genoray.infra.gcs`).

Object stores have no rename and no partial visibility of a single object: one PUT (also a multipart
upload, completed at its end) is atomic for readers, and S3 and GCS both give strong read-after-write
consistency for PUT, GET and LIST. genoray's guarantees rest on exactly that: an artifact's files are
uploaded first and the small object that refers to them (a unit's done marker, ``store.json``,
``manifest.json``, ``bundle.json``, ``CURRENT``) is PUT last, so a reader that sees the pointer sees
everything it points at. Local writes keep using a temp file + ``os.replace``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from genoray.infra.gcs import EMULATOR_ENV, arrow_options
from genoray.infra.names import REMOTE_SCHEMES, check_relative, safe_join
from genoray.infra.uploads import put_bytes, put_file

FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                 EMULATOR_ENV)  # where the store is: no secret, handed to Ray workers
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "GOOGLE_APPLICATION_CREDENTIALS")  # who may read it: never leaves this process
CREDENTIAL_ENV = FORWARDED_ENV + SECRET_ENV
#: bytes moved to object storage (write_bytes, upload) and from it (download) by this process
TRANSFERRED = {"uploaded": 0, "downloaded": 0}


class StorageError(OSError):
    """An object-store call failed (missing bucket, no credentials, server unreachable); the
    message names the URI."""


def is_remote(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` names object storage (``s3://``, ``gs://``) rather than a local path."""
    return isinstance(uri, str) and uri.startswith(REMOTE_SCHEMES)


def as_path(uri: str | os.PathLike) -> str | Path:
    """``uri`` unchanged when remote (``Path`` would turn ``s3://b`` into ``s3:/b``), else a ``Path``
    (a ``file://`` prefix removed)."""
    if is_remote(uri):
        return str(uri)
    s = os.fspath(uri)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def join(uri: str | os.PathLike, *parts: str) -> str:
    """``uri/part/...`` for a local path or a URI (always returns a string)."""
    if is_remote(uri):
        base = str(uri).rstrip("/")
        return "/".join([base, *(p.strip("/") for p in parts)])
    return str(Path(as_path(uri), *parts))


_FILESYSTEMS: dict[tuple, Any] = {}


def resolve(uri: str | os.PathLike) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path within it)`` for a local path, ``file://``, ``s3://`` or
    ``gs://`` URI. Remote filesystems are cached per scheme, bucket and endpoint setting."""
    from pyarrow import fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), str(Path(as_path(uri)).absolute())
    s = str(uri)
    scheme, rest = s.split("://", 1)
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise ValueError(f"{uri}: no bucket in the URI")
    key = (scheme, bucket, *(os.environ.get(k) for k in CREDENTIAL_ENV))
    if key not in _FILESYSTEMS:
        try:
            if scheme == "s3":
                endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                kw: dict[str, Any] = {}
                if endpoint:  # explicit: older pyarrow releases do not read AWS_ENDPOINT_URL
                    kw["endpoint_override"] = endpoint
                    kw["scheme"] = "http" if endpoint.startswith("http://") else "https"
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                if region:
                    kw["region"] = region
                _FILESYSTEMS[key] = pafs.S3FileSystem(**kw)
            else:
                _FILESYSTEMS[key] = pafs.GcsFileSystem(**arrow_options())  # STORAGE_EMULATOR_HOST
        except Exception as e:
            raise StorageError(f"{uri}: cannot open the {scheme} filesystem: {e}") from e
    return _FILESYSTEMS[key], rest.rstrip("/")


def _err(uri: Any, e: Exception, what: str) -> Exception:
    if isinstance(e, FileNotFoundError):
        return FileNotFoundError(f"{uri}: no such file or object ({what})")
    return StorageError(f"{uri}: {what} failed: {e}")


def info(uri: str | os.PathLike) -> tuple[str, int, int]:
    """``(kind, size, mtime_ns)`` of ``uri``; kind is ``"file"``, ``"dir"`` or ``"missing"``."""
    from pyarrow import fs as pafs

    if not is_remote(uri):
        p = Path(as_path(uri))
        if p.is_file():
            st = p.stat()
            return "file", st.st_size, st.st_mtime_ns
        return ("dir" if p.is_dir() else "missing"), 0, 0
    fs, path = resolve(uri)
    try:
        fi = fs.get_file_info(path)
    except Exception as e:
        raise _err(uri, e, "stat") from e
    if fi.type == pafs.FileType.File:
        return "file", int(fi.size or 0), int(fi.mtime_ns or 0)
    return ("dir" if fi.type == pafs.FileType.Directory else "missing"), 0, 0


def is_file(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` is an existing file (object)."""
    return info(uri)[0] == "file"


def is_dir(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` is a directory (for object storage: a non-empty prefix)."""
    return info(uri)[0] == "dir"


def makedirs(uri: str | os.PathLike) -> None:
    """Create a local directory (object stores need none)."""
    if not is_remote(uri):
        Path(as_path(uri)).mkdir(parents=True, exist_ok=True)


def open_input(uri: str | os.PathLike) -> BinaryIO:
    """A seekable binary reader of a file or object (caller closes it)."""
    if not is_remote(uri):
        return open(as_path(uri), "rb")
    fs, path = resolve(uri)
    try:
        return fs.open_input_file(path)
    except Exception as e:
        raise _err(uri, e, "open") from e


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The whole content of a file or object."""
    with open_input(uri) as f:
        return f.read()


def read_json(uri: str | os.PathLike) -> Any:
    """Parse a JSON file or object."""
    return json.loads(read_bytes(uri))


def file_mode() -> int:
    """The mode a plain ``open()`` gives a new file: ``0o666`` less the process umask (so a
    group-readable umask makes artifacts readable by the group on shared storage)."""
    try:
        with open("/proc/self/status") as f:  # Linux: the umask without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a local file: a temp file in the same directory, fsync, then ``os.replace``. The
    file gets :func:`file_mode` (``mkstemp`` alone would leave it ``0600``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically: local temp file + ``os.replace``; remote one PUT (atomic for
    readers: they see the old object, or none, or the new one)."""
    if not is_remote(uri):
        atomic_write_bytes(as_path(uri), data)
        return
    fs, path = resolve(uri)
    try:
        put_bytes(fs, path, data)  # complete or absent, never cut short
    except Exception as e:
        raise _err(uri, e, "write") from e
    TRANSFERRED["uploaded"] += len(data)


def write_json(uri: str | os.PathLike, obj: Any) -> None:
    """Write indented, sorted JSON atomically (see :func:`write_bytes`)."""
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256(uri: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file or object, streamed."""
    h = hashlib.sha256()
    with open_input(uri) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def upload(local: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy a local file to ``uri`` (remote: one upload, visible only once complete; local:
    temp copy + ``os.replace``)."""
    if not is_remote(uri):
        dst = Path(as_path(uri))
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dst)
        return
    fs, path = resolve(uri)
    try:
        put_file(fs, path, local)  # complete (size checked) or absent, never cut short
    except Exception as e:
        raise _err(uri, e, "upload") from e
    TRANSFERRED["uploaded"] += os.path.getsize(local)


def download(uri: str | os.PathLike, local: str | os.PathLike) -> None:
    """Copy a file or object to a local file (temp file + ``os.replace``)."""
    dst = Path(local)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with open_input(uri) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 22)
        os.replace(tmp, dst)
        if is_remote(uri):
            TRANSFERRED["downloaded"] += dst.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)


def list_files(uri: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Relative paths of the files under a directory or prefix (sorted; ``[]`` when missing)."""
    from pyarrow import fs as pafs

    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except Exception as e:
        raise _err(uri, e, "list") from e
    return sorted(i.path[len(path) + 1:] for i in infos if i.type == pafs.FileType.File)


def list_dirs(uri: str | os.PathLike) -> list[str]:
    """Names of the direct sub-directories (prefixes) of ``uri`` (sorted; ``[]`` when missing)."""
    from pyarrow import fs as pafs

    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except Exception as e:
        raise _err(uri, e, "list") from e
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def delete(uri: str | os.PathLike) -> None:
    """Delete a file or object (no error when it is gone)."""
    _delete(uri, "delete_file")


def delete_dir(uri: str | os.PathLike) -> None:
    """Delete a directory or prefix with everything under it (no error when it is gone)."""
    _delete(uri, "delete_dir")


def _delete(uri: str | os.PathLike, method: str) -> None:
    fs, path = resolve(uri)
    try:
        getattr(fs, method)(path)
    except FileNotFoundError:
        pass
    except Exception as e:
        raise _err(uri, e, "delete") from e


def upload_dir(local: str | os.PathLike, uri: str | os.PathLike, last: Iterable[str] = ()) -> list[str]:
    """Upload every file under ``local`` to ``uri``; the relative paths in ``last`` (manifests
    that refer to the others) go up after all the rest, so a reader that sees them sees a
    complete directory. Returns the relative paths uploaded."""
    root = Path(local)
    rels = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    tail = [r for r in last if r in rels]
    for rel in [r for r in rels if r not in tail] + tail:
        upload(root / rel, join(uri, rel))
    return rels


def download_dir(uri: str | os.PathLike, local: str | os.PathLike, files: Iterable[str] | None = None) -> Path:
    """Copy the files under ``uri`` (or just ``files``, relative paths from a manifest) into
    ``local``. Every name is checked first (:func:`genoray.infra.names.check_relative`): one that
    could land outside ``local`` (absolute, ``..``, backslash) is refused before anything is
    written; each destination is then joined with :func:`~genoray.infra.names.safe_join`."""
    dst = Path(local)
    rels = list_files(uri) if files is None else list(files)
    for rel in rels:
        check_relative(rel, uri)
    for rel in rels:
        download(join(uri, rel), safe_join(dst, rel, uri))
    return dst


def cache_root() -> Path:
    """Node-local cache of remote artifacts: ``$GENORAY_CACHE`` or ``~/.cache/genoray``."""
    return Path(os.environ.get("GENORAY_CACHE") or Path.home() / ".cache" / "genoray")


def cache_dir(kind: str, uri: str | os.PathLike) -> Path:
    """``<cache_root>/<kind>/<hash of uri>``: where a remote artifact is materialized."""
    h = hashlib.sha256(str(uri).rstrip("/").encode()).hexdigest()[:20]
    return cache_root() / kind / h


def forwarded_env() -> dict[str, str]:
    """Where this process's object store is (endpoint, region, emulator host: :data:`FORWARDED_ENV`)
    to hand to Ray workers. Never a credential (:data:`SECRET_ENV`): a ``runtime_env`` is stored
    in Ray's GCS, shown in the Serve config and dashboard, and frozen until it expires inside a
    long-running replica, so every node reads credentials from its own chain (environment of
    its raylet, ``~/.aws``, instance or pod role, GCS application default credentials)."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


def read_table(uri: str | os.PathLike, columns: list[str] | None = None):
    """A Parquet file (local or remote) as an Arrow table."""
    import pyarrow.parquet as pq

    if not is_remote(uri):
        return pq.read_table(as_path(uri), columns=columns)
    fs, path = resolve(uri)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except Exception as e:
        raise _err(uri, e, "read Parquet") from e


def iter_batches(uri: str | os.PathLike, columns: list[str], batch_rows: int):
    """Record batches of at most ``batch_rows`` rows of a Parquet file (local or remote),
    streamed: a caller's memory is one batch, not the file."""
    import pyarrow.parquet as pq

    src = as_path(uri) if not is_remote(uri) else open_input(uri)
    try:
        pf = pq.ParquetFile(src)
        yield from pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)
    except OSError as e:
        raise _err(uri, e, "read Parquet") from e
    finally:
        if not isinstance(src, (str, Path)):
            src.close()


def local_copy(uri: str | os.PathLike, kind: str, manifest: str) -> Path:
    """A node-local copy of a remote artifact directory (an index, a head) whose ``manifest``
    lists its files' sha256 (checked by the artifact's own loader); downloaded once per node
    into :func:`cache_dir`, keyed by the URI and the manifest's hash (a rebuilt artifact at
    the same URI gets a new copy). A local path is returned as is."""
    import uuid

    if not is_remote(uri):
        return Path(as_path(uri))
    doc = read_bytes(join(uri, manifest))  # FileNotFoundError naming the URI when it is not there
    base = cache_dir(kind, uri)
    dst = base.with_name(f"{base.name}-{hashlib.sha256(doc).hexdigest()[:16]}")
    if (dst / manifest).is_file():
        return dst
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        download_dir(uri, tmp, [r for r in list_files(uri) if r != manifest])
        (tmp / manifest).write_bytes(doc)
        try:
            os.rename(tmp, dst)  # another process may have won the race: keep its copy
        except OSError:
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def sync_dir(uri: str | os.PathLike) -> None:
    """Make the renames and replacements in a local directory durable (fsync the directory);
    nothing to do on object storage, where a completed PUT is durable."""
    if is_remote(uri):
        return
    fd = os.open(as_path(uri), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_dir(stage: str | os.PathLike, dest: str | os.PathLike, last: Iterable[str] = ()) -> None:
    """Make a finished local directory ``stage`` appear whole at ``dest``, which must not exist:
    a rename on the same local file system (atomic), or for object storage an upload with the
    relative paths in ``last`` (the documents that list the others) put last (files there
    without them are an interrupted commit, uploaded again)."""
    if is_remote(dest):  # files without the documents in ``last``: an interrupted commit, done again
        if any(is_file(join(dest, r)) for r in last) if last else list_files(dest):
            raise FileExistsError(f"{dest}: already exists; artifacts are never rewritten")
        upload_dir(stage, dest, last=last)
        return
    final = Path(as_path(dest))
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(stage, final)  # refuses a non-empty target
    sync_dir(final.parent)  # the rename is durable once the parent directory is


def publish_dir(out: str | os.PathLike, manifest: str, build) -> Any:
    """Run ``build(local_dir)`` and, when ``out`` is remote, upload the directory it wrote with
    ``manifest`` last (a reader that sees the manifest sees every file it lists). Refuses a
    remote ``out`` that already holds ``manifest`` (artifacts are never edited in place)."""
    if not is_remote(out):
        return build(Path(as_path(out)))
    if is_file(join(out, manifest)):
        raise FileExistsError(f"{out}: already holds {manifest}; artifacts are never edited in place")
    tmp = Path(tempfile.mkdtemp(prefix="genoray-upload-"))
    try:
        result = build(tmp / "out")
        upload_dir(tmp / "out", out, last=[manifest])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
