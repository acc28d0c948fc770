"""Where ``gs://`` objects live: one reading of the environment for both GCS clients genoray uses.

:mod:`pyarrow.fs` (``GcsFileSystem``: every ``gs://`` read, write, list and delete) and
google-cloud-storage (the one conditional PUT of :mod:`genoray.infra.conditional`) must talk to
the same server. By default that is Google's endpoint with application default credentials
(``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, the metadata
server of a GCE/GKE node). ``STORAGE_EMULATOR_HOST`` (``host:port`` or ``http://host:port``, the
variable gcloud and Google's client libraries read) points both at an emulator, without
credentials. pyarrow does not read that variable itself, so it is passed explicitly here.
"""

from __future__ import annotations

import os
from typing import Any

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"  # forwarded to Ray workers (genoray.infra.fs.FORWARDED_ENV)


def emulator() -> tuple[str, str] | None:
    """``(scheme, "host:port")`` of the emulator named by ``STORAGE_EMULATOR_HOST`` (scheme
    ``http`` when the value has none), or ``None`` when it is unset or empty."""
    raw = os.environ.get(EMULATOR_ENV, "").strip().rstrip("/")
    if not raw:
        return None
    scheme, sep, host = raw.partition("://")
    return (scheme, host) if sep else ("http", raw)


def arrow_options() -> dict[str, Any]:
    """Keyword arguments for :class:`pyarrow.fs.GcsFileSystem`: the emulator's endpoint, scheme
    and anonymous access, or none (Google's endpoint, default credentials)."""
    found = emulator()
    if found is None:
        return {}
    scheme, host = found
    return {"endpoint_override": host, "scheme": scheme, "anonymous": True}


def client_options() -> dict[str, Any]:
    """Keyword arguments for ``google.cloud.storage.Client``: the same endpoint as
    :func:`arrow_options` (anonymous, a placeholder project) or none (the node's credential
    chain, project from it when it has one; object calls need none)."""
    found = emulator()
    if found is None:
        return {}
    from google.auth.credentials import AnonymousCredentials

    scheme, host = found
    return {"project": "genoray-emulator", "credentials": AnonymousCredentials(),
            "client_options": {"api_endpoint": f"{scheme}://{host}"}}
