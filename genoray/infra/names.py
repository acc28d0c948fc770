"""The one check of names that come from outside the process: version names (``CURRENT``,
``--version``, config) and the file names an artifact's manifest lists (``bundle.json``, an
index ``manifest.json``, ``store.json``, ``head.json``).

A bundle is data, never code: whoever can write to a bucket or hand over an artifact must not
be able to make genoray write or read a file outside the artifact's directory. So:

* a version name matches ``^[A-Za-z0-9._-]+$`` and is not ``.`` or ``..``;
* an object digest (content-addressed bundles) is 64 lowercase hex characters;
* a file name is relative, has no ``..`` (or empty / ``.``) component, no backslash and no NUL,
  and, joined to a local directory, resolves inside it with no symlink on the way (a symlink
  in a published artifact is refused, not followed).

:func:`safe_join` is what every loader and downloader joins a listed name with; it raises
:class:`UnsafeNameError` naming the document, the name and the reason before anything is
opened or written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

VERSION_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://")


class UnsafeNameError(ValueError):
    """A version or file name from a manifest, ``CURRENT`` or a flag that could reach outside
    its directory (absolute, ``..``, backslash, NUL, a symlink, a bad version name)."""


def check_version(name: Any, where: Any = "version name") -> str:
    """``name`` if it is a valid version name; else :class:`UnsafeNameError` naming ``where``."""
    if not isinstance(name, str) or not VERSION_NAME.fullmatch(name) or name in (".", ".."):
        raise UnsafeNameError(f"{where}: refusing version name {name!r}: a version name matches "
                              "[A-Za-z0-9._-]+ and is not '.' or '..'")
    return name


def check_digest(digest: Any, where: Any = "manifest") -> str:
    """``digest`` if it is a lowercase hex sha256 (64 characters), the only thing an object's
    path is made from; else :class:`UnsafeNameError` naming ``where``."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise UnsafeNameError(f"{where}: refusing object digest {digest!r}: an object is named by a lowercase hex "
                              "sha256 (64 characters); publish the version again with genoray")
    return digest


def check_relative(name: Any, where: Any = "manifest") -> str:
    """``name`` if it is a safe relative file name (see the module docstring); else
    :class:`UnsafeNameError` naming ``where`` (the document that listed it) and the reason."""
    reason = None
    if not isinstance(name, str) or not name:
        reason = "not a non-empty string"
    elif "\x00" in name:
        reason = "contains a NUL byte"
    elif "\\" in name:
        reason = "contains a backslash"
    elif name.startswith("/") or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        reason = "is absolute"
    elif name.startswith(REMOTE_SCHEMES) or "://" in name:
        reason = "is a URI"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        reason = "has an empty, '.' or '..' component"
    if reason:
        raise UnsafeNameError(f"{where}: refusing file name {name!r}: it {reason} (a listed file must be a "
                              "plain relative path inside the artifact's directory)")
    return name


def safe_join(root: str | os.PathLike, name: Any, where: Any = None) -> str:
    """``root/name`` after :func:`check_relative`; for a local ``root`` also checked to resolve
    inside ``root`` with no symlink on the way (an existing symlink is refused, not followed)."""
    where = where if where is not None else root
    rel = check_relative(name, where)
    if isinstance(root, str) and root.startswith(REMOTE_SCHEMES):
        return "/".join([root.rstrip("/"), rel])
    base = Path(str(root)[len("file://"):] if str(root).startswith("file://") else root)
    path = base / rel
    real_base = base.resolve()
    expected = real_base / rel
    if path.resolve() != expected:  # a symlink on the way changed where the name leads
        raise UnsafeNameError(f"{where}: refusing file name {rel!r}: {path} goes through a symlink "
                              f"(it resolves to {path.resolve()}, not inside {real_base} as listed)")
    if path.is_symlink():
        raise UnsafeNameError(f"{where}: refusing file name {rel!r}: {path} is a symlink")
    return str(path)
