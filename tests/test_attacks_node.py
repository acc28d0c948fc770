"""Attacks on a node from its neighbours (issue 25, items 5 and 6): what genoray hands Ray
workers never carries an object-store credential, a local Ray started by genoray listens on
loopback only, and HAProxy's admin socket and config live in a directory of genoray's own with
mode 0700. Each test fails on the code before the fix (see SECURITY.md).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from genoray.infra import fs

SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE0SECRET01", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/secret",
           "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLEsessiontoken", "AWS_PROFILE": "prod-admin",
           "GOOGLE_APPLICATION_CREDENTIALS": "/home/op/.config/gcloud/key.json"}


def test_no_object_store_credential_reaches_a_ray_runtime_env(monkeypatch):
    """With every AWS/GCS credential variable set, what genoray hands Ray workers as
    ``runtime_env`` (``fs.forwarded_env``, the serving replicas' actor options) holds the
    endpoint and region only. The old code forwarded keys and session tokens in plain text
    (stored in Ray's GCS, shown in the Serve config and dashboard)."""
    import json

    from genoray.config import ServeConfig
    from genoray.serving.replica_memory import replica_actor_options

    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    for k in ("AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(k, raising=False)
    assert fs.forwarded_env() == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "eu-west-1"}
    options = replica_actor_options(ServeConfig(root="s3://bucket/bundles", replica_memory_mb=64), None)
    dumped = json.dumps(options)
    assert options["runtime_env"]["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    for k, v in SECRETS.items():
        assert k not in dumped and v not in dumped


def test_a_local_ray_started_by_genoray_binds_to_loopback(tmp_path):
    """``genoray serve``/``embed`` without a cluster start Ray with auth disabled: the old code
    bound it to the node's routable address, so anyone reaching those ports could run code.
    Now its node (raylet, object manager) and GCS listen on 127.0.0.1 only (its own process:
    the session Ray of the other tests is not genoray's)."""
    import os
    import subprocess
    import sys

    code = ("import ray\nfrom genoray.infra.runtime import init_ray\ninit_ray(num_cpus=1, object_store_mb=80)\n"
            "print(ray.nodes()[0]['NodeManagerAddress'], ray.get_runtime_context().gcs_address)\nray.shutdown()\n")
    env = {**os.environ, "RAY_ADDRESS": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    node, gcs = out.stdout.split()[-2:]
    assert node == "127.0.0.1" and gcs.startswith("127.0.0.1:"), out.stdout


def test_a_local_ray_started_by_genoray_refuses_a_client_without_its_token(tmp_path):
    """Loopback is not enough on a shared host: any local user could connect. genoray's local
    Ray now runs with Ray's token auth on a random token of its session (inherited by its own
    processes only): a task runs, and a client on the same host with a guessed token is refused
    (the old code started it with ``RAY_AUTH_MODE=disabled``)."""
    import subprocess
    import sys

    client = ("import ray, sys\nray.init(address=sys.argv[1], log_to_driver=False)\n"
              "print('ran', ray.get(ray.remote(lambda: 41 + 1).remote()))\n")
    code = ("import json, os, subprocess, sys, ray\nfrom genoray.infra.runtime import init_ray\n"
            "init_ray(num_cpus=1, object_store_mb=80)\n"
            "env = {**os.environ, 'RAY_AUTH_MODE': 'token', 'RAY_AUTH_TOKEN': '0' * 64}\n"  # a guessed token
            "addr = ray.get_runtime_context().gcs_address\n"
            "try:\n"
            f"    c = subprocess.run([sys.executable, '-c', {client!r}, addr], env=env, capture_output=True, "
            "text=True, timeout=45)\n"
            "    rc, cout = c.returncode, c.stdout\n"
            "except subprocess.TimeoutExpired as e:\n"  # Ray's client retries a refused handshake
            "    rc, cout = 'timeout', str(e.stdout or '')\n"
            "print(json.dumps({'task': ray.get(ray.remote(lambda: 1).remote()), 'mode': os.environ['RAY_AUTH_MODE'], "
            "'client_rc': rc, 'client_out': cout[-300:]}))\n"
            "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["task"] == 1 and got["mode"] == "token", got
    assert got["client_rc"] != 0 and "ran 42" not in got["client_out"], got  # an error, or no answer at all


def test_haproxy_sockets_and_config_live_in_a_private_directory(tmp_path, monkeypatch):
    """Ray's default HAProxy paths are ``/tmp/haproxy-serve/...`` with a mode-666 admin socket:
    any local user could rewrite the routing. ``haproxy_env`` now puts config, admin and
    metrics sockets and server state in a ``0700`` directory of this user, and refuses one
    that someone else prepared with looser permissions."""
    import tempfile

    from genoray.serving.haproxy import haproxy_env

    env = haproxy_env(wrapper=False)  # under the session's TMPDIR
    # Ray adds <node id>/ to each path: the socket paths fit HAProxy's limit (97 bytes)
    for k in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
        d, name = os.path.split(env[k])
        assert len(os.path.join(d, "f" * 56, name)) <= 97, env[k]
    short = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))  # short: no fallback to the shared /tmp/gr-hap-<uid>
    try:
        monkeypatch.setenv("TMPDIR", str(short))
        monkeypatch.setattr(tempfile, "tempdir", None)
        env = haproxy_env(wrapper=False)
        keys = ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH",
                "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH", "RAY_SERVE_HAPROXY_SERVER_STATE_BASE",
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE")
        private = short / f"gr-hap-{os.getuid()}"
        for k in keys:
            assert env[k] == str(private) or os.path.dirname(env[k]) == str(private), (k, env.get(k))
        st = os.lstat(private)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
        private.chmod(0o777)  # planted, or loosened
        with pytest.raises(PermissionError, match="mode 0700"):
            haproxy_env(wrapper=False)
        private.rmdir()
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        private.symlink_to(tmp_path / "elsewhere")
        with pytest.raises(PermissionError, match=str(private)):
            haproxy_env(wrapper=False)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_a_flipped_byte_with_its_mtime_restored_is_refused_on_the_serving_path(tmp_path):
    """After a replica verified a version once (the node's record of size and mtime), an
    attacker who can write the version directory flips one byte of an index file and puts its
    mode and mtime back: the old serving path (``Predictor.from_bundle``, ``cached=True``) did
    not hash the file again and served it. Now the record also holds the file's ctime and inode,
    which no unprivileged call restores, so the file is hashed again and refused."""
    import json

    from bundles import make_bundle

    from genoray.infra.errors import ChecksumError
    from genoray.predict import Predictor
    from genoray.serving.holder import BundleHolder

    root = tmp_path / "root"
    v = make_bundle(tmp_path / "w", root, k=5)
    Predictor.from_bundle(root)  # verified once: the node's record now lists every file
    vdir = root / "versions" / v
    files = json.loads((vdir / "bundle.json").read_text())["files"]
    rel = max((r for r in files if r.startswith("index/")), key=lambda r: (vdir / r).stat().st_size)
    p = vdir / rel
    st = p.stat()
    p.chmod(0o644)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    p.chmod(stat.S_IMODE(st.st_mode))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (p.stat().st_size, p.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(ChecksumError, match=rel.replace(".", r"\.")):
        Predictor.from_bundle(root)
    with pytest.raises(ChecksumError, match="does not match"):
        BundleHolder(root)
