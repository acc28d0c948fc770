"""Read exactly the bytes that were verified (a remote part is never verified with one GET and
read with another: an object replaced in between would be read unverified).

:func:`verified_local` streams a remote object once into a node-local temp file while hashing
it, checks the digest, and hands the caller that file; a local path is handed over as it is
(verified when its artifact was opened, :func:`genoray.infra.artifacts.verify_files`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from genoray.infra import fs
from genoray.infra.errors import ChecksumError

CHUNK = 1 << 22


@contextmanager
def verified_local(uri: str | os.PathLike, sha256: str) -> Iterator[str | Path]:
    """A path whose bytes are those of ``uri`` and match ``sha256`` (hex): for an object, a
    node-local copy made by one streamed read and hashed as it arrived (removed on exit);
    raises :class:`~genoray.infra.errors.ChecksumError` naming the object when it does not
    match. A local path is yielded as it is."""
    if not fs.is_remote(uri):
        yield fs.as_path(uri)
        return
    tmp = Path(tempfile.mkdtemp(prefix="genoray-part-"))
    try:
        local = tmp / "part"
        h = hashlib.sha256()
        with fs.open_input(uri) as src, open(local, "wb") as out:
            while block := src.read(CHUNK):
                h.update(block)
                out.write(block)
        if h.hexdigest() != sha256:
            raise ChecksumError(f"{uri}: sha256 {h.hexdigest()[:16]}... of the bytes read does not match the "
                                f"manifest {sha256[:16]}... (replaced after it was verified?); re-run to read it again")
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
