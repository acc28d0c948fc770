"""Hard links with a copy where the file system has none.

Bundle objects, version views and an extended index's unchanged shards are hard links (no byte
copied). Where that fails because the file system has no hard links or the two paths are on
different devices (``EXDEV``, ``EPERM``, ``ENOTSUP``/``EOPNOTSUPP``, ``EMLINK``, ``ENOSYS``),
:func:`link_or_copy` copies instead: to a temp file beside the destination, its sha256 checked
against the digest the caller knows (an object's name, a manifest's record), then renamed into
place, so a reader sees the whole file or none. The first fallback of a process is logged.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from pathlib import Path

from genoray.infra.artifacts import sha256_file
from genoray.infra.errors import ChecksumError

log = logging.getLogger(__name__)

#: why ``os.link`` fails where a copy would do: no hard links here, or another device
NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS})
_logged = False


def cannot_link(e: OSError) -> bool:
    """Whether ``e`` (from ``os.link``) means "copy instead" (see :data:`NO_LINK`)."""
    return e.errno in NO_LINK


def copy_verified(src: str | os.PathLike, dst: str | os.PathLike, digest: str | None = None) -> None:
    """Copy ``src`` to ``dst`` atomically (a temp file beside ``dst``, renamed into place,
    replacing any), its sha256 checked against ``digest`` when given (a mismatch raises
    :class:`~genoray.infra.errors.ChecksumError` naming both files; nothing is left)."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copy2(src, tmp)
        if digest is not None and (got := sha256_file(tmp)) != digest:
            raise ChecksumError(f"{src}: copied to {dst} with sha256 {got[:16]}..., not the recorded {digest[:16]}...; "
                                "the source changed or is corrupt: restore it (or rebuild it) and retry")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike, digest: str | None = None) -> None:
    """Hard-link ``src`` at ``dst``; where the file system cannot (:func:`cannot_link`), copy it
    (:func:`copy_verified`, ``digest`` checked). As with ``os.link``, an existing ``dst`` raises
    ``FileExistsError`` (so it can create a content-addressed object exactly once) and a missing
    ``src`` ``FileNotFoundError``; other errors propagate."""
    global _logged
    try:
        os.link(src, dst)
        return
    except OSError as e:
        if not cannot_link(e):
            raise
        if not _logged:
            _logged = True
            log.warning("cannot hard-link %s to %s (%s); copying instead (sha256 checked), for every file this "
                        "process cannot link (logged once): those files take their full size again",
                        src, dst, os.strerror(e.errno or 0))
    if Path(dst).exists():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    copy_verified(src, dst, digest)
