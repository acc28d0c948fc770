"""Compare-and-swap of one small file or object: the pointer (``CURRENT``) that several writers
(publishers, a rollback, a nightly reindex) may replace at the same time.

:func:`read_tagged` returns a file's bytes with a *tag* that identifies that content (on GCS: that write);
:func:`write_if` replaces the file only if it still carries that tag (``None``: only if it does
not exist yet), else raises :class:`ConflictError` naming the file and what changed. So of two
writers that read the same ``CURRENT``, exactly one replaces it.

* **S3** (``s3://``): the tag is the object's ETag and the PUT is conditional (``If-Match`` /
  ``If-None-Match: *``, S3 conditional writes). :mod:`pyarrow.fs` cannot send those headers,
  so this one PUT goes through boto3 (same endpoint, region and credential chain).
* **local**: the tag is the sha256 of the content; an exclusive ``flock`` on ``<file>.lock``
  is held while the file is re-read, compared and replaced (temp file + ``os.replace``).
  :func:`locked` takes the same lock for other read-then-act steps (GC).
* **GCS** (``gs://``): the tag is the object's *generation* and the PUT carries
  ``ifGenerationMatch`` (``0``: must not exist), GCS's own precondition; the content is read
  with ``ifGenerationMatch`` of the generation just looked up, so content and tag agree.
  :mod:`pyarrow.fs` cannot send preconditions, so these calls go through google-cloud-storage
  (the ``gcs`` extra: ``pip install 'genoray[gcs]'``), at the endpoint of
  :mod:`genoray.infra.gcs` (``STORAGE_EMULATOR_HOST`` or Google's) with the node's own
  credential chain. A conditional PUT the client retried after a lost response can report a
  conflict although it landed; the error says to read ``CURRENT`` again, which shows it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from genoray.infra import fs, gcs

MISSING = "<missing>"  # how an absent file is named in a conflict message


class ConflictError(RuntimeError):
    """A conditional write lost: the file changed since the writer read it."""


@contextlib.contextmanager
def locked(uri: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on local file ``uri`` (``<uri>.lock``, blocking) for a
    read-then-act step; nothing on object storage, whose conditional PUT needs no lock."""
    if fs.is_remote(uri):
        yield
        return
    lock = Path(fs.as_path(uri)).with_name(Path(fs.as_path(uri)).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _s3(uri: str):
    """``(boto3 client, bucket, key)`` for an ``s3://`` URI, configured like :func:`fs.resolve`."""
    import boto3

    bucket, _, key = uri[len("s3://"):].partition("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return boto3.client("s3", endpoint_url=endpoint or None, region_name=region or None), bucket, key


def _gcs(uri: str):
    """``(google-cloud-storage blob, exceptions module)`` for a ``gs://`` URI, at the endpoint and
    with the credentials of :mod:`genoray.infra.gcs`; a clear error when the extra is missing."""
    try:
        from google.api_core import exceptions
        from google.cloud import storage
    except ImportError as e:
        raise fs.StorageError(f"{uri}: compare-and-swap on gs:// needs google-cloud-storage ({e}); install "
                              "genoray's gcs extra: pip install 'genoray[gcs]'") from None
    bucket, _, key = uri[len("gs://"):].partition("/")
    try:
        client = storage.Client(**gcs.client_options())
    except Exception as e:  # no credentials on this node (google.auth.exceptions.DefaultCredentialsError)
        raise fs.StorageError(f"{uri}: no GCS client: {e}. Give this node application default credentials "
                              f"(GOOGLE_APPLICATION_CREDENTIALS, a metadata server) or set {gcs.EMULATOR_ENV}") from e
    return client.bucket(bucket).blob(key), exceptions


def _gcs_read(uri: str) -> tuple[bytes | None, str | None]:
    """Content and generation of a ``gs://`` object that agree: the generation is looked up,
    then the content read only if it is still that generation (else looked up again)."""
    blob, exc = _gcs(uri)
    for _ in range(10):
        try:
            blob.reload()  # metadata: the live generation
        except exc.NotFound:
            return None, None
        gen = blob.generation
        try:
            return blob.download_as_bytes(if_generation_match=gen), str(gen)
        except (exc.PreconditionFailed, exc.NotFound):  # replaced or deleted in between: again
            continue
    raise fs.StorageError(f"{uri}: changed on every one of 10 reads; another writer is replacing it in a loop. "
                          "Stop it and try again")


def _scheme(uri: str | os.PathLike) -> str:
    """``uri`` as a string, ``gcs://`` spelled ``gs://`` (both name GCS; only ``gs://`` took the
    generation path, so a ``gcs://`` root fell back to the unconditional write)."""
    s = str(uri)
    return "gs://" + s[len("gcs://"):] if s.startswith("gcs://") else s


def _digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def read_tagged(uri: str | os.PathLike) -> tuple[bytes | None, str | None]:
    """``(content, tag)`` of ``uri``; ``(None, None)`` when it does not exist."""
    s = _scheme(uri)
    if s.startswith("s3://"):
        client, bucket, key = _s3(s)
        try:
            r = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None, None
        except Exception as e:
            raise fs.StorageError(f"{uri}: read failed: {e}") from e
        return r["Body"].read(), str(r["ETag"])
    if s.startswith("gs://"):
        try:
            return _gcs_read(s)
        except fs.StorageError:
            raise
        except Exception as e:
            raise fs.StorageError(f"{uri}: read failed: {e}") from e
    data = fs.read_bytes(uri) if fs.is_file(uri) else None
    return data, _digest(data)


def write_if(uri: str | os.PathLike, data: bytes, tag: str | None, seen: str = "") -> None:
    """Replace ``uri`` with ``data`` only if it still has ``tag`` (from :func:`read_tagged`;
    ``None``: only if it does not exist). Raises :class:`ConflictError` naming ``uri`` and
    ``seen`` (what the caller read: a version name) when another writer replaced it first."""
    s = _scheme(uri)
    conflict = ConflictError(f"{uri}: changed since it was read (this writer saw {seen or MISSING}); another "
                             "publish, rollback or reindex replaced it first. Read it again and decide whether "
                             "to publish again")
    if s.startswith("s3://"):
        from botocore.exceptions import ClientError

        client, bucket, key = _s3(s)
        cond = {"IfMatch": tag} if tag is not None else {"IfNoneMatch": "*"}
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, **cond)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404"):
                raise conflict from None
            raise fs.StorageError(f"{uri}: conditional write failed: {e}") from e
        return
    if s.startswith("gs://"):
        blob, exc = _gcs(s)
        try:  # the generation read, or 0: only if no live object
            blob.upload_from_string(data, if_generation_match=int(tag) if tag is not None else 0)
        except exc.PreconditionFailed:
            raise conflict from None
        except Exception as e:
            raise fs.StorageError(f"{uri}: conditional write failed: {e}") from e
        return
    with locked(uri):
        if read_tagged(uri)[1] != tag:
            raise conflict
        fs.write_bytes(uri, data)
