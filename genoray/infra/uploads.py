"""One object PUT that is complete or absent, never truncated (used by :mod:`genoray.infra.fs`).

pyarrow's output streams complete an upload when they are closed, and a ``with`` block closes
them on an exception too, so a copy cut short (a connection dropped mid-file, a
``KeyboardInterrupt`` or the stop signal) used to commit the bytes written so far as the whole
object. Here an upload that raises, for any reason, deletes what its close committed, and one
that returned is checked against the local size (a HEAD) before it counts. A process killed
outright never completes its upload (a multipart upload left open is invisible to readers;
a bucket lifecycle rule aborts it). Together with the manifest-last order of every artifact
(:func:`genoray.infra.fs.upload_dir`), no reader ever sees a manifest whose files are cut short,
and a re-run uploads them again.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

CHUNK = 1 << 22  # bytes per write to the output stream


def _copy(src: BinaryIO, out: Any) -> None:
    """Copy ``src`` to the output stream ``out`` in :data:`CHUNK` pieces."""
    while block := src.read(CHUNK):
        out.write(block)


def _discard(filesystem: Any, path: str) -> None:
    """Delete what a failed upload's close may have committed at ``path`` (best effort)."""
    try:
        filesystem.delete_file(path)
    except Exception:  # noqa: BLE001 (nothing committed, or the store is unreachable: the error that got here wins)
        pass


def _check_size(filesystem: Any, path: str, size: int) -> None:
    got = filesystem.get_file_info(path).size
    if got != size:
        raise OSError(f"uploaded object holds {got} bytes of {size}: cut short; it was deleted, upload it again")


def put_file(filesystem: Any, path: str, local: str | os.PathLike) -> None:
    """Upload the local file ``local`` to ``path`` of a pyarrow ``filesystem``: complete (size
    checked) or absent, whatever interrupts it."""
    size = os.path.getsize(local)
    try:
        with open(local, "rb") as src, filesystem.open_output_stream(path, compression=None) as out:
            _copy(src, out)
        _check_size(filesystem, path, size)
    except BaseException:
        _discard(filesystem, path)
        raise


def put_bytes(filesystem: Any, path: str, data: bytes) -> None:
    """:func:`put_file` for bytes in memory."""
    try:
        with filesystem.open_output_stream(path, compression=None) as out:
            out.write(data)
        _check_size(filesystem, path, len(data))
    except BaseException:
        _discard(filesystem, path)
        raise
