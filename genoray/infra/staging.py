"""Hand-offs between a job's driver and its tasks on other nodes: through the job's output URI.

On a cluster whose nodes share nothing but object storage, a local path written by one process
does not exist on another node. So every file a task passes on (an index partition, a merged
shard) is written in a node-local scratch directory and uploaded under the job's output URI;
the task that needs it downloads it into its own scratch directory. When the output is a local
path, the same code reads and writes that directory in place, which is right on one node or on
a file system every node mounts, and :func:`check_shared` refuses, naming the node, when a task
does not see the directory its driver made (a local path on a cluster without a shared file
system).

Scratch directories are made under the node's own temp dir (``TMPDIR``): nothing read from an
artifact or a URI decides where on a node anything is written.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from genoray.infra import fs
from genoray.infra.names import check_relative, safe_join

TOKEN = ".genoray-shared"  # left by the driver in a local output directory, checked by its tasks
TRANSFER_THREADS = 8  # parallel object transfers of one task (S3/GCS throughput is per connection)


class NotShared(RuntimeError):
    """A task does not see the local output directory its driver made: that directory is not on
    a file system shared by the driver's and the task's nodes."""


@contextmanager
def scratch(prefix: str = "genoray-task-") -> Iterator[Path]:
    """A fresh directory under this node's temp dir, removed with its content at exit."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _parallel(fn, items: list) -> None:
    if len(items) <= 1:
        for i in items:
            fn(i)
        return
    with ThreadPoolExecutor(min(TRANSFER_THREADS, len(items))) as pool:
        list(pool.map(fn, items))  # re-raises the first error


@contextmanager
def local_view(uri: str | os.PathLike, files: Iterable[str] = ()) -> Iterator[Path]:
    """A local directory standing for the directory ``uri``: ``uri`` itself when it is a local
    path; otherwise a scratch directory with ``files`` (relative paths, checked) downloaded into
    it in parallel, removed at exit. Write results into it and :func:`push` them."""
    if not fs.is_remote(uri):
        path = Path(fs.as_path(uri))
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    rels = list(files)
    for rel in rels:
        check_relative(rel, uri)
    with scratch() as d:
        _parallel(lambda rel: fs.download(fs.join(uri, rel), safe_join(d, rel, uri)), rels)
        yield d


def push(local: str | os.PathLike, uri: str | os.PathLike, files: Iterable[str]) -> None:
    """Upload ``files`` (relative paths) of the :func:`local_view` ``local`` to ``uri``, in
    parallel; nothing to do when ``local`` is ``uri`` itself. Put the document that refers to
    them (a done marker, a manifest) after this returns."""
    if not fs.is_remote(uri):
        return
    _parallel(lambda rel: fs.upload(Path(local) / rel, fs.join(uri, rel)), list(files))


def mark_shared(*dirs: str | os.PathLike) -> str:
    """Leave one random token in each local directory of ``dirs`` (nothing for a URI) and return
    it: :func:`check_shared` in a task compares it."""
    local = [d for d in dirs if not fs.is_remote(d)]
    if not local:
        return ""
    token = secrets.token_hex(8)
    for d in local:
        fs.write_bytes(fs.join(d, TOKEN), token.encode())
    return token


def check_shared(out: str | os.PathLike, token: str, node: str) -> None:
    """Raise :class:`NotShared` when this process does not see the token :func:`mark_shared` left
    in the local directory ``out`` (a URI, or an empty token, always passes)."""
    if fs.is_remote(out) or not token:
        return
    p = Path(fs.as_path(out)) / TOKEN
    try:
        seen = p.read_text()
    except OSError:
        seen = ""
    if seen != token:
        raise NotShared(f"{out}: the output directory is not visible on node {node}; on a cluster whose nodes "
                        "do not share a file system give an object-storage URI (s3://..., gs://...) as the output, "
                        "or a path on a file system every node mounts")


def clear_shared(*dirs: str | os.PathLike) -> None:
    """Remove the tokens of :func:`mark_shared` (at the end of the job)."""
    for d in dirs:
        if not fs.is_remote(d):
            Path(fs.as_path(d), TOKEN).unlink(missing_ok=True)
