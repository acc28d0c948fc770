"""Bounded input and the HTTP edge (issue 25, item 6): a gzip bomb in a FASTA file is read with
memory bounded by the record cap (``genoray.sequences.fasta.record_cap``: twice ``max_length``
plus a 1 MiB header line), not by how far it expands; a chunked oversized body gets 413; the
schema and its viewers need the key when keys are required; ``/v1/info`` names no local path.
Each test fails on the code before the fix.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOMB_MIB = 256  # decompressed size of the bomb's one record
BOUND_MIB = 96  # stated bound on the reader's peak RSS growth (record cap 3 MiB; measured ~46 MiB, the old reader 540-1020 MiB)

READER = """
import json, resource, sys
from genoray.config import ReadConfig
from genoray.config.reading import CleanPolicy
from genoray.sequences import read_sequences
import dnaio, pyarrow  # imported before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
table, report = read_sequences(sys.argv[1], ReadConfig(clean=CleanPolicy(long_records=sys.argv[2])))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": peak - base, "ids": table.column("seq_id").to_pylist(),
                  "rejected": report.rejected, "read": report.read}))
"""


def _bomb(path: Path, one_line: bool) -> Path:
    """``>bomb`` with ``BOMB_MIB`` MiB of ``N`` (one line, or 60-base lines), then a normal record.
    ``N``: in window mode every window is rejected (N fraction), so what is held is the reader's
    own state, not windows it was asked to output."""
    line = b"N" * (1 << 20) if one_line else (b"N" * 59 + b"\n") * ((1 << 20) // 60)
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(b">bomb label=x\n")
        for _ in range(BOMB_MIB):
            f.write(line)
        f.write(b"\n>ok label=y\nACGTACGTAC\n")
    assert path.stat().st_size < 2 * 2**20  # small on disk
    return path


@pytest.mark.parametrize(("mode", "one_line"), [("reject", True), ("window", True), ("reject", False)],
                         ids=["reject-one-line", "window-one-line", "reject-wrapped"])
def test_a_gzip_bomb_stays_under_the_memory_bound(tmp_path, mode, one_line):
    """A ~0.3 MiB ``.fa.gz`` whose first record expands to 256 MiB: the old reader held the
    whole record (dnaio) or the whole line (the windowed streamer) before rejecting it; now
    the reader's peak RSS grows by under 96 MiB, the bomb is rejected (as too long, or each of
    its windows for its Ns) and the record after it is still read."""
    path = _bomb(tmp_path / "bomb.fa.gz", one_line)
    out = subprocess.run([sys.executable, "-c", READER, str(path), mode], capture_output=True, text=True,
                         timeout=240, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS growth {res['grew_kib'] / 1024:.1f} MiB for a {BOMB_MIB} MiB record")
    assert res["grew_kib"] < BOUND_MIB * 1024, res["grew_kib"]
    assert res["ids"] == ["ok"] and res["read"] == 2


class NoBackend:
    """The API's routes answer 503 here; a body is never predicted."""

    async def predict(self, req):
        raise AssertionError("not called")

    async def info(self):
        return None


KEYED = {"Authorization": "Bearer k"}


def _keyed_app(**limits):
    from fastapi.testclient import TestClient

    from genoray.config import ServiceLimits
    from genoray.serving.service import create_app, hash_key

    return TestClient(create_app(NoBackend(), key_hashes=(hash_key("k"),), limits=ServiceLimits(**limits)))


def test_a_chunked_oversized_body_gets_413():
    """A body sent chunked (no Content-Length) past ``max_body_bytes``: the old middleware raised
    inside FastAPI's body reader, which turned it into a 400; now it is a 413, like a declared one."""
    c = _keyed_app(max_body_bytes=1000)

    def chunks():
        for _ in range(10):
            yield b'{"sequences": ["' + b"A" * 500 + b'"]}'

    r = c.post("/v1/predict", content=chunks(), headers={**KEYED, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json() == {"detail": "request body larger than 1000 bytes"}
    r = c.post("/v1/predict", content=b"x" * 2000, headers=KEYED)  # declared: 413 as before
    assert r.status_code == 413


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_the_schema_and_its_viewers_need_the_key_when_keys_are_required(path):
    """The old app served ``/openapi.json``, ``/docs`` and ``/redoc`` to anyone; now they answer
    401 without the key and 200 with it."""
    c = _keyed_app()
    assert c.get(path).status_code == 401
    assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = c.get(path, headers=KEYED)
    assert r.status_code == 200
    if path == "/openapi.json":
        assert "/v1/predict" in r.json()["paths"] and path not in r.json()["paths"]


def test_info_last_error_names_no_local_path(tmp_path):
    """``/v1/info``'s ``last_error`` held the node's file paths; now it names the version and the
    reason, with paths replaced by ``<path>`` (the replica's log keeps the whole message)."""
    import hashlib
    import time

    from bundles import make_bundle
    from fastapi.testclient import TestClient

    from genoray.serving.backends import plain_app

    root = tmp_path / "root"
    make_bundle(tmp_path / "w1", root, k=5, seed=0)
    c = TestClient(plain_app(str(root)))
    assert c.post("/v1/predict", json={"sequences": ["GGCCGGCCAT" * 6]}).status_code == 200
    v2 = make_bundle(tmp_path / "w2", root, k=5, seed=1, publish_it=False)
    bad = root / "versions" / v2 / "head" / "head.json"
    bad.chmod(0o644)
    bad.write_text(bad.read_text() + " ")  # corrupt: refused with a ChecksumError naming the file
    doc = root / "versions" / v2 / "bundle.json"
    (root / "CURRENT").write_text(json.dumps({"version": v2, "bundle_sha256": hashlib.sha256(doc.read_bytes()).hexdigest()}))
    deadline = time.time() + 20
    info = {}
    while time.time() < deadline:
        info = c.get("/v1/info").json()
        if info.get("last_error"):
            break
        time.sleep(0.1)
    err = info["last_error"]
    assert err.startswith(f"refused bundle {v2}: ChecksumError") and "<path>" in err, err
    assert str(tmp_path) not in err and "/versions/" not in err, err
