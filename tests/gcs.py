"""A GCS JSON-API server on 127.0.0.1 for the ``gs://`` tests: gcp-storage-emulator (pip), run
as a subprocess of this file on a free port, with ONE rule added to it (a shim).

The emulator (2026.7.19) ignores ``ifGenerationMatch`` on uploads: it replaces an object
whatever generation the writer names, so a test that two writers race and exactly one wins
would pass or fail for the wrong reason. :func:`_enforce_generation_match` wraps its upload
handler (``POST /upload/storage/v1/b/<bucket>/o``, all upload types) with the documented GCS
rule and nothing else: when the request has ``ifGenerationMatch=N`` and N is not the object's
live generation (``0`` when it does not exist), answer 412 ``conditionNotMet`` and store
nothing. The check and the store run under one lock (the emulator also serves one request at a
time), as GCS applies a precondition atomically with the write. Reads keep the emulator's own
behaviour (it ignores ``ifGenerationMatch`` on downloads). Apart from that rule, one harness
setting: a connection that stalls for 30 s is dropped (the emulator serves one at a time, so a
stalled client would otherwise block every other one).

``gcs_server`` sets ``STORAGE_EMULATOR_HOST`` for the session: genoray points both pyarrow's
GcsFileSystem and google-cloud-storage at it (:mod:`genoray.infra.gcs`). ``gcs_bucket`` gives
each test a fresh bucket URI. Both skip, naming the package, when google-cloud-storage or
gcp-storage-emulator is missing (``.ci/run`` installs them with the test extra).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from http import HTTPStatus

import pytest

SHIM_RULE = "412 when ifGenerationMatch differs from the live generation (0: must not exist)"


def _enforce_generation_match(insert):
    """The emulator's upload handler ``insert`` with GCS's ``ifGenerationMatch`` rule in front."""
    from gcp_storage_emulator.exceptions import NotFound

    lock = threading.Lock()

    def checked(request, response, storage, *args, **kwargs):
        want = request.query.get("ifGenerationMatch")
        with lock:
            if want:
                name = request.query["name"][0] if "name" in request.query else None
                if name is None and isinstance(request.data, dict):  # multipart: {"meta": {...}}; resumable: {...}
                    name = (request.data.get("meta") or request.data).get("name")
                try:
                    live = int(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
                except NotFound:
                    live = 0
                if int(want[0]) != live:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you "
                                             "specified did not hold.", "errors": [{"reason": "conditionNotMet"}]}})
                    return None
            return insert(request, response, storage, *args, **kwargs)

    return checked


def _serve() -> None:
    """Run the emulator with the shim on 127.0.0.1 at a free port, print the port, and serve until
    stdin closes (so it never outlives the test session that started it)."""
    import logging

    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    logging.disable(logging.WARNING)
    checked = _enforce_generation_match(objects.insert)
    routes = [h for _, h in server.HANDLERS if h.get(server.POST) is objects.insert]
    assert routes, "the emulator's upload route moved: update tests/gcs.py's shim"
    for handlers in routes:
        handlers[server.POST] = checked
    objects.insert = checked  # the router's fallback for POST .../b/<bucket>/o?uploadType=...
    # the harness, not GCS: one connection at a time, so drop one that stalls (see the docstring)
    server.RequestHandler.timeout = 30
    srv = server.create_server("127.0.0.1", 0, in_memory=True)
    srv.start()
    print(srv._api._httpd.server_address[1], flush=True)
    sys.stdin.read()
    srv.stop()


@pytest.fixture(scope="session")
def gcs_server():
    """``http://127.0.0.1:<port>`` of the shimmed emulator, running for the whole session."""
    pytest.importorskip("google.cloud.storage", reason="google-cloud-storage is missing: pip install -e '.[test]'")
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is missing: pip install -e '.[test]'")
    proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        proc.kill()
        pytest.fail(f"the GCS emulator did not start (printed {line!r}, exit {proc.poll()})")
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url = f"http://127.0.0.1:{line}"
    yield url
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
    """``gs://<fresh bucket>``."""
    from google.cloud import storage

    from genoray.infra.gcs import client_options

    name = f"gr-{uuid.uuid4().hex[:12]}"
    storage.Client(**client_options()).create_bucket(name)
    return f"gs://{name}"


if __name__ == "__main__":
    _serve()
